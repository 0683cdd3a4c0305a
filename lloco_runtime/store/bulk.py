"""Bulk load: documents whose chunks, retrieval vectors and cheat sheets were made outside the store.

:func:`ingest <lloco_runtime.store.CheatSheetStore.ingest>` splits, embeds and compresses each document and
writes it in a transaction of its own; for loading 10^5 chunks whose vectors already exist (a migration, a
benchmark's synthetic rows) that is far too slow. Here many documents go into one transaction, each table
in one multi-row INSERT (bound values only), and the HNSW index is dropped first and built once at the end:
pgvector's advice for bulk loads, one build being far cheaper than maintaining the graph row by row.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
from sqlalchemy import Connection, Engine, Table, func, insert, select
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.elements import ClauseElement
from sqlalchemy.sql.expression import Executable

from ..errors import InputError
from .catalog import group_row
from .ingest import check_sheets, sheet_rows
from .inputs import DocumentInput
from .records import BulkDocument
from .schema import Tables, drop_hnsw_index, ensure_hnsw_index, has_hnsw_index, search_path_value

# Room for the whole graph in memory makes an HNSW build several times faster (pgvector README).
INDEX_BUILD_MEMORY = "512MB"


class _Checked:
    """A validated :class:`BulkDocument` with its document row's content hash and its vectors as unit float32."""

    def __init__(self, doc: BulkDocument, dim: int) -> None:
        where = f"bulk document {doc.doc_id!r}"
        texts, counts = tuple(doc.texts), tuple(doc.n_tokens)
        if not texts:
            raise InputError(f"{where}: no chunks")
        if any(not isinstance(x, str) or not x for x in texts):
            raise InputError(f"{where}: each chunk text must be a non-empty string")
        if len(counts) != len(texts) or any(
            isinstance(n, bool) or not isinstance(n, int) or n < 0 for n in counts
        ):
            raise InputError(f"{where}: n_tokens must hold one integer >= 0 per chunk ({len(texts)})")
        # the document's own checks (id, text, metadata) and content hash, as ingest computes them
        self.input = DocumentInput(doc.doc_id, "".join(texts), dict(doc.metadata), source=where)
        try:
            vectors = np.asarray(doc.embeddings, dtype=np.float32)
        except (TypeError, ValueError):
            raise InputError(f"{where}: embeddings must be a [{len(texts)}, {dim}] array of floats") from None
        if vectors.shape != (len(texts), dim) or not np.isfinite(vectors).all():
            raise InputError(
                f"{where}: embeddings must be {len(texts)} x {dim} finite floats, got shape {vectors.shape}"
            )
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        if not norms.all():
            raise InputError(f"{where}: an embedding is all zeros (cosine distance is undefined)")
        vectors = vectors / norms  # stored as unit vectors, like the embedder's
        sheets = None if doc.cheat_sheets is None else list(doc.cheat_sheets)
        if sheets is not None:
            if len(sheets) != len(texts):
                raise InputError(
                    f"{where}: {len(sheets)} cheat sheets for {len(texts)} chunks (one per chunk)"
                )
            first = sheets[0]
            hidden = int(first.shape[-1]) if getattr(first, "ndim", 0) == 2 else -1
            check_sheets(where, sheets, len(texts), hidden)
        self.doc, self.texts, self.n_tokens, self.vectors, self.sheets = doc, texts, counts, vectors, sheets


def load(
    engine: Engine,
    t: Tables,
    documents: Iterable[BulkDocument],
    *,
    group: str,
    collection: str,
    dim: int,
    encoder_fingerprint: str | None,
    sheet_dtype: str | None,
    batch_chunks: int,
) -> tuple[int, int]:
    """Write ``documents`` in transactions of about ``batch_chunks`` chunks; ``(documents, chunks)`` written."""
    n_docs = n_chunks = 0
    seen: set[str] = set()
    for batch in _batches(documents, dim, batch_chunks):
        for c in batch:
            if c.sheets is not None and encoder_fingerprint is None:
                raise InputError(
                    f"bulk document {c.doc.doc_id!r} has cheat sheets: give the encoder_fingerprint that made them"
                )
            if c.input.doc_id in seen:
                raise InputError(f"bulk document {c.input.doc_id!r} is given twice")
            seen.add(c.input.doc_id)
        with engine.begin() as conn:
            gid = int(group_row(conn, t, group, collection, create=True, lock=True).id)
            n_chunks += _write(conn, t, gid, batch, encoder_fingerprint, sheet_dtype)
        n_docs += len(batch)
    return n_docs, n_chunks


