"""``lloco eval-report``: tables with confidence intervals from saved ``lloco eval --json`` runs.

Evaluation sets that run in CPU time are small (tens of questions), so a difference of a few F1 points
between two modes can be noise. This module reads saved reports and prints, per mode, the headline score
with a 95% bootstrap confidence interval, and for each mode its **paired** difference to a baseline mode
(the same questions answered both ways, resampled together), which is what "mode A beats mode B" needs.
No model is loaded: the numbers come from the ``per_question`` records of the JSON files.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import InputError

#: per-question key of the headline score for each metric kind
SCORE_KEY = {"qa": "f1", "contains": "correct", "choice": "correct"}


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
    return reports


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


def bootstrap_ci(values: Sequence[float], *, resamples: int = 2000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float] | None:
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


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}"


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
            "dataset": r.get("dataset"), "mode": r["mode"], "n": len(vals),
            "score": sum(vals) / len(vals) if vals else None, "ci95": bootstrap_ci(vals),
            "context_tokens_mean": r.get("context_tokens_mean"), "latency_s_mean": r.get("latency_s_mean"),
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
    name = {"qa": "F1", "contains": "accuracy", "choice": "accuracy", "rouge": "ROUGE-L"}.get(metric, "score")
    delta_head = f" | vs {baseline} (paired)" if baseline else ""
    lines = [f"| set | mode | n | {name} [95% CI]{delta_head} | context tokens (mean) | latency s (mean) |",
             "|---|---|---:|---:|" + ("---:|" if baseline else "") + "---:|---:|"]
    for r in rows:
        delta = ""
        if baseline:
            d = r["delta"]
            delta = " | " + ("-" if d is None else f"{100 * d['delta']:+.1f}{_ci(d['ci95'])}")
        ctx = r["context_tokens_mean"]
        lat = r["latency_s_mean"]
        lines.append(f"| {r['dataset']} | {r['mode']} | {r['n']} | {_pct(r['score'])}{_ci(r['ci95'])}{delta} | "
                     f"{'-' if ctx is None else f'{ctx:.0f}'} | {'-' if lat is None else f'{lat:.2f}'} |")
    return "\n".join(lines)
