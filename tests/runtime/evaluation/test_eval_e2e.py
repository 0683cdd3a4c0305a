"""``lloco eval`` end to end on a two-document set: tiny random Llama, embedded Postgres, real MiniLM."""

from __future__ import annotations

import json
import uuid

import pytest

from lloco_runtime.cli import main

REPORT_KEYS = {"dataset", "mode", "n", "f1", "em", "accuracy", "rouge", "context_tokens_mean", "latency_s_mean",
               "prefill_s_mean", "metric", "settings", "per_question"}


@pytest.fixture
def encoder_dir(tiny_lloco, tmp_path):
    return tiny_lloco.encoder.save(tmp_path / "encoder")


@pytest.fixture
def schema(pg_url):
    from lloco_runtime.store import CheatSheetStore

    name = f"eval_{uuid.uuid4().hex[:8]}"
    yield name
    with CheatSheetStore(pg_url, schema=name) as s:
        s.drop_schema()


def _eval(ds, tiny_model_dir, encoder_dir, pg_url, schema, *extra):
    return main(["eval", str(ds), "--model", str(tiny_model_dir), "--encoder", str(encoder_dir), "--device", "cpu",
                 "--dtype", "float32", "--url", pg_url, "--schema", schema, "--max-new-tokens", "4", *extra])


def test_single_mode_json(qa_dir, tiny_model_dir, encoder_dir, pg_url, schema, tmp_path, capsys):
    out = tmp_path / "r.json"
    assert _eval(qa_dir, tiny_model_dir, encoder_dir, pg_url, schema, "--mode", "lloco", "--top-k", "2",
                 "--json", str(out)) == 0
    r = json.loads(out.read_text())
    assert set(r) == REPORT_KEYS
    assert (r["dataset"], r["mode"], r["n"], r["metric"]) == ("tinyqa", "lloco", 3, "qa")
    assert 0 <= r["f1"] <= 1 and 0 <= r["em"] <= 1 and r["accuracy"] is None and r["rouge"] is None
    assert r["settings"]["group"] == "tinyqa" and r["settings"]["top_k"] == 2
    assert r["latency_s_mean"] > 0 and r["prefill_s_mean"] > 0
    # 2 retrieved chunks x 4 cheat-sheet vectors each (32-token segments -> 4 vectors)
    assert r["context_tokens_mean"] == 8
    for row in r["per_question"]:
        assert {"qid", "prediction", "answers", "f1", "em", "context_tokens", "latency_s", "chunk_ids",
                "gold_doc_retrieved"} <= set(row)
        assert len(row["chunk_ids"]) == 2
    err = capsys.readouterr().err
    assert "2 added" in err
    # a second run re-ingests nothing
    assert _eval(qa_dir, tiny_model_dir, encoder_dir, pg_url, schema, "--mode", "rag", "--limit", "1") == 0
    assert "0 added, 0 replaced, 2 unchanged" in capsys.readouterr().err


def test_compare_table_plot_and_truncation(qa_dir, tiny_model_dir, encoder_dir, pg_url, schema, tmp_path, capsys):
    out, png = tmp_path / "cmp.json", tmp_path / "cmp.png"
    assert _eval(qa_dir, tiny_model_dir, encoder_dir, pg_url, schema, "--compare",
                 "none,full,rag,lloco,lloco-adapter,lloco-doc", "--max-context-tokens", "12", "--limit", "2",
                 "--json", str(out), "--plot", str(png)) == 0
    table = capsys.readouterr().out
    assert table.startswith("| mode | n | F1 | EM | context tokens (mean) | latency s (mean) |")
    for mode in ("none", "full", "rag", "lloco", "lloco-doc"):
        assert f"| {mode} | 2 |" in table
    assert "| lloco-adapter (skipped: no active adapter) |" in table
    res = json.loads(out.read_text())
    runs = {r["mode"]: r for r in res["runs"]}
    assert set(runs) == {"none", "full", "rag", "lloco", "lloco-doc"} and res["skipped"] == {
        "lloco-adapter": "no active adapter"}
    assert runs["none"]["context_tokens_mean"] == 0
    full = runs["full"]
    assert all(row["truncated"] and row["context_tokens"] <= 12 for row in full["per_question"])
    assert full["settings"]["truncation"].startswith("head")
    doc = runs["lloco-doc"]  # the first 3 cheat sheets (4 vectors each) of a ~6-chunk document
    assert all(row["context_tokens"] == 12 and row["truncated"] and row["context_fraction"] < 1
               for row in doc["per_question"])
    assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"


