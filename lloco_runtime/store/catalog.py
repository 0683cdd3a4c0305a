"""Collections, groups and documents: lookup, get-or-create, listing and cascading deletes.

Functions take an open ``Connection`` and the schema's :class:`Tables`; the facade decides transactions.
"""

from __future__ import annotations

from sqlalchemy import Connection, delete, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert

from ..errors import NotFoundError
from .names import validate_doc_id, validate_name
from .records import CollectionInfo, DocumentInfo, GroupInfo
from .schema import Tables

DEFAULT_COLLECTION = "default"


def collection_id(conn: Connection, t: Tables, name: str, *, create: bool = False) -> int:
    """The id of collection ``name``; created when ``create`` (idempotent under concurrency)."""
    validate_name(name, "collection")
    if create:
        conn.execute(
            pg_insert(t.collections).values(name=name).on_conflict_do_nothing(index_elements=["name"])
        )
    found = conn.execute(select(t.collections.c.id).where(t.collections.c.name == name)).scalar_one_or_none()
    if found is None:
        raise NotFoundError(
            f"collection {name!r} does not exist; list them with `lloco groups list`, or ingest documents "
            "with --collection to create it"
        )
    return int(found)


def group_row(
    conn: Connection,
    t: Tables,
    group: str,
    collection: str = DEFAULT_COLLECTION,
    *,
    create: bool = False,
    lock: bool = False,
):
    """The row ``(id, active_adapter_id)`` of ``collection/group``; created when ``create``."""
    validate_name(group, "group")
    validate_name(collection, "collection")
    if create:
        cid = collection_id(conn, t, collection, create=True)
        conn.execute(
            pg_insert(t.groups)
            .values(collection_id=cid, name=group)
            .on_conflict_do_nothing(index_elements=["collection_id", "name"])
        )
    g, c = t.groups, t.collections
    stmt = (
        select(g.c.id, g.c.active_adapter_id)
        .select_from(g.join(c, g.c.collection_id == c.c.id))
        .where(g.c.name == group, c.c.name == collection)
    )
    if lock:
        stmt = stmt.with_for_update(of=g)
    row = conn.execute(stmt).one_or_none()
    if row is None:
        raise NotFoundError(
            f"group {group!r} does not exist in collection {collection!r}; create it by ingesting "
            f"documents (`lloco ingest PATH --group {group}`) and list groups with `lloco groups list`"
        )
    return row


def list_collections(conn: Connection, t: Tables) -> list[CollectionInfo]:
    c, g = t.collections, t.groups
    stmt = (
        select(c.c.id, c.c.name, func.count(g.c.id), c.c.created_at)
        .select_from(c.outerjoin(g, g.c.collection_id == c.c.id))
        .group_by(c.c.id)
        .order_by(c.c.name)
    )
    return [CollectionInfo(int(r[0]), r[1], int(r[2]), r[3]) for r in conn.execute(stmt)]


def list_groups(
    conn: Connection, t: Tables, collection: str | None = None, *, name: str | None = None
) -> list[GroupInfo]:
    """Groups (of one collection, or all), with document and chunk counts; only ``name`` if given."""
    g, c, d = t.groups, t.collections, t.documents
    n_docs = (select(func.count()).select_from(d).where(d.c.group_id == g.c.id)).scalar_subquery()
    n_chunks = (
        select(func.coalesce(func.sum(d.c.n_chunks), 0)).where(d.c.group_id == g.c.id)
    ).scalar_subquery()
    stmt = (
        select(g.c.id, g.c.name, c.c.name, g.c.active_adapter_id, n_docs, n_chunks, g.c.created_at)
        .select_from(g.join(c, g.c.collection_id == c.c.id))
        .order_by(c.c.name, g.c.name)
    )
    if collection is not None:
        stmt = stmt.where(c.c.name == validate_name(collection, "collection"))
    if name is not None:
        stmt = stmt.where(g.c.name == validate_name(name, "group"))
    rows = conn.execute(stmt).all()
    if not rows:
        return []
    ids = [int(r[0]) for r in rows]
    sheets = group_fingerprints(conn, t, ids)
    a = t.adapters
    adapters: dict[int, dict[int, str]] = {}
    for gid, aid, fp in conn.execute(
        select(a.c.group_id, a.c.id, a.c.encoder_fingerprint).where(a.c.group_id.in_(ids))
    ):
        adapters.setdefault(int(gid), {})[int(aid)] = fp
    out = []
    for r in rows:
        gid, active = int(r[0]), r[3]
        fps, stored = sheets.get(gid, {}), adapters.get(gid, {})
        active_fp = stored.get(int(active)) if active is not None else None
        out.append(
            GroupInfo(
                gid,
                r[1],
                r[2],
                active,
                int(r[4]),
                int(r[5]),
                r[6],
                encoder_fingerprints=fps,
                adapter_encoder_fingerprint=active_fp,
                adapter_stale=active is not None and is_stale(active_fp, fps),
                n_adapters=len(stored),
                n_stale_adapters=sum(1 for fp in stored.values() if is_stale(fp, fps)),
            )
        )
    return out


