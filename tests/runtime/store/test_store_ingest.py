"""Ingest: files and folders, one transaction per document, idempotence, replacement, failures."""

from __future__ import annotations

import json

import pytest
import torch
from store_helpers import DOCS, FailingEncoder, row_counts, write

from lloco_runtime.errors import CheatSheetError, InputError
from lloco_runtime.store import DocumentInput


def test_ingest_stores_chunks_embeddings_and_cheat_sheets(store, docs, encoder):
    report = store.ingest(docs, group="g", encoder=encoder)
    assert report.count("added") == 3
    expected_chunks = sum(len(encoder.split(d.text)) for d in docs)
    assert report.chunks_written == expected_chunks > 3  # 32-token segments: several per document
    assert row_counts(store) == {"documents": 3, "chunks": expected_chunks, "cheat_sheets": expected_chunks}
    info = store.get_document("cooking", group="g")
    assert info.encoder_fingerprint == encoder.fingerprint
    assert info.metadata["topic"] == "cooking"
    # Cheat sheets round-trip: same values as a fresh compression (fp16 storage).
    chunks = encoder.split(DOCS["cooking"])
    fresh = encoder.compress_chunks(chunks)
    res = store.retrieve(
        "sourdough bread", group="g", top_k=50, filters={"key": "topic", "op": "==", "value": "cooking"}
    )
    by_ordinal = {c.ordinal: c for c in res.chunks}
    assert sorted(by_ordinal) == list(range(len(chunks)))
    for i, t in enumerate(fresh):
        got = by_ordinal[i].cheat_sheet
        assert got.shape == (encoder.config.summary_length, encoder.hidden_size)
        assert got.dtype == torch.float16
        torch.testing.assert_close(got.float(), t.float(), atol=1e-2, rtol=1e-2)
        assert by_ordinal[i].text == chunks[i].text


def test_reingest_identical_is_noop_and_changed_replaces(store, docs, encoder):
    store.ingest(docs, group="g", encoder=encoder)
    before = {d.doc_id: d for d in store.list_documents("g")}
    again = store.ingest(docs, group="g", encoder=encoder)
    assert again.count("unchanged") == 3 and again.chunks_written == 0
    assert {d.doc_id: d.id for d in store.list_documents("g")} == {k: v.id for k, v in before.items()}

    changed = DocumentInput(
        "cooking", "Pasta needs salted boiling water and ten minutes.", {"topic": "cooking"}
    )
    rep = store.ingest([changed], group="g", encoder=encoder)
    assert rep.documents[0].status == "replaced"
    res = store.retrieve("pasta boiling water", group="g", top_k=1)
    assert res.chunks[0].doc_id == "cooking" and "Pasta" in res.chunks[0].text
    assert not any("sourdough" in c.text for c in store.retrieve("sourdough", group="g", top_k=20).chunks)
    # Metadata-only change is applied too.
    meta = DocumentInput("cooking", changed.text, {"topic": "cooking", "year": 1999})
    assert store.ingest([meta], group="g", encoder=encoder).documents[0].status == "replaced"
    assert store.get_document("cooking", group="g").metadata["year"] == 1999


def test_compression_failing_midway_leaves_no_rows(store, docs, encoder):
    with pytest.raises(RuntimeError, match="midway"):
        store.ingest(docs[:1], group="g", encoder=FailingEncoder(encoder, after=1))
    assert row_counts(store) == {"documents": 0, "chunks": 0, "cheat_sheets": 0}


def test_failure_while_writing_rolls_back_and_keeps_old_version(store, docs, encoder, monkeypatch):
    store.ingest(docs, group="g", encoder=encoder)
    before = row_counts(store)
    old = store.get_document("astronomy", group="g")
    import lloco_runtime.store.ingest as ingest_mod

    real = ingest_mod.encode_tensor
    calls = {"n": 0}

    def flaky(t, *a, **k):  # fails on the second cheat sheet: chunk rows are already inserted by then
        calls["n"] += 1
        if calls["n"] == 2:
            raise CheatSheetError("disk full (simulated)")
        return real(t, *a, **k)

    monkeypatch.setattr(ingest_mod, "encode_tensor", flaky)
    new = DocumentInput("astronomy", DOCS["astronomy"] + " Andromeda will merge with the Milky Way.", {})
    with pytest.raises(CheatSheetError, match="simulated"):
        store.ingest([new], group="g", encoder=encoder)
    assert row_counts(store) == before
    assert store.get_document("astronomy", group="g").sha256 == old.sha256


