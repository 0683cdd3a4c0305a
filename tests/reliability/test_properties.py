"""Property and fuzz tests (hypothesis): chunking, the tensor codec and the filter compiler.

Extends tests/runtime/test_encoder.py (split of random text with 5-token segments), test_codec.py (single-byte
corruption, truncation) and test_store_filters.py (one hand-written compiled filter) with: any segment length and
the stored chunks in Postgres; arbitrary shapes, dtypes and multi-byte damage for the codec, blobs forged with a
valid checksum; and arbitrary filter data whose compiled SQL must stay inside a fixed vocabulary of tokens, with
every user value bound, and must run on Postgres without error.
"""

from __future__ import annotations

import json
import re
import zlib

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from reliability_helpers import new_schema, open_store

from lloco_runtime.codec import CRC_KEY, KEY, LEGACY_MAGIC, decode_tensor, encode_tensor
from lloco_runtime.errors import CheatSheetError, InputError
from lloco_runtime.store import DocumentInput
from lloco_runtime.store.filters import compile_filter, parse_filter

FIXTURES = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]

# -- chunking -------------------------------------------------------------------------------------------------

WORDS = st.sampled_from(
    [
        "lighthouse",
        " ",
        "\n",
        "naïve",
        "東京",
        "🎉",
        "e\u0301",
        "  ",
        "1852",
        "—",
        ",",
        "x" * 25,
        "\t",
        "Ünïcödé",
        "ok.",
        "\r\n",
    ]
)
TEXTS = st.one_of(st.text(min_size=1, max_size=300), st.lists(WORDS, min_size=1, max_size=80).map("".join))


@pytest.fixture(scope="module")
def host(tiny_model_dir):
    from lloco_runtime import load_model

    return load_model(tiny_model_dir, device="cpu", dtype="float32")


def token_ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@settings(max_examples=120, deadline=None, suppress_health_check=FIXTURES)
@given(text=TEXTS, segment=st.integers(1, 48))
def test_every_token_lands_in_exactly_one_chunk_in_order(host, text, segment):
    from lloco_runtime import ContextEncoder, EncoderConfig

    enc = ContextEncoder(host, EncoderConfig(segment_length=segment, summary_length=1))
    ids = token_ids(host.tokenizer, text)
    if not text.strip() or "\x00" in text or not ids or not _utf8(text):
        with pytest.raises(InputError):
            enc.split(text)
        return
    chunks = enc.split(text)
    assert [t for c in chunks for t in c.token_ids] == ids
    assert [c.ordinal for c in chunks] == list(range(len(chunks)))
    assert all(1 <= c.n_tokens <= segment for c in chunks) and all(c.n_tokens == segment for c in chunks[:-1])
    assert "".join(c.text for c in chunks) == text
    assert all(text[c.char_start : c.char_end] == c.text for c in chunks)


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@pytest.fixture(scope="module")
def chunk_store(pg_url):
    s = open_store(pg_url, new_schema())
    yield s
    s.drop_schema()
    s.close()


@settings(max_examples=25, deadline=None, suppress_health_check=FIXTURES)
@given(text=st.lists(WORDS, min_size=1, max_size=120).map("".join), segment=st.integers(2, 24))
def test_stored_chunks_reassemble_the_document(host, chunk_store, text, segment):
    """Through the store: the chunks in Postgres, read back in order, are the document, token for token."""
    from lloco_runtime import ContextEncoder, EncoderConfig

    assume(text.strip())
    enc = ContextEncoder(host, EncoderConfig(segment_length=segment, summary_length=1))
    chunk_store.ingest([DocumentInput("doc", text)], group="p", encoder=enc)
    rows = chunk_store.list_chunks("p", doc_ids=["doc"])
    assert [r.ordinal for r in rows] == list(range(len(rows)))
    assert "".join(r.text for r in rows) == text
    assert sum(r.n_tokens for r in rows) == len(token_ids(host.tokenizer, text))
    sheets = chunk_store.cheat_sheets([r.chunk_id for r in rows], encoder_fingerprint=enc.fingerprint)
    assert [tuple(s.shape) for s in sheets] == [(1, host.hidden_size)] * len(rows)


# -- codec ----------------------------------------------------------------------------------------------------

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SHAPES = st.lists(st.integers(1, 6), min_size=1, max_size=4).map(tuple)


