"""The README's promises: every ```python block runs as written (```py blocks, which need a running server,
compile), every command in a ```bash block parses.

Python blocks run in a subprocess from the repository root (as a reader pastes them), each against a fresh
database of the session's embedded Postgres (``LLOCO_DATABASE_URL``), with the real default model where the
block uses it. The only edits: the placeholder model folders of the GPU section become tiny stand-ins of
the same format (``PLACEHOLDERS``), since their real checkpoints are 7B models on a GPU.

Shell lines: ``lloco ...`` must parse with the real CLI parser (cheap ones also run for real against a fresh
database), ``make X`` must name a Makefile target, ``export VAR=...`` must set a documented variable.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text(encoding="utf-8")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)

AUTOCOMPRESSOR = "/models/AutoCompressor-Llama-2-7b-6k"
PLACEHOLDERS = {AUTOCOMPRESSOR}  # replaced by a tiny checkpoint of the same layout
RUN_FOR_REAL = {("db", "init"), ("db", "status"), ("groups", "list")}  # no model needed: seconds each
DOCUMENTED_VARS = {"LLOCO_HOME", "LLOCO_CACHE_DIR", "LLOCO_DATABASE_URL", "LLOCO_SCHEMA"}


def blocks(lang: str) -> list[tuple[str, str]]:
    """``(section heading, body)`` of every fenced block tagged ``lang``, in README order."""
    found = []
    for m in FENCE.finditer(README):
        if m.group(1) == lang:
            headings = re.findall(r"^## (.+)$", README[: m.start()], re.MULTILINE)
            found.append((headings[-1] if headings else "top", m.group(2)))
    return found


def block_id(heading: str) -> str:
    return re.sub(r"\W+", "-", heading.lower()).strip("-")[:40]


def shell_lines() -> list[str]:
    lines = []
    for _, body in blocks("bash"):
        for raw in body.replace("\\\n", " ").splitlines():  # join backslash-continued lines
            if raw.strip():
                lines.append(" ".join(raw.split()))
    return lines


PY_BLOCKS = [body for _, body in blocks("python")]
PY_IDS = [block_id(heading) for heading, _ in blocks("python")]
SHELL = shell_lines()


def test_readme_has_the_promised_parts():
    assert len(PY_BLOCKS) >= 5, "core, LlamaIndex, LangChain, own-Postgres and GPU snippets"
    for needle in (
        "make demo",
        "make test",
        "LLOCO_DATABASE_URL",
        "LLOCO_SCHEMA",
        "lloco finetune",
        "from_autocompressor",
        "## Troubleshooting",
        "measured-numbers:start",
        "measured-numbers:end",
    ):
        assert needle in README, needle
    for body in PY_BLOCKS:
        if "lloco_index" in body or "lloco_langchain" in body:
            assert len(body.strip().splitlines()) <= 20, "framework snippets are promised in 20 lines"


# -- databases --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fresh_db(pg_url):
    """``make()`` -> the URL of a new, empty database on the session's embedded server."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from lloco_runtime.store.server import sqlalchemy_url

    admin = create_engine(sqlalchemy_url(pg_url), isolation_level="AUTOCOMMIT")
    made: list[str] = []

    def make() -> str:
        name = f"readme_{os.getpid()}_{len(made)}"
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))  # test-made identifier, not user input
        made.append(name)
        return make_url(sqlalchemy_url(pg_url)).set(database=name).render_as_string(hide_password=False)

    yield make
    admin.dispose()


def run_env(db_url: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("LLOCO_SCHEMA", None)
    env["LLOCO_DATABASE_URL"] = db_url
    return env


# -- Python blocks ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_autocompressor(tmp_path_factory, tiny_model_dir) -> Path:
    """A tiny checkpoint in the AutoCompressor-Llama-2 layout (Llama config + weights + embed_summary)."""
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoTokenizer

    d = tmp_path_factory.mktemp("autocompressor")
    cfg = json.loads((tiny_model_dir / "config.json").read_text())
    cfg.update(architectures=["LlamaAutoCompressorModel"], summary_length=4, segment_lengths=[64, 64])
    (d / "config.json").write_text(json.dumps(cfg))
    weights = load_file(str(tiny_model_dir / "model.safetensors"))
    weights["embed_summary.weight"] = torch.randn(
        4, cfg["hidden_size"], generator=torch.Generator().manual_seed(0)
    )
    save_file(weights, str(d / "model.safetensors"), metadata={"format": "pt"})
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(d)
    return d


@pytest.mark.default_model
@pytest.mark.parametrize("code", PY_BLOCKS, ids=PY_IDS)
def test_python_block_runs(code, fresh_db, tiny_autocompressor):
    if AUTOCOMPRESSOR in code:
        code = code.replace(AUTOCOMPRESSOR, str(tiny_autocompressor))
    assert not any(p in code for p in PLACEHOLDERS)
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=run_env(fresh_db()),
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
    )
    assert proc.returncode == 0, f"README block failed:\n{code}\n--- stderr ---\n{proc.stderr[-3000:]}"
    assert proc.stdout.strip(), f"README block printed nothing:\n{code}"


@pytest.mark.parametrize(
    "code", [body for _, body in blocks("py")], ids=[block_id(h) for h, _ in blocks("py")]
)
def test_py_block_compiles(code):
    """``py`` blocks need a running `lloco serve` (tests/serve runs the same calls against one): they must at
    least be valid Python."""
    compile(code, "<README py block>", "exec")


# -- shell lines ------------------------------------------------------------------------------------------


def lloco_argv(line: str) -> list[str] | None:
    argv = shlex.split(line, comments=True)
    if argv and argv[0] in ("lloco", ".venv/bin/lloco"):
        return argv[1:]
    return None


def test_every_shell_line_is_known():
    """No shell line the checks below would skip: each is lloco, make or an export of a documented variable."""
    for line in SHELL:
        argv = shlex.split(line, comments=True)
        assert argv and argv[0] in ("lloco", ".venv/bin/lloco", "make", "export"), line


@pytest.mark.parametrize("line", [s for s in SHELL if lloco_argv(s) is not None])
def test_lloco_command_parses(line):
    from lloco_runtime.cli import build_parser

    argv = lloco_argv(line)
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on an unknown command or option
        pytest.fail(f"README command does not parse ({exc.code}): {line}")
    assert getattr(args, "func", None), f"README command names no action: {line}"


def test_cheap_lloco_commands_run(fresh_db):
    """The README's model-free commands (db init, db status, groups list) run for real, in README order."""
    lines = [s for s in SHELL if tuple((lloco_argv(s) or [])[:2]) in RUN_FOR_REAL]
    assert {tuple(lloco_argv(s)[:2]) for s in lines} == RUN_FOR_REAL
    env = run_env(fresh_db())
    for line in lines:
        proc = subprocess.run(
            [sys.executable, "-m", "lloco_runtime.cli", *lloco_argv(line)],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            check=False,
            timeout=300,
        )
        assert proc.returncode == 0, f"{line}\n{proc.stderr[-2000:]}"
        assert proc.stdout.strip(), line


def test_make_targets_and_exports_exist():
    makefile = (REPO / "Makefile").read_text()
    for line in SHELL:
        argv = shlex.split(line, comments=True)
        if argv[0] == "make":
            for target in argv[1:]:
                assert re.search(rf"^{re.escape(target)}:", makefile, re.MULTILINE), (
                    f"no Makefile target {target!r}"
                )
        elif argv[0] == "export":
            name = argv[1].split("=", 1)[0]
            assert name in DOCUMENTED_VARS, f"README exports an undocumented variable: {line}"
