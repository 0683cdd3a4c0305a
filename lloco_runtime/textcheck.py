"""Text and file checks: the one place that decides what lloco accepts as text.

Below both the encoder and the store (it imports only :mod:`lloco_runtime.errors`), so ``lloco ingest``,
``ContextEncoder.split``/``compress``, the framework node parsers and the training/evaluation readers all
refuse the same inputs with the same messages: non-strings, empty or whitespace-only text, binary content
(NUL bytes), bytes that are not UTF-8, lone surrogates, and documents over the size limit.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import InputError

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


def too_large(source: str, n_bytes: int, limit: int) -> InputError:
    """The error for a document over the size limit (with both fixes)."""
    return InputError(
        f"{source}: {n_bytes / 2**20:.1f} MiB is over the limit of {limit / 2**20:.1f} MiB per "
        f"document; split it into smaller documents, or raise {MAX_DOCUMENT_ENV}"
    )


def check_size(text: str, source: str) -> None:
    """Refuse a text over :func:`max_document_bytes` (UTF-8), without encoding a huge string twice."""
    limit = max_document_bytes()
    if len(text) > limit:  # at least one byte per character
        raise too_large(source, len(text), limit)
    if 4 * len(text) > limit:  # could be over: count exactly
        n = len(text.encode("utf-8", "surrogatepass"))
        if n > limit:
            raise too_large(source, n, limit)


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


def check_text(text: object, source: str, *, allow_bytes: bool = False) -> str:
    """The text itself, or an :class:`InputError` naming ``source``: refuses non-strings, empty or
    whitespace-only text, NUL characters (binary content), lone surrogates and texts over the size limit.

    ``allow_bytes=True`` also takes UTF-8 bytes (decoded here; other bytes are refused).
    """
    if allow_bytes and isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InputError(
                f"{source}: is not valid UTF-8 (byte {exc.start}); convert it to UTF-8 first"
            ) from None
    if not isinstance(text, str):
        raise InputError(f"{source}: text must be a string, got {type(text).__name__}")
    if not text.strip():
        raise InputError(f"{source}: text is empty or whitespace only; there is nothing to compress")
    if "\x00" in text:
        raise InputError(f"{source}: contains NUL bytes; it looks binary, not text")
    check_size(text, source)
    check_unicode(text, source)
    return text


def read_text_file(path: Path, *, limit: int | None = None) -> str:
    """A UTF-8 file's text (a leading BOM dropped); refuses binary files (NUL bytes), other encodings, and
    files over ``limit`` bytes from their size alone, before reading them."""
    if limit is not None:
        size = path.stat().st_size
        if size > limit:  # refused from its size alone: never read into memory
            raise too_large(str(path), size, limit)
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
    for lineno, line in enumerate(read_text_file(Path(path)).splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{where}: invalid JSON ({exc.msg})") from None
        yield lineno, where, obj
