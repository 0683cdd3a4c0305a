"""Chunk-level reads and deletes: list a group's chunks, delete some of them, empty a group.

Functions take an open ``Connection`` and the schema's :class:`Tables`; the facade decides transactions.
A missing group raises NotFoundError (as for documents); SQLAlchemy expressions with bound values only.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Connection, delete, func, select, update

from ..errors import InputError
from .catalog import DEFAULT_COLLECTION, group_row
from .filters import Filter, compile_filter
from .records import ChunkInfo
from .schema import Tables

MAX_LIST = 100_000
CLEARED_SHA256 = "0" * 64  # matches no content: re-ingesting the full document restores its chunks


def _ids(values: Sequence[int], what: str) -> list[int]:
    try:
        return [int(v) for v in values]
    except (TypeError, ValueError):
        raise InputError(f"{what} must be integers (chunk ids), got {list(values)[:5]!r}") from None


def list_chunks(
    conn: Connection,
    t: Tables,
    group: str,
    collection: str = DEFAULT_COLLECTION,
    *,
    doc_ids: Sequence[str] | None = None,
    chunk_ids: Sequence[int] | None = None,
    where: Filter | None = None,
    with_embeddings: bool = False,
    limit: int = MAX_LIST,
    offset: int = 0,
) -> list[ChunkInfo]:
    """Chunks of one group (optionally of some documents / chunk ids / matching a filter), ordered by
    ``(doc_id, ordinal)``; at most ``limit`` (capped at 100,000) from ``offset``."""
    gid = int(group_row(conn, t, group, collection).id)
    c, d = t.chunks, t.documents
    cols = [c.c.id, d.c.doc_id, c.c.ordinal, c.c.text, c.c.n_tokens, c.c.char_start, c.c.char_end, c.c.meta]
    if with_embeddings:
        cols.append(c.c.embedding)
    stmt = select(*cols).select_from(c.join(d, c.c.document_id == d.c.id)).where(c.c.group_id == gid)
    if doc_ids is not None:
        stmt = stmt.where(d.c.doc_id.in_([str(x) for x in doc_ids]))
    if chunk_ids is not None:
        stmt = stmt.where(c.c.id.in_(_ids(chunk_ids, "chunk_ids")))
    cond = compile_filter(where, c.c.meta)
    if cond is not None:
        stmt = stmt.where(cond)
    stmt = (
        stmt.order_by(d.c.doc_id, c.c.ordinal)
        .limit(max(1, min(int(limit), MAX_LIST)))
        .offset(max(0, int(offset)))
    )
    out = []
    for r in conn.execute(stmt):
        emb = None
        if with_embeddings and r.embedding is not None:
            v = r.embedding
            emb = [float(x) for x in (v.to_list() if hasattr(v, "to_list") else v)]
        out.append(
            ChunkInfo(
                int(r.id),
                r.doc_id,
                int(r.ordinal),
                r.text,
                int(r.n_tokens),
                r.char_start,
                r.char_end,
                dict(r.meta),
                emb,
            )
        )
    return out


def delete_chunks(
    conn: Connection,
    t: Tables,
    group: str,
    collection: str = DEFAULT_COLLECTION,
    *,
    chunk_ids: Sequence[int] | None = None,
    where: Filter | None = None,
) -> int:
    """Delete chunks (with their cheat sheets) of one group by id and/or filter; returns how many.

    Documents left without chunks are deleted; the others get their chunk/token counts updated and their
    content hash cleared, so that re-ingesting the full document restores the missing chunks.
    """
    if chunk_ids is None and where is None:
        raise InputError("delete_chunks needs chunk_ids or filters (to empty a group use clear_group)")
    gid = int(group_row(conn, t, group, collection).id)
    c, d = t.chunks, t.documents
    stmt = delete(c).where(c.c.group_id == gid)
    if chunk_ids is not None:
        stmt = stmt.where(c.c.id.in_(_ids(chunk_ids, "chunk_ids")))
    cond = compile_filter(where, c.c.meta)
    if cond is not None:
        stmt = stmt.where(cond)
    touched = conn.execute(stmt.returning(c.c.document_id)).scalars().all()
    for doc_pk in sorted(set(touched)):
        n, toks = conn.execute(
            select(func.count(), func.coalesce(func.sum(c.c.n_tokens), 0)).where(c.c.document_id == doc_pk)
        ).one()
        if n == 0:
            conn.execute(delete(d).where(d.c.id == doc_pk))
        else:
            conn.execute(
                update(d)
                .where(d.c.id == doc_pk)
                .values(n_chunks=int(n), n_tokens=int(toks), sha256=CLEARED_SHA256)
            )
    return len(touched)


def clear_group(conn: Connection, t: Tables, group: str, collection: str = DEFAULT_COLLECTION) -> None:
    """Delete every document of the group (chunks and cheat sheets cascade); the group and adapters stay."""
    gid = int(group_row(conn, t, group, collection).id)
    conn.execute(delete(t.documents).where(t.documents.c.group_id == gid))
