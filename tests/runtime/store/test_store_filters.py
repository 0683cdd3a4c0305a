"""Metadata filters: validation, JSON parsing, and their semantics against the real database."""

from __future__ import annotations

import pytest

from lloco_runtime.errors import InputError
from lloco_runtime.store import DocumentInput, FilterGroup, FilterOp, MetadataFilter, parse_filter
from lloco_runtime.store.filters import compile_filter

META = {
    "a": {
        "year": 2019,
        "lang": "en",
        "tags": ["law", "eu"],
        "title": "Data Protection Act",
        "score": 0.5,
        "nested": {"level": 1},
        "draft": False,
    },
    "b": {
        "year": 2021,
        "lang": "de",
        "tags": ["tax"],
        "title": "Tax code 100%_off",
        "score": 2,
        "nested": {"level": 2},
        "draft": True,
    },
    "c": {"year": "2021", "lang": "en", "tags": [], "title": "Misc notes", "nested": {"level": 3}},
    "d": {"lang": "fr"},
}


@pytest.fixture(scope="module")
def fstore(pg_url, embedder, encoder):
    from store_helpers import new_schema, open_store

    s = open_store(pg_url, new_schema(), embedder)
    s.ingest(
        [DocumentInput(k, f"Document {k} about regulations.", m) for k, m in META.items()],
        group="f",
        encoder=encoder,
        compress=False,
    )
    yield s
    s.drop_schema()
    s.close()


def hits(store, flt) -> list[str]:
    res = store.retrieve("regulations", group="f", top_k=50, filters=flt, load_cheat_sheets=False)
    return sorted({c.doc_id for c in res.chunks})


@pytest.mark.parametrize(
    "flt,expected",
    [
        (MetadataFilter("lang", "==", "en"), ["a", "c"]),
        (MetadataFilter("year", "==", 2021), ["b"]),  # JSON typed: the string "2021" is not the number 2021
        (MetadataFilter("year", "==", 2021.0), ["b"]),
        (MetadataFilter("year", "!=", 2021), ["a", "c", "d"]),  # != includes rows without the key
        (MetadataFilter("year", ">", 2019), ["b"]),
        (MetadataFilter("year", ">=", 2019), ["a", "b"]),
        (MetadataFilter("year", "<", 2021), ["a"]),
        (MetadataFilter("year", "<=", 2021), ["a", "b"]),
        (MetadataFilter("title", ">", "N"), ["b"]),  # strings compare with strings only
        (MetadataFilter("score", ">", 1), ["b"]),
        (MetadataFilter("draft", "==", True), ["b"]),
        (MetadataFilter("lang", "in", ["de", "fr"]), ["b", "d"]),
        (MetadataFilter("lang", "nin", ["de", "fr"]), ["a", "c"]),
        (MetadataFilter("year", "nin", [2019]), ["b", "c", "d"]),
        (MetadataFilter("tags", "contains", "eu"), ["a"]),
        (MetadataFilter("title", "contains", "Act"), ["a"]),
        (MetadataFilter("title", "contains", "act"), []),  # contains is case-sensitive
        (MetadataFilter("title", "text_match", "protection"), ["a"]),
        (MetadataFilter("title", "text_match", "100%_"), ["b"]),  # LIKE wildcards are escaped
        (MetadataFilter("title", "text_match", "%"), ["b"]),
        (MetadataFilter("title", "text_match", "_"), ["b"]),
        (MetadataFilter("nested.level", ">=", 2), ["b", "c"]),
        (FilterGroup([MetadataFilter("lang", "==", "en"), MetadataFilter("year", "==", 2019)], "and"), ["a"]),
        (
            FilterGroup([MetadataFilter("lang", "==", "fr"), MetadataFilter("year", "==", 2019)], "or"),
            ["a", "d"],
        ),
        (
            FilterGroup(
                [
                    MetadataFilter("lang", "==", "en"),
                    FilterGroup(
                        [MetadataFilter("year", "==", "2021"), MetadataFilter("draft", "==", False)], "or"
                    ),
                ],
                "and",
            ),
            ["a", "c"],
        ),
        (
            {
                "or": [
                    {"key": "lang", "op": "==", "value": "de"},
                    {
                        "and": [
                            {"key": "lang", "op": "==", "value": "en"},
                            {"key": "nested.level", "op": ">", "value": 2},
                        ]
                    },
                ]
            },
            ["b", "c"],
        ),
        (
            [{"key": "lang", "op": "eq", "value": "en"}, {"key": "tags", "op": "contains", "value": "law"}],
            ["a"],
        ),
    ],
)
def test_filter_semantics(fstore, flt, expected):
    assert hits(fstore, flt) == expected


