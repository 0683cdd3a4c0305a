"""Postgres + pgvector storage for cheat sheets, chunks, retrieval keys and adapters.

Start with :class:`CheatSheetStore`; filters are :class:`MetadataFilter` / :class:`FilterGroup` (either is a
:data:`Filter`); how to retrieve is :class:`RetrievalOptions` (:class:`RetrievalMode`, one
:data:`DEFAULT_MODE`). This package's ``__all__`` is public API: the integrations import nothing deeper.
"""

from ..sheets import ChunkSheet
from .catalog import DEFAULT_COLLECTION
from .filters import Filter, FilterGroup, FilterOp, MetadataFilter, parse_filter
from .inputs import DocumentInput, read_paths
from .names import validate_name
from .options import DEFAULT_MODE, DEFAULT_TOP_K, RetrievalMode, RetrievalOptions
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
from .server import sqlalchemy_url, start_embedded, stop_embedded
from .store import CheatSheetStore

__all__ = [
    "DEFAULT_COLLECTION",
    "DEFAULT_MODE",
    "DEFAULT_TOP_K",
    "AdapterInfo",
    "BulkDocument",
    "BulkLoadReport",
    "CheatSheetStore",
    "ChunkInfo",
    "ChunkSheet",
    "CollectionInfo",
    "DocumentInfo",
    "DocumentInput",
    "DocumentOutcome",
    "Filter",
    "FilterGroup",
    "FilterOp",
    "GroupInfo",
    "IngestReport",
    "MetadataFilter",
    "RecompressOutcome",
    "RecompressReport",
    "RetrievalMode",
    "RetrievalOptions",
    "RetrievalResult",
    "RetrievedChunk",
    "StorageStats",
    "StoreStatus",
    "parse_filter",
    "read_paths",
    "sqlalchemy_url",
    "start_embedded",
    "stop_embedded",
    "validate_name",
]