@settings(max_examples=200, deadline=None)
@given(
    dtype=st.sampled_from(DTYPES),
    shape=SHAPES,
    seed=st.integers(0, 2**31 - 1),
    scale=st.sampled_from([1e-8, 1.0, 1e4, 6e4]),
)
def test_codec_round_trip(dtype, shape, seed, scale):
    t = (torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * scale).to(dtype)
    out = decode_tensor(encode_tensor(t))
    assert out.dtype == dtype and out.shape == t.shape
    assert torch.equal(
        out.view(torch.int16 if dtype != torch.float32 else torch.int32),
        t.view(torch.int16 if dtype != torch.float32 else torch.int32),
    )  # bit-exact, NaN-safe


def _header(blob: bytes) -> dict:
    """The JSON header of a safetensors blob (8-byte little-endian length, then the JSON)."""
    n = int.from_bytes(blob[:8], "little")
    return json.loads(blob[8 : 8 + n])


_PREFIX = encode_tensor(torch.ones(2, 3, dtype=torch.float16))[:24]  # length prefix + '{"__metadata__":{"'


@settings(max_examples=300, deadline=None)
@given(
    blob=st.one_of(
        st.binary(max_size=200),
        st.binary(max_size=120).map(lambda b: _PREFIX[:8] + b),
        st.binary(max_size=120).map(lambda b: _PREFIX + b),
        st.binary(max_size=120).map(lambda b: LEGACY_MAGIC + b),
    )
)
def test_arbitrary_bytes_are_rejected_never_misshaped(blob):
    try:
        out = decode_tensor(blob)
    except CheatSheetError:
        return
    # Decoding random bytes needs a valid header and a matching CRC-32; if it ever happens the result must
    # match its header.
    spec = _header(blob)[KEY]
    assert list(out.shape) == spec["shape"]
    assert out.numel() * out.element_size() == len(blob) - 8 - int.from_bytes(blob[:8], "little")


@settings(max_examples=300, deadline=None)
@given(dtype=st.sampled_from(DTYPES), shape=SHAPES, data=st.data())
def test_any_multi_byte_corruption_is_rejected(dtype, shape, data):
    blob = encode_tensor(torch.randn(shape).to(dtype))
    positions = data.draw(st.lists(st.integers(0, len(blob) - 1), min_size=1, max_size=8, unique=True))
    damaged = bytearray(blob)
    for p in positions:
        damaged[p] ^= data.draw(st.integers(1, 255))
    with pytest.raises(CheatSheetError):
        decode_tensor(bytes(damaged))


_CODEC_NAMES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}


def _forge(dtype: str, shape: tuple[int, ...], payload: bytes, key: str = KEY) -> bytes:
    """A safetensors blob whose checksum is right, whatever its header claims (what a careless writer could
    produce): compact JSON header padded with spaces, CRC-32 of dtype name, shape and payload."""
    name = _CODEC_NAMES.get(dtype, dtype)
    crc = zlib.crc32(payload, zlib.crc32(f"{name}{list(shape)}".encode()))
    spec = {"dtype": dtype, "shape": list(shape), "data_offsets": [0, len(payload)]}
    header = json.dumps({"__metadata__": {CRC_KEY: f"{crc:08x}"}, key: spec}, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)
    return len(header).to_bytes(8, "little") + header + payload


def test_forge_matches_the_codec():
    """The forger writes what the codec writes, so the property below is not vacuous."""
    for dt in DTYPES:
        t = torch.randn(2, 3).to(dt)
        blob = encode_tensor(t)
        raw = blob[8 + int.from_bytes(blob[:8], "little") :]
        st_name = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}[dt]
        assert _forge(st_name, (2, 3), raw) == blob
        assert torch.equal(decode_tensor(_forge(st_name, (2, 3), raw)), t)


@settings(max_examples=300, deadline=None)
@given(
    dtype=st.sampled_from(["F32", "F16", "BF16", "F16", "I16", "U16", "F64", "I8", "U8", "BOOL", "XX"]),
    shape=st.lists(st.integers(0, 2**32 - 1), min_size=0, max_size=6).map(tuple),
    payload=st.binary(max_size=256),
    key=st.sampled_from([KEY, KEY, "weights"]),
)
def test_forged_headers_with_a_valid_checksum_never_misshape(dtype, shape, payload, key):
    try:
        out = decode_tensor(_forge(dtype, shape, payload, key))
    except CheatSheetError:
        return
    assert key == KEY and 1 <= len(shape) <= 4 and dtype in _CODEC_NAMES
    assert out.dtype in DTYPES and str(out.dtype).removeprefix("torch.") == _CODEC_NAMES[dtype]
    assert tuple(out.shape) == shape and out.numel() * out.element_size() == len(payload)


