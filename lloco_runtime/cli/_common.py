"""What every ``lloco`` command family shares: its options (defined here once), loading the runtime and the
store from them, JSON output, optional extras, and turning errors into a message and an exit code.

Light at import time: the heavy modules (torch, the store) are imported inside the functions, when a command
runs, so ``lloco --help`` stays fast.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import sys
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

from ..errors import ConfigError, InputError, LLoCOError

# -- options ------------------------------------------------------------------------------------------------

MODEL_OPTIONS = {
    "model": "decoder: 'default' (SmolLM2-135M), a local HF folder or a .gguf file",
    "encoder": "encoder folder (default: the shipped encoder)",
    "device": "cpu or cuda (default: cuda if available)",
    "dtype": "float32, bfloat16 or float16 (default: by device)",
}

PRESET_HELP = (
    "named settings, overridden by explicit flags; `lloco info --preset NAME` shows what one "
    "sets (lloco-paper: LLaMA-2-chat prompt, 50 summary vectors per 1,536 tokens accumulated over "
    "a document, group LoRA r8 alpha16 on q/k/v/o)"
)

# = lloco_runtime.store (DEFAULT_COLLECTION, RetrievalMode, DEFAULT_MODE, DEFAULT_TOP_K), spelled
# out here so that building the parser imports no store code (the store loads torch); tests/runtime/test_cli.py
# checks that they agree.
DEFAULT_COLLECTION = "default"
RETRIEVAL_MODE_CHOICES = ("dense", "fulltext", "hybrid")
DEFAULT_RETRIEVAL_MODE = "hybrid"
DEFAULT_TOP_K = 4


def add_model_options(
    p: argparse.ArgumentParser, *, only: Sequence[str] = tuple(MODEL_OPTIONS), **helps: str
) -> None:
    """``--model --encoder --device --dtype`` (or those in ``only``); ``helps`` overrides a flag's help."""
    for flag in only:
        p.add_argument(f"--{flag}", default=None, help=helps.get(flag, MODEL_OPTIONS[flag]))


def model_parent() -> argparse.ArgumentParser:
    """The model options as a parent parser (``parents=[...]``: they come first in a command's help)."""
    p = argparse.ArgumentParser(add_help=False)
    add_model_options(p)
    return p


def add_db_options(p: argparse.ArgumentParser) -> None:
    """``--url --schema``: the Postgres database and the schema lloco owns in it."""
    p.add_argument(
        "--url",
        default=None,
        help="Postgres URL (default: LLOCO_DATABASE_URL, else the embedded server under LLOCO_HOME)",
    )
    p.add_argument("--schema", default=None, help="schema lloco owns (default: LLOCO_SCHEMA or lloco)")


def add_collection_option(p: argparse.ArgumentParser, what: str = "collection of the group") -> None:
    """``--collection`` (of the group the command works on)."""
    p.add_argument("--collection", default=DEFAULT_COLLECTION, help=f"{what} (default: {DEFAULT_COLLECTION})")


def add_retrieval_options(
    p: argparse.ArgumentParser,
    *,
    top_k_help: str | None = None,
    mode_flag: str = "--mode",
    mode_help: str | None = None,
) -> None:
    """``--top-k`` and the retrieval mode (``--mode``, or ``mode_flag``) with the store's choices and defaults."""
    p.add_argument("--top-k", type=int, default=DEFAULT_TOP_K, help=top_k_help)
    p.add_argument(mode_flag, choices=RETRIEVAL_MODE_CHOICES, default=DEFAULT_RETRIEVAL_MODE, help=mode_help)


def add_focus_option(p: argparse.ArgumentParser) -> None:
    """``--no-focus``: read stored cheat sheets as they are, literal tokens not chosen for the question."""
    p.add_argument(
        "--no-focus",
        action="store_true",
        help="read cheat sheets as stored: do not choose their literal tokens for the question at answer "
        "time (question-aware literal tokens are on by default where the encoder allows them)",
    )
    p.add_argument(
        "--focus-budget",
        choices=("shared", "chunk"),
        default=None,
        help="with focus, how the literal tokens of several chunks read for one question are spent: "
        "'shared' (default) pools their budgets, so the chunks the question points to keep more of their "
        "text; 'chunk' keeps each chunk's own budget. Either way the positions in all are the same",
    )


