"""`lloco eval-report`: confidence intervals and paired deltas from saved runs (no model involved)."""

from __future__ import annotations

import json

import pytest

from lloco_runtime.cli import main
from lloco_runtime.errors import InputError
from lloco_runtime.evaluation.report import (
    bootstrap_ci,
    load_reports,
    markdown,
    paired_delta,
    question_scores,
    summary_rows,
)


def _report(mode, f1s, dataset="set", ctx=10.0):
    rows = [{"qid": f"q{i}", "f1": v, "em": None, "correct": None, "rouge": None} for i, v in enumerate(f1s)]
    return {"dataset": dataset, "mode": mode, "metric": "qa", "n": len(rows), "per_question": rows,
            "f1": sum(f1s) / len(f1s), "context_tokens_mean": ctx, "latency_s_mean": 0.5}


def test_bootstrap_interval_brackets_the_mean_and_collapses_for_constant_scores():
    assert bootstrap_ci([0.3] * 20) == (pytest.approx(0.3), pytest.approx(0.3))
    lo, hi = bootstrap_ci([0.0, 1.0] * 20)
    assert lo < 0.5 < hi and 0.3 < lo and hi < 0.7
    assert bootstrap_ci([1.0]) is None


def test_paired_delta_uses_only_common_questions():
    a = {"q0": 1.0, "q1": 0.5, "q2": 0.0}
    b = {"q0": 0.0, "q1": 0.5, "q9": 1.0}
    d = paired_delta(a, b)
    assert d["n"] == 2 and d["delta"] == pytest.approx(0.5)
    assert paired_delta(a, {"zz": 1.0}) is None


def test_a_constant_gain_has_a_tight_paired_interval_even_when_scores_vary_widely():
    base = [0.0, 1.0, 0.2, 0.9, 0.4, 0.7] * 5
    better = [v + 0.1 for v in base]
    rows = summary_rows([_report("none", base), _report("lloco", better)], baseline="none")
    assert rows[0]["delta"] is None  # the baseline itself
    d = rows[1]["delta"]
    assert d["delta"] == pytest.approx(0.1) and d["ci95"] == (pytest.approx(0.1), pytest.approx(0.1))
    lo, hi = rows[1]["ci95"]  # the unpaired interval of the score is wide
    assert hi - lo > 0.2


def test_choice_and_rouge_scores_are_read_from_their_keys():
    choice = {"mode": "m", "metric": "choice", "per_question": [{"qid": 1, "correct": 1.0}, {"qid": 2, "correct": 0.0}]}
    rouge = {"mode": "m", "metric": "rouge", "per_question": [{"qid": 1, "rouge": {"rougeL": 0.25}}]}
    assert question_scores(choice) == {"1": 1.0, "2": 0.0}
    assert question_scores(rouge) == {"1": 0.25}


def test_cli_reads_compare_and_single_runs(tmp_path, capsys):
    compare = tmp_path / "cmp.json"
    compare.write_text(json.dumps({"dataset": "set", "runs": [_report("none", [0.0, 0.5, 1.0]),
                                                               _report("rag", [0.5, 0.5, 1.0], ctx=512)]}))
    single = tmp_path / "one.json"
    single.write_text(json.dumps(_report("lloco", [1.0, 1.0, 1.0], ctx=64)))
    out_json = tmp_path / "rows.json"
    assert main(["eval-report", str(compare), str(single), "--baseline", "none", "--json", str(out_json)]) == 0
    table = capsys.readouterr().out
    assert "| set | lloco | 3 | 100.0 [100.0, 100.0] | +50.0" in table
    assert "| set | rag | 3 | 66.7" in table and "| 512 |" in table
    rows = json.loads(out_json.read_text())
    assert [r["mode"] for r in rows] == ["none", "rag", "lloco"]
    assert markdown(load_reports([single])).count("\n") == 2


def test_bad_files_are_named(tmp_path):
    with pytest.raises(InputError, match="is not a file"):
        load_reports([tmp_path / "missing.json"])
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(InputError, match="not a JSON report"):
        load_reports([bad])
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"hello": 1}))
    with pytest.raises(InputError, match="no mode / per_question"):
        load_reports([other])
    assert main(["eval-report", str(other)]) != 0
