"""Reporting on evaluation runs (the running is :mod:`.harness`): the summary line, table and plot of a
``lloco eval`` run, and ``lloco eval-report``: tables with confidence intervals from saved ``lloco eval --json``
runs.

Evaluation sets that run in CPU time are small (tens of questions), so a difference of a few F1 points
between two modes can be noise. This module reads saved reports and prints, per mode, the headline score
with a 95% bootstrap confidence interval, and for each mode its **paired** difference to a baseline mode
(the same questions answered both ways, resampled together), which is what "mode A beats mode B" needs.
No model is loaded: the numbers come from the ``per_question`` records of the JSON files.

With ``--u`` it also prints the **reading utilisation**
``U = (F1 right sheets - F1 wrong sheets) / (F1 text - F1 none)`` (by default right = ``lloco-doc-adapter``,
wrong = ``lloco-doc-control``, text = ``full-adapter``, none = ``none``) over the questions all four modes
answered, with a paired bootstrap 95% interval (questions resampled jointly, U computed per resample) and the
paired interval of right - wrong. U near 0: the cheat sheets carry nothing the decoder uses; U near 1: as
much as the text. U is undefined when the text does not beat no context (denominator <= 0).
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import InputError

log = logging.getLogger(__name__)

#: per-question key of the headline score for each metric kind
SCORE_KEY = {"qa": "f1", "contains": "correct", "choice": "correct"}
#: name of the headline score for each metric kind
METRIC_NAMES = {"qa": "F1", "contains": "accuracy", "choice": "accuracy", "rouge": "ROUGE-L"}


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}"


# -- one run, as `lloco eval` prints it ---------------------------------------------------------------------


def main_score(report: dict[str, Any]) -> tuple[str, float | None]:
    """(name, value) of the set's headline metric: accuracy, ROUGE-L or F1."""
    metric = report["metric"]
    if metric in ("choice", "contains"):
        value = report["accuracy"]
    elif metric == "rouge":
        value = (report["rouge"] or {}).get("rougeL")
    else:
        value = report["f1"]
    return METRIC_NAMES.get(metric, "F1"), value


def summary_line(report: dict[str, Any]) -> str:
    """One line per mode: n, headline score (%), mean context tokens, latency and prefill time."""
    name, val = main_score(report)
    return (
        f"{report['dataset']} {report['mode']}: n={report['n']} {name}={_pct(val)} "
        f"context_tokens={report['context_tokens_mean']:.0f} latency={report['latency_s_mean']:.2f}s "
        f"prefill={report['prefill_s_mean']:.3f}s"
    )


def markdown_table(reports: list[dict[str, Any]], skipped: dict[str, str] | None = None) -> str:
    """One row per mode: n, the set's metric(s), mean context tokens, mean latency (scores in %)."""
    metric = reports[0]["metric"] if reports else "qa"
    head = {
        "qa": "F1 | EM",
        "contains": "accuracy | F1",
        "choice": "accuracy",
        "rouge": "ROUGE-1 | ROUGE-2 | ROUGE-L",
    }
    lines = [f"| mode | n | {head[metric]} | context tokens (mean) | latency s (mean) |"]
    cols = head[metric].count("|") + 1
    lines.append("|" + "---|" * (4 + cols))
    for r in reports:
        if metric == "qa":
            vals = [_pct(r["f1"]), _pct(r["em"])]
        elif metric == "contains":
            vals = [_pct(r["accuracy"]), _pct(r["f1"])]
        elif metric == "choice":
            vals = [_pct(r["accuracy"])]
        else:
            rg = r["rouge"] or {}
            vals = [_pct(rg.get("rouge1")), _pct(rg.get("rouge2")), _pct(rg.get("rougeL"))]
        ctx = r["context_tokens_mean"]
        lines.append(
            f"| {r['mode']} | {r['n']} | {' | '.join(vals)} | {0 if ctx is None else ctx:.0f} | "
            f"{r['latency_s_mean'] or 0:.2f} |"
        )
    for mode, why in (skipped or {}).items():
        lines.append(f"| {mode} (skipped: {why}) | 0 | {' | '.join(['-'] * cols)} | - | - |")
    return "\n".join(lines)


