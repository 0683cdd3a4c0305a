"""`lloco train-teacher` on a tiny random Llama: the text-reading teacher LoRA (paragraph as text -> answer)."""

from __future__ import annotations

import json

import pytest
import torch

from lloco_runtime import ContextEncoder, LLoCO
from lloco_runtime.adapters import AdapterArtifact
from lloco_runtime.cli import main
from lloco_runtime.errors import ConfigError, InputError
from lloco_runtime.training import teacher as T
from lloco_runtime.training.teacher import TeacherConfig, answer_loss, load_items, sample_batch, train_teacher

NAMES = ["Alda", "Boris", "Cyra", "Dov", "Enno", "Fay", "Gus", "Hedda", "Ivo", "Jana"]
CITIES = ["Oslo", "Lima", "Riga", "Kiev", "Bonn", "Graz", "Turin", "Lyon", "Porto", "Split"]


@pytest.fixture
def squad_dir(tmp_path):
    """Six articles of two paragraphs, two questions each (24 questions); answers occur in their paragraph."""
    d = tmp_path / "squad"
    d.mkdir()
    paragraphs, questions = [], []
    for a in range(6):
        doc = f"squadv1.1-train-Article_{a}"
        for p in range(2):
            name, city = NAMES[(a + p) % 10], CITIES[(a * 3 + p) % 10]
            ctx = f"{name} was born in {city}." + " The river is wide." * (1 + a % 3)
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
    (d / "paragraphs.jsonl").write_text("\n".join(json.dumps(r) for r in paragraphs) + "\n")
    (d / "qa.jsonl").write_text("\n".join(json.dumps(r) for r in questions) + "\n")
    return d


def _cfg(**kw) -> TeacherConfig:
    base = {
        "steps": 4,
        "batch_size": 4,
        "lr": 1e-2,
        "warmup": 1,
        "lora_r": 4,
        "lora_alpha": 8,
        "max_answer_tokens": 8,
        "max_context_tokens": 64,
        "val_articles": 1,
        "val_questions": 2,
        "eval_every": 100,
        "checkpoint_every": 2,
    }
    return TeacherConfig(**(base | kw))


def test_config_validation():
    TeacherConfig()  # the defaults are valid
    for bad in (
        {"steps": 0},
        {"batch_size": 0},
        {"lr": 0},
        {"lora_r": 0},
        {"warmup": -1},
        {"lora_dropout": 1.0},
        {"max_minutes": 0},
        {"val_questions": 0},
        {"target_modules": ()},
        {"steps": 2.5},
    ):
        with pytest.raises(ConfigError):
            TeacherConfig(**bad)


def test_missing_or_malformed_data_folder_is_an_input_error(make_tiny_host, tmp_path):
    host = make_tiny_host()
    with pytest.raises(InputError, match="paragraphs.jsonl"):
        train_teacher(host, tmp_path / "nope", tmp_path / "out", _cfg(), progress=False)
    assert T.TRAIN_ADAPTER not in host.adapter_names()


def test_items_are_the_serving_prompt_with_the_paragraph_as_text(make_tiny_host, squad_dir):
    from lloco_runtime.generation import Generator
    from lloco_runtime.prompt import PromptTemplate

    host = make_tiny_host()
    train, val, left_out = load_items(host, squad_dir, _cfg())
    assert len(train) == 20 and len(val) == 2 and left_out == 0
    assert {it.item.doc_id for it in train}.isdisjoint({it.item.doc_id for it in val})
    it = train[0]
    prompt = PromptTemplate().build(host.tokenizer, it.item.question, it.item.context)
    assert all(isinstance(p, str) for p in prompt.pieces)
    embeds, _, n_vec = Generator(host).embed(prompt)  # how serving tokenises the prompt
    ids = torch.tensor(it.prefix + it.text + it.suffix)
    assert n_vec == 0 and torch.equal(embeds[0], host.model.get_input_embeddings()(ids).detach())
    ids = host.tokenizer(it.item.answers[0], add_special_tokens=False)["input_ids"]
    assert list(it.answer) == ids + [host.tokenizer.eos_token_id]
    # a paragraph over max_context_tokens is left out, not cut
    _, _, dropped = load_items(host, squad_dir, _cfg(max_context_tokens=12))
    assert dropped > 0


