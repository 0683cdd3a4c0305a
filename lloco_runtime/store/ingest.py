"""Ingest: document -> encoder-aligned chunks -> retrieval embeddings + cheat sheets -> one transaction.

Expensive work (splitting, embedding, compressing) happens before the transaction opens, so
transactions stay short; the transaction then replaces the document atomically. Any failure (the
encoder raising midway, a bad tensor, a database error) leaves the previous state untouched: no
partial document is ever visible.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from sqlalchemy import Connection, Engine, delete, exists, func, insert, or_, select, update

from ..codec import dtype_name, encode_tensor
from ..embeddings import Embedder, as_matrix
from ..errors import CheatSheetError, InputError
from .catalog import group_fingerprints, group_row, is_stale
from .inputs import DocumentInput
from .records import DocumentOutcome, RecompressOutcome
from .schema import Tables

INSERT_BATCH = 256
FP16_MAX = 65504.0


class ChunkLike(Protocol):
    """What the store needs from an encoder chunk (``lloco_runtime.encoder.Chunk`` fits)."""

    ordinal: int
    text: str
    token_ids: Sequence[int]


class EncoderLike(Protocol):
    """What the store needs from a context encoder (``lloco_runtime.encoder.ContextEncoder`` fits)."""

    @property
    def fingerprint(self) -> str: ...

    @property
    def hidden_size(self) -> int: ...

    def split(self, text: str) -> list[Any]: ...

    def compress_chunks(
        self, chunks: list[Any], *, batch_size: int = 8, progress: bool = False
    ) -> list[torch.Tensor]: ...


@dataclass
class PreparedDocument:
    """A document made ready for writing: chunks, retrieval vectors and (optionally) cheat sheets."""

    doc: DocumentInput
    chunks: list[Any]
    embeddings: np.ndarray
    sheets: list[torch.Tensor] | None
    fingerprint: str | None


def storage_tensor(t: torch.Tensor, sheet_dtype: str | None) -> torch.Tensor:
    """Cast a cheat sheet for storage; float16 falls back to the source dtype where it would overflow."""
    if sheet_dtype is None:
        return t
    if sheet_dtype == "float16" and t.dtype == torch.float32 and t.abs().max().item() > FP16_MAX:
        return t
    return t.to(getattr(torch, sheet_dtype))


def prepare(
    doc: DocumentInput, encoder: EncoderLike, embedder: Embedder, *, compress: bool, batch_size: int
) -> PreparedDocument:
    """Split, embed and compress one document (no database access)."""
    chunks = split_document(doc.source, doc.text, encoder)
    vectors = embed_chunks(chunks, embedder)
    sheets = compress_document(doc.source, chunks, encoder, batch_size=batch_size) if compress else None
    return PreparedDocument(doc, chunks, vectors, sheets, encoder.fingerprint if compress else None)


def split_document(source: str, text: str, encoder: EncoderLike) -> list[Any]:
    """The encoder's chunks of one document's text; InputError naming ``source`` when there are none.
    (The steps of :func:`prepare`, also run one by one on Ray workers: ``ray_ingest``.)"""
    try:
        chunks = list(encoder.split(text))
    except InputError as exc:
        raise InputError(f"{source}: {exc}") from exc
    if not chunks:
        raise InputError(f"{source}: the encoder produced no chunks")
    return chunks


def embed_chunks(chunks: Sequence[Any], embedder: Embedder) -> np.ndarray:
    """Retrieval vectors of a document's chunks (one embedder call per document), float32 ``[n, dim]``."""
    return as_matrix(embedder.embed([c.text for c in chunks]), len(chunks), embedder.dim, embedder.name)


def compress_document(
    source: str, chunks: list[Any], encoder: EncoderLike, *, batch_size: int
) -> list[torch.Tensor]:
    """One checked cheat sheet per chunk of one document (see :func:`check_sheets`)."""
    sheets = list(encoder.compress_chunks(chunks, batch_size=batch_size, progress=False))
    check_sheets(source, sheets, len(chunks), encoder.hidden_size)
    return sheets


