"""Loading: encoders, adapters and models load only from safetensors; a file that is not valid safetensors, or
whose tensors do not fit the base model, is refused with a ModelLoadError / AdapterError naming the fix (never a
raw safetensors, JSON, KeyError or torch size-mismatch error, and never a pickle)."""

from __future__ import annotations

import io
import json
import shutil

import pytest
import torch
from reliability_helpers import docs, make_adapter_bytes
from safetensors.torch import load_file, save_file

from lloco_runtime import ContextEncoder, EncoderConfig, load_model
from lloco_runtime.adapters import AdapterArtifact
from lloco_runtime.encoder import CONFIG_FILE, WEIGHTS_FILE
from lloco_runtime.errors import AdapterError, ModelLoadError


def _pickle_bytes() -> bytes:
    buf = io.BytesIO()
    torch.save({"embed_summary.weight": torch.zeros(4, 64)}, buf)  # a pickle: must never be unpickled
    return buf.getvalue()


@pytest.fixture
def saved_encoder(make_tiny_host, tmp_path):
    host = make_tiny_host()
    enc = ContextEncoder(host, EncoderConfig(segment_length=32, summary_length=4, lora_r=2))
    enc.save(tmp_path / "enc")
    return tmp_path / "enc", host


def _damage(folder, how: str, host) -> None:
    w = folder / WEIGHTS_FILE
    if how == "garbage":
        w.write_bytes(b"\x00\x01not safetensors at all" * 10)
    elif how == "pickle":
        w.write_bytes(_pickle_bytes())
    elif how == "truncated":
        w.write_bytes(w.read_bytes()[:-40])
    elif how == "empty":
        w.write_bytes(b"")
    elif how == "missing_summary":
        t = load_file(str(w))
        del t["embed_summary.weight"]
        save_file(t, str(w))
    elif how == "summary_shape":
        t = load_file(str(w))
        t["embed_summary.weight"] = torch.zeros(4, host.hidden_size * 2)
        save_file(t, str(w))
    elif how == "lora_shape":
        t = load_file(str(w))
        k = next(k for k in t if "lora_A" in k)
        t[k] = torch.zeros(t[k].shape[0], t[k].shape[1] + 3)
        save_file(t, str(w))
    elif how == "bin_only":
        w.unlink()
        (folder / "encoder.bin").write_bytes(_pickle_bytes())
    elif how == "config_not_json":
        (folder / CONFIG_FILE).write_text("{not json")
    elif how == "config_not_object":
        (folder / CONFIG_FILE).write_text("[1, 2]")
    elif how == "config_bad_values":
        meta = json.loads((folder / CONFIG_FILE).read_text())
        meta["config"]["segment_length"] = -3
        (folder / CONFIG_FILE).write_text(json.dumps(meta))


@pytest.mark.parametrize(
    "how",
    [
        "garbage",
        "pickle",
        "truncated",
        "empty",
        "missing_summary",
        "summary_shape",
        "lora_shape",
        "bin_only",
        "config_not_json",
        "config_not_object",
        "config_bad_values",
    ],
)
def test_damaged_encoder_folders_are_refused(saved_encoder, make_tiny_host, how):
    folder, host = saved_encoder
    _damage(folder, how, host)
    fresh = make_tiny_host()
    with pytest.raises(ModelLoadError) as err:
        ContextEncoder.load(folder, fresh)
    assert str(folder) in str(err.value) or WEIGHTS_FILE in str(err.value) or CONFIG_FILE in str(err.value)
    assert fresh.adapter_names() == [], "a refused encoder left its LoRA in the model"


