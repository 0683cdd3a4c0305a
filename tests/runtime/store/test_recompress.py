"""``recompress``: after an encoder change, the group's stored chunks get cheat sheets of the new encoder from
their stored text (no source file is read), and ``groups list`` shows the sheets' encoder and stale adapters.

Two tiny encoders on the session's tiny Llama with different configs give two fingerprints: A (the store
fixtures' encoder: 32-token segments, 4 vectors) and B (32-token segments, 2 vectors). Encoders with 16- and
64-token segments exercise the stored-boundary rules (re-split vs kept).
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from sqlalchemy import func, select
from store_helpers import DOCS, FailingEncoder, row_counts

from lloco_runtime.errors import FingerprintMismatchError, InputError, NotFoundError


@pytest.fixture
def private_host(make_tiny_host):
    return make_tiny_host()


def make_encoder(host, segment_length: int = 32, summary_length: int = 2):
    from lloco_runtime import ContextEncoder, EncoderConfig

    return ContextEncoder(host, EncoderConfig(segment_length=segment_length, summary_length=summary_length))


def service_for(store, host, **cfg):
    from lloco_runtime import LLoCO
    from lloco_runtime.service import LLoCOService

    return LLoCOService(LLoCO(host, make_encoder(host, **cfg)), store)


def sheet_state(store) -> list[tuple]:
    """``(chunk id, cheat-sheet fingerprint or None, number of sheets)`` of every chunk."""
    t = store.tables
    c, cs = t.chunks, t.cheat_sheets
    stmt = (
        select(c.c.id, func.min(cs.c.encoder_fingerprint), func.count(cs.c.chunk_id))
        .select_from(c.outerjoin(cs, cs.c.chunk_id == c.c.id))
        .group_by(c.c.id)
        .order_by(c.c.id)
    )
    with store.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(stmt)]


def sheet_rows(store) -> list[tuple]:
    t = store.tables
    with store.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(select(t.cheat_sheets).order_by(t.cheat_sheets.c.chunk_id))]


def register(store, host, fingerprint: str, seed: int, activate: bool = True):
    from lloco_test_support import make_adapter_bytes

    return store.register_adapter(
        "g",
        make_adapter_bytes(host, fingerprint, seed=seed),
        base_fingerprint=host.fingerprint,
        encoder_fingerprint=fingerprint,
        activate=activate,
    )


def test_recompress_switches_encoder_and_reports_stale_adapters(filled, encoder, private_host):
    a_fp = encoder.fingerprint
    service = service_for(filled, private_host)  # encoder B
    b_fp = service.lloco.encoder.fingerprint
    assert a_fp != b_fp
    adapter = register(filled, private_host, a_fp, seed=1)
    chunks_before = [(c.chunk_id, c.text) for c in filled.list_chunks("g")]

    g = filled.get_group("g")
    assert g.encoder_fingerprints == {a_fp: g.n_chunks} and g.encoder_state == a_fp[:12]
    assert g.active_adapter_id == adapter.id and not g.adapter_stale and g.adapter_state == str(adapter.id)
    with pytest.raises(FingerprintMismatchError, match="compressed by encoder"):
        service.answer("Which galaxy is nearest?", group="g", max_new_tokens=2)

    report = service.recompress(group="g")  # no file exists: everything comes from the store
    assert report.complete and report.skipped == 0
    assert sorted((d.doc_id, d.status) for d in report.documents) == [
        (k, "recompressed") for k in sorted(DOCS)
    ]
    assert report.chunks_encoded == len(chunks_before) and report.previous_fingerprints == {
        a_fp: len(chunks_before)
    }
    assert report.stale_adapter_ids == [adapter.id] and report.deactivated_adapter_id == adapter.id
    assert report.activated_adapter_id is None and report.active_adapter_id is None
    assert "3 documents recompressed" in report.summary() and b_fp[:12] in report.summary()

    # Same chunks (ids and texts), each with exactly one cheat sheet, of encoder B
    assert [(c.chunk_id, c.text) for c in filled.list_chunks("g")] == chunks_before
    assert sheet_state(filled) == [(cid, b_fp, 1) for cid, _ in chunks_before]
    assert {d.encoder_fingerprint for d in filled.list_documents("g")} == {b_fp}
    # ... equal to what a fresh ingest of the text with B stores (the stored boundaries are B's own cuts)
    astro = [c.chunk_id for c in filled.list_chunks("g", doc_ids=["astronomy"])]
    fresh = service.lloco.encoder.compress(DOCS["astronomy"]).tensors
    stored = filled.cheat_sheets(astro, encoder_fingerprint=b_fp)
    assert len(stored) == len(fresh)
    for s, f in zip(stored, fresh, strict=True):
        torch.testing.assert_close(s.float(), f.float(), atol=2e-3, rtol=2e-3)

    answer = service.answer("Which galaxy is nearest?", group="g", max_new_tokens=3, top_k=2)
    assert answer.adapter_id is None and answer.sources and answer.context_tokens > 0

    g = filled.get_group("g")
    assert g.encoder_fingerprints == {b_fp: len(chunks_before)} and g.encoder_state == b_fp[:12]
    assert g.active_adapter_id is None and g.n_adapters == 1 and g.n_stale_adapters == 1
    assert g.adapter_state == "none; 1 of 1 stored adapters stale"

    # The same encoder again: nothing to do, nothing written
    rows = sheet_rows(filled)
    again = service.recompress(group="g")
    assert again.documents == [] and again.skipped == 3 and again.complete and again.chunks_encoded == 0
    assert sheet_rows(filled) == rows

    # Back to encoder A: its adapter fits again (listed; the group had none active, so none is turned on)
    back = service_for(filled, private_host, summary_length=4)
    assert back.lloco.encoder.fingerprint == a_fp
    report = back.recompress(group="g")
    assert report.complete and report.stale_adapter_ids == [] and report.current_adapter_ids == [adapter.id]
    assert report.activated_adapter_id is None and filled.get_group("g").active_adapter_id is None
    filled.activate_adapter(adapter.id)
    assert back.answer("Which galaxy is nearest?", group="g", max_new_tokens=2).adapter_id == adapter.id

    # With an adapter of each encoder stored, switching makes the one that fits active
    b_adapter = register(filled, private_host, b_fp, seed=4, activate=False)
    report = service.recompress(group="g")
    assert report.deactivated_adapter_id == adapter.id and report.activated_adapter_id == b_adapter.id
    assert filled.get_group("g").active_adapter_id == b_adapter.id and report.stale_adapter_ids == [
        adapter.id
    ]


def test_half_done_recompress_shows_mixed_encoders_and_a_stale_adapter(filled, encoder, private_host):
    a_fp = encoder.fingerprint
    adapter = register(filled, private_host, a_fp, seed=2)
    b = make_encoder(private_host)
    n_first = len(filled.list_chunks("g", doc_ids=["astronomy"]))

    class FailsOnSecondDocument(FailingEncoder):
        calls = 0

        def compress_chunks(self, chunks, **kw):
            type(self).calls += 1
            if self.calls == 1:
                return self.inner.compress_chunks(chunks, **kw)
            return super().compress_chunks(chunks, **kw)

    before = row_counts(filled)
    with pytest.raises(RuntimeError, match="crashed midway"):
        filled.recompress(group="g", encoder=FailsOnSecondDocument(b, after=1))
    assert row_counts(filled) == before  # the failed document kept its old sheets, no half-written rows
    g = filled.get_group("g")
    assert g.encoder_fingerprints == {b.fingerprint: n_first, a_fp: g.n_chunks - n_first}
    assert g.encoder_state.startswith("mixed (") and f"{b.fingerprint[:12]}: {n_first}" in g.encoder_state
    assert g.active_adapter_id == adapter.id and g.adapter_stale
    assert g.adapter_state == f"{adapter.id} (stale: trained for encoder {a_fp[:12]})"
    states = {fp for _, fp, n in sheet_state(filled) if n == 1}
    assert states == {a_fp, b.fingerprint} and all(n == 1 for *_, n in sheet_state(filled))

    report = filled.recompress(group="g", encoder=b, deactivate_stale=False)
    assert report.skipped == 1 and len(report.documents) == 2 and report.complete
    assert report.deactivated_adapter_id is None and report.active_adapter_id == adapter.id
    g = filled.get_group("g")
    assert g.encoder_state == b.fingerprint[:12] and g.adapter_stale  # kept active on request: still stale


def test_unknown_group_and_bad_arguments_are_clear_errors(filled, encoder):
    with pytest.raises(NotFoundError, match="group 'nope' does not exist in collection 'default'"):
        filled.recompress(group="nope", encoder=encoder)
    with pytest.raises(NotFoundError, match="collection 'other'"):
        filled.recompress(group="g", collection="other", encoder=encoder)
    with pytest.raises(InputError, match="batch_size must be a positive integer"):
        filled.recompress(group="g", encoder=encoder, batch_size=0)
    with pytest.raises(InputError, match="invalid group name"):
        filled.recompress(group="bad name", encoder=encoder)


def test_longer_chunks_than_the_new_segment_are_cut_again_from_the_stored_text(filled, private_host):
    before = {d: "".join(c.text for c in filled.list_chunks("g", doc_ids=[d])) for d in DOCS}
    assert before == DOCS
    n_before = len(filled.list_chunks("g"))
    short = make_encoder(private_host, segment_length=16, summary_length=2)
    report = filled.recompress(group="g", encoder=short)
    assert {d.status for d in report.documents} == {"resplit"} and report.complete
    chunks = filled.list_chunks("g")
    assert len(chunks) > n_before and report.chunks_encoded == len(chunks)
    assert sheet_state(filled) == [
        (c.chunk_id, short.fingerprint, 1) for c in sorted(chunks, key=lambda c: c.chunk_id)
    ]
    for d in DOCS:  # the documents' text is whole, in order, with spans into it
        mine = filled.list_chunks("g", doc_ids=[d])
        assert "".join(c.text for c in mine) == DOCS[d] and [c.ordinal for c in mine] == list(
            range(len(mine))
        )
        assert all(DOCS[d][c.char_start : c.char_end] == c.text for c in mine)
        assert all(c.n_tokens <= 16 for c in mine)
        doc = filled.get_document(d, group="g")
        assert doc.n_chunks == len(mine) and doc.encoder_fingerprint == short.fingerprint
    hit = filled.retrieve("goalkeeper penalty", group="g", top_k=1, encoder_fingerprint=short.fingerprint)
    assert hit.chunks[0].doc_id == "football" and hit.chunks[0].cheat_sheet is not None

    # A document missing a middle chunk: its remaining text is cut again, without spans (unknown now)
    middle = filled.list_chunks("g", doc_ids=["astronomy"])[1]
    filled.delete_chunks("g", chunk_ids=[middle.chunk_id])
    rest = "".join(c.text for c in filled.list_chunks("g", doc_ids=["astronomy"]))
    shorter = make_encoder(private_host, segment_length=8, summary_length=2)
    report = filled.recompress(group="g", encoder=shorter)
    assert report.complete and {d.status for d in report.documents} == {"resplit"}
    mine = filled.list_chunks("g", doc_ids=["astronomy"])
    assert "".join(c.text for c in mine) == rest and middle.text not in rest
    assert all(c.char_start is None and c.char_end is None for c in mine)
    assert all(
        DOCS["football"][c.char_start : c.char_end] == c.text
        for c in filled.list_chunks("g", doc_ids=["football"])
    )

    # Longer segments: every stored chunk fits, so the (16-token) boundaries stay as they are
    ids = [c.chunk_id for c in filled.list_chunks("g")]
    long = make_encoder(private_host, segment_length=64, summary_length=2)
    report = filled.recompress(group="g", encoder=long)
    assert {d.status for d in report.documents} == {"recompressed"}
    assert [c.chunk_id for c in filled.list_chunks("g")] == ids
    assert sheet_state(filled) == [(i, long.fingerprint, 1) for i in sorted(ids)]


@pytest.fixture
def cli(pg_url, schema, embedder, monkeypatch, capsys, store):
    """``lloco ...`` against the test's store; ``encoder=`` is the runtime default encoder."""
    import lloco_runtime.store.store as store_mod
    from lloco_runtime import runtime
    from lloco_runtime.cli import main

    current = {}

    def runtime_loader():
        if current["encoder"] is None:
            raise AssertionError("this command should not have loaded a model")
        return SimpleNamespace(encoder=current["encoder"])

    monkeypatch.setattr(store_mod, "default_embedder", lambda: embedder)
    monkeypatch.setattr(runtime, "load_default_runtime", runtime_loader)

    def run(*argv: str, encoder=None) -> tuple[int, str, str]:
        current["encoder"] = encoder
        code = main([*argv, "--url", pg_url, "--schema", schema])
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


