"""The storage commands of ``lloco`` (db, ingest, retrieve, groups, docs, delete, adapters)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from store_helpers import DOCS, write

from lloco_runtime.cli import main
from lloco_runtime.store.schema import LATEST_VERSION


@pytest.fixture
def cli(pg_url, schema, embedder, encoder, monkeypatch, capsys):
    import lloco_runtime.store.store as store_mod
    from lloco_runtime import runtime

    monkeypatch.setattr(store_mod, "default_embedder", lambda: embedder)
    monkeypatch.setattr(runtime, "load_default_runtime", lambda: SimpleNamespace(encoder=encoder))

    def run(*argv: str) -> tuple[int, str, str]:
        code = main([*argv, "--url", pg_url, "--schema", schema])
        out = capsys.readouterr()
        return code, out.out, out.err

    yield run
    main(["db", "drop", "--yes", "--url", pg_url, "--schema", schema])


def test_db_ingest_retrieve_list_delete(cli, tmp_path):
    code, out, _ = cli("db", "status")
    assert code == 1  # not initialised yet
    code, out, _ = cli("db", "init")
    assert code == 0 and f"version {LATEST_VERSION}" in out
    code, out, _ = cli("db", "status", "--json")
    assert code == 0 and json.loads(out)["counts"]["documents"] == 0

    write(tmp_path / "docs" / "astronomy.txt", DOCS["astronomy"])
    write(tmp_path / "docs" / "sport.jsonl", json.dumps({"id": "football", "text": DOCS["football"], "y": 1}))
    code, out, err = cli("ingest", str(tmp_path / "docs"), "--group", "g", "--json")
    assert code == 0, err
    assert sorted(d["doc_id"] for d in json.loads(out)["documents"]) == ["astronomy", "football"]
    code, out, _ = cli("ingest", str(tmp_path / "docs"), "--group", "g")
    assert code == 0 and "2 unchanged" in out

    code, out, _ = cli("retrieve", "goalkeeper penalty", "--group", "g", "--json", "--top-k", "1")
    assert code == 0 and json.loads(out)["chunks"][0]["doc_id"] == "football"
    code, out, _ = cli(
        "retrieve",
        "x",
        "--group",
        "g",
        "--filter",
        '{"key": "y", "op": "==", "value": 1}',
        "--mode",
        "fulltext",
    )
    assert code == 0 and "no matches" in out
    code, _, err = cli(
        "retrieve", "x", "--group", "g", "--filter", '{"key": "a\') OR 1=1 --", "op": "==", "value": 1}'
    )
    assert code == 2 and err.startswith("error: invalid metadata key")

    code, out, _ = cli("groups", "list")
    assert code == 0 and "default/g: 2 documents" in out
    code, out, _ = cli("docs", "list", "--group", "g", "--json")
    assert [d["doc_id"] for d in json.loads(out)] == ["astronomy", "football"]
    code, out, _ = cli("delete", "--group", "g", "--doc", "astronomy")
    assert code == 0
    code, _, err = cli("delete", "--group", "g")
    assert code == 2 and "--yes" in err
    code, _, _ = cli("delete", "--group", "g", "--yes")
    assert code == 0
    code, _, err = cli("docs", "list", "--group", "g")
    assert code == 1 and err.startswith("error: group 'g' does not exist")


def test_cli_input_errors_exit_2(cli, tmp_path):
    empty = write(tmp_path / "empty.txt", "  \n")
    code, _, err = cli("ingest", str(empty), "--group", "g")
    assert code == 2 and "empty.txt" in err and err.startswith("error:")
    code, _, err = cli("ingest", str(tmp_path / "missing.md"), "--group", "g")
    assert code == 2 and "no such file" in err
    code, _, err = cli("ingest", str(empty), "--group", "bad name")
    assert code == 2
    code, _, err = cli("retrieve", "q", "--group", "g", "--top-k", "0")
    assert code in (1, 2)
