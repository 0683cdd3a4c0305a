"""Postgres + pgvector storage for cheat sheets, chunks, retrieval keys and adapters.

Start with :class:`CheatSheetStore`; filters are :class:`MetadataFilter` / :class:`FilterGroup`.
"""

from .filters import FilterGroup, FilterOp, MetadataFilter, parse_filter
from .inputs import DocumentInput, read_paths
from .records import (
    AdapterInfo,
    BulkDocument,
    BulkLoadReport,
    ChunkInfo,
    CollectionInfo,
    DocumentInfo,
    DocumentOutcome,
    GroupInfo,
    IngestReport,
    RecompressOutcome,
    RecompressReport,
    RetrievalResult,
    RetrievedChunk,
    StorageStats,
    StoreStatus,
)
from .store import CheatSheetStore

__all__ = [
    "AdapterInfo",
    "BulkDocument",
    "BulkLoadReport",
    "CheatSheetStore",
    "ChunkInfo",
    "CollectionInfo",
    "DocumentInfo",
    "DocumentInput",
    "DocumentOutcome",
    "FilterGroup",
    "FilterOp",
    "GroupInfo",
    "IngestReport",
    "MetadataFilter",
    "RecompressOutcome",
    "RecompressReport",
    "RetrievalResult",
    "RetrievedChunk",
    "StorageStats",
    "StoreStatus",
    "parse_filter",
    "read_paths",
]