def check_sheets(source: str, sheets: list[Any], n_chunks: int, hidden_size: int) -> None:
    """One finite ``[n, hidden_size]`` tensor per chunk, else CheatSheetError naming ``source``."""
    if len(sheets) != n_chunks:
        raise CheatSheetError(f"{source}: encoder returned {len(sheets)} cheat sheets for {n_chunks} chunks")
    for i, s in enumerate(sheets):
        if not isinstance(s, torch.Tensor) or s.ndim != 2 or s.shape[-1] != hidden_size:
            raise CheatSheetError(
                f"{source}: cheat sheet {i} has shape "
                f"{tuple(getattr(s, 'shape', ()))}, expected [n, {hidden_size}]"
            )
        if not torch.isfinite(s).all():
            raise CheatSheetError(f"{source}: cheat sheet {i} holds NaN or infinite values")


def existing_state(conn: Connection, t: Tables, group_id: int, doc_id: str) -> tuple[str, str | None] | None:
    """``(sha256, encoder_fingerprint)`` of a stored document, or None."""
    d = t.documents
    row = conn.execute(
        select(d.c.sha256, d.c.encoder_fingerprint).where(d.c.group_id == group_id, d.c.doc_id == doc_id)
    ).one_or_none()
    return None if row is None else (row[0], row[1])


def is_unchanged(state: tuple[str, str | None] | None, doc: DocumentInput, fingerprint: str | None) -> bool:
    """Same content and cheat sheets from the same encoder: nothing to do."""
    return state is not None and state[0] == doc.sha256 and state[1] == fingerprint


def write_document(
    engine: Engine, t: Tables, group: str, collection: str, prep: PreparedDocument, *, sheet_dtype: str | None
) -> DocumentOutcome:
    """Replace ``prep.doc`` in the group inside ONE transaction (delete old rows, insert new ones)."""
    doc = prep.doc
    d = t.documents
    with engine.begin() as conn:
        # Lock the group row: concurrent writers of one group take turns, so two ingests of the same new
        # document cannot both insert it (the loser then sees it and reports "unchanged").
        gid = int(group_row(conn, t, group, collection, lock=True).id)
        old = conn.execute(
            select(d.c.id, d.c.sha256, d.c.encoder_fingerprint)
            .where(d.c.group_id == gid, d.c.doc_id == doc.doc_id)
            .with_for_update()
        ).one_or_none()
        if old is not None and old.sha256 == doc.sha256 and old.encoder_fingerprint == prep.fingerprint:
            return DocumentOutcome(doc.doc_id, "unchanged", 0)  # a concurrent ingest got here first
        if old is not None:
            conn.execute(delete(d).where(d.c.id == old.id))
        doc_pk = conn.execute(
            insert(d)
            .values(
                group_id=gid,
                doc_id=doc.doc_id,
                sha256=doc.sha256,
                encoder_fingerprint=prep.fingerprint,
                meta=doc.metadata,
                n_chunks=len(prep.chunks),
                n_tokens=sum(len(ch.token_ids) for ch in prep.chunks),
                n_chars=len(doc.text),
            )
            .returning(d.c.id)
        ).scalar_one()
        chunk_ids = insert_chunks(
            conn,
            t,
            doc_pk,
            gid,
            prep.chunks,
            prep.embeddings,
            prep.sheets,
            prep.fingerprint,
            doc.metadata,
            sheet_dtype=sheet_dtype,
        )
    return DocumentOutcome(
        doc.doc_id, "replaced" if old is not None else "added", len(prep.chunks), tuple(chunk_ids)
    )


def sheet_rows(
    chunk_ids: Sequence[int],
    sheets: Sequence[torch.Tensor],
    fingerprint: str | None,
    *,
    sheet_dtype: str | None,
) -> list[dict[str, Any]]:
    """``cheat_sheets`` rows for ``sheets`` (cast for storage, encoded as codec bytes)."""
    rows = []
    for chunk_pk, tensor in zip(chunk_ids, sheets, strict=True):
        stored = storage_tensor(tensor, sheet_dtype)
        blob = encode_tensor(stored)
        rows.append(
            {
                "chunk_id": int(chunk_pk),
                "encoder_fingerprint": fingerprint,
                "dtype": dtype_name(stored.dtype),
                "shape": list(stored.shape),
                "n_bytes": len(blob),
                "data": blob,
            }
        )
    return rows


