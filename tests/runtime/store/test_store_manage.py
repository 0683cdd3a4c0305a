"""Listing, cascading deletes, stats, schema versioning and the adapter registry."""

from __future__ import annotations

import struct

import pytest
import torch
from safetensors.torch import save as st_save
from sqlalchemy import insert, select
from store_helpers import row_counts

from lloco_runtime.errors import (
    AdapterError,
    ConfigError,
    FingerprintMismatchError,
    NotFoundError,
    StoreError,
)
from lloco_runtime.store import CheatSheetStore
from lloco_runtime.store.schema import LATEST_VERSION


def test_list_and_delete_cascade(filled, docs, encoder):
    filled.ingest(docs[:2], group="h", collection="other", encoder=encoder)
    groups = {(g.collection, g.name): g for g in filled.list_groups()}
    assert set(groups) == {("default", "g"), ("other", "h")}
    assert groups[("default", "g")].n_documents == 3 and groups[("default", "g")].n_chunks > 3
    assert [c.name for c in filled.list_collections()] == ["default", "other"]
    assert [d.doc_id for d in filled.list_documents("g")] == ["astronomy", "cooking", "football"]

    filled.delete_document("cooking", group="g")
    assert [d.doc_id for d in filled.list_documents("g")] == ["astronomy", "football"]
    assert all(c.doc_id != "cooking" for c in filled.retrieve("bread", group="g", top_k=50).chunks)
    with pytest.raises(NotFoundError):
        filled.delete_document("cooking", group="g")

    filled.delete_group("g")
    with pytest.raises(NotFoundError, match="lloco ingest"):
        filled.retrieve("galaxy", group="g")
    counts = row_counts(filled)
    assert counts["documents"] == 2 and counts["cheat_sheets"] == counts["chunks"] > 0
    filled.delete_collection("other")
    assert row_counts(filled) == {"documents": 0, "chunks": 0, "cheat_sheets": 0}
    assert [c.name for c in filled.list_collections()] == ["default"]
    with pytest.raises(NotFoundError):
        filled.delete_collection("other")


def test_status_counts_and_bytes(filled):
    st = filled.status()
    assert st.schema == filled.schema and st.version == LATEST_VERSION and st.embedding_dim == 384
    assert st.counts["documents"] == 3 and st.counts["chunks"] == st.counts["cheat_sheets"]
    assert st.bytes["cheat_sheets"] > st.counts["cheat_sheets"] * 4 * 64 * 2  # fp16 payload + header
    assert st.ann_index in ("hnsw", "none") and "***" not in st.url or "@" in st.url


def test_schema_versioning_and_reopen(pg_url, embedder, schema):
    s1 = CheatSheetStore(pg_url, schema=schema, embedder=embedder)
    try:
        with s1.engine.connect() as conn:
            rows = conn.execute(select(s1.tables.schema_version.c.version)).scalars().all()
        assert rows == list(range(1, LATEST_VERSION + 1))
        s2 = CheatSheetStore(pg_url, schema=schema, embedder=embedder, create=False)  # no re-migration
        assert s2.version == LATEST_VERSION
        s2.close()
        with s1.engine.begin() as conn:
            conn.execute(
                insert(s1.tables.schema_version).values(version=LATEST_VERSION + 1, description="future")
            )
        with pytest.raises(StoreError, match="newer"):
            CheatSheetStore(pg_url, schema=schema, embedder=embedder)
    finally:
        s1.drop_schema()
        s1.close()
    with pytest.raises(StoreError, match="lloco db init"):
        CheatSheetStore(pg_url, schema=schema, embedder=embedder, create=False)


def test_other_embedder_is_refused(store, pg_url):
    from lloco_runtime.embeddings import CallableEmbedder

    other = CallableEmbedder(lambda texts: [[1.0] * 8 for _ in texts], name="toy", dim=8)
    with pytest.raises(ConfigError, match="same embedder"):
        CheatSheetStore(pg_url, schema=store.schema, embedder=other)


def _safetensors(seed: int = 0) -> bytes:
    torch.manual_seed(seed)
    return st_save({"lora_A": torch.randn(4, 8), "lora_B": torch.zeros(8, 4)})


def test_adapter_registry(filled, encoder):
    a1 = filled.register_adapter(
        "g",
        _safetensors(1),
        base_fingerprint="base",
        encoder_fingerprint=encoder.fingerprint,
        config={"r": 4},
        metrics={"loss": 1.5},
    )
    a2 = filled.register_adapter(
        "g", _safetensors(2), base_fingerprint="base", encoder_fingerprint=encoder.fingerprint, activate=True
    )
    assert (a1.version, a2.version) == (1, 2) and not a1.active and a2.active
    assert filled.retrieve("galaxy", group="g").adapter_id == a2.id
    assert filled.activate_adapter(a1.id).active
    assert filled.retrieve("galaxy", group="g").adapter_id == a1.id
    assert filled.adapter_weights(a1.id) == _safetensors(1)
    assert [a.version for a in filled.list_adapters("g")] == [1, 2]
    assert filled.get_adapter(a1.id).metrics == {"loss": 1.5} and filled.get_adapter(a1.id).config == {"r": 4}
    filled.delete_adapter(a1.id)  # the active one: the group falls back to none
    assert filled.retrieve("galaxy", group="g").adapter_id is None
    filled.activate_adapter(a2.id)
    filled.deactivate_adapter("g")
    assert filled.retrieve("galaxy", group="g").adapter_id is None

    other = filled.register_adapter(
        "g", _safetensors(3), base_fingerprint="base", encoder_fingerprint="0" * 64
    )
    with pytest.raises(FingerprintMismatchError, match="lloco recompress --group"):
        filled.activate_adapter(other.id)
    with pytest.raises(NotFoundError):
        filled.activate_adapter(10**9)
    with pytest.raises(NotFoundError):
        filled.adapter_weights(10**9)
    for bad in (b"", b"not safetensors", struct.pack("<Q", 10**6) + b"{}", b"PK\x03\x04" * 10):
        with pytest.raises(AdapterError):
            filled.register_adapter("g", bad, base_fingerprint="b", encoder_fingerprint="e")
    filled.delete_group("g")  # adapters cascade with their group
    assert filled.status().counts["adapters"] == 0
