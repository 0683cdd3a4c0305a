"""Question-aware literal tokens ("focus"): at answer time a sheet's literal tokens are chosen near the words
the question shares with the chunk; same shape, same pooled vectors, read as stored when that cannot hold."""

from __future__ import annotations

import pytest
import torch

from lloco_runtime import ConfigError, ContextEncoder, EncoderConfig, InputError, LLoCO
from lloco_runtime.focus import (
    question_terms,
    shared_focus_positions,
    term_match,
    term_weights,
    weighted_match,
)
from lloco_runtime.store import ChunkSheet

TEXT = (
    "The canal was opened in 1794 by the engineer Margaret Eddowes of Marrick, and the canal company "
    "paid her 300 pounds. Later the trust restored it. The engineer Margaret Eddowes also built the "
    "aqueduct over the River Brindle, which was later widened by the county to carry the heavier boats "
    "of the coal trade."
)
CFG = {
    "segment_length": 64,
    "summary_length": 4,
    "literal_tokens": 8,
    "pooling": "mean",
    "summary_layer": 0,
    "connector": "mlp",
}


def _enc(host, **kw) -> ContextEncoder:
    return ContextEncoder(host, EncoderConfig(**{**CFG, **kw}))


def _ids(host, text=TEXT, n=64) -> list[int]:
    return host.tokenizer(text, add_special_tokens=False)["input_ids"][:n]


def _kept(host, enc, ids, keep) -> str:
    return host.tokenizer.decode([ids[i] for i in keep])


def test_question_terms_drop_function_words_and_match_inflections():
    assert question_terms("What did the county widen over the River?") == {"county", "widen", "river"}
    assert term_match("River,", frozenset({"river"})) == 1.0
    assert term_match("engineers", frozenset({"engineer"})) == 0.7  # same first letters
    assert term_match("the", frozenset({"the"})) == 0.0  # a stop word never matches


def test_focus_keeps_the_words_near_the_question_and_the_offline_budget(tiny_host):
    enc = _enc(tiny_host)
    ids = _ids(tiny_host)
    assert len(ids) == 64
    offline = _kept(tiny_host, enc, ids, enc.literal_positions(ids))
    river = enc.focus_positions(ids, "Which river did the aqueduct go over?")
    opened = enc.focus_positions(ids, "In what year was the canal opened?")
    for keep in (river, opened):
        assert len(keep) == enc.literal_budget(64) == 8 and keep == sorted(set(keep))
    assert "Brindle" in _kept(tiny_host, enc, ids, river)
    assert "Brindle" not in offline  # the offline choice (names and numbers first) spends the budget earlier
    assert "1794" in _kept(tiny_host, enc, ids, opened)
    assert river != opened


def test_a_question_without_matching_words_keeps_the_salient_words(tiny_host):
    enc = _enc(tiny_host)
    ids = _ids(tiny_host)
    kept = _kept(tiny_host, enc, ids, enc.focus_positions(ids, "Why?"))
    assert "1794" in kept or "Margaret" in kept or "300" in kept


def test_focus_sheet_has_the_stored_shape_and_the_same_pooled_vectors(tiny_host):
    enc = _enc(tiny_host)
    ids = _ids(tiny_host)
    stored = enc.compress_chunks([ids])[0]
    focused = enc.focus_sheet(ids, "Which river did the aqueduct go over?")
    assert focused.shape == stored.shape == (4 + 8, tiny_host.hidden_size)
    emb = tiny_host.model.get_input_embeddings().weight.detach()
    vocab = {tuple(emb[i].tolist()) for i in ids}

    def pooled(sheet):
        return [r for r in sheet if tuple(r.tolist()) not in vocab]

    a, b = pooled(stored), pooled(focused)
    assert len(a) == len(b) == 4 and all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    # the literal rows are the focused tokens' own embeddings, in text order after their group's vector
    keep = enc.focus_positions(ids, "Which river did the aqueduct go over?")
    literal = [r for r in focused if tuple(r.tolist()) in vocab]
    assert all(torch.equal(r, emb[ids[k]]) for r, k in zip(literal, keep, strict=True))


def test_only_encoders_that_pool_input_embeddings_with_literals_can_focus(tiny_host):
    assert _enc(tiny_host).can_focus
    for kw in ({"summary_layer": 2}, {"literal_tokens": 0}):
        enc = _enc(tiny_host, **kw)
        assert not enc.can_focus
        with pytest.raises(ConfigError, match="summary_layer=0"):
            enc.focus_sheet(_ids(tiny_host), "Which river?")
    summary = ContextEncoder(tiny_host, EncoderConfig(segment_length=32, summary_length=4))
    assert not summary.can_focus


