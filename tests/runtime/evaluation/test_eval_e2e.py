"""``lloco eval`` end to end on a two-document set: tiny random Llama, embedded Postgres, real MiniLM."""

from __future__ import annotations

import json
import uuid

import pytest

from lloco_runtime.cli import main

REPORT_KEYS = {
    "dataset",
    "mode",
    "n",
    "f1",
    "em",
    "accuracy",
    "rouge",
    "context_tokens_mean",
    "latency_s_mean",
    "prefill_s_mean",
    "metric",
    "settings",
    "per_question",
}


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
    return main(
        [
            "eval",
            str(ds),
            "--model",
            str(tiny_model_dir),
            "--encoder",
            str(encoder_dir),
            "--device",
            "cpu",
            "--dtype",
            "float32",
            "--url",
            pg_url,
            "--schema",
            schema,
            "--max-new-tokens",
            "4",
            *extra,
        ]
    )


def test_single_mode_json(qa_dir, tiny_model_dir, encoder_dir, pg_url, schema, tmp_path, capsys):
    out = tmp_path / "r.json"
    assert (
        _eval(
            qa_dir,
            tiny_model_dir,
            encoder_dir,
            pg_url,
            schema,
            "--mode",
            "lloco",
            "--top-k",
            "2",
            "--json",
            str(out),
        )
        == 0
    )
    r = json.loads(out.read_text())
    assert set(r) == REPORT_KEYS
    assert (r["dataset"], r["mode"], r["n"], r["metric"]) == ("tinyqa", "lloco", 3, "qa")
    assert 0 <= r["f1"] <= 1 and 0 <= r["em"] <= 1 and r["accuracy"] is None and r["rouge"] is None
    assert r["settings"]["group"] == "tinyqa" and r["settings"]["top_k"] == 2
    assert r["latency_s_mean"] > 0 and r["prefill_s_mean"] > 0
    # 2 retrieved chunks x 4 cheat-sheet vectors each (32-token segments -> 4 vectors)
    assert r["context_tokens_mean"] == 8
    for row in r["per_question"]:
        assert {
            "qid",
            "prediction",
            "answers",
            "f1",
            "em",
            "context_tokens",
            "latency_s",
            "chunk_ids",
            "gold_doc_retrieved",
        } <= set(row)
        assert len(row["chunk_ids"]) == 2
    err = capsys.readouterr().err
    assert "2 added" in err
    # a second run re-ingests nothing
    assert _eval(qa_dir, tiny_model_dir, encoder_dir, pg_url, schema, "--mode", "rag", "--limit", "1") == 0
    assert "0 added, 0 replaced, 2 unchanged" in capsys.readouterr().err


def test_compare_table_plot_and_truncation(
    qa_dir, tiny_model_dir, encoder_dir, pg_url, schema, tmp_path, capsys
):
    out, png = tmp_path / "cmp.json", tmp_path / "cmp.png"
    assert (
        _eval(
            qa_dir,
            tiny_model_dir,
            encoder_dir,
            pg_url,
            schema,
            "--compare",
            "none,full,rag,lloco,lloco-adapter,lloco-doc",
            "--max-context-tokens",
            "12",
            "--limit",
            "2",
            "--json",
            str(out),
            "--plot",
            str(png),
        )
        == 0
    )
    table = capsys.readouterr().out
    assert table.startswith("| mode | n | F1 | EM | context tokens (mean) | latency s (mean) |")
    for mode in ("none", "full", "rag", "lloco", "lloco-doc"):
        assert f"| {mode} | 2 |" in table
    assert "| lloco-adapter (skipped: no active adapter and no reader adapter) |" in table
    res = json.loads(out.read_text())
    runs = {r["mode"]: r for r in res["runs"]}
    assert set(runs) == {"none", "full", "rag", "lloco", "lloco-doc"} and res["skipped"] == {
        "lloco-adapter": "no active adapter and no reader adapter"
    }
    assert runs["none"]["context_tokens_mean"] == 0
    full = runs["full"]
    assert all(row["truncated"] and row["context_tokens"] <= 12 for row in full["per_question"])
    assert full["settings"]["truncation"].startswith("head")
    doc = runs["lloco-doc"]  # the first 3 cheat sheets (4 vectors each) of a ~6-chunk document
    assert all(
        row["context_tokens"] == 12 and row["truncated"] and row["context_fraction"] < 1
        for row in doc["per_question"]
    )
    assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"


