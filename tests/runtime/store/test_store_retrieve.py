"""Retrieval: dense, full-text and hybrid; lazy cheat sheets; corruption and fingerprint checks."""

from __future__ import annotations

import pytest
import torch
from sqlalchemy import func, select, update

from lloco_runtime import context_sheets
from lloco_runtime.errors import CheatSheetError, FingerprintMismatchError, InputError, NotFoundError
from lloco_runtime.store import ChunkSheet


@pytest.mark.parametrize("mode", ["dense", "fulltext", "hybrid"])
@pytest.mark.parametrize(
    "query,doc",
    [
        ("galaxy telescopes stars", "astronomy"),
        ("sourdough bread dough", "cooking"),
        ("goalkeeper penalty striker", "football"),
    ],
)
def test_modes_find_the_right_document(shared_filled, mode, query, doc):
    res = shared_filled.retrieve(query, group="g", mode=mode, top_k=2)
    assert res.mode == mode and res.group == "g" and res.collection == "default"
    assert res.chunks and res.chunks[0].doc_id == doc
    scores = [c.score for c in res.chunks]
    assert scores == sorted(scores, reverse=True)
    assert all(c.cheat_sheet is not None for c in res.chunks)
    assert res.context_tokens == 4 * len(res.chunks)
    assert res.raw_context_tokens == sum(c.n_tokens for c in res.chunks) > res.context_tokens


def test_dense_scores_are_cosine_similarities(shared_filled, embedder):
    res = shared_filled.retrieve("The Andromeda galaxy", group="g", mode="dense", top_k=3, ef_search=100)
    assert all(-1.0 <= c.score <= 1.0 for c in res.chunks)
    q = embedder.embed(["The Andromeda galaxy"])[0]
    top = res.chunks[0]
    expected = float(q @ embedder.embed([top.text])[0])
    assert top.score == pytest.approx(expected, abs=5e-3)  # halfvec storage


def test_hybrid_fuses_both_rankings(shared_filled):
    dense = shared_filled.retrieve("bake the loaf", group="g", mode="dense", top_k=5).chunk_ids
    text = shared_filled.retrieve("bake the loaf", group="g", mode="fulltext", top_k=5).chunk_ids
    hybrid = shared_filled.retrieve("bake the loaf", group="g", mode="hybrid", top_k=5)
    assert set(hybrid.chunk_ids) <= set(dense) | set(text)
    assert hybrid.chunks[0].chunk_id in set(dense) & set(text)


def test_fulltext_without_matches_is_empty(shared_filled):
    assert shared_filled.retrieve("zzzqqq", group="g", mode="fulltext").chunks == []
    assert shared_filled.retrieve("the and of", group="g", mode="fulltext").chunks == []  # only stop words


def test_groups_are_isolated(filled, docs, encoder):
    filled.ingest(docs[:1], group="other", collection="c2", encoder=encoder)
    res = filled.retrieve("penalty goalkeeper", group="other", collection="c2", top_k=10)
    assert {c.doc_id for c in res.chunks} == {"astronomy"}


def test_lazy_cheat_sheets_and_fetch_by_id(shared_filled, encoder):
    res = shared_filled.retrieve("galaxy", group="g", top_k=3, load_cheat_sheets=False)
    assert all(c.cheat_sheet is None for c in res.chunks)
    sheets = shared_filled.cheat_sheets(res.chunk_ids[::-1], encoder_fingerprint=encoder.fingerprint)
    assert [tuple(s.shape) for s in sheets] == [(4, encoder.hidden_size)] * 3
    with pytest.raises(CheatSheetError, match="does not exist"):
        shared_filled.cheat_sheets([10**12])


