"""Where reading from cheat sheets loses answers: selection (the answer is not among the literal tokens) or
reading (it is, and the decoder still misses it).

For each question of a one-paragraph-per-document eval set (``shared/eval/squad_v1_1_gold``), checks whether
its answer survives whole as consecutive literal tokens of the paragraph's cheat sheets (by the encoder's own
selection, and by the rules for comparison), then splits the F1 of saved ``lloco eval --json`` runs by that.

    python scripts/reading_diagnosis.py ../shared/eval/squad_v1_1_gold --encoder ENC --limit 600 \
        docs/eval/gold/lit4x28.json docs/eval/gold/full-adapter.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lloco_runtime import ContextEncoder, load_model
from lloco_runtime.runtime import shipped_encoder_dir
from lloco_runtime.training.selector import answers_kept, selector_scores
from lloco_runtime.training.squad import ReadingItem


def _runs(path: Path) -> list[dict]:
    d = json.loads(path.read_text())
    return d.get("runs", [d])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("dataset", type=Path, help="folder with documents.jsonl and questions.jsonl")
    p.add_argument("runs", type=Path, nargs="*", help="`lloco eval --json` files to split by kept / not kept")
    p.add_argument("--encoder", default=None, help="encoder folder (default: the shipped one)")
    p.add_argument("--limit", type=int, default=None, help="first N questions (as `lloco eval --limit`)")
    p.add_argument(
        "--focus",
        action="store_true",
        help="split by the literal tokens chosen for each question (as served)",
    )
    args = p.parse_intermixed_args()
    docs = {}
    for line in (args.dataset / "documents.jsonl").read_text().splitlines():
        r = json.loads(line)
        docs[r["doc_id"]] = r["text"]
    qs = [
        json.loads(line)
        for line in (args.dataset / "questions.jsonl").read_text().splitlines()
        if line.strip()
    ]
    qs = qs[: args.limit] if args.limit else qs
    items = [
        ReadingItem(q["doc_id"], 0, docs[q["doc_id"]], q["question"], tuple(q["answers"]), q["qid"])
        for q in qs
    ]
    host = load_model()
    encoder = ContextEncoder.load(args.encoder or shipped_encoder_dir(), host)
    rules = answers_kept(encoder, items)
    if args.focus:
        own = answers_kept(encoder, items, focus=True)
    elif encoder.selector is not None:
        own = answers_kept(encoder, items, selector_scores(encoder, [it.context for it in items]))
    else:
        own = rules
    n = len(items)
    print(
        f"{n} questions; encoder {encoder.fingerprint[:12]} "
        f"({'question-aware' if args.focus else encoder.config.literal_selector} selection, "
        f"{encoder.config.literal_tokens} literal tokens per {encoder.config.segment_length}-token segment)"
    )
    print(
        f"answers kept whole as literal tokens: {100 * sum(own) / n:.1f}% (this encoder), "
        f"{100 * sum(rules) / n:.1f}% (rules)"
    )
    kept = {it.qid: k for it, k in zip(items, own, strict=True)}
    for path in args.runs:
        for run in _runs(path):
            rows = [q for q in run["per_question"] if q["qid"] in kept]
            yes = [q["f1"] for q in rows if kept[q["qid"]]]
            no = [q["f1"] for q in rows if not kept[q["qid"]]]
            print(
                f"{path.name} {run['mode']:>22}: F1 {100 * sum(yes) / max(1, len(yes)):5.1f} where kept "
                f"({len(yes)}), {100 * sum(no) / max(1, len(no)):5.1f} where not ({len(no)})"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
