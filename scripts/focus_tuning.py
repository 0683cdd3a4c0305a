"""Tune the question-aware literal tokens (:mod:`lloco_runtime.focus`) on held-out *train* articles, never on the
eval sets: how often the gold answer survives whole among a focused sheet's literal tokens ("kept whole"),
the figure the focus constants (``DECAY_WORDS``, ``PRIOR_WEIGHT``, the IDF term weights) were chosen by.

The held-out articles are the reader's validation split (``squad_train`` split by article, ``--val-articles``
8, ``--seed`` 1), which no shipped adapter trains on. Three steps::

    # 1. a retrieval set in the eval format: the held-out articles whole, 200 of their questions
    python scripts/focus_tuning.py make-set /tmp/trainret
    # 2. retrieve for it (the run records each question's top-k chunk ids; any lloco mode retrieves)
    lloco eval /tmp/trainret --group trainret --mode lloco-adapter --limit 200 --json /tmp/trainret.json
    # 3. kept whole, with the shipped constants or others (--decay, --prior-weight, --no-idf)
    python scripts/focus_tuning.py retrieval /tmp/trainret.json
    python scripts/focus_tuning.py single --n 400 --decay 4 --prior-weight 0.5

``retrieval`` reads the chunks of a run from the store (the group the run names) and focuses them as
``lloco`` serves them (one shared budget for the top k, and per chunk for comparison); ``single`` focuses
held-out paragraphs alone (the gold eval's layout). Measured with the shipped encoder (session 12):

- retrieval, 200 questions (the answer is in the retrieved text for 85.0%): shared budget 68.5% with the
  shipped constants (decay 12, prior 0.2, IDF), 59.5% without IDF, 49.5% at decay 4 / prior 0.5; per chunk 50.0%;
- single, 400 paragraphs: 64.8% shipped, 55.5% at decay 4 / prior 0.5.
"""

from __future__ import annotations

import argparse
import json
import random
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from lloco_runtime import focus as F

CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "corpus" / "squad_train"


def held_out(corpus: Path, val_articles: int, seed: int) -> set[str]:
    """The doc ids of the reader's validation articles."""
    from lloco_runtime.training.squad import read_reading_items, split_by_article

    _, held = split_by_article(read_reading_items(corpus), val_articles=val_articles, seed=seed)
    return {it.doc_id for it in held}


def _rows(path: Path):
    with path.open(encoding="utf-8") as f:
        for line in f:
            yield json.loads(line)


def make_set(args: argparse.Namespace) -> None:
    docs = sorted(held_out(args.corpus, args.val_articles, args.seed))
    paras: dict[str, dict[int, str]] = defaultdict(dict)
    for r in _rows(args.corpus / "paragraphs.jsonl"):
        if r["doc_id"] in docs:
            paras[r["doc_id"]][r["paragraph_index"]] = r["context"]
    qa = [q for q in _rows(args.corpus / "qa.jsonl") if q["doc_id"] in docs]
    sample = random.Random(args.sample_seed).sample(qa, min(args.n, len(qa)))
    args.out.mkdir(parents=True, exist_ok=True)
    with (args.out / "documents.jsonl").open("w", encoding="utf-8") as f:
        for d in docs:
            text = "\n\n".join(paras[d][i] for i in sorted(paras[d]))
            f.write(json.dumps({"doc_id": d, "text": text}) + "\n")
    with (args.out / "questions.jsonl").open("w", encoding="utf-8") as f:
        for q in sample:
            f.write(json.dumps({**q, "options": None}) + "\n")
    print(f"{len(docs)} held-out articles, {len(sample)} of their {len(qa)} questions -> {args.out}")


class Kept:
    """Whether an answer survives whole in the literal tokens kept at some positions of some chunks."""

    def __init__(self) -> None:
        from lloco_runtime import ContextEncoder, load_model
        from lloco_runtime.runtime import shipped_encoder_dir

        self.enc = ContextEncoder.load(shipped_encoder_dir(), load_model())
        self.tok = self.enc.tokenizer

    def runs(self, segments: Sequence[Sequence[int]], keeps: Sequence[Sequence[int]]) -> list[str]:
        """The normalised text of each run of consecutive kept positions."""
        from lloco_runtime.evaluation.metrics import normalize_answer

        out = []
        for ids, keep in zip(segments, keeps, strict=True):
            run: list[int] = []
            for p in keep:
                if run and p != run[-1] + 1:
                    out.append(normalize_answer(self.tok.decode([ids[i] for i in run])))
                    run = []
                run.append(p)
            if run:
                out.append(normalize_answer(self.tok.decode([ids[i] for i in run])))
        return out

    def __call__(self, answers: Sequence[str], segments, keeps) -> bool:
        from lloco_runtime.evaluation.metrics import normalize_answer

        runs = self.runs(segments, keeps)
        golds = [g for g in (normalize_answer(a) for a in answers) if g]
        return any(g in r for g in golds for r in runs)


