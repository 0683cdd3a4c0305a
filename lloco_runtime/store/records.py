"""Plain result types the store returns (no SQLAlchemy rows leak out of the package)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

if TYPE_CHECKING:
    from .options import RetrievalMode  # the enum of modes (options.py imports this module's neighbours)


@dataclass(frozen=True)
class CollectionInfo:
    id: int
    name: str
    n_groups: int
    created_at: datetime


@dataclass(frozen=True)
class GroupInfo:
    id: int
    name: str
    collection: str
    active_adapter_id: int | None
    n_documents: int
    n_chunks: int
    created_at: datetime
    # Which encoder(s) made the group's cheat sheets: fingerprint -> chunks (more than one while a
    # ``recompress`` is half done); chunks stored without cheat sheets are not counted.
    encoder_fingerprints: dict[str, int] = field(default_factory=dict)
    # The encoder the active adapter was trained for, and whether that differs from the sheets' encoder(s).
    adapter_encoder_fingerprint: str | None = None
    adapter_stale: bool = False
    n_adapters: int = 0
    n_stale_adapters: int = 0  # stored adapters trained for another encoder than the group's sheets

    @property
    def encoder_state(self) -> str:
        """The sheets' encoder in short: a 12-character fingerprint, ``mixed (abc: 3, def: 5)`` or ``none``."""
        fps = self.encoder_fingerprints
        if not fps:
            return "none"
        if len(fps) == 1:
            return next(iter(fps))[:12]
        return "mixed (" + ", ".join(f"{fp[:12]}: {n}" for fp, n in sorted(fps.items())) + ")"

    @property
    def adapter_state(self) -> str:
        """``5``, ``5 (stale: trained for encoder abc...)`` or ``none``, with stale stored adapters counted."""
        if self.active_adapter_id is None:
            out = "none"
        elif self.adapter_stale:
            out = (
                f"{self.active_adapter_id} (stale: trained for encoder "
                f"{(self.adapter_encoder_fingerprint or '?')[:12]})"
            )
        else:
            out = str(self.active_adapter_id)
        if self.n_stale_adapters and not (self.n_stale_adapters == 1 and self.adapter_stale):
            out += f"; {self.n_stale_adapters} of {self.n_adapters} stored adapters stale"
        return out


@dataclass(frozen=True)
class DocumentInfo:
    id: int
    doc_id: str
    group: str
    collection: str
    sha256: str
    encoder_fingerprint: str | None
    metadata: dict[str, Any]
    n_chunks: int
    n_tokens: int
    n_chars: int
    updated_at: datetime


@dataclass(frozen=True)
class AdapterInfo:
    """An adapter row without its weights (use ``CheatSheetStore.adapter_weights`` for the bytes)."""

    id: int
    group: str
    collection: str
    version: int
    base_fingerprint: str
    encoder_fingerprint: str
    n_bytes: int
    config: dict[str, Any]
    metrics: dict[str, Any]
    active: bool
    created_at: datetime


@dataclass
class ChunkInfo:
    """A stored chunk: where it comes from, its text and span, and (on request) its retrieval embedding."""

    chunk_id: int
    doc_id: str
    ordinal: int
    text: str
    n_tokens: int
    char_start: int | None
    char_end: int | None
    metadata: dict[str, Any] = field(default_factory=dict)
    embedding: list[float] | None = None


@dataclass
class RetrievedChunk:
    """One hit: where it comes from, its text and score, and (unless lazy) its decoded cheat sheet."""

    chunk_id: int
    doc_id: str
    ordinal: int
    text: str
    n_tokens: int
    score: float
    metadata: dict[str, Any]
    cheat_sheet: torch.Tensor | None = None


@dataclass
class RetrievalResult:
    """Top-k chunks of one group, best first, with the group's active adapter."""

    query: str
    group: str
    collection: str
    mode: RetrievalMode
    adapter_id: int | None
    chunks: list[RetrievedChunk] = field(default_factory=list)

    @property
    def chunk_ids(self) -> list[int]:
        return [c.chunk_id for c in self.chunks]

    @property
    def context_tokens(self) -> int:
        """Cheat-sheet vectors the decoder will read (0 for chunks whose sheets are not loaded)."""
        return sum(int(c.cheat_sheet.shape[0]) for c in self.chunks if c.cheat_sheet is not None)

    @property
    def raw_context_tokens(self) -> int:
        """Tokens of the same chunks as plain text (what the cheat sheets replace)."""
        return sum(c.n_tokens for c in self.chunks)


@dataclass(frozen=True)
class DocumentOutcome:
    """What ingest did with one document; ``chunk_ids`` are the ids of the chunks it wrote, in ordinal
    order (empty for an unchanged document: list its chunks with ``CheatSheetStore.list_chunks``)."""

    doc_id: str
    status: Literal["added", "replaced", "unchanged"]
    n_chunks: int
    chunk_ids: tuple[int, ...] = ()


