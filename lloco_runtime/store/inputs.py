"""Reading documents to ingest from ``.txt``, ``.md`` and ``.jsonl`` files and folders.

Everything is read and validated before anything is written, so a bad file (empty, binary, not UTF-8,
malformed JSONL) fails the whole call with an error naming it, and leaves no rows behind.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..textcheck import check_text, check_unicode, iter_jsonl, max_document_bytes, read_text_file

__all__ = [
    "DocumentInput",
    "check_unicode",
    "check_unique",
    "iter_jsonl",
    "read_file",
    "read_jsonl",
    "read_paths",
]
from .names import check_json_value, validate_doc_id

TEXT_SUFFIXES = frozenset({".txt", ".md"})
SUFFIXES = TEXT_SUFFIXES | {".jsonl"}


@dataclass(frozen=True)
class DocumentInput:
    """One document to ingest: an external id, its text and JSON metadata."""

    doc_id: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)
    source: str = "document"  # where it came from, for error messages

    def __post_init__(self) -> None:
        object.__setattr__(self, "doc_id", validate_doc_id(self.doc_id, self.source))
        check_text(self.text, self.source)
        if not isinstance(self.metadata, Mapping):
            raise InputError(f"{self.source}: metadata must be an object, got {type(self.metadata).__name__}")
        check_json_value(dict(self.metadata), self.source)

    @property
    def sha256(self) -> str:
        """Content hash: text and metadata (so a metadata-only change is applied too)."""
        h = hashlib.sha256(self.text.encode("utf-8"))
        h.update(b"\x00")
        h.update(json.dumps(self.metadata, sort_keys=True, ensure_ascii=False).encode("utf-8"))
        return h.hexdigest()


def read_jsonl(path: Path) -> list[DocumentInput]:
    """Documents from JSON Lines: ``{"doc_id"|"id": ..., "text": ..., ...metadata}`` per line."""
    docs = []
    for _, where, obj in iter_jsonl(path):
        if not isinstance(obj, dict):
            raise InputError(f"{where}: each line must be a JSON object")
        key = "doc_id" if "doc_id" in obj else "id" if "id" in obj else None
        if key is None:
            raise InputError(f"{where}: missing 'doc_id' (or 'id')")
        if "text" not in obj:
            raise InputError(f"{where}: missing 'text'")
        meta = {k: v for k, v in obj.items() if k not in (key, "text")}
        docs.append(DocumentInput(doc_id=obj[key], text=obj["text"], metadata=meta, source=where))
    if not docs:
        raise InputError(f"{path}: no documents (the file is empty)")
    return docs


def read_file(path: Path) -> list[DocumentInput]:
    """The documents in one file; ``.txt``/``.md`` give one document whose id is the file stem."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return read_jsonl(path)
    if suffix in TEXT_SUFFIXES:
        text = read_text_file(path, limit=max_document_bytes())
        return [DocumentInput(doc_id=path.stem, text=text, metadata={"source": path.name}, source=str(path))]
    raise InputError(f"{path}: unsupported file type {suffix or '(none)'!r}; use .txt, .md or .jsonl")


def read_paths(paths: Iterable[str | Path]) -> list[DocumentInput]:
    """All documents under ``paths`` (files, or folders searched recursively for supported files).

    Raises InputError for a missing path, an empty folder, an unreadable file, or a doc id that occurs
    twice in one call.
    """
    docs: list[DocumentInput] = []
    for raw in paths:
        p = Path(raw).expanduser()
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in SUFFIXES)
            if not files:
                raise InputError(f"{p}: folder has no .txt, .md or .jsonl files")
            for f in files:
                docs.extend(read_file(f))
        elif p.is_file():
            docs.extend(read_file(p))
        else:
            raise InputError(f"{p}: no such file or folder")
    if not docs:
        raise InputError("no input paths given")
    check_unique(docs)
    return docs


def check_unique(docs: Iterable[DocumentInput]) -> None:
    """Refuse two documents with one doc id in a single ingest (one would silently replace the other)."""
    seen: dict[str, str] = {}
    for d in docs:
        if d.doc_id in seen:
            raise InputError(f"duplicate doc_id {d.doc_id!r} in {seen[d.doc_id]} and {d.source}")
        seen[d.doc_id] = d.source
