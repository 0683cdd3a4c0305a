"""Schema migration 2: cheat sheets written by the LLCS codec (schema version 1) are rewritten as safetensors.

An old store is simulated on a fully initialised schema: its cheat sheets are replaced by LLCS blobs (written
by the legacy encoder below, which exists only in this test) and the newest ``schema_version`` row is removed.
"""

from __future__ import annotations

import struct
import zlib

import pytest
import torch
from sqlalchemy import delete, func, select, update
from store_helpers import open_store

from lloco_runtime.codec import decode_tensor, dtype_name
from lloco_runtime.errors import CheatSheetError, StoreError
from lloco_runtime.store import CheatSheetStore
from lloco_runtime.store import schema as schema_mod
from lloco_runtime.store.legacy_codec import decode_legacy_tensor

_CODES = {torch.float32: 1, torch.float16: 2, torch.bfloat16: 3}


def legacy_encode(t: torch.Tensor) -> bytes:
    """The pre-safetensors codec's encoder (format version 1), kept here to make old rows."""
    t = t.detach().contiguous()
    raw = t.view(torch.int16).numpy().tobytes() if t.dtype == torch.bfloat16 else t.numpy().tobytes()
    header = b"LLCS" + struct.pack("<BBB", 1, _CODES[t.dtype], t.ndim) + struct.pack(f"<{t.ndim}I", *t.shape)
    header += struct.pack("<I", zlib.crc32(raw, zlib.crc32(header)))
    return header + raw


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int32 if t.dtype == torch.float32 else torch.int16)


def make_old_store(store) -> dict[int, torch.Tensor]:
    """Turn ``store`` into a version-1 store with LLCS cheat sheets; the tensor written for each chunk id.

    The sheets cycle through the three dtypes so every legacy dtype code is migrated."""
    t = store.tables
    cs = t.cheat_sheets
    written: dict[int, torch.Tensor] = {}
    dtypes = [torch.float16, torch.bfloat16, torch.float32]
    with store.engine.begin() as conn:
        rows = conn.execute(select(cs.c.chunk_id, cs.c.data).order_by(cs.c.chunk_id)).all()
        for i, r in enumerate(rows):
            tensor = decode_tensor(r.data).to(dtypes[i % 3])
            blob = legacy_encode(tensor)
            conn.execute(
                update(cs)
                .where(cs.c.chunk_id == r.chunk_id)
                .values(data=blob, n_bytes=len(blob), dtype=dtype_name(tensor.dtype))
            )
            written[int(r.chunk_id)] = tensor
        conn.execute(delete(t.schema_version).where(t.schema_version.c.version == 2))
    return written


def stored(store) -> tuple[int, dict[int, bytes]]:
    """The schema version and every cheat-sheet blob, straight from the tables."""
    t = store.tables
    with store.engine.connect() as conn:
        version = conn.execute(select(func.max(t.schema_version.c.version))).scalar_one()
        blobs = {int(r.chunk_id): bytes(r.data) for r in conn.execute(select(t.cheat_sheets))}
    return version, blobs


def test_latest_version_is_the_safetensors_migration():
    assert schema_mod.LATEST_VERSION == 2
    assert schema_mod.MIGRATIONS[-1].apply is schema_mod._v2_safetensors_cheat_sheets


def test_legacy_encoder_matches_the_legacy_reader():
    x = torch.randn(2, 3).to(torch.bfloat16)
    assert torch.equal(_bits(decode_legacy_tensor(legacy_encode(x))), _bits(x))
    blob = bytearray(legacy_encode(x))
    blob[-1] ^= 1
    with pytest.raises(CheatSheetError, match="checksum"):
        decode_legacy_tensor(bytes(blob))


def test_old_store_is_migrated_bit_exact_and_retrieves(pg_url, schema, embedder, encoder, docs, monkeypatch):
    monkeypatch.setattr(schema_mod, "SHEET_MIGRATION_BATCH", 2)  # several batches over the few rows
    store = open_store(pg_url, schema, embedder)
    try:
        store.ingest(docs, group="g", encoder=encoder)
        written = make_old_store(store)
        assert len(written) > 2 * schema_mod.SHEET_MIGRATION_BATCH
        assert stored(store)[0] == 1
        # the new codec refuses a legacy row with a clear message instead of decoding it
        with pytest.raises(CheatSheetError, match="lloco db init"):
            store.cheat_sheets([next(iter(written))])
        store.close()

        # a store opened without create does not migrate: it says how to
        with pytest.raises(StoreError, match=r"version 1; run `lloco db init`"):
            CheatSheetStore(pg_url, schema=schema, embedder=embedder, create=False)

        store = open_store(pg_url, schema, embedder)  # create=True, as `lloco db init` does: migrates
        assert store.version == 2
        version, blobs = stored(store)
        assert version == 2 and set(blobs) == set(written)
        assert not any(b.startswith(b"LLCS") for b in blobs.values())
        ids = sorted(written)
        sheets = store.cheat_sheets(ids, encoder_fingerprint=encoder.fingerprint)
        for cid, got in zip(ids, sheets, strict=True):
            want = written[cid]
            assert got.dtype == want.dtype and got.shape == want.shape
            assert torch.equal(_bits(got), _bits(want))
        t = store.tables
        with store.engine.connect() as conn:
            n_bytes = {int(r.chunk_id): r.n_bytes for r in conn.execute(select(t.cheat_sheets))}
        assert n_bytes == {cid: len(b) for cid, b in blobs.items()}

        res = store.retrieve(
            "galaxy telescopes and stars", group="g", top_k=3, encoder_fingerprint=encoder.fingerprint
        )
        assert res.chunks
        for c in res.chunks:
            assert torch.equal(_bits(c.cheat_sheet), _bits(written[c.chunk_id]))
    finally:
        store.drop_schema()
        store.close()


def test_a_corrupt_legacy_row_aborts_the_migration_and_changes_nothing(
    pg_url, schema, embedder, encoder, docs, monkeypatch
):
    monkeypatch.setattr(schema_mod, "SHEET_MIGRATION_BATCH", 2)
    store = open_store(pg_url, schema, embedder)
    try:
        store.ingest(docs, group="g", encoder=encoder)
        written = make_old_store(store)
        ids = sorted(written)
        bad = ids[len(ids) // 2 + 1]  # after a batch or two were already rewritten in the transaction
        cs = store.tables.cheat_sheets
        with store.engine.begin() as conn:
            blob = bytearray(conn.execute(select(cs.c.data).where(cs.c.chunk_id == bad)).scalar_one())
            blob[-3] ^= 0x40  # one flipped payload bit
            conn.execute(update(cs).where(cs.c.chunk_id == bad).values(data=bytes(blob)))
        before = stored(store)
        store.close()

        with pytest.raises(StoreError) as err:
            open_store(pg_url, schema, embedder)
        msg = str(err.value)
        assert f"chunk {bad} " in msg and "checksum mismatch" in msg
        assert "nothing was changed" in msg and "re-ingest" in msg and "lloco db init" in msg
        assert stored(store) == before  # every row still the legacy bytes, still version 1
        assert before[0] == 1 and all(b.startswith(b"LLCS") for b in before[1].values())
    finally:
        store.drop_schema()
        store.close()