def test_multiple_choice_and_adapter_mode(mc_dir, tiny_lloco, tiny_model_dir, encoder_dir, pg_url, schema, tmp_path,
                                          capsys):
    # without an adapter the adapter mode is a clear error
    assert _eval(mc_dir, tiny_model_dir, encoder_dir, pg_url, schema, "--mode", "lloco-doc-adapter") == 2
    assert "no active adapter" in capsys.readouterr().err
    from peft import LoraConfig

    from lloco_runtime.adapters import AdapterArtifact
    from lloco_runtime.store import CheatSheetStore

    host = tiny_lloco.host
    host.add_adapter("tmp_eval", LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    art = AdapterArtifact.from_model(host.model, "tmp_eval", base_fingerprint=host.fingerprint,
                                     encoder_fingerprint=tiny_lloco.encoder.fingerprint)
    host.delete_adapter("tmp_eval")
    with CheatSheetStore(pg_url, schema=schema) as store:
        info = store.register_adapter("tinymc", art.to_bytes(), base_fingerprint=host.fingerprint,
                                      encoder_fingerprint=tiny_lloco.encoder.fingerprint, activate=True)
    out = tmp_path / "mc.json"
    assert _eval(mc_dir, tiny_model_dir, encoder_dir, pg_url, schema, "--mode", "lloco-adapter",
                 "--json", str(out)) == 0
    r = json.loads(out.read_text())
    assert r["metric"] == "choice" and r["f1"] is None and r["em"] is None and 0 <= r["accuracy"] <= 1
    assert r["settings"]["adapter_id"] == info.id
    assert {row["gold_label"] for row in r["per_question"]} == {"B"}
    assert all(row["choice"] in (None, "A", "B", "C", "D") for row in r["per_question"])


def test_prompt_shows_options_and_asks_for_a_letter():
    from lloco_runtime.evaluation.datasets import Question
    from lloco_runtime.evaluation.harness import question_text, score

    q = Question("m", "d", "Who?", ("Bo",), ("Al", "Bo"), "B")
    assert question_text(q) == "Who?\n\nOptions:\nA) Al\nB) Bo\n\nAnswer with the letter of the correct option."
    assert score(q, "(B)", "choice")["correct"] == 1.0
    r = score(Question("r", "d", "Sum?", ("the cat sat",)), "the cat", "rouge")
    assert r["rouge"]["rouge1"] == pytest.approx(0.8) and r["f1"] is None


def test_control_mode_reads_the_cheat_sheets_retrieved_for_a_question_about_another_document(
        qa_dir, tiny_model_dir, encoder_dir, pg_url, schema, tmp_path):
    out = tmp_path / "ctl.json"
    assert _eval(qa_dir, tiny_model_dir, encoder_dir, pg_url, schema, "--compare", "lloco,lloco-control",
                 "--top-k", "1", "--retrieval", "fulltext", "--json", str(out)) == 0
    runs = {r["mode"]: r for r in json.loads(out.read_text())["runs"]}
    own = {row["qid"]: row for row in runs["lloco"]["per_question"]}
    doc_of = {qid: row["doc_id"] for qid, row in own.items()}
    for row in runs["lloco-control"]["per_question"]:
        other = row["control_qid"]
        assert doc_of[other] != row["doc_id"]  # a question about another document
        assert row["chunk_ids"] == own[other]["chunk_ids"] != own[row["qid"]]["chunk_ids"]
