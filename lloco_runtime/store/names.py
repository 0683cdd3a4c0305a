"""Allowlist validation for every name that reaches the database.

Values always travel as bound parameters; these checks are the second line of defence and give users a
clear error instead of a surprising row. Identifiers (the schema) appear in DDL, so they are held to a
strict pattern; object names (collections, groups) and metadata keys are held to a readable one.
"""

from __future__ import annotations

import math
import re
from typing import Any

from ..errors import ConfigError, InputError

SCHEMA_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
METADATA_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]{0,63}(\.[A-Za-z_][A-Za-z0-9_\-]{0,63}){0,7}$")
RESERVED_SCHEMAS = frozenset({"public", "information_schema"})
MAX_DOC_ID = 512


def validate_schema(name: str) -> str:
    """A Postgres schema name lloco may own: lowercase ``[a-z_][a-z0-9_]*``, not ``pg_*`` or ``public``."""
    if not isinstance(name, str) or not SCHEMA_RE.match(name):
        raise ConfigError(
            f"invalid schema name {name!r}: use 1-63 lowercase letters, digits and underscores, "
            "starting with a letter or underscore (set LLOCO_SCHEMA or pass schema=...)"
        )
    if name.startswith("pg_") or name in RESERVED_SCHEMAS:
        raise ConfigError(f"schema name {name!r} is reserved; lloco needs a schema of its own, e.g. 'lloco'")
    return name


def validate_name(name: str, what: str) -> str:
    """A collection or group name: letters, digits, ``_ . -``, 1-128 characters, starting alphanumeric."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise InputError(
            f"invalid {what} name {name!r}: use 1-128 letters, digits, '_', '.', '-', "
            "starting with a letter or digit"
        )
    return name


def validate_doc_id(doc_id: object, source: str = "document") -> str:
    """An external document id: a non-empty string (ints are accepted and stringified), no control chars."""
    if isinstance(doc_id, bool) or not isinstance(doc_id, (str, int)):
        raise InputError(f"{source}: doc_id must be a string, got {type(doc_id).__name__}")
    value = str(doc_id)
    if not value.strip() or len(value) > MAX_DOC_ID:
        raise InputError(f"{source}: doc_id must be 1-{MAX_DOC_ID} characters, got {value[:40]!r}")
    if any(ord(ch) < 32 for ch in value):
        raise InputError(f"{source}: doc_id {value[:40]!r} contains control characters")
    if not _is_utf8(value):
        raise InputError(
            f"{source}: doc_id {value[:40]!r} holds an unpaired surrogate; it is not valid Unicode"
        )
    return value


def _is_utf8(value: str) -> bool:
    """Whether ``value`` encodes to UTF-8 (no lone surrogates, which Postgres cannot store)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def validate_metadata_key(key: object) -> tuple[str, ...]:
    """A metadata filter key, possibly dotted for nested objects (``a.b``); returns its path parts."""
    if not isinstance(key, str) or not METADATA_KEY_RE.match(key):
        raise InputError(
            f"invalid metadata key {key!r}: use letters, digits, '_' and '-', starting with a letter or "
            "'_', with '.' only between nested keys"
        )
    return tuple(key.split("."))


def check_json_value(value: Any, where: str, depth: int = 0) -> None:
    """Reject what Postgres JSONB cannot store: NUL characters, NaN/inf, non-JSON types, deep nesting."""
    if depth > 32:
        raise InputError(f"{where}: metadata nested too deeply")
    if value is None or isinstance(value, (bool, int)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InputError(f"{where}: metadata numbers must be finite, got {value}")
        return
    if isinstance(value, str):
        if "\x00" in value:
            raise InputError(f"{where}: metadata strings cannot contain NUL characters")
        if not _is_utf8(value):
            raise InputError(
                f"{where}: metadata string {value[:40]!r} holds an unpaired surrogate; it is not "
                "valid Unicode"
            )
        return
    if isinstance(value, (list, tuple)):
        for item in value:
            check_json_value(item, where, depth + 1)
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str) or "\x00" in k or not _is_utf8(k):
                raise InputError(
                    f"{where}: metadata keys must be strings without NUL characters or unpaired surrogates"
                )
            check_json_value(v, where, depth + 1)
        return
    raise InputError(f"{where}: metadata value of type {type(value).__name__} is not JSON")
