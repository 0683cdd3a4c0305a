"""``CheatSheetStore.bulk_load`` (documents made elsewhere, many per transaction), ``storage_stats`` and
``retrieve(exact=True)``: the public store methods the benchmarks use instead of raw SQL."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lloco_runtime.errors import CheatSheetError, InputError, NotFoundError
from lloco_runtime.store import BulkDocument, BulkLoadReport, DocumentInput, StorageStats


def _docs(dim: int, n_docs: int = 3, per_doc: int = 4, *, sheets: bool = True, prefix: str = "d"):
    rng = np.random.default_rng(0)
    for d in range(n_docs):
        vecs = rng.standard_normal((per_doc, dim)).astype(np.float32)
        texts = tuple(f"document {d} part {i} about rivers. " for i in range(per_doc))
        yield BulkDocument(
            f"{prefix}{d}",
            texts,
            (7,) * per_doc,
            vecs,
            tuple(torch.full((2, 8), float(10 * d + i)) for i in range(per_doc)) if sheets else None,
            {"source": "bulk", "n": d},
        )


def test_bulk_load_writes_what_ingest_would(store):
    docs = list(_docs(store.embedder.dim))
    report = store.bulk_load(iter(docs), group="g", collection="c", encoder_fingerprint="enc", batch_chunks=5)
    assert isinstance(report, BulkLoadReport)
    assert (report.documents, report.chunks, report.group, report.collection) == (3, 12, "g", "c")
    assert report.seconds > 0
    # the HNSW index is rebuilt after a bulk load where the server has one (the embedded build needs AVX-512)
    assert (report.index_build_seconds is None) == (store.ann_index == "none")
    g = store.get_group("g", "c")
    assert (g.n_documents, g.n_chunks, g.encoder_fingerprints) == (3, 12, {"enc": 12})
    info = store.get_document("d1", group="g", collection="c")
    text = "".join(docs[1].texts)
    assert info.sha256 == DocumentInput("d1", text, {"source": "bulk", "n": 1}).sha256
    assert (info.n_chunks, info.n_tokens, info.n_chars, info.encoder_fingerprint) == (4, 28, len(text), "enc")
    chunks = store.list_chunks("g", "c", doc_ids=["d1"], with_embeddings=True)
    assert [c.ordinal for c in chunks] == [0, 1, 2, 3]
    assert "".join(text[c.char_start : c.char_end] for c in chunks) == text
    assert [c.text for c in chunks] == list(docs[1].texts) and chunks[2].metadata == {
        "source": "bulk",
        "n": 1,
    }
    unit = docs[1].embeddings[2] / np.linalg.norm(docs[1].embeddings[2])
    np.testing.assert_allclose(chunks[2].embedding, unit, atol=2e-3)  # halfvec
    sheets = store.cheat_sheets([c.chunk_id for c in chunks])
    assert [float(s[0, 0]) for s in sheets] == [10.0, 11.0, 12.0, 13.0] and sheets[0].shape == (2, 8)

    hits = store.retrieve("q", group="g", collection="c", query_vector=docs[2].embeddings[3], top_k=3)
    assert hits.chunks[0].doc_id == "d2" and hits.chunks[0].ordinal == 3
    exact = store.retrieve(
        "q", group="g", collection="c", query_vector=docs[2].embeddings[3], top_k=3, exact=True
    )
    assert exact.chunk_ids == hits.chunk_ids and float(exact.chunks[0].cheat_sheet[0, 0]) == 23.0

    # appends: a second load adds to the group; chunks without sheets are fine without a fingerprint
    more = store.bulk_load(
        _docs(store.embedder.dim, 1, 2, sheets=False, prefix="e"), group="g", collection="c"
    )
    assert more.chunks == 2 and store.get_group("g", "c").n_chunks == 14
    assert store.get_document("e0", group="g", collection="c").encoder_fingerprint is None


def test_bulk_load_refuses_bad_documents(store):
    dim = store.embedder.dim
    store.bulk_load(_docs(dim, 1), group="g", encoder_fingerprint="enc")
    good = next(_docs(dim, 1, prefix="new"))

    def load(*docs, **kw):
        return store.bulk_load(docs, group="g", **{"encoder_fingerprint": "enc", **kw})

    def with_(**changes):
        fields = {k: getattr(good, k) for k in ("doc_id", "texts", "n_tokens", "embeddings", "cheat_sheets")}
        return BulkDocument(**{**fields, **changes})

    cases = [
        ((next(_docs(dim, 1)),), {}, "already stored"),
        ((good, good), {}, "given twice"),
        ((good,), {"encoder_fingerprint": None}, "encoder_fingerprint"),
        ((with_(embeddings=np.ones((4, 3))),), {}, "embeddings"),
        ((with_(embeddings=np.zeros((4, dim))),), {}, "all zeros"),
        ((with_(n_tokens=(1, 2)),), {}, "n_tokens"),
        ((with_(texts=("a", "", "b", "c")),), {}, "non-empty"),
        ((with_(texts=()),), {}, "no chunks"),
        ((with_(doc_id=""),), {}, "doc"),
        ((with_(cheat_sheets=(torch.zeros(2, 8),)),), {}, "cheat sheets"),
        (({"doc_id": "x"},), {}, "BulkDocument"),
        ((good,), {"batch_chunks": 0}, "batch_chunks"),
    ]
    for docs, kw, match in cases:
        with pytest.raises(InputError, match=match):
            load(*docs, **kw)
    nan = torch.full((2, 8), float("nan"))
    with pytest.raises(CheatSheetError, match="NaN"):  # each sheet is checked as ingest checks it
        load(with_(cheat_sheets=(nan,) * 4))
    assert store.get_group("g").n_chunks == 4  # nothing of the refused loads was written


def test_storage_stats(store, encoder):
    store.ingest(
        [DocumentInput("a", "The archive by the mill kept ledgers of boats, looms and wells. " * 8)],
        group="g",
        encoder=encoder,
    )
    s = store.storage_stats("g")
    assert isinstance(s, StorageStats) and s.chunks == store.get_group("g").n_chunks > 1
    assert s.cheat_sheet_payload_bytes >= 4 * encoder.hidden_size * 2  # 4 fp16 vectors, at least
    assert s.cheat_sheet_row_bytes > 0 and s.chunk_row_bytes > s.text_bytes > 0 and s.tokens_per_chunk > 0
    assert s.bytes_per_chunk == s.chunk_row_bytes + s.cheat_sheet_row_bytes
    store.ingest([DocumentInput("b", "plain text only")], group="bare", encoder=encoder, compress=False)
    assert store.storage_stats("bare").chunks == 0  # no cheat sheets: nothing to measure
    with pytest.raises(NotFoundError):
        store.storage_stats("missing")
