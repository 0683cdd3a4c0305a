"""PEFT LoRA folders in and out: ``adapter_config.json`` + ``adapter_model.safetensors`` (or ``.bin``).

:func:`read_peft_folder` reads a folder written by peft's ``save_pretrained`` (``.bin`` weights only through
``torch.load(weights_only=True)``: lloco never unpickles arbitrary objects); :func:`check_fits` refuses an
adapter that does not fit a loaded decoder (architecture, hidden size, layer count, target modules, tensor
shapes), naming what it found; :func:`to_artifact` turns it into an :class:`AdapterArtifact` for the store.
:func:`export_peft_folder` writes an artifact back as a folder that ``peft.PeftModel.from_pretrained`` loads.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .adapters import FORMAT, AdapterArtifact, lora_config_from_dict, lora_config_to_dict
from .errors import AdapterError, FingerprintMismatchError, InputError
from .models import LoadedModel
from .weights_io import listing, load_bin_weights

CONFIG_NAME = "adapter_config.json"
SAFETENSORS_NAME = "adapter_model.safetensors"
BIN_NAME = "adapter_model.bin"
PEFT_PREFIX = "base_model.model."  # peft's PeftModel wraps the model twice (PeftModel -> LoraModel -> model)
CHECK_ADAPTER = "lloco_import_check"

# LoraConfig fields that do not change what the adapter computes once its weights are loaded.
_IGNORED_FIELDS = {
    "task_type",
    "peft_type",
    "auto_mapping",
    "peft_version",
    "base_model_name_or_path",
    "revision",
    "inference_mode",
    "init_lora_weights",
    "lora_dropout",
    "megatron_core",
    "qalora_group_size",
    "ensure_weight_tying",
    "loftq_config",
    "eva_config",
    "corda_config",
    "lora_ga_config",
}
# LoraConfig options lloco applies when they differ from peft's defaults: which modules get a LoRA, its rank and
# scaling. A folder setting any other option to a non-default value (DoRA, modules_to_save, trainable tokens,
# target_parameters, ...) is refused by name, not imported with the option silently dropped.
SUPPORTED_LORA_OPTIONS = frozenset(
    {
        "r",
        "lora_alpha",
        "lora_dropout",
        "target_modules",
        "bias",
        "use_rslora",
        "rank_pattern",
        "alpha_pattern",
        "layers_to_transform",
        "layers_pattern",
        "exclude_modules",
        "fan_in_fan_out",
        "lora_bias",
    }
)
# ``init_lora_weights`` values that only change the starting point of training; the others (pissa, olora,
# corda, loftq, lora-ga) also rewrite the base weights, so such an adapter is wrong on the original model.
_PLAIN_INITS = (True, False, "gaussian", "orthogonal", "eva")
_TASKS = (None, "CAUSAL_LM")


@dataclass
class PeftFolder:
    """A PEFT LoRA folder as read from disk (nothing checked against a model yet)."""

    path: Path
    config: Any  # peft LoraConfig
    raw_config: dict
    tensors: dict[str, torch.Tensor] = field(repr=False)  # keys without peft's ``base_model.model.`` prefix
    weights_file: str
    metadata: dict[str, str] = field(default_factory=dict)


# -- reading ------------------------------------------------------------------------------------------------


def read_peft_folder(path: str | os.PathLike) -> PeftFolder:
    """Read and check the files of a PEFT LoRA folder (AdapterError naming what was found otherwise)."""
    folder = Path(path)
    if not folder.is_dir():
        raise InputError(
            f"{folder} is not a folder; give the folder peft's save_pretrained wrote "
            f"({CONFIG_NAME} + {SAFETENSORS_NAME})"
        )
    cfg_file = folder / CONFIG_NAME
    if not cfg_file.is_file():
        raise AdapterError(
            f"{folder} is not a PEFT adapter folder: it has no {CONFIG_NAME} (found: "
            f"{listing(folder)}); save the adapter with peft's `model.save_pretrained(DIR)`, which "
            f"writes {CONFIG_NAME} next to {SAFETENSORS_NAME}"
        )
    raw = _read_config_json(cfg_file)
    config = _lora_config(raw, cfg_file)
    if (folder / SAFETENSORS_NAME).is_file():
        weights_file = SAFETENSORS_NAME
        tensors, metadata = _read_safetensors(folder / SAFETENSORS_NAME)
    elif (folder / BIN_NAME).is_file():
        weights_file = BIN_NAME
        tensors, metadata = (
            load_bin_weights(
                folder / BIN_NAME,
                error=AdapterError,
                fix="Convert it to adapter_model.safetensors with a tool you trust (or save it again with peft's "
                "save_pretrained, which writes safetensors)",
                not_tensors_fix="; save the adapter again with peft's save_pretrained",
            ),
            {},
        )
    else:
        raise AdapterError(
            f"{folder} has {CONFIG_NAME} but no weights: neither {SAFETENSORS_NAME} nor {BIN_NAME} "
            f"(found: {listing(folder)}); copy the adapter's weights file next to its config"
        )
    return PeftFolder(
        path=folder,
        config=config,
        raw_config=raw,
        tensors=_normalise_keys(tensors, folder),
        weights_file=weights_file,
        metadata=metadata,
    )


def _read_config_json(cfg_file: Path) -> dict:
    try:
        raw = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise AdapterError(
            f"{cfg_file} is not valid JSON ({exc}); write it again with peft's save_pretrained"
        ) from None
    if not isinstance(raw, dict):
        raise AdapterError(f"{cfg_file} holds a JSON {type(raw).__name__}, not an object of LoRA settings")
    return raw


def _lora_config(raw: dict, cfg_file: Path):
    """A peft ``LoraConfig`` from the JSON, refusing other adapter types and LoRA features lloco cannot apply."""
    from peft import LoraConfig

    peft_type = raw.get("peft_type")
    if peft_type != "LORA":
        raise AdapterError(
            f"{cfg_file} describes a {peft_type or 'untyped'} adapter (peft_type {peft_type!r}); "
            "lloco imports LoRA adapters only (peft_type 'LORA')"
        )
    task = raw.get("task_type")
    if task not in _TASKS:
        raise AdapterError(
            f"{cfg_file} is a {task} adapter; lloco applies adapters to a causal language model, "
            "so it imports task_type CAUSAL_LM (or none)"
        )
    fields = set(LoraConfig.__dataclass_fields__)
    newer = sorted(
        k
        for k, v in raw.items()
        if k not in fields and k != "runtime_config" and v not in (None, False, "", [], {})
    )
    if newer:
        raise AdapterError(
            f"{cfg_file} sets {newer}, settings this peft version does not know (a newer peft "
            "wrote it); lloco cannot apply them: retrain or save it without them"
        )
    kwargs = {k: v for k, v in raw.items() if k in fields}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            config = LoraConfig.from_peft_type(**LoraConfig.check_kwargs(**kwargs))
    except (TypeError, ValueError) as exc:
        raise AdapterError(f"{cfg_file} is not a valid LoRA config for peft: {exc}") from None
    init = config.init_lora_weights
    if init not in _PLAIN_INITS:
        raise AdapterError(
            f"{cfg_file} has init_lora_weights={init!r}: such an adapter was trained against "
            "modified base weights and is wrong on the original model; save it converted "
            "(peft's save_pretrained(..., path_initial_model_for_weight_conversion=...))"
        )
    defaults = LoraConfig().to_dict()
    current = config.to_dict()
    unsupported = sorted(
        k
        for k, v in current.items()
        if k not in _IGNORED_FIELDS and k not in SUPPORTED_LORA_OPTIONS and v != defaults.get(k)
    )
    if unsupported:
        shown = ", ".join(f"{k}={current[k]!r}" for k in unsupported)
        raise AdapterError(
            f"{cfg_file} uses LoRA features lloco cannot apply: {shown}; merge or retrain it as a "
            "plain LoRA (no DoRA, modules_to_save, trainable tokens or target_parameters)"
        )
    if not config.target_modules:
        raise AdapterError(
            f"{cfg_file} names no target_modules; a LoRA folder from peft's save_pretrained always lists them"
        )
    return config


def _read_safetensors(file: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(file), framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a mapping)
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
        raise AdapterError(
            f"{file} is not a readable safetensors file ({exc}); save the adapter again"
        ) from None
    return tensors, metadata


_NAMED = re.compile(
    r"^(.*\.lora_(?:A|B|embedding_A|embedding_B|magnitude_vector))\.[A-Za-z0-9_]+\.(weight|bias)$"
)


def _normalise_keys(tensors: dict[str, torch.Tensor], folder: Path) -> dict[str, torch.Tensor]:
    """Keys as lloco's artifacts hold them: no ``base_model.model.`` prefix, no adapter name."""
    out: dict[str, torch.Tensor] = {}
    for key, value in tensors.items():
        k = key.removeprefix(PEFT_PREFIX)
        m = _NAMED.match(k)
        if m:  # "...lora_A.default.weight" as some older savers wrote it
            k = f"{m.group(1)}.{m.group(2)}"
        if k in out:
            raise AdapterError(
                f"{folder}: weight {key!r} appears twice after removing peft's prefixes; "
                "save the adapter again with peft's save_pretrained"
            )
        if not value.is_floating_point():
            raise AdapterError(
                f"{folder}: weight {key!r} has dtype {value.dtype}, not a floating-point LoRA weight"
            )
        if not torch.isfinite(value).all():
            raise AdapterError(
                f"{folder}: weight {key!r} contains NaN or infinite values; the adapter is damaged"
            )
        out[k] = value
    if not out:
        raise AdapterError(f"{folder}: the weights file holds no tensors")
    return out


