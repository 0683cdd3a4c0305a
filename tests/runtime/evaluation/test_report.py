"""`lloco eval-report`: confidence intervals and paired deltas from saved runs (no model involved)."""

from __future__ import annotations

import json

import pytest

from lloco_runtime.cli import main
from lloco_runtime.errors import InputError
from lloco_runtime.evaluation.report import (
    against_rows,
    bootstrap_ci,
    load_reports,
    markdown,
    paired_delta,
    question_scores,
    summary_rows,
)


def _report(mode, f1s, dataset="set", ctx=10.0):
    rows = [{"qid": f"q{i}", "f1": v, "em": None, "correct": None, "rouge": None} for i, v in enumerate(f1s)]
    return {
        "dataset": dataset,
        "mode": mode,
        "metric": "qa",
        "n": len(rows),
        "per_question": rows,
        "f1": sum(f1s) / len(f1s),
        "context_tokens_mean": ctx,
        "latency_s_mean": 0.5,
    }


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
    choice = {
        "mode": "m",
        "metric": "choice",
        "per_question": [{"qid": 1, "correct": 1.0}, {"qid": 2, "correct": 0.0}],
    }
    rouge = {"mode": "m", "metric": "rouge", "per_question": [{"qid": 1, "rouge": {"rougeL": 0.25}}]}
    assert question_scores(choice) == {"1": 1.0, "2": 0.0}
    assert question_scores(rouge) == {"1": 0.25}


def test_cli_reads_compare_and_single_runs(tmp_path, capsys):
    compare = tmp_path / "cmp.json"
    compare.write_text(
        json.dumps(
            {
                "dataset": "set",
                "runs": [_report("none", [0.0, 0.5, 1.0]), _report("rag", [0.5, 0.5, 1.0], ctx=512)],
            }
        )
    )
    single = tmp_path / "one.json"
    single.write_text(json.dumps(_report("lloco", [1.0, 1.0, 1.0], ctx=64)))
    out_json = tmp_path / "rows.json"
    assert (
        main(["eval-report", str(compare), str(single), "--baseline", "none", "--json", str(out_json)]) == 0
    )
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


# -- reading utilisation U = (right - wrong) / (text - none) --------------------------------------------------


def _u_runs(right, wrong, text, none, dataset="set"):
    return [
        _report("lloco-doc-adapter", right, dataset),
        _report("lloco-doc-control", wrong, dataset),
        _report("full-adapter", text, dataset),
        _report("none", none, dataset),
    ]


def test_u_by_hand():
    from lloco_runtime.evaluation.report import utilisation

    right, wrong = [1.0, 0.5, 0.0, 1.0], [0.0, 0.5, 0.0, 0.5]  # means 0.625, 0.25: reading 0.375
    text, none = [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.5, 0.5]  # means 1.0, 0.25: text gain 0.75
    as_map = lambda vals: {f"q{i}": v for i, v in enumerate(vals)}
    u = utilisation(as_map(right), as_map(wrong), as_map(text), as_map(none))
    assert u["n"] == 4 and (u["right"], u["wrong"], u["text"], u["none"]) == (0.625, 0.25, 1.0, 0.25)
    assert u["reading"] == pytest.approx(0.375) and u["text_gain"] == pytest.approx(0.75)
    assert u["u"] == pytest.approx(0.5) and u["undefined"] is None
    lo, hi = u["u_ci95"]
    assert lo <= 0.5 <= hi
    assert u["reading_ci95"] == bootstrap_ci([1.0, 0.0, 0.0, 0.5])  # the paired interval of right - wrong


def test_u_interval_collapses_when_every_question_gains_alike_and_only_common_questions_count():
    from lloco_runtime.evaluation.report import utilisation

    n = 30
    none = {f"q{i}": (i % 5) / 10 for i in range(n)}
    text = {q: v + 0.4 for q, v in none.items()}
    wrong = {q: v + 0.1 for q, v in none.items()}
    right = {q: v + 0.3 for q, v in none.items()}  # U = 0.2 / 0.4 on every question and every resample
    right["extra"] = 1.0  # answered in one mode only: ignored
    u = utilisation(right, wrong, text, none)
    assert u["n"] == n and u["u"] == pytest.approx(0.5)
    assert u["u_ci95"] == (pytest.approx(0.5), pytest.approx(0.5)) and u["u_undefined_resamples"] == 0
    assert u["reading_ci95"] == (pytest.approx(0.2), pytest.approx(0.2))