def add_preset_option(p: argparse.ArgumentParser, more: str = "") -> None:
    """``--preset NAME``; ``more`` is appended to the shared help text."""
    p.add_argument("--preset", default=None, metavar="NAME", help=PRESET_HELP + more)


# -- what the options load ----------------------------------------------------------------------------------


def preset_of(args: argparse.Namespace):
    """The preset named by ``--preset`` (None without one); an unknown name is bad input."""
    name = getattr(args, "preset", None)
    if name is None:
        return None
    from ..presets import get_preset

    try:
        return get_preset(name)
    except ConfigError as exc:
        raise InputError(f"--preset: {exc}") from None


def load_runtime(args: argparse.Namespace):
    """The runtime named by ``--model/--encoder/--device/--dtype`` and ``--preset``; the project's default
    runtime when they name nothing."""
    from ..runtime import LLoCO, load_default_runtime

    model, encoder, device, dtype = (getattr(args, k, None) for k in MODEL_OPTIONS)
    preset = preset_of(args)
    if preset is None:
        if not any((model, encoder, device, dtype)):
            lloco = load_default_runtime()
        else:
            lloco = LLoCO.from_pretrained(model, encoder=encoder, device=device, dtype=dtype)
    else:
        # The preset's prompt template; its encoder settings make the fresh encoder a non-default model
        # would get anyway (an --encoder folder keeps its own, fingerprinted settings: `lloco info
        # --preset` shows any gap).
        if encoder is None and model not in (None, "default"):
            encoder = preset.encoder_config()
        lloco = LLoCO.from_pretrained(
            model, encoder=encoder, device=device, dtype=dtype, template=preset.template()
        )
    no_focus, budget = getattr(args, "no_focus", False), getattr(args, "focus_budget", None)
    if no_focus or (budget is not None and budget != lloco.focus_budget):
        lloco = copy.copy(lloco)  # the process-wide default runtime keeps its own setting
        if no_focus:
            lloco.focus = False
        if budget is not None:
            lloco.focus_budget = budget
    return lloco


def open_store(args: argparse.Namespace, *, create: bool = False, **kw: Any):
    """The :class:`~lloco_runtime.store.CheatSheetStore` of ``--url/--schema`` (``create``: make the schema)."""
    from ..store import CheatSheetStore

    return CheatSheetStore(args.url, schema=args.schema, create=create, **kw)


def import_extra(module: str, *, extra: str, needs: str) -> ModuleType:
    """``module``, or a ConfigError saying ``needs`` and how to install the ``extra`` it comes with."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError(
            f"{needs} ({exc.name or exc} is not installed): pip install 'lloco[{extra}]'"
        ) from None


def need_pyplot() -> None:
    """Fail now, with the install command, when a plot was asked for and matplotlib is missing."""
    from ..plotting import pyplot

    pyplot()


def check_png(path: str | None) -> None:
    """``--plot PATH``: a .png path, and matplotlib present (checked before any work)."""
    if path is None:
        return
    if not path.lower().endswith(".png"):
        raise InputError("--plot writes a PNG; give a path ending in .png")
    need_pyplot()


def int_list(value: str | None, flag: str, *, allow_empty: bool = False) -> list[int] | None:
    """``"1000,7000"`` -> ``[1000, 7000]``; InputError naming ``flag`` for anything else."""
    if value is None:
        return None
    parts = [x.strip() for x in value.split(",") if x.strip()]
    try:
        out = [int(x) for x in parts]
    except ValueError:
        out = []
    if (not out and not allow_empty) or any(c < 1 for c in out) or len(out) != len(parts):
        raise InputError(f"{flag} takes positive token counts, e.g. 1000,6000")
    return out


# -- output and errors --------------------------------------------------------------------------------------


def print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str))


def run_command(func: Callable[[argparse.Namespace], int | None], args: argparse.Namespace) -> int:
    """Run a command: ``error: ...`` on stderr and exit 2 for bad input, 1 for any other LLoCOError."""
    try:
        return int(func(args) or 0)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except LLoCOError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