# -- checking against the loaded decoder ----------------------------------------------------------------------


_LAYER = re.compile(r"(?:^|\.)(?:layers|h|blocks|layer)\.(\d+)\.")
_SUFFIX = re.compile(r"\.(lora_A|lora_B)\.(weight|bias)$")


def check_fits(adapter: PeftFolder, host: LoadedModel) -> None:
    """Refuse (AdapterError) an adapter that does not fit ``host``'s decoder, saying what was found and the fix."""
    model = host.model
    mcfg = model.config
    where = f"{adapter.path}"
    _check_declared_base(adapter, host)
    recorded = adapter.metadata.get("lloco_base_fingerprint")
    if recorded and recorded != host.fingerprint:
        raise FingerprintMismatchError(
            f"{where} was exported by lloco from an adapter trained on base model {recorded[:12]}, but the loaded "
            f"decoder is {host.name!r} ({host.fingerprint[:12]}); import it with that model (--model)"
        )
    module_names = [n for n, _ in model.named_modules() if n]
    targets = adapter.config.target_modules
    if isinstance(targets, (list, set, tuple, frozenset)):
        missing = sorted(t for t in targets if not any(n == t or n.endswith("." + t) for n in module_names))
        if missing:
            linear = sorted(
                {
                    n.rsplit(".", 1)[-1]
                    for n, m in model.named_modules()
                    if isinstance(m, torch.nn.Linear) and n
                }
            )
            raise AdapterError(
                f"{where} targets modules the loaded decoder {host.name!r} ({mcfg.model_type}) does not have: "
                f"{missing}; its linear layers are {linear}. The adapter was made for another architecture: "
                "import it with the base model it was trained on (--model)"
            )
    n_layers = getattr(mcfg, "num_hidden_layers", None)
    indices = sorted({int(m.group(1)) for k in adapter.tensors if (m := _LAYER.search(k))})
    if n_layers is not None and indices and indices[-1] >= n_layers:
        raise AdapterError(
            f"{where} has weights for layer {indices[-1]} (at least {indices[-1] + 1} layers) but the loaded "
            f"decoder {host.name!r} has {n_layers} layers; import it with the base model it was trained on (--model)"
        )
    modules = dict(model.named_modules())
    absent = sorted(
        {
            _SUFFIX.sub("", k)
            for k in adapter.tensors
            if _SUFFIX.search(k) and _SUFFIX.sub("", k) not in modules
        }
    )
    if absent:
        raise AdapterError(
            f"{where} has weights for modules the loaded decoder {host.name!r} lacks, e.g. "
            f"{absent[:3]}; the adapter was made for another architecture: import it with the base "
            "model it was trained on (--model)"
        )
    _check_hidden_size(adapter, host, modules)
    _check_against_injected(adapter, host)


