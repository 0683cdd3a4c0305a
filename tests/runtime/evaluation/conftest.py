"""Synthetic evaluation sets for the harness tests (two documents each)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

LIGHTHOUSE = (
    "The lighthouse on Gull Island was built in 1871 by the engineer Mara Quist. Its lamp burned whale "
    "oil until 1902, when a kerosene burner replaced it. The keeper, Tobias Wren, wrote the weather in a "
    "ledger every night for forty years. Storms in the winter of 1888 cracked the lantern glass twice. "
    "Ships passing the island counted the flashes: three short and one long. "
) * 2
ORCHARD = (
    "The orchard at Fenwick Farm grows apples, pears and quinces on twelve acres. The oldest tree, a pear "
    "planted in 1790, still bears fruit every second year. Bees from six hives pollinate the blossoms in "
    "April. The harvest festival is held on the first Saturday of October, and cider is pressed in the "
    "old stone barn by the river. "
) * 2


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def make_dataset(root: Path, *, mc: bool = False) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    write_jsonl(
        root / "documents.jsonl",
        [{"doc_id": "lighthouse", "text": LIGHTHOUSE}, {"doc_id": "orchard", "text": ORCHARD}],
    )
    if mc:
        qs = [
            {
                "doc_id": "lighthouse",
                "qid": "m1",
                "question": "Who built the lighthouse?",
                "options": ["Tobias Wren", "Mara Quist", "A whaler", "Nobody"],
                "gold_label": "B",
                "answers": ["Mara Quist"],
            },
            {
                "doc_id": "orchard",
                "qid": "m2",
                "question": "When is the harvest festival?",
                "options": ["In April", "In October"],
                "gold_label": "B",
                "answers": ["In October"],
            },
        ]
    else:
        qs = [
            {
                "doc_id": "lighthouse",
                "qid": "q1",
                "question": "Who built the lighthouse?",
                "answers": ["Mara Quist", "the engineer Mara Quist"],
                "options": None,
            },
            {
                "doc_id": "lighthouse",
                "qid": "q2",
                "question": "When was the kerosene burner installed?",
                "answers": ["1902"],
                "options": None,
            },
            {
                "doc_id": "orchard",
                "qid": "q3",
                "question": "How many hives are there?",
                "answers": ["six"],
                "options": None,
            },
        ]
    write_jsonl(root / "questions.jsonl", qs)
    return root


@pytest.fixture
def qa_dir(tmp_path) -> Path:
    return make_dataset(tmp_path / "tinyqa")


@pytest.fixture
def mc_dir(tmp_path) -> Path:
    return make_dataset(tmp_path / "tinymc", mc=True)