@pytest.mark.parametrize("gain", [0.0, -0.2])
def test_u_is_undefined_when_the_text_does_not_beat_no_context(gain):
    from lloco_runtime.evaluation.report import utilisation

    none = {"a": 0.5, "b": 0.3}
    text = {q: v + gain for q, v in none.items()}
    u = utilisation({"a": 1.0, "b": 1.0}, {"a": 0.0, "b": 0.0}, text, none)
    assert u["u"] is None and u["u_ci95"] is None
    assert "does not beat no context" in u["undefined"] and u["reading"] == pytest.approx(1.0)
    assert utilisation({"a": 1.0}, {"b": 1.0}, {"a": 1.0}, {"a": 0.0})["undefined"].startswith("no question")


def test_u_interval_is_withheld_when_the_denominator_often_flips_sign():
    from lloco_runtime.evaluation.report import utilisation

    gain = [0.5, 0.5, 0.5, -0.5, -0.5]  # text - none: mean 0.1 > 0, but <= 0 in many resamples
    none = {f"q{i}": 0.5 for i in range(5)}
    text = {f"q{i}": 0.5 + g for i, g in enumerate(gain)}
    right = {f"q{i}": 0.55 for i in range(5)}  # right - wrong: 0.05
    u = utilisation(right, none, text, none)
    assert u["u"] == pytest.approx(0.05 / 0.1)
    assert u["u_ci95"] is None and u["u_undefined_resamples"] > 50 and "too uncertain" in u["u_ci_undefined"]


