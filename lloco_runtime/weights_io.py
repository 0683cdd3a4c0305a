"""Reading third-party weight folders without unpickling: ``.bin`` state dicts through
``torch.load(weights_only=True)`` only, and folder listings for error messages. Shared by the AutoCompressor
encoder import (:mod:`lloco_runtime.encoder`) and the PEFT adapter import (:mod:`lloco_runtime.peft_io`)."""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import torch

from .errors import LLoCOError


def listing(directory: Path, limit: int = 12) -> str:
    """The first ``limit`` names in ``directory``, for an error message that says what was found."""
    try:
        names = sorted(p.name for p in directory.iterdir())
    except OSError:
        return "nothing readable"
    return (", ".join(names[:limit]) + (" ..." if len(names) > limit else "")) if names else "nothing"


def load_bin_weights(
    file: Path, *, error: type[LLoCOError], fix: str, not_tensors_fix: str = "", mmap: bool = False
) -> dict[str, torch.Tensor]:
    """A ``.bin`` state dict through ``torch.load(weights_only=True)`` only: tensors and plain containers. A
    pickle that names any other global (the way a pickle runs code) is refused before anything of it runs, with
    ``error`` naming what torch found and ``fix`` saying what to do (``not_tensors_fix``: appended when the file
    loads but holds something other than named tensors). ``mmap``: map zip-format files instead of
    reading them whole (large checkpoints)."""
    try:
        data = torch.load(file, weights_only=True, map_location="cpu", mmap=mmap and zipfile.is_zipfile(file))
    except Exception as exc:  # noqa: BLE001 - UnpicklingError (forbidden globals), RuntimeError/EOFError (damage)
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))  # torch's advice (weights_only=False) is left out
        found = re.search(r"Unsupported (?:global: GLOBAL \S+|operand \S+)", text)
        detail = found.group(0) if found else (text.strip().splitlines() or [""])[0][:300]
        raise error(
            f"refused to load {file}: it is not a plain tensor file that torch.load(weights_only=True) can read "
            f"({type(exc).__name__}: {detail}); lloco never unpickles arbitrary objects, which could run code. "
            + fix
        ) from None
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in data.items()
    ):
        raise error(
            f"{file} holds a {type(data).__name__}, not a state dict of named tensors{not_tensors_fix}"
        )
    return data
