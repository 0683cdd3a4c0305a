"""Extractive questions generated from a group's chunks, and the fine-tuning pairs built from them."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import pytest

from lloco_runtime import ConfigError
from lloco_runtime.service import LLoCOService
from lloco_runtime.store import CheatSheetStore
from lloco_runtime.store.inputs import DocumentInput
from lloco_runtime.training.finetune import FinetuneConfig, build_pairs
from lloco_runtime.training.questions import KINDS, chunk_questions, generate_questions, sentences

TEXT = (
    "The observatory on Kell Hill was completed in 1893 by the astronomer Margaret Ellison. "
    "It housed 3 telescopes and employed 14 assistants during its first decade. "
    "On March 4, 1921, a storm destroyed the north dome of the building. "
    "The restoration cost $45,000 and was paid for by the Royal Astronomical Society. "
    "Visitors from Edinburgh arrived by train every Sunday in the summer. "
    "About 40% of the plates taken there are now kept at the museum in Glasgow."
)

LIGHTHOUSE = (
    "The lighthouse at Carrow Point was built in 1852 by the engineer Thomas Stevenson. Its keeper was "
    "Elspeth Morrow, who lived there with 4 children. The lamp burned paraffin oil and flashed twice "
    "every fifteen seconds. On June 12, 1901, a storm broke the lantern glass and the light went dark "
    "for 3 nights. "
)
MILL = (
    "The old mill on the river Tay ground oats for the village of Dunmore. It was rebuilt in 1790 after a "
    "fire destroyed the wheel. The miller was a man named Angus Reid who kept 12 hives of bees behind the "
    "wheel house. In 1834 the mill was sold to the Perth Grain Company for $2,400. "
)


@dataclass
class Chunk:
    chunk_id: int
    text: str


def test_answers_are_exact_spans_of_their_chunk():
    qs = chunk_questions(TEXT, 5)
    assert len(qs) >= 8
    for q in qs:
        assert q.chunk_id == 5 and TEXT[q.start : q.end] == q.answer and q.answer in q.sentence
        assert q.sentence in TEXT and q.question.endswith("?") and q.answer not in q.question
        assert q.kind in KINDS


def test_kinds_cover_numbers_dates_and_names():
    by_answer = {q.answer: q for q in chunk_questions(TEXT, 0)}
    assert by_answer["1893"].kind == "year" and "in what year" in by_answer["1893"].question
    assert by_answer["March 4, 1921"].kind == "date"
    assert by_answer["March 4, 1921"].question == "A storm destroyed the north dome of the building when?"
    assert by_answer["14"].kind == "count" and "how many assistants" in by_answer["14"].question
    assert by_answer["$45,000"].kind == "amount" and "how much" in by_answer["$45,000"].question
    assert by_answer["40%"].question.startswith("About what percentage")
    assert by_answer["Margaret Ellison"].kind == "person"
    assert by_answer["Margaret Ellison"].question.endswith("in 1893 by which astronomer?")
    assert by_answer["Edinburgh"].kind == "name" and by_answer["Glasgow"].kind == "place"
    assert by_answer["Kell Hill"].question.startswith("The observatory where was completed")
    assert by_answer["Royal Astronomical Society"].question == (
        "The restoration cost $45,000 and was paid for by what?"
    )
    assert not {"The", "It", "On", "About", "Visitors", "Sunday", "March"} & set(
        by_answer
    )  # sentence starts, days


def test_generation_is_deterministic_and_seeded():
    chunks = [Chunk(i, t) for i, t in enumerate([TEXT, LIGHTHOUSE, MILL])]
    a = generate_questions(chunks, seed=3)
    assert a == generate_questions(chunks, seed=3)
    assert 0 < len(a) <= 2 * len(chunks)
    assert [q.question for q in a] != [q.question for q in generate_questions(chunks, seed=4)] or len(a) < 3
    assert len(generate_questions(chunks, seed=3, per_chunk=1)) == 3
    assert len(generate_questions(chunks, seed=3, limit=2)) == 2
    # chunks contribute different kinds before a second question of the same kind
    per_chunk = {}
    for q in a:
        per_chunk.setdefault(q.chunk_id, []).append(q.kind)
    assert all(len(set(k)) == len(k) for k in per_chunk.values())


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   \n ",
        "!!!! ### 12345 ... ???",
        "asdf qwer 99 zz. 7 8 9.",
        "lowercase words only without any names or numbers in them at all.",
    ],
)
def test_no_questions_from_empty_or_garbage_text(text):
    assert chunk_questions(text, 0) == []


def test_chunk_boundaries_and_abbreviations():
    # a sentence cut by the chunk start (lowercase) or end (no final stop) gives no question
    assert chunk_questions("of the war with 200 ships in 1812. ", 0) == []
    assert chunk_questions("The fleet of Admiral Nelson had 27 ships and sailed in 1805 toward", 0) == []
    text = "Dr. Watson met Mr. Holmes in 1881. They shared rooms in London for 8 years."
    assert [text[a:b] for a, b in sentences(text)] == [
        "Dr. Watson met Mr. Holmes in 1881.",
        "They shared rooms in London for 8 years.",
    ]


def test_pairs_config_is_validated():
    with pytest.raises(ConfigError, match="pairs must be one of"):
        FinetuneConfig(pairs="questions")


@pytest.fixture
def service(pg_url, tiny_lloco):
    store = CheatSheetStore(pg_url, schema=f"q_{uuid.uuid4().hex[:8]}")
    store.ingest(
        [
            DocumentInput("lighthouse", LIGHTHOUSE),
            DocumentInput("mill", MILL),
            DocumentInput("observatory", TEXT),
        ],
        group="g",
        encoder=tiny_lloco.encoder,
    )
    yield LLoCOService(tiny_lloco, store)
    store.drop_schema()
    store.close()


def test_build_pairs_without_qa_uses_generated_questions(service, tmp_path):
    chunks = {c.chunk_id: c for c in service.store.list_chunks("g")}
    cfg = FinetuneConfig(top_k=1, pairs="generated")
    pairs, bad, source = build_pairs(service.lloco, service, "g", "default", None, cfg, progress=False)
    assert bad == [] and source.startswith("generated")
    made = {(q.question, q.answer): q.chunk_id for q in generate_questions(chunks.values(), seed=cfg.seed)}
    generated = [p for p in pairs if (p.question, p.answer) in made]
    assert len(generated) == len(made) > 0
    for p in generated:  # top_k=1: the source chunk replaces the hit whenever retrieval misses it
        src = made[(p.question, p.answer)]
        assert p.chunk_ids == [src] and p.answer in chunks[src].text and p.text == chunks[src].text
    # few questions from three short documents: topped up with self-supervised pairs, and said so
    assert source.startswith("generated+self-supervised (only ") and len(pairs) > len(generated)
    auto, _, auto_source = build_pairs(
        service.lloco, service, "g", "default", None, FinetuneConfig(top_k=3), progress=False
    )
    assert auto_source == source and all(len(p.chunk_ids) <= 3 for p in auto)
    for p in auto:  # with retrieval: the source chunk is among the pair's chunks, in reading order
        if (p.question, p.answer) in made:
            assert made[(p.question, p.answer)] in p.chunk_ids and p.answer in p.text
            assert p.chunk_ids == [c for c in chunks if c in p.chunk_ids]
    old, _, old_source = build_pairs(
        service.lloco, service, "g", "default", None, FinetuneConfig(pairs="self-supervised"), progress=False
    )
    assert old_source == "self-supervised" and not any(
        p.question.endswith("?") and "how many" in p.question for p in old
    )
    qa = tmp_path / "qa.jsonl"
    qa.write_text('{"doc_id": "mill", "question": "Who was the miller?", "answers": ["Angus Reid"]}\n')
    with pytest.raises(ConfigError, match="ignore the QA file"):
        build_pairs(service.lloco, service, "g", "default", str(qa), cfg, progress=False)
    assert (
        build_pairs(service.lloco, service, "g", "default", str(qa), FinetuneConfig(), progress=False)[2]
        == "qa"
    )