def test_multiple_choice_and_adapter_mode(
    mc_dir, tiny_lloco, tiny_model_dir, encoder_dir, pg_url, schema, tmp_path, capsys
):
    # without an adapter the adapter mode is a clear error
    assert _eval(mc_dir, tiny_model_dir, encoder_dir, pg_url, schema, "--mode", "lloco-doc-adapter") == 2
    assert "no active adapter" in capsys.readouterr().err
    from peft import LoraConfig

    from lloco_runtime.adapters import AdapterArtifact
    from lloco_runtime.store import CheatSheetStore

    host = tiny_lloco.host
    host.add_adapter("tmp_eval", LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    art = AdapterArtifact.from_model(
        host.model,
        "tmp_eval",
        base_fingerprint=host.fingerprint,
        encoder_fingerprint=tiny_lloco.encoder.fingerprint,
    )
    host.delete_adapter("tmp_eval")
    with CheatSheetStore(pg_url, schema=schema) as store:
        info = store.register_adapter(
            "tinymc",
            art.to_bytes(),
            base_fingerprint=host.fingerprint,
            encoder_fingerprint=tiny_lloco.encoder.fingerprint,
            activate=True,
        )
    out = tmp_path / "mc.json"
    assert (
        _eval(
            mc_dir, tiny_model_dir, encoder_dir, pg_url, schema, "--mode", "lloco-adapter", "--json", str(out)
        )
        == 0
    )
    r = json.loads(out.read_text())
    assert r["metric"] == "choice" and r["f1"] is None and r["em"] is None and 0 <= r["accuracy"] <= 1
    assert r["settings"]["adapter_id"] == info.id
    assert {row["gold_label"] for row in r["per_question"]} == {"B"}
    assert all(row["choice"] in (None, "A", "B", "C", "D") for row in r["per_question"])


def test_prompt_shows_options_and_asks_for_a_letter():
    from lloco_runtime.evaluation.datasets import Question
    from lloco_runtime.evaluation.harness import question_text, score

    q = Question("m", "d", "Who?", ("Bo",), ("Al", "Bo"), "B")
    assert (
        question_text(q) == "Who?\n\nOptions:\nA) Al\nB) Bo\n\nAnswer with the letter of the correct option."
    )
    assert score(q, "(B)", "choice")["correct"] == 1.0
    r = score(Question("r", "d", "Sum?", ("the cat sat",)), "the cat", "rouge")
    assert r["rouge"]["rouge1"] == pytest.approx(0.8) and r["f1"] is None


def test_control_mode_reads_the_cheat_sheets_retrieved_for_a_question_about_another_document(
    qa_dir, tiny_model_dir, encoder_dir, pg_url, schema, tmp_path
):
    out = tmp_path / "ctl.json"
    assert (
        _eval(
            qa_dir,
            tiny_model_dir,
            encoder_dir,
            pg_url,
            schema,
            "--compare",
            "lloco,lloco-control",
            "--top-k",
            "1",
            "--retrieval",
            "fulltext",
            "--json",
            str(out),
        )
        == 0
    )
    runs = {r["mode"]: r for r in json.loads(out.read_text())["runs"]}
    own = {row["qid"]: row for row in runs["lloco"]["per_question"]}
    doc_of = {qid: row["doc_id"] for qid, row in own.items()}
    for row in runs["lloco-control"]["per_question"]:
        other = row["control_qid"]
        assert doc_of[other] != row["doc_id"]  # a question about another document
        assert row["chunk_ids"] == own[other]["chunk_ids"] != own[row["qid"]]["chunk_ids"]


# -- text-adapter modes, adapter files and the lloco-doc-control mode ------------------------------------------


@pytest.fixture
def adapter_files(tiny_lloco, tmp_path):
    """Adapter files for the CLI's runtime (same tiny model and encoder): a text adapter, a reader adapter,
    and two that do not fit (another encoder; another base model)."""
    from dataclasses import replace

    from lloco_test_support import make_adapter_bytes

    from lloco_runtime.adapters import AdapterArtifact

    host, enc_fp = tiny_lloco.host, tiny_lloco.encoder.fingerprint
    paths = {
        "text": tmp_path / "text.safetensors",
        "reader": tmp_path / "reader.safetensors",
        "other_encoder": tmp_path / "other_encoder.safetensors",
        "other_base": tmp_path / "other_base.safetensors",
    }
    paths["text"].write_bytes(make_adapter_bytes(host, None, seed=1))
    paths["reader"].write_bytes(make_adapter_bytes(host, enc_fp, seed=2))
    paths["other_encoder"].write_bytes(make_adapter_bytes(host, "f" * 64, seed=3))
    art = AdapterArtifact.from_bytes(paths["text"].read_bytes())
    paths["other_base"].write_bytes(replace(art, base_fingerprint="0" * 64).to_bytes())
    return paths


def test_text_adapter_modes_and_the_document_control_with_adapter_files(
    qa_dir, tiny_model_dir, encoder_dir, pg_url, schema, adapter_files, tmp_path, capsys
):
    out = tmp_path / "fair.json"
    modes = "none,full,full-adapter,rag,rag-adapter,lloco-doc-adapter,lloco-doc-control,lloco-adapter-control"
    assert (
        _eval(
            qa_dir,
            tiny_model_dir,
            encoder_dir,
            pg_url,
            schema,
            "--compare",
            modes,
            "--top-k",
            "2",
            "--max-context-tokens",
            "12",
            "--text-adapter",
            str(adapter_files["text"]),
            "--adapter-file",
            str(adapter_files["reader"]),
            "--json",
            str(out),
        )
        == 0
    )
    res = json.loads(out.read_text())
    runs = {r["mode"]: r for r in res["runs"]}
    assert list(runs) == modes.split(",") and res["skipped"] == {}  # no group adapter, but an adapter file
    for mode in ("full-adapter", "rag-adapter"):
        assert runs[mode]["settings"]["adapter"] == {
            "source": "file",
            "id": "file:text",
            "path": str(adapter_files["text"]),
        }
        assert runs[mode]["settings"]["adapter_id"] == "file:text"
    for mode in ("lloco-doc-adapter", "lloco-doc-control", "lloco-adapter-control"):
        assert runs[mode]["settings"]["adapter"]["path"] == str(adapter_files["reader"])
        assert runs[mode]["settings"]["adapter_id"] == "file:reader"
    assert runs["full"]["settings"]["adapter"] is None and runs["none"]["settings"]["adapter_id"] is None
    # full-adapter reads the same text as full (same truncation), rag-adapter the same chunks as rag
    full, fulla = runs["full"]["per_question"], runs["full-adapter"]["per_question"]
    assert [r["context_tokens"] for r in full] == [r["context_tokens"] for r in fulla]
    assert [r["chunk_ids"] for r in runs["rag"]["per_question"]] == [
        r["chunk_ids"] for r in runs["rag-adapter"]["per_question"]
    ]
    # ... and the adapter is applied: the random LoRA changes some answer
    assert [r["prediction"] for r in full] != [r["prediction"] for r in fulla]
    # lloco-doc-control: another document's cheat sheets, truncated like lloco-doc-adapter
    doc_of = {row["qid"]: row["doc_id"] for row in runs["none"]["per_question"]}
    ctl = runs["lloco-doc-control"]
    assert ctl["settings"]["truncation"].startswith("head")
    for row in ctl["per_question"]:
        assert row["control_doc_id"] != row["doc_id"] and row["control_doc_id"] == doc_of[row["control_qid"]]
        assert row["context_tokens"] == 12 and row["truncated"]
    assert {r["qid"]: r["control_doc_id"] for r in ctl["per_question"]} == {
        "q1": "orchard",
        "q2": "orchard",
        "q3": "lighthouse",
    }


def test_document_control_feeds_the_other_documents_cheat_sheets(
    qa_dir, tiny_lloco, pg_url, schema, adapter_files
):
    import torch

    from lloco_runtime.evaluation.datasets import load_dataset
    from lloco_runtime.evaluation.harness import EvalSettings, Harness, question_text
    from lloco_runtime.store import CheatSheetStore

    dataset = load_dataset(qa_dir)
    with CheatSheetStore(pg_url, schema=schema) as store:
        h = Harness(
            tiny_lloco,
            dataset,
            EvalSettings(group="tinyqa"),
            store=store,
            adapter_file=adapter_files["reader"],
        )
        h.ingest()
        seen = []
        real = tiny_lloco.answer

        def spy(question, context=None, **kw):
            seen.append((question, context, kw.get("adapter_id")))
            return real(question, context, **kw)

        tiny_lloco.answer = spy
        report = h.run("lloco-doc-control")
        by_qid = {q.qid: q for q in dataset.questions}
        for row, (question, context, adapter_id) in zip(report["per_question"], seen, strict=True):
            q = by_qid[row["qid"]]
            assert question == question_text(q) and adapter_id == "file:reader"
            other = next(x for x in dataset.questions if x.doc_id == row["control_doc_id"])
            expected, _ = h.doc_sheets(other, question_text(q))
            own, _ = h.doc_sheets(q, question_text(q))
            assert len(context) == len(expected)
            assert all(torch.equal(a, b) for a, b in zip(context, expected, strict=True))
            assert not all(torch.equal(a, b) for a, b in zip(context, own, strict=False))


def test_missing_text_adapter_is_a_clear_error_before_anything_loads(qa_dir, monkeypatch, capsys, tmp_path):
    from lloco_runtime import runtime
    from lloco_runtime.cli import _common

    monkeypatch.setattr(runtime, "shipped_teacher_adapter", lambda: None)
    monkeypatch.setattr(
        _common, "load_runtime", lambda a: (_ for _ in ()).throw(AssertionError("a model was loaded"))
    )
    for args in (["--mode", "full-adapter"], ["--compare", "none,rag-adapter,lloco-doc-control"]):
        assert main(["eval", str(qa_dir), *args]) == 2
        err = capsys.readouterr().err
        assert "lloco train-teacher" in err and "--text-adapter" in err
    assert (
        main(["eval", str(qa_dir), "--mode", "full-adapter", "--text-adapter", str(tmp_path / "nope")]) == 2
    )
    assert "is not a file" in capsys.readouterr().err
    assert (
        main(["eval", str(qa_dir), "--mode", "lloco-doc-control", "--adapter-file", str(tmp_path / "no")])
        == 2
    )
    assert "--adapter-file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # argparse: usage and the valid modes
        main(["eval", str(qa_dir), "--mode", "full-adapterz"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "unknown mode 'full-adapterz'" in err and "lloco-doc-control" in err


def test_shipped_teacher_is_the_default_text_adapter_and_mismatched_files_are_refused(
    qa_dir, tiny_model_dir, encoder_dir, pg_url, schema, adapter_files, monkeypatch, tmp_path, capsys
):
    from lloco_runtime import runtime

    monkeypatch.setattr(runtime, "shipped_teacher_adapter", lambda: adapter_files["text"])
    out = tmp_path / "fa.json"
    assert (
        _eval(
            qa_dir,
            tiny_model_dir,
            encoder_dir,
            pg_url,
            schema,
            "--mode",
            "full-adapter",
            "--limit",
            "1",
            "--json",
            str(out),
        )
        == 0
    )
    assert json.loads(out.read_text())["settings"]["adapter"]["path"] == str(adapter_files["text"])
    capsys.readouterr()
    # a reader adapter of another encoder, a text adapter of another base model: refused before any question
    assert (
        _eval(
            qa_dir,
            tiny_model_dir,
            encoder_dir,
            pg_url,
            schema,
            "--mode",
            "lloco-doc-control",
            "--adapter-file",
            str(adapter_files["other_encoder"]),
        )
        == 1
    )
    err = capsys.readouterr().err
    assert f"--adapter-file {adapter_files['other_encoder']}" in err and "encoder ffffffffffff" in err
    assert "ingest:" not in err
    assert (
        _eval(
            qa_dir,
            tiny_model_dir,
            encoder_dir,
            pg_url,
            schema,
            "--mode",
            "rag-adapter",
            "--text-adapter",
            str(adapter_files["other_base"]),
        )
        == 1
    )
    err = capsys.readouterr().err
    assert f"--text-adapter {adapter_files['other_base']}" in err and "base model 000000000000" in err
    assert "ingest:" not in err


def test_compare_skips_every_cheat_sheet_adapter_mode_without_an_adapter(
    qa_dir, tiny_model_dir, encoder_dir, pg_url, schema, tmp_path, capsys
):
    out = tmp_path / "skip.json"
    assert (
        _eval(
            qa_dir,
            tiny_model_dir,
            encoder_dir,
            pg_url,
            schema,
            "--compare",
            "none,lloco-doc-adapter,lloco-doc-control,lloco-adapter-control",
            "--limit",
            "1",
            "--json",
            str(out),
        )
        == 0
    )
    res = json.loads(out.read_text())
    assert [r["mode"] for r in res["runs"]] == ["none"]
    assert res["skipped"] == dict.fromkeys(
        ("lloco-doc-adapter", "lloco-doc-control", "lloco-adapter-control"),
        "no active adapter and no reader adapter",
    )
    # a single mode is an error naming the ways out
    assert _eval(qa_dir, tiny_model_dir, encoder_dir, pg_url, schema, "--mode", "lloco-doc-control") == 2
    err = capsys.readouterr().err
    assert "no active adapter" in err and "--adapter-file" in err


def test_a_run_in_parts_with_offset_is_pooled_by_eval_report(
    qa_dir, tiny_model_dir, encoder_dir, pg_url, schema, tmp_path, capsys
):
    first, rest = tmp_path / "first.json", tmp_path / "rest.json"
    run = ("--mode", "none", "--json")
    assert _eval(qa_dir, tiny_model_dir, encoder_dir, pg_url, schema, *run, str(first), "--limit", "1") == 0
    assert _eval(qa_dir, tiny_model_dir, encoder_dir, pg_url, schema, *run, str(rest), "--offset", "1") == 0
    a, b = json.loads(first.read_text()), json.loads(rest.read_text())
    assert [r["qid"] for r in a["per_question"]] == ["q1"]
    assert [r["qid"] for r in b["per_question"]] == ["q2", "q3"]
    assert b["settings"]["offset"] == 1 and b["settings"]["limit"] is None
    capsys.readouterr()
    out = tmp_path / "pooled.json"
    assert main(["eval-report", str(first), str(rest), "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())
    assert row["mode"] == "none" and row["n"] == 3
    for offset, message in (("3", "--offset 3 skips all 3 questions"), ("-1", "--offset must be >= 0")):
        assert (
            _eval(qa_dir, tiny_model_dir, encoder_dir, pg_url, schema, "--mode", "none", "--offset", offset)
            == 2
        )
        assert message in capsys.readouterr().err
