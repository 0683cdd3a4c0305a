"""The storage benchmark helpers (small sizes: correctness, not speed)."""

from __future__ import annotations

import numpy as np

from lloco_runtime.bench import store as bench


def test_bench_helpers(store, encoder):
    ins = bench.insert_synthetic(store, 250, chunks_per_doc=40, batch=100)
    assert ins["chunks"] == 250 and ins["total_chunks"] == 250 and ins["chunks_per_s"] > 0
    assert bench.insert_synthetic(store, 50, seed=1)["total_chunks"] == 300
    lat = bench.dense_latency(store, queries=5, top_k=3)
    assert lat["chunks"] == 300 and 0 < lat["p50_ms"] <= lat["p95_ms"]
    thr = bench.ingest_throughput(store, encoder, n_docs=2, words_per_doc=60)
    assert thr["with_compression"]["chunks"] == thr["without_compression"]["chunks"] > 2
    assert {g.name for g in store.list_groups()} == {"bench"}
    full = bench.run(store, sizes=(100, 300), queries=3, encoder=None)
    assert [r["chunks"] for r in full["retrieval"]] == [100, 300]


def test_retrieve_by_query_vector(store):
    bench.insert_synthetic(store, 30, chunks_per_doc=10, batch=30)
    vec = np.ones(store.embedder.dim, dtype=np.float32)
    res = store.retrieve("ignored", group="bench", collection="bench", query_vector=vec, top_k=3)
    assert len(res.chunks) == 3
    import pytest

    from lloco_runtime.errors import InputError

    for bad in (np.ones(3), [float("nan")] * store.embedder.dim, np.zeros(store.embedder.dim), "abc"):
        with pytest.raises(InputError, match="query_vector"):
            store.retrieve("q", group="bench", collection="bench", query_vector=bad)
