"""Tensor <-> bytes codec for cheat sheets. No pickle: a fixed binary header, raw values, a checksum.

Layout (little-endian)::

    b"LLCS" | version u8 | dtype code u8 | ndim u8 | shape u32 * ndim | crc32(header + payload) u32 | payload

The header makes a blob self-describing and the CRC (over the header fields before it and the payload)
rejects corrupted bytes, so a damaged row fails loudly instead of decoding into a tensor of the wrong
shape, the wrong dtype (float16 and bfloat16 have the same size) or garbage values.
"""

from __future__ import annotations

import struct
import zlib

import torch

from .errors import CheatSheetError

MAGIC = b"LLCS"
VERSION = 1
_DTYPES: dict[str, tuple[int, torch.dtype]] = {
    "float32": (1, torch.float32),
    "float16": (2, torch.float16),
    "bfloat16": (3, torch.bfloat16),
}
_BY_CODE = {code: (name, dt) for name, (code, dt) in _DTYPES.items()}
MAX_NDIM = 4


def dtype_name(dtype: torch.dtype) -> str:
    """The codec's name for a torch dtype (``float32``, ``float16``, ``bfloat16``)."""
    for name, (_, dt) in _DTYPES.items():
        if dt == dtype:
            return name
    raise CheatSheetError(f"unsupported cheat-sheet dtype {dtype}; use float32, float16 or bfloat16")


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype for a codec dtype name."""
    try:
        return _DTYPES[name][1]
    except KeyError:
        raise CheatSheetError(
            f"unsupported cheat-sheet dtype {name!r}; expected one of {sorted(_DTYPES)}"
        ) from None


def encode_tensor(tensor: torch.Tensor, dtype: str | torch.dtype | None = None) -> bytes:
    """Serialise a tensor (optionally cast to ``dtype``) to a checksummed blob."""
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
    # bfloat16 has no numpy dtype: view the raw 16-bit words instead.
    raw = t.view(torch.int16).numpy().tobytes() if t.dtype == torch.bfloat16 else t.numpy().tobytes()
    header = MAGIC + struct.pack("<BBB", VERSION, _DTYPES[name][0], t.ndim)
    header += struct.pack(f"<{t.ndim}I", *t.shape)
    header += struct.pack("<I", zlib.crc32(raw, zlib.crc32(header)))
    return header + raw


def decode_tensor(blob: bytes | bytearray | memoryview) -> torch.Tensor:
    """Parse a blob made by :func:`encode_tensor`; any inconsistency raises :class:`CheatSheetError`."""
    data = bytes(blob)
    fixed = len(MAGIC) + 3
    if len(data) < fixed or data[: len(MAGIC)] != MAGIC:
        raise CheatSheetError("corrupted cheat sheet: missing LLCS header; re-ingest the document")
    version, code, ndim = struct.unpack_from("<BBB", data, len(MAGIC))
    if version != VERSION:
        raise CheatSheetError(f"cheat sheet format version {version} is not supported (expected {VERSION})")
    if code not in _BY_CODE:
        raise CheatSheetError(f"corrupted cheat sheet: unknown dtype code {code}")
    if not 1 <= ndim <= MAX_NDIM:
        raise CheatSheetError(f"corrupted cheat sheet: {ndim} dimensions")
    need = fixed + 4 * ndim + 4
    if len(data) < need:
        raise CheatSheetError("corrupted cheat sheet: truncated header")
    shape = struct.unpack_from(f"<{ndim}I", data, fixed)
    (crc,) = struct.unpack_from("<I", data, fixed + 4 * ndim)
    name, dt = _BY_CODE[code]
    itemsize = torch.empty((), dtype=dt).element_size()
    count = 1
    for s in shape:
        count *= s
    payload = data[need:]
    if count == 0 or len(payload) != count * itemsize:
        raise CheatSheetError(
            f"corrupted cheat sheet: header says {name}{list(shape)} ({count * itemsize} bytes), "
            f"payload has {len(payload)} bytes"
        )
    if zlib.crc32(payload, zlib.crc32(data[: need - 4])) != crc:
        raise CheatSheetError("corrupted cheat sheet: checksum mismatch; re-ingest the document")
    if dt == torch.bfloat16:
        out = torch.frombuffer(bytearray(payload), dtype=torch.int16).view(torch.bfloat16)
    else:
        out = torch.frombuffer(bytearray(payload), dtype=dt)
    return out.reshape(shape)
