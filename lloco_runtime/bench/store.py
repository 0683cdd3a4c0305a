"""Storage benchmarks for ``lloco bench``: bulk insert, dense-retrieval latency, ingest throughput.

Synthetic rows (random unit vectors, small fake cheat sheets) measure the database side alone; the
ingest benchmark measures the whole pipeline (split, embed, compress, write) on generated text.
Run them in a schema of their own (``bench_store()``), never in one holding real data.

Dense latency is measured with the store's ANN index (HNSW where the server can run it) and, as its
baseline, as an exact scan of the group (``retrieve(exact=True)``), together with the recall@k of the index.
Synthetic rows go in through :meth:`CheatSheetStore.bulk_load`, which drops the HNSW index and rebuilds it
once at the end (pgvector's advice for bulk loads); the build time is reported on its own.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from ..errors import InputError
from ..store import BulkDocument, CheatSheetStore, DocumentInput

BENCH_SCHEMA = "lloco_bench"
SYNTHETIC_FINGERPRINT = "synthetic"  # the "encoder" of the synthetic cheat sheets
_WORDS = (
    "river",
    "mountain",
    "contract",
    "clause",
    "engine",
    "protein",
    "galaxy",
    "harbor",
    "ledger",
    "violin",
    "orbit",
    "census",
    "glacier",
    "tariff",
    "enzyme",
    "verdict",
    "satellite",
    "archive",
    "meadow",
    "turbine",
)


def bench_store(url: str | None = None, schema: str = BENCH_SCHEMA, **kwargs: Any) -> CheatSheetStore:
    """A store in a dedicated benchmark schema (default ``lloco_bench``)."""
    return CheatSheetStore(url, schema=schema, **kwargs)


def _unit_vectors(
    rng: np.random.Generator, n: int, dim: int, intrinsic_dim: int = 16, noise: float = 0.2
) -> np.ndarray:
    """Unit vectors shaped like text embeddings: a fixed random ``intrinsic_dim``-dimensional subspace plus
    isotropic noise (norm ``noise`` relative), so nearest neighbours are meaningful.

    Uniform random vectors in hundreds of dimensions are all nearly equidistant: no index can rank them (an
    HNSW recall@4 of ~0.1) and they say nothing about real retrieval, whose embeddings have low intrinsic
    dimension. The subspace is the same for every call (seeded), so queries and rows share it.
    """
    basis = np.random.default_rng(12345).standard_normal((intrinsic_dim, dim)).astype(np.float32)
    v = rng.standard_normal((n, intrinsic_dim), dtype=np.float32) @ basis
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    v += noise * rng.standard_normal((n, dim), dtype=np.float32) / np.sqrt(dim)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def synthetic_chunks(
    n_chunks: int,
    dim: int,
    *,
    first_doc: int = 0,
    chunks_per_doc: int = 100,
    sheet_shape: tuple[int, int] = (4, 64),
    seed: int = 0,
) -> Iterator[BulkDocument]:
    """Documents of ``chunks_per_doc`` synthetic chunks (the last one shorter), ``n_chunks`` in all: 12 words
    of text, a unit vector of width ``dim`` and one random cheat sheet of ``sheet_shape`` (the same for every
    chunk), generated as they are consumed; doc ids ``synthetic-{seed}-{first_doc}``, ... ."""
    rng = np.random.default_rng(seed)
    sheet = torch.randn(*sheet_shape, generator=torch.Generator().manual_seed(seed))
    done, doc_no = 0, first_doc
    while done < n_chunks:
        take = min(chunks_per_doc, n_chunks - done)
        vectors = _unit_vectors(rng, take, dim)
        texts = tuple(" ".join(rng.choice(_WORDS, 12)) for _ in range(take))
        yield BulkDocument(
            f"synthetic-{seed}-{doc_no}",
            texts,
            (12,) * take,
            vectors,
            (sheet,) * take,
            {"synthetic": True},
        )
        done += take
        doc_no += 1


def insert_synthetic(
    store: CheatSheetStore,
    n_chunks: int,
    *,
    group: str = "bench",
    collection: str = "bench",
    chunks_per_doc: int = 100,
    sheet_shape: tuple[int, int] = (4, 64),
    batch: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """Insert ``n_chunks`` synthetic chunks (plus documents and cheat sheets) in batches of about ``batch``
    chunks per transaction (:meth:`CheatSheetStore.bulk_load`).

    Appends to the group, so calling it twice with 10k then 90k gives a 100k-chunk group. With an HNSW
    store the index is dropped first and rebuilt after the load (``index_build_s``).
    Returns ``{"chunks", "total_chunks", "seconds", "chunks_per_s", "index_build_s"}``.
    """
    if n_chunks < 1 or chunks_per_doc < 1:
        raise InputError("n_chunks and chunks_per_doc must be >= 1")
    existing = store.create_group(group, collection).n_documents
    docs = synthetic_chunks(
        n_chunks,
        store.embedder.dim,
        first_doc=existing,
        chunks_per_doc=chunks_per_doc,
        sheet_shape=sheet_shape,
        seed=seed,
    )
    report = store.bulk_load(
        docs,
        group=group,
        collection=collection,
        encoder_fingerprint=SYNTHETIC_FINGERPRINT,
        batch_chunks=batch,
    )
    return {
        "chunks": report.chunks,
        "total_chunks": store.get_group(group, collection).n_chunks,
        "seconds": round(report.seconds, 3),
        "chunks_per_s": round(report.chunks / report.seconds, 1),
        "index_build_s": report.index_build_seconds,
    }


def dense_latency(
    store: CheatSheetStore,
    *,
    group: str = "bench",
    collection: str = "bench",
    queries: int = 100,
    top_k: int = 4,
    ef_search: int | None = None,
    load_cheat_sheets: bool = True,
    seed: int = 1,
    exact: bool = False,
) -> dict[str, Any]:
    """p50/p95 latency of dense retrieval (``CheatSheetStore.retrieve``: index scan + chunk rows + cheat
    sheets) over random query vectors.

    Query embedding is excluded (it depends on the embedder, not the store): the vectors are passed as
    ``query_vector``. One warm-up query first. ``exact``: the exact baseline an ANN index is measured against
    (``retrieve(exact=True)``: no index scans). ``ef_search``: default ``max(40, 2 * top_k)``, the store's own
    default, passed explicitly so that the report holds the value used. ``hits`` holds each query's chunk
    ids, for recall.
    """
    if queries < 1:
        raise InputError("queries must be >= 1")
    ef = ef_search if ef_search is not None else min(1000, max(40, 2 * top_k))
    vecs = _unit_vectors(np.random.default_rng(seed), queries + 1, store.embedder.dim)
    total = store.get_group(group, collection).n_chunks
    times, hit_ids = [], []
    for i, q in enumerate(vecs):
        start = time.perf_counter()
        res = store.retrieve(
            "synthetic query",
            group=group,
            collection=collection,
            top_k=top_k,
            mode="dense",
            ef_search=ef,
            load_cheat_sheets=load_cheat_sheets,
            query_vector=q,
            exact=exact,
        )
        if i:  # the first query warms caches
            times.append((time.perf_counter() - start) * 1000)
            hit_ids.append(res.chunk_ids)
    arr = np.asarray(times)
    return {
        "chunks": int(total),
        "queries": queries,
        "top_k": top_k,
        "ef_search": ef,
        "ann_index": "exact scan" if exact else store.status().ann_index,
        "p50_ms": round(float(np.percentile(arr, 50)), 2),
        "p95_ms": round(float(np.percentile(arr, 95)), 2),
        "mean_ms": round(float(arr.mean()), 2),
        "hits": hit_ids,
    }


def recall(approx: list[list[int]], exact: list[list[int]]) -> float:
    """Mean fraction of each exact top-k that the approximate search also returned."""
    got = [len(set(a) & set(e)) / len(e) for a, e in zip(approx, exact, strict=True) if e]
    return round(float(np.mean(got)), 4) if got else float("nan")


def synthetic_documents(n_docs: int, words_per_doc: int, seed: int = 0) -> list[DocumentInput]:
    """Generated prose-like documents for ingest benchmarks."""
    rng = np.random.default_rng(seed)
    return [
        DocumentInput(f"bench-{seed}-{i}", " ".join(rng.choice(_WORDS, words_per_doc)) + ".", {"i": i})
        for i in range(n_docs)
    ]


def ingest_throughput(
    store: CheatSheetStore,
    encoder: Any,
    *,
    n_docs: int = 10,
    words_per_doc: int = 400,
    batch_size: int = 8,
    collection: str = "bench",
) -> dict[str, Any]:
    """Chunks/s of full ingest (split, embed, write) without and with compression, on fresh groups."""
    out: dict[str, Any] = {"documents": n_docs, "words_per_doc": words_per_doc}
    store.embedder.embed(["warm-up"])  # load the retrieval model outside the timed runs
    for label, compress in (("without_compression", False), ("with_compression", True)):
        group = f"ingest-{label}"
        try:
            store.delete_group(group, collection)
        except LookupError:
            pass
        docs = synthetic_documents(n_docs, words_per_doc, seed=1 if compress else 2)
        report = store.ingest(
            docs,
            group=group,
            collection=collection,
            encoder=encoder,
            compress=compress,
            batch_size=batch_size,
        )
        out[label] = {
            "chunks": report.chunks_written,
            "seconds": round(report.seconds, 3),
            "chunks_per_s": round(report.chunks_written / report.seconds, 2),
        }
        store.delete_group(group, collection)
    return out


def run(
    store: CheatSheetStore,
    *,
    sizes: tuple[int, ...] = (10_000, 100_000),
    queries: int = 100,
    top_k: int = 4,
    encoder: Any = None,
    group: str = "bench",
    exact_baseline: bool = True,
) -> dict[str, Any]:
    """The full storage benchmark: for each size, grow the group to it and measure latency; then ingest.

    With an ANN index and ``exact_baseline``, each size is also measured as an exact scan (same queries),
    and the index's recall@k against it is reported.
    """
    result: dict[str, Any] = {"ann_index": store.ann_index, "retrieval": [], "inserts": []}
    try:
        store.delete_group(group, "bench")
    except LookupError:
        pass
    have = 0
    for size in sorted(sizes):
        if size > have:
            result["inserts"].append(insert_synthetic(store, size - have, group=group, seed=size))
            have = size
        row = dense_latency(store, group=group, queries=queries, top_k=top_k)
        if exact_baseline and store.status().ann_index == "hnsw":
            ex = dense_latency(store, group=group, queries=queries, top_k=top_k, exact=True)
            row["recall"] = recall(row["hits"], ex.pop("hits"))
            row["exact"] = {k: ex[k] for k in ("p50_ms", "p95_ms", "mean_ms")}
        row.pop("hits")
        result["retrieval"].append(row)
    if encoder is not None:
        result["ingest"] = ingest_throughput(store, encoder)
    return result
