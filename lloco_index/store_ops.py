"""Chunk-level reads and deletes the LlamaIndex adapters need beyond the store facade.

The facade (:class:`~lloco_runtime.store.CheatSheetStore`) works per document; a vector store also reads
chunks back as nodes and deletes single nodes. These helpers use the facade's public ``engine`` and
``tables`` with SQLAlchemy expressions (bound values only), one transaction per call.
TODO(store): candidates for the facade (``list_chunks``, ``delete_chunks``, ``clear_group``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete, func, select, update

from lloco_runtime.errors import NotFoundError
from lloco_runtime.store import CheatSheetStore
from lloco_runtime.store.filters import Filter, compile_filter


@dataclass
class ChunkRow:
    """A stored chunk as the adapters need it (with its retrieval embedding)."""

    chunk_id: int
    doc_id: str
    ordinal: int
    text: str
    n_tokens: int
    char_start: int | None
    char_end: int | None
    metadata: dict[str, Any] = field(default_factory=dict)
    embedding: list[float] | None = None


def group_id(store: CheatSheetStore, group: str, collection: str) -> int | None:
    """The group's row id, or None when the group does not exist."""
    return next((g.id for g in store.list_groups(collection) if g.name == group), None)


def list_chunks(store: CheatSheetStore, group: str, collection: str, *, doc_ids: Sequence[str] | None = None,
                chunk_ids: Sequence[int] | None = None, where: Filter | None = None,
                with_embeddings: bool = False, limit: int = 100_000) -> list[ChunkRow]:
    """Chunks of one group (optionally of some documents / chunk ids / matching a filter), in doc order."""
    gid = group_id(store, group, collection)
    if gid is None:
        return []
    c, d = store.tables.chunks, store.tables.documents
    cols = [c.c.id, d.c.doc_id, c.c.ordinal, c.c.text, c.c.n_tokens, c.c.char_start, c.c.char_end, c.c.meta]
    if with_embeddings:
        cols.append(c.c.embedding)
    stmt = select(*cols).select_from(c.join(d, c.c.document_id == d.c.id)).where(c.c.group_id == gid)
    if doc_ids is not None:
        stmt = stmt.where(d.c.doc_id.in_([str(x) for x in doc_ids]))
    if chunk_ids is not None:
        stmt = stmt.where(c.c.id.in_([int(x) for x in chunk_ids]))
    cond = compile_filter(where, c.c.meta)
    if cond is not None:
        stmt = stmt.where(cond)
    stmt = stmt.order_by(d.c.doc_id, c.c.ordinal).limit(limit)
    with store.engine.begin() as conn:
        rows = conn.execute(stmt).all()
    out = []
    for r in rows:
        emb = None
        if with_embeddings and r.embedding is not None:
            v = r.embedding
            emb = [float(x) for x in (v.to_list() if hasattr(v, "to_list") else v)]
        out.append(ChunkRow(int(r.id), r.doc_id, int(r.ordinal), r.text, int(r.n_tokens), r.char_start,
                            r.char_end, dict(r.meta), emb))
    return out


def delete_chunks(store: CheatSheetStore, group: str, collection: str, *,
                  chunk_ids: Sequence[int] | None = None, where: Filter | None = None) -> int:
    """Delete chunks (with their cheat sheets) of one group by id and/or filter; returns how many.

    Documents left without chunks are deleted; the others get their chunk/token counts updated, and their
    content hash cleared so that re-ingesting the full document restores the missing chunks.
    """
    if chunk_ids is None and where is None:
        raise ValueError("delete_chunks needs chunk_ids or a filter")
    gid = group_id(store, group, collection)
    if gid is None:
        return 0
    c, d = store.tables.chunks, store.tables.documents
    stmt = delete(c).where(c.c.group_id == gid)
    if chunk_ids is not None:
        stmt = stmt.where(c.c.id.in_([int(x) for x in chunk_ids]))
    cond = compile_filter(where, c.c.meta)
    if cond is not None:
        stmt = stmt.where(cond)
    with store.engine.begin() as conn:
        touched = conn.execute(stmt.returning(c.c.document_id)).scalars().all()
        for doc_pk in set(touched):
            n, toks = conn.execute(select(func.count(), func.coalesce(func.sum(c.c.n_tokens), 0))
                                   .where(c.c.document_id == doc_pk)).one()
            if n == 0:
                conn.execute(delete(d).where(d.c.id == doc_pk))
            else:
                conn.execute(update(d).where(d.c.id == doc_pk).values(n_chunks=int(n), n_tokens=int(toks),
                                                                      sha256="0" * 64))
    return len(touched)


def clear_group(store: CheatSheetStore, group: str, collection: str) -> None:
    """Delete every document of the group in one transaction; the group and its adapters stay."""
    gid = group_id(store, group, collection)
    if gid is None:
        return
    d = store.tables.documents
    with store.engine.begin() as conn:
        conn.execute(delete(d).where(d.c.group_id == gid))


def delete_document_if_present(store: CheatSheetStore, doc_id: str, group: str, collection: str) -> bool:
    """Delete a document; False (not an error) when it or its group is absent (LlamaIndex semantics)."""
    try:
        store.delete_document(doc_id, group=group, collection=collection)
    except NotFoundError:
        return False
    return True
