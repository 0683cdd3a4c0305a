"""Dataset validation: every bad input is an InputError raised before any model is loaded."""

from __future__ import annotations

import json

import pytest
from conftest import make_dataset, write_jsonl

from lloco_runtime import cli
from lloco_runtime.cli import _common
from lloco_runtime.errors import InputError
from lloco_runtime.evaluation.datasets import load_dataset


def test_loads_and_picks_metric(qa_dir, mc_dir):
    ds = load_dataset(qa_dir)
    assert ds.name == "tinyqa" and ds.metric == "qa" and len(ds.questions) == 3
    assert list(ds.documents) == ["lighthouse", "orchard"]
    assert [d.doc_id for d in ds.documents_for(ds.questions[:1])] == ["lighthouse"]
    mc = load_dataset(mc_dir)
    assert mc.metric == "choice" and mc.questions[0].gold_label == "B" and len(mc.questions[0].options) == 4
    assert load_dataset(qa_dir, metric="rouge").metric == "rouge"
    with pytest.raises(InputError, match="needs 'options'"):
        load_dataset(qa_dir, metric="choice")


def test_known_set_names_pick_their_metric(tmp_path):
    assert load_dataset(make_dataset(tmp_path / "niah")).metric == "contains"
    assert load_dataset(make_dataset(tmp_path / "qmsum")).metric == "rouge"


def test_missing_folder_and_files(tmp_path, qa_dir):
    with pytest.raises(InputError, match="no such dataset folder"):
        load_dataset(tmp_path / "nope")
    (qa_dir / "questions.jsonl").unlink()
    with pytest.raises(InputError, match="missing questions.jsonl"):
        load_dataset(qa_dir)


def test_malformed_lines_name_file_and_line(qa_dir):
    q = qa_dir / "questions.jsonl"
    q.write_text(q.read_text() + "{not json\n")
    with pytest.raises(InputError, match=r"questions.jsonl:4: invalid JSON"):
        load_dataset(qa_dir)
    (qa_dir / "documents.jsonl").write_text('{"doc_id": "x"}\n')
    with pytest.raises(InputError, match=r"documents.jsonl:1: missing 'text'"):
        load_dataset(qa_dir)


@pytest.mark.parametrize(
    "row, message",
    [
        ({"doc_id": "lighthouse", "qid": "z", "question": "", "answers": ["a"]}, "'question'"),
        ({"doc_id": "lighthouse", "qid": "z", "question": "q?", "answers": "a"}, "'answers' must be a list"),
        ({"doc_id": "lighthouse", "qid": "z", "question": "q?", "answers": []}, "'answers' is empty"),
        (
            {
                "doc_id": "lighthouse",
                "qid": "z",
                "question": "q?",
                "answers": [],
                "options": ["x", "y"],
                "gold_label": "C",
            },
            "gold_label",
        ),
        ({"doc_id": "lighthouse", "qid": "q1", "question": "q?", "answers": ["a"]}, "duplicate qid"),
        ([1, 2], "JSON object"),
    ],
)
def test_bad_question_rows(qa_dir, row, message):
    q = qa_dir / "questions.jsonl"
    q.write_text(q.read_text() + json.dumps(row) + "\n")
    with pytest.raises(InputError, match=message):
        load_dataset(qa_dir)


def test_question_about_missing_document(qa_dir):
    write_jsonl(
        qa_dir / "questions.jsonl", [{"doc_id": "ghost", "qid": "g1", "question": "q?", "answers": ["a"]}]
    )
    with pytest.raises(InputError, match=r"1 question\(s\) refer to documents missing.*g1 -> 'ghost'"):
        load_dataset(qa_dir)


@pytest.mark.parametrize("breakage", ["missing_file", "missing_document", "malformed_line"])
def test_cli_reports_bad_input_before_loading_a_model(qa_dir, monkeypatch, capsys, breakage):
    def no_model(args):
        raise AssertionError("a model was loaded before the dataset was validated")

    monkeypatch.setattr(_common, "load_runtime", no_model)
    if breakage == "missing_file":
        (qa_dir / "documents.jsonl").unlink()
    elif breakage == "missing_document":
        write_jsonl(
            qa_dir / "questions.jsonl", [{"doc_id": "ghost", "qid": "g", "question": "q?", "answers": ["a"]}]
        )
    else:
        (qa_dir / "questions.jsonl").write_text('{"doc_id": "orchard",\n')
    assert cli.main(["eval", str(qa_dir), "--mode", "none"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and str(qa_dir) in err


def test_cli_rejects_bad_mode_list_before_loading(qa_dir, monkeypatch, capsys):
    monkeypatch.setattr(_common, "load_runtime", lambda a: (_ for _ in ()).throw(AssertionError("loaded")))
    assert cli.main(["eval", str(qa_dir), "--compare", "none,bogus"]) == 2
    assert "bogus" in capsys.readouterr().err
