"""LoRA adapters: a self-describing safetensors artifact, and an LRU of adapters loaded on one base model.

An :class:`AdapterArtifact` is safetensors bytes whose header metadata records the LoRA config and the
base-model and encoder fingerprints it was trained with, so an adapter can never be applied to a decoder
or to cheat sheets it was not trained for. :class:`AdapterManager` injects adapters into the shared model
on demand, evicts the least recently used one above ``capacity`` (never one a request is using), and
hands out adapter names that :meth:`LoadedModel.using` activates per forward step.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import json
import logging
import re
import struct
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .errors import AdapterError, FingerprintMismatchError, NotFoundError
from .models import LoadedModel

log = logging.getLogger(__name__)
FORMAT = "lloco-adapter/1"
# LoraConfig fields about where and how a config is used, not what the adapter computes. An artifact does not
# record them, so its config (and digest) stays the same through an export to a PEFT folder and an import back,
# on any machine and peft version (export_peft_folder sets task_type, inference_mode and base_model_name_or_path).
CONTEXT_LORA_FIELDS = frozenset(
    {
        "task_type",
        "peft_type",
        "auto_mapping",
        "peft_version",
        "base_model_name_or_path",
        "revision",
        "inference_mode",
        "runtime_config",
    }
)


@dataclass(frozen=True)
class AdapterArtifact:
    """A LoRA adapter as bytes plus what it was trained against."""

    tensors: dict[str, torch.Tensor] = field(repr=False)
    lora_config: dict
    base_fingerprint: str
    encoder_fingerprint: str | None
    info: dict = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        """safetensors bytes with the config and fingerprints in the header metadata."""
        meta = {
            "format": FORMAT,
            "lora_config": json.dumps(self.lora_config, sort_keys=True),
            "base_fingerprint": self.base_fingerprint,
            "encoder_fingerprint": self.encoder_fingerprint or "",
            "info": json.dumps(self.info, sort_keys=True, default=str),
            "digest": self.digest,
        }
        return st_save({k: v.detach().to("cpu").contiguous() for k, v in self.tensors.items()}, metadata=meta)

    @classmethod
    def from_bytes(cls, data: bytes) -> AdapterArtifact:
        """Parse bytes made by :meth:`to_bytes`; anything else raises :class:`AdapterError`."""
        meta = read_safetensors_metadata(data)
        if meta.get("format") != FORMAT:
            raise AdapterError(f"not a lloco adapter (format {meta.get('format')!r}, expected {FORMAT!r})")
        try:
            tensors = st_load(bytes(data))
            lora_config = json.loads(meta["lora_config"])
            info = json.loads(meta.get("info") or "{}")
        except Exception as exc:  # safetensors raises its own error types
            raise AdapterError(f"corrupted adapter bytes: {exc}") from exc
        art = cls(
            tensors=tensors,
            lora_config=lora_config,
            base_fingerprint=meta.get("base_fingerprint", ""),
            encoder_fingerprint=meta.get("encoder_fingerprint") or None,
            info=info,
        )
        # safetensors has no checksum: the digest in the header catches damaged weights.
        if "digest" not in meta or art.digest != meta["digest"]:
            raise AdapterError(
                "corrupted adapter bytes: the weights do not match the recorded digest; "
                "register the adapter again from its source"
            )
        return art

    @property
    def digest(self) -> str:
        """Content hash of the weights and config (stable across serialisations)."""
        h = hashlib.sha256(json.dumps(self.lora_config, sort_keys=True).encode())
        for k in sorted(self.tensors):
            h.update(k.encode())
            h.update(str(tuple(self.tensors[k].shape)).encode())
            h.update(self.tensors[k].detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
        return h.hexdigest()

    @classmethod
    def from_model(
        cls,
        model: torch.nn.Module,
        adapter_name: str,
        *,
        base_fingerprint: str,
        encoder_fingerprint: str | None,
        info: dict | None = None,
    ) -> AdapterArtifact:
        """Capture an adapter injected in ``model`` (e.g. after training) as an artifact."""
        from peft import get_peft_model_state_dict

        cfg = model.peft_config[adapter_name]
        lora = lora_config_to_dict(cfg)
        state = get_peft_model_state_dict(model, adapter_name=adapter_name)
        # Copies, not views of the live parameters: training on must not change a captured artifact.
        tensors = {k: v.detach().to("cpu", copy=True) for k, v in state.items()}
        return cls(
            tensors=tensors,
            lora_config=lora,
            base_fingerprint=base_fingerprint,
            encoder_fingerprint=encoder_fingerprint,
            info=info or {},
        )


def _jsonable(v):
    """A LoraConfig value as JSON: sets as sorted lists, enums as their values, nested dicts and lists alike."""
    if isinstance(v, enum.Enum):
        return _jsonable(v.value)
    if isinstance(v, set | frozenset):
        items = [_jsonable(x) for x in v]
        try:
            return sorted(items)
        except TypeError:  # mixed types
            return sorted(items, key=repr)
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if v is None or isinstance(v, str | int | float | bool):
        return v
    raise AdapterError(
        f"LoRA config value {v!r} ({type(v).__name__}) cannot be recorded in an adapter artifact"
    )


def read_safetensors_metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of safetensors bytes, parsed from the header without loading tensors."""
    if len(data) < 8:
        raise AdapterError("adapter bytes are truncated (no safetensors header)")
    (n,) = struct.unpack_from("<Q", data, 0)
    if n <= 0 or 8 + n > len(data) or n > 100_000_000:
        raise AdapterError("adapter bytes are corrupted (bad safetensors header length)")
    try:
        header = json.loads(bytes(data[8 : 8 + n]))
    except (ValueError, RecursionError) as exc:  # RecursionError: deeply nested garbage
        raise AdapterError(f"adapter bytes are corrupted (header is not JSON: {exc})") from None
    if not isinstance(header, dict) or not isinstance(header.get("__metadata__") or {}, dict):
        raise AdapterError("adapter bytes are corrupted (safetensors header is not an object)")
    meta = header.get("__metadata__") or {}
    return {str(k): str(v) for k, v in meta.items()}