@pytest.mark.parametrize(
    "bad",
    [
        {"key": "a') OR 1=1 --", "op": "==", "value": 1},
        {"key": "x'; DROP TABLE chunks; --", "op": "==", "value": 1},
        {"key": "", "op": "==", "value": 1},
        {"key": "a..b", "op": "==", "value": 1},
        {"key": "a" * 100, "op": "==", "value": 1},
        {"key": "meta->>'x'", "op": "==", "value": 1},
        {"key": "lang", "op": "LIKE", "value": "x"},
        {"key": "lang", "op": "==", "value": ["en"]},
        {"key": "lang", "op": "==", "value": {"$ne": 1}},
        {"key": "lang", "op": "==", "value": None},
        {"key": "lang", "op": "in", "value": "en"},
        {"key": "lang", "op": "in", "value": []},
        {"key": "lang", "op": "in", "value": [{"a": 1}]},
        {"key": "year", "op": ">", "value": True},
        {"key": "year", "op": ">", "value": float("nan")},
        {"key": "title", "op": "text_match", "value": ""},
        {"key": "lang", "op": "==", "value": "a\x00b"},
        {"and": []},
        {"and": "x"},
        {"not": [{"key": "lang", "op": "==", "value": "en"}]},
        {"condition": "xor", "filters": [{"key": "lang", "op": "==", "value": "en"}]},
        {"key": "lang", "op": "==", "value": "en", "extra": 1},
        "lang = 'en'",
        42,
    ],
)
def test_malformed_filters_raise_input_error(bad):
    with pytest.raises(InputError):
        parse_filter(bad)


def test_malformed_filter_refused_before_sql(fstore):
    with pytest.raises(InputError, match="invalid metadata key"):
        hits(fstore, {"key": "a') OR 1=1 --", "op": "==", "value": 1})
    with pytest.raises(InputError):
        hits(fstore, FilterGroup([MetadataFilter("lang", "==", "en")] * 101))


@pytest.mark.parametrize(
    "value", ["' OR '1'='1", "en' OR 1=1 --", '"; DROP TABLE x; --', "%' OR '%'='", "\\' OR 1=1"]
)
def test_hostile_values_are_bound_not_executed(fstore, value):
    for op in ("==", "!=", "contains", "text_match", ">"):
        flt = MetadataFilter("lang", op, value)
        got = hits(fstore, flt)
        if op in ("!=",):
            assert got == ["a", "b", "c", "d"]
        elif op == ">":
            assert set(got) <= {"a", "b", "c", "d"}
        else:
            assert got == []
    assert hits(fstore, MetadataFilter("lang", "in", [value, "fr"])) == ["d"]


def test_compiled_sql_has_only_bound_values():
    flt = FilterGroup(
        [MetadataFilter("a.b", "==", "x' OR 1=1"), MetadataFilter("t", "text_match", "y")], "or"
    )
    from sqlalchemy import Column, MetaData, Table
    from sqlalchemy.dialects import postgresql
    from sqlalchemy.dialects.postgresql import JSONB

    col = Table("t", MetaData(), Column("metadata", JSONB)).c.metadata
    compiled = compile_filter(flt, col).compile(dialect=postgresql.dialect())
    sql = str(compiled)
    assert "x' OR 1=1" not in sql and "a.b" not in sql and "'y'" not in sql
    assert "x' OR 1=1" in compiled.params.values()
    assert FilterOp("==") is FilterOp.EQ
