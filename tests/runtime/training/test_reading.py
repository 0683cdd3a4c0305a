"""Reader training on a tiny model: mean pooling + connector, a reader LoRA on the decoder trained jointly with
the encoder on SQuAD-layout answers (CE and KL to a teacher), held-out reading validation, artifacts."""

from __future__ import annotations

import json

import pytest
import torch

from lloco_runtime import ContextEncoder, EncoderConfig
from lloco_runtime.adapters import AdapterArtifact
from lloco_runtime.encoder import _mean_groups
from lloco_runtime.errors import ConfigError, InputError
from lloco_runtime.training import EncoderTrainingConfig, train_encoder
from lloco_runtime.training.encoder_training import READER_FILE
from lloco_runtime.training.reading import (
    control_partner,
    paragraph_sheets,
    prepare_items,
    reading_losses,
)
from lloco_runtime.training.squad import read_reading_items, split_by_article

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
]
NAMES = ["Alda", "Boris", "Cyra", "Dov", "Enno", "Fay", "Gus", "Hedda", "Ivo", "Jana"]
CITIES = ["Oslo", "Lima", "Riga", "Kiev", "Bonn", "Graz", "Turin", "Lyon", "Porto", "Split"]


@pytest.fixture
def corpus(tmp_path):
    d = tmp_path / "corpus"
    d.mkdir()
    for i in range(3):
        (d / f"doc{i}.txt").write_text(" ".join(WORDS[(i + k * 7) % len(WORDS)] for k in range(300)) + ".")
    return d


@pytest.fixture
def squad_dir(tmp_path):
    """Ten articles of two paragraphs, two questions each; every answer occurs in its paragraph."""
    d = tmp_path / "squad"
    d.mkdir()
    paragraphs, questions = [], []
    for a in range(10):
        doc = f"squadv1.1-train-Article_{a}"
        for p in range(2):
            name, city = NAMES[(a + p) % 10], CITIES[(a * 3 + p) % 10]
            ctx = (
                f"{name} was born in {city}. "
                + " ".join(WORDS[(a + k) % len(WORDS)] for k in range(12))
                + "."
            )
            paragraphs.append({"doc_id": doc, "paragraph_index": p, "context": ctx})
            questions.append(
                {
                    "doc_id": doc,
                    "paragraph_index": p,
                    "qid": f"{a}-{p}-0",
                    "question": f"Where was {name} born?",
                    "answers": [city],
                }
            )
            questions.append(
                {
                    "doc_id": doc,
                    "paragraph_index": p,
                    "qid": f"{a}-{p}-1",
                    "question": f"Who was born in {city}?",
                    "answers": [name],
                }
            )
    questions.append(
        {
            "doc_id": "squadv1.1-train-Article_0",
            "paragraph_index": 0,
            "qid": "bad",
            "question": "Not in the text?",
            "answers": ["Zanzibar"],
        }
    )
    (d / "paragraphs.jsonl").write_text("\n".join(json.dumps(r) for r in paragraphs) + "\n")
    (d / "qa.jsonl").write_text("\n".join(json.dumps(r) for r in questions) + "\n")
    return d


def test_read_reading_items_checks_answers_and_splits_whole_articles(squad_dir, tmp_path):
    items = read_reading_items(squad_dir)
    assert len(items) == 40 and all(it.answers[0] in it.context for it in items)  # "Zanzibar" row left out
    train, held = split_by_article(items, val_articles=3, seed=1)
    assert {i.doc_id for i in train}.isdisjoint({i.doc_id for i in held})
    assert len({i.doc_id for i in held}) == 3 and len(train) + len(held) == 40
    with pytest.raises(InputError, match="paragraphs.jsonl"):
        read_reading_items(tmp_path)


def test_mean_groups_averages_consecutive_tokens():
    x = torch.arange(10, dtype=torch.float32).unsqueeze(1).repeat(1, 3)
    out = _mean_groups(x, 4)  # groups of 2, 3, 2, 3 rows: [0,1], [2,3,4], [5,6], [7,8,9]
    assert torch.allclose(out[:, 0], torch.tensor([0.5, 3.0, 5.5, 8.0]))
    assert _mean_groups(x[:3], 8).shape == (3, 3)  # a short segment gives one vector per token