def test_bad_arguments(shared_filled):
    for k in (0, 1001, -1, 2.5, True):
        with pytest.raises(InputError, match="top_k"):
            shared_filled.retrieve("galaxy", group="g", top_k=k)
    with pytest.raises(InputError, match="ef_search"):
        shared_filled.retrieve("galaxy", group="g", ef_search=0)
    with pytest.raises(InputError, match="mode"):
        shared_filled.retrieve("galaxy", group="g", mode="sparse")
    with pytest.raises(InputError, match="empty"):
        shared_filled.retrieve("  ", group="g")
    with pytest.raises(NotFoundError, match="lloco groups list"):
        shared_filled.retrieve("galaxy", group="missing")
    with pytest.raises(NotFoundError):
        shared_filled.retrieve("galaxy", group="g", collection="missing")


def test_corrupted_cheat_sheet_bytes_raise_a_clear_error(filled):
    t = filled.tables
    res = filled.retrieve("galaxy", group="g", top_k=1, load_cheat_sheets=False)
    cid = res.chunk_ids[0]
    with filled.engine.begin() as conn:  # flip the last byte of the payload
        blob = conn.execute(
            select(t.cheat_sheets.c.data).where(t.cheat_sheets.c.chunk_id == cid)
        ).scalar_one()
        bad = blob[:-1] + bytes([blob[-1] ^ 0xFF])
        conn.execute(update(t.cheat_sheets).where(t.cheat_sheets.c.chunk_id == cid).values(data=bad))
    with pytest.raises(CheatSheetError, match=rf"chunk {cid} .*checksum"):
        filled.retrieve("galaxy", group="g", top_k=1)
    with filled.engine.begin() as conn:  # truncated bytes
        conn.execute(
            update(t.cheat_sheets)
            .where(t.cheat_sheets.c.chunk_id == cid)
            .values(data=func.substring(t.cheat_sheets.c.data, 1, 10))
        )
    with pytest.raises(CheatSheetError, match="corrupted"):
        filled.cheat_sheets([cid])


def test_fingerprint_mismatch(filled, encoder):
    with pytest.raises(FingerprintMismatchError, match="lloco recompress --group"):
        filled.retrieve("galaxy", group="g", encoder_fingerprint="0" * 64)
    ok = filled.retrieve("galaxy", group="g", encoder_fingerprint=encoder.fingerprint)
    assert ok.chunks
    t = filled.tables
    with filled.engine.begin() as conn:  # one chunk from another encoder: mixing is refused too
        conn.execute(
            update(t.cheat_sheets)
            .where(t.cheat_sheets.c.chunk_id == ok.chunk_ids[0])
            .values(encoder_fingerprint="f" * 64)
        )
    with pytest.raises(FingerprintMismatchError, match="different encoders"):
        filled.cheat_sheets(ok.chunk_ids)


def test_chunks_without_cheat_sheets(store, docs, encoder):
    store.ingest(docs[:1], group="g", encoder=encoder, compress=False)
    res = store.retrieve("galaxy", group="g", load_cheat_sheets=False)
    assert res.chunks
    with pytest.raises(CheatSheetError, match="without compression"):
        store.cheat_sheets(res.chunk_ids)


@pytest.mark.parametrize("mode", ["dense", "fulltext", "hybrid"])
def test_doc_and_chunk_id_restrictions_apply_before_top_k(shared_filled, mode):
    """Restricting to a document that ranks low still fills top_k from it (the cut comes after the filter)."""
    # about astronomy and football, with a few cooking words (so full-text search matches every cooking chunk)
    query = "galaxy telescopes stars Andromeda striker goalkeeper penalty bake dough crust brown"
    cooking = [c.chunk_id for c in shared_filled.list_chunks("g", doc_ids=["cooking"])]
    assert len(cooking) >= 2
    k = len(cooking)
    if mode == "dense":  # cooking ranks low: unrestricted, other documents take the top k
        assert any(
            c.doc_id != "cooking" for c in shared_filled.retrieve(query, group="g", mode=mode, top_k=k).chunks
        )
    res = shared_filled.retrieve(query, group="g", mode=mode, top_k=k, doc_ids=["cooking"])
    assert [c.doc_id for c in res.chunks] == ["cooking"] * k
    some = cooking[:2]
    res = shared_filled.retrieve(query, group="g", mode=mode, top_k=5, chunk_ids=some)
    assert sorted(res.chunk_ids) == sorted(some)
    both = shared_filled.retrieve(query, group="g", mode=mode, top_k=5, doc_ids=["astronomy"], chunk_ids=some)
    assert both.chunks == []  # the restrictions are combined with AND
    assert shared_filled.retrieve(query, group="g", mode=mode, doc_ids=[]).chunks == []
    assert shared_filled.retrieve(query, group="g", mode=mode, doc_ids=["x') OR 1=1 --"]).chunks == []


