"""Typed metadata filters, compiled to SQLAlchemy expressions over a JSONB column.

A filter is data, never SQL: keys must match an allowlist pattern (dotted for nested objects) and are
passed as a bound path array; values are bound JSONB or text parameters. So a key like ``a') OR 1=1 --``
is refused and a value like ``x' OR '1'='1`` is just a string that matches nothing.

Semantics (``x`` is the metadata value at ``key``):

- ``==`` / ``!=``: JSON equality (``2020 == 2020.0``); ``!=`` also matches rows without the key.
- ``>`` ``>=`` ``<`` ``<=``: numbers compare with numbers, strings with strings; other types never match.
- ``in`` / ``nin``: ``x`` is (not) one of a list of scalars; ``nin`` also matches rows without the key.
- ``contains``: ``x`` is an array holding the value, or a string containing it (case-sensitive).
- ``text_match``: ``x`` is a string containing the value, case-insensitively.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Literal

from sqlalchemy import ColumnElement, and_, cast, func, literal, not_, or_
from sqlalchemy.dialects.postgresql import JSONB

from ..errors import InputError
from .names import validate_metadata_key

MAX_LIST_VALUES = 1000
MAX_FILTERS = 100
MAX_DEPTH = 8
MAX_STRING = 4096

Scalar = str | int | float | bool


class FilterOp(str, Enum):
    """Comparison operators of :class:`MetadataFilter`."""

    EQ = "=="
    NE = "!="
    GT = ">"
    GTE = ">="
    LT = "<"
    LTE = "<="
    IN = "in"
    NIN = "nin"
    CONTAINS = "contains"
    TEXT_MATCH = "text_match"


_OP_ALIASES = {
    "eq": FilterOp.EQ,
    "=": FilterOp.EQ,
    "ne": FilterOp.NE,
    "gt": FilterOp.GT,
    "gte": FilterOp.GTE,
    "lt": FilterOp.LT,
    "lte": FilterOp.LTE,
    "not_in": FilterOp.NIN,
}


def _parse_op(op: object) -> FilterOp:
    if isinstance(op, FilterOp):
        return op
    if isinstance(op, str):
        try:
            return FilterOp(op)
        except ValueError:
            if op.lower() in _OP_ALIASES:
                return _OP_ALIASES[op.lower()]
    raise InputError(f"unknown filter operator {op!r}; use one of {[o.value for o in FilterOp]}")


@dataclass(frozen=True)
class MetadataFilter:
    """``metadata[key] <op> value``; validated on construction."""

    key: str
    op: FilterOp | str
    value: Any

    def __post_init__(self) -> None:
        validate_metadata_key(self.key)
        object.__setattr__(self, "op", _parse_op(self.op))
        _check_value(self.op, self.value, self.key)  # type: ignore[arg-type]


@dataclass(frozen=True)
class FilterGroup:
    """Filters (or nested groups) joined by ``and`` / ``or``."""

    filters: Sequence[MetadataFilter | FilterGroup] = field(default_factory=tuple)
    condition: Literal["and", "or"] = "and"

    def __post_init__(self) -> None:
        if self.condition not in ("and", "or"):
            raise InputError(f"filter group condition must be 'and' or 'or', got {self.condition!r}")
        if isinstance(self.filters, (str, bytes, Mapping)) or not isinstance(self.filters, Sequence):
            raise InputError("FilterGroup.filters must be a list of MetadataFilter or FilterGroup")
        for f in self.filters:
            if not isinstance(f, (MetadataFilter, FilterGroup)):
                raise InputError(
                    f"filter entries must be MetadataFilter or FilterGroup, got {type(f).__name__}"
                )
        if not self.filters:
            raise InputError("a filter group needs at least one filter")
        object.__setattr__(self, "filters", tuple(self.filters))


Filter = MetadataFilter | FilterGroup


def _is_scalar(v: object) -> bool:
    if isinstance(v, float):
        return math.isfinite(v)
    return isinstance(v, (str, int, bool))


def _is_text(v: str) -> bool:
    """A string a filter may bind: bounded, no NUL, and encodable (no lone surrogates)."""
    if len(v) > MAX_STRING or "\x00" in v:
        return False
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_value(op: FilterOp, value: object, key: str) -> None:
    where = f"filter on {key!r} ({op.value})"
    if isinstance(value, str) and not _is_text(value):
        raise InputError(
            f"{where}: string values must be valid Unicode, at most {MAX_STRING} characters, without NUL"
        )
    if op in (FilterOp.IN, FilterOp.NIN):
        if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Sequence):
            raise InputError(f"{where}: value must be a list of strings or numbers")
        if not 1 <= len(value) <= MAX_LIST_VALUES:
            raise InputError(f"{where}: value must hold 1 to {MAX_LIST_VALUES} items")
        for v in value:
            if not _is_scalar(v) or (isinstance(v, str) and not _is_text(v)):
                raise InputError(f"{where}: list items must be strings, finite numbers or booleans")
        return
    if not _is_scalar(value):
        raise InputError(f"{where}: value must be a string, finite number or boolean, got {value!r:.60}")
    if op in (FilterOp.GT, FilterOp.GTE, FilterOp.LT, FilterOp.LTE) and isinstance(value, bool):
        raise InputError(f"{where}: ordering needs a number or a string, not a boolean")
    if op is FilterOp.TEXT_MATCH and (not isinstance(value, str) or not value):
        raise InputError(f"{where}: value must be a non-empty string")


def _jsonb(value: object) -> ColumnElement:
    return cast(literal(value, JSONB), JSONB)


def _compile_one(f: MetadataFilter, column: ColumnElement) -> ColumnElement[bool]:
    path = validate_metadata_key(f.key)
    x = column[path]  # JSONB  #> bound path array
    x_text = column[path].astext  # text  #>> bound path array
    kind = func.jsonb_typeof(x)
    op, v = f.op, f.value
    if op is FilterOp.EQ:
        return x == _jsonb(v)
    if op is FilterOp.NE:
        return x.is_distinct_from(_jsonb(v))
    if op in (FilterOp.GT, FilterOp.GTE, FilterOp.LT, FilterOp.LTE):
        # jsonb orders mixed types by type; guarding on jsonb_typeof keeps comparisons within one type.
        want = "string" if isinstance(v, str) else "number"
        cmp = {
            FilterOp.GT: x > _jsonb(v),
            FilterOp.GTE: x >= _jsonb(v),
            FilterOp.LT: x < _jsonb(v),
            FilterOp.LTE: x <= _jsonb(v),
        }[op]  # type: ignore[index]
        return and_(kind == want, cmp)
    if op is FilterOp.IN:
        return or_(*[x == _jsonb(item) for item in v])
    if op is FilterOp.NIN:
        return or_(x.is_(None), not_(or_(*[x == _jsonb(item) for item in v])))
    if op is FilterOp.CONTAINS:
        in_array = and_(kind == "array", x.op("@>")(_jsonb([v])))
        if isinstance(v, str):
            return or_(in_array, and_(kind == "string", x_text.contains(v, autoescape=True)))
        return in_array
    if op is FilterOp.TEXT_MATCH:
        return and_(kind == "string", x_text.icontains(v, autoescape=True))
    raise InputError(f"unsupported filter operator {op!r}")  # pragma: no cover - enum is exhaustive


def compile_filter(f: Filter | None, column: ColumnElement) -> ColumnElement[bool] | None:
    """The SQL condition for ``f`` over the JSONB ``column``; None when there is no filter."""
    if f is None:
        return None
    count = 0

    def walk(node: Filter, depth: int) -> ColumnElement[bool]:
        nonlocal count
        if depth > MAX_DEPTH:
            raise InputError(f"filters may nest at most {MAX_DEPTH} levels")
        if isinstance(node, MetadataFilter):
            count += 1
            if count > MAX_FILTERS:
                raise InputError(f"at most {MAX_FILTERS} filters per query")
            return _compile_one(node, column)
        if isinstance(node, FilterGroup):
            parts = [walk(child, depth + 1) for child in node.filters]
            return and_(*parts) if node.condition == "and" else or_(*parts)
        raise InputError(f"filters must be MetadataFilter or FilterGroup, got {type(node).__name__}")

    return walk(f, 0)


def parse_filter(data: object) -> Filter:
    """Build a filter from JSON-like data (CLI, HTTP, framework adapters).

    Accepts ``{"key": k, "op": op, "value": v}``, ``{"and": [...]}``, ``{"or": [...]}`` and
    ``{"condition": "and"|"or", "filters": [...]}``; a bare list means ``and``.
    """
    if isinstance(data, (MetadataFilter, FilterGroup)):
        return data
    if isinstance(data, list):
        return FilterGroup([parse_filter(d) for d in data], "and")
    if not isinstance(data, Mapping):
        raise InputError(f"a filter must be an object or a list, got {type(data).__name__}")
    keys = set(data)
    if keys == {"and"} or keys == {"or"}:
        (cond,) = keys
        children = data[cond]
        if not isinstance(children, list):
            raise InputError(f"'{cond}' must hold a list of filters")
        return FilterGroup([parse_filter(d) for d in children], cond)
    if keys == {"condition", "filters"}:
        children = data["filters"]
        if not isinstance(children, list):
            raise InputError("'filters' must be a list")
        return FilterGroup([parse_filter(d) for d in children], data["condition"])
    if keys == {"key", "op", "value"} or keys == {"key", "operator", "value"}:
        return MetadataFilter(data["key"], data.get("op", data.get("operator")), data["value"])
    raise InputError(
        "malformed filter: expected {'key','op','value'}, {'and': [...]}, {'or': [...]} or "
        f"{{'condition','filters'}}, got keys {sorted(map(str, keys))}"
    )
