"""The core's public names: ``__all__`` lists exactly the lazily exported names, and each one resolves; the
integrations and the examples import nothing but these names (and those of ``lloco_runtime.store``)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import lloco_runtime
import lloco_runtime.store

REPO = Path(lloco_runtime.__file__).resolve().parents[1]
#: the public API: these modules and the names in their ``__all__``, nothing deeper
PUBLIC = {
    "lloco_runtime": set(lloco_runtime.__all__),
    "lloco_runtime.store": set(lloco_runtime.store.__all__),
}
USERS = sorted(
    [
        *(REPO / "lloco_index").rglob("*.py"),
        *(REPO / "lloco_langchain").rglob("*.py"),
        *(REPO / "examples").glob("*.py"),
    ]
)


def test_all_is_the_export_table():
    assert lloco_runtime.__all__ == sorted(lloco_runtime._EXPORTS)


def test_every_public_name_resolves():
    for name in lloco_runtime.__all__:
        assert getattr(lloco_runtime, name).__name__ == name


def test_store_all_resolves():
    for name in lloco_runtime.store.__all__:
        assert hasattr(lloco_runtime.store, name), name


def non_public_imports(source: str) -> list[str]:
    """Every import in ``source`` (top level, in functions, under ``TYPE_CHECKING``) of a lloco_runtime module
    other than the public two, or of a name not in that module's ``__all__``."""
    bad = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                core = alias.name == "lloco_runtime" or alias.name.startswith("lloco_runtime.")
                if core and alias.name not in PUBLIC:
                    bad.append(f"line {node.lineno}: import {alias.name}")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module != "lloco_runtime" and not node.module.startswith("lloco_runtime."):
                continue
            if node.module not in PUBLIC:
                bad.append(f"line {node.lineno}: from {node.module} import ...")
                continue
            for alias in node.names:
                if alias.name not in PUBLIC[node.module]:
                    bad.append(f"line {node.lineno}: from {node.module} import {alias.name} (not in __all__)")
    return bad


@pytest.mark.parametrize("path", USERS, ids=lambda p: str(p.relative_to(REPO)))
def test_integrations_and_examples_import_only_the_public_api(path):
    bad = non_public_imports(path.read_text(encoding="utf-8"))
    assert not bad, (
        f"{path.relative_to(REPO)} reaches past the public API: {bad}; import from lloco_runtime or "
        "lloco_runtime.store (add the name to their __all__ if it belongs to the public API)"
    )


def test_the_import_check_can_fail():
    """The check above finds deep modules, names outside ``__all__``, star and lazy imports."""
    planted = (
        "from lloco_runtime.service import LLoCOService\n"
        "import lloco_runtime.store.catalog\n"
        "from lloco_runtime import _EXPORTS, LLoCO\n"
        "from lloco_runtime.store import *\n"
        "def f():\n"
        "    from lloco_runtime.store.names import validate_name\n"
        "    from lloco_runtime.store import validate_name as ok\n"
    )
    bad = non_public_imports(planted)
    assert len(bad) == 5, bad
    assert not non_public_imports("import lloco_runtime\nfrom lloco_runtime.store import CheatSheetStore\n")
    assert len(USERS) > 20  # the walk found the packages