def plot(reports: list[dict[str, Any]], path: str) -> str:
    """PNG of the headline metric against mean context tokens per mode (log x; ``none`` drawn at 1)."""
    from ..plotting import pyplot

    plt = pyplot()

    fig, ax = plt.subplots(figsize=(6, 4))
    name = "score"
    for r in reports:
        name, val = main_score(r)
        if val is None:
            continue
        x = max(1.0, r["context_tokens_mean"] or 0.0)
        ax.scatter([x], [100 * val], s=40)
        ax.annotate(r["mode"], (x, 100 * val), textcoords="offset points", xytext=(5, 4), fontsize=9)
    ax.set_xscale("log")
    ax.set_xlabel("mean context tokens (text tokens or cheat-sheet vectors; log; 0 drawn at 1)")
    ax.set_ylabel(f"{name} (%)")
    title = reports[0]["dataset"] if reports else ""
    ax.set_title(f"{title}: {name} vs. context size (n={reports[0]['n'] if reports else 0})")
    ax.grid(True, which="both", alpha=0.3)
    lo = min((max(1.0, r["context_tokens_mean"] or 0.0) for r in reports), default=1.0)
    ax.set_xlim(left=max(0.5, lo / 2))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# -- saved runs, with confidence intervals (`lloco eval-report`) ---------------------------------------------


