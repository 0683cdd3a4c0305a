"""The evaluation articles are not in the training data.

Reading is measured on SQuAD dev articles (``shared/eval/squad_v1_1``: whole articles; ``squad_v1_1_gold``:
their paragraphs, doc_id ``squadv1.1-<Title>#p<i>``). Training reads ``shared/corpus``: the SQuAD train
split (``squad_train/paragraphs.jsonl``, doc_id ``squadv1.1-train-<Title>``) and the other dev articles
(``wiki/*.txt``, ``wiki_qa_train.jsonl``). No evaluation title may appear there and no evaluation paragraph
may occur there verbatim, or a score would measure memory instead of reading.

``shared/`` sits beside the checkout (``<repo>/../shared``, as CI places it); without it the tests skip.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parent.parent.parent / "shared"
EVAL_ARTICLES = SHARED / "eval" / "squad_v1_1" / "documents.jsonl"
EVAL_GOLD = SHARED / "eval" / "squad_v1_1_gold" / "documents.jsonl"
TRAIN_PARAGRAPHS = SHARED / "corpus" / "squad_train" / "paragraphs.jsonl"
WIKI = SHARED / "corpus" / "wiki"
WIKI_QA = SHARED / "corpus" / "wiki_qa_train.jsonl"

pytestmark = pytest.mark.skipif(
    not all(p.is_file() for p in (EVAL_ARTICLES, EVAL_GOLD, TRAIN_PARAGRAPHS)),
    reason=f"the shared data ({SHARED}: eval/squad_v1_1, eval/squad_v1_1_gold, corpus/squad_train) is not "
    "beside the checkout",
)


def _rows(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _title(doc_id: str, pattern: str) -> str:
    m = re.fullmatch(pattern, doc_id)
    assert m, f"doc_id {doc_id!r} does not have the expected form {pattern!r}"
    return m.group(1)


def _paragraphs(text: str) -> list[str]:
    return [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]


def eval_titles() -> dict[str, set[str]]:
    return {
        "squad_v1_1": {_title(r["doc_id"], r"squadv1\.1-(.+)") for r in _rows(EVAL_ARTICLES)},
        "squad_v1_1_gold": {_title(r["doc_id"], r"squadv1\.1-(.+)#p\d+") for r in _rows(EVAL_GOLD)},
    }


def eval_paragraphs() -> set[str]:
    out = {r["text"].strip() for r in _rows(EVAL_GOLD)}
    for r in _rows(EVAL_ARTICLES):
        out.update(_paragraphs(r["text"]))
    return out


def test_the_two_eval_sets_are_the_same_articles_and_are_not_empty():
    titles = eval_titles()
    assert len(titles["squad_v1_1"]) == 20 and titles["squad_v1_1_gold"] == titles["squad_v1_1"]
    gold_titles = {r["title"] for r in _rows(EVAL_GOLD) if "title" in r}
    assert gold_titles <= titles["squad_v1_1"]


def test_no_eval_article_is_in_the_squad_train_split():
    train = {_title(r["doc_id"], r"squadv1\.1-train-(.+)") for r in _rows(TRAIN_PARAGRAPHS)}
    assert len(train) > 400
    for name, titles in eval_titles().items():
        assert not titles & train, f"{name} articles in corpus/squad_train: {sorted(titles & train)[:5]}"


def test_no_eval_paragraph_occurs_verbatim_in_the_squad_train_split():
    train = {r["context"].strip() for r in _rows(TRAIN_PARAGRAPHS)}
    evals = eval_paragraphs()
    assert len(train) > 18000 and len(evals) >= 649
    shared = evals & train
    assert not shared, (
        f"{len(shared)} eval paragraphs occur in corpus/squad_train, e.g. {next(iter(shared))[:80]!r}"
    )


@pytest.mark.skipif(not (WIKI.is_dir() and WIKI_QA.is_file()), reason=f"{WIKI} / {WIKI_QA} absent")
def test_no_eval_article_or_paragraph_is_in_the_wiki_training_corpus():
    wiki = {_title(p.stem, r"squadv1\.1-(.+)"): p for p in WIKI.glob("*.txt")}
    qa = {_title(r["doc_id"], r"squadv1\.1-(.+)") for r in _rows(WIKI_QA)}
    assert wiki and qa <= set(wiki)
    for name, titles in eval_titles().items():
        assert not titles & set(wiki), f"{name} articles in corpus/wiki: {sorted(titles & set(wiki))[:5]}"
    wiki_paragraphs = {p for path in wiki.values() for p in _paragraphs(path.read_text(encoding="utf-8"))}
    assert not eval_paragraphs() & wiki_paragraphs
