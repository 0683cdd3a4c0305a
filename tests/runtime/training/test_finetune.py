"""Per-group LoRA fine-tuning on a tiny model over the real embedded Postgres."""

from __future__ import annotations

import json
import uuid

import pytest
import torch

from lloco_runtime import InputError
from lloco_runtime.service import LLoCOService
from lloco_runtime.store import CheatSheetStore
from lloco_runtime.store.inputs import DocumentInput
from lloco_runtime.training.finetune import FinetuneConfig, finetune_group, read_qa, self_supervised_pairs

DOCS = {
    "lighthouse": "The lighthouse at Carrow Point was built in 1852. Its keeper was Elspeth Morrow. "
    "The lamp burned paraffin oil and flashed twice every fifteen seconds. " * 2,
    "mill": "The old mill on the river Tay ground oats for the village. It was rebuilt in 1790 after a fire. "
    "The miller was a man named Angus Reid who kept bees behind the wheel house. " * 2,
}


@pytest.fixture
def service(pg_url, tiny_lloco):
    store = CheatSheetStore(pg_url, schema=f"ft_{uuid.uuid4().hex[:8]}")
    store.ingest([DocumentInput(k, v) for k, v in DOCS.items()], group="g", encoder=tiny_lloco.encoder)
    yield LLoCOService(tiny_lloco, store)
    store.drop_schema()
    store.close()


def _cfg(**kw):
    return FinetuneConfig(
        **{
            "steps": 4,
            "batch_size": 2,
            "lr": 5e-3,
            "warmup": 1,
            "eval_every": 2,
            "val_pairs": 2,
            "checkpoint_every": 2,
            "top_k": 2,
            **kw,
        }
    )


def test_read_qa_reports_every_bad_line(tmp_path):
    p = tmp_path / "qa.jsonl"
    p.write_text(
        "\n".join(
            [
                json.dumps(
                    {"doc_id": "lighthouse", "question": "Who kept the light?", "answers": ["Elspeth Morrow"]}
                ),
                "{not json",
                json.dumps({"doc_id": "nope", "question": "q?", "answers": ["a"]}),
                json.dumps({"doc_id": "mill", "question": "When was it rebuilt?", "answers": []}),
                json.dumps({"doc_id": "mill", "question": " ", "answers": ["1790"]}),
                json.dumps(["a", "list"]),
                "",
                json.dumps(
                    {"doc_id": "mill", "question": "Who was the miller?", "answers": ["Angus Reid", ""]}
                ),
            ]
        )
    )
    rows, bad = read_qa(p, set(DOCS))
    assert [r.line for r in rows] == [1]
    assert [line for line, _ in bad] == [2, 3, 4, 5, 6, 8]
    reasons = dict(bad)
    assert "JSON" in reasons[2] and "unknown doc_id 'nope'" in reasons[3]
    assert "answers" in reasons[4] and "question" in reasons[5] and "answers" in reasons[8]


def test_self_supervised_pairs_point_at_their_chunk():
    class C:
        def __init__(self, i, text):
            self.chunk_id, self.text = i, text

    import random

    pairs = self_supervised_pairs([C(7, DOCS["mill"])], random.Random(0), 10)
    assert {p.chunk_ids[0] for p in pairs} == {7}
    first = next(p for p in pairs if p.question.startswith("Quote"))
    assert first.answer.startswith("The old mill on the river Tay")


def test_self_supervised_finetune_registers_and_activates_a_new_version(service, tmp_path):
    hist = finetune_group(
        service, "g", cfg=_cfg(pairs="self-supervised"), out_dir=tmp_path / "ft", progress=False
    )
    adapters = service.store.list_adapters("g")
    assert len(adapters) == 1 and adapters[0].active and adapters[0].id == hist["adapter_id"]
    assert hist["source"] == "self-supervised" and hist["n_train"] >= 2
    assert (tmp_path / "ft" / "loss.png").exists()
    assert adapters[0].metrics["val_loss"] == pytest.approx(hist["val"][-1]["adapter"])
    # training leaves no adapter behind on the shared model; serving loads the stored one
    assert "lloco-finetune" not in service.lloco.host.adapter_names()
    ans = service.answer("Who was the keeper?", group="g", max_new_tokens=4)
    assert ans.adapter_id == hist["adapter_id"]
    base = service.answer("Who was the keeper?", group="g", use_adapter=False, max_new_tokens=4)
    assert base.adapter_id is None
    # a second run is a new version; the first stays for rollback
    hist2 = finetune_group(service, "g", cfg=_cfg(steps=2, seed=1), progress=False)
    versions = service.store.list_adapters("g")
    assert len(versions) == 2
    assert [a.id for a in versions if a.active] == [hist2["adapter_id"]]
    service.store.activate_adapter(hist["adapter_id"])
    assert [a.id for a in service.store.list_adapters("g") if a.active] == [hist["adapter_id"]]