def lora_config_to_dict(cfg) -> dict:
    """The artifact's record of a peft ``LoraConfig``: the whole of ``cfg.to_dict()`` as JSON values (sets as
    sorted lists, enums as their values), less the fields about where it is used (:data:`CONTEXT_LORA_FIELDS`)."""
    return {k: _jsonable(v) for k, v in cfg.to_dict().items() if k not in CONTEXT_LORA_FIELDS}


def lora_config_from_dict(d: dict):
    """A peft ``LoraConfig`` from an artifact's dict (the whole config, or the subset older lloco recorded).

    Keys that are not init fields of the installed peft are dropped when empty (a newer peft's default); a newer
    peft's setting that is set raises :class:`AdapterError` rather than being silently ignored."""
    import dataclasses

    import peft
    from peft import LoraConfig

    fields = {f.name for f in dataclasses.fields(LoraConfig) if f.init}
    newer = sorted(
        k
        for k, v in d.items()
        if k not in fields and k not in CONTEXT_LORA_FIELDS and v not in (None, False, "", [], {})
    )
    if newer:
        raise AdapterError(
            f"the adapter's LoRA config sets {newer}, settings peft {peft.__version__} does not know (a newer "
            "peft recorded them); upgrade peft to use this adapter"
        )
    kwargs = {k: v for k, v in d.items() if k in fields and k not in CONTEXT_LORA_FIELDS}
    try:
        return LoraConfig(**kwargs)
    except (TypeError, ValueError) as exc:
        raise AdapterError(
            f"the adapter's LoRA config is not valid for peft {peft.__version__}: {exc}"
        ) from None


AdapterSource = Callable[[str], bytes]


