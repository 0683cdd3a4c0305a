"""PNG figures for ``lloco bench --plot``: latency against context length, compression ratio against F1.

Eval results are the JSON files ``lloco eval --json`` writes: one mode's report, or ``{"runs": [...]}``
with ``--compare``. Each run becomes a point: its compression ratio (source text tokens per context
position fed to the decoder; 1 for text modes) against its headline score.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

TEXT_MODES = ("full", "rag")


def _plt():
    from ..plotting import pyplot

    return pyplot()


def plot_latency(report: dict[str, Any], path: str | Path) -> Path:
    """Time to first token against context length: full text vs. LLoCO (log-log), like the paper's figure."""
    plt = _plt()
    rows = report.get("prefill", [])
    beyond = report.get("prefill_beyond_window", [])
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if rows:
        ax.plot(
            [r["context_tokens"] for r in rows],
            [r["full_s"] for r in rows],
            "o-",
            color="tab:red",
            label="full text in the prompt",
        )
    settings = report.get("settings", {})
    ratio = settings.get("prefill_segment_length", 512) / settings.get("prefill_summary_length", 16)
    pts = [(r["context_tokens"], r["lloco_s"]) for r in rows + beyond if r.get("lloco_s")]
    if pts:
        ax.plot(*zip(*pts), "s-", color="tab:blue", label=f"LLoCO cheat sheets ({ratio:.0f}x)")
    shipped = [(r["context_tokens"], r["shipped_lloco_s"]) for r in rows + beyond if r.get("shipped_lloco_s")]
    if shipped:
        sr = report.get("machine", {})
        label = f"LLoCO, shipped encoder ({sr.get('segment_length', '?')}->{sr.get('summary_length', '?')})"
        ax.plot(*zip(*shipped), "^--", color="tab:green", label=label)
    window = report.get("machine", {}).get("context_window")
    if window:
        ax.axvline(window, color="gray", linestyle=":", label=f"decoder window ({window:,} tokens)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("source context (tokens)")
    ax.set_ylabel("time to first token (s, median)")
    m = report.get("machine", {})
    ax.set_title(
        f"{m.get('model', 'decoder')} on {m.get('device', '?')}, {m.get('torch_threads', '?')} threads"
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def load_eval_points(paths: list[str | Path], default_ratio: float | None = None) -> list[dict[str, Any]]:
    """``[{dataset, mode, ratio, score, metric, n, context_tokens}]`` from ``lloco eval --json`` files.

    ``default_ratio`` (the encoder's segment/summary ratio) is used for cheat-sheet runs whose rows do not
    record the source tokens behind their vectors (``lloco-doc`` modes)."""
    from ..evaluation.report import main_score

    points = []
    for p in paths:
        data = json.loads(Path(p).read_text())
        runs = data["runs"] if isinstance(data, dict) and "runs" in data else [data]
        for r in runs:
            if not isinstance(r, dict) or "mode" not in r:
                continue
            name, val = main_score(r)
            if val is None:
                continue
            points.append(
                {
                    "dataset": r.get("dataset"),
                    "mode": r["mode"],
                    "ratio": compression_ratio(r, default_ratio),
                    "score": val,
                    "metric": name,
                    "n": r.get("n"),
                    "context_tokens": r.get("context_tokens_mean"),
                    "file": str(p),
                }
            )
    return points


def compression_ratio(run: dict[str, Any], default_ratio: float | None = None) -> float | None:
    """Source text tokens per decoder context position for one eval run (1.0 for text modes; None without
    context)."""
    if run.get("mode") == "none":
        return None
    if run.get("mode") in TEXT_MODES:
        return 1.0
    rows = run.get("per_question") or []
    raw = [r.get("raw_context_tokens") or r.get("doc_tokens") for r in rows]
    ctx = [r.get("context_tokens") for r in rows]
    pairs = [(a, b) for a, b in zip(raw, ctx) if a and b]
    if pairs:
        return sum(a for a, _ in pairs) / sum(b for _, b in pairs)
    enc = (run.get("settings") or {}).get("compression_ratio") or default_ratio
    return float(enc) if enc else float("nan")


def plot_eval(points: list[dict[str, Any]], path: str | Path) -> Path:
    """Compression ratio (log x) against the headline score, one marker per dataset, labelled by mode; the
    no-context score (mode ``none``) as a dashed line."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    datasets = sorted({str(p["dataset"]) for p in points})
    markers = "osD^v<>P*X"
    for i, ds in enumerate(datasets):
        for p in points:
            if str(p["dataset"]) == ds and p["ratio"] is None:
                ax.axhline(
                    100 * p["score"], linestyle="--", linewidth=1, color=f"C{i}", label=f"{ds}: no context"
                )
        pts = [
            p
            for p in points
            if str(p["dataset"]) == ds and p["ratio"] is not None and p["ratio"] == p["ratio"]
        ]
        ax.scatter(
            [p["ratio"] for p in pts],
            [100 * p["score"] for p in pts],
            marker=markers[i % len(markers)],
            s=45,
            label=ds,
            color=f"C{i}",
        )
        for p in pts:
            ax.annotate(
                p["mode"],
                (p["ratio"], 100 * p["score"]),
                textcoords="offset points",
                xytext=(5, 3),
                fontsize=8,
            )
    ax.set_xscale("log")
    top = max(
        [p["ratio"] for p in points if p["ratio"] is not None and p["ratio"] == p["ratio"]], default=1.0
    )
    ticks = [t for t in (1, 2, 4, 8, 16, 32, 64, 128) if t <= 2 * top]
    ax.set_xticks(ticks, [f"{t}x" for t in ticks])
    ax.minorticks_off()
    ax.set_xlim(0.8, 1.5 * top)
    ax.set_xlabel("compression ratio (source tokens per context position; text modes = 1x)")
    metrics = sorted({p["metric"] for p in points})
    ax.set_ylabel(f"{' / '.join(metrics)} (%)")
    ax.set_title("quality against compression (lloco eval results)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
