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
from sqlalchemy import Connection, Engine, delete, insert, select

from ..codec import dtype_name, encode_tensor
from ..embeddings import Embedder, as_matrix
from ..errors import CheatSheetError, InputError
from .catalog import group_row
from .inputs import DocumentInput
from .records import DocumentOutcome
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

    def compress_chunks(self, chunks: list[Any], *, batch_size: int = 8,
                        progress: bool = False) -> list[torch.Tensor]: ...


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


def prepare(doc: DocumentInput, encoder: EncoderLike, embedder: Embedder, *, compress: bool,
            batch_size: int) -> PreparedDocument:
    """Split, embed and compress one document (no database access)."""
    try:
        chunks = list(encoder.split(doc.text))
    except InputError as exc:
        raise InputError(f"{doc.source}: {exc}") from exc
    if not chunks:
        raise InputError(f"{doc.source}: the encoder produced no chunks")
    vectors = as_matrix(embedder.embed([c.text for c in chunks]), len(chunks), embedder.dim, embedder.name)
    sheets = None
    if compress:
        sheets = list(encoder.compress_chunks(chunks, batch_size=batch_size, progress=False))
        if len(sheets) != len(chunks):
            raise CheatSheetError(f"{doc.source}: encoder returned {len(sheets)} cheat sheets for "
                                  f"{len(chunks)} chunks")
        for i, s in enumerate(sheets):
            if not isinstance(s, torch.Tensor) or s.ndim != 2 or s.shape[-1] != encoder.hidden_size:
                raise CheatSheetError(f"{doc.source}: cheat sheet {i} has shape "
                                      f"{tuple(getattr(s, 'shape', ()))}, expected [n, {encoder.hidden_size}]")
            if not torch.isfinite(s).all():
                raise CheatSheetError(f"{doc.source}: cheat sheet {i} holds NaN or infinite values")
    return PreparedDocument(doc, chunks, vectors, sheets, encoder.fingerprint if compress else None)


def existing_state(conn: Connection, t: Tables, group_id: int, doc_id: str) -> tuple[str, str | None] | None:
    """``(sha256, encoder_fingerprint)`` of a stored document, or None."""
    d = t.documents
    row = conn.execute(select(d.c.sha256, d.c.encoder_fingerprint)
                       .where(d.c.group_id == group_id, d.c.doc_id == doc_id)).one_or_none()
    return None if row is None else (row[0], row[1])


def is_unchanged(state: tuple[str, str | None] | None, doc: DocumentInput, fingerprint: str | None) -> bool:
    """Same content and cheat sheets from the same encoder: nothing to do."""
    return state is not None and state[0] == doc.sha256 and state[1] == fingerprint


def write_document(engine: Engine, t: Tables, group: str, collection: str, prep: PreparedDocument, *,
                   sheet_dtype: str | None) -> DocumentOutcome:
    """Replace ``prep.doc`` in the group inside ONE transaction (delete old rows, insert new ones)."""
    doc = prep.doc
    d, c, cs = t.documents, t.chunks, t.cheat_sheets
    with engine.begin() as conn:
        # Lock the group row: concurrent writers of one group take turns, so two ingests of the same new
        # document cannot both insert it (the loser then sees it and reports "unchanged").
        gid = int(group_row(conn, t, group, collection, lock=True).id)
        old = conn.execute(select(d.c.id, d.c.sha256, d.c.encoder_fingerprint)
                           .where(d.c.group_id == gid, d.c.doc_id == doc.doc_id).with_for_update()).one_or_none()
        if old is not None and old.sha256 == doc.sha256 and old.encoder_fingerprint == prep.fingerprint:
            return DocumentOutcome(doc.doc_id, "unchanged", 0)  # a concurrent ingest got here first
        if old is not None:
            conn.execute(delete(d).where(d.c.id == old.id))
        doc_pk = conn.execute(insert(d).values(
            group_id=gid, doc_id=doc.doc_id, sha256=doc.sha256, encoder_fingerprint=prep.fingerprint,
            meta=doc.metadata, n_chunks=len(prep.chunks),
            n_tokens=sum(len(ch.token_ids) for ch in prep.chunks), n_chars=len(doc.text),
        ).returning(d.c.id)).scalar_one()
        chunk_ids: list[int] = []
        for start in range(0, len(prep.chunks), INSERT_BATCH):
            part = prep.chunks[start:start + INSERT_BATCH]
            rows = [{
                "document_id": doc_pk, "group_id": gid, "ordinal": int(ch.ordinal), "text": ch.text,
                "n_tokens": len(ch.token_ids), "char_start": getattr(ch, "char_start", None),
                "char_end": getattr(ch, "char_end", None), "meta": doc.metadata,
                "embedding": prep.embeddings[start + i],
            } for i, ch in enumerate(part)]
            ids = conn.execute(insert(c).returning(c.c.id, sort_by_parameter_order=True), rows).scalars().all()
            chunk_ids.extend(int(i) for i in ids)
            if prep.sheets is not None:
                sheet_rows = []
                for chunk_pk, tensor in zip(ids, prep.sheets[start:start + INSERT_BATCH], strict=True):
                    stored = storage_tensor(tensor, sheet_dtype)
                    blob = encode_tensor(stored)
                    sheet_rows.append({"chunk_id": chunk_pk, "encoder_fingerprint": prep.fingerprint,
                                       "dtype": dtype_name(stored.dtype), "shape": list(stored.shape),
                                       "n_bytes": len(blob), "data": blob})
                conn.execute(insert(cs), sheet_rows)
    return DocumentOutcome(doc.doc_id, "replaced" if old is not None else "added", len(prep.chunks),
                           tuple(chunk_ids))