def load_reports(paths: Sequence[str | Path]) -> list[dict[str, Any]]:
    """The mode reports in ``paths`` (each a single report or ``{"dataset", "runs": [...]}``), in order."""
    reports: list[dict[str, Any]] = []
    for path in paths:
        p = Path(path)
        if not p.is_file():
            raise InputError(f"{p} is not a file; write one with `lloco eval ... --json {p}`")
        try:
            obj = json.loads(p.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise InputError(f"{p} is not a JSON report of `lloco eval --json` ({exc})") from None
        runs = obj.get("runs") if isinstance(obj, dict) else None
        items = runs if isinstance(runs, list) else [obj]
        for r in items:
            if not (isinstance(r, dict) and isinstance(r.get("per_question"), list) and "mode" in r):
                raise InputError(f"{p} is not a JSON report of `lloco eval --json` (no mode / per_question)")
            reports.append(r)
    if not reports:
        raise InputError("no evaluation runs in the given files")
    return pool_parts(reports)


#: settings that may differ between the parts of one run (``lloco eval --offset N --limit M``)
PART_SETTINGS = frozenset({"offset", "limit"})
#: per-question keys whose means make a mode report's summary fields
_MEAN_KEYS = {
    "f1": "f1",
    "em": "em",
    "accuracy": "correct",
    "context_tokens_mean": "context_tokens",
    "latency_s_mean": "latency_s",
    "prefill_s_mean": "prefill_s",
}


def _mean_of(rows: list[dict[str, Any]], key: str) -> float | None:
    vals = [r.get(key) for r in rows]
    if not vals or any(v is None for v in vals):
        return None
    return sum(float(v) for v in vals) / len(vals)


def _pooled(parts: list[dict[str, Any]], differing: Sequence[str] = ()) -> dict[str, Any]:
    """One report of a mode from its parts: questions concatenated, summary means recomputed."""
    rows = [row for part in parts for row in part["per_question"]]
    out = dict(parts[0])
    out.update({k: _mean_of(rows, key) for k, key in _MEAN_KEYS.items()})
    if out.get("rouge") is not None:
        out["rouge"] = {
            k: _mean_of([r.get("rouge") or {} for r in rows], k) for k in ("rouge1", "rouge2", "rougeL")
        }
    settings = dict(parts[0].get("settings") or {})
    settings["parts"] = [
        {
            "offset": (p.get("settings") or {}).get("offset", 0),
            "limit": (p.get("settings") or {}).get("limit"),
            "n": len(p["per_question"]),
            **{k: (p.get("settings") or {}).get(k) for k in differing},
        }
        for p in parts
    ]
    out.update({"n": len(rows), "settings": settings, "per_question": rows})
    return out


def pool_parts(reports: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Pool the parts of a run: reports of the same (dataset, mode) that answered disjoint questions (the
    parts of ``lloco eval --offset``) become one report, in the place of the first part, its settings those of the
    first part with ``parts`` listing each part's offset, limit, size and any setting in which the parts
    differ (logged as a warning: a path or an unused encoder may differ harmlessly, an adapter may not).
    Reports of a mode whose questions overlap (two runs of the same questions, e.g. before and after a
    change) stay separate."""
    groups: dict[tuple[Any, Any], list[dict[str, Any]]] = {}
    for r in reports:
        groups.setdefault((r.get("dataset"), r["mode"]), []).append(r)
    pooled: dict[tuple[Any, Any], dict[str, Any]] = {}
    for key, parts in groups.items():
        if len(parts) < 2:
            continue
        qids = [str(row["qid"]) for p in parts for row in p["per_question"]]
        if len(set(qids)) != len(qids):
            continue
        first = {k: v for k, v in (parts[0].get("settings") or {}).items() if k not in PART_SETTINGS}
        diff: set[str] = set()
        for p in parts[1:]:
            other = {k: v for k, v in (p.get("settings") or {}).items() if k not in PART_SETTINGS}
            diff |= {k for k in set(first) | set(other) if first.get(k) != other.get(k)}
        if diff:
            log.warning(
                "pooling %d runs of mode %r on %r (disjoint questions) whose settings differ in %s; "
                "each part's values are in settings.parts",
                len(parts),
                key[1],
                key[0],
                ", ".join(sorted(diff)),
            )
        pooled[key] = _pooled(parts, sorted(diff))
    out, seen = [], set()
    for r in reports:
        key = (r.get("dataset"), r["mode"])
        if key in pooled:
            if key not in seen:
                seen.add(key)
                out.append(pooled[key])
        else:
            out.append(r)
    return out


def question_scores(report: dict[str, Any]) -> dict[str, float]:
    """``qid -> headline score`` (F1, or correctness for choice/contains sets; ROUGE-L for summaries)."""
    metric = report.get("metric", "qa")
    out: dict[str, float] = {}
    for row in report["per_question"]:
        if metric == "rouge":
            value = (row.get("rouge") or {}).get("rougeL")
        else:
            value = row.get(SCORE_KEY.get(metric, "f1"))
        if value is not None:
            out[str(row["qid"])] = float(value)
    return out


def bootstrap_ci(
    values: Sequence[float], *, resamples: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the mean (None for fewer than two values)."""
    n = len(values)
    if n < 2:
        return None
    rng = random.Random(seed)
    means = sorted(sum(values[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    lo = means[int((1 - level) / 2 * resamples)]
    hi = means[min(resamples - 1, int((1 + level) / 2 * resamples))]
    return lo, hi


def paired_delta(a: dict[str, float], b: dict[str, float], **kw: Any) -> dict[str, Any] | None:
    """Mean of ``a - b`` over the questions both answered, with its bootstrap interval."""
    common = sorted(set(a) & set(b))
    if not common:
        return None
    diffs = [a[q] - b[q] for q in common]
    return {"n": len(common), "delta": sum(diffs) / len(diffs), "ci95": bootstrap_ci(diffs, **kw)}


def _ci(ci: tuple[float, float] | None) -> str:
    return "" if ci is None else f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def summary_rows(reports: list[dict[str, Any]], baseline: str | None = None) -> list[dict[str, Any]]:
    """One row per report: score with CI, context tokens, latency, paired delta to ``baseline``."""
    by_mode = {(r.get("dataset"), r["mode"]): r for r in reports}
    rows = []
    for r in reports:
        scores = question_scores(r)
        vals = list(scores.values())
        row: dict[str, Any] = {
            "dataset": r.get("dataset"),
            "mode": r["mode"],
            "n": len(vals),
            "score": sum(vals) / len(vals) if vals else None,
            "ci95": bootstrap_ci(vals),
            "context_tokens_mean": r.get("context_tokens_mean"),
            "latency_s_mean": r.get("latency_s_mean"),
            "delta": None,
        }
        base = by_mode.get((r.get("dataset"), baseline)) if baseline else None
        if base is not None and base is not r:
            row["delta"] = paired_delta(scores, question_scores(base))
        rows.append(row)
    return rows


def markdown(reports: list[dict[str, Any]], baseline: str | None = None) -> str:
    """Markdown table: score [95% CI], paired delta to the baseline [95% CI], tokens, latency."""
    rows = summary_rows(reports, baseline)
    metric = reports[0].get("metric", "qa")
    name = METRIC_NAMES.get(metric, "score")
    delta_head = f" | vs {baseline} (paired)" if baseline else ""
    lines = [
        f"| set | mode | n | {name} [95% CI]{delta_head} | context tokens (mean) | latency s (mean) |",
        "|---|---|---:|---:|" + ("---:|" if baseline else "") + "---:|---:|",
    ]
    for r in rows:
        delta = ""
        if baseline:
            d = r["delta"]
            delta = " | " + ("-" if d is None else f"{100 * d['delta']:+.1f}{_ci(d['ci95'])}")
        ctx = r["context_tokens_mean"]
        lat = r["latency_s_mean"]
        lines.append(
            f"| {r['dataset']} | {r['mode']} | {r['n']} | {_pct(r['score'])}{_ci(r['ci95'])}{delta} | "
            f"{'-' if ctx is None else f'{ctx:.0f}'} | {'-' if lat is None else f'{lat:.2f}'} |"
        )
    return "\n".join(lines)


# -- before / after: the same modes in two sets of runs ------------------------------------------------------


def against_rows(reports: list[dict[str, Any]], others: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (dataset, mode) found in both ``reports`` and ``others`` (e.g. runs after a change and before
    it): both scores and the paired difference ``reports - others`` over the questions both answered."""
    before = {(r.get("dataset"), r["mode"]): r for r in others}
    rows = []
    for r in reports:
        b = before.get((r.get("dataset"), r["mode"]))
        if b is None:
            continue
        a_s, b_s = question_scores(r), question_scores(b)
        rows.append(
            {
                "dataset": r.get("dataset"),
                "mode": r["mode"],
                "score": sum(a_s.values()) / len(a_s) if a_s else None,
                "against_score": sum(b_s.values()) / len(b_s) if b_s else None,
                "delta": paired_delta(a_s, b_s),
            }
        )
    if not rows:
        modes = sorted({f"{r.get('dataset')}/{r['mode']}" for r in reports})
        raise InputError(
            f"no (dataset, mode) of {modes} is in the --against runs; compare runs of the same modes"
        )
    return rows


def against_markdown(rows: list[dict[str, Any]]) -> str:
    """Markdown table of :func:`against_rows`."""
    lines = [
        "| set | mode | score | against | paired difference [95% CI] (n) |",
        "|---|---|---:|---:|---:|",
    ]
    for r in rows:
        d = r["delta"]
        diff = "-" if d is None else f"{100 * d['delta']:+.1f}{_ci(d['ci95'])} ({d['n']})"
        lines.append(
            f"| {r['dataset']} | {r['mode']} | {_pct(r['score'])} | {_pct(r['against_score'])} | {diff} |"
        )
    return "\n".join(lines)


# -- reading utilisation ------------------------------------------------------------------------------------

#: (right, wrong, text, none) modes of U by default
U_MODES = ("lloco-doc-adapter", "lloco-doc-control", "full-adapter", "none")
U_ROLES = ("right", "wrong", "text", "none")


def parse_u_modes(spec: str | Sequence[str] | None) -> tuple[str, str, str, str]:
    """``"right,wrong,text,none"`` -> the four mode names (None: :data:`U_MODES`); InputError otherwise."""
    if spec is None:
        return U_MODES
    modes = [m.strip() for m in (spec.split(",") if isinstance(spec, str) else spec)]
    if len(modes) != 4 or not all(modes):
        raise InputError(
            f"--u-modes takes four comma-separated modes, right,wrong,text,none (default {','.join(U_MODES)})"
        )
    return modes[0], modes[1], modes[2], modes[3]


def utilisation(
    right: Mapping[str, float],
    wrong: Mapping[str, float],
    text: Mapping[str, float],
    none: Mapping[str, float],
    *,
    resamples: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """U = (right - wrong) / (text - none) over the questions in all four ``qid -> score`` maps.

    Returns the four means, ``reading`` (right - wrong) and ``text_gain`` (text - none) with their paired
    bootstrap intervals, ``u`` and ``u_ci95``: a paired bootstrap (the same resampled questions in all four
    modes, U computed per resample). ``u`` is None with a reason in ``undefined`` when text - none <= 0;
    resamples whose denominator is <= 0 are counted in ``u_undefined_resamples`` and left out of the
    interval, which is None (with a reason in ``u_ci_undefined``) when they exceed the interval's tail.
    """
    common = sorted(set(right) & set(wrong) & set(text) & set(none))
    n = len(common)
    out: dict[str, Any] = {
        "n": n,
        **{role: None for role in U_ROLES},
        "reading": None,
        "reading_ci95": None,
        "text_gain": None,
        "text_gain_ci95": None,
        "u": None,
        "u_ci95": None,
        "u_undefined_resamples": None,
        "undefined": None,
        "u_ci_undefined": None,
    }
    if not n:
        out["undefined"] = "no question was answered in all four modes"
        return out
    cols = [[float(d[q]) for q in common] for d in (right, wrong, text, none)]
    means = [sum(c) / n for c in cols]
    out.update(dict(zip(U_ROLES, means, strict=True)))
    reading = [a - b for a, b in zip(cols[0], cols[1], strict=True)]
    gain = [a - b for a, b in zip(cols[2], cols[3], strict=True)]
    kw = {"resamples": resamples, "seed": seed, "level": level}
    out["reading"], out["reading_ci95"] = means[0] - means[1], bootstrap_ci(reading, **kw)
    out["text_gain"], out["text_gain_ci95"] = means[2] - means[3], bootstrap_ci(gain, **kw)
    if out["text_gain"] <= 0:
        out["undefined"] = (
            f"the text does not beat no context on these questions (text {100 * means[2]:.1f} - "
            f"none {100 * means[3]:.1f} = {100 * out['text_gain']:+.1f} <= 0), so there is "
            "nothing for the cheat sheets to recover"
        )
        return out
    out["u"] = out["reading"] / out["text_gain"]
    if n < 2:
        out["u_ci_undefined"] = "a single question"
        return out
    rng = random.Random(seed)
    us: list[float] = []
    for _ in range(resamples):
        idx = [rng.randrange(n) for _ in range(n)]
        den = sum(gain[i] for i in idx)
        if den > 0:
            us.append(sum(reading[i] for i in idx) / den)
    out["u_undefined_resamples"] = resamples - len(us)
    if resamples - len(us) > (1 - level) / 2 * resamples:
        out["u_ci_undefined"] = (
            f"text - none <= 0 in {resamples - len(us)} of {resamples} resamples: the "
            "denominator is too uncertain for an interval (more questions needed)"
        )
        return out
    us.sort()
    m = len(us)
    out["u_ci95"] = (us[int((1 - level) / 2 * m)], us[min(m - 1, int((1 + level) / 2 * m))])
    return out


def utilisation_rows(
    reports: list[dict[str, Any]], modes: Sequence[str] = U_MODES, **kw: Any
) -> list[dict[str, Any]]:
    """U per dataset of ``reports`` (``modes`` = right, wrong, text, none). A dataset without a run of one of
    the modes gets ``missing``; InputError if no dataset has all four."""
    modes = parse_u_modes(modes)
    rows = []
    for dataset in dict.fromkeys(r.get("dataset") for r in reports):
        by_mode = {r["mode"]: r for r in reports if r.get("dataset") == dataset}
        row: dict[str, Any] = {
            "dataset": dataset,
            "modes": dict(zip(U_ROLES, modes, strict=True)),
            "metric": next(iter(by_mode.values())).get("metric", "qa"),
        }
        missing = [m for m in dict.fromkeys(modes) if m not in by_mode]
        if missing:
            row["missing"] = missing
        else:
            row.update(utilisation(*(question_scores(by_mode[m]) for m in modes), **kw))
        rows.append(row)
    if all("missing" in r for r in rows):
        lacking = sorted({m for r in rows for m in r["missing"]})
        raise InputError(
            f"U needs runs of the modes {', '.join(modes)} (right, wrong, text, none); missing: "
            f"{', '.join(lacking)}. Run them with `lloco eval DATASET --compare {','.join(modes)} "
            "--json PATH` (see `lloco eval --help` for the adapters they need)"
        )
    return rows


def _num(v: float | None, ci: tuple[float, float] | None = None, *, signed: bool = False) -> str:
    if v is None:
        return "n/a"
    return f"{100 * v:+.1f}{_ci(ci)}" if signed else f"{100 * v:.1f}{_ci(ci)}"


def utilisation_markdown(rows: list[dict[str, Any]]) -> str:
    """A table of U per dataset and one plain line each saying what U is (or why it is undefined)."""
    modes = rows[0]["modes"]
    name = METRIC_NAMES.get(rows[0]["metric"], "score")
    lines = [
        f"Reading utilisation U = ({name} right - {name} wrong) / ({name} text - {name} none); "
        + ", ".join(f"{role} = {mode}" for role, mode in modes.items())
        + "; over the questions all four answered, paired bootstrap 95% intervals.",
        "",
        "| set | n | right | wrong | text | none | right - wrong [95% CI] | text - none [95% CI] | U [95% CI] |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    notes = []
    for r in rows:
        if "missing" in r:
            notes.append(f"{r['dataset']}: U not computed, no run of {', '.join(r['missing'])}")
            continue
        u = "undefined" if r["u"] is None else f"{r['u']:.2f}"
        if r["u_ci95"] is not None:
            u += f" [{r['u_ci95'][0]:.2f}, {r['u_ci95'][1]:.2f}]"
        lines.append(
            f"| {r['dataset']} | {r['n']} | {_num(r['right'])} | {_num(r['wrong'])} | {_num(r['text'])} | "
            f"{_num(r['none'])} | {_num(r['reading'], r['reading_ci95'], signed=True)} | "
            f"{_num(r['text_gain'], r['text_gain_ci95'], signed=True)} | {u} |"
        )
        if r["u"] is None:
            notes.append(f"{r['dataset']}: U is undefined: {r['undefined']}")
        else:
            ci = (
                f"95% CI [{r['u_ci95'][0]:.2f}, {r['u_ci95'][1]:.2f}]"
                if r["u_ci95"] is not None
                else f"no interval: {r['u_ci_undefined']}"
            )
            notes.append(f"{r['dataset']}: U = {r['u']:.2f} ({ci}) over {r['n']} questions")
    return "\n".join(lines + [""] + notes)
