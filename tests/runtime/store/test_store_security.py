"""Hostile names: refused by validation or bound as values; nothing outside lloco's schema is touched."""

from __future__ import annotations

import pytest
from sqlalchemy import event, inspect

from lloco_runtime.errors import ConfigError, InputError, NotFoundError
from lloco_runtime.store import CheatSheetStore, DocumentInput

HOSTILE_NAMES = [
    "g'; DROP TABLE chunks; --",
    "a) OR 1=1 --",
    "../etc",
    "x y",
    "",
    "-lead",
    "é",
    "a" * 200,
    "g\x00",
    'g"',
    "g;",
]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_group_and_collection_names_are_refused(shared_filled, name):
    with pytest.raises(InputError):
        shared_filled.retrieve("q", group=name)
    with pytest.raises(InputError):
        shared_filled.retrieve("q", group="g", collection=name)
    with pytest.raises(InputError):
        shared_filled.create_group(name)
    assert shared_filled.retrieve("galaxy", group="g").chunks  # still intact


@pytest.mark.parametrize(
    "schema",
    [
        "lloco; DROP SCHEMA public",
        "Lloco",
        "public",
        "pg_catalog",
        "pg_x",
        "information_schema",
        "1abc",
        "a-b",
        "a" * 64,
        "",
        'x"y',
    ],
)
def test_hostile_schema_names_are_refused(pg_url, embedder, schema):
    with pytest.raises(ConfigError):
        CheatSheetStore(pg_url, schema=schema, embedder=embedder)


def test_hostile_doc_ids_and_metadata_are_stored_verbatim(store, encoder):
    evil = "x'); DELETE FROM documents; --"
    meta = {"a') OR 1=1 --": "v", "k": "'; DROP TABLE chunks; --"}
    store.ingest([DocumentInput(evil, "Some harmless text about gardens.", meta)], group="g", encoder=encoder)
    doc = store.get_document(evil, group="g")
    assert doc.doc_id == evil and doc.metadata == meta
    store.delete_document(evil, group="g")
    with pytest.raises(NotFoundError):
        store.get_document(evil, group="g")
    names = set(inspect(store.engine).get_table_names(schema=store.schema))
    assert {"chunks", "documents", "cheat_sheets", "groups", "collections", "adapters"} <= names


def test_hostile_query_text_is_bound(shared_filled):
    before = {d.doc_id for d in shared_filled.list_documents("g")}
    n_chunks = len(shared_filled.list_chunks("g"))
    statements: list[tuple[str, object]] = []

    def record(conn, cursor, statement, parameters, context, executemany):
        statements.append((statement, parameters))

    event.listen(shared_filled.engine, "before_cursor_execute", record)
    try:
        for q in ["'; DROP TABLE chunks; --", "a & | ! <-> :*", "\\", "' OR 1=1 --", '"quoted" -minus or']:
            for mode in ("dense", "fulltext", "hybrid"):
                statements.clear()
                res = shared_filled.retrieve(q, group="g", mode=mode)
                # the query reached the database as a bound value, never inside the SQL text
                assert statements, "retrieve ran no SQL"
                assert not [st for st, _ in statements if q in st], f"{q!r} was spliced into SQL ({mode})"
                if mode != "dense":
                    assert any(q in repr(p) for _, p in statements), f"{q!r} was not bound ({mode})"
                _check_results(res, before, mode)
    finally:
        event.remove(shared_filled.engine, "before_cursor_execute", record)
    # nothing was dropped or altered
    assert {d.doc_id for d in shared_filled.list_documents("g")} == before
    assert len(shared_filled.list_chunks("g")) == n_chunks
    assert shared_filled.retrieve("galaxy", group="g").chunks


def _check_results(res, before, mode):
    """Bound as text: dense always ranks the group's chunks; "OR 1=1" cannot widen a search past top_k."""
    assert len(res.chunks) <= 4 and all(c.doc_id in before for c in res.chunks)
    if mode == "dense":
        assert res.chunks
