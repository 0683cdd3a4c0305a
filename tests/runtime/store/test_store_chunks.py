"""Chunk-level facade methods: get_group, list_chunks, delete_chunks, clear_group (and ingest's chunk ids)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save as st_save
from store_helpers import row_counts

from lloco_runtime.errors import InputError, NotFoundError
from lloco_runtime.store import ChunkInfo, DocumentInput, MetadataFilter


def test_ingest_reports_chunk_ids_in_ordinal_order(store, docs, encoder):
    rep = store.ingest(docs, group="g", encoder=encoder)
    listed = store.list_chunks("g")
    for outcome in rep.documents:
        assert outcome.status == "added" and len(outcome.chunk_ids) == outcome.n_chunks > 0
        assert list(outcome.chunk_ids) == [c.chunk_id for c in listed if c.doc_id == outcome.doc_id]
    again = store.ingest(docs, group="g", encoder=encoder)
    assert [(o.status, o.chunk_ids) for o in again.documents] == [("unchanged", ())] * len(docs)


def test_list_chunks_fields_and_order(filled, docs, embedder):
    chunks = filled.list_chunks("g")
    assert chunks and all(isinstance(c, ChunkInfo) for c in chunks)
    assert [(c.doc_id, c.ordinal) for c in chunks] == sorted((c.doc_id, c.ordinal) for c in chunks)
    texts = {d.doc_id: d for d in docs}
    for doc in filled.list_documents("g"):
        mine = [c for c in chunks if c.doc_id == doc.doc_id]
        assert [c.ordinal for c in mine] == list(range(doc.n_chunks))
        assert sum(c.n_tokens for c in mine) == doc.n_tokens
    for c in chunks:
        assert c.text == texts[c.doc_id].text[c.char_start : c.char_end]
        assert c.metadata == texts[c.doc_id].metadata and c.embedding is None
    hit = filled.retrieve("galaxy", group="g", top_k=1, load_cheat_sheets=False).chunks[0]
    same = next(c for c in chunks if c.chunk_id == hit.chunk_id)
    assert (same.doc_id, same.ordinal, same.text) == (hit.doc_id, hit.ordinal, hit.text)

    with_vectors = filled.list_chunks("g", with_embeddings=True)
    assert [c.chunk_id for c in with_vectors] == [c.chunk_id for c in chunks]
    for c in with_vectors:
        assert len(c.embedding) == embedder.dim and abs(np.linalg.norm(c.embedding) - 1.0) < 1e-2
    direct = embedder.embed([with_vectors[0].text])[0]
    assert np.dot(direct, with_vectors[0].embedding) > 0.99  # the stored retrieval key (halfvec precision)


def test_list_chunks_selection_and_paging(filled):
    all_chunks = filled.list_chunks("g")
    ids = [c.chunk_id for c in all_chunks]
    assert {c.doc_id for c in filled.list_chunks("g", doc_ids=["cooking", "nope"])} == {"cooking"}
    assert [c.chunk_id for c in filled.list_chunks("g", chunk_ids=[ids[-1], ids[0]])] == [ids[0], ids[-1]]
    assert filled.list_chunks("g", chunk_ids=[]) == [] and filled.list_chunks("g", doc_ids=[]) == []
    # filters: typed, dict and list forms, as for retrieve
    assert {c.doc_id for c in filled.list_chunks("g", filters=MetadataFilter("topic", "==", "football"))} == {
        "football"
    }
    assert {
        c.doc_id for c in filled.list_chunks("g", filters={"key": "year", "op": ">=", "value": 2001})
    } == {"cooking", "football"}
    assert {
        c.doc_id
        for c in filled.list_chunks(
            "g",
            filters=[
                {"key": "year", "op": ">=", "value": 2001},
                {"key": "topic", "op": "!=", "value": "cooking"},
            ],
        )
    } == {"football"}
    both = filled.list_chunks(
        "g", doc_ids=["astronomy"], filters={"key": "topic", "op": "==", "value": "cooking"}
    )
    assert both == []
    # paging keeps the (doc_id, ordinal) order
    pages = [filled.list_chunks("g", limit=2, offset=o) for o in range(0, len(ids), 2)]
    assert [c.chunk_id for p in pages for c in p] == ids and all(len(p) <= 2 for p in pages)
    assert filled.list_chunks("g", offset=len(ids)) == []
    with pytest.raises(InputError):
        filled.list_chunks("g", filters={"key": "year", "op": "~~", "value": 1})
    with pytest.raises(InputError, match="integers"):
        filled.list_chunks("g", chunk_ids=["abc"])
    with pytest.raises(NotFoundError, match="does not exist"):
        filled.list_chunks("nobody")
    with pytest.raises(NotFoundError):
        filled.list_chunks("g", collection="elsewhere")


def test_delete_chunks_by_id_updates_documents(filled, docs, encoder):
    before = filled.list_chunks("g")
    cooking = [c for c in before if c.doc_id == "cooking"]
    assert len(cooking) >= 2
    victim = cooking[0]
    assert filled.delete_chunks("g", chunk_ids=[victim.chunk_id, 10**12]) == 1
    after = filled.list_chunks("g")
    assert [c.chunk_id for c in after] == [c.chunk_id for c in before if c.chunk_id != victim.chunk_id]
    doc = filled.get_document("cooking", group="g")
    assert doc.n_chunks == len(cooking) - 1 and doc.n_tokens == sum(c.n_tokens for c in cooking[1:])
    counts = row_counts(filled)
    assert counts["chunks"] == counts["cheat_sheets"] == len(before) - 1
    assert (
        victim.chunk_id
        not in filled.retrieve("sourdough bread", group="g", top_k=50, load_cheat_sheets=False).chunk_ids
    )
    # the document is no longer "unchanged": re-ingesting it restores the deleted chunk
    rep = filled.ingest([d for d in docs if d.doc_id == "cooking"], group="g", encoder=encoder)
    assert rep.documents[0].status == "replaced"
    assert len(filled.list_chunks("g", doc_ids=["cooking"])) == len(cooking)

    # deleting all chunks of a document deletes the document
    football = [c.chunk_id for c in filled.list_chunks("g", doc_ids=["football"])]
    assert filled.delete_chunks("g", chunk_ids=football) == len(football)
    assert [d.doc_id for d in filled.list_documents("g")] == ["astronomy", "cooking"]
    assert filled.get_group("g").n_documents == 2


def test_delete_chunks_by_filter_and_scope(filled, docs, encoder):
    filled.ingest(docs, group="h", encoder=encoder)
    n_h = len(filled.list_chunks("h"))
    n_astro = len(filled.list_chunks("g", doc_ids=["astronomy"]))
    assert filled.delete_chunks("g", filters={"key": "topic", "op": "==", "value": "astronomy"}) == n_astro
    assert [d.doc_id for d in filled.list_documents("g")] == ["cooking", "football"]
    assert len(filled.list_chunks("h")) == n_h  # other groups untouched
    # ids and filter together: only chunks matching both
    cooking = [c.chunk_id for c in filled.list_chunks("g", doc_ids=["cooking"])]
    football = [c.chunk_id for c in filled.list_chunks("g", doc_ids=["football"])]
    assert filled.delete_chunks(
        "g", chunk_ids=cooking + football, filters=MetadataFilter("topic", "==", "football")
    ) == len(football)
    assert [d.doc_id for d in filled.list_documents("g")] == ["cooking"]
    # chunk ids of another group are not touched
    h_ids = [c.chunk_id for c in filled.list_chunks("h")]
    assert filled.delete_chunks("g", chunk_ids=h_ids) == 0 and len(filled.list_chunks("h")) == n_h
    assert filled.delete_chunks("g", chunk_ids=[]) == 0
    with pytest.raises(InputError, match="chunk_ids or filters"):
        filled.delete_chunks("g")
    with pytest.raises(NotFoundError):
        filled.delete_chunks("nobody", chunk_ids=[1])


def test_clear_group_keeps_group_and_adapters(filled, docs, encoder):
    filled.ingest(docs[:1], group="h", encoder=encoder)
    adapter = filled.register_adapter(
        "g",
        st_save({"lora_A": torch.randn(4, 8), "lora_B": torch.zeros(8, 4)}),
        base_fingerprint="base",
        encoder_fingerprint=encoder.fingerprint,
        activate=True,
    )
    filled.clear_group("g")
    assert filled.list_chunks("g") == [] and filled.list_documents("g") == []
    g = filled.get_group("g")
    assert (g.n_documents, g.n_chunks, g.active_adapter_id) == (0, 0, adapter.id)
    assert [a.id for a in filled.list_adapters("g")] == [adapter.id]
    assert filled.get_group("h").n_documents == 1
    counts = row_counts(filled)
    assert counts["chunks"] == counts["cheat_sheets"] == len(filled.list_chunks("h"))
    filled.clear_group("g")  # idempotent
    rep = filled.ingest(docs, group="g", encoder=encoder)
    assert {d.status for d in rep.documents} == {"added"}
    with pytest.raises(NotFoundError):
        filled.clear_group("nobody")


def test_get_group(store, docs, encoder):
    with pytest.raises(NotFoundError, match="lloco ingest"):
        store.get_group("g")
    created = store.create_group("g", "c")
    assert store.get_group("g", "c") == created and created.n_documents == 0
    store.ingest([DocumentInput("x", docs[0].text)], group="g", collection="c", encoder=encoder)
    got = store.get_group("g", "c")
    assert (got.id, got.collection, got.n_documents) == (created.id, "c", 1)
    assert got.n_chunks == len(store.list_chunks("g", "c"))
    with pytest.raises(NotFoundError):
        store.get_group("g")  # other collection
