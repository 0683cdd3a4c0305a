"""Encoder pre-training on a tiny model: it learns, checkpoints, resumes and writes its artifacts."""

from __future__ import annotations

import json

import pytest
import torch

from lloco_runtime import ContextEncoder, EncoderConfig, InputError
from lloco_runtime.errors import ConfigError
from lloco_runtime.training import EncoderTrainingConfig, evaluate_encoder, train_encoder
from lloco_runtime.training.encoder_training import PairSampler, read_corpus

WORDS = [
    "river",
    "town",
    "archive",
    "mill",
    "council",
    "boats",
    "looms",
    "wells",
    "merchants",
    "coast",
    "salt",
    "copper",
    "news",
    "frost",
    "harbour",
    "ledger",
    "prices",
    "marriages",
    "floods",
    "ships",
    "keeper",
    "lamp",
    "storm",
    "granite",
]


@pytest.fixture
def corpus(tmp_path):
    g = torch.Generator().manual_seed(0)
    d = tmp_path / "corpus"
    d.mkdir()
    for i in range(4):
        idx = torch.randint(len(WORDS), (400,), generator=g).tolist()
        (d / f"doc{i}.txt").write_text(" ".join(WORDS[j] for j in idx) + ".")
    (d / "more.jsonl").write_text(json.dumps({"doc_id": "j", "text": " ".join(WORDS * 20)}) + "\n")
    return d


def _encoder(make_tiny_host, lora_r=4):
    host = make_tiny_host()
    torch.manual_seed(0)  # LoRA init is random: identical encoders for the resume comparison
    return ContextEncoder(host, EncoderConfig(segment_length=32, summary_length=4, lora_r=lora_r))


def _cfg(**kw):
    base = {
        "steps": 6,
        "batch_size": 2,
        "lr": 5e-3,
        "warmup": 1,
        "continuation_length": 16,
        "eval_every": 3,
        "eval_pairs": 4,
        "checkpoint_every": 2,
    }
    return EncoderTrainingConfig(**{**base, **kw})


def test_read_corpus_reads_txt_and_jsonl(corpus):
    names = {n for n, _ in read_corpus(corpus)}
    assert {"doc0", "doc3", "j"} <= names


def test_read_corpus_rejects_empty_folder(tmp_path):
    with pytest.raises(InputError, match="no text"):
        read_corpus(tmp_path)
    with pytest.raises(InputError, match="does not exist"):
        read_corpus(tmp_path / "missing")


def test_pair_sampler_windows_are_consecutive_and_reproducible():
    doc = list(range(500))
    s = PairSampler([doc], 32, 16, seed=3)
    a, b = s.batch(7, 4)
    assert a == s.batch(7, 4)[0]
    for x, y in zip(a, b, strict=True):
        assert len(x) == 32 and len(y) == 16 and y[0] == x[-1] + 1


def test_config_validation():
    with pytest.raises(ConfigError):
        EncoderTrainingConfig(continuation_weight=0, reconstruction_weight=0)


def test_evaluate_encoder_reports_four_finite_losses(make_tiny_host, corpus):
    enc = _encoder(make_tiny_host, lora_r=0)
    texts = [t for _, t in read_corpus(corpus)]
    res = evaluate_encoder(enc, texts, n_pairs=4, b_len=16)
    assert set(res) == {"no_context", "cheat_sheet", "wrong_cheat_sheet", "text_context"}
    assert all(torch.isfinite(torch.tensor(v)) for v in res.values())


