"""Storage benchmarks for ``lloco bench``: bulk insert, dense-retrieval latency, ingest throughput.

Synthetic rows (random unit vectors, small fake cheat sheets) measure the database side alone; the
ingest benchmark measures the whole pipeline (split, embed, compress, write) on generated text.
Run them in a schema of their own (``bench_store()``), never in one holding real data.

Dense latency is measured with the store's ANN index (HNSW where the server can run it) and, as its
baseline, with index scans disabled (exact scan of the group), together with the recall@k of the index.
Bulk inserts drop the HNSW index and rebuild it once at the end (pgvector's advice for bulk loads: one
build is far cheaper than maintaining the graph row by row); the build time is reported on its own.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

import numpy as np
import torch
from sqlalchemy import func, insert, select, text

from ..codec import encode_tensor
from ..errors import InputError
from .catalog import group_row
from .inputs import DocumentInput
from .retrieve import check_ef_search, dense_hits, fetch_cheat_sheets, fetch_chunks
from .schema import drop_hnsw_index, ensure_hnsw_index, has_hnsw_index, search_path_value
from .store import CheatSheetStore

BENCH_SCHEMA = "lloco_bench"
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
    """Insert ``n_chunks`` synthetic chunks (plus documents and cheat sheets) in large batches.

    Appends to the group, so calling it twice with 10k then 90k gives a 100k-chunk group. With an HNSW
    store the index is dropped first and rebuilt after the load (``index_build_s``).
    Returns ``{"chunks", "total_chunks", "seconds", "chunks_per_s", "index_build_s"}``.
    """
    if n_chunks < 1 or chunks_per_doc < 1:
        raise InputError("n_chunks and chunks_per_doc must be >= 1")
    t = store.tables
    rng = np.random.default_rng(seed)
    sheet = encode_tensor(
        torch.randn(*sheet_shape, generator=torch.Generator().manual_seed(seed)), dtype="float16"
    )
    rebuild = store.ann_index == "hnsw"
    if rebuild:
        with store.engine.begin() as conn:
            drop_hnsw_index(conn, t)
    start = time.perf_counter()
    with store.engine.begin() as conn:
        gid = int(group_row(conn, t, group, collection, create=True).id)
        n_existing = conn.execute(
            select(func.count()).select_from(t.documents).where(t.documents.c.group_id == gid)
        ).scalar_one()
    done = 0
    doc_no = int(n_existing)
    while done < n_chunks:
        n_docs = max(1, min(batch, n_chunks - done) // chunks_per_doc)
        with store.engine.begin() as conn:
            doc_rows = []
            for _ in range(n_docs):
                doc_id = f"synthetic-{seed}-{doc_no}"
                doc_no += 1
                doc_rows.append(
                    {
                        "group_id": gid,
                        "doc_id": doc_id,
                        "sha256": hashlib.sha256(doc_id.encode()).hexdigest(),
                        "encoder_fingerprint": "synthetic",
                        "meta": {"synthetic": True},
                        "n_chunks": 0,
                        "n_tokens": 0,
                        "n_chars": 0,
                    }
                )
            doc_ids = (
                conn.execute(
                    insert(t.documents).returning(t.documents.c.id, sort_by_parameter_order=True), doc_rows
                )
                .scalars()
                .all()
            )
            rows = []
            for doc_pk in doc_ids:
                take = min(chunks_per_doc, n_chunks - done - len(rows))
                if take <= 0:
                    break
                vecs = _unit_vectors(rng, take, store.embedder.dim)
                for i in range(take):
                    words = " ".join(rng.choice(_WORDS, 12))
                    rows.append(
                        {
                            "document_id": doc_pk,
                            "group_id": gid,
                            "ordinal": i,
                            "text": words,
                            "n_tokens": 12,
                            "meta": {"i": i % 10},
                            "embedding": vecs[i],
                        }
                    )
            ids = (
                conn.execute(insert(t.chunks).returning(t.chunks.c.id, sort_by_parameter_order=True), rows)
                .scalars()
                .all()
            )
            conn.execute(
                insert(t.cheat_sheets),
                [
                    {
                        "chunk_id": cid,
                        "encoder_fingerprint": "synthetic",
                        "dtype": "float16",
                        "shape": list(sheet_shape),
                        "n_bytes": len(sheet),
                        "data": sheet,
                    }
                    for cid in ids
                ],
            )
        done += len(rows)
    seconds = time.perf_counter() - start
    build_s = None
    if rebuild:
        build_s = build_hnsw(store)
    with store.engine.begin() as conn:
        total = conn.execute(
            select(func.count()).select_from(t.chunks).where(t.chunks.c.group_id == gid)
        ).scalar_one()
    return {
        "chunks": n_chunks,
        "total_chunks": int(total),
        "seconds": round(seconds, 3),
        "chunks_per_s": round(n_chunks / seconds, 1),
        "index_build_s": build_s,
    }


def build_hnsw(store: CheatSheetStore, maintenance_work_mem: str = "512MB") -> float:
    """(Re)build the HNSW index of the store's chunks in one pass; seconds taken (ANALYZE included)."""
    t = store.tables
    start = time.perf_counter()
    with store.engine.begin() as conn:
        # Room for the whole graph in memory makes the build several times faster (pgvector README).
        conn.execute(select(func.set_config("maintenance_work_mem", maintenance_work_mem, True)))
        if store.vector_schema:
            conn.execute(
                select(func.set_config("search_path", search_path_value([store.vector_schema]), True))
            )
        ensure_hnsw_index(conn, t)
    with store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(
            text(
                "ANALYZE "
                + ".".join(conn.dialect.identifier_preparer.quote(x) for x in (t.schema, t.chunks.name))
            )
        )
    return round(time.perf_counter() - start, 3)


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
    """p50/p95 latency of dense retrieval (index scan + chunk rows + cheat sheets) over random queries.

    Query embedding is excluded (it depends on the embedder, not the store). One warm-up query first.
    ``exact``: index scans off for the transaction, so the planner scans the group's rows (the exact
    baseline an ANN index is measured against). ``hits`` holds each query's chunk ids, for recall.
    """
    if queries < 1:
        raise InputError("queries must be >= 1")
    t = store.tables
    ef = check_ef_search(ef_search, top_k)
    vecs = _unit_vectors(np.random.default_rng(seed), queries + 1, store.embedder.dim)
    times, hit_ids = [], []
    with store.engine.begin() as conn:
        gid = int(group_row(conn, t, group, collection).id)
        total = conn.execute(
            select(func.count()).select_from(t.chunks).where(t.chunks.c.group_id == gid)
        ).scalar_one()
    for i, q in enumerate(vecs):
        start = time.perf_counter()
        with store.engine.begin() as conn:
            if exact:
                conn.execute(select(func.set_config("enable_indexscan", "off", True)))
            hits = dense_hits(conn, t, gid, q, top_k, None, ef)
            chunks = fetch_chunks(conn, t, hits)
            if load_cheat_sheets:
                fetch_cheat_sheets(conn, t, [c.chunk_id for c in chunks])
        if i:  # the first query warms caches
            times.append((time.perf_counter() - start) * 1000)
            hit_ids.append([h[0] for h in hits])
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
        with store.engine.begin() as conn:
            indexed = has_hnsw_index(conn, store.tables)
        if exact_baseline and indexed:
            ex = dense_latency(store, group=group, queries=queries, top_k=top_k, exact=True)
            row["recall"] = recall(row["hits"], ex.pop("hits"))
            row["exact"] = {k: ex[k] for k in ("p50_ms", "p95_ms", "mean_ms")}
        row.pop("hits")
        result["retrieval"].append(row)
    if encoder is not None:
        result["ingest"] = ingest_throughput(store, encoder)
    return result