def _apply_constants(args: argparse.Namespace) -> None:
    if args.decay is not None:
        F.DECAY_WORDS = args.decay
    if args.prior_weight is not None:
        F.PRIOR_WEIGHT = args.prior_weight
    if args.no_idf:
        F.term_weights = lambda terms, _texts: dict.fromkeys(terms, 1.0)
    print(f"decay {F.DECAY_WORDS}, prior weight {F.PRIOR_WEIGHT}, IDF {'off' if args.no_idf else 'on'}")


def retrieval(args: argparse.Namespace) -> None:
    from lloco_runtime.store import CheatSheetStore

    _apply_constants(args)
    kept = Kept()
    run = json.loads(args.run.read_text())["runs"][0]
    store = CheatSheetStore(args.database_url, create=False)
    group = run["settings"]["group"]
    n = shared = chunk = in_text = 0
    for q in run["per_question"]:
        order = {c: i for i, c in enumerate(q["chunk_ids"])}
        chunks = sorted(store.list_chunks(group, chunk_ids=q["chunk_ids"]), key=lambda c: order[c.chunk_id])
        segs = [kept.tok(c.text, add_special_tokens=False)["input_ids"] for c in chunks]
        answers = q.get("answers") or []
        n += 1
        in_text += kept(answers, segs, [range(len(s)) for s in segs])
        shared += kept(answers, segs, kept.enc.shared_focus_positions(segs, q["question"]))
        chunk += kept(answers, segs, [kept.enc.focus_positions(s, q["question"]) for s in segs])

    def pct(k: int) -> float:
        return round(100 * k / max(n, 1), 1)

    print(f"{n} questions, answer kept whole: shared budget {pct(shared)}%, per chunk {pct(chunk)}%")
    print(f"(the answer is in the retrieved text at all for {pct(in_text)}%)")


def single(args: argparse.Namespace) -> None:
    from lloco_runtime.training.selector import _segments

    _apply_constants(args)
    kept = Kept()
    docs = held_out(args.corpus, args.val_articles, args.seed)
    paras = {
        (r["doc_id"], r["paragraph_index"]): r["context"]
        for r in _rows(args.corpus / "paragraphs.jsonl")
        if r["doc_id"] in docs
    }
    qa = [q for q in _rows(args.corpus / "qa.jsonl") if q["doc_id"] in docs]
    qs = random.Random(args.sample_seed).sample(qa, min(args.n, len(qa)))
    k = 0
    for q in qs:
        segs = [s for s, _ in _segments(kept.enc, paras[(q["doc_id"], q["paragraph_index"])])]
        k += kept(q["answers"], segs, kept.enc.shared_focus_positions(segs, q["question"]))
    print(f"{len(qs)} held-out paragraphs, answer kept whole {round(100 * k / max(len(qs), 1), 1)}%")


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", type=Path, default=CORPUS, help="squad_train directory (default: %(default)s)")
    p.add_argument("--val-articles", type=int, default=8, help="held-out articles (the reader's split)")
    p.add_argument("--seed", type=int, default=1, help="the split's seed (the reader's)")
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make-set", help="write the held-out retrieval set (documents.jsonl, questions.jsonl)")
    m.add_argument("out", type=Path)
    m.add_argument("--n", type=int, default=200)
    m.add_argument("--sample-seed", type=int, default=11)
    m.set_defaults(fn=make_set)
    for name, fn, help_ in (
        ("retrieval", retrieval, "kept whole on the top-k chunks of a lloco eval run over the held-out set"),
        ("single", single, "kept whole on held-out paragraphs read alone"),
    ):
        s = sub.add_parser(name, help=help_)
        if name == "retrieval":
            s.add_argument("run", type=Path, help="a `lloco eval --json` file over the make-set directory")
            s.add_argument("--database-url", default=None, help="the run's store (default: the embedded one)")
        else:
            s.add_argument("--n", type=int, default=400)
            s.add_argument("--sample-seed", type=int, default=12)
        s.add_argument("--decay", type=float, default=None, help="override focus.DECAY_WORDS")
        s.add_argument("--prior-weight", type=float, default=None, help="override focus.PRIOR_WEIGHT")
        s.add_argument("--no-idf", action="store_true", help="every question term weighs 1")
        s.set_defaults(fn=fn)
    args = p.parse_args(argv)
    args.fn(args)


if __name__ == "__main__":
    main()