def _check_declared_base(adapter: PeftFolder, host: LoadedModel) -> None:
    """When ``base_model_name_or_path`` is a local model folder, its config must describe the loaded decoder."""
    base = adapter.config.base_model_name_or_path
    if not base:
        return
    cfg_file = Path(base) / "config.json"
    try:
        if not cfg_file.is_file():
            return  # a hub id or a folder not on this machine: the weights are checked below instead
        declared = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return
    if not isinstance(declared, dict):
        return
    mcfg = host.model.config
    for key in ("model_type", "hidden_size", "num_hidden_layers"):
        want, have = declared.get(key), getattr(mcfg, key, None)
        if want is not None and have is not None and want != have:
            raise AdapterError(
                f"{adapter.path} was trained on {base} ({key} {want!r}), but the loaded decoder {host.name!r} "
                f"has {key} {have!r}; import it with that base model (--model {base})"
            )


def _check_hidden_size(adapter: PeftFolder, host: LoadedModel, modules: dict) -> None:
    hidden = host.hidden_size
    for key, value in sorted(adapter.tensors.items()):
        m = _SUFFIX.search(key)
        if not m or m.group(2) != "weight" or value.dim() != 2:
            continue
        module = modules[_SUFFIX.sub("", key)]
        if not isinstance(module, torch.nn.Linear):
            continue
        kind = m.group(1)
        found = value.shape[1] if kind == "lora_A" else value.shape[0]
        need = module.in_features if kind == "lora_A" else module.out_features
        if found == need:
            continue
        side = "input" if kind == "lora_A" else "output"
        if need == hidden:
            raise AdapterError(
                f"{adapter.path} was made for a decoder with hidden size {found} ({key} has shape "
                f"{list(value.shape)}), but the loaded decoder {host.name!r} has hidden size {hidden}; import it "
                "with the base model it was trained on (--model)"
            )
        raise AdapterError(
            f"{adapter.path}: {key} has shape {list(value.shape)}, but that layer's {side} size in the loaded "
            f"decoder {host.name!r} is {need}; the adapter was made for another model: import it with the base "
            "model it was trained on (--model)"
        )


