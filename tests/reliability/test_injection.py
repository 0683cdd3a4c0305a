"""Injection and isolation. Hostile strings in every user-controlled field that reaches SQL are bound or
refused; a schema planted beside ours (and look-alike tables in ``public``, first on the search path) is never
read or written; retrieval for one collection never returns another collection's chunks, whatever the filters.

Extends tests/runtime/store/test_store_security.py (hostile names through the store API) and
test_store_filters.py (hostile filter values) to the CLI, both integrations and a planted schema.
"""

from __future__ import annotations

import pytest
from reliability_helpers import TEXTS, docs, make_adapter_bytes, new_schema, open_store, snapshot
from sqlalchemy import create_engine, text

from lloco_runtime.cli import main
from lloco_runtime.errors import ConfigError, InputError
from lloco_runtime.store import DocumentInput
from lloco_runtime.store.server import sqlalchemy_url

HOSTILE = [
    "g'; DROP TABLE chunks; --",
    "a) OR 1=1 --",
    'x"; DROP SCHEMA public CASCADE; --',
    "$$; SELECT 1; $$",
    "r_x chunks",
    "../../etc/passwd",
    "g\x00",
    "%(p)s",
    "1; COMMIT; DROP TABLE groups",
]


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_names_through_cli_and_integrations(filled, tiny_lloco, pg_url, capsys, name):
    from lloco_index import LLoCORetriever as IndexRetriever
    from lloco_langchain import LLoCORetriever, LLoCOVectorStore
    from lloco_runtime.service import LLoCOService

    before = snapshot(filled)
    service = LLoCOService(tiny_lloco, filled)
    for kw in ({"group": name}, {"group": "g", "collection": name}):
        with pytest.raises(InputError):
            LLoCORetriever(service=service, **kw).invoke("lighthouse")
        with pytest.raises(InputError):
            IndexRetriever(filled, **kw)
        with pytest.raises(InputError):
            LLoCOVectorStore(service, **kw).add_texts(["Fine text."])
        with pytest.raises(InputError):
            service.answer("lighthouse?", **kw)
    for argv in (
        ["retrieve", "q", "--group", name],
        ["docs", "list", "--group", name],
        ["retrieve", "q", "--group", "g", "--collection", name],
    ):
        assert main([*argv, "--url", pg_url, "--schema", filled.schema]) in (1, 2)
        assert "error: " in capsys.readouterr().err
    assert main(["db", "status", "--url", pg_url, "--schema", name]) == 1
    assert "invalid schema name" in capsys.readouterr().err
    assert snapshot(filled) == before


def test_hostile_metadata_and_ids_through_integrations_are_stored_verbatim(filled, tiny_lloco):
    from llama_index.core.schema import Document

    from lloco_index import LLoCONodeParser
    from lloco_langchain import LLoCOVectorStore
    from lloco_runtime.service import LLoCOService

    meta = {"k'); DROP TABLE chunks; --": "v' OR '1'='1", "$$": ["%", "_", "\\"], "n": {"x') --": 1}}
    evil_id = "id'); DELETE FROM documents; --"
    LLoCOVectorStore(LLoCOService(tiny_lloco, filled), group="g").add_texts(
        ["Hostile but harmless."], [meta], ids=[evil_id]
    )
    LLoCONodeParser.from_components(tiny_lloco.encoder, filled, group="g").get_nodes_from_documents(
        [Document(id_=evil_id + "2", text="Another harmless text.", metadata=meta)]
    )
    for doc_id in (evil_id, evil_id + "2"):
        assert filled.get_document(doc_id, group="g").metadata == meta
    assert len(filled.list_documents("g")) == len(TEXTS) + 2
    assert {d.doc_id for d in filled.list_documents("g")} >= set(TEXTS)


@pytest.mark.parametrize(
    "schema", ["lloco; DROP SCHEMA public", "public", "pg_temp", "information_schema", 'a"b', "a b", "A", ""]
)
def test_hostile_schema_from_the_environment(pg_url, monkeypatch, schema):
    from lloco_runtime.store import CheatSheetStore

    monkeypatch.setenv("LLOCO_SCHEMA", schema)
    if schema == "":  # empty means unset: the default schema name, never an empty identifier
        return
    with pytest.raises(ConfigError):
        CheatSheetStore(pg_url)


PLANT = """
CREATE TABLE {p}.canary_log (obj text, at timestamptz DEFAULT now());
CREATE FUNCTION {p}.canary(name text) RETURNS SETOF bigint LANGUAGE plpgsql VOLATILE AS $f$
BEGIN INSERT INTO {p}.canary_log (obj) VALUES (name); RETURN; END $f$;
"""
TABLES = (
    "schema_version",
    "settings",
    "collections",
    "groups",
    "documents",
    "chunks",
    "cheat_sheets",
    "adapters",
)