def test_a_changed_encoder_recompresses(store, docs, encoder):
    store.ingest(docs[:1], group="g", encoder=encoder, compress=False)
    assert row_counts(store)["cheat_sheets"] == 0
    rep = store.ingest(docs[:1], group="g", encoder=encoder)
    assert rep.documents[0].status == "replaced"
    assert row_counts(store)["cheat_sheets"] == row_counts(store)["chunks"] > 0


def test_ingest_paths_txt_md_jsonl_and_folders(store, encoder, tmp_path):
    write(tmp_path / "in" / "alpha.txt", DOCS["astronomy"])
    write(tmp_path / "in" / "sub" / "beta.md", "# Bread\n\n" + DOCS["cooking"])
    write(tmp_path / "in" / "ignored.csv", "a,b\n1,2\n")
    lines = [{"doc_id": "g1", "text": DOCS["football"], "year": 2024}, {"id": 7, "text": "Chess openings."}]
    write(tmp_path / "more.jsonl", "\n".join(json.dumps(x) for x in lines) + "\n\n")
    rep = store.ingest_paths(
        [tmp_path / "in", tmp_path / "more.jsonl"],
        group="files",
        collection="c1",
        encoder=encoder,
        progress=True,
    )
    assert sorted(d.doc_id for d in rep.documents) == ["7", "alpha", "beta", "g1"]
    assert store.get_document("g1", group="files", collection="c1").metadata == {"year": 2024}
    assert store.get_document("alpha", group="files", collection="c1").metadata == {"source": "alpha.txt"}


@pytest.mark.parametrize(
    "name,content,match",
    [
        ("empty.txt", "", "empty"),
        ("blank.md", "  \n\t \n", "empty"),
        ("bin.txt", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "binary"),
        ("latin.txt", "caf\xe9 cr\xe8me".encode("latin-1"), "UTF-8"),
        ("bad.jsonl", '{"doc_id": "a", "text": "ok"}\n{not json}\n', "bad.jsonl:2"),
        ("notext.jsonl", '{"doc_id": "a"}\n', "missing 'text'"),
        ("noid.jsonl", '{"text": "hello"}\n', "missing 'doc_id'"),
        ("emptytext.jsonl", '{"id": "a", "text": "   "}\n', "empty"),
        ("dup.jsonl", '{"id": "a", "text": "x"}\n{"id": "a", "text": "y"}\n', "duplicate doc_id"),
        ("data.pdf", b"%PDF-1.4", "unsupported file type"),
    ],
)
def test_bad_inputs_raise_input_error_naming_the_file_and_write_nothing(
    store, encoder, tmp_path, name, content, match
):
    good = write(tmp_path / "good.txt", DOCS["cooking"])
    bad = write(tmp_path / name, content)
    with pytest.raises(InputError, match=match) as exc:
        store.ingest_paths([good, bad], group="g", encoder=encoder)
    assert name in str(exc.value)
    assert row_counts(store) == {"documents": 0, "chunks": 0, "cheat_sheets": 0}


def test_missing_path_and_bad_documents(store, encoder, tmp_path):
    with pytest.raises(InputError, match="no such file"):
        store.ingest_paths([tmp_path / "nope.txt"], group="g", encoder=encoder)
    with pytest.raises(InputError, match="no .txt"):
        store.ingest_paths([tmp_path], group="g", encoder=encoder)
    with pytest.raises(InputError):
        DocumentInput("", "text")
    with pytest.raises(InputError, match="NUL"):
        DocumentInput("a", "text", {"k": "v\x00"})
    with pytest.raises(InputError, match="finite"):
        DocumentInput("a", "text", {"k": float("nan")})
    with pytest.raises(InputError, match="group name"):
        store.ingest([DocumentInput("a", "text")], group="bad name!", encoder=encoder)