def test_cli_recompress_and_groups_list(cli, filled, encoder, private_host):
    a_fp = encoder.fingerprint
    adapter = register(filled, private_host, a_fp, seed=3)
    b = make_encoder(private_host)
    n = len(filled.list_chunks("g"))
    code, out, _ = cli("groups", "list")
    assert code == 0
    assert out.strip() == f"default/g: 3 documents, {n} chunks, adapter {adapter.id}, encoder {a_fp[:12]}"

    code, _, err = cli("recompress", "--group", "nope")  # fails before any model loads
    assert code == 1 and err.startswith("error: group 'nope' does not exist")

    code, out, err = cli("recompress", "--group", "g", "--no-progress", encoder=b)
    assert code == 0, err
    assert f"3 documents recompressed (0 re-split), 0 already current; {n} chunks" in out
    assert f"adapter {adapter.id} was trained for another encoder: deactivated" in out
    assert f"stale adapters (trained for another encoder): {adapter.id}" in out
    assert "retrain for this encoder with `lloco finetune --group g" in out

    code, out, _ = cli("groups", "list")
    assert out.strip() == (
        f"default/g: 3 documents, {n} chunks, adapter none; 1 of 1 stored adapters stale, "
        f"encoder {b.fingerprint[:12]}"
    )
    code, out, _ = cli("groups", "list", "--json")
    [g] = json.loads(out)
    assert g["encoder_fingerprints"] == {b.fingerprint: n} and g["encoder"] == b.fingerprint[:12]
    assert g["n_stale_adapters"] == 1 and g["active_adapter_id"] is None and g["adapter_stale"] is False

    code, out, _ = cli("recompress", "--group", "g", "--json", encoder=b)
    report = json.loads(out)
    assert code == 0 and report["documents"] == [] and report["skipped"] == 3 and report["complete"]
    assert report["retrain"].startswith("lloco finetune --group g")
    code, _, err = cli("recompress", "--group", "g", "--batch-size", "0", encoder=b)
    assert code == 2 and "batch_size must be a positive integer" in err
