"""The context encoder: AutoCompressor-style summary vectors ("cheat sheets") for text chunks.

A segment of at most ``segment_length`` tokens is run through the base LM followed by ``summary_length``
learned summary-token embeddings (``embed_summary``, initialised from the EOS embedding). The hidden states
at the summary positions (by default the final layer after the last norm) are the chunk's cheat sheet:
vectors in the decoder's input-embedding space, spliced into prompts later.

With ``accumulate=True`` the summaries of earlier segments of a document are prepended as a soft prompt to
later segments (positions stay contiguous: soft prompt, segment, summary tokens).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .errors import AdapterError, ConfigError, FingerprintMismatchError, InputError, ModelLoadError
from .models import LoadedModel, load_model
from .textcheck import check_text
from .weights_io import listing, load_bin_weights

log = logging.getLogger(__name__)

ENCODER_ADAPTER = "lloco-encoder"
FORMAT_VERSION = 1
CONFIG_FILE = "encoder_config.json"
WEIGHTS_FILE = "encoder.safetensors"
READER_FILE = "reader.safetensors"  # optional: the decoder's reader LoRA trained with this encoder
POOLINGS = ("summary", "mean")
CONNECTORS = ("none", "linear", "mlp")
LITERAL_SELECTORS = ("rules", "learned")
_PUNCT = ".,;:!?\"'()[]\u201c\u201d\u2018\u2019"


def _salient_words(texts: Sequence[str]) -> list[bool]:
    """For each word of a segment (its text with leading whitespace, in order): does it hold a digit or start
    with a capital letter inside a sentence (names, numbers, dates)? The rules' notion of a salient word."""
    out, before = [], ""  # before: the text before the current word (to tell sentence starts)
    for text in texts:
        stripped = text.strip()
        tail = before.rstrip()
        sentence_start = not tail or tail[-1] in ".!?" or before.endswith("\n")
        word_start = stripped.lstrip("\"'([\u201c\u2018")
        out.append(any(c.isdigit() for c in stripped) or (word_start[:1].isupper() and not sentence_start))
        before += text
    return out


class _StopForward(Exception):
    """Raised by a forward hook to end a forward pass at the layer whose states are needed."""


@dataclass(frozen=True)
class EncoderConfig:
    """How text is segmented and compressed. Part of the encoder fingerprint."""

    segment_length: int = field(default=512, metadata={"help": "tokens per segment (one chunk)"})
    summary_length: int = field(default=16, metadata={"help": "summary vectors per segment"})
    accumulate: bool = field(default=False, metadata={"help": "prepend earlier summaries as a soft prompt"})
    summary_layer: int | None = field(
        default=None, metadata={"help": "take summaries after this layer; None = final layer after norm"}
    )
    lora_r: int = field(default=0, metadata={"help": "rank of the encoder's own LoRA; 0 = none"})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha of the encoder's LoRA"})
    lora_target_modules: tuple[str, ...] = field(default=("q_proj", "k_proj", "v_proj", "o_proj"))
    pooling: str = field(
        default="summary",
        metadata={
            "help": "summary: learned summary tokens after the segment (AutoCompressor); mean: average the "
            "segment's hidden states over summary_length groups of consecutive tokens"
        },
    )
    keep_ratio: bool = field(
        default=False,
        metadata={
            "help": "mean pooling: a segment shorter than segment_length gets ceil(n / ratio) vectors, so the tail of "
            "a document is compressed as much as the rest (default: up to summary_length vectors)"
        },
    )
    literal_tokens: int = field(
        default=0,
        metadata={
            "help": "mean pooling: keep up to this many of a full segment's tokens as themselves (their input "
            "embeddings), each right after its group's pooled vector: the tokens of numbers and of "
            "capitalised words inside sentences, which soft compression loses first. They are context "
            "positions too: a segment gives summary_length + literal_tokens vectors at most"
        },
    )
    connector: str = field(
        default="none",
        metadata={
            "help": "map applied to the vectors: none, linear (starts as identity) or mlp (residual, starts as "
            "identity)"
        },
    )
    literal_selector: str = field(
        default="rules",
        metadata={
            "help": "how literal tokens are chosen: rules (numbers and capitalised words inside sentences, then "
            "the longest words) or learned (a linear scorer on the hidden states after selector_layer, "
            "trained on which tokens questions ask about; see lloco.training.selector)"
        },
    )
    selector_layer: int = field(
        default=0,
        metadata={"help": "learned selector: score the hidden states after this decoder layer (>= 1)"},
    )
    strict_ratio: bool = field(
        default=False,
        metadata={
            "help": "with keep_ratio: a short segment gets at most floor(n / ratio) positions (pooled vectors "
            "first, literal tokens fill the rest), so every document keeps at least the encoder's ratio"
        },
    )

    def __post_init__(self) -> None:
        def is_int(v: object) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        if not is_int(self.segment_length) or self.segment_length < 1:
            raise ConfigError(f"segment_length must be a positive integer, got {self.segment_length!r}")
        if not is_int(self.summary_length) or self.summary_length < 1:
            raise ConfigError(f"summary_length must be a positive integer, got {self.summary_length!r}")
        if self.summary_length > self.segment_length:
            raise ConfigError(
                "summary_length must not exceed segment_length (that would expand, not compress)"
            )
        if not isinstance(self.accumulate, bool):
            raise ConfigError(f"accumulate must be True or False, got {self.accumulate!r}")
        if self.summary_layer is not None and (not is_int(self.summary_layer) or self.summary_layer < 0):
            raise ConfigError(
                "summary_layer must be an integer >= 0 (0 = input embeddings) or None for the "
                f"final layer, got {self.summary_layer!r}"
            )
        if not is_int(self.lora_r) or self.lora_r < 0:
            raise ConfigError(f"lora_r must be an integer >= 0 (0 = no encoder LoRA), got {self.lora_r!r}")
        if (
            not isinstance(self.lora_alpha, (int, float))
            or isinstance(self.lora_alpha, bool)
            or self.lora_alpha <= 0
        ):
            raise ConfigError(f"lora_alpha must be a positive number, got {self.lora_alpha!r}")
        modules = self.lora_target_modules
        modules = (modules,) if isinstance(modules, str) else tuple(modules)
        if not all(isinstance(m, str) and m for m in modules):
            raise ConfigError(f"lora_target_modules must be module names, got {self.lora_target_modules!r}")
        if self.lora_r > 0 and not modules:
            raise ConfigError("lora_target_modules is empty: name the modules the encoder LoRA adapts")
        object.__setattr__(self, "lora_target_modules", modules)
        if self.pooling not in POOLINGS:
            raise ConfigError(f"pooling must be one of {', '.join(POOLINGS)}, got {self.pooling!r}")
        if not isinstance(self.keep_ratio, bool):
            raise ConfigError(f"keep_ratio must be True or False, got {self.keep_ratio!r}")
        if not is_int(self.literal_tokens) or self.literal_tokens < 0:
            raise ConfigError(f"literal_tokens must be an integer >= 0, got {self.literal_tokens!r}")
        if self.literal_tokens and self.pooling != "mean":
            raise ConfigError(
                "literal_tokens needs mean pooling (summary tokens have no per-token positions)"
            )
        if self.summary_length + self.literal_tokens > self.segment_length:
            raise ConfigError(
                "summary_length + literal_tokens must not exceed segment_length (that would expand, "
                "not compress)"
            )
        if self.connector not in CONNECTORS:
            raise ConfigError(f"connector must be one of {', '.join(CONNECTORS)}, got {self.connector!r}")
        if self.literal_selector not in LITERAL_SELECTORS:
            raise ConfigError(
                f"literal_selector must be one of {', '.join(LITERAL_SELECTORS)}, got "
                f"{self.literal_selector!r}"
            )
        if not is_int(self.selector_layer) or self.selector_layer < 0:
            raise ConfigError(f"selector_layer must be an integer >= 0, got {self.selector_layer!r}")
        if self.literal_selector == "learned" and (not self.literal_tokens or self.selector_layer < 1):
            raise ConfigError(
                "a learned literal selector needs literal_tokens > 0 and selector_layer >= 1 (the "
                "decoder layer whose hidden states it scores)"
            )
        if not isinstance(self.strict_ratio, bool):
            raise ConfigError(f"strict_ratio must be True or False, got {self.strict_ratio!r}")
        if self.strict_ratio and not self.keep_ratio:
            raise ConfigError("strict_ratio refines keep_ratio: set keep_ratio too")

    @property
    def positions(self) -> int:
        """Context positions (vectors) of a full segment's cheat sheet: pooled or summary vectors plus literal
        tokens."""
        return self.summary_length + self.literal_tokens

    @property
    def ratio(self) -> float:
        """Compression ratio: source tokens per context position (vector) for a full segment."""
        return self.segment_length / self.positions

    def to_dict(self) -> dict:
        """The config as JSON-ready values. Fields added after the first release are left out while they
        hold their defaults, so existing encoders keep their fingerprints."""
        d = asdict(self)
        d["lora_target_modules"] = list(self.lora_target_modules)
        for name in (
            "pooling",
            "connector",
            "keep_ratio",
            "literal_tokens",
            "literal_selector",
            "selector_layer",
            "strict_ratio",
        ):
            if d[name] == type(self).__dataclass_fields__[name].default:
                del d[name]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> EncoderConfig:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        if "lora_target_modules" in known:
            known["lora_target_modules"] = tuple(known["lora_target_modules"])
        return cls(**known)