def test_batches_are_reproducible_and_length_grouped(make_tiny_host, squad_dir):
    train, _, _ = load_items(make_tiny_host(), squad_dir, _cfg())
    cfg = _cfg(batch_size=4)
    assert sample_batch(train, 3, cfg) == sample_batch(train, 3, cfg)
    assert any(sample_batch(train, 3, cfg) != sample_batch(train, s, cfg) for s in range(4, 8))
    assert all(len(sample_batch(train, s, cfg)) == 4 for s in range(10))
    length = T._length

    def spread(batch):
        return max(map(length, batch)) - min(map(length, batch))

    grouped = sum(spread(sample_batch(train, s, cfg)) for s in range(40))
    plain = sum(spread(sample_batch(train, s, _cfg(batch_size=4, group_by_length=False))) for s in range(40))
    assert grouped < plain


def test_training_lowers_the_answer_loss_and_writes_a_loadable_artifact(
    make_tiny_host, tiny_config, squad_dir, tmp_path
):
    host = make_tiny_host()
    cfg = _cfg(steps=30, batch_size=8, eval_every=15, checkpoint_every=10)
    train, val, _ = load_items(host, squad_dir, cfg)
    with torch.no_grad():
        before = answer_loss(host, train, None).item()
    out = tmp_path / "run"
    hist = train_teacher(host, squad_dir, out, cfg, progress=False)
    assert [r["step"] for r in hist["train"]] == list(range(1, 31))
    assert [v["step"] for v in hist["val"]] == [0, 15, 30]
    v0 = hist["val"][0]
    # at step 0 the adapter (LoRA B = 0) is the base model: both validations agree
    assert v0["loss"] == pytest.approx(v0["loss_no_adapter"], rel=1e-5)
    assert v0["f1"] == v0["f1_no_adapter"] and 0 <= v0["f1"] <= 1 and 0 <= v0["em"] <= 1
    first = sum(r["loss"] for r in hist["train"][:3]) / 3
    last = sum(r["loss"] for r in hist["train"][-3:]) / 3
    assert last < first
    # the training adapter is gone from the host and nothing is left trainable
    assert T.TRAIN_ADAPTER not in host.adapter_names()
    assert not any(p.requires_grad for p in host.model.parameters())
    for name in ("adapter.safetensors", "history.json", "loss.png", "checkpoint/state.json"):
        assert (out / name).exists(), name
    assert hist["adapter"] == str(out / "adapter.safetensors")
    data = (out / "adapter.safetensors").read_bytes()
    art = AdapterArtifact.from_bytes(data)
    assert art.base_fingerprint == host.fingerprint and art.encoder_fingerprint is None
    assert art.info["kind"] == "teacher" and art.info["step"] == 30
    assert art.info["val_loss"] == pytest.approx(hist["val"][-1]["loss"])
    assert art.lora_config["r"] == 4 and sorted(art.lora_config["target_modules"]) == [
        "k_proj",
        "o_proj",
        "q_proj",
        "v_proj",
    ]
    # registered on a runtime (another host with the same base weights) it is the trained adapter
    lloco = LLoCO(h := make_tiny_host(), ContextEncoder(h, tiny_config))
    lloco.adapters.register("teacher", data)
    with lloco.adapters.acquire("teacher") as name, torch.no_grad():
        after = answer_loss(h, train, name).item()
        val_loss = answer_loss(h, val, name).item()
    assert after < before - 0.5  # the repeated tiny training set is being learnt
    assert val_loss == pytest.approx(hist["val"][-1]["loss"], rel=1e-4)
    answer = lloco.answer(
        train[0].item.question, train[0].item.context, adapter_id="teacher", max_new_tokens=4
    )
    assert isinstance(answer.text, str)