def insert_chunks(
    conn: Connection,
    t: Tables,
    doc_pk: int,
    gid: int,
    chunks: Sequence[Any],
    embeddings: np.ndarray,
    sheets: Sequence[torch.Tensor] | None,
    fingerprint: str | None,
    metadata: dict[str, Any],
    *,
    sheet_dtype: str | None,
    char_offset: int | None = 0,
) -> list[int]:
    """Insert a document's chunks (and their cheat sheets, if any) in the caller's transaction; their ids.

    ``char_offset`` shifts the chunks' character spans (None: spans unknown, stored as NULL)."""
    c = t.chunks
    chunk_ids: list[int] = []
    for start in range(0, len(chunks), INSERT_BATCH):
        part = chunks[start : start + INSERT_BATCH]
        rows = []
        for i, ch in enumerate(part):
            c0, c1 = getattr(ch, "char_start", None), getattr(ch, "char_end", None)
            if char_offset is None:
                c0 = c1 = None
            rows.append(
                {
                    "document_id": doc_pk,
                    "group_id": gid,
                    "ordinal": int(ch.ordinal),
                    "text": ch.text,
                    "n_tokens": len(ch.token_ids),
                    "char_start": None if c0 is None else c0 + char_offset,
                    "char_end": None if c1 is None else c1 + char_offset,
                    "meta": metadata,
                    "embedding": embeddings[start + i],
                }
            )
        ids = conn.execute(insert(c).returning(c.c.id, sort_by_parameter_order=True), rows).scalars().all()
        chunk_ids.extend(int(i) for i in ids)
        if sheets is not None:
            conn.execute(
                insert(t.cheat_sheets),
                sheet_rows(ids, sheets[start : start + INSERT_BATCH], fingerprint, sheet_dtype=sheet_dtype),
            )
    return chunk_ids


# -- recompress ---------------------------------------------------------------------------------------------
#
# A new encoder makes every stored cheat sheet unusable (retrieval refuses sheets of another fingerprint).
# Recompress re-encodes each stored chunk's text: nothing is read from the original files. Chunk boundaries
# stay as stored when every chunk fits the new encoder's segment; a document with a chunk that does not fit
# is cut again from its stored text (its chunks' texts, which concatenate to the document's text). Each
# document is rewritten in one transaction, and a document is pending while it has a chunk without a sheet
# of the new encoder: a killed run leaves whole documents of either encoder, and a rerun does the rest.


@dataclass(frozen=True)
class StoredChunk:
    """A stored chunk as recompress reads it."""

    id: int
    ordinal: int
    text: str
    n_tokens: int
    char_start: int | None
    char_end: int | None


@dataclass
class PendingDocument:
    """A stored document that still has chunks without a cheat sheet of the new encoder."""

    id: int
    doc_id: str
    sha256: str
    metadata: dict[str, Any]
    n_chunks: int


@dataclass
class RecompressPlan:
    """A document's new cheat sheets, computed outside any transaction.

    ``token_ids`` (one tuple per stored chunk) when the stored boundaries stay; ``chunks`` and ``embeddings``
    (new chunks cut from the stored text) when they cannot.
    """

    doc: PendingDocument
    stored: list[StoredChunk]
    sheets: list[torch.Tensor]
    token_ids: list[tuple[int, ...]] | None = None
    chunks: list[Any] | None = None
    embeddings: np.ndarray | None = None


def pending_documents(
    conn: Connection, t: Tables, gid: int, fingerprint: str, *, doc_id: str | None = None
) -> list[PendingDocument]:
    """Documents of group ``gid`` with a chunk lacking a cheat sheet of ``fingerprint``, by doc_id."""
    d, c, cs = t.documents, t.chunks, t.cheat_sheets
    has_new = exists().where(cs.c.chunk_id == c.c.id, cs.c.encoder_fingerprint == fingerprint)
    lacking = exists().where(c.c.document_id == d.c.id, ~has_new)
    stmt = (
        select(d.c.id, d.c.doc_id, d.c.sha256, d.c.meta, d.c.n_chunks)
        .where(d.c.group_id == gid, or_(lacking, d.c.encoder_fingerprint.is_distinct_from(fingerprint)))
        .order_by(d.c.doc_id)
    )
    if doc_id is not None:
        stmt = stmt.where(d.c.doc_id == doc_id)
    return [
        PendingDocument(int(r.id), r.doc_id, r.sha256, dict(r.meta), int(r.n_chunks))
        for r in conn.execute(stmt)
    ]