def test_qa_finetune_lowers_the_training_loss(service, tmp_path):
    qa = tmp_path / "qa.jsonl"
    rows = [
        {"doc_id": "lighthouse", "question": "Who was the keeper?", "answers": ["Elspeth Morrow"]},
        {"doc_id": "lighthouse", "question": "When was it built?", "answers": ["1852"]},
        {"doc_id": "mill", "question": "Who was the miller?", "answers": ["Angus Reid"]},
        {"doc_id": "mill", "question": "When was the mill rebuilt?", "answers": ["1790"]},
        {"doc_id": "ghost", "question": "?", "answers": ["x"]},
    ]
    qa.write_text("\n".join(json.dumps(r) for r in rows))
    torch.manual_seed(0)
    hist = finetune_group(service, "g", qa_path=str(qa), cfg=_cfg(steps=8, lr=2e-2), progress=False)
    assert hist["source"] == "qa" and hist["rejected"] == 1
    assert hist["train"][-1]["loss"] < hist["train"][0]["loss"]


def test_finetune_refuses_an_empty_group(service):
    service.store.create_group("empty")
    with pytest.raises(InputError, match="no documents"):
        finetune_group(service, "empty", cfg=_cfg(), progress=False)


def test_finetune_resumes_from_its_checkpoint(service, tmp_path, capsys, monkeypatch):
    from lloco_runtime.training import finetune as ft

    out = tmp_path / "ft"
    real, calls = ft._Batcher.loss, {"n": 0}

    def crash(self, pair, adapter, **kw):
        if adapter is not None and torch.is_grad_enabled():
            calls["n"] += 1
            if calls["n"] == 2 * 2 + 1:  # first pair of step 3: the checkpoint is at step 2
                raise KeyboardInterrupt
        return real(self, pair, adapter, **kw)

    monkeypatch.setattr(ft._Batcher, "loss", crash)
    with pytest.raises(KeyboardInterrupt):
        finetune_group(service, "g", cfg=_cfg(), out_dir=out, progress=False)
    assert service.store.list_adapters("g") == []  # nothing registered by the interrupted run
    monkeypatch.setattr(ft._Batcher, "loss", real)
    hist = finetune_group(service, "g", cfg=_cfg(), out_dir=out, progress=False)
    assert "resuming from checkpoint at step 2" in capsys.readouterr().out
    assert [r["step"] for r in hist["train"]] == [1, 2, 3, 4]
    assert len(service.store.list_adapters("g")) == 1


def test_validation_runs_with_lora_dropout_off(make_tiny_host):
    """With dropout on, the same input gives different logits on every call; inside ``lora_dropout_off`` it
    does not, and afterwards the dropout trains again."""
    from peft import LoraConfig

    from lloco_runtime.training.finetune import lora_dropout_off

    host = make_tiny_host()
    host.add_adapter(
        "t", LoraConfig(r=4, lora_alpha=8, lora_dropout=0.9, target_modules=["q_proj", "v_proj"])
    )
    with torch.no_grad():
        for name, p in host.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 1.0)
    ids = torch.arange(3, 19).unsqueeze(0)

    def logits():
        with host.using("t") as model, torch.no_grad():
            return model(input_ids=ids).logits

    assert not torch.equal(logits(), logits())
    with lora_dropout_off(host.model, "t"):
        assert torch.equal(logits(), logits())
    assert not torch.equal(logits(), logits())