def _check_against_injected(adapter: PeftFolder, host: LoadedModel) -> None:
    """Inject the config as a scratch adapter and compare names and shapes with the file's tensors exactly."""
    from peft import get_peft_model_state_dict

    config = lora_config_from_dict(lora_config_to_dict(adapter.config))
    with host.lock:
        if CHECK_ADAPTER in host.adapter_names():
            host.delete_adapter(CHECK_ADAPTER)
        try:
            try:
                host.add_adapter(CHECK_ADAPTER, config)
            except (ValueError, TypeError, RuntimeError) as exc:
                raise AdapterError(
                    f"{adapter.path} does not fit the loaded decoder {host.name!r}: peft could not "
                    f"apply its config ({exc})"
                ) from None
            expected = {
                k: tuple(v.shape)
                for k, v in get_peft_model_state_dict(host.model, adapter_name=CHECK_ADAPTER).items()
            }
        finally:
            if CHECK_ADAPTER in host.adapter_names():
                host.delete_adapter(CHECK_ADAPTER)
    got = {k: tuple(v.shape) for k, v in adapter.tensors.items()}
    extra = sorted(set(got) - set(expected))
    if extra:
        raise AdapterError(
            f"{adapter.path} has weights its config does not produce on {host.name!r}, e.g. "
            f"{extra[:3]}; check target_modules / layers_to_transform in {CONFIG_NAME}"
        )
    lacking = sorted(set(expected) - set(got))
    if lacking:
        raise AdapterError(
            f"{adapter.path} lacks {len(lacking)} weight(s) its config targets on {host.name!r}, e.g. "
            f"{lacking[:3]}; the weights file does not belong to this {CONFIG_NAME}, or was cut short"
        )
    wrong = [(k, got[k], expected[k]) for k in sorted(got) if got[k] != expected[k]]
    if wrong:
        k, g, e = wrong[0]
        raise AdapterError(
            f"{adapter.path}: {k} has shape {list(g)}, but its config (r, rank_pattern) on "
            f"{host.name!r} makes it {list(e)}; {len(wrong)} weight(s) differ: the weights file "
            f"does not match {CONFIG_NAME}"
        )