def test_training_lowers_loss_and_writes_artifacts(make_tiny_host, corpus, tmp_path):
    enc = _encoder(make_tiny_host)
    before = enc.fingerprint
    summary_before = enc.embed_summary.weight.detach().clone()
    out = tmp_path / "run"
    hist = train_encoder(enc, corpus, out, _cfg(steps=12), progress=False)
    assert len(hist["train"]) == 12
    first = sum(r["loss"] for r in hist["train"][:3]) / 3
    last = sum(r["loss"] for r in hist["train"][-3:]) / 3
    assert last < first  # the objective is being optimised
    assert not torch.equal(enc.embed_summary.weight, summary_before)
    assert enc.fingerprint != before
    assert (out / "loss.png").stat().st_size > 1000
    assert [v["step"] for v in hist["val"]] == [0, 3, 6, 9, 12]
    # the artifact loads on a host with the same base weights and reproduces the cheat sheets
    loaded = ContextEncoder.load(out / "encoder", make_tiny_host())
    assert loaded.fingerprint == enc.fingerprint
    chunk = enc.split(" ".join(WORDS))[:1]
    torch.testing.assert_close(loaded.compress_chunks(chunk)[0], enc.compress_chunks(chunk)[0])


def test_interrupted_training_resumes_where_it_stopped(make_tiny_host, corpus, tmp_path, capsys, monkeypatch):
    from lloco_runtime.training import encoder_training as et

    cfg = _cfg(steps=6)
    full = train_encoder(_encoder(make_tiny_host), corpus, tmp_path / "full", cfg, progress=False)

    real, calls = et._objective, {"n": 0}

    def crash_at_step_5(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt  # a killed run: last checkpoint is at step 4
        return real(*a, **kw)

    monkeypatch.setattr(et, "_objective", crash_at_step_5)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train_encoder(_encoder(make_tiny_host), corpus, out, cfg, progress=False)
    monkeypatch.setattr(et, "_objective", real)
    resumed = train_encoder(_encoder(make_tiny_host), corpus, out, cfg, progress=False)
    assert "resuming from checkpoint at step 4" in capsys.readouterr().out
    assert [r["step"] for r in resumed["train"]] == list(range(1, 7))
    # same data order, schedule and optimiser state: the resumed run matches the uninterrupted one
    for a, b in zip(resumed["train"], full["train"], strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-3, abs=1e-3)


def test_resume_refuses_a_different_encoder_config(make_tiny_host, corpus, tmp_path):
    out = tmp_path / "run"
    train_encoder(_encoder(make_tiny_host), corpus, out, _cfg(steps=2), progress=False)
    other = ContextEncoder(make_tiny_host(), EncoderConfig(segment_length=32, summary_length=8, lora_r=4))
    with pytest.raises(ConfigError, match="checkpoint"):
        train_encoder(other, corpus, out, _cfg(steps=4), progress=False)


def test_read_corpus_names_a_malformed_jsonl_line(tmp_path):
    (tmp_path / "c.jsonl").write_text('{"text": "fine"}\n{broken\n')
    with pytest.raises(InputError, match=r"c.jsonl:2: invalid JSON"):
        read_corpus(tmp_path)


def test_read_corpus_skips_jsonl_rows_without_text(tmp_path):
    (tmp_path / "qa.jsonl").write_text('{"question": "q", "answers": ["a"]}\n')
    (tmp_path / "a.txt").write_text("some text")
    assert [n for n, _ in read_corpus(tmp_path)] == ["a"]


def _qa_file(tmp_path, corpus):
    text = (corpus / "doc1.txt").read_text()
    answer = " ".join(text.split()[50:53])
    rows = [
        {"doc_id": "doc1", "question": "Which three words come here?", "answers": [answer]},
        {"doc_id": "doc1", "question": "Absent?", "answers": ["zebra unicorn"]},
        {"doc_id": "nope", "question": "Unknown doc?", "answers": [answer]},
        {"doc_id": "doc1", "question": "Empty?", "answers": [""]},
        ["not", "an", "object"],
    ]
    path = tmp_path / "qa.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path, answer


def test_qa_items_locate_answers_and_report_unusable_rows(make_tiny_host, corpus, tmp_path):
    from lloco_runtime.training.encoder_training import QASampler, read_qa_items

    enc = _encoder(make_tiny_host)
    path, answer = _qa_file(tmp_path, corpus)
    names, texts = zip(*read_corpus(corpus), strict=True)
    tokens = [enc.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    items, bad = read_qa_items(enc, path, names, tokens, texts, max_answer_tokens=8)
    assert len(items) == 1 and sorted(line for line, _ in bad) == [2, 3, 4, 5]
    reasons = dict(bad)
    assert "no answer occurs" in reasons[2] and "not a training document" in reasons[3]
    assert "non-empty" in reasons[4] and "not a JSON object" in reasons[5]
    it = items[0]
    span = items[0].start, items[0].end
    doc = tokens[items[0].doc]
    for seed_step in range(5):  # every sampled window holds the whole answer span
        windows, picked = QASampler(items, tokens, 32, seed=seed_step).batch(seed_step, 3)
        assert picked == [items[0]] * 3
        for w in windows:
            assert len(w) == 32
            starts = [s for s in range(len(doc) - 31) if doc[s : s + 32] == w]
            assert any(s <= span[0] and span[1] <= s + 32 for s in starts)
    assert answer.split()[1] in enc.tokenizer.decode(doc[span[0] : span[1]])
    assert it.target[-1] == enc.tokenizer.eos_token_id


def test_qa_and_distill_objectives_train_under_bf16_autocast(make_tiny_host, corpus, tmp_path, monkeypatch):
    """The CUDA path (float32 master weights, bf16 autocast) with every objective, run on CPU autocast."""
    import lloco_runtime.training.encoder_training as et

    monkeypatch.setattr(et, "_autocast", lambda enc: torch.autocast("cpu", dtype=torch.bfloat16))
    enc = _encoder(make_tiny_host)
    path, _ = _qa_file(tmp_path, corpus)
    before = {k: v.detach().clone() for k, v in enc.trainable_state().items()}
    hist = train_encoder(
        enc,
        corpus,
        tmp_path / "run",
        _cfg(steps=3, distill_weight=1.0, qa_weight=1.0),
        progress=False,
        qa_path=path,
    )
    row = hist["train"][-1]
    assert {"continuation", "reconstruction", "distill", "qa"} <= set(row)
    assert all(torch.isfinite(torch.tensor(v)) for v in row.values())
    after = enc.trainable_state()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert enc.embed_summary.weight.dtype == torch.float32


def test_qa_objective_needs_file_and_weight(make_tiny_host, corpus, tmp_path):
    enc = _encoder(make_tiny_host)
    path, _ = _qa_file(tmp_path, corpus)
    with pytest.raises(ConfigError, match="QA file"):
        train_encoder(enc, corpus, tmp_path / "a", _cfg(qa_weight=1.0), progress=False)
    with pytest.raises(ConfigError, match="qa-weight"):
        train_encoder(enc, corpus, tmp_path / "b", _cfg(), progress=False, qa_path=path)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"doc_id": "nope", "question": "q?", "answers": ["a"]}) + "\n")
    with pytest.raises(InputError, match="no usable QA pair"):
        train_encoder(enc, corpus, tmp_path / "c", _cfg(qa_weight=1.0), progress=False, qa_path=bad)


def test_time_budget_fits_the_schedule_to_the_pace(make_tiny_host, corpus, tmp_path, monkeypatch):
    """--minutes: after 10 steps the plan shrinks to what the budget allows, and the run ends with artifacts."""
    import lloco_runtime.training.encoder_training as et

    clock = {"t": 0.0}

    def fake_clock():
        clock["t"] += 0.5  # every reading is half a second later: ~1 s per step
        return clock["t"]

    monkeypatch.setattr(et.time, "perf_counter", fake_clock)
    enc = _encoder(make_tiny_host)
    hist = train_encoder(
        enc,
        corpus,
        tmp_path / "run",
        _cfg(steps=1000, max_minutes=0.5, eval_every=1000, checkpoint_every=1000),
        progress=False,
    )
    assert 10 < len(hist["train"]) < 60
    assert hist["planned_steps"] == len(hist["train"])
    assert (tmp_path / "run" / "encoder" / "encoder.safetensors").exists()
    with pytest.raises(ConfigError, match="max_minutes"):
        EncoderTrainingConfig(max_minutes=0)