def test_the_runtime_focuses_sheets_that_come_with_their_text(make_tiny_host):
    host = make_tiny_host()
    enc = _enc(host)
    lloco = LLoCO(host, enc)
    question = "Which river did the aqueduct go over?"
    sheets = lloco.compress(TEXT)
    assert sheets.texts is not None and len(sheets.texts) == len(sheets.tensors)
    chunk = enc.split(TEXT)[0]
    item = ChunkSheet(sheets.tensors[0], chunk.text)
    expected = enc.focus_sheet(chunk.token_ids, question)
    assert lloco.focuses
    assert torch.equal(lloco.sheet_for(item, question), expected)
    assert not torch.equal(expected, sheets.tensors[0])
    # CheatSheets from compress() are focused too, chunk by chunk with focus_budget="chunk"
    lloco.focus_budget = "chunk"
    assert torch.equal(lloco._context(sheets, question)[0], expected)
    lloco.focus_budget = "shared"
    # plain tensors are read as stored; so is everything with focus off
    assert torch.equal(lloco._context([sheets.tensors[0]], question)[0], sheets.tensors[0])
    lloco.focus = False
    assert not lloco.focuses
    assert torch.equal(lloco.sheet_for(item, question), sheets.tensors[0])
    # the prompt carries exactly the focused sheet's positions
    lloco.focus = True
    assert lloco.prompt(question, [item]).context_vectors == expected.shape[0]


def test_a_chunk_text_that_no_longer_fits_its_sheet_is_read_as_stored(make_tiny_host):
    host = make_tiny_host()
    lloco = LLoCO(host, _enc(host))
    stored = lloco.compress(TEXT).tensors[0]
    edited = ChunkSheet(stored, TEXT[:40])  # fewer tokens than the sheet was made from
    assert torch.equal(lloco.sheet_for(edited, "Which river?"), stored)
    assert torch.equal(lloco.sheet_for(ChunkSheet(stored, TEXT), "   "), stored)  # no question


def test_the_diagnosis_counts_answers_kept_by_the_question_aware_choice(tiny_host):
    from lloco_runtime.training.selector import answers_kept
    from lloco_runtime.training.squad import ReadingItem

    enc = _enc(tiny_host)
    text = tiny_host.tokenizer.decode(_ids(tiny_host))
    item = ReadingItem("d", 0, text, "Which river did the aqueduct go over?", ("Brindle",), "q1")
    assert answers_kept(enc, [item], focus=True) == [True]
    assert answers_kept(enc, [item]) == [False]  # the offline choice spends its budget elsewhere


OTHER = (
    "Bread is baked from flour, water and salt; the dough rests for an hour, then it is shaped by hand and "
    "put in a hot oven, where the crust turns brown and crisp while the crumb stays soft and full of air."
)


def test_a_shared_budget_goes_to_the_chunk_the_question_points_to(tiny_host):
    enc = _enc(tiny_host)
    canal, bread = _ids(tiny_host), _ids(tiny_host, OTHER)
    question = "Which river did the aqueduct go over?"
    shared = enc.shared_focus_positions([bread, canal], question)
    own = [enc.focus_positions(ids, question) for ids in (bread, canal)]
    assert sum(map(len, shared)) == sum(map(len, own))  # the same positions in all
    assert all(k == sorted(set(k)) for k in shared)
    assert len(shared[1]) > len(own[1]) and len(shared[0]) < len(own[0])
    assert "Brindle" in _kept(tiny_host, enc, canal, shared[1])
    assert set(own[1]) <= set(shared[1])  # the chunk's own choice is kept, and more around it


def test_shared_focus_keeps_each_chunk_within_its_length():
    # two one-word chunks against a long one that holds the question word: nothing kept twice or past the end
    words = [[[0], [1], [2], [3], [4], [5]], [[0]], [[0]]]
    texts = [[" the", " River", " Brindle", " runs", " past", " here"], [" bread"], [" salt"]]
    chunks = [(w, t, [0.0] * len(t), 1, sum(map(len, w))) for w, t in zip(words, texts, strict=True)]
    keep = shared_focus_positions(chunks, "Which river?")
    assert sum(map(len, keep)) == 3 and all(len(set(k)) == len(k) for k in keep)
    assert all(max(k, default=-1) < n for k, (*_, n) in zip(keep, chunks, strict=True))
    assert 2 in keep[0]  # the word after the question's


def test_a_question_word_in_every_chunk_weighs_less_than_one_that_tells_them_apart():
    terms = question_terms("Which canal did the aqueduct cross?")
    texts = [[" the", " canal", " aqueduct"], [" the", " canal", " locks"], [" canals", " boats"]]
    w = term_weights(terms, texts)
    assert w["aqueduct"] == pytest.approx(1.0)  # in one chunk of three
    assert 0.0 < w["canal"] < 0.25  # in all three (one by its plural)
    assert w["cross"] == 0.0  # in none
    assert term_weights(terms, texts[:1]) == {t: 1.0 for t in terms}  # one chunk: every term counts fully
    assert weighted_match("Canals,", w) == pytest.approx(0.7 * w["canal"])
    assert weighted_match("the", w) == 0.0