def test_autocompressor_bin_is_read_as_weights_only(tiny_model_dir, tmp_path):
    """A ``pytorch_model.bin`` holding only tensors is read with ``torch.load(weights_only=True)`` (a pickle that
    would run code is refused unread: tests/runtime/test_paper_setup.py); here the folder's plain Llama config
    lacks the AutoCompressor fields, and the error says so, naming the tensor it found."""
    folder = tmp_path / "ac"
    folder.mkdir()
    shutil.copy(tiny_model_dir / "config.json", folder / "config.json")
    (folder / "pytorch_model.bin").write_bytes(_pickle_bytes())
    with pytest.raises(ModelLoadError, match="summary fields.*embed_summary.weight"):
        ContextEncoder.from_autocompressor(folder)


@pytest.mark.parametrize(
    "blob",
    [_pickle_bytes(), b"", b"PK\x03\x04" * 20, b"\x10\x00\x00\x00\x00\x00\x00\x00{}"],
    ids=["pickle", "empty", "zip", "short-header"],
)
def test_non_safetensors_adapters_are_refused_everywhere(filled, tiny_lloco, blob):
    from lloco_runtime.service import LLoCOService

    with pytest.raises(AdapterError):
        AdapterArtifact.from_bytes(blob)
    with pytest.raises(AdapterError):
        tiny_lloco.adapters.register("x", blob)
    with pytest.raises(AdapterError, match="safetensors"):
        filled.register_adapter("g", blob, base_fingerprint="b", encoder_fingerprint="e")
    assert filled.status().counts["adapters"] == 0
    assert LLoCOService(tiny_lloco, filled).answer("lighthouse?", group="g", max_new_tokens=2)


def test_adapter_whose_shapes_do_not_fit_is_refused_when_served(
    filled, tiny_lloco, tiny_llama_factory, tmp_path
):
    """An adapter trained on a wider model of the same family: valid safetensors, wrong shapes."""
    from lloco_runtime.service import LLoCOService

    wide = load_model(
        tiny_llama_factory(tmp_path / "wide", hidden_size=128, intermediate_size=256),
        device="cpu",
        dtype="float32",
    )
    host = tiny_lloco.host
    art = AdapterArtifact.from_bytes(make_adapter_bytes(wide, tiny_lloco.encoder.fingerprint, seed=4))
    forged = AdapterArtifact(
        tensors=art.tensors,
        lora_config=art.lora_config,
        base_fingerprint=host.fingerprint,
        encoder_fingerprint=tiny_lloco.encoder.fingerprint,
    )  # lies about its base model
    info = filled.register_adapter(
        "g",
        forged.to_bytes(),
        base_fingerprint=host.fingerprint,
        encoder_fingerprint=tiny_lloco.encoder.fingerprint,
        activate=True,
    )
    service = LLoCOService(tiny_lloco, filled)
    with pytest.raises(AdapterError, match="does not fit"):
        service.answer("When was the lighthouse built?", group="g", max_new_tokens=2)
    assert host.adapter_names() == [] and tiny_lloco.adapters.loaded() == []
    filled.deactivate_adapter("g")
    assert service.answer("When was the lighthouse built?", group="g", max_new_tokens=2).adapter_id is None
    assert info.id


def test_adapter_with_honest_other_base_is_refused_by_fingerprint(
    filled, tiny_lloco, tiny_llama_factory, tmp_path
):
    from lloco_runtime.errors import FingerprintMismatchError
    from lloco_runtime.service import LLoCOService

    other = load_model(tiny_llama_factory(tmp_path / "other", seed=9), device="cpu", dtype="float32")
    blob = make_adapter_bytes(other, tiny_lloco.encoder.fingerprint, seed=5)
    filled.register_adapter(
        "g",
        blob,
        base_fingerprint=other.fingerprint,
        encoder_fingerprint=tiny_lloco.encoder.fingerprint,
        activate=True,
    )
    with pytest.raises(FingerprintMismatchError, match="fine-tune"):
        LLoCOService(tiny_lloco, filled).answer("lighthouse?", group="g", max_new_tokens=2)
    assert tiny_lloco.host.adapter_names() == []
    assert docs()  # the fixture texts are intact