def count_documents(conn: Connection, t: Tables, gid: int) -> int:
    d = t.documents
    return int(conn.execute(select(func.count()).select_from(d).where(d.c.group_id == gid)).scalar_one())


def stored_chunks(conn: Connection, t: Tables, doc_pk: int) -> list[StoredChunk]:
    c = t.chunks
    rows = conn.execute(
        select(c.c.id, c.c.ordinal, c.c.text, c.c.n_tokens, c.c.char_start, c.c.char_end)
        .where(c.c.document_id == doc_pk)
        .order_by(c.c.ordinal)
    )
    return [
        StoredChunk(int(r.id), int(r.ordinal), r.text, int(r.n_tokens), r.char_start, r.char_end)
        for r in rows
    ]


def span_offset(stored: list[StoredChunk]) -> int | None:
    """Where the stored chunks' joined text starts in the document, or None when their spans are unknown or
    not contiguous (chunks deleted from the middle): new chunks cut from that text then get no spans."""
    spans = [(ch.char_start, ch.char_end) for ch in stored]
    if any(a is None or b is None for a, b in spans):
        return None
    if any(spans[i][1] != spans[i + 1][0] for i in range(len(spans) - 1)):
        return None
    return int(spans[0][0])


def _split_or_none(encoder: EncoderLike, text: str) -> list[Any] | None:
    try:
        return list(encoder.split(text))
    except InputError:  # e.g. a whitespace-only tail chunk, which the encoder will not take on its own
        return None


def plan_tokens(
    encoder: EncoderLike, stored: list[StoredChunk]
) -> tuple[list[tuple[int, ...]] | None, list[Any]]:
    """``(token ids per stored chunk, [])`` when the stored boundaries fit the encoder, else ``(None, new
    chunks of the document's stored text)``.

    The whole stored text is split first: when the encoder cuts it where the stored chunks are cut (same
    tokenizer and segment length), its token ids are exactly what a fresh ingest would compress. Otherwise
    each chunk is tokenised on its own, and only a chunk longer than one segment forces a new split.
    """
    joined = "".join(ch.text for ch in stored)
    whole = _split_or_none(encoder, joined)
    if whole is not None and [ch.text for ch in whole] == [ch.text for ch in stored]:
        return [tuple(ch.token_ids) for ch in whole], []
    ids: list[tuple[int, ...]] = []
    for ch in stored:
        parts = _split_or_none(encoder, ch.text)
        if parts is None or len(parts) != 1:
            break
        ids.append(tuple(parts[0].token_ids))
    else:
        return ids, []
    if not whole:
        raise InputError(
            "the stored text of this document gives the encoder no chunks; delete the document "
            "(`lloco delete --doc`) or ingest it again"
        )
    return None, whole


def prepare_recompress(
    doc: PendingDocument,
    stored: list[StoredChunk],
    encoder: EncoderLike,
    embedder: Embedder,
    *,
    batch_size: int,
) -> RecompressPlan:
    """Re-encode one stored document's chunks (no database access)."""
    source = f"document {doc.doc_id!r}"
    try:
        token_ids, chunks = plan_tokens(encoder, stored)
    except InputError as exc:
        raise InputError(f"{source}: {exc}") from exc
    if token_ids is not None:
        sheets = list(encoder.compress_chunks(token_ids, batch_size=batch_size, progress=False))
        check_sheets(source, sheets, len(token_ids), encoder.hidden_size)
        return RecompressPlan(doc, stored, sheets, token_ids=token_ids)
    sheets = list(encoder.compress_chunks(chunks, batch_size=batch_size, progress=False))
    check_sheets(source, sheets, len(chunks), encoder.hidden_size)
    vectors = as_matrix(embedder.embed([ch.text for ch in chunks]), len(chunks), embedder.dim, embedder.name)
    return RecompressPlan(doc, stored, sheets, chunks=chunks, embeddings=vectors)