# -- filter compiler --------------------------------------------------------------------------------------------

HOSTILE = [
    "' OR '1'='1",
    "a') OR 1=1 --",
    '"; DROP TABLE chunks; --',
    "%",
    "_",
    "\\",
    "$$",
    "$1",
    "%(x)s",
    "?",
    "::jsonb",
    "*/",
    "/*",
    "\u2028",
    "é",
    "🎉",
    "a.b",
    "..",
    ".a",
    "a.",
    "a b",
    "",
    "x" * 70,
    "ud\ud800",
]
KEYS = st.one_of(
    st.sampled_from(["topic", "year", "tags", "a.b", "a.b.c", "_x", "k-1", "A_b"] + HOSTILE),
    st.text(max_size=12),
)
OPS = st.one_of(
    st.sampled_from(
        [
            "==",
            "!=",
            ">",
            ">=",
            "<",
            "<=",
            "in",
            "nin",
            "contains",
            "text_match",
            "eq",
            "NE",
            "not_in",
            "LIKE",
            "= 1 OR 1=1",
            "",
            None,
            1,
        ]
    ),
    st.text(max_size=6),
)
SCALARS = st.one_of(
    st.sampled_from(HOSTILE),
    st.text(max_size=20),
    st.integers(-(10**30), 10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
)
VALUES = st.one_of(
    SCALARS, st.lists(SCALARS, max_size=4), st.dictionaries(st.text(max_size=4), SCALARS, max_size=2)
)
LEAF = st.fixed_dictionaries({"key": KEYS, "op": OPS, "value": VALUES})
FILTERS = st.recursive(
    LEAF,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.sampled_from(["and", "or"]), st.lists(inner, max_size=3), min_size=1, max_size=1),
        st.fixed_dictionaries(
            {"condition": st.sampled_from(["and", "or", "xor", "'"]), "filters": st.lists(inner, max_size=3)}
        ),
    ),
    max_leaves=8,
)

# Everything compiled SQL may contain besides bound placeholders: the column, operators and two literals.
SQL_TOKENS = re.compile(
    r"%\(\w+\)s|\br_\w+\.chunks\.metadata\b|#>>|#>|@>|jsonb_typeof|CAST|AS JSONB|::JSONB|::VARCHAR"
    r"|IS DISTINCT FROM|IS NULL|IS NOT NULL|\bNOT\b|\bAND\b|\bOR\b|\bILIKE\b|\bLIKE\b|ESCAPE '/'"
    r"|'%%'|\|\||!=|<=|>=|=|<|>|\(|\)|\s+"
)


@pytest.fixture(scope="module")
def filter_store(pg_url, tiny_encoder):
    s = open_store(pg_url, new_schema())
    s.ingest(
        [
            DocumentInput(
                "d1",
                "The lighthouse keeper.",
                {"topic": "sea", "year": 1852, "tags": ["a", "b"], "a": {"b": "x' OR '1'='1"}},
            ),
            DocumentInput("d2", "The pump reset.", {"topic": "%", "year": "1852", "k-1": None}),
        ],
        group="f",
        encoder=tiny_encoder,
    )
    yield s
    s.drop_schema()
    s.close()


@settings(max_examples=250, deadline=None, suppress_health_check=FIXTURES)
@given(data=FILTERS)
def test_no_filter_input_produces_sql_outside_its_bound_parameters(filter_store, data):
    from sqlalchemy.dialects import postgresql

    try:
        flt = parse_filter(data)
        cond = compile_filter(flt, filter_store.tables.chunks.c.meta)
    except InputError:
        return  # refused before any SQL exists
    compiled = cond.compile(dialect=postgresql.dialect())
    sql = str(compiled)
    leftover = SQL_TOKENS.sub("", sql)
    assert leftover == "", f"unexpected SQL text {leftover!r} in {sql}"
    # Postgres accepts every compiled filter (a user can never cause a database error with one), and the
    # filter can only narrow the group: it never reaches rows of another group.
    ids = {c.chunk_id for c in filter_store.list_chunks("f", filters=flt)}
    assert ids <= {c.chunk_id for c in filter_store.list_chunks("f")}
    for mode in ("dense", "fulltext", "hybrid"):
        filter_store.retrieve("lighthouse pump", group="f", mode=mode, filters=flt, load_cheat_sheets=False)
