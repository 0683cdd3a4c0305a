"""Reader of the cheat-sheet format lloco wrote before it used safetensors (schema versions before 2).

Used only by schema migration 2, which rewrites every such blob with :func:`lloco_runtime.codec.encode_tensor`.
Decode only: nothing writes this format any more. Layout (little-endian)::

    b"LLCS" | version u8 (1) | dtype code u8 | ndim u8 | shape u32 * ndim | crc32(header + payload) u32 | payload
"""

from __future__ import annotations

import struct
import zlib

import torch

from ..codec import LEGACY_MAGIC
from ..errors import CheatSheetError

LEGACY_VERSION = 1
_BY_CODE: dict[int, tuple[str, torch.dtype]] = {
    1: ("float32", torch.float32),
    2: ("float16", torch.float16),
    3: ("bfloat16", torch.bfloat16),
}
_MAX_NDIM = 4


def decode_legacy_tensor(blob: bytes | bytearray | memoryview) -> torch.Tensor:
    """Parse an LLCS blob, checking its header and CRC-32; any inconsistency raises :class:`CheatSheetError`."""
    data = bytes(blob)
    fixed = len(LEGACY_MAGIC) + 3
    if len(data) < fixed or data[: len(LEGACY_MAGIC)] != LEGACY_MAGIC:
        raise CheatSheetError("not an LLCS cheat sheet: missing LLCS header")
    version, code, ndim = struct.unpack_from("<BBB", data, len(LEGACY_MAGIC))
    if version != LEGACY_VERSION:
        raise CheatSheetError(f"LLCS format version {version} is not supported (expected {LEGACY_VERSION})")
    if code not in _BY_CODE:
        raise CheatSheetError(f"unknown dtype code {code}")
    if not 1 <= ndim <= _MAX_NDIM:
        raise CheatSheetError(f"{ndim} dimensions")
    need = fixed + 4 * ndim + 4
    if len(data) < need:
        raise CheatSheetError("truncated header")
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
            f"header says {name}{list(shape)} ({count * itemsize} bytes), payload has {len(payload)} bytes"
        )
    if zlib.crc32(payload, zlib.crc32(data[: need - 4])) != crc:
        raise CheatSheetError("checksum mismatch")
    if dt == torch.bfloat16:
        out = torch.frombuffer(bytearray(payload), dtype=torch.int16).view(torch.bfloat16)
    else:
        out = torch.frombuffer(bytearray(payload), dtype=dt)
    return out.reshape(shape)