def test_bad_id_restrictions(shared_filled):
    with pytest.raises(InputError, match="doc_ids must be a list"):
        shared_filled.retrieve("galaxy", group="g", doc_ids="cooking")
    with pytest.raises(InputError, match="doc_ids must be strings"):
        shared_filled.retrieve("galaxy", group="g", doc_ids=[1])
    with pytest.raises(InputError, match="chunk_ids must be integers"):
        shared_filled.retrieve("galaxy", group="g", chunk_ids=["1 OR 1=1"])
    with pytest.raises(InputError, match="chunk_ids must be integers"):
        shared_filled.retrieve("galaxy", group="g", chunk_ids=[True])


def test_store_returns_sheets_with_their_chunk_text(shared_filled, encoder):
    store = shared_filled
    res = store.retrieve("galaxy telescopes stars", group="g", top_k=2)
    ids = [c.chunk_id for c in res.chunks]
    plain = store.cheat_sheets(ids, encoder_fingerprint=encoder.fingerprint)
    with_text = store.cheat_sheets(ids, encoder_fingerprint=encoder.fingerprint, with_text=True)
    assert all(isinstance(s, ChunkSheet) for s in with_text)
    assert [s.text for s in with_text] == [c.text for c in res.chunks]
    assert all(torch.equal(a, b.sheet) for a, b in zip(plain, with_text, strict=True))

    items = context_sheets(res)
    assert all(isinstance(s, ChunkSheet) and s.text for s in items)


def test_answers_over_stored_chunks_read_focused_sheets(store, docs, tiny_host):
    from lloco_runtime import ContextEncoder, EncoderConfig, LLoCO, LLoCOService, load_cheat_sheets

    enc = ContextEncoder(
        tiny_host,
        EncoderConfig(
            segment_length=32,
            summary_length=2,
            literal_tokens=6,
            pooling="mean",
            summary_layer=0,
            connector="mlp",
        ),
    )
    store.ingest(docs, group="lit", encoder=enc)
    lloco = LLoCO(tiny_host, enc)
    question = "Which galaxy do telescopes watch?"
    res = LLoCOService(lloco, store).retrieve(question, group="lit", top_k=2)
    ids = [c.chunk_id for c in res.chunks]
    loaded = load_cheat_sheets(lloco, store, ids)
    assert all(isinstance(s, ChunkSheet) for s in loaded)  # the framework LLMs' path (chunk ids)
    segments = [enc.tokenizer(c.text, add_special_tokens=False)["input_ids"] for c in res.chunks]
    # the default: one literal budget for the sheets read together
    shared = enc.focus_sheets(segments, question)
    per_chunk = [enc.focus_sheet(ids, question) for ids in segments]
    for budget, focused in (("shared", shared), ("chunk", per_chunk)):
        lloco.focus_budget = budget
        for sheets in (loaded, context_sheets(res)):  # by id, and a retrieval's own sheets
            got = lloco._context(sheets, question)
            assert len(got) == len(focused)
            # compared in the stored dtype
            assert all(torch.equal(a, b.to(a.dtype)) for a, b in zip(got, focused, strict=True))
    assert sum(s.shape[0] for s in shared) == sum(s.shape[0] for s in per_chunk)  # same positions in all
    lloco.focus = False  # read as stored: plain tensors come back
    assert all(isinstance(s, torch.Tensor) for s in load_cheat_sheets(lloco, store, ids))
