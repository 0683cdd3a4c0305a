"""Cheat-sheet codec: exact round trips, and corrupted or truncated blobs always fail loudly."""

from __future__ import annotations

import pytest
import safetensors.torch
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lloco_runtime import CheatSheetError
from lloco_runtime.codec import KEY, decode_tensor, dtype_name, encode_tensor, torch_dtype

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(7,), (4, 16), (2, 3, 5)])
def test_round_trip_is_exact(dtype, shape):
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(shape, generator=g) * 3).to(dtype)
    blob = encode_tensor(x)
    assert set(safetensors.torch.load(blob)) == {KEY}  # a plain safetensors file, one tensor
    y = decode_tensor(blob)
    assert y.dtype == dtype
    assert tuple(y.shape) == shape
    assert torch.equal(y, x)


def test_encode_casts_to_requested_dtype():
    x = torch.randn(3, 8)
    for name, dt in [
        ("float16", torch.float16),
        ("bfloat16", torch.bfloat16),
        (torch.float16, torch.float16),
    ]:
        y = decode_tensor(encode_tensor(x, name))
        assert y.dtype == dt
        assert torch.equal(y, x.to(dt))


def test_decoded_tensor_is_writable_and_independent_of_the_blob():
    blob = bytearray(encode_tensor(torch.ones(2, 3)))
    y = decode_tensor(blob)
    y += 1  # must not raise (frombuffer on immutable bytes would be read-only)
    assert torch.equal(decode_tensor(blob), torch.ones(2, 3))


def test_special_values_survive():
    x = torch.tensor([0.0, -0.0, 1e-30, 65504.0, float("inf"), -float("inf")], dtype=torch.float32)
    y = decode_tensor(encode_tensor(x))
    assert torch.equal(y, x)
    assert torch.signbit(y[1])


@pytest.mark.parametrize(
    "bad",
    [
        torch.empty(0, 4),
        torch.zeros(()),
        torch.zeros(1, 1, 1, 1, 1),
        torch.zeros(3, dtype=torch.int64),
        torch.zeros(3, dtype=torch.float64),
    ],
)
def test_encode_rejects_unsupported_tensors(bad):
    with pytest.raises(CheatSheetError):
        encode_tensor(bad)


def test_encode_rejects_non_tensors():
    with pytest.raises(CheatSheetError):
        encode_tensor([1.0, 2.0])  # type: ignore[arg-type]


def test_dtype_names():
    for dt in DTYPES:
        assert torch_dtype(dtype_name(dt)) == dt
    with pytest.raises(CheatSheetError, match="float32"):
        torch_dtype("int8")


@pytest.mark.parametrize(
    "blob",
    [
        b"",
        b"LLC",
        b"XXXX\x01\x01\x01",
        b"LLCS\x09\x01\x01" + b"\0" * 12,
        b"\x02\0\0\0\0\0\0\0{}",
        safetensors.torch.save({KEY: torch.ones(2)}),  # no checksum
        safetensors.torch.save({"other": torch.ones(2)}, metadata={"crc32": "00000000"}),
    ],
)
def test_decode_rejects_garbage(blob):
    with pytest.raises(CheatSheetError):
        decode_tensor(blob)


def test_a_legacy_llcs_blob_says_how_to_migrate():
    with pytest.raises(CheatSheetError, match="lloco db init"):
        decode_tensor(b"LLCS\x01\x02\x01\x02\0\0\0" + b"\0" * 8)


_BLOBS = {
    dt: encode_tensor((torch.randn(3, 5, generator=torch.Generator().manual_seed(2))).to(dt)) for dt in DTYPES
}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dtype=st.sampled_from(DTYPES), data=st.data())
def test_any_single_byte_corruption_is_detected(dtype, data):
    blob = _BLOBS[dtype]
    pos = data.draw(st.integers(0, len(blob) - 1), label="position")
    value = data.draw(st.integers(0, 255).filter(lambda v: v != blob[pos]), label="new byte")
    corrupted = blob[:pos] + bytes([value]) + blob[pos + 1 :]
    with pytest.raises(CheatSheetError):
        decode_tensor(corrupted)


@settings(max_examples=100, deadline=None)
@given(dtype=st.sampled_from(DTYPES), data=st.data())
def test_any_truncation_or_extension_is_detected(dtype, data):
    blob = _BLOBS[dtype]
    cut = data.draw(st.integers(0, len(blob) - 1), label="cut")
    with pytest.raises(CheatSheetError):
        decode_tensor(blob[:cut])
    extra = data.draw(st.binary(min_size=1, max_size=8), label="extra")
    with pytest.raises(CheatSheetError):
        decode_tensor(blob + extra)


def test_every_header_byte_is_protected():
    """Exhaustive over the header: no single-byte change there decodes to anything."""
    blob = _BLOBS[torch.float16]
    header_len = 8 + int.from_bytes(blob[:8], "little")  # length prefix and JSON header
    for pos in range(header_len):
        for value in range(256):
            if value == blob[pos]:
                continue
            corrupted = blob[:pos] + bytes([value]) + blob[pos + 1 :]
            with pytest.raises(CheatSheetError):
                decode_tensor(corrupted)