def write_recompressed(
    engine: Engine, t: Tables, plan: RecompressPlan, fingerprint: str, *, sheet_dtype: str | None
) -> RecompressOutcome:
    """Replace one document's cheat sheets (or, re-split, its chunks) inside ONE transaction.

    The document row is locked, and nothing is written if it changed since ``plan`` was read (a concurrent
    ingest replaced it): the outcome is then ``changed`` and the caller reads it again.
    """
    d, c, cs = t.documents, t.chunks, t.cheat_sheets
    doc = plan.doc
    with engine.begin() as conn:
        row = conn.execute(
            select(d.c.id, d.c.group_id, d.c.sha256).where(d.c.id == doc.id).with_for_update()
        ).one_or_none()
        now = [ch.id for ch in stored_chunks(conn, t, doc.id)] if row is not None else []
        if row is None or row.sha256 != doc.sha256 or now != [ch.id for ch in plan.stored]:
            return RecompressOutcome(doc.doc_id, "changed", 0)
        if plan.token_ids is not None:
            ids = [ch.id for ch in plan.stored]
            conn.execute(delete(cs).where(cs.c.chunk_id.in_(ids)))
            rows = sheet_rows(ids, plan.sheets, fingerprint, sheet_dtype=sheet_dtype)
            for start in range(0, len(rows), INSERT_BATCH):
                conn.execute(insert(cs), rows[start : start + INSERT_BATCH])
            for ch, toks in zip(plan.stored, plan.token_ids, strict=True):
                if ch.n_tokens != len(toks):  # another tokenizer: keep the raw-token counts true
                    conn.execute(update(c).where(c.c.id == ch.id).values(n_tokens=len(toks)))
            conn.execute(
                update(d)
                .where(d.c.id == doc.id)
                .values(
                    encoder_fingerprint=fingerprint,
                    n_tokens=sum(len(x) for x in plan.token_ids),
                    updated_at=func.now(),
                )
            )
            return RecompressOutcome(doc.doc_id, "recompressed", len(ids))
        assert plan.chunks is not None and plan.embeddings is not None
        conn.execute(delete(c).where(c.c.document_id == doc.id))  # their cheat sheets cascade
        insert_chunks(
            conn,
            t,
            doc.id,
            int(row.group_id),
            plan.chunks,
            plan.embeddings,
            plan.sheets,
            fingerprint,
            doc.metadata,
            sheet_dtype=sheet_dtype,
            char_offset=span_offset(plan.stored),
        )
        conn.execute(
            update(d)
            .where(d.c.id == doc.id)
            .values(
                encoder_fingerprint=fingerprint,
                n_chunks=len(plan.chunks),
                n_tokens=sum(len(ch.token_ids) for ch in plan.chunks),
                updated_at=func.now(),
            )
        )
        return RecompressOutcome(doc.doc_id, "resplit", len(plan.chunks))


@dataclass(frozen=True)
class AdapterState:
    """The group's adapters after a recompress (see :func:`settle_adapters`)."""

    complete: bool
    active_adapter_id: int | None
    stale_adapter_ids: list[int]
    current_adapter_ids: list[int]
    deactivated: int | None
    activated: int | None


def settle_adapters(
    conn: Connection, t: Tables, gid: int, fingerprint: str, *, deactivate_stale: bool
) -> AdapterState:
    """Report the group's stale adapters; once every document has the new encoder's sheets, take a stale
    active adapter off (``deactivate_stale``): the runtime refuses an adapter trained for another encoder,
    so answers would fail with it. The newest stored adapter trained for the new encoder (a group switched
    back to an earlier encoder) becomes active instead, if there is one; the stale ones stay stored."""
    g, a = t.groups, t.adapters
    active = conn.execute(select(g.c.active_adapter_id).where(g.c.id == gid).with_for_update()).scalar_one()
    complete = not pending_documents(conn, t, gid, fingerprint)
    fps = group_fingerprints(conn, t, [gid]).get(gid, {})
    adapters = conn.execute(
        select(a.c.id, a.c.version, a.c.encoder_fingerprint).where(a.c.group_id == gid).order_by(a.c.version)
    ).all()
    stale = [int(r.id) for r in adapters if is_stale(r.encoder_fingerprint, fps)]
    fresh = [int(r.id) for r in adapters if r.encoder_fingerprint == fingerprint]
    deactivated = activated = None
    if complete and deactivate_stale and active is not None and int(active) in stale:
        deactivated = int(active)
        activated = fresh[-1] if fresh else None
        conn.execute(update(g).where(g.c.id == gid).values(active_adapter_id=activated))
        active = activated
    return AdapterState(
        complete, None if active is None else int(active), stale, fresh, deactivated, activated
    )