def test_question_words_found_in_every_chunk_keep_their_full_weight():
    # a needle retrieved in several chunks: no word tells the chunks apart, so no word is discounted (the
    # weights are relative to the most telling term; unnormalised they would all fall to about 0.09)
    terms = question_terms("What is the best thing to do in San Francisco?")
    needle = [" The", " best", " thing", " to", " do", " in", " San", " Francisco", " is", " eat"]
    w = term_weights(terms, [needle, needle[::-1], needle + [" cake"]])
    assert w == {t: pytest.approx(1.0) for t in terms}
    w = term_weights(terms, [needle, [" best", " thing"], [" the", " best"]])  # "san" in one chunk only
    assert w["san"] == w["francisco"] == pytest.approx(1.0) and 0.0 < w["best"] < w["thing"] < 1.0


def test_the_shared_budget_follows_the_word_that_tells_the_chunks_apart():
    # every chunk names the topic ("canal", over and over in two of them); only one holds "aqueduct", and its
    # neighbour is the answer: without the weights the repeated topic word takes the whole budget
    def chunk(words):
        texts = [f" {x}" for x in words]
        return ([[i] for i in range(len(texts))], texts, [0.0] * len(texts), 1, len(texts))

    chunks = [
        chunk(["canal", "boats", "canal", "coal", "canal", "mills", "canal"]),
        chunk(["canal", "locks", "canal", "stone", "canal", "later", "canal"]),
        chunk(["the", "aqueduct", "Brindle", "spans", "the", "old", "canal"]),
    ]
    keep = shared_focus_positions(chunks, "Which aqueduct is on the canal?")
    assert keep == [[], [], [0, 2, 3]]  # "Brindle" and its neighbours; nothing from the topic-only chunks


def test_the_runtime_shares_the_budget_of_the_sheets_of_one_prompt(make_tiny_host):
    host = make_tiny_host()
    enc = _enc(host)
    lloco = LLoCO(host, enc)
    assert lloco.focus_budget == "shared"
    question = "Which river did the aqueduct go over?"
    items = []
    for text in (OTHER, TEXT):
        chunk = enc.split(text)[0]
        items.append(ChunkSheet(enc.compress_chunks([chunk.token_ids])[0], chunk.text))
    shared = lloco._context(items, question)
    assert sum(s.shape[0] for s in shared) == sum(i.sheet.shape[0] for i in items)
    assert shared[1].shape[0] > items[1].sheet.shape[0]
    expected = enc.focus_sheets([enc.split(t)[0].token_ids for t in (OTHER, TEXT)], question)
    assert all(torch.equal(a, b) for a, b in zip(shared, expected, strict=True))
    assert lloco.prompt(question, items).context_vectors == sum(i.sheet.shape[0] for i in items)
    # a plain tensor among them, and a sheet whose text was edited, are read as stored
    edited = ChunkSheet(items[0].sheet, OTHER[:30])
    mixed = lloco._context([edited, items[1], items[0].sheet], question)
    assert torch.equal(mixed[0], items[0].sheet) and torch.equal(mixed[2], items[0].sheet)
    # each chunk its own budget: the stored shapes
    lloco.focus_budget = "chunk"
    own = lloco._context(items, question)
    assert [s.shape for s in own] == [i.sheet.shape for i in items]
    with pytest.raises(InputError, match="focus_budget must be one of shared, chunk"):
        LLoCO(host, enc, focus_budget="global")


def test_the_cli_focus_options_change_a_copy_of_the_runtime(make_tiny_host, tiny_model_dir, monkeypatch):
    import argparse

    from lloco_runtime import runtime
    from lloco_runtime.cli import _common

    host = make_tiny_host()
    base = LLoCO(host, _enc(host))
    monkeypatch.setattr(runtime, "load_default_runtime", lambda: base)
    p = argparse.ArgumentParser()
    _common.add_focus_option(p)
    chunk = _common.load_runtime(p.parse_args(["--focus-budget", "chunk"]))
    off = _common.load_runtime(p.parse_args(["--no-focus"]))
    assert (chunk.focus_budget, chunk.focus, base.focus_budget) == ("chunk", True, "shared")
    assert not off.focus and base.focus
    assert _common.load_runtime(p.parse_args([])) is base
    with pytest.raises(SystemExit):
        p.parse_args(["--focus-budget", "global"])