def test_mean_pooling_encoder_round_trips_with_connector(make_tiny_host, tmp_path):
    host = make_tiny_host()
    cfg = EncoderConfig(segment_length=16, summary_length=4, pooling="mean", connector="mlp", lora_r=2)
    enc = ContextEncoder(host, cfg)
    assert "embed_summary.weight" not in enc.trainable_state()
    with torch.no_grad():
        enc.connector.down.weight.normal_()  # a trained connector: must survive save/load
    sheets = enc.compress_chunks([list(range(5, 21)), list(range(30, 33))])
    assert [tuple(s.shape) for s in sheets] == [(4, host.hidden_size), (3, host.hidden_size)]
    enc.invalidate_fingerprint()
    enc.save(tmp_path / "enc")
    again = ContextEncoder.load(tmp_path / "enc", make_tiny_host())
    assert again.fingerprint == enc.fingerprint
    assert torch.allclose(again.compress_chunks([list(range(5, 21))])[0], sheets[0], atol=1e-5)
    with pytest.raises(ConfigError, match="pooling"):
        EncoderConfig(pooling="max")


def test_default_config_keeps_its_fingerprint_dict():
    """Fields added for mean pooling must not change the identity of existing (summary-token) encoders."""
    d = EncoderConfig(segment_length=128, summary_length=16).to_dict()
    assert "pooling" not in d and "connector" not in d
    assert EncoderConfig(pooling="mean").to_dict()["pooling"] == "mean"


def test_mean_pooling_of_layer_zero_needs_no_forward_pass(make_tiny_host):
    host = make_tiny_host()
    enc = ContextEncoder(
        host, EncoderConfig(segment_length=8, summary_length=2, pooling="mean", summary_layer=0)
    )
    ids = [3, 4, 5, 6]
    emb = host.model.get_input_embeddings()(torch.tensor(ids))
    with torch.no_grad():
        out = enc.summarize_list([ids])[0]
    assert torch.allclose(out, torch.stack([emb[:2].mean(0), emb[2:].mean(0)]), atol=1e-6)


