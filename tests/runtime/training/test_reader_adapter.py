"""The encoder's reader adapter: shipped in the encoder folder, used by serving with cheat sheets when no group
adapter is given, and the starting point of ``lloco finetune`` (with distillation from a text teacher)."""

from __future__ import annotations

import json
import uuid

import pytest
import torch

from lloco_runtime import ContextEncoder, EncoderConfig, FingerprintMismatchError, LLoCO, ModelLoadError
from lloco_runtime.adapters import AdapterArtifact
from lloco_runtime.encoder import READER_FILE
from lloco_runtime.runtime import READER_ADAPTER_ID
from lloco_runtime.service import LLoCOService
from lloco_runtime.store import CheatSheetStore
from lloco_runtime.store.inputs import DocumentInput
from lloco_runtime.training.finetune import TRAIN_ADAPTER, FinetuneConfig, Pair, _Batcher, finetune_group

TEXT = (
    "The lighthouse at Carrow Point was built in 1852. Its keeper was Elspeth Morrow. The lamp burned "
    "paraffin oil and flashed twice every fifteen seconds. "
) * 2


def _lora_file(host, *, encoder_fingerprint, r=3, seed=0) -> bytes:
    """A LoRA with non-zero weights (peft starts B at zero, which would change nothing)."""
    from peft import LoraConfig

    torch.manual_seed(seed)
    host.add_adapter(
        "tmp", LoraConfig(r=r, lora_alpha=2 * r, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    art = AdapterArtifact.from_model(
        host.model, "tmp", base_fingerprint=host.fingerprint, encoder_fingerprint=encoder_fingerprint
    )
    host.delete_adapter("tmp")
    return art.to_bytes()


def _encoder(host):
    return ContextEncoder(
        host,
        EncoderConfig(segment_length=32, summary_length=8, pooling="mean", summary_layer=0, connector="mlp"),
    )


def test_encoder_folder_carries_its_reader(make_tiny_host, tmp_path):
    host = make_tiny_host()
    enc = _encoder(host)
    enc.reader = _lora_file(host, encoder_fingerprint=enc.fingerprint)
    enc.save(tmp_path / "enc")
    assert (tmp_path / "enc" / READER_FILE).is_file()
    assert ContextEncoder.load(tmp_path / "enc", make_tiny_host()).reader == enc.reader
    # saving an encoder without a reader into the folder removes the stale one
    enc.reader = None
    enc.save(tmp_path / "enc")
    assert not (tmp_path / "enc" / READER_FILE).exists()
    assert ContextEncoder.load(tmp_path / "enc", make_tiny_host()).reader is None


def test_a_reader_of_another_encoder_or_a_damaged_one_is_refused(make_tiny_host, tmp_path):
    host = make_tiny_host()
    enc = _encoder(host)
    enc.save(tmp_path / "enc")
    (tmp_path / "enc" / READER_FILE).write_bytes(_lora_file(host, encoder_fingerprint="f" * 64))
    with pytest.raises(FingerprintMismatchError, match="copy the reader from the same training run"):
        ContextEncoder.load(tmp_path / "enc", make_tiny_host())
    (tmp_path / "enc" / READER_FILE).write_bytes(b"not safetensors at all")
    with pytest.raises(ModelLoadError, match="not a lloco adapter file"):
        ContextEncoder.load(tmp_path / "enc", make_tiny_host())


def test_keep_ratio_switch_drops_the_reader_tied_to_the_old_fingerprint(make_tiny_host):
    host = make_tiny_host()
    enc = _encoder(host)
    enc.reader = _lora_file(host, encoder_fingerprint=enc.fingerprint)
    old = enc.fingerprint
    enc.set_keep_ratio(True)
    assert enc.config.keep_ratio and enc.fingerprint != old and enc.reader is None
    assert len(enc.summarize_list([list(range(5, 13))])[0]) == 2  # 8 tokens at 4x -> 2 vectors


def test_cheat_sheets_are_read_with_the_reader_unless_an_adapter_is_given(make_tiny_host):
    host = make_tiny_host()
    enc = _encoder(host)
    enc.reader = _lora_file(host, encoder_fingerprint=enc.fingerprint)
    lloco = LLoCO(host, enc)
    assert lloco.reader_id == READER_ADAPTER_ID
    sheets = lloco.compress(TEXT)
    with_sheets, with_text = lloco.prompt("Who kept it?", sheets), lloco.prompt("Who kept it?", TEXT)
    assert lloco.adapter_for(with_sheets) == READER_ADAPTER_ID
    assert lloco.adapter_for(with_sheets, use_reader=False) is None
    assert lloco.adapter_for(with_text) is None and lloco.adapter_for(lloco.prompt("Who?")) is None
    assert lloco.adapter_for(with_sheets, "7") == "7"
    default = lloco.answer("Who kept it?", sheets, max_new_tokens=6).token_ids
    explicit = lloco.answer("Who kept it?", sheets, adapter_id=READER_ADAPTER_ID, max_new_tokens=6).token_ids
    plain = lloco.answer("Who kept it?", sheets, use_reader=False, max_new_tokens=6)
    assert default == explicit
    streamed = "".join(lloco.stream("Who kept it?", sheets, max_new_tokens=6))
    assert streamed == lloco.answer("Who kept it?", sheets, max_new_tokens=6).text
    assert plain.token_ids is not None
    # an encoder without a reader: the plain decoder, as before
    other = make_tiny_host()
    assert LLoCO(other, _encoder(other)).reader_id is None


@pytest.fixture
def reader_service(pg_url, make_tiny_host):
    host = make_tiny_host()
    enc = _encoder(host)
    enc.reader = _lora_file(host, encoder_fingerprint=enc.fingerprint, r=3)
    lloco = LLoCO(host, enc)
    store = CheatSheetStore(pg_url, schema=f"rd_{uuid.uuid4().hex[:8]}")
    store.ingest(
        [DocumentInput("lighthouse", TEXT), DocumentInput("mill", TEXT.replace("lighthouse", "mill"))],
        group="g",
        encoder=enc,
    )
    yield LLoCOService(lloco, store)
    store.drop_schema()
    store.close()


def _teacher(host, path):
    path.write_bytes(_lora_file(host, encoder_fingerprint=None, r=2, seed=1))
    return path


def test_finetune_starts_from_the_reader_and_distils_from_the_teacher(reader_service, tmp_path):
    qa = tmp_path / "qa.jsonl"
    qa.write_text(
        "\n".join(
            json.dumps(r)
            for r in [
                {"doc_id": "lighthouse", "question": "Who was the keeper?", "answers": ["Elspeth Morrow"]},
                {"doc_id": "lighthouse", "question": "When was it built?", "answers": ["1852"]},
                {"doc_id": "mill", "question": "How often did it flash?", "answers": ["twice"]},
                {"doc_id": "mill", "question": "What did the lamp burn?", "answers": ["paraffin oil"]},
            ]
        )
    )
    host = reader_service.lloco.host
    teacher = _teacher(host, tmp_path / "teacher.safetensors")
    cfg = FinetuneConfig(
        steps=2,
        batch_size=2,
        lr=5e-3,
        warmup=1,
        eval_every=2,
        val_pairs=1,
        top_k=2,
        lora_r=8,
        teacher=str(teacher),
    )
    hist = finetune_group(reader_service, "g", qa_path=str(qa), cfg=cfg, progress=False)
    assert hist["init"] == "reader" and hist["teacher"] == str(teacher)
    info = reader_service.store.get_adapter(hist["adapter_id"])
    assert info.metrics["init"] == "reader" and info.metrics["distilled"] is True
    art = AdapterArtifact.from_bytes(reader_service.store.adapter_weights(hist["adapter_id"]))
    assert art.lora_config["r"] == 3  # the reader's rank, not cfg.lora_r
    # the step-0 validation loss of the new adapter is the reader's own (it starts as the reader)
    assert set(host.adapter_names()) <= {READER_ADAPTER_ID}  # trainer and teacher adapters are removed
    no_reader = finetune_group(
        reader_service,
        "g",
        qa_path=str(qa),
        progress=False,
        cfg=FinetuneConfig(**{**cfg.__dict__, "from_reader": False, "kl_weight": 0.0}),
    )
    assert no_reader["init"] == "fresh" and no_reader["teacher"] is None
    art = AdapterArtifact.from_bytes(reader_service.store.adapter_weights(no_reader["adapter_id"]))
    assert art.lora_config["r"] == 8


def test_distillation_adds_a_positive_kl_term(reader_service, tmp_path):
    from lloco_runtime.training.encoder_training import load_teacher

    lloco = reader_service.lloco
    host = lloco.host
    name = load_teacher(host, _teacher(host, tmp_path / "teacher.safetensors"))
    try:
        chunk = reader_service.store.list_chunks("g")[0]
        pair = Pair("Who was the keeper?", "Elspeth Morrow", [chunk.chunk_id], chunk.text)
        batcher = _Batcher(lloco, reader_service, FinetuneConfig(kl_weight=1.0), name)
        with torch.no_grad():
            ce = batcher.loss(pair, None, kl=False).item()
            total = batcher.loss(pair, None).item()
            no_text = batcher.loss(Pair(pair.question, pair.answer, pair.chunk_ids), None).item()
        assert total > ce + 1e-4  # KL(teacher || student) > 0 for a teacher that differs from the student
        assert no_text == pytest.approx(ce)  # nothing for the teacher to read: no KL term
    finally:
        host.delete_adapter(name)
    assert TRAIN_ADAPTER not in host.adapter_names()
