"""Literal tokens: a mean-pooling encoder keeps a few of a segment's tokens (names and numbers first) as their
own input embeddings beside the pooled vectors, counted as context positions."""

from __future__ import annotations

import pytest
import torch

from lloco_runtime import ConfigError, ContextEncoder, EncoderConfig

TEXT = (
    "The canal was opened in 1794 by the engineer Margaret Eddowes of Marrick, and the canal company "
    "paid her 300 pounds. Later the trust restored it. The engineer Margaret Eddowes also built the "
    "aqueduct over the River Brindle, which was later widened by the county to carry the heavier boats "
    "of the coal trade."
)


def _enc(host, **kw):
    cfg = {
        "segment_length": 64,
        "summary_length": 8,
        "literal_tokens": 8,
        "pooling": "mean",
        "summary_layer": 0,
        "connector": "mlp",
    }
    return ContextEncoder(host, EncoderConfig(**{**cfg, **kw}))


def test_names_and_numbers_are_kept_once_and_the_budget_is_exact(tiny_host):
    enc = _enc(tiny_host, literal_tokens=16)  # digits are one token each in this tokenizer
    ids = tiny_host.tokenizer(TEXT, add_special_tokens=False)["input_ids"][:64]
    keep = enc.literal_positions(ids)
    assert len(keep) == 16 and keep == sorted(set(keep))
    kept = tiny_host.tokenizer.decode([ids[i] for i in keep])
    assert "1794" in kept and "Margaret" in kept and "Eddowes" in kept
    assert kept.count("Margaret") == 1  # the second mention is not kept again
    assert "The" not in kept.split()  # sentence-initial capitals are not names
    # a segment with no names still keeps exactly the budget (the longest words), so batches line up
    plain = tiny_host.tokenizer(
        "the quick brown fox jumps over the lazy dog again and again", add_special_tokens=False
    )["input_ids"]
    assert len(enc.literal_positions(plain)) == min(16, len(plain))


def test_literal_rows_are_the_tokens_own_embeddings_after_their_groups_vector(tiny_host):
    enc = _enc(tiny_host)
    ids = tiny_host.tokenizer(TEXT, add_special_tokens=False)["input_ids"][:64]
    assert len(ids) == 64
    sheet = enc.summarize_list([ids])[0]
    assert sheet.shape == (8 + 8, tiny_host.hidden_size)
    assert enc.config.ratio == 64 / 16
    emb = tiny_host.model.get_input_embeddings().weight
    keep = enc.literal_positions(ids)
    row, k = 0, 0
    for g in range(8):  # groups of 8 tokens: the pooled vector, then that group's literal tokens
        row += 1
        while k < len(keep) and keep[k] < 8 * (g + 1):
            assert torch.equal(sheet[row], emb[ids[keep[k]]])
            row, k = row + 1, k + 1
    assert row == sheet.shape[0]
    # full segments give equal lengths, so the batched path works
    assert enc.summarize([ids, ids[::-1]]).shape == (2, 16, tiny_host.hidden_size)


def test_keep_ratio_scales_the_literal_budget_for_a_short_tail(tiny_host):
    enc = _enc(tiny_host, keep_ratio=True)
    ids = tiny_host.tokenizer(TEXT, add_special_tokens=False)["input_ids"][:16]
    assert enc.literal_budget(16) == 2
    assert enc.summarize_list([ids])[0].shape[0] == 2 + 2  # 16 tokens at 4x


def test_literal_token_config_is_checked_and_left_out_of_old_fingerprints():
    with pytest.raises(ConfigError, match="mean pooling"):
        EncoderConfig(literal_tokens=4)
    with pytest.raises(ConfigError, match="literal_tokens"):
        EncoderConfig(pooling="mean", literal_tokens=-1)
    with pytest.raises(ConfigError, match="expand"):
        EncoderConfig(segment_length=16, summary_length=8, pooling="mean", literal_tokens=9)
    assert "literal_tokens" not in EncoderConfig(pooling="mean").to_dict()
    assert EncoderConfig(pooling="mean", literal_tokens=4).to_dict()["literal_tokens"] == 4


def test_connector_init_copies_a_trained_connector(make_tiny_host, tmp_path):
    host = make_tiny_host()
    src = _enc(host, literal_tokens=0, summary_length=16)
    with torch.no_grad():
        for p in src.connector.parameters():
            p.add_(0.01)
    src.save(tmp_path / "src")
    dst = _enc(host)
    dst.init_connector_from(tmp_path / "src")
    for (n, a), b in zip(
        src.connector.state_dict().items(), dst.connector.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), n


def test_zero_steps_writes_a_derived_encoder_with_its_reader(make_tiny_host, tmp_path):
    """``--steps 0``: a new configuration built from a trained connector and reader, evaluated and written
    with the reader re-tied to the new encoder's fingerprint."""
    from lloco_runtime.adapters import AdapterArtifact
    from lloco_runtime.training import EncoderTrainingConfig, train_encoder

    host = make_tiny_host()
    src = _enc(host, literal_tokens=0, summary_length=16)
    src.save(tmp_path / "src")
    from peft import LoraConfig

    host.add_adapter("r", LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"], init_lora_weights=False))
    reader = tmp_path / "reader.safetensors"
    reader.write_bytes(
        AdapterArtifact.from_model(
            host.model, "r", base_fingerprint=host.fingerprint, encoder_fingerprint=src.fingerprint
        ).to_bytes()
    )
    host.delete_adapter("r")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(6):
        (corpus / f"d{i}.txt").write_text(f"Part {i}. " + TEXT * 4)
    enc = _enc(host)
    enc.init_connector_from(tmp_path / "src")
    cfg = EncoderTrainingConfig(steps=0, batch_size=1, continuation_length=8, eval_pairs=2, reader_lora_r=0)
    hist = train_encoder(enc, corpus, tmp_path / "run", cfg, progress=False, reader_init=reader)
    assert hist["train"] == [] and [v["step"] for v in hist["val"]] == [0]
    loaded = ContextEncoder.load(tmp_path / "run" / "encoder", make_tiny_host())
    assert loaded.config.literal_tokens == 8 and loaded.reader is not None
    art = AdapterArtifact.from_bytes(loaded.reader)
    assert art.encoder_fingerprint == loaded.fingerprint != src.fingerprint
    assert torch.equal(
        art.tensors[next(iter(art.tensors))],
        AdapterArtifact.from_bytes(reader.read_bytes()).tensors[next(iter(art.tensors))],
    )
