"""Evaluation sets: a folder with ``documents.jsonl`` and ``questions.jsonl`` (the ``shared/eval`` format).

``load_dataset`` reads and validates everything before any model is loaded, so a missing file, a malformed
line or a question about a document that is not there fails at once with an :class:`InputError` naming the
file and line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..store.inputs import DocumentInput, read_jsonl
from ..textcheck import iter_jsonl
from .metrics import letters

METRICS = ("auto", "qa", "choice", "contains", "rouge")
# Sets whose main metric is not obvious from their fields (see shared/eval/README.md).
KNOWN_METRICS = {"qmsum": "rouge", "niah": "contains", "longeval_lines": "contains"}


@dataclass(frozen=True)
class Question:
    """One evaluation question. ``gold_label`` is the correct option letter of a multiple-choice question."""

    qid: str
    doc_id: str
    question: str
    answers: tuple[str, ...]
    options: tuple[str, ...] | None = None
    gold_label: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Dataset:
    """A validated evaluation set: documents by id (file order), questions, and the metric to score by."""

    name: str
    path: Path
    documents: dict[str, DocumentInput]
    questions: list[Question]
    metric: str

    def documents_for(self, questions: list[Question] | None = None) -> list[DocumentInput]:
        """The documents ``questions`` refer to (all documents if None), in file order."""
        if questions is None:
            return list(self.documents.values())
        wanted = {q.doc_id for q in questions}
        return [d for d in self.documents.values() if d.doc_id in wanted]


def _str(obj: dict, key: str, where: str) -> str:
    v = obj.get(key)
    if isinstance(v, int) and not isinstance(v, bool):
        v = str(v)
    if not isinstance(v, str) or not v.strip():
        raise InputError(f"{where}: '{key}' must be a non-empty string")
    return v


def _question(obj: Any, where: str) -> Question:
    if not isinstance(obj, dict):
        raise InputError(f"{where}: each line must be a JSON object")
    qid, doc_id, text = _str(obj, "qid", where), _str(obj, "doc_id", where), _str(obj, "question", where)
    answers = obj.get("answers", [])
    if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
        raise InputError(f"{where}: 'answers' must be a list of strings")
    options, label = obj.get("options"), obj.get("gold_label")
    if options is not None:
        if not isinstance(options, list) or len(options) < 2 or not all(isinstance(o, str) for o in options):
            raise InputError(f"{where}: 'options' must be null or a list of at least two strings")
        if len(options) > 26:
            raise InputError(f"{where}: at most 26 options (letters A-Z)")
        if not isinstance(label, str) or label.strip().upper() not in letters(len(options)):
            raise InputError(
                f"{where}: a multiple-choice question needs 'gold_label', one of "
                f"{', '.join(letters(len(options)))}; got {label!r}"
            )
        label = label.strip().upper()
        options = tuple(options)
    elif not answers:
        raise InputError(f"{where}: 'answers' is empty (and there are no 'options' to score by)")
    else:
        label = None
    extra = {
        k: v
        for k, v in obj.items()
        if k not in ("qid", "doc_id", "question", "answers", "options", "gold_label")
    }
    return Question(qid, doc_id, text, tuple(answers), options, label, extra)


def read_questions(path: Path) -> list[Question]:
    """Questions from JSON Lines (InputError naming the line for anything malformed or duplicated)."""
    out: list[Question] = []
    seen: dict[str, int] = {}
    for lineno, where, obj in iter_jsonl(path):
        q = _question(obj, where)
        if q.qid in seen:
            raise InputError(f"{where}: duplicate qid {q.qid!r} (first on line {seen[q.qid]})")
        seen[q.qid] = lineno
        out.append(q)
    if not out:
        raise InputError(f"{path}: no questions (the file is empty)")
    return out


def choose_metric(name: str, questions: list[Question], metric: str = "auto") -> str:
    """``auto``: ``choice`` when questions carry options, a known set's metric by folder name, else ``qa``."""
    if metric not in METRICS:
        raise InputError(f"unknown metric {metric!r}; use one of {', '.join(METRICS)}")
    if metric != "auto":
        if metric == "choice" and any(q.options is None for q in questions):
            raise InputError("--metric choice needs 'options' and 'gold_label' on every question")
        return metric
    if all(q.options is not None for q in questions):
        return "choice"
    return KNOWN_METRICS.get(name, "qa")


def load_dataset(path: str | Path, *, metric: str = "auto") -> Dataset:
    """Read and validate ``path/documents.jsonl`` and ``path/questions.jsonl`` (no model is touched)."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise InputError(f"{root}: no such dataset folder (it needs documents.jsonl and questions.jsonl)")
    missing = [n for n in ("documents.jsonl", "questions.jsonl") if not (root / n).is_file()]
    if missing:
        raise InputError(
            f"{root}: missing {' and '.join(missing)}; a dataset folder holds documents.jsonl "
            "({doc_id, text} per line) and questions.jsonl ({doc_id, qid, question, answers, "
            "options} per line)"
        )
    docs: dict[str, DocumentInput] = {}
    for d in read_jsonl(root / "documents.jsonl"):
        if d.doc_id in docs:
            raise InputError(f"{d.source}: duplicate doc_id {d.doc_id!r}")
        docs[d.doc_id] = d
    questions = read_questions(root / "questions.jsonl")
    orphans = [q for q in questions if q.doc_id not in docs]
    if orphans:
        shown = ", ".join(f"{q.qid} -> {q.doc_id!r}" for q in orphans[:5])
        raise InputError(
            f"{root / 'questions.jsonl'}: {len(orphans)} question(s) refer to documents missing "
            f"from documents.jsonl ({shown}{', ...' if len(orphans) > 5 else ''})"
        )
    name = root.resolve().name
    return Dataset(
        name=name,
        path=root,
        documents=docs,
        questions=questions,
        metric=choose_metric(name, questions, metric),
    )