def _batches(documents: Iterable[BulkDocument], dim: int, batch_chunks: int) -> Iterator[list[_Checked]]:
    batch: list[_Checked] = []
    size = 0
    for doc in documents:
        if not isinstance(doc, BulkDocument):
            raise InputError(f"bulk_load() takes BulkDocument objects, got {type(doc).__name__}")
        checked = _Checked(doc, dim)
        batch.append(checked)
        size += len(checked.texts)
        if size >= batch_chunks:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _write(
    conn: Connection,
    t: Tables,
    gid: int,
    batch: list[_Checked],
    fingerprint: str | None,
    sheet_dtype: str | None,
) -> int:
    d, c = t.documents, t.chunks
    ids = [x.input.doc_id for x in batch]
    stored = (
        conn.execute(select(d.c.doc_id).where(d.c.group_id == gid, d.c.doc_id.in_(ids))).scalars().first()
    )
    if stored is not None:
        raise InputError(
            f"bulk document {stored!r} is already stored in the group: bulk_load only adds documents "
            "(ingest replaces them; delete_document removes one)"
        )
    doc_rows = [
        {
            "group_id": gid,
            "doc_id": x.input.doc_id,
            "sha256": x.input.sha256,
            "encoder_fingerprint": fingerprint if x.sheets is not None else None,
            "meta": x.input.metadata,
            "n_chunks": len(x.texts),
            "n_tokens": sum(x.n_tokens),
            "n_chars": len(x.input.text),
        }
        for x in batch
    ]
    doc_pks = (
        conn.execute(insert(d).returning(d.c.id, sort_by_parameter_order=True), doc_rows).scalars().all()
    )
    chunk_rows: list[dict[str, Any]] = []
    for x, doc_pk in zip(batch, doc_pks, strict=True):
        offset = 0
        for i, (chunk_text, n_tok) in enumerate(zip(x.texts, x.n_tokens, strict=True)):
            chunk_rows.append(
                {
                    "document_id": doc_pk,
                    "group_id": gid,
                    "ordinal": i,
                    "text": chunk_text,
                    "n_tokens": n_tok,
                    "char_start": offset,
                    "char_end": offset + len(chunk_text),
                    "meta": x.input.metadata,
                    "embedding": x.vectors[i],
                }
            )
            offset += len(chunk_text)
    chunk_ids = (
        conn.execute(insert(c).returning(c.c.id, sort_by_parameter_order=True), chunk_rows).scalars().all()
    )
    with_sheets, sheets, start = [], [], 0
    for x in batch:
        n = len(x.texts)
        if x.sheets is not None:
            with_sheets += chunk_ids[start : start + n]
            sheets += x.sheets
        start += n
    if sheets:
        conn.execute(
            insert(t.cheat_sheets), sheet_rows(with_sheets, sheets, fingerprint, sheet_dtype=sheet_dtype)
        )
    return len(chunk_rows)


def drop_index(engine: Engine, t: Tables) -> bool:
    """Drop the HNSW index before a load; whether there was one."""
    with engine.begin() as conn:
        had = has_hnsw_index(conn, t)
        drop_hnsw_index(conn, t)
    return had


class Analyze(Executable, ClauseElement):
    """``ANALYZE <table>`` as a SQLAlchemy statement (SQLAlchemy has none): the table is a ``Table`` object,
    rendered by the dialect's identifier preparer like every other statement's; nothing is interpolated."""

    inherit_cache = True

    def __init__(self, table: Table) -> None:
        self.table = table


@compiles(Analyze)
def _compile_analyze(element: Analyze, compiler, **kw) -> str:
    return "ANALYZE " + compiler.preparer.format_table(element.table)


def build_index(engine: Engine, t: Tables, vector_schema: str | None) -> float:
    """Build the HNSW index over the whole chunks table in one pass, then ANALYZE it; seconds taken."""
    start = time.perf_counter()
    with engine.begin() as conn:
        conn.execute(select(func.set_config("maintenance_work_mem", INDEX_BUILD_MEMORY, True)))
        if vector_schema:
            conn.execute(select(func.set_config("search_path", search_path_value([vector_schema]), True)))
        ensure_hnsw_index(conn, t)
    # Fresh planner statistics, so that the first queries after a load already use the new index.
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(Analyze(t.chunks))
    return round(time.perf_counter() - start, 3)