def to_artifact(
    adapter: PeftFolder, host: LoadedModel, *, encoder_fingerprint: str, info: dict | None = None
) -> AdapterArtifact:
    """The checked adapter as a lloco artifact for ``host`` and the encoder whose cheat sheets it will read."""
    recorded = adapter.metadata.get("lloco_encoder_fingerprint")
    if recorded and recorded != encoder_fingerprint:
        raise FingerprintMismatchError(
            f"{adapter.path} was exported by lloco from an adapter trained on cheat sheets of encoder "
            f"{recorded[:12]}, but the current encoder is {encoder_fingerprint[:12]}; import it with that encoder "
            "(--encoder)"
        )
    provenance = {
        "imported_from": "peft",
        "source": str(adapter.path.resolve()),
        "weights_file": adapter.weights_file,
        "base_model_name_or_path": adapter.config.base_model_name_or_path,
        "peft_version": adapter.raw_config.get("peft_version"),
    }
    return AdapterArtifact(
        tensors={k: v.detach().to("cpu").contiguous() for k, v in adapter.tensors.items()},
        lora_config=lora_config_to_dict(adapter.config),
        base_fingerprint=host.fingerprint,
        encoder_fingerprint=encoder_fingerprint,
        info={**provenance, **(info or {})},
    )


def import_peft_folder(
    path: str | os.PathLike, host: LoadedModel, *, encoder_fingerprint: str
) -> AdapterArtifact:
    """Read, check against ``host`` and convert a PEFT LoRA folder (see the module docstring)."""
    adapter = read_peft_folder(path)
    check_fits(adapter, host)
    return to_artifact(adapter, host, encoder_fingerprint=encoder_fingerprint)


# -- writing ------------------------------------------------------------------------------------------------


def export_peft_folder(
    artifact: AdapterArtifact,
    out_dir: str | os.PathLike,
    *,
    base_model_name_or_path: str | None = None,
    extra_metadata: dict[str, str] | None = None,
) -> Path:
    """Write ``artifact`` as a PEFT LoRA folder (``adapter_config.json`` by peft's own ``LoraConfig.save_pretrained``,
    ``adapter_model.safetensors`` with peft's key names). ``out_dir`` must be new or empty; written completely
    or not at all. The safetensors header also records lloco's fingerprints, so importing it back checks them.
    """
    from safetensors.torch import save_file

    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"{out} already exists and is not an empty folder; choose a new folder to export to")
    config = lora_config_from_dict(artifact.lora_config)
    config.task_type = "CAUSAL_LM"
    config.inference_mode = True
    config.base_model_name_or_path = base_model_name_or_path
    metadata = {
        "format": "pt",
        "lloco_format": FORMAT,
        "lloco_base_fingerprint": artifact.base_fingerprint,
        "lloco_encoder_fingerprint": artifact.encoder_fingerprint or "",
        "lloco_digest": artifact.digest,
        **(extra_metadata or {}),
    }
    tensors = {PEFT_PREFIX + k: v.detach().to("cpu").contiguous() for k, v in artifact.tensors.items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        config.save_pretrained(str(tmp))
        save_file(tensors, str(tmp / SAFETENSORS_NAME), metadata=metadata)
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