def group_fingerprints(conn: Connection, t: Tables, group_ids: list[int]) -> dict[int, dict[str, int]]:
    """``group id -> {encoder fingerprint: chunks}`` of the groups' cheat sheets (documents stored without
    sheets are left out). A document's fingerprint changes with its sheets in one transaction (ingest and
    recompress both), so the documents table answers without reading the sheets."""
    d = t.documents
    stmt = (
        select(d.c.group_id, d.c.encoder_fingerprint, func.coalesce(func.sum(d.c.n_chunks), 0))
        .where(d.c.group_id.in_(group_ids), d.c.encoder_fingerprint.is_not(None))
        .group_by(d.c.group_id, d.c.encoder_fingerprint)
    )
    out: dict[int, dict[str, int]] = {}
    for gid, fp, n in conn.execute(stmt):
        out.setdefault(int(gid), {})[fp] = int(n)
    return out


def is_stale(adapter_fingerprint: str | None, sheet_fingerprints: dict[str, int] | set[str]) -> bool:
    """An adapter is stale when the group holds cheat sheets of an encoder other than the one it was trained
    for (a group without sheets makes no adapter stale)."""
    return bool(sheet_fingerprints) and set(sheet_fingerprints) != {adapter_fingerprint}


def get_group(conn: Connection, t: Tables, group: str, collection: str = DEFAULT_COLLECTION) -> GroupInfo:
    """``collection/group`` with its counts (NotFoundError if absent)."""
    found = list_groups(conn, t, collection, name=group)
    if not found:
        group_row(conn, t, group, collection)  # raises NotFoundError with the usual hint
    return found[0]


def list_documents(
    conn: Connection,
    t: Tables,
    group: str,
    collection: str = DEFAULT_COLLECTION,
    *,
    limit: int = 1000,
    offset: int = 0,
) -> list[DocumentInfo]:
    gid = int(group_row(conn, t, group, collection).id)
    d = t.documents
    stmt = (
        select(d)
        .where(d.c.group_id == gid)
        .order_by(d.c.doc_id)
        .limit(max(1, min(int(limit), 100_000)))
        .offset(max(0, int(offset)))
    )
    return [_document_info(r, group, collection) for r in conn.execute(stmt)]


def get_document(
    conn: Connection, t: Tables, doc_id: str, group: str, collection: str = DEFAULT_COLLECTION
) -> DocumentInfo:
    gid = int(group_row(conn, t, group, collection).id)
    d = t.documents
    row = conn.execute(
        select(d).where(d.c.group_id == gid, d.c.doc_id == validate_doc_id(doc_id))
    ).one_or_none()
    if row is None:
        raise NotFoundError(f"document {doc_id!r} is not in {collection}/{group}; see `lloco docs list`")
    return _document_info(row, group, collection)


def _document_info(r, group: str, collection: str) -> DocumentInfo:
    return DocumentInfo(
        id=int(r.id),
        doc_id=r.doc_id,
        group=group,
        collection=collection,
        sha256=r.sha256,
        encoder_fingerprint=r.encoder_fingerprint,
        metadata=dict(r.meta),
        n_chunks=int(r.n_chunks),
        n_tokens=int(r.n_tokens),
        n_chars=int(r.n_chars),
        updated_at=r.updated_at,
    )


def delete_document(
    conn: Connection, t: Tables, doc_id: str, group: str, collection: str = DEFAULT_COLLECTION
) -> None:
    """Delete one document with its chunks and cheat sheets."""
    gid = int(group_row(conn, t, group, collection).id)
    d = t.documents
    res = conn.execute(delete(d).where(d.c.group_id == gid, d.c.doc_id == validate_doc_id(doc_id)))
    if res.rowcount == 0:
        raise NotFoundError(f"document {doc_id!r} is not in {collection}/{group}; see `lloco docs list`")


def delete_group(conn: Connection, t: Tables, group: str, collection: str = DEFAULT_COLLECTION) -> None:
    """Delete a group with its documents, chunks, cheat sheets and adapters."""
    gid = int(group_row(conn, t, group, collection).id)
    conn.execute(delete(t.groups).where(t.groups.c.id == gid))


def delete_collection(conn: Connection, t: Tables, name: str) -> None:
    """Delete a collection and everything in it."""
    cid = collection_id(conn, t, name)
    conn.execute(delete(t.collections).where(t.collections.c.id == cid))