def test_reading_losses_reach_encoder_and_reader(make_tiny_host, squad_dir):
    host = make_tiny_host()
    enc = ContextEncoder(
        host, EncoderConfig(segment_length=8, summary_length=4, pooling="mean", connector="linear", lora_r=2)
    )
    items = prepare_items(enc, read_reading_items(squad_dir)[:4], max_context_tokens=256, max_answer_tokens=8)
    assert all(len(it.segments) >= 2 for it in items)  # paragraphs span several 8-token segments
    sheets = paragraph_sheets(enc, items)
    assert [s.shape[0] for s in sheets] == [sum(min(4, len(g)) for g in it.segments) for it in items]
    from peft import LoraConfig

    host.add_adapter("r", LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    host.add_adapter("t", LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    for n, p in host.model.named_parameters():
        p.requires_grad_(".r." in f"{n}." or "lloco-encoder" in n)
    for p in enc.connector.parameters():
        p.requires_grad_(True)
    losses = reading_losses(enc, items, reader="r", teacher="t", kl=True)
    assert set(losses) == {"reading", "reading_kl"} and losses["reading_kl"].item() >= 0
    (losses["reading"] + losses["reading_kl"]).backward()
    reader_grads = [p.grad for n, p in host.model.named_parameters() if ".r." in f"{n}." and "lora_B" in n]
    assert reader_grads and all(g is not None for g in reader_grads)
    assert enc.connector.proj.weight.grad is not None and enc.connector.proj.weight.grad.abs().sum() > 0
    teacher_grads = [p.grad for n, p in host.model.named_parameters() if ".t." in f"{n}."]
    assert all(g is None for g in teacher_grads)  # the teacher stays frozen
    assert (
        control_partner(items, 0).item.paragraph_index != items[0].item.paragraph_index
        or control_partner(items, 0).item.doc_id != items[0].item.doc_id
    )


def _teacher_file(host, path):
    from peft import LoraConfig

    host.add_adapter("tmp-teacher", LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    art = AdapterArtifact.from_model(
        host.model, "tmp-teacher", base_fingerprint=host.fingerprint, encoder_fingerprint=None
    )
    host.delete_adapter("tmp-teacher")
    path.write_bytes(art.to_bytes())
    return path


def test_train_encoder_with_reader_writes_reader_and_reading_validation(
    make_tiny_host, corpus, squad_dir, tmp_path
):
    host = make_tiny_host()
    torch.manual_seed(0)
    enc = ContextEncoder(
        host, EncoderConfig(segment_length=16, summary_length=4, pooling="mean", connector="mlp", lora_r=2)
    )
    teacher = _teacher_file(host, tmp_path / "teacher.safetensors")
    cfg = EncoderTrainingConfig(
        steps=4,
        batch_size=2,
        lr=5e-3,
        warmup=1,
        continuation_length=16,
        eval_every=2,
        eval_pairs=2,
        checkpoint_every=2,
        continuation_weight=0.0,
        reconstruction_weight=0.0,
        reader_lora_r=2,
        reading_weight=1.0,
        reading_kl_weight=0.5,
        reading_batch_size=3,
        reading_val=4,
        reading_val_articles=2,
    )
    before = {k: v.clone() for k, v in enc.trainable_state().items()}
    hist = train_encoder(
        enc, corpus, tmp_path / "run", cfg, progress=False, reading_path=squad_dir, teacher_path=teacher
    )
    assert [r["step"] for r in hist["val"]] == [0, 2, 4]
    v = hist["val"][-1]
    for key in (
        "reading_f1_right",
        "reading_f1_wrong",
        "reading_f1_text",
        "reading_f1_none",
        "reading_answer_loss_right",
        "reading_answer_loss_wrong",
    ):
        assert v[key] is not None
    assert set(hist["train"][-1]) >= {"reading", "reading_kl"} and "continuation" not in hist["train"][-1]
    after = enc.trainable_state()
    assert any(not torch.equal(before[k], after[k].detach()) for k in before if k.startswith("connector."))
    art = AdapterArtifact.from_bytes((tmp_path / "run" / "encoder" / READER_FILE).read_bytes())
    assert (
        art.encoder_fingerprint
        == ContextEncoder.load(tmp_path / "run" / "encoder", make_tiny_host()).fingerprint
    )
    assert art.info["kind"] == "reader"
    assert "lloco-teacher" not in host.adapter_names()  # the frozen teacher is removed at the end


def test_reading_config_errors(make_tiny_host, corpus, squad_dir, tmp_path):
    enc = ContextEncoder(make_tiny_host(), EncoderConfig(segment_length=16, summary_length=4))
    with pytest.raises(ConfigError, match="reading folder"):
        train_encoder(
            enc, corpus, tmp_path / "a", EncoderTrainingConfig(steps=1, reading_weight=1.0), progress=False
        )
    with pytest.raises(ConfigError, match="teacher"):
        train_encoder(
            enc,
            corpus,
            tmp_path / "b",
            EncoderTrainingConfig(steps=1, reading_kl_weight=1.0),
            progress=False,
            reading_path=squad_dir,
        )
    with pytest.raises(ConfigError, match="reader_lora_r"):
        EncoderTrainingConfig(reader_lora_r=-1)


def test_prepared_items_match_the_serving_prompt(make_tiny_host, squad_dir):
    """The fast path (template rendered once) gives the token ids the generator would embed at serving time."""
    from lloco_runtime.prompt import PromptTemplate

    host = make_tiny_host()
    enc = ContextEncoder(host, EncoderConfig(segment_length=8, summary_length=4))
    items = read_reading_items(squad_dir)[:30]
    prepared = prepare_items(enc, items, max_context_tokens=256, max_answer_tokens=8)
    tok = host.tokenizer
    for p in prepared[-3:]:  # beyond the 20 items the fast path is checked on
        pieces = PromptTemplate().build(tok, p.item.question, torch.zeros(2, host.hidden_size)).pieces
        assert p.prefix == tuple(tok(pieces[0], add_special_tokens=False)["input_ids"])
        assert p.suffix == tuple(tok(pieces[-1], add_special_tokens=False)["input_ids"])
        assert p.text == tuple(tok(p.item.context, add_special_tokens=False)["input_ids"])
        assert sum(p.segments, ()) == p.text and all(len(s) <= 8 for s in p.segments)
        assert p.answer[:-1] == tuple(tok(p.item.answers[0], add_special_tokens=False)["input_ids"][:8])
    assert len(prepare_items(enc, items, max_context_tokens=5, max_answer_tokens=8)) == 0  # all too long


def test_fresh_connector_is_calibrated_to_the_embedding_scale(make_tiny_host):
    host = make_tiny_host()
    enc = ContextEncoder(
        host, EncoderConfig(segment_length=16, summary_length=4, pooling="mean", connector="mlp")
    )
    emb_rms = host.model.get_input_embeddings().weight.detach().pow(2).mean(-1).sqrt().mean()
    out = torch.cat(enc.compress_chunks([list(range(40, 56))])).float()
    assert 0.5 < float(out.pow(2).mean(-1).sqrt().mean() / emb_rms) < 2.0
    assert enc.connector.scale.item() != 1.0
    plain = ContextEncoder(
        make_tiny_host(), EncoderConfig(segment_length=16, summary_length=4, pooling="mean")
    )
    assert plain.connector.kind == "none" and not list(plain.connector.parameters())


def test_keep_ratio_compresses_short_segments_as_much_as_full_ones(make_tiny_host):
    host = make_tiny_host()
    cfg = EncoderConfig(segment_length=16, summary_length=4, pooling="mean", summary_layer=0, keep_ratio=True)
    enc = ContextEncoder(host, cfg)
    sheets = enc.compress_chunks([list(range(5, 21)), list(range(30, 35)), [40]])
    assert [s.shape[0] for s in sheets] == [4, 2, 1]  # 16 -> 4, 5 -> ceil(5 / 4) = 2, 1 -> 1
    assert cfg.to_dict()["keep_ratio"] is True and "keep_ratio" not in EncoderConfig().to_dict()


def test_reading_focus_trains_on_the_sheets_lloco_serves(make_tiny_host, corpus, squad_dir, tmp_path):
    host = make_tiny_host()
    torch.manual_seed(0)
    enc = ContextEncoder(
        host,
        EncoderConfig(
            segment_length=16,
            summary_length=2,
            literal_tokens=2,
            pooling="mean",
            summary_layer=0,
            connector="mlp",
        ),
    )
    items = prepare_items(enc, read_reading_items(squad_dir), max_context_tokens=64, max_answer_tokens=8)[:3]
    focused = paragraph_sheets(enc, items, focus=True)
    for it, sheet in zip(items, focused, strict=True):
        expected = torch.cat([enc.focus_sheet(s, it.item.question) for s in it.segments])
        assert torch.allclose(sheet.detach().cpu(), expected) and sheet.requires_grad  # the connector learns
    cfg = EncoderTrainingConfig(
        steps=2,
        batch_size=2,
        lr=5e-3,
        warmup=1,
        continuation_length=16,
        eval_every=2,
        eval_pairs=2,
        checkpoint_every=2,
        continuation_weight=0.0,
        reconstruction_weight=0.0,
        reader_lora_r=2,
        reading_weight=1.0,
        reading_batch_size=2,
        reading_val=4,
        reading_val_articles=2,
        reading_focus=True,
        freeze_encoder=True,
    )
    fingerprint = enc.fingerprint
    connector = {k: v.clone() for k, v in enc.trainable_state().items()}
    hist = train_encoder(enc, corpus, tmp_path / "run", cfg, progress=False, reading_path=squad_dir)
    assert hist["val"][-1]["reading_f1_right"] is not None and "reading" in hist["train"][-1]
    # frozen encoder: same weights and fingerprint (stores stay valid); the reader is tied to it
    assert all(torch.equal(v, enc.trainable_state()[k]) for k, v in connector.items())
    saved = ContextEncoder.load(tmp_path / "run" / "encoder", make_tiny_host())
    assert saved.fingerprint == fingerprint and saved.reader is not None
    summary = ContextEncoder(make_tiny_host(), EncoderConfig(segment_length=16, summary_length=4))
    with pytest.raises(ConfigError, match="--reading-focus"):
        train_encoder(summary, corpus, tmp_path / "x", cfg, progress=False, reading_path=squad_dir)