@pytest.mark.slow
def test_a_planted_schema_is_never_read_or_written(pg_url, tiny_lloco):
    """Views named like lloco's tables, in a planted schema that is FIRST on the database's search path and in
    ``public`` (where pgvector lives): reading one logs to a canary table, writing one fails. A full workflow
    on our schema must leave the canary empty and the planted objects as they were."""
    from lloco_runtime.service import LLoCOService

    db = new_schema()
    admin = create_engine(sqlalchemy_url(pg_url), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {db}"))
    url = sqlalchemy_url(pg_url).set(database=db)
    eng = create_engine(url, isolation_level="AUTOCOMMIT")
    ours, planted = "lloco", "lloco_x"
    with eng.connect() as conn:
        conn.execute(text("CREATE EXTENSION vector"))
        for p in (planted, "public"):
            conn.execute(text(f"CREATE SCHEMA IF NOT EXISTS {p}"))
            conn.execute(text(PLANT.format(p=p)))
            for t in TABLES:
                conn.execute(text(f"CREATE VIEW {p}.{t} AS SELECT x AS id FROM {p}.canary('{p}.{t}') AS x"))
        conn.execute(text(f"ALTER DATABASE {db} SET search_path = {planted}, public"))
    store = open_store(url.render_as_string(hide_password=False), ours)
    try:
        lloco = tiny_lloco
        store.ingest(docs(), group="g", encoder=lloco.encoder)
        store.ingest(docs(), group="g", collection="c2", encoder=lloco.encoder)
        for mode in ("dense", "fulltext", "hybrid"):
            store.retrieve(
                "lighthouse", group="g", mode=mode, filters={"key": "topic", "op": "!=", "value": "x"}
            )
        a = store.register_adapter(
            "g",
            make_adapter_bytes(lloco.host, lloco.encoder.fingerprint, seed=7),
            base_fingerprint=lloco.host.fingerprint,
            encoder_fingerprint=lloco.encoder.fingerprint,
            activate=True,
        )
        LLoCOService(lloco, store).answer("When was the lighthouse built?", group="g", max_new_tokens=3)
        store.list_adapters("g"), store.adapter_weights(a.id), store.status(), store.list_collections()
        store.list_chunks("g", filters={"key": "topic", "op": "in", "value": ["pump"]})
        store.delete_chunks("g", filters={"key": "topic", "op": "==", "value": "pump"})
        store.delete_document("bread", group="g")
        store.clear_group("g", "c2")
        store.delete_collection("c2")
        store.drop_schema()
        with eng.connect() as conn:
            for p in (planted, "public"):
                assert conn.execute(text(f"SELECT count(*) FROM {p}.canary_log")).scalar_one() == 0, p
                views = conn.execute(
                    text("SELECT count(*) FROM information_schema.views WHERE table_schema = :s"), {"s": p}
                ).scalar_one()
                assert views == len(TABLES)
            # The canary works: reading a planted view is logged.
            conn.execute(text(f"SELECT * FROM {planted}.chunks"))
            assert conn.execute(text(f"SELECT count(*) FROM {planted}.canary_log")).scalar_one() == 1
    finally:
        store.close()
        eng.dispose()
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
        admin.dispose()


BROAD_FILTERS = [
    None,
    {"key": "topic", "op": "!=", "value": "nothing"},
    {"key": "nope", "op": "nin", "value": [1]},
    {"or": [{"key": "coll", "op": "==", "value": "c2"}, {"key": "coll", "op": "!=", "value": "c2"}]},
    {"key": "coll", "op": "==", "value": "c2"},
    {"key": "coll", "op": "text_match", "value": "c"},
    {"key": "group_id", "op": ">", "value": -1},
    {"key": "collection", "op": "in", "value": ["c2", "c1"]},
]


def test_retrieval_for_one_collection_never_returns_another_collections_chunks(
    pg_url, tiny_encoder, tiny_lloco
):
    from lloco_index import LLoCORetriever as IndexRetriever
    from lloco_langchain import LLoCORetriever
    from lloco_runtime.service import LLoCOService

    store = open_store(pg_url)
    try:
        for coll in ("c1", "c2"):  # same group name, same doc ids, same texts: only the collection differs
            store.ingest(
                [
                    DocumentInput(k, v, {"coll": coll, "topic": k, "collection": coll, "group_id": 1})
                    for k, v in TEXTS.items()
                ],
                group="g",
                collection=coll,
                encoder=tiny_encoder,
            )
        store.ingest(docs(prefix="h-"), group="h", collection="c1", encoder=tiny_encoder)
        own = {c.chunk_id for c in store.list_chunks("g", "c1")}
        other = {c.chunk_id for c in store.list_chunks("g", "c2")} | {
            c.chunk_id for c in store.list_chunks("h", "c1")
        }
        assert own and other and not own & other
        service = LLoCOService(tiny_lloco, store)
        for flt in BROAD_FILTERS:
            for mode in ("dense", "fulltext", "hybrid"):
                got = {
                    c.chunk_id
                    for c in store.retrieve(
                        "lighthouse pump bread c2",
                        group="g",
                        collection="c1",
                        mode=mode,
                        top_k=50,
                        filters=flt,
                    ).chunks
                }
                assert got <= own, (flt, mode)
            assert {c.chunk_id for c in store.list_chunks("g", "c1", filters=flt)} <= own
            lc = LLoCORetriever(service=service, group="g", collection="c1", k=50, filters=flt).invoke(
                "lighthouse"
            )
            assert {d.metadata["chunk_id"] for d in lc} <= own
            li = IndexRetriever(store, group="g", collection="c1", top_k=50, filters=flt).retrieve(
                "lighthouse"
            )
            assert {n.node.metadata["lloco_chunk_id"] for n in li} <= own
        # A delete with a filter matching everything stays inside its collection and group.
        assert store.delete_chunks("g", "c1", filters={"key": "topic", "op": "!=", "value": "zzz"}) == len(
            own
        )
        assert {c.chunk_id for c in store.list_chunks("g", "c2")} | {
            c.chunk_id for c in store.list_chunks("h", "c1")
        } == other
    finally:
        store.drop_schema()
        store.close()