@dataclass(frozen=True)
class Chunk:
    """One encoder segment of a document: its position, exact source text and token ids."""

    ordinal: int
    text: str
    token_ids: tuple[int, ...]
    char_start: int
    char_end: int

    @property
    def n_tokens(self) -> int:
        return len(self.token_ids)


def validate_text(text: object, what: str = "text") -> str:
    """The text to compress (UTF-8 bytes are decoded), or an :class:`InputError`: see
    :func:`lloco_runtime.textcheck.check_text`, the one set of rules for the API, the store and the CLI."""
    return check_text(text, what, allow_bytes=True)


class ContextEncoder(nn.Module):
    """Compresses text chunks into cheat sheets with a (shared) base LM and learned summary embeddings."""

    def __init__(
        self,
        host: LoadedModel,
        config: EncoderConfig | None = None,
        summary_weight: torch.Tensor | None = None,
        lora_state: dict[str, torch.Tensor] | None = None,
        connector_state: dict[str, torch.Tensor] | None = None,
        selector_state: dict[str, torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        self.host = host
        self.config = config or EncoderConfig()
        model = host.model
        hidden = host.hidden_size
        self.embed_summary = nn.Embedding(self.config.summary_length, hidden)
        self.connector = Connector(self.config.connector, hidden)
        if connector_state:
            try:
                self.connector.load_state_dict(connector_state)
            except RuntimeError as exc:
                raise ModelLoadError(
                    f"connector weights do not fit ({str(exc).splitlines()[0][:160]})"
                ) from None
        self.connector.to(host.device, host.dtype)
        # Learned literal-token selector: one linear score per token on the hidden states after
        # ``selector_layer`` (kept in float32: it only ranks tokens). Zero weights rank by text order.
        self.selector = (
            _zero_selector(hidden, host.device) if self.config.literal_selector == "learned" else None
        )
        if self.selector is not None and selector_state:
            try:
                self.selector.load_state_dict(selector_state)
            except RuntimeError as exc:
                raise ModelLoadError(
                    f"selector weights do not fit ({str(exc).splitlines()[0][:160]})"
                ) from None
        with torch.no_grad():
            if summary_weight is not None:
                if tuple(summary_weight.shape) != (self.config.summary_length, hidden):
                    raise ModelLoadError(
                        f"summary embeddings have shape {tuple(summary_weight.shape)}, expected "
                        f"({self.config.summary_length}, {hidden}) for this config and base model"
                    )
                self.embed_summary.weight.copy_(summary_weight)
            else:
                eos = host.tokenizer.eos_token_id
                eos = eos[0] if isinstance(eos, (list, tuple)) else eos
                self.embed_summary.weight.copy_(model.get_input_embeddings().weight[int(eos or 0)])
        self.embed_summary.to(host.device, host.dtype)
        n_layers = int(model.config.num_hidden_layers)
        if self.config.summary_layer is not None and self.config.summary_layer > n_layers:
            raise ConfigError(f"summary_layer {self.config.summary_layer} > number of layers {n_layers}")
        if self.selector is not None and self.config.selector_layer > n_layers:
            raise ConfigError(f"selector_layer {self.config.selector_layer} > number of layers {n_layers}")
        self.has_lora = self.config.lora_r > 0
        if self.has_lora:
            self._inject_lora(lora_state)
        self._fingerprint: str | None = None
        # The decoder LoRA trained with this encoder to read its cheat sheets (``lloco train-encoder
        # --reader-lora-r``), as lloco adapter-file bytes tied to this encoder's fingerprint; None if none.
        self.reader: bytes | None = None
        self._token_texts: dict[int, str] = {}  # token id -> its text (literal-token selection)
        if self.config.connector != "none" and not connector_state:
            self._calibrate_connector()

    @torch.no_grad()
    def _calibrate_connector(self) -> None:
        """Scale a fresh connector so its vectors have the RMS of the decoder's input embeddings."""
        probe = self.tokenizer(
            "The history of the city begins with a small settlement on the river, where "
            "merchants traded salt, copper and grain with the towns of the coast.",
            add_special_tokens=False,
        )["input_ids"][: self.config.segment_length]
        with self.host.using(ENCODER_ADAPTER if self.has_lora else None):
            raw = torch.cat(self.summarize_list([probe])).float()
        emb = self.host.model.get_input_embeddings().weight.float()
        target = emb.pow(2).mean(-1).sqrt().mean()
        got = raw.pow(2).mean(-1).sqrt().mean()
        if got > 0:
            self.connector.set_scale(float(target / got))

    # -- identity ---------------------------------------------------------------------------------------

    @property
    def tokenizer(self):
        return self.host.tokenizer

    @property
    def hidden_size(self) -> int:
        return self.host.hidden_size

    @property
    def dtype(self) -> torch.dtype:
        return self.host.dtype

    @property
    def fingerprint(self) -> str:
        """sha256 of base weights identity, summary embeddings, encoder LoRA, config and dtype."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            h.update(
                json.dumps(
                    {
                        "format": FORMAT_VERSION,
                        "base": self.host.fingerprint,
                        "config": self.config.to_dict(),
                        "dtype": str(self.dtype),
                    },
                    sort_keys=True,
                ).encode()
            )
            for name, tensor in sorted(self.trainable_state().items()):
                h.update(name.encode())
                h.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def invalidate_fingerprint(self) -> None:
        """Call after changing weights (training) so the fingerprint is recomputed."""
        self._fingerprint = None

    def init_connector_from(self, directory: str | Path) -> None:
        """Copy the connector weights of the encoder saved in ``directory`` (same decoder, same connector
        kind), e.g. to start an encoder of another ratio from a trained one."""
        d = Path(directory)
        _, _, tensors = _read_encoder_folder(d, self.host)
        state = {k[len("connector.") :]: v for k, v in tensors.items() if k.startswith("connector.")}
        if not state:
            raise ModelLoadError(f"encoder {d} has no connector weights")
        try:
            self.connector.load_state_dict(state)
        except RuntimeError as exc:
            raise ModelLoadError(
                f"the connector of {d} does not fit this encoder's {self.config.connector!r} "
                f"connector ({str(exc).splitlines()[0][:160]})"
            ) from None
        self.connector.to(self.host.device, self.host.dtype)
        self.invalidate_fingerprint()

    def set_keep_ratio(self, keep: bool) -> None:
        """Turn :attr:`EncoderConfig.keep_ratio` on or off for a mean-pooling encoder. The weights stay; the
        fingerprint changes, because short segments now get a different number of vectors."""
        if bool(keep) == self.config.keep_ratio:
            return
        if self.config.pooling != "mean":
            raise ConfigError(
                f"keep_ratio applies to mean pooling, this encoder uses {self.config.pooling!r}"
            )
        self.reconfigure(keep_ratio=bool(keep), strict_ratio=self.config.strict_ratio and bool(keep))

    def reconfigure(self, **changes: object) -> None:
        """Change how a loaded encoder segments and selects (``keep_ratio``, ``strict_ratio``,
        ``literal_selector``, ``selector_layer``): the trained weights stay, the fingerprint changes (stored
        sheets must be rebuilt) and a reader adapter tied to the old fingerprint is dropped. A new learned
        selector starts untrained (text order); fit it with :func:`lloco_runtime.training.selector.train_selector`."""
        allowed = {"keep_ratio", "strict_ratio", "literal_selector", "selector_layer"}
        unknown = set(changes) - allowed
        if unknown:
            raise ConfigError(
                f"cannot change {', '.join(sorted(unknown))} of a trained encoder (only "
                f"{', '.join(sorted(allowed))}); train a new encoder instead"
            )
        config = replace(self.config, **changes)  # validates
        if config == self.config:
            return
        n_layers = int(self.host.model.config.num_hidden_layers)
        if config.literal_selector == "learned" and config.selector_layer > n_layers:
            raise ConfigError(f"selector_layer {config.selector_layer} > number of layers {n_layers}")
        if (
            config.literal_selector != self.config.literal_selector
            or config.selector_layer != self.config.selector_layer
        ):
            self.selector = (
                _zero_selector(self.hidden_size, self.host.device)
                if config.literal_selector == "learned"
                else None
            )
        self.config = config
        self.invalidate_fingerprint()
        if self.reader is not None:
            log.warning(
                "encoder reconfigured: the reader adapter was tied to the old fingerprint and is dropped"
            )
            self.reader = None

    # -- encoder LoRA --------------------------------------------------------------------------------------

    def _lora_config(self):
        from peft import LoraConfig

        return LoraConfig(
            r=self.config.lora_r,
            lora_alpha=self.config.lora_alpha,
            lora_dropout=0.0,
            target_modules=list(self.config.lora_target_modules),
            bias="none",
        )

    def _inject_lora(self, lora_state: dict[str, torch.Tensor] | None) -> None:
        from peft import set_peft_model_state_dict

        model = self.host.model
        with self.host.lock:
            if ENCODER_ADAPTER in self.host.adapter_names():
                self.host.delete_adapter(ENCODER_ADAPTER)
            self.host.add_adapter(ENCODER_ADAPTER, self._lora_config())
            if lora_state is not None:
                result = set_peft_model_state_dict(model, lora_state, adapter_name=ENCODER_ADAPTER)
                missing = [k for k in getattr(result, "unexpected_keys", []) if ENCODER_ADAPTER in k]
                if missing:
                    self.host.delete_adapter(ENCODER_ADAPTER)
                    raise ModelLoadError(f"encoder LoRA weights do not fit the model: {missing[:3]}")
            self.host.resync()

    def lora_state(self) -> dict[str, torch.Tensor]:
        """The encoder LoRA's weights in peft's saved-state naming (empty without a LoRA)."""
        if not self.has_lora:
            return {}
        from peft import get_peft_model_state_dict

        return get_peft_model_state_dict(self.host.model, adapter_name=ENCODER_ADAPTER)

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Everything the encoder owns beyond the base model, as named tensors."""
        state = {"embed_summary.weight": self.embed_summary.weight} if self.uses_summary_tokens else {}
        state.update({f"connector.{k}": v for k, v in self.connector.named_parameters()})
        state.update({f"lora.{k}": v for k, v in self.lora_state().items()})
        if self.selector is not None:
            state.update({f"selector.{k}": v for k, v in self.selector.named_parameters()})
        return state

    @property
    def uses_summary_tokens(self) -> bool:
        """True for AutoCompressor-style summary tokens; False for mean pooling (no summary embeddings)."""
        return self.config.pooling == "summary"

    # -- segmentation -------------------------------------------------------------------------------------

    def split(self, text: str, *, what: str = "text") -> list[Chunk]:
        """Tokenise ``text`` and cut it into consecutive segments of at most ``segment_length`` tokens.

        Never truncates: every token lands in exactly one chunk, in order, and the chunks' texts
        concatenate back to the source text from its first token on.
        """
        text = validate_text(text, what)
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids: list[int] = enc["input_ids"]
        offsets: list[tuple[int, int]] = enc["offset_mapping"]
        if not ids:
            raise InputError(f"{what} produced no tokens")
        n = self.config.segment_length
        starts = list(range(0, len(ids), n))
        chunks = []
        for i, s in enumerate(starts):
            e = min(s + n, len(ids))
            c0 = 0 if i == 0 else offsets[s][0]
            c1 = len(text) if e == len(ids) else offsets[e][0]
            chunks.append(
                Chunk(ordinal=i, text=text[c0:c1], token_ids=tuple(ids[s:e]), char_start=c0, char_end=c1)
            )
        return chunks

    # -- compression ----------------------------------------------------------------------------------------

    def summarize(
        self, token_lists: Sequence[Sequence[int]], soft_prompts: Sequence[torch.Tensor | None] | None = None
    ) -> torch.Tensor:
        """Differentiable core: cheat sheets ``[batch, n_vectors, hidden]`` for a batch of segments that all
        give the same number of vectors (full segments do); see :meth:`summarize_list` for mixed lengths.
        The caller holds ``host.using(...)`` (see :meth:`compress_chunks`).
        """
        rows = self.summarize_list(token_lists, soft_prompts)
        if len({int(r.shape[0]) for r in rows}) > 1:
            raise InputError("these segments give different numbers of vectors; use summarize_list()")
        return torch.stack(rows)

    def summarize_list(
        self, token_lists: Sequence[Sequence[int]], soft_prompts: Sequence[torch.Tensor | None] | None = None
    ) -> list[torch.Tensor]:
        """One cheat sheet ``[n_vectors, hidden]`` per segment, differentiable.

        Summary pooling gives ``summary_length`` vectors per segment. Mean pooling averages the hidden
        states over ``summary_length`` groups of consecutive tokens (``min(summary_length, n_tokens)``
        for a short segment). Rows are left-padded; position ids restart at 0 after the padding, so a row's
        result does not depend on its batch-mates.
        """
        model = self.host.model
        embed = model.get_input_embeddings()
        device = self.host.device
        soft_prompts = soft_prompts or [None] * len(token_lists)
        summary = self.uses_summary_tokens
        token_embeds = [
            embed(torch.as_tensor(list(ids), dtype=torch.long, device=device)) for ids in token_lists
        ]
        layer = self.config.summary_layer
        scores = self.literal_scores(token_lists) if self.selector is not None else [None] * len(token_lists)
        if not summary and layer == 0:  # pooled input embeddings: no forward pass needed
            return [
                self._pooled(t, t, ids, sc)
                for t, ids, sc in zip(token_embeds, token_lists, scores, strict=True)
            ]
        rows = []
        for tokens, soft in zip(token_embeds, soft_prompts, strict=True):
            parts = [] if soft is None else [soft.to(device, self.dtype)]
            parts.append(tokens)
            if summary:
                parts.append(self.embed_summary.weight)
            rows.append(torch.cat(parts, dim=0))
        x, mask, positions = _left_padded(rows)
        length = x.shape[1]
        backbone = getattr(model, model.base_model_prefix)
        out = backbone(
            inputs_embeds=x,
            attention_mask=mask,
            position_ids=positions,
            output_hidden_states=layer is not None,
            use_cache=False,
        )
        hidden = out.last_hidden_state if layer is None else out.hidden_states[layer]
        if summary:
            return list(self.connector(hidden[:, -self.config.summary_length :]))
        return [
            self._pooled(hidden[i, length - t.shape[0] :], t, ids, sc)
            for i, (t, ids, sc) in enumerate(zip(token_embeds, token_lists, scores, strict=True))
        ]

    def selector_states(self, token_lists: Sequence[Sequence[int]]) -> list[torch.Tensor]:
        """Hidden states ``[n_tokens, hidden]`` after decoder layer ``selector_layer`` for each segment, as the
        learned selector sees them (the segment alone, the adapters the caller holds). The forward pass stops
        at that layer."""
        layer = self.config.selector_layer
        model = self.host.model
        backbone = getattr(model, model.base_model_prefix)
        embed = model.get_input_embeddings()
        x, attention, positions = _left_padded(
            [embed(torch.as_tensor(list(t), dtype=torch.long, device=self.host.device)) for t in token_lists]
        )
        length = x.shape[1]
        captured: list[torch.Tensor] = []

        def stop(_module, _args, output):
            captured.append(output[0] if isinstance(output, tuple) else output)
            raise _StopForward

        handle = backbone.layers[layer - 1].register_forward_hook(stop)
        try:
            backbone(inputs_embeds=x, attention_mask=attention, position_ids=positions, use_cache=False)
        except _StopForward:
            pass
        finally:
            handle.remove()
        hidden = captured[0]
        return [hidden[i, length - len(t) :] for i, t in enumerate(token_lists)]

    def literal_scores(self, token_lists: Sequence[Sequence[int]]) -> list[torch.Tensor]:
        """The learned selector's score per token of each segment (higher = keep as a literal token)."""
        if self.selector is None:
            raise ConfigError("this encoder chooses literal tokens by rules; it has no learned selector")
        with torch.no_grad():
            return [self.selector(h.float()).squeeze(-1).cpu() for h in self.selector_states(token_lists)]

    def _pooled(
        self,
        states: torch.Tensor,
        token_embeds: torch.Tensor,
        ids: Sequence[int],
        scores: torch.Tensor | None = None,
        keep: Sequence[int] | None = None,
    ) -> torch.Tensor:
        """Mean pooling of one segment's ``states`` through the connector, with its literal tokens (their
        input embeddings, no connector) each placed right after the pooled vector of its group; ``keep``
        (ascending positions) overrides the offline choice (:meth:`literal_positions`)."""
        n = states.shape[0]
        groups = min(self._groups(n), n)
        pooled = self.connector(_mean_groups(states, groups))
        keep = self.literal_positions(ids, scores) if keep is None else list(keep)
        if not keep:
            return pooled
        bounds = [(g * n) // groups for g in range(groups + 1)]
        rows, k = [], 0
        for g in range(groups):
            rows.append(pooled[g : g + 1])
            start = k
            while k < len(keep) and keep[k] < bounds[g + 1]:
                k += 1
            if k > start:
                rows.append(token_embeds[keep[start:k]].to(pooled.dtype))
        return torch.cat(rows, dim=0)

    def literal_budget(self, n_tokens: int) -> int:
        """Literal tokens a segment of ``n_tokens`` may keep: ``literal_tokens``, or with ``keep_ratio`` the
        share a short segment's length warrants."""
        k = self.config.literal_tokens
        if not k or not self.config.keep_ratio or n_tokens >= self.config.segment_length:
            return k
        if self.config.strict_ratio:
            return max(0, self._positions_cap(n_tokens) - self._groups(n_tokens))
        return min(k, -(-n_tokens * k // self.config.segment_length))

    def sheet_rows(self, n_tokens: int) -> int:
        """Positions of the stored cheat sheet of a segment of ``n_tokens`` (pooled vectors plus literal
        tokens) for a mean-pooling encoder."""
        return min(self._groups(n_tokens), n_tokens) + min(self.literal_budget(n_tokens), n_tokens)

    def _positions_cap(self, n_tokens: int) -> int:
        """strict_ratio: positions a short segment may use, floor(n / ratio), at least one."""
        return max(1, n_tokens * self.config.positions // self.config.segment_length)

    def literal_positions(
        self, ids: Sequence[int], scores: torch.Tensor | Sequence[float] | None = None
    ) -> list[int]:
        """Positions (ascending) of the tokens kept as themselves, exactly ``min(budget, len(ids))`` of them
        (:meth:`literal_budget`), so every full segment gives the same number of vectors.

        With ``scores`` (the learned selector's, one per token): whole words by their tokens' mean score,
        each word once. By rules: first whole words holding a digit or starting with a capital letter inside
        a sentence (names, numbers, dates), each once, in text order; then the longest other words. Either
        way single tokens in text order fill what whole words cannot."""
        budget = min(self.literal_budget(len(ids)), len(ids))
        if not budget:
            return []
        pieces, words = self._words(ids)
        if scores is not None:
            return self._learned_positions(pieces, words, [float(x) for x in scores], budget)
        keep: set[int] = set()
        seen: set[str] = set()  # a name kept once is not kept again in the same segment
        raw = ["".join(pieces[p] for p in word) for word in words]
        texts = [t.strip() for t in raw]
        for word, stripped, salient in zip(words, texts, _salient_words(raw), strict=True):
            key = stripped.strip(_PUNCT).lower()
            if salient and key not in seen and len(keep) + len(word) <= budget:
                keep.update(word)
                seen.add(key)
        by_length = sorted(range(len(words)), key=lambda w: (-len(texts[w]), w))
        for w in by_length:
            if len(keep) >= budget:
                break
            if not keep.intersection(words[w]) and len(keep) + len(words[w]) <= budget:
                keep.update(words[w])
        for pos in range(len(ids)):
            if len(keep) >= budget:
                break
            keep.add(pos)
        return sorted(keep)

    @staticmethod
    def _learned_positions(
        pieces: list[str], words: list[list[int]], scores: list[float], budget: int
    ) -> list[int]:
        if len(scores) != len(pieces):
            raise InputError(f"{len(scores)} selector scores for a segment of {len(pieces)} tokens")
        seen: set[str] = set()
        ranked = []
        for w, word in enumerate(words):
            key = "".join(pieces[p] for p in word).strip().strip(_PUNCT).lower()
            repeat = key in seen  # a word kept once is not kept again in the same segment
            seen.add(key)
            ranked.append((repeat, -sum(scores[p] for p in word) / len(word), w))
        keep: set[int] = set()
        for _, _, w in sorted(ranked):
            if len(keep) >= budget:
                break
            if len(keep) + len(words[w]) <= budget:
                keep.update(words[w])
        for pos in range(len(pieces)):
            if len(keep) >= budget:
                break
            keep.add(pos)
        return sorted(keep)

    # -- question-aware literal tokens (focus) -----------------------------------------------------------

    @property
    def can_focus(self) -> bool:
        """True when this encoder's literal tokens can be chosen per question at answer time
        (:mod:`lloco_runtime.focus`): mean pooling of input embeddings (``summary_layer=0``, no accumulation)
        with literal tokens, so a sheet is rebuilt from its chunk's tokens without a forward pass."""
        c = self.config
        return c.pooling == "mean" and c.summary_layer == 0 and c.literal_tokens > 0 and not c.accumulate

    def _words(self, ids: Sequence[int]) -> tuple[list[str], list[list[int]]]:
        """The tokens' texts and the segment's words as lists of token positions (a word starts at a token
        with leading whitespace)."""
        pieces = [self._token_text(int(i)) for i in ids]
        words: list[list[int]] = []
        for pos, piece in enumerate(pieces):
            if pos == 0 or piece[:1].isspace() or not words:
                words.append([pos])
            else:
                words[-1].append(pos)
        return pieces, words

    def _focus_input(self, ids: Sequence[int]) -> tuple[list[list[int]], list[str], list[float], int, int]:
        """(words, word texts, offline prior per word, literal budget, tokens) of one segment, as
        :func:`lloco_runtime.focus.focus_positions` takes them."""
        budget = min(self.literal_budget(len(ids)), len(ids))
        pieces, words = self._words(ids)
        texts = ["".join(pieces[p] for p in w) for w in words]
        # the offline prior, by the rules of literal_positions: names, numbers, dates, then longer words
        prior = [
            float(salient) + 0.05 * len(t.strip().strip(_PUNCT))
            for t, salient in zip(texts, _salient_words(texts), strict=True)
        ]
        return words, texts, prior, budget, len(ids)

    def focus_positions(self, ids: Sequence[int], question: str) -> list[int]:
        """The literal-token positions (ascending) for ``question``: as many as :meth:`literal_positions`
        keeps, chosen by :func:`lloco_runtime.focus.focus_positions` (near the question's words)."""
        from .focus import focus_positions

        words, texts, prior, budget, n = self._focus_input(ids)
        return focus_positions(words, texts, question, prior, budget, n)

    def shared_focus_positions(self, segments: Sequence[Sequence[int]], question: str) -> list[list[int]]:
        """Literal-token positions for several segments read together for ``question``, their budgets pooled
        (:func:`lloco_runtime.focus.shared_focus_positions`): as many tokens in all as the segments keep
        one by one, spent where the question's words are."""
        from .focus import shared_focus_positions

        return shared_focus_positions([self._focus_input(ids) for ids in segments], question)

    def focus_sheets(self, segments: Sequence[Sequence[int]], question: str) -> list[torch.Tensor]:
        """The cheat sheets of several segments read together for ``question``, with a shared literal budget
        (:meth:`shared_focus_positions`): the same pooled vectors as the stored sheets and the same number of
        positions in all, spread by relevance (a sheet may be longer or shorter than its stored one). CPU
        tensors in the model dtype."""
        if not self.can_focus:
            raise ConfigError(
                "question-aware literal tokens need a mean-pooling encoder of input embeddings "
                "(summary_layer=0) with literal_tokens > 0; this encoder's sheets are read as stored"
            )
        segs = [[int(i) for i in ids] for ids in segments]
        for ids in segs:
            if not ids or len(ids) > self.config.segment_length:
                raise InputError(
                    f"focus_sheets needs 1 to {self.config.segment_length} token ids per segment"
                )
        keeps = self.shared_focus_positions(segs, question)
        embed = self.host.model.get_input_embeddings()
        out = []
        with torch.inference_mode():
            for ids, keep in zip(segs, keeps, strict=True):
                t = embed(torch.as_tensor(ids, dtype=torch.long, device=self.host.device))
                out.append(self._pooled(t, t, ids, keep=keep).to("cpu"))
        return out

    def made_from(self, ids: Sequence[int], sheet: torch.Tensor) -> bool:
        """True when ``sheet`` holds the pooled vectors of the segment ``ids`` (it was made from these
        tokens), so that a question-aware rebuild (:meth:`focus_sheet`) reads the same content; False for a
        chunk text edited after compression."""
        ids = [int(i) for i in ids]
        if not self.can_focus or not ids or sheet.ndim != 2:
            return False
        with torch.inference_mode():
            t = self.host.model.get_input_embeddings()(
                torch.as_tensor(ids, dtype=torch.long, device=self.host.device)
            )
            pooled = self.connector(_mean_groups(t, min(self._groups(len(ids)), len(ids)))).to("cpu")
        rows = sheet.to("cpu", torch.float32)
        for p in pooled.float():
            tol = 1e-3 * float(p.abs().max()) + 1e-6  # stored sheets may be half precision
            if not bool(((rows - p).abs().amax(dim=-1) <= tol).any()):
                return False
        return True

    def focus_sheet(self, ids: Sequence[int], question: str) -> torch.Tensor:
        """The cheat sheet of one segment (``ids``, at most ``segment_length`` tokens) with its literal
        tokens chosen for ``question``: the same pooled vectors and the same number of positions as the
        stored sheet (:meth:`compress_chunks`), a CPU tensor in the model dtype."""
        with torch.inference_mode():
            return self.focus_summarize(ids, question).to("cpu")

    def focus_summarize(self, ids: Sequence[int], question: str) -> torch.Tensor:
        """Differentiable core of :meth:`focus_sheet` (on the model's device; the caller picks the grad
        mode): what training reads when it learns from the sheets lloco serves (``reading_focus``)."""
        if not self.can_focus:
            raise ConfigError(
                "question-aware literal tokens need a mean-pooling encoder of input embeddings "
                "(summary_layer=0) with literal_tokens > 0; this encoder's sheets are read as stored"
            )
        ids = [int(i) for i in ids]
        if not ids or len(ids) > self.config.segment_length:
            raise InputError(f"focus_sheet needs 1 to {self.config.segment_length} token ids, got {len(ids)}")
        embed = self.host.model.get_input_embeddings()
        t = embed(torch.as_tensor(ids, dtype=torch.long, device=self.host.device))
        return self._pooled(t, t, ids, keep=self.focus_positions(ids, question))

    def _token_text(self, token_id: int) -> str:
        if token_id not in self._token_texts:
            self._token_texts[token_id] = self.tokenizer.decode([token_id])
        return self._token_texts[token_id]

    def _groups(self, n_tokens: int) -> int:
        """Mean-pooling groups for a segment of ``n_tokens``: ``summary_length``, or with ``keep_ratio`` the
        share of it that a short segment's length warrants (at least one)."""
        s = self.config.summary_length
        if not self.config.keep_ratio:
            return s
        groups = max(1, min(s, -(-n_tokens * s // self.config.segment_length)))
        if self.config.strict_ratio and n_tokens < self.config.segment_length:
            groups = min(groups, self._positions_cap(n_tokens))
        return groups

    def compress_chunks(
        self, chunks: Sequence[Chunk | Sequence[int]], *, batch_size: int = 8, progress: bool = False
    ) -> list[torch.Tensor]:
        """One cheat sheet ``[summary_length, hidden]`` per chunk, in order (CPU tensors, model dtype).

        Without accumulation chunks are independent and run in batches; with accumulation they are taken
        as consecutive segments of one document and run in order. Runs with the encoder's LoRA active (or
        with all adapters disabled), never with a decoder adapter.
        """
        if batch_size < 1:
            raise InputError("batch_size must be >= 1")
        ids = [c.token_ids if isinstance(c, Chunk) else tuple(c) for c in chunks]
        if not ids:
            return []
        if any(len(t) == 0 for t in ids):
            raise InputError("cannot compress an empty chunk")
        too_long = [i for i, t in enumerate(ids) if len(t) > self.config.segment_length]
        if too_long:
            raise InputError(
                f"chunk {too_long[0]} exceeds segment_length={self.config.segment_length}; "
                "split the text with encoder.split() first"
            )
        from tqdm.auto import tqdm

        bar = tqdm(total=len(ids), desc="compressing", unit="chunk", disable=not progress)
        out: list[torch.Tensor] = []
        adapter = ENCODER_ADAPTER if self.has_lora else None
        with torch.inference_mode():
            if self.config.accumulate:
                soft: torch.Tensor | None = None
                for t in ids:
                    with self.host.using(adapter):
                        s = self.summarize_list([t], [soft])[0]
                    out.append(s.to("cpu"))
                    soft = s if soft is None else torch.cat([soft, s], dim=0)
                    bar.update(1)
            else:
                for b in range(0, len(ids), batch_size):
                    batch = ids[b : b + batch_size]
                    with self.host.using(adapter):
                        s = self.summarize_list(batch)
                    out.extend(x.to("cpu") for x in s)
                    bar.update(len(batch))
        bar.close()
        return out

    def compress(self, text: str, *, batch_size: int = 8, progress: bool = False) -> CheatSheets:
        """Split ``text`` into segments and compress them all: the document's cheat sheets in order."""
        chunks = self.split(text)
        sheets = self.compress_chunks(chunks, batch_size=batch_size, progress=progress)
        return CheatSheets(
            tensors=sheets,
            fingerprint=self.fingerprint,
            source_tokens=sum(c.n_tokens for c in chunks),
            texts=[c.text for c in chunks],
        )

    # -- persistence ----------------------------------------------------------------------------------------

    def save(self, directory: str | Path) -> Path:
        """Write ``encoder_config.json`` and ``encoder.safetensors`` (summary embeddings + encoder LoRA), and
        ``reader.safetensors`` when the encoder has a reader adapter."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        if self.reader is not None:
            (d / READER_FILE).write_bytes(self.reader)
        elif (d / READER_FILE).exists():
            (d / READER_FILE).unlink()  # a reader of an earlier encoder in this folder would not fit
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in self.trainable_state().items()}
        save_file(tensors, str(d / WEIGHTS_FILE), metadata={"format": "lloco-encoder"})
        (d / CONFIG_FILE).write_text(
            json.dumps(
                {
                    "format_version": FORMAT_VERSION,
                    "config": self.config.to_dict(),
                    "base_model": self.host.name,
                    "base_fingerprint": self.host.fingerprint,
                    "dtype": str(self.dtype),
                    "fingerprint": self.fingerprint,
                },
                indent=2,
            )
        )
        return d

    @classmethod
    def load(cls, directory: str | Path, host: LoadedModel) -> ContextEncoder:
        """Load an encoder saved by :meth:`save` onto ``host``; refuses a different base model."""
        d = Path(directory)
        meta, config, tensors = _read_encoder_folder(d, host)
        if config.pooling == "summary" and "embed_summary.weight" not in tensors:
            raise ModelLoadError(
                f"{d / WEIGHTS_FILE} has no 'embed_summary.weight'; it is not a lloco encoder"
            )
        lora = {k[len("lora.") :]: v for k, v in tensors.items() if k.startswith("lora.")}
        connector = {k[len("connector.") :]: v for k, v in tensors.items() if k.startswith("connector.")}
        selector = {k[len("selector.") :]: v for k, v in tensors.items() if k.startswith("selector.")}
        if config.literal_selector == "learned" and not selector:
            raise ModelLoadError(
                f"{d / WEIGHTS_FILE} has no selector weights but its config names a learned "
                "literal selector; restore the encoder folder or retrain the selector"
            )
        if config.connector != "none" and not connector:
            raise ModelLoadError(
                f"{d / WEIGHTS_FILE} has no connector weights but its config names a "
                f"{config.connector!r} connector; restore the encoder folder or retrain"
            )
        try:
            enc = cls(
                host,
                config,
                summary_weight=tensors.get("embed_summary.weight"),
                lora_state=lora or None,
                connector_state=connector or None,
                selector_state=selector or None,
            )
        except ModelLoadError as exc:
            raise ModelLoadError(f"encoder {d}: {exc}") from None
        except RuntimeError as exc:  # peft/torch: LoRA tensors of the wrong shape
            with host.lock:
                if ENCODER_ADAPTER in host.adapter_names():
                    host.delete_adapter(ENCODER_ADAPTER)
                host.resync()
            raise ModelLoadError(
                f"encoder {d}: its LoRA weights do not fit the base model "
                f"({str(exc).splitlines()[0][:200]}); load the matching decoder or retrain"
            ) from None
        # Same dtype -> the recomputed identity must equal the saved one (else the files were altered or
        # mixed up). A different dtype legitimately changes it: cheat sheets differ too.
        if meta.get("dtype") == str(enc.dtype) and meta.get("fingerprint") not in (None, enc.fingerprint):
            raise FingerprintMismatchError(
                f"encoder {d}: its weights do not match the fingerprint in {CONFIG_FILE} "
                f"({str(meta.get('fingerprint'))[:12]} saved, {enc.fingerprint[:12]} loaded); the folder was "
                "modified or mixes files of two encoders: restore it or retrain"
            )
        if (d / READER_FILE).exists():
            enc.reader = enc._read_reader(d / READER_FILE)
        return enc

    def _read_reader(self, path: Path) -> bytes:
        """The reader adapter file's bytes, checked against this encoder and its base model."""
        from .adapters import AdapterArtifact

        data = path.read_bytes()
        try:
            art = AdapterArtifact.from_bytes(data)
        except AdapterError as exc:
            raise ModelLoadError(
                f"{path} is not a lloco adapter file ({exc}); restore it from the encoder's "
                f"training run, or delete it to use the encoder without a reader"
            ) from None
        if art.base_fingerprint != self.host.fingerprint or art.encoder_fingerprint != self.fingerprint:
            raise FingerprintMismatchError(
                f"{path} was trained for encoder {str(art.encoder_fingerprint)[:12]} on base model "
                f"{str(art.base_fingerprint)[:12]}, but this encoder is {self.fingerprint[:12]} on "
                f"{self.host.fingerprint[:12]}; copy the reader from the same training run as the encoder, or "
                "delete it to use the encoder without a reader"
            )
        return data

    @classmethod
    def from_autocompressor(
        cls,
        directory: str | Path,
        host: LoadedModel | None = None,
        *,
        segment_length: int | None = None,
        accumulate: bool | None = None,
        expect_summary_length: int | None = None,
        **load_kwargs,
    ) -> ContextEncoder:
        """Load an AutoCompressor checkpoint (Llama weights + ``embed_summary.weight``, e.g.
        ``AutoCompressor-Llama-2-7b-6k``) from a local folder; the base model comes from the same folder.

        The weights may be safetensors (one file, or shards with ``model.safetensors.index.json``) or
        ``pytorch_model*.bin`` read with ``torch.load(weights_only=True)`` only: a pickle that would build
        other objects (and could run code) is refused unread. ``segment_length`` / ``accumulate`` override the
        checkpoint's config (default: its ``segment_lengths[0]`` / ``segment_length``, else 1,536 tokens, and
        its ``accumulate_summary``); ``expect_summary_length`` refuses a checkpoint with another number of
        summary vectors (a preset's value). ModelLoadError naming what was found for anything else.
        """
        d = Path(directory)
        cfg = read_autocompressor_config(d)
        summary = _read_tensor(
            d,
            "embed_summary.weight",
            what="AutoCompressor checkpoint",
            config_has_summary="summary_length" in cfg,
        )
        if summary.dim() != 2:
            raise ModelLoadError(
                f"{d}: embed_summary.weight has shape {tuple(summary.shape)}; an AutoCompressor "
                "stores [summary_length, hidden_size]"
            )
        if "summary_length" not in cfg:
            raise ModelLoadError(
                f"{d / 'config.json'} has none of the AutoCompressor summary fields ({', '.join(_AC_FIELDS)}), "
                f"although the weights hold embed_summary.weight {tuple(summary.shape)}; found keys: "
                f'{_keys(cfg)}. Add the fields of the checkpoint\'s original config.json (e.g. "summary_length": '
                f'{summary.shape[0]}, "accumulate_summary": true)'
            )
        n = cfg["summary_length"]
        if not isinstance(n, int) or isinstance(n, bool) or n != summary.shape[0]:
            raise ModelLoadError(
                f"{d / 'config.json'} says summary_length {n!r}, but embed_summary.weight has "
                f"{summary.shape[0]} rows; the config and the weights are of different checkpoints"
            )
        if expect_summary_length is not None and n != expect_summary_length:
            raise ModelLoadError(
                f"{d} has {n} summary vectors per segment, not the {expect_summary_length} asked "
                "for (a checkpoint's learned summary vectors cannot be changed on import)"
            )
        hidden = cfg.get("hidden_size")
        if isinstance(hidden, int) and hidden != summary.shape[1]:
            raise ModelLoadError(
                f"{d}: embed_summary.weight has width {summary.shape[1]}, but config.json says "
                f"hidden_size {hidden}"
            )
        host = host or load_model(d, **load_kwargs)
        seg = segment_length or cfg.get("segment_length") or 1536
        if isinstance(cfg.get("segment_lengths"), list) and cfg["segment_lengths"] and not segment_length:
            seg = int(cfg["segment_lengths"][0])
        acc = bool(cfg.get("accumulate_summary", False)) if accumulate is None else bool(accumulate)
        config = EncoderConfig(segment_length=int(seg), summary_length=int(n), accumulate=acc)
        return cls(host, config, summary_weight=summary)


_AC_FIELDS = ("summary_length", "accumulate_summary", "segment_lengths")
_SAFE_INDEX = "model.safetensors.index.json"
_BIN_INDEX = "pytorch_model.bin.index.json"


def _keys(d: dict, limit: int = 14) -> str:
    names = sorted(map(str, d))
    return (", ".join(names[:limit]) + (" ..." if len(names) > limit else "")) if names else "none"


def read_autocompressor_config(directory: str | Path) -> dict:
    """``config.json`` of an AutoCompressor-Llama checkpoint folder, checked to be a Llama's (ModelLoadError
    naming what was found otherwise). The summary fields are checked by :meth:`ContextEncoder.from_autocompressor`
    once the weights were looked at, so that a plain Llama folder is reported as such."""
    d = Path(directory)
    if not d.is_dir():
        raise ModelLoadError(
            f"{d} is not a folder; give the AutoCompressor checkpoint folder (config.json + weights)"
        )
    cfg_path = d / "config.json"
    if not cfg_path.is_file():
        raise ModelLoadError(
            f"{d} has no config.json (found: {listing(d)}); expected an AutoCompressor "
            "checkpoint folder such as AutoCompressor-Llama-2-7b-6k"
        )
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ModelLoadError(f"{cfg_path} is not readable JSON ({exc})") from None
    if not isinstance(cfg, dict):
        raise ModelLoadError(f"{cfg_path} holds a JSON {type(cfg).__name__}, not a model config")
    model_type = cfg.get("model_type")
    archs = cfg.get("architectures")
    archs = [str(a) for a in archs] if isinstance(archs, list) else ([str(archs)] if archs else [])
    if (model_type is not None and model_type != "llama") or any("llama" not in a.lower() for a in archs):
        raise ModelLoadError(
            f"{cfg_path} describes model_type {model_type!r} with architectures {archs or 'none'}; lloco imports "
            "AutoCompressor checkpoints built on Llama only (model_type 'llama', e.g. LlamaAutoCompressorModel)"
        )
    return cfg


def _tensor_files(directory: Path, name: str) -> tuple[list[Path], str]:
    """The weight files that may hold ``name`` (the one an index names, else all) and their kind."""
    for index_name, kind in ((_SAFE_INDEX, "safetensors"), (_BIN_INDEX, "bin")):
        index = directory / index_name
        if not index.is_file():
            continue
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map")
        except (OSError, UnicodeDecodeError, ValueError, AttributeError) as exc:
            raise ModelLoadError(f"{index} is not a readable weight index ({exc})") from None
        if not isinstance(weight_map, dict):
            raise ModelLoadError(f"{index} has no weight_map; restore the checkpoint's index file")
        if name not in weight_map:
            return [], kind
        shard = directory / Path(str(weight_map[name])).name
        if not shard.is_file():
            raise ModelLoadError(
                f"{index} puts {name!r} in {shard.name}, which is missing (found: {listing(directory)})"
            )
        return [shard], kind
    safetensors = sorted(directory.glob("*.safetensors"))
    if safetensors:
        return safetensors, "safetensors"
    return sorted(directory.glob("*.bin")), "bin"


class Connector(nn.Module):
    """The map from pooled encoder states to decoder input embeddings: ``none`` (identity), ``linear``
    (``W x + b``) or ``mlp`` (``y + W2 gelu(W1 y)`` with ``y = s x``). Trainable ones start as a scaled
    identity; :meth:`ContextEncoder._calibrate_connector` sets the scale so that fresh vectors have the
    size of the decoder's input embeddings (final-layer states are ~16x larger for SmolLM2)."""

    def __init__(self, kind: str, hidden: int) -> None:
        super().__init__()
        self.kind = kind
        if kind == "linear":
            self.proj = nn.Linear(hidden, hidden)
            with torch.no_grad():
                self.proj.weight.copy_(torch.eye(hidden))
                self.proj.bias.zero_()
        elif kind == "mlp":
            self.scale = nn.Parameter(torch.ones(()))
            self.up = nn.Linear(hidden, hidden)
            self.down = nn.Linear(hidden, hidden)
            with torch.no_grad():
                self.down.weight.zero_()
                self.down.bias.zero_()
        elif kind != "none":
            raise ConfigError(f"unknown connector {kind!r}; use one of {', '.join(CONNECTORS)}")

    @torch.no_grad()
    def set_scale(self, scale: float) -> None:
        """Make the (fresh) connector start as ``scale`` times the identity."""
        if self.kind == "linear":
            self.proj.weight.copy_(torch.eye(self.proj.weight.shape[0]) * scale)
        elif self.kind == "mlp":
            self.scale.fill_(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "linear":
            return self.proj(x)
        if self.kind == "mlp":
            y = x * self.scale
            return y + self.down(torch.nn.functional.gelu(self.up(y)))
        return x


def _left_padded(
    rows: Sequence[torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """``(x, attention_mask, position_ids)`` for rows ``[n_i, hidden]`` left-padded to one length, positions
    restarting at 0 after the padding (a row's result does not depend on its batch-mates); mask and positions
    are None when no row is padded (the plain causal path: SDPA's fast kernel)."""
    length = max(r.shape[0] for r in rows)
    x = rows[0].new_zeros(len(rows), length, rows[0].shape[-1])
    mask = torch.zeros(len(rows), length, dtype=torch.long, device=rows[0].device)
    for i, r in enumerate(rows):
        x[i, length - r.shape[0] :] = r
        mask[i, length - r.shape[0] :] = 1
    if all(r.shape[0] == length for r in rows):
        return x, None, None
    return x, mask, (mask.cumsum(-1) - 1).clamp(min=0)


def _zero_selector(hidden: int, device: torch.device) -> nn.Linear:
    """A learned selector before fitting: all scores equal, so literal tokens fall back to text order."""
    layer = nn.Linear(hidden, 1)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer.requires_grad_(False).to(device, torch.float32)


def _read_encoder_folder(d: Path, host: LoadedModel) -> tuple[dict, EncoderConfig, dict[str, torch.Tensor]]:
    """(metadata, config, tensors) of the encoder saved in ``d``, checked against ``host``'s base model."""
    if not (d / CONFIG_FILE).exists() or not (d / WEIGHTS_FILE).exists():
        raise ModelLoadError(f"{d} is not a lloco encoder folder (needs {CONFIG_FILE} and {WEIGHTS_FILE})")
    try:
        meta = json.loads((d / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(
            f"{d / CONFIG_FILE} is not readable JSON ({exc}); restore the encoder folder or "
            "retrain the encoder"
        ) from None
    if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict):
        raise ModelLoadError(f"{d / CONFIG_FILE} has no encoder config; restore the folder or retrain")
    if meta.get("base_fingerprint") != host.fingerprint:
        raise FingerprintMismatchError(
            f"encoder {d} was trained on base model {meta.get('base_model')!r} "
            f"(fingerprint {str(meta.get('base_fingerprint'))[:12]}), but the loaded decoder is "
            f"{host.name!r} ({host.fingerprint[:12]}); load the matching decoder or retrain the encoder"
        )
    try:
        config = EncoderConfig.from_dict(meta["config"])
    except (ConfigError, TypeError) as exc:
        raise ModelLoadError(
            f"{d / CONFIG_FILE}: invalid encoder config ({exc}); restore or retrain"
        ) from None
    try:  # safetensors only: never unpickles, and fails cleanly on damaged files
        tensors = load_file(str(d / WEIGHTS_FILE))
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own (Rust) error types
        raise ModelLoadError(
            f"{d / WEIGHTS_FILE} is not a valid safetensors file ({exc}); restore the encoder "
            "folder or retrain (pickled weights are never loaded)"
        ) from None
    return meta, config, tensors


def _mean_groups(states: torch.Tensor, groups: int) -> torch.Tensor:
    """``[n, H]`` -> ``[min(groups, n), H]``: means over consecutive, nearly equal groups of rows."""
    n = states.shape[0]
    g = min(groups, n)
    bounds = torch.div(torch.arange(g + 1, device=states.device) * n, g, rounding_mode="floor")
    csum = torch.cat([states.new_zeros(1, states.shape[1]), states.float().cumsum(0)], dim=0)
    sums = csum[bounds[1:]] - csum[bounds[:-1]]
    return (sums / (bounds[1:] - bounds[:-1]).unsqueeze(1).to(sums.dtype)).to(states.dtype)


def _read_tensor(
    directory: Path, name: str, *, what: str = "checkpoint", config_has_summary: bool | None = None
) -> torch.Tensor:
    """Read one named tensor from a checkpoint folder: safetensors (single or sharded with an index), else
    ``.bin`` files through ``torch.load(weights_only=True)`` only (never unrestricted unpickling)."""
    from safetensors import safe_open

    files, kind = _tensor_files(directory, name)
    if not files and not any(directory.glob("*.safetensors")) and not any(directory.glob("*.bin")):
        raise ModelLoadError(
            f"{directory} has no weights: no .safetensors and no .bin files (found: {listing(directory)})"
        )
    for f in files:
        if kind == "safetensors":
            try:
                with safe_open(str(f), framework="pt") as st:
                    if name in st.keys():  # noqa: SIM118 - safe_open has no __contains__
                        return st.get_tensor(name)
            except Exception as exc:  # noqa: BLE001 - safetensors raises its own (Rust) error types
                raise ModelLoadError(f"{f} is not a valid safetensors file ({exc})") from None
        else:
            tensors = load_bin_weights(
                f,
                error=ModelLoadError,
                mmap=True,
                fix="Convert the checkpoint to safetensors with a tool you trust",
            )
            if name in tensors:
                return tensors[name].clone()  # off the memory map of the whole shard
    hint = ""
    if config_has_summary is False:
        hint = (
            " and its config.json has none of the AutoCompressor summary fields ("
            + ", ".join(_AC_FIELDS)
            + "): it looks like a plain Llama checkpoint, not an AutoCompressor"
        )
    raise ModelLoadError(
        f"no tensor {name!r} in the {kind} weights of {directory} "
        f"({', '.join(f.name for f in files) or 'none indexed'}){hint}; is this an {what}?"
    )


@dataclass
class CheatSheets:
    """The compressed form of a text: one tensor per chunk plus the encoder fingerprint that made them."""

    tensors: list[torch.Tensor]
    fingerprint: str
    source_tokens: int = 0
    #: each chunk's source text (what question-aware literal tokens need); None when not kept
    texts: list[str] | None = None

    @property
    def n_vectors(self) -> int:
        return sum(int(t.shape[0]) for t in self.tensors)

    def stacked(self) -> torch.Tensor:
        """All chunks' vectors concatenated: ``[n_vectors, hidden]``."""
        return torch.cat(self.tensors, dim=0)