def test_interrupted_training_resumes_at_the_saved_step(
    make_tiny_host, squad_dir, tmp_path, capsys, monkeypatch
):
    cfg = _cfg(steps=6, checkpoint_every=2)
    full = train_teacher(make_tiny_host(), squad_dir, tmp_path / "full", cfg, progress=False)

    real = T.sample_batch

    def crash_at_step_5(items, step, c):
        if step == 4:
            raise KeyboardInterrupt  # a killed run: the last checkpoint is at step 4
        return real(items, step, c)

    monkeypatch.setattr(T, "sample_batch", crash_at_step_5)
    out = tmp_path / "run"
    host = make_tiny_host()
    with pytest.raises(KeyboardInterrupt):
        train_teacher(host, squad_dir, out, cfg, progress=False)
    assert T.TRAIN_ADAPTER not in host.adapter_names()  # removed even when the run dies
    assert json.loads((out / "checkpoint" / "state.json").read_text())["step"] == 4
    monkeypatch.setattr(T, "sample_batch", real)
    capsys.readouterr()
    resumed = train_teacher(make_tiny_host(), squad_dir, out, cfg, progress=False)
    assert "resuming from checkpoint at step 4" in capsys.readouterr().out
    assert [r["step"] for r in resumed["train"]] == list(range(1, 7))
    assert [v["step"] for v in resumed["val"]] == [0, 6]  # step 0 is not validated again
    # same data order, schedule and optimiser state: the resumed run matches the uninterrupted one
    for a, b in zip(resumed["train"], full["train"], strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-3, abs=1e-3)
    # a checkpoint of other settings is refused
    with pytest.raises(ConfigError, match="another run"):
        train_teacher(make_tiny_host(), squad_dir, out, _cfg(steps=6, lora_r=8), progress=False)
    # --no-resume starts over
    fresh = train_teacher(
        make_tiny_host(), squad_dir, out, _cfg(steps=2, lora_r=8), resume=False, progress=False
    )
    assert [r["step"] for r in fresh["train"]] == [1, 2]


def test_time_budget_fits_the_schedule_to_the_pace(make_tiny_host, squad_dir, tmp_path, monkeypatch):
    clock = {"t": 0.0}

    def fake_clock():
        clock["t"] += 0.5  # every reading is half a second later: ~1 s per step
        return clock["t"]

    monkeypatch.setattr(T.time, "perf_counter", fake_clock)
    hist = train_teacher(
        make_tiny_host(),
        squad_dir,
        tmp_path / "run",
        _cfg(steps=1000, max_minutes=0.5, checkpoint_every=1000),
        progress=False,
    )
    assert 10 < len(hist["train"]) < 60
    assert hist["planned_steps"] == len(hist["train"])
    lrs = [r["lr"] for r in hist["train"]]
    assert lrs[-1] < 0.2 * max(lrs)  # the cosine schedule ran to its end within the budget
    assert (tmp_path / "run" / "adapter.safetensors").exists()


def test_cli_trains_and_reports_bad_input_with_exit_code_2(tiny_model_dir, squad_dir, tmp_path, capsys):
    base = [
        "train-teacher",
        "--model",
        str(tiny_model_dir),
        "--device",
        "cpu",
        "--dtype",
        "float32",
        "--out",
        str(tmp_path / "out"),
    ]
    assert main(base + ["--data", str(tmp_path / "missing")]) == 2
    assert "paragraphs.jsonl" in capsys.readouterr().err
    assert main(base + ["--data", str(squad_dir), "--steps", "0"]) == 2
    assert "steps" in capsys.readouterr().err
    assert main(base + ["--data", str(squad_dir), "--minutes", "-1"]) == 2
    assert "max_minutes" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(base + ["--data", str(squad_dir), "--batch-size", "many"])
    assert exc.value.code == 2
    capsys.readouterr()
    rc = main(
        base
        + [
            "--data",
            str(squad_dir),
            "--steps",
            "2",
            "--batch-size",
            "2",
            "--val-articles",
            "1",
            "--val-questions",
            "2",
            "--max-answer-tokens",
            "4",
            "--lora-r",
            "2",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "held-out answer loss" in out and "adapter:" in out
    assert (
        AdapterArtifact.from_bytes((tmp_path / "out" / "adapter.safetensors").read_bytes()).info["step"] == 2
    )
