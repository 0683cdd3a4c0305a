"""LlamaIndex ``MetadataFilters`` -> the store's typed filters (never SQL).

Operator mapping (LlamaIndex -> store): ``== != > >= < <= in nin contains`` map one to one;
``text_match`` (case-sensitive substring) -> ``contains``; ``text_match_insensitive`` -> ``text_match``;
``any`` / ``all`` (array holds any / all values) -> ``or`` / ``and`` of ``contains``. ``is_empty`` and
the ``not`` condition have no store equivalent and raise :class:`~lloco_runtime.InputError`.
"""

from __future__ import annotations

from llama_index.core.vector_stores.types import FilterCondition, FilterOperator, MetadataFilters
from llama_index.core.vector_stores.types import MetadataFilter as LIFilter

from lloco_runtime import InputError
from lloco_runtime.store import FilterGroup, MetadataFilter

_DIRECT = {
    FilterOperator.EQ: "==",
    FilterOperator.NE: "!=",
    FilterOperator.GT: ">",
    FilterOperator.GTE: ">=",
    FilterOperator.LT: "<",
    FilterOperator.LTE: "<=",
    FilterOperator.IN: "in",
    FilterOperator.NIN: "nin",
    FilterOperator.CONTAINS: "contains",
    FilterOperator.TEXT_MATCH: "contains",
}


def _as_list(value: object, f: LIFilter) -> list:
    if isinstance(value, (list, tuple)) and value:
        return list(value)
    raise InputError(f"filter {f.key!r} {f.operator.value}: value must be a non-empty list")


def _one(f: LIFilter) -> MetadataFilter | FilterGroup:
    op = FilterOperator(f.operator)
    if op in _DIRECT:
        return MetadataFilter(f.key, _DIRECT[op], f.value)
    if op is FilterOperator.TEXT_MATCH_INSENSITIVE:
        return MetadataFilter(f.key, "text_match", f.value)
    if op in (FilterOperator.ANY, FilterOperator.ALL):
        parts = [MetadataFilter(f.key, "contains", v) for v in _as_list(f.value, f)]
        return FilterGroup(parts, "or" if op is FilterOperator.ANY else "and")
    raise InputError(
        f"filter operator {op.value!r} on {f.key!r} is not supported by the lloco store; use "
        "==, !=, <, <=, >, >=, in, nin, contains, any, all, text_match or text_match_insensitive"
    )


def to_store_filter(filters: MetadataFilters | None) -> MetadataFilter | FilterGroup | None:
    """Translate (possibly nested) LlamaIndex filters; None or an empty filter list gives None."""
    if filters is None:
        return None
    if not isinstance(filters, MetadataFilters):
        raise InputError(f"filters must be llama_index MetadataFilters, got {type(filters).__name__}")
    cond = FilterCondition(filters.condition or FilterCondition.AND)
    if cond not in (FilterCondition.AND, FilterCondition.OR):
        raise InputError(
            f"filter condition {cond.value!r} is not supported by the lloco store; use 'and' "
            "or 'or' (express negation with != or nin)"
        )
    parts = []
    for f in filters.filters:
        if isinstance(f, MetadataFilters):
            sub = to_store_filter(f)
            if sub is not None:
                parts.append(sub)
        else:
            parts.append(_one(f))
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else FilterGroup(parts, cond.value)
