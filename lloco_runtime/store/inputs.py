"""Reading documents to ingest from ``.txt``, ``.md`` and ``.jsonl`` files and folders.

Everything is read and validated before anything is written, so a bad file (empty, binary, not UTF-8,
malformed JSONL) fails the whole call with an error naming it, and leaves no rows behind.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError
from .names import check_json_value, validate_doc_id

TEXT_SUFFIXES = frozenset({".txt", ".md"})
SUFFIXES = TEXT_SUFFIXES | {".jsonl"}
DEFAULT_MAX_DOCUMENT_MB = 4.0
MAX_DOCUMENT_ENV = "LLOCO_MAX_DOCUMENT_MB"


def max_document_bytes() -> int:
    """Largest document lloco accepts, in UTF-8 bytes: ``LLOCO_MAX_DOCUMENT_MB`` (default 4 MiB).

    Tokenising holds about 130 bytes of memory per character (a 4 MiB text peaks near 0.5 GB), so the
    limit is what keeps ingest memory bounded whatever a user feeds in. Larger inputs are refused before
    they are read or tokenised; split them into several documents.
    """
    raw = os.environ.get(MAX_DOCUMENT_ENV, "").strip()
    if not raw:
        return int(DEFAULT_MAX_DOCUMENT_MB * 1024 * 1024)
    try:
        mb = float(raw)
    except ValueError:
        mb = -1.0
    if not mb > 0:
        raise InputError(f"{MAX_DOCUMENT_ENV}={raw!r} is not a positive number of megabytes")
    return int(mb * 1024 * 1024)


def _too_large(source: str, n_bytes: int, limit: int) -> InputError:
    return InputError(
        f"{source}: {n_bytes / 2**20:.1f} MiB is over the limit of {limit / 2**20:.1f} MiB per "
        f"document; split it into smaller documents, or raise {MAX_DOCUMENT_ENV}"
    )


def check_size(text: str, source: str) -> None:
    """Refuse a text over :func:`max_document_bytes` (UTF-8), without encoding a huge string twice."""
    limit = max_document_bytes()
    if len(text) > limit:  # at least one byte per character
        raise _too_large(source, len(text), limit)
    if 4 * len(text) > limit:  # could be over: count exactly
        n = len(text.encode("utf-8", "surrogatepass"))
        if n > limit:
            raise _too_large(source, n, limit)


def check_unicode(value: str, source: str, what: str = "text") -> None:
    """Refuse lone surrogates (e.g. from a JSON ``"\\ud800"`` escape): not encodable as UTF-8, so Postgres,
    tokenizers and file writers would all fail on them later, far from the input."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InputError(
            f"{source}: {what} holds an unpaired surrogate (\\u{ord(value[exc.start]):04x}) at "
            f"position {exc.start}; it is not valid Unicode text, fix the source data"
        ) from None


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


def check_text(text: object, source: str) -> str:
    """Refuse non-strings, empty/whitespace-only text and text with NUL characters (binary)."""
    if not isinstance(text, str):
        raise InputError(f"{source}: text must be a string, got {type(text).__name__}")
    if not text.strip():
        raise InputError(f"{source}: text is empty or whitespace only; nothing to ingest")
    if "\x00" in text:
        raise InputError(f"{source}: contains NUL bytes; it looks binary, not text")
    check_size(text, source)
    check_unicode(text, source)
    return text


def _decode(path: Path, *, limit: int | None = None) -> str:
    if limit is not None:
        size = path.stat().st_size
        if size > limit:  # refused from its size alone: never read into memory
            raise _too_large(str(path), size, limit)
    data = path.read_bytes()
    if b"\x00" in data:
        raise InputError(f"{path}: looks binary (NUL bytes); lloco ingests UTF-8 .txt, .md and .jsonl")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(
            f"{path}: is not valid UTF-8 (byte {exc.start}); convert it to UTF-8 first"
        ) from None


def iter_jsonl(path: Path) -> Iterator[tuple[int, str, Any]]:
    """``(line number, "path:line", parsed value)`` for each non-blank line of a UTF-8 JSON Lines file.

    The one JSONL reader of the project (documents, evaluation sets, training corpora): a malformed line is
    an :class:`InputError` naming the file and line.
    """
    for lineno, line in enumerate(_decode(path).splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{where}: invalid JSON ({exc.msg})") from None
        yield lineno, where, obj


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
        text = _decode(path, limit=max_document_bytes())
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