def test_cli_prints_u_and_writes_it_to_json(tmp_path, capsys):
    path = tmp_path / "u.json"
    runs = _u_runs([1.0, 0.5, 0.0, 1.0], [0.0, 0.5, 0.0, 0.5], [1.0] * 4, [0.0, 0.0, 0.5, 0.5])
    path.write_text(json.dumps({"dataset": "set", "runs": runs}))
    out_json = tmp_path / "out.json"
    assert main(["eval-report", str(path), "--u", "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    assert "| set | lloco-doc-control | 4 |" in out  # the usual table first
    assert "right = lloco-doc-adapter, wrong = lloco-doc-control, text = full-adapter, none = none" in out
    assert "| set | 4 | 62.5 | 25.0 | 100.0 | 25.0 | +37.5 [" in out
    assert "set: U = 0.50 (95% CI [" in out
    res = json.loads(out_json.read_text())
    assert [r["mode"] for r in res["rows"]] == [
        "lloco-doc-adapter",
        "lloco-doc-control",
        "full-adapter",
        "none",
    ]
    (u,) = res["utilisation"]
    assert u["u"] == pytest.approx(0.5) and u["n"] == 4 and u["modes"]["text"] == "full-adapter"


def test_cli_u_with_other_modes_missing_modes_and_an_undefined_u(tmp_path, capsys):
    path = tmp_path / "u.json"
    runs = [
        _report("lloco-adapter", [1.0, 1.0]),
        _report("lloco-adapter-control", [0.0, 1.0]),
        _report("rag-adapter", [0.5, 0.5]),
        _report("none", [0.5, 0.5]),
    ]
    path.write_text(json.dumps({"dataset": "set", "runs": runs}))
    assert (
        main(["eval-report", str(path), "--u-modes", "lloco-adapter,lloco-adapter-control,rag-adapter,none"])
        == 0
    )
    out = capsys.readouterr().out
    assert "| set | 2 | 100.0 | 50.0 | 50.0 | 50.0 | +50.0" in out and "| undefined |" in out
    assert "set: U is undefined: the text does not beat no context" in out
    # the default modes are not all there: a clear error naming the missing ones
    assert main(["eval-report", str(path), "--u"]) == 2
    err = capsys.readouterr().err
    assert "missing: full-adapter, lloco-doc-adapter, lloco-doc-control" in err and "--compare" in err
    assert main(["eval-report", str(path), "--u-modes", "a,b,c"]) == 2
    assert "four comma-separated modes" in capsys.readouterr().err


def test_u_skips_a_dataset_without_the_modes_but_computes_the_others(tmp_path):
    from lloco_runtime.evaluation.report import utilisation_markdown, utilisation_rows

    reports = _u_runs([1.0, 0.0], [0.0, 0.0], [1.0, 1.0], [0.0, 0.0], dataset="a") + [
        _report("none", [0.0], "b")
    ]
    rows = utilisation_rows(reports)
    assert rows[0]["u"] == pytest.approx(0.5) and rows[1]["missing"] == [
        "lloco-doc-adapter",
        "lloco-doc-control",
        "full-adapter",
    ]
    assert "b: U not computed, no run of lloco-doc-adapter" in utilisation_markdown(rows)


def test_cli_against_pairs_the_same_modes_of_two_sets_of_runs(tmp_path, capsys):
    after, before = tmp_path / "after.json", tmp_path / "before.json"
    after.write_text(
        json.dumps({"dataset": "set", "runs": [_report("lloco", [1.0, 0.5, 1.0]), _report("rag", [0.5] * 3)]})
    )
    before.write_text(json.dumps({"dataset": "set", "runs": [_report("lloco", [0.5, 0.5, 0.5, 0.0])]}))
    out_json = tmp_path / "rows.json"
    assert main(["eval-report", str(after), "--against", str(before), "--json", str(out_json)]) == 0
    table = capsys.readouterr().out
    # paired over the 3 questions both answered (q3 only ran before): +33.3, not +50.0 of the unpaired means
    assert "| set | lloco | 83.3 | 37.5 | +33.3 [0.0, 50.0] (3) |" in table
    (row,) = json.loads(out_json.read_text())["against"]  # rag is not in the runs before: no row
    assert row["mode"] == "lloco" and row["delta"]["n"] == 3
    with pytest.raises(InputError, match="no \\(dataset, mode\\)"):
        against_rows(load_reports([before]), [_report("rag", [1.0])])


def _part(mode, f1s, start, **settings):
    r = _report(mode, f1s)
    for i, row in enumerate(r["per_question"]):
        row["qid"] = f"q{start + i}"
        row["context_tokens"], row["latency_s"] = 10.0 * (start + i), 0.5
    r["settings"] = {"group": "g", "offset": start, "limit": len(f1s), **settings}
    return r


def test_parts_of_a_run_are_pooled_and_overlapping_runs_stay_apart(tmp_path, caplog):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(
        json.dumps({"dataset": "set", "runs": [_part("lloco", [1.0, 0.0], 0), _part("rag", [1.0], 0)]})
    )
    b.write_text(json.dumps({"dataset": "set", "runs": [_part("lloco", [1.0, 1.0], 2)]}))
    pooled = load_reports([a, b])
    assert [r["mode"] for r in pooled] == ["lloco", "rag"]
    lloco = pooled[0]
    assert lloco["n"] == 4 and lloco["f1"] == pytest.approx(0.75)
    assert lloco["context_tokens_mean"] == pytest.approx(15.0)
    assert [p["offset"] for p in lloco["settings"]["parts"]] == [0, 2]
    assert question_scores(lloco) == {"q0": 1.0, "q1": 0.0, "q2": 1.0, "q3": 1.0}
    assert not caplog.records
    # the same questions twice (before / after a change): two reports, as before
    assert len(load_reports([a, a])) == 4
    # parts that differ in a setting are pooled, with the difference logged and kept per part
    b.write_text(json.dumps({"dataset": "set", "runs": [_part("lloco", [1.0, 1.0], 2, group="other")]}))
    lloco = load_reports([a, b])[0]
    assert lloco["n"] == 4 and [p["group"] for p in lloco["settings"]["parts"]] == ["g", "other"]
    assert "differ in group" in caplog.text
