"""Reading-comprehension training data in the SQuAD layout (``shared/corpus/squad_train``).

A folder with ``paragraphs.jsonl`` (``{"doc_id", "paragraph_index", "context"}``) and ``qa.jsonl``
(``{"doc_id", "paragraph_index", "qid", "question", "answers"}``). Every usable question becomes one
:class:`ReadingItem`: the paragraph, the question and its answers. Articles (``doc_id``) are split into
training and held-out sets whole, so validation never sees a paragraph of a training article.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from ..textcheck import iter_jsonl

PARAGRAPHS = "paragraphs.jsonl"
QUESTIONS = "qa.jsonl"


@dataclass(frozen=True)
class ReadingItem:
    """One question about one paragraph."""

    doc_id: str
    paragraph_index: int
    context: str
    question: str
    answers: tuple[str, ...]
    qid: str = ""


def _rows(path: Path) -> list[dict]:
    """The JSON objects of a JSONL file (the project's one reader: a malformed line names file and line)."""
    out = []
    for _, where, obj in iter_jsonl(path):
        if not isinstance(obj, dict):
            raise InputError(f"{where}: not a JSON object")
        out.append(obj)
    return out


def read_reading_items(folder: str | Path, *, limit: int | None = None) -> list[ReadingItem]:
    """All usable questions of a SQuAD-layout folder, in file order (answers checked against the paragraph).

    Rows with a missing field, an unknown paragraph or no answer occurring in the paragraph are skipped;
    an empty result is an :class:`InputError` that names the expected layout.
    """
    root = Path(folder)
    if not (root / PARAGRAPHS).is_file() or not (root / QUESTIONS).is_file():
        raise InputError(
            f"{root} is not a reading-comprehension folder: it needs {PARAGRAPHS} "
            '({"doc_id", "paragraph_index", "context"} per line) and '
            + QUESTIONS
            + ' ({"doc_id", "paragraph_index", "question", "answers"} per line), as in '
            "shared/corpus/squad_train"
        )
    paragraphs: dict[tuple[str, int], str] = {}
    for row in _rows(root / PARAGRAPHS):
        doc, idx, ctx = row.get("doc_id"), row.get("paragraph_index"), row.get("context")
        if isinstance(doc, str) and isinstance(idx, int) and isinstance(ctx, str) and ctx.strip():
            paragraphs[(doc, idx)] = ctx
    items: list[ReadingItem] = []
    for row in _rows(root / QUESTIONS):
        key = (row.get("doc_id"), row.get("paragraph_index"))
        ctx = paragraphs.get(key)  # type: ignore[arg-type]
        q, answers = row.get("question"), row.get("answers")
        if ctx is None or not isinstance(q, str) or not q.strip() or not isinstance(answers, list):
            continue
        answers = tuple(a.strip() for a in answers if isinstance(a, str) and a.strip() and a.strip() in ctx)
        if not answers:
            continue
        items.append(ReadingItem(str(key[0]), int(key[1]), ctx, q.strip(), answers, str(row.get("qid", ""))))
        if limit is not None and len(items) >= limit:
            break
    if not items:
        raise InputError(
            f"no usable question in {root / QUESTIONS} (each needs a known doc_id/paragraph_index, "
            "a question and an answer that occurs in the paragraph)"
        )
    return items


def split_by_article(
    items: Sequence[ReadingItem], *, val_articles: int, seed: int = 0
) -> tuple[list[ReadingItem], list[ReadingItem]]:
    """``(train, held_out)``: ``val_articles`` whole articles (``doc_id``) go to the held-out side."""
    docs = sorted({it.doc_id for it in items})
    if val_articles >= len(docs):
        raise InputError(f"cannot hold out {val_articles} of {len(docs)} articles; lower the validation size")
    rng = random.Random(seed)
    held = set(rng.sample(docs, val_articles)) if val_articles > 0 else set()
    return [it for it in items if it.doc_id not in held], [it for it in items if it.doc_id in held]