class AdapterManager:
    """Loads adapters on demand (from ``source``, e.g. the store), keeps at most ``capacity`` in memory.

    Use ``with manager.acquire(adapter_id) as name:`` around a request; pass ``name`` to the generator.
    An acquired adapter is pinned and never evicted until released.
    """

    def __init__(
        self,
        host: LoadedModel,
        *,
        encoder_fingerprint: str | None,
        capacity: int = 4,
        source: AdapterSource | None = None,
    ) -> None:
        if capacity < 1:
            raise AdapterError("adapter capacity must be >= 1")
        self.host = host
        self.encoder_fingerprint = encoder_fingerprint
        self.capacity = capacity
        self.source = source
        self._registered: dict[str, bytes] = {}
        self._loaded: OrderedDict[str, str] = OrderedDict()  # adapter_id -> peft adapter name
        self._pins: dict[str, int] = {}
        self._lock = threading.RLock()

    @staticmethod
    def peft_name(adapter_id: str) -> str:
        """A module-safe, collision-free peft adapter name for an adapter id."""
        slug = re.sub(r"[^A-Za-z0-9_]", "_", adapter_id)[:40]
        return f"lloco_{slug}_{hashlib.sha1(adapter_id.encode()).hexdigest()[:8]}"

    def register(self, adapter_id: str, data: bytes | AdapterArtifact) -> None:
        """Make an adapter loadable by id (validated now, injected on first use)."""
        art = data if isinstance(data, AdapterArtifact) else AdapterArtifact.from_bytes(data)
        self._check(adapter_id, art)
        with self._lock:
            self._registered[adapter_id] = (
                art.to_bytes() if isinstance(data, AdapterArtifact) else bytes(data)
            )
            if adapter_id in self._loaded and not self._pins.get(adapter_id):
                self._unload(adapter_id)  # re-registered: reload the new weights on next use

    def _check(self, adapter_id: str, art: AdapterArtifact) -> None:
        if art.base_fingerprint != self.host.fingerprint:
            raise FingerprintMismatchError(
                f"adapter {adapter_id!r} was trained on base model {art.base_fingerprint[:12]}, but the loaded "
                f"decoder is {self.host.name!r} ({self.host.fingerprint[:12]}); load the matching model or "
                "fine-tune a new adapter for this one"
            )
        if (
            self.encoder_fingerprint
            and art.encoder_fingerprint
            and art.encoder_fingerprint != self.encoder_fingerprint
        ):
            raise FingerprintMismatchError(
                f"adapter {adapter_id!r} was trained on cheat sheets of encoder {art.encoder_fingerprint[:12]}, "
                f"but the current encoder is {self.encoder_fingerprint[:12]}; load that encoder, or fine-tune "
                "the group again with the current one"
            )

    def loaded(self) -> list[str]:
        """Adapter ids currently in memory, least recently used first."""
        with self._lock:
            return list(self._loaded)

    def _bytes_for(self, adapter_id: str) -> bytes:
        if adapter_id in self._registered:
            return self._registered[adapter_id]
        if self.source is None:
            raise NotFoundError(f"unknown adapter {adapter_id!r}; register it first (or list adapters)")
        data = self.source(adapter_id)
        if data is None:
            raise NotFoundError(f"unknown adapter {adapter_id!r}; `lloco adapters list` shows the known ones")
        return data

    def _load(self, adapter_id: str) -> str:
        from peft import set_peft_model_state_dict

        art = AdapterArtifact.from_bytes(self._bytes_for(adapter_id))
        self._check(adapter_id, art)
        name = self.peft_name(adapter_id)
        model = self.host.model
        with self.host.lock:
            try:
                self.host.add_adapter(name, lora_config_from_dict(art.lora_config))
                result = set_peft_model_state_dict(model, art.tensors, adapter_name=name)
            except Exception as exc:
                if name in self.host.adapter_names():
                    self.host.delete_adapter(name)
                self.host.resync()
                raise AdapterError(f"adapter {adapter_id!r} does not fit the model: {exc}") from exc
            unexpected = list(getattr(result, "unexpected_keys", []) or [])
            if unexpected:
                self.host.delete_adapter(name)
                raise AdapterError(f"adapter {adapter_id!r} has weights the model lacks: {unexpected[:3]}")
            # Injected modules start in training mode: without this, an adapter trained with lora_dropout > 0
            # (as `lloco finetune` does) would answer through random dropout, differently on every call.
            for module in model.modules():
                dropout = getattr(module, "lora_dropout", None)
                if isinstance(dropout, torch.nn.ModuleDict) and name in dropout:
                    dropout[name].eval()
            self.host.resync()
        self._loaded[adapter_id] = name
        log.info("loaded adapter %s as %s", adapter_id, name)
        return name

    def _unload(self, adapter_id: str) -> None:
        name = self._loaded.pop(adapter_id)
        self.host.delete_adapter(name)
        log.info("evicted adapter %s", adapter_id)

    def _evict(self) -> None:
        for aid in list(self._loaded):
            if len(self._loaded) <= self.capacity:
                return
            if not self._pins.get(aid):
                self._unload(aid)
        if len(self._loaded) > self.capacity:
            log.warning(
                "adapter LRU over capacity (%d > %d): all loaded adapters are in use",
                len(self._loaded),
                self.capacity,
            )

    @contextlib.contextmanager
    def acquire(self, adapter_id: str | None) -> Iterator[str | None]:
        """Pin ``adapter_id`` (loading it if needed) for one request; yields its peft name (None: base)."""
        if adapter_id is None:
            yield None
            return
        with self._lock:
            if adapter_id in self._loaded:
                self._loaded.move_to_end(adapter_id)
                name = self._loaded[adapter_id]
            else:
                name = self._load(adapter_id)
            self._pins[adapter_id] = self._pins.get(adapter_id, 0) + 1
            self._evict()
        try:
            yield name
        finally:
            with self._lock:
                self._pins[adapter_id] -= 1
                if not self._pins[adapter_id]:
                    del self._pins[adapter_id]
                self._evict()