@dataclass
class IngestReport:
    """What one ingest call did."""

    group: str
    collection: str
    documents: list[DocumentOutcome] = field(default_factory=list)
    seconds: float = 0.0

    def count(self, status: str) -> int:
        return sum(1 for d in self.documents if d.status == status)

    @property
    def chunks_written(self) -> int:
        return sum(d.n_chunks for d in self.documents if d.status != "unchanged")

    def summary(self) -> str:
        rate = self.chunks_written / self.seconds if self.seconds > 0 else 0.0
        return (
            f"{self.count('added')} added, {self.count('replaced')} replaced, "
            f"{self.count('unchanged')} unchanged; {self.chunks_written} chunks in {self.seconds:.1f}s "
            f"({rate:.1f} chunks/s) into {self.collection}/{self.group}"
        )


@dataclass(frozen=True)
class RecompressOutcome:
    """What recompress did with one document: ``recompressed`` (same chunks, new cheat sheets),
    ``resplit`` (a stored chunk was longer than the new encoder's segment: the document's stored text was cut
    again into new chunks) or ``changed`` (replaced by a concurrent ingest meanwhile: left to that ingest)."""

    doc_id: str
    status: Literal["recompressed", "resplit", "changed"]
    n_chunks: int


@dataclass
class RecompressReport:
    """What one recompress call did, and the state of the group's adapters afterwards."""

    group: str
    collection: str
    encoder_fingerprint: str
    previous_fingerprints: dict[str, int] = field(default_factory=dict)  # fingerprint -> chunks, before
    documents: list[RecompressOutcome] = field(default_factory=list)
    skipped: int = 0  # documents that already had the new encoder's cheat sheets
    complete: bool = False  # every chunk of the group now has a cheat sheet of the new encoder
    active_adapter_id: int | None = None
    stale_adapter_ids: list[int] = field(default_factory=list)  # trained for another encoder
    current_adapter_ids: list[int] = field(default_factory=list)  # trained for this encoder, oldest first
    deactivated_adapter_id: int | None = None  # the stale adapter recompress took off (it stays stored)
    activated_adapter_id: int | None = None  # a stored adapter of the new encoder made active instead
    seconds: float = 0.0

    @property
    def chunks_encoded(self) -> int:
        return sum(d.n_chunks for d in self.documents if d.status != "changed")

    def count(self, status: str) -> int:
        return sum(1 for d in self.documents if d.status == status)

    def summary(self) -> str:
        rate = self.chunks_encoded / self.seconds if self.seconds > 0 else 0.0
        before = (
            ", ".join(f"{fp[:12]}: {n}" for fp, n in sorted(self.previous_fingerprints.items())) or "none"
        )
        return (
            f"{self.collection}/{self.group}: {len(self.documents) - self.count('changed')} documents "
            f"recompressed ({self.count('resplit')} re-split), {self.skipped} already current"
            + (f", {self.count('changed')} changed meanwhile" if self.count("changed") else "")
            + f"; {self.chunks_encoded} chunks in {self.seconds:.1f}s ({rate:.1f} chunks/s); encoder "
            f"{self.encoder_fingerprint[:12]} (before: {before})"
        )


@dataclass(frozen=True)
class StoreStatus:
    """Where the store lives and what it holds."""

    url: str
    embedded: bool
    schema: str
    version: int
    latest_version: int
    vector_schema: str | None
    embedder: str | None
    embedding_dim: int | None
    ann_index: str  # "hnsw" or "none" (exact search)
    counts: dict[str, int]
    bytes: dict[str, int]


@dataclass(frozen=True)
class StorageStats:
    """What one group's chunks cost on disk, per chunk (means over the chunks that have a cheat sheet).

    Sizes are ``pg_column_size`` (each value as stored, after TOAST compression) plus the fixed-width columns
    and tuple header of each row; page, index and free-space overhead are not included. ``chunks == 0``: no
    chunk of the group has a cheat sheet (every mean is then 0).
    """

    group: str
    collection: str
    chunks: int
    chunk_row_bytes: float  # text, retrieval key, tsvector, metadata, fixed columns
    cheat_sheet_row_bytes: float  # the sheet's bytes as stored, fixed columns
    cheat_sheet_payload_bytes: float  # the sheet's encoded bytes (``n_bytes``)
    text_bytes: float  # the chunk's text in UTF-8
    tokens_per_chunk: float

    @property
    def bytes_per_chunk(self) -> float:
        """Chunk row + cheat sheet row."""
        return self.chunk_row_bytes + self.cheat_sheet_row_bytes


@dataclass(frozen=True, eq=False)
class BulkDocument:
    """One document for :meth:`CheatSheetStore.bulk_load`: chunks made outside the store.

    ``texts`` (one per chunk, in order; the document's text is their concatenation), ``n_tokens`` (one per
    chunk), ``embeddings`` (``[n_chunks, dim]`` retrieval vectors from the store's embedder, or vectors of
    the same space), ``cheat_sheets`` (one ``[n, hidden]`` tensor per chunk, or None for chunks without
    sheets) and ``metadata`` (the document's; its chunks carry it too, as with ``ingest``).
    """

    doc_id: str
    texts: tuple[str, ...]
    n_tokens: tuple[int, ...]
    embeddings: np.ndarray  # [n_chunks, dim]
    cheat_sheets: tuple[torch.Tensor, ...] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BulkLoadReport:
    """What one :meth:`CheatSheetStore.bulk_load` call wrote; ``seconds`` excludes the index build, timed in
    ``index_build_seconds`` (None when no index was rebuilt)."""

    group: str
    collection: str
    documents: int
    chunks: int
    seconds: float
    index_build_seconds: float | None = None
