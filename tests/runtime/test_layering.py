"""The layers of lloco_runtime (ARCHITECTURE.md), enforced on the source: the store is below the model side.

Walks every module's imports with :mod:`ast` (no import side effects), including imports inside functions,
so a lazy import cannot hide a dependency that goes the wrong way.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import lloco_runtime

ROOT = Path(lloco_runtime.__file__).parent

#: modules everything may import: no model, no database, no framework
BASE = {
    "lloco_runtime.errors",
    "lloco_runtime.config",
    "lloco_runtime.textcheck",
    "lloco_runtime.codec",
    "lloco_runtime.embeddings",
    "lloco_runtime.aio",
    "lloco_runtime.sheets",
}


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_module(name: str) -> bool:
    p = ROOT.parent / Path(*name.split("."))
    return p.with_suffix(".py").exists() or p.is_dir()


def imported_modules(path: Path, name: str | None = None) -> set[str]:
    """Every lloco_runtime module ``path`` imports (absolute or relative, top level or in a function)."""
    name = name or module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            # `from .. import config` imports the submodule, not the package's own names
            subs = [f"{mod}.{a.name}" for a in node.names if is_module(f"{mod}.{a.name}")]
            out.update(subs)
            if len(subs) < len(node.names):
                out.add(mod)
    return {m for m in out if m == "lloco_runtime" or m.startswith("lloco_runtime.")}


def modules_under(sub: str) -> list[Path]:
    base = ROOT / sub
    return sorted(base.rglob("*.py")) if base.is_dir() else [base.with_suffix(".py")]


def allowed_for_store(mod: str) -> bool:
    return mod in BASE or mod == "lloco_runtime.store" or mod.startswith("lloco_runtime.store.")


@pytest.mark.parametrize("path", modules_under("store"), ids=lambda p: p.name)
def test_the_store_imports_only_base_modules_and_itself(path):
    bad = sorted(m for m in imported_modules(path) if not allowed_for_store(m))
    assert not bad, (
        f"{module_name(path)} imports {bad}: the store layer may import only {sorted(BASE)} and itself "
        "(code that needs the runtime belongs above the store: cli/, bench/, ray_ingest, service)"
    )


@pytest.mark.parametrize(
    "name", ["encoder", "models", "generation", "adapters", "prompt", "weights_io", "runtime", "focus"]
)
def test_the_model_side_never_imports_the_store(name):
    path = ROOT / f"{name}.py"
    bad = sorted(
        m
        for m in imported_modules(path)
        if m.startswith("lloco_runtime.store")
        or m in ("lloco_runtime.service", "lloco_runtime.cli", "lloco_runtime.bench")
    )
    assert not bad, f"lloco_runtime.{name} imports {bad}; the model side sits beside the store, not above it"


@pytest.mark.parametrize("name", sorted(BASE))
def test_base_modules_import_only_base_modules(name):
    path = ROOT / f"{name.rpartition('.')[2]}.py"
    bad = sorted(m for m in imported_modules(path) if m not in BASE)
    assert not bad, f"{name} imports {bad}; base modules may import only each other"


def test_the_walker_sees_relative_and_lazy_imports(tmp_path):
    """The checks above can fail: a planted lazy relative import of the runtime is found."""
    pkg = ROOT / "store"
    planted = pkg / "_planted_for_test.py"
    planted.write_text(
        "def f():\n    from ..runtime import LLoCO\n    from .. import service\n    return LLoCO\n"
    )
    try:
        found = imported_modules(planted)
    finally:
        planted.unlink()
    assert {"lloco_runtime.runtime", "lloco_runtime.service"} <= found
    assert not allowed_for_store("lloco_runtime.runtime")
