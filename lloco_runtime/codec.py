"""Tensor <-> bytes codec for cheat sheets: one tensor in a safetensors blob, with a checksum. No pickle.

A blob is what ``safetensors.torch.save({KEY: tensor}, metadata={CRC_KEY: "%08x"})`` writes::

    header length u64 | JSON header {"__metadata__":{"crc32":"..."},"cheat_sheet":{dtype, shape, offsets}} | payload

safetensors checks the header and that the payload is exactly as long as the header says. On top of that the
codec keeps a CRC-32 of the dtype, the shape and the payload in the metadata and checks it on decode, and it
refuses any header that is not in the compact form safetensors writes (no whitespace but the trailing space
padding), so a damaged row fails loudly with :class:`CheatSheetError` instead of decoding into a tensor of the
wrong shape, the wrong dtype or garbage values.

Blobs written before lloco used safetensors start with ``b"LLCS"`` (:data:`LEGACY_MAGIC`); they are not
decoded here: the store's schema migration 2 rewrites them (``lloco db init``).
"""

from __future__ import annotations

import json
import zlib

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from .errors import CheatSheetError

KEY = "cheat_sheet"  # the one tensor in a blob
CRC_KEY = "crc32"  # its metadata entry: CRC-32 of dtype, shape and payload, 8 lowercase hex digits
LEGACY_MAGIC = b"LLCS"  # first bytes of a blob of the pre-safetensors codec
_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
MAX_NDIM = 4
_WHITESPACE = b" \t\n\r"
_LOAD_ERRORS = (SafetensorError, KeyError, ValueError, RuntimeError, AssertionError)


def dtype_name(dtype: torch.dtype) -> str:
    """The codec's name for a torch dtype (``float32``, ``float16``, ``bfloat16``)."""
    for name, dt in _DTYPES.items():
        if dt == dtype:
            return name
    raise CheatSheetError(f"unsupported cheat-sheet dtype {dtype}; use float32, float16 or bfloat16")


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype for a codec dtype name."""
    try:
        return _DTYPES[name]
    except KeyError:
        raise CheatSheetError(
            f"unsupported cheat-sheet dtype {name!r}; expected one of {sorted(_DTYPES)}"
        ) from None


def _checksum(name: str, shape: tuple[int, ...] | list[int], payload) -> str:
    """CRC-32 over the dtype name, the shape and the raw little-endian values, as 8 lowercase hex digits."""
    seed = zlib.crc32(f"{name}{list(shape)}".encode())
    return f"{zlib.crc32(payload, seed):08x}"


def _raw(t: torch.Tensor):
    """The bytes of a contiguous CPU tensor as a buffer, without a copy (bfloat16 has no numpy dtype)."""
    return t.reshape(-1).view(torch.uint8).numpy()


def encode_tensor(tensor: torch.Tensor, dtype: str | torch.dtype | None = None) -> bytes:
    """Serialise a tensor (optionally cast to ``dtype``) to a checksummed safetensors blob."""
    if not isinstance(tensor, torch.Tensor):
        raise CheatSheetError(f"expected a torch.Tensor, got {type(tensor).__name__}")
    if dtype is not None:
        tensor = tensor.to(torch_dtype(dtype) if isinstance(dtype, str) else dtype)
    name = dtype_name(tensor.dtype)
    if tensor.ndim < 1 or tensor.ndim > MAX_NDIM:
        raise CheatSheetError(f"cheat-sheet tensors have 1 to {MAX_NDIM} dimensions, got {tensor.ndim}")
    if tensor.numel() == 0:
        raise CheatSheetError("refusing to encode an empty tensor")
    t = tensor.detach().to("cpu").contiguous()
    crc = _checksum(name, tuple(t.shape), _raw(t))
    return save_safetensors({KEY: t}, metadata={CRC_KEY: crc})


def _corrupt(why: str) -> CheatSheetError:
    return CheatSheetError(f"corrupted cheat sheet: {why}; re-ingest the document")


def decode_tensor(blob: bytes | bytearray | memoryview) -> torch.Tensor:
    """Parse a blob made by :func:`encode_tensor`; any inconsistency raises :class:`CheatSheetError`.

    The tensor returned owns its memory (it is writable and independent of ``blob``)."""
    if not isinstance(blob, bytes | bytearray | memoryview):
        raise CheatSheetError(f"expected cheat-sheet bytes, got {type(blob).__name__}")
    data = bytes(blob)
    if data.startswith(LEGACY_MAGIC):
        raise CheatSheetError(
            "cheat sheet is in the LLCS format of older lloco versions; upgrade the store with "
            "`lloco db init` (schema migration 2 rewrites it as safetensors)"
        )
    try:
        tensors = load_safetensors(data)
    except _LOAD_ERRORS as exc:  # safetensors' own error, or a dtype this torch lacks: damaged bytes
        raise _corrupt(f"not a valid safetensors blob ({str(exc).splitlines()[0] if str(exc) else exc!r})")
    # safetensors accepted the header, so it is a well-formed JSON object of the length the prefix says.
    n = int.from_bytes(data[:8], "little")
    text = data[8 : 8 + n]
    if any(b in _WHITESPACE for b in text.rstrip(b" ")):
        raise _corrupt("header is not in compact form")
    meta = json.loads(text).get("__metadata__") or {}
    if set(tensors) != {KEY} or set(meta) != {CRC_KEY}:
        raise _corrupt(
            f"expected one tensor {KEY!r} and a {CRC_KEY} entry, got {sorted(tensors)}, {sorted(meta)}"
        )
    out = tensors[KEY]
    if out.dtype not in _DTYPES.values():
        raise _corrupt(f"unsupported dtype {out.dtype}")
    if not 1 <= out.ndim <= MAX_NDIM or out.numel() == 0:
        raise _corrupt(f"shape {list(out.shape)}")
    if _checksum(dtype_name(out.dtype), tuple(out.shape), memoryview(data)[8 + n :]) != meta[CRC_KEY]:
        raise _corrupt("checksum mismatch")
    return out
