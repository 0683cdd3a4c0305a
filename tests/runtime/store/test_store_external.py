"""A second, separate Postgres by LLOCO_DATABASE_URL: lloco creates only its own schema and works the same."""

from __future__ import annotations

from sqlalchemy import DDL, Column, Integer, MetaData, Table, Text, create_engine, insert, inspect, select
from sqlalchemy.engine import make_url

from lloco_runtime.store import CheatSheetStore
from lloco_runtime.store.server import sqlalchemy_url


def _snapshot(engine):
    insp = inspect(engine)
    return {s: sorted(insp.get_table_names(schema=s)) for s in insp.get_schema_names()}


def _app_table(engine) -> Table:
    md = MetaData(schema="public")
    users = Table("app_users", md, Column("id", Integer, primary_key=True), Column("name", Text))
    md.create_all(engine)
    with engine.begin() as conn:
        conn.execute(insert(users), [{"id": 1, "name": "ada"}, {"id": 2, "name": "grace"}])
    return users


def _exercise(store: CheatSheetStore, docs, encoder) -> None:
    store.ingest(docs, group="g", encoder=encoder)
    for mode in ("dense", "fulltext", "hybrid"):
        res = store.retrieve("goalkeeper penalty", group="g", mode=mode, top_k=2)
        assert res.chunks[0].doc_id == "football" and res.chunks[0].cheat_sheet is not None


def test_external_database_url_only_gets_lloco_schema(second_server, monkeypatch, embedder, encoder, docs):
    app = create_engine(sqlalchemy_url(second_server))
    users = _app_table(app)
    before = _snapshot(app)
    monkeypatch.setenv("LLOCO_DATABASE_URL", second_server)
    monkeypatch.delenv("LLOCO_SCHEMA", raising=False)

    store = CheatSheetStore(embedder=embedder)  # no url argument: taken from the environment
    assert make_url(store.url).query["host"] == make_url(second_server).query["host"] and not store.embedded
    assert store.schema == "lloco"
    _exercise(store, docs, encoder)

    after = _snapshot(app)
    assert set(after) - set(before) == {"lloco"}
    assert {s: t for s, t in after.items() if s != "lloco"} == before  # nothing else created or changed
    assert "app_users" in after["public"] and "chunks" in after["lloco"]
    with app.connect() as conn:
        assert conn.execute(select(users.c.name).order_by(users.c.id)).scalars().all() == ["ada", "grace"]

    store.drop_schema()
    store.close()
    assert _snapshot(app) == before
    with app.connect() as conn:
        assert conn.execute(select(users.c.name).order_by(users.c.id)).scalars().all() == ["ada", "grace"]

    # A database whose pgvector already lives in another schema: lloco uses it where it is.
    with app.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(DDL("CREATE DATABASE app2"))
    url2 = sqlalchemy_url(second_server).set(database="app2")
    app2 = create_engine(url2)
    with app2.begin() as conn:
        conn.execute(DDL("CREATE SCHEMA extensions"))
        conn.execute(DDL("CREATE EXTENSION vector SCHEMA extensions"))
    store2 = CheatSheetStore(url2.render_as_string(hide_password=False), schema="rag", embedder=embedder)
    assert store2.vector_schema == "extensions"
    _exercise(store2, docs, encoder)
    assert set(_snapshot(app2)) >= {"rag", "extensions"} and _snapshot(app2)["public"] == []
    store2.close()
    app.dispose()
    app2.dispose()
