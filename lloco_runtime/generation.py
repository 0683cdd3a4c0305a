"""Generation from prompts that mix text and cheat-sheet embeddings.

Own decoding loop (greedy or sampled, KV cache, stop strings, incremental detokenisation) instead of
``model.generate``: each forward step runs inside ``host.using(adapter)``, so the request's LoRA is active
for exactly its own steps even when many requests share the model, and streaming needs no extra thread.
:meth:`Generator.generate_batch` decodes several prompts at once (left padding, one forward step per token
for all unfinished rows, each row with its own LoRA through ``host.using_batch``).
"""

from __future__ import annotations

import contextlib
import inspect
import json
import time
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .errors import AdapterError, CheatSheetError, ContextTooLongError, InputError
from .models import LoadedModel
from .prompt import Prompt


@dataclass(frozen=True)
class GenerationConfig:
    """Decoding options. ``temperature == 0`` means greedy.

    ``ignore_eos``: keep decoding past end-of-sequence tokens, so a run ends only at ``max_new_tokens`` (or a
    stop string): exactly ``max_new_tokens`` tokens, as ``min_new_tokens`` does for ``model.generate()``.
    For benchmarks that must compare runs of the same length; answers want the default (False).
    """

    max_new_tokens: int = field(default=64, metadata={"help": "upper bound on generated tokens"})
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    use_cache: bool = True
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be a positive integer, got {self.max_new_tokens!r}")
        if self.temperature < 0:
            raise InputError("temperature must be >= 0")
        if not 0 < self.top_p <= 1:
            raise InputError("top_p must be in (0, 1]")
        if self.top_k < 0:
            raise InputError("top_k must be >= 0")
        if not isinstance(self.ignore_eos, bool):
            raise InputError(f"ignore_eos must be True or False, got {self.ignore_eos!r}")
        object.__setattr__(self, "stop", tuple(s for s in self.stop if s))


@dataclass
class GenerationResult:
    """A finished generation with the numbers users compare methods by."""

    text: str
    token_ids: list[int]
    prompt_tokens: int
    context_vectors: int
    finish_reason: str  # "stop", "eos" or "length"
    prefill_s: float
    total_s: float


@dataclass
class StreamStats:
    """Numbers of one decoding run (tokens, text, finish reason, timings), filled in as the stream runs.

    Pass one as ``state=`` to :meth:`Generator.stream` / :meth:`LLoCO.stream` to read them afterwards."""

    prompt_tokens: int = 0
    context_vectors: int = 0
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str = "length"
    prefill_s: float = 0.0
    total_s: float = 0.0


PADDING_LIMIT = 0.5  # CPU: prompts are prefilled alone when padding would exceed this share of the batch


class Generator:
    """Turns a :class:`Prompt` into text with a :class:`LoadedModel`, optionally under a LoRA adapter."""

    def __init__(self, host: LoadedModel) -> None:
        self.host = host
        # transformers >= 5.24 renamed ``past_key_values`` to ``cache``; accept both.
        params = inspect.signature(host.model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self.prefill_alone: bool | None = None  # generate_batch: None = by the padding share (prefills_alone)
        self._merge_ok: bool | None = None  # False once a cache could not be merged (not plain KV layers)

    # -- inputs ------------------------------------------------------------------------------------------

    def check_cheat_sheet(self, tensor: torch.Tensor) -> None:
        """Refuse tensors that cannot be decoder input embeddings, naming the fix."""
        if not isinstance(tensor, torch.Tensor):
            raise CheatSheetError(f"cheat sheets must be tensors, got {type(tensor).__name__}")
        if tensor.ndim != 2 or tensor.shape[0] == 0:
            raise CheatSheetError(
                f"a cheat sheet must have shape [n_vectors, hidden]; got {list(tensor.shape)}"
            )
        if tensor.shape[1] != self.host.hidden_size:
            raise CheatSheetError(
                f"cheat sheet hidden size {tensor.shape[1]} does not match the decoder's "
                f"{self.host.hidden_size}; it was made by an encoder for another model"
            )
        if tensor.dtype != self.host.dtype:
            raise CheatSheetError(
                f"cheat sheet dtype {tensor.dtype} does not match the decoder's {self.host.dtype}; use "
                "cheat sheets made by the encoder paired with this decoder (same dtype), or re-ingest"
            )
        if not torch.isfinite(tensor).all():
            raise CheatSheetError("cheat sheet contains NaN or infinite values; re-ingest the document")

    def embed(self, prompt: Prompt) -> tuple[torch.Tensor, int, int]:
        """``inputs_embeds [1, T, H]``, number of text tokens, number of spliced vectors."""
        tok = self.host.tokenizer
        embed = self.host.model.get_input_embeddings()
        parts, n_text, n_vec, first_text = [], 0, 0, True
        with torch.no_grad():
            for piece in prompt.pieces:
                if isinstance(piece, str):
                    ids = tok(piece, add_special_tokens=prompt.special_tokens and first_text)["input_ids"]
                    first_text = False
                    if ids:
                        n_text += len(ids)
                        parts.append(embed(torch.tensor(ids, device=self.host.device)))
                else:
                    self.check_cheat_sheet(piece)
                    n_vec += int(piece.shape[0])
                    parts.append(piece.to(self.host.device))
        if not parts:
            raise InputError("the prompt is empty")
        return torch.cat(parts, dim=0).unsqueeze(0), n_text, n_vec

    # -- decoding ---------------------------------------------------------------------------------------

    def _pick(self, logits: torch.Tensor, cfg: GenerationConfig, rng: torch.Generator | None) -> int:
        if cfg.temperature == 0:
            return int(torch.argmax(logits).item())
        logits = logits.float() / cfg.temperature
        if cfg.top_k:
            kth = torch.topk(logits, min(cfg.top_k, logits.numel())).values[-1]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        if cfg.top_p < 1:
            sorted_p, order = torch.sort(probs, descending=True)
            keep = sorted_p.cumsum(-1) - sorted_p < cfg.top_p
            probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_p[keep])
        # Inverse-CDF sampling: same distribution as torch.multinomial, ~20x faster over a 49k vocabulary on CPU.
        cdf = probs.to("cpu", torch.float64).cumsum(0)
        u = torch.rand((), generator=rng, dtype=torch.float64)
        idx = int(torch.searchsorted(cdf, u * cdf[-1], right=True).item())
        return min(idx, probs.numel() - 1)

    def _eos_ids(self) -> set[int]:
        tok = self.host.tokenizer
        eos = {
            i for i in ([tok.eos_token_id] if isinstance(tok.eos_token_id, int) else tok.eos_token_id or [])
        }
        gen_eos = getattr(self.host.model.generation_config, "eos_token_id", None)
        eos |= set(gen_eos if isinstance(gen_eos, list) else [gen_eos] if gen_eos is not None else [])
        return eos

    def _embed_checked(self, prompt: Prompt, cfg: GenerationConfig) -> tuple[torch.Tensor, int, int]:
        embeds, n_text, n_vec = self.embed(prompt)
        total = embeds.shape[1]
        window = self.host.context_window
        if total + cfg.max_new_tokens > window:
            raise ContextTooLongError(
                f"prompt is {total} positions ({n_text} text tokens + {n_vec} cheat-sheet vectors) and "
                f"max_new_tokens={cfg.max_new_tokens}, over the decoder's window of {window}; "
                "retrieve fewer chunks (top_k), shorten the question, or lower max_new_tokens"
            )
        return embeds, n_text, n_vec

    @staticmethod
    def _rng(cfg: GenerationConfig) -> torch.Generator | None:
        if cfg.temperature == 0:
            return None
        rng = torch.Generator()
        rng.manual_seed(cfg.seed if cfg.seed is not None else torch.seed())
        return rng

    def stream(
        self,
        prompt: Prompt,
        config: GenerationConfig | None = None,
        *,
        adapter: str | None = None,
        state: StreamStats | None = None,
    ) -> Iterator[str]:
        """Yield text deltas as they are decoded. ``state`` (optional) receives the final numbers."""
        cfg = config or GenerationConfig()
        st = state if state is not None else StreamStats()
        t0 = time.perf_counter()
        embeds, _, n_vec = self._embed_checked(prompt, cfg)
        st.prompt_tokens, st.context_vectors = embeds.shape[1], n_vec
        eos = set() if cfg.ignore_eos else self._eos_ids()
        rng = self._rng(cfg)
        embed_tokens = self.host.model.get_input_embeddings()
        device = self.host.device
        text = _TextState(self.host.tokenizer, cfg.stop)
        cache = None
        for step in range(cfg.max_new_tokens):
            # Grad off per step, not around the loop: a suspended generator must not leak a grad mode
            # into the caller's code between tokens.
            with torch.no_grad(), self.host.using(adapter) as model:
                if step == 0 or not cfg.use_cache:
                    out = model(inputs_embeds=embeds, use_cache=cfg.use_cache, logits_to_keep=1)
                else:
                    out = model(
                        input_ids=torch.tensor([[st.token_ids[-1]]], device=device),
                        use_cache=True,
                        logits_to_keep=1,
                        **{self._cache_kw: cache},
                    )
            if step == 0:
                st.prefill_s = time.perf_counter() - t0
            cache = _output_cache(out) if cfg.use_cache else None
            with torch.no_grad():
                nxt = self._pick(out.logits[0, -1], cfg, rng)
            if nxt in eos:
                st.finish_reason = "eos"
                break
            st.token_ids.append(nxt)
            if not cfg.use_cache:
                with torch.no_grad():
                    embeds = torch.cat([embeds, embed_tokens(torch.tensor([[nxt]], device=device))], 1)
            delta = text.push(nxt)
            st.text = text.text
            if delta:
                yield delta
            if text.stopped:
                st.finish_reason = "stop"
                break
        if st.finish_reason != "stop":
            delta = text.close()
            if text.stopped:  # completed by the last token while an incomplete character was pending
                st.finish_reason = "stop"
            st.text = text.text
            if delta:
                yield delta
        st.total_s = time.perf_counter() - t0

    def generate_batch(
        self,
        prompts: Sequence[Prompt],
        config: GenerationConfig | Sequence[GenerationConfig] | None = None,
        adapters: Sequence[str | None] | None = None,
    ) -> list[GenerationResult]:
        """Decode several prompts together: the prefill (each prompt alone with the KV caches merged, or one
        left-padded pass: :meth:`prefills_alone`), then one forward step per token for all unfinished rows of
        the left-padded batch (a row leaves it at its EOS, stop string or ``max_new_tokens``).

        ``config``: one for all rows or one per row; ``adapters``: a loaded adapter name (or None) per row.
        Rows with different adapters share the forward passes through peft's mixed-batch LoRA inference
        (:meth:`LoadedModel.using_batch`); when the adapters cannot be mixed (DoRA, other variants) the rows
        are decoded one batch per adapter. Greedy rows give the tokens :meth:`generate` gives; sampled rows
        draw from their own seeded generator as :meth:`generate` does. Rows with ``use_cache=False`` are
        decoded one at a time. ``prefill_s``/``total_s`` are measured from the start of the call.
        """
        rows = self._batch_rows("generate_batch", prompts, config, adapters)
        results: list[GenerationResult | None] = [None] * len(rows)
        batched = []
        for i, (row, prompt) in enumerate(zip(rows, prompts, strict=True)):
            if row.cfg.use_cache:
                batched.append(i)
            else:
                results[i] = self.generate(prompt, row.cfg, adapter=row.adapter)
        for _ in self._decode_groups([rows[i] for i in batched]):
            pass
        for i in batched:
            results[i] = rows[i].result()
        return results  # type: ignore[return-value]

    def stream_batch(
        self,
        prompts: Sequence[Prompt],
        config: GenerationConfig | Sequence[GenerationConfig] | None = None,
        adapters: Sequence[str | None] | None = None,
        *,
        states: Sequence[StreamStats] | None = None,
    ) -> Iterator[list[tuple[str, bool]]]:
        """:meth:`generate_batch` as it goes: after the prefill and after every decoding step, one
        ``(text, finished)`` per prompt: the text the row added since the last item ("" when none, as when
        a token completes no character yet) and whether the row is done (its last text comes with the first
        ``finished=True``; later items repeat ``("", True)``). Ends when every row is done.

        ``states`` (optional, one per prompt): each row's numbers (:class:`StreamStats`: text, tokens, finish
        reason, timings from the start of the call), complete once the row is done. Every row must use the KV
        cache (``use_cache=True``, the default). Rows whose adapters cannot share a forward pass are decoded
        one adapter group after another (the later groups report ``("", False)`` while they wait).
        """
        rows = self._batch_rows("stream_batch", prompts, config, adapters)
        if states is not None and len(states) != len(rows):
            raise InputError(f"stream_batch: {len(rows)} prompts but {len(states)} states")
        if any(not r.cfg.use_cache for r in rows):
            raise InputError("stream_batch decodes with the KV cache: use_cache=False rows go to generate()")
        for r, st in zip(rows, states or [None] * len(rows), strict=True):
            r.state = st
        for _ in self._decode_groups(rows):
            yield [r.take() for r in rows]

    def _batch_rows(
        self,
        who: str,
        prompts: Sequence[Prompt],
        config: GenerationConfig | Sequence[GenerationConfig] | None,
        adapters: Sequence[str | None] | None,
    ) -> list[_Row]:
        n = len(prompts)
        if config is None or isinstance(config, GenerationConfig):
            cfgs = [config or GenerationConfig()] * n
        else:
            cfgs = list(config)
        names = [None] * n if adapters is None else list(adapters)
        if len(cfgs) != n or len(names) != n:
            raise InputError(f"{who}: {n} prompts but {len(cfgs)} configs and {len(names)} adapters")
        t0 = time.perf_counter()
        loaded = self.host.adapter_names()
        for a in names:
            if a is not None and a not in loaded:
                raise AdapterError(f"adapter {a!r} is not loaded (loaded: {loaded}); load it first")
        rows: list[_Row] = []
        for prompt, cfg, adapter in zip(prompts, cfgs, names, strict=True):
            embeds, _, n_vec = self._embed_checked(prompt, cfg)
            rows.append(
                _Row(
                    embeds, n_vec, cfg, adapter, self._rng(cfg), _TextState(self.host.tokenizer, cfg.stop), t0
                )
            )
        return rows

    def _decode_groups(self, rows: list[_Row]) -> Iterator[None]:
        """Decode ``rows`` (filled in place) in one batch when their adapters can share forward passes, else
        one batch per adapter; yields after every forward pass."""
        if not rows:
            return
        if self.host.can_mix([r.adapter for r in rows]):
            groups = [rows]
        else:
            by_adapter: dict[str | None, list[_Row]] = {}
            for r in rows:
                by_adapter.setdefault(r.adapter, []).append(r)
            groups = list(by_adapter.values())
        eos = self._eos_ids()
        for group in groups:
            yield from self._decode_rows(group, eos)

    def prefills_alone(self, lengths: Sequence[int]) -> bool:
        """Whether :meth:`generate_batch` prefills prompts of these ``lengths`` (positions) each on its own,
        then merges the KV caches for the shared decoding steps, rather than in one left-padded forward pass.

        Default (``prefill_alone = None``): alone only on CPU and only when more than half of the padded batch
        would be padding (``PADDING_LIMIT``). Prefill is compute-bound on a CPU, so padding costs its full
        share, but one wide pass uses the cores better: with the default model, 2 threads and prompts of 169-178
        positions, a batch of 4 took 5.25 s padded vs 5.79 s alone, a batch of 8 7.85 vs 7.79 s (16 tokens;
        ``lloco bench`` times both side by side).
        ``prefill_alone = True/False`` decides; a model whose cache cannot be merged always prefills padded."""
        if len(lengths) < 2 or self._merge_ok is False:
            return False
        if self.prefill_alone is not None:
            return self.prefill_alone
        if self.host.device.type != "cpu":
            return False
        return sum(lengths) < PADDING_LIMIT * len(lengths) * max(lengths)

    def _prefill_rows(
        self, rows: list[_Row], eos: set[int]
    ) -> tuple[Any, torch.Tensor, torch.Tensor, list[int]]:
        """Prefill every row alone (exactly the single-request forward pass, with the row's own adapter), pick
        its first token, then merge the caches of the rows still decoding into one left-padded batch cache.
        Returns ``(cache, mask, next positions, live rows)``; ``cache`` is None when no row goes on."""
        device = self.host.device
        caches: dict[int, Any] = {}
        for i, r in enumerate(rows):
            with torch.no_grad(), self.host.using(r.adapter) as model:
                out = model(inputs_embeds=r.embeds, use_cache=True, logits_to_keep=1)
            r.prefill_s = time.perf_counter() - r.t0
            row_cache = _output_cache(out)
            _check_mergeable(row_cache, r.embeds.shape[1], first=i == 0)  # before any row takes a token
            with torch.no_grad():
                going = r.feed(self._pick(out.logits[0, -1], r.cfg, r.rng), eos)
            if going:
                caches[i] = row_cache
            else:
                r.finish(time.perf_counter())
        live = list(caches)
        lens = [rows[i].embeds.shape[1] for i in live]
        if not live:
            return None, torch.zeros(0, 0, dtype=torch.long), torch.zeros(0, dtype=torch.long), []
        width = max(lens)
        mask = torch.zeros(len(live), width + 1, dtype=torch.long, device=device)  # + the first new token
        for j, n in enumerate(lens):
            mask[j, width - n :] = 1
        cache = _merge_left_padded([caches[i] for i in live], lens, width)
        return cache, mask, torch.tensor(lens, device=device), live

    def _decode_rows(self, rows: list[_Row], eos: set[int]) -> Iterator[None]:
        """Batched decoding of ``rows`` (filled in place; yields after every forward pass): left padding,
        explicit positions, shared KV cache.
        The prompts are prefilled together, or one by one with their caches merged (:meth:`prefills_alone`)."""
        device, b = self.host.device, len(rows)
        step = 0
        if self.prefills_alone([r.embeds.shape[1] for r in rows]):
            try:
                cache, mask, nxt_pos, live = self._prefill_rows(rows, eos)
            except _CacheNotMergeable:
                self._merge_ok = False  # this model's cache layers are not plain: prefill in batches
            else:
                yield
                if not live:
                    return
                step = 1
        if step == 0:
            lens = [r.embeds.shape[1] for r in rows]
            width = max(lens)
            embeds = torch.zeros(b, width, self.host.hidden_size, dtype=self.host.dtype, device=device)
            mask = torch.zeros(b, width, dtype=torch.long, device=device)
            for i, (r, n) in enumerate(zip(rows, lens, strict=True)):
                embeds[i, width - n :] = r.embeds[0]
                mask[i, width - n :] = 1
            # transformers derives positions from the cache length alone: with left padding each row's real
            # tokens must start at position 0, so the positions are given explicitly (pad slots: 0, masked).
            positions = (mask.cumsum(-1) - 1).clamp_min(0)
            nxt_pos = torch.tensor(lens, device=device)
            live = list(range(b))
            cache = None
        while True:
            with torch.no_grad(), self.host.using_batch([rows[i].adapter for i in live]) as model:
                if step == 0:
                    out = model(
                        inputs_embeds=embeds,
                        attention_mask=mask,
                        position_ids=positions,
                        use_cache=True,
                        logits_to_keep=1,
                    )
                else:
                    last = torch.tensor([[rows[i].token_ids[-1]] for i in live], device=device)
                    out = model(
                        input_ids=last,
                        attention_mask=mask,
                        position_ids=nxt_pos[:, None],
                        use_cache=True,
                        logits_to_keep=1,
                        **{self._cache_kw: cache},
                    )
                    nxt_pos = nxt_pos + 1
            cache = _output_cache(out)
            now = time.perf_counter()
            keep = []
            with torch.no_grad():
                logits = out.logits[:, -1]
                for j, i in enumerate(live):
                    r = rows[i]
                    if step == 0:
                        r.prefill_s = now - r.t0
                    if r.feed(self._pick(logits[j], r.cfg, r.rng), eos):
                        keep.append(j)
                    else:
                        r.finish(time.perf_counter())
            yield
            if not keep:
                return
            if len(keep) < len(live):
                idx = torch.tensor(keep, device=device)
                cache.batch_select_indices(idx)
                mask, nxt_pos = mask[idx], nxt_pos[idx]
                live = [live[j] for j in keep]
            mask = torch.cat([mask, mask.new_ones(len(live), 1)], dim=1)
            step += 1

    def generate(
        self, prompt: Prompt, config: GenerationConfig | None = None, *, adapter: str | None = None
    ) -> GenerationResult:
        """Decode to the end and return the text with token counts and timings."""
        st = StreamStats()
        for _ in self.stream(prompt, config, adapter=adapter, state=st):
            pass
        return GenerationResult(
            text=st.text,
            token_ids=st.token_ids,
            prompt_tokens=st.prompt_tokens,
            context_vectors=st.context_vectors,
            finish_reason=st.finish_reason,
            prefill_s=st.prefill_s,
            total_s=st.total_s,
        )

    def prefill_time(self, prompt: Prompt, *, adapter: str | None = None) -> float:
        """Seconds for the prompt's forward pass up to the first token's logits (time to first token)."""
        embeds, _, _ = self.embed(prompt)
        with torch.inference_mode(), self.host.using(adapter) as model:
            t0 = time.perf_counter()
            model(inputs_embeds=embeds, use_cache=True, logits_to_keep=1)
            return time.perf_counter() - t0


@dataclass
class _Row:
    """One prompt of a batched decode: its inputs, decoding state and numbers."""

    embeds: torch.Tensor
    context_vectors: int
    cfg: GenerationConfig
    adapter: str | None
    rng: torch.Generator | None
    text: _TextState
    t0: float
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str = "length"
    prefill_s: float = 0.0
    total_s: float = 0.0
    state: StreamStats | None = None  # stream_batch: filled when the row is done
    pending: str = ""  # text added since the last take()
    done: bool = False

    def feed(self, token_id: int, eos: set[int]) -> bool:
        """Take the next chosen token; False once the row is finished."""
        if token_id in eos and not self.cfg.ignore_eos:
            self.finish_reason = "eos"
        else:
            self.token_ids.append(token_id)
            self.pending += self.text.push(token_id)
            if self.text.stopped:
                self.finish_reason = "stop"
            elif len(self.token_ids) < self.cfg.max_new_tokens:
                return True
        if self.finish_reason != "stop":
            self.pending += self.text.close()
            if self.text.stopped:
                self.finish_reason = "stop"
        return False

    def finish(self, now: float) -> None:
        self.total_s, self.done = now - self.t0, True
        if self.state is not None:
            st, r = self.state, self.result()
            st.prompt_tokens, st.context_vectors = r.prompt_tokens, r.context_vectors
            st.token_ids, st.text, st.finish_reason = list(r.token_ids), r.text, r.finish_reason
            st.prefill_s, st.total_s = r.prefill_s, r.total_s

    def take(self) -> tuple[str, bool]:
        text, self.pending = self.pending, ""
        return text, self.done

    def result(self) -> GenerationResult:
        return GenerationResult(
            text=self.text.text,
            token_ids=self.token_ids,
            prompt_tokens=self.embeds.shape[1],
            context_vectors=self.context_vectors,
            finish_reason=self.finish_reason,
            prefill_s=self.prefill_s,
            total_s=self.total_s,
        )


_BYTE_TABLES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _byte_table(tokenizer) -> list[bytes | None] | None:
    """Each token id's bytes for a byte-level BPE tokenizer (GPT-2 style, as SmolLM2 and Llama 3 use), b"" for
    special tokens, None for added non-special tokens; None for any other kind of tokenizer. Decoding is then
    concatenating bytes and one UTF-8 decode, as the tokenizer's own ByteLevel decoder does."""
    try:
        return _BYTE_TABLES[tokenizer]
    except (KeyError, TypeError):
        pass
    table = None
    try:
        backend = getattr(tokenizer, "backend_tokenizer", None)
        decoder = json.loads(backend.to_str()).get("decoder") if backend is not None else None
        if (decoder or {}).get("type") == "ByteLevel" and not getattr(
            tokenizer, "clean_up_tokenization_spaces", False
        ):
            bytes_of = {}
            n = 0
            for b in range(256):  # GPT-2's byte-to-unicode table
                if 33 <= b <= 126 or 161 <= b <= 172 or 174 <= b <= 255:
                    bytes_of[chr(b)] = b
                else:
                    bytes_of[chr(256 + n)] = b
                    n += 1
            size = len(tokenizer)
            added = {i: t for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items() if i < size}
            tokens = tokenizer.convert_ids_to_tokens(list(range(size)))
            table = []
            for i, t in enumerate(tokens):
                if i in added:
                    table.append(b"" if getattr(added[i], "special", False) else None)
                elif t is None:
                    table.append(None)
                else:
                    table.append(bytes(bytes_of[c] for c in t))
    except (KeyError, AttributeError, TypeError, ValueError):  # not byte-level after all: the generic path
        table = None
    with contextlib.suppress(TypeError):
        _BYTE_TABLES[tokenizer] = table
    return table


class _IncrementalDecoder:
    """``tokenizer.decode(ids, skip_special_tokens=True)`` of a growing list of ids, without re-decoding the
    whole list at every token.

    Byte-level BPE tokenizers: the tokens' bytes are appended to a buffer and only the bytes since the last
    complete character are decoded. Other tokenizers: only the tokens since the last clean character boundary
    plus a few before it are re-decoded (decoding a token may depend on its left neighbour, e.g. a leading
    space dropped at the start)."""

    CONTEXT = 4

    def __init__(self, tokenizer) -> None:
        self.tok = tokenizer
        self.table = _byte_table(tokenizer)
        self.ids: list[int] = []
        self.buf = bytearray()
        self.committed = ""  # text of ids[:self.k] (of buf[:self.kb] on the byte path)
        self.k = self.kb = 0
        self.head = ""  # text of ids[self.p:self.k]
        self.p = 0

    def _decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True)

    def append(self, token_id: int) -> str:
        """The decoded text of all ids so far, ``token_id`` included."""
        self.ids.append(token_id)
        if self.table is not None:
            piece = self.table[token_id] if 0 <= token_id < len(self.table) else None
            if piece is not None:
                self.buf += piece
                text = self.committed + self.buf[self.kb :].decode("utf-8", errors="replace")
                if not text.endswith("\ufffd"):  # a complete character: later bytes cannot change this text
                    self.committed, self.kb = text, len(self.buf)
                return text
            self.table = None  # an added token: continue on the generic path
            self.committed, self.k, self.p, self.head = "", 0, 0, ""
        tail = self._decode(self.ids[self.p :])
        if tail.startswith(self.head):
            text = self.committed + tail[len(self.head) :]
        else:  # the window decodes differently in context: decode everything (rare)
            text = self._decode(self.ids)
        if not text.endswith("\ufffd") and len(self.ids) - self.k >= self.CONTEXT:
            self.committed, self.k = text, len(self.ids)
            self.p = max(0, self.k - self.CONTEXT)
            self.head = self._decode(self.ids[self.p : self.k])
        return text

    def full(self) -> str:
        return self._decode(self.ids)


class _TextState:
    """Text of the generated tokens, stop strings and what is safe to emit (shared by stream and batch)."""

    def __init__(self, tokenizer, stop: tuple[str, ...]) -> None:
        self.decoder = _IncrementalDecoder(tokenizer)
        self.stop = stop
        self.hold = max((len(s) for s in stop), default=0)
        self.text = ""
        self.emitted = 0
        self.stopped = False

    def push(self, token_id: int) -> str:
        """Take one token; the text delta that may be emitted now ("" if none). Sets ``stopped``."""
        text = self.decoder.append(token_id)
        # Trailing U+FFFD may be an incomplete UTF-8 sequence that the next token completes: look for
        # stop strings in the stable part now, emit the rest once it is complete.
        stable = text.rstrip("\ufffd")
        cut = _find_stop(stable, self.stop)
        if cut >= 0:
            self.text, self.stopped = text[:cut], True
            delta = text[self.emitted : cut] if cut > self.emitted else ""
            self.emitted = cut
            return delta
        if len(stable) < len(text):
            return ""
        self.text = text
        safe = len(text) - _partial_stop(text, self.stop) if self.hold else len(text)
        if safe > self.emitted:
            delta, self.emitted = text[self.emitted : safe], safe
            return delta
        return ""

    def close(self) -> str:
        """After the last token (not stopped): the final text (one full decode) and the delta still owed."""
        text = self.decoder.full()
        cut = _find_stop(text, self.stop)
        if cut >= 0:  # completed by the last token while an incomplete character was pending
            text, self.stopped = text[:cut], True
        self.text = text
        delta = text[self.emitted :] if len(text) > self.emitted else ""
        self.emitted = max(self.emitted, len(text))
        return delta


def _find_stop(text: str, stops: tuple[str, ...]) -> int:
    """Index of the earliest occurrence of any stop string in ``text``, or -1."""
    return min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)


def _partial_stop(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of a stop string (held back)."""
    best = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:n]):
                best = max(best, n)
                break
    return best


def _output_cache(out):
    cache = getattr(out, "cache", None)
    return cache if cache is not None else getattr(out, "past_key_values", None)


class _CacheNotMergeable(Exception):
    """A prefill cache whose layers are not plain growing key/value tensors (sliding windows, quantised)."""


def _check_mergeable(cache: Any, n: int, *, first: bool) -> None:
    """A one-row prefill cache whose every layer holds plain key/value tensors of ``n`` positions (transformers'
    ``DynamicLayer``), else :class:`_CacheNotMergeable` (only ever for the first row: the others come from
    the same model)."""
    from transformers.cache_utils import DynamicLayer

    layers = getattr(cache, "layers", None)
    ok = bool(layers) and all(
        type(layer) is DynamicLayer and layer.keys.shape[0] == 1 and layer.keys.shape[-2] == n
        for layer in layers
    )
    if not ok:
        if first:
            raise _CacheNotMergeable()
        raise RuntimeError("generate_batch: the prefill caches of one model differ in kind")


def _merge_left_padded(caches: list[Any], lens: list[int], width: int) -> Any:
    """One batch cache from single-row caches of ``lens`` tokens (checked by :func:`_check_mergeable`): every
    layer's keys and values left-padded with zeros to ``width`` (the attention mask hides them) and stacked
    on the batch dimension. The first row's cache object is reused."""
    layers = [c.layers for c in caches]
    merged = caches[0]
    for k, layer in enumerate(merged.layers):
        keys, values = [], []
        for ls, n in zip(layers, lens, strict=True):
            kk, vv = ls[k].keys, ls[k].values
            pad = width - n
            keys.append(torch.nn.functional.pad(kk, (0, 0, pad, 0)) if pad else kk)
            values.append(torch.nn.functional.pad(vv, (0, 0, pad, 0)) if pad else vv)
        layer.keys, layer.values = torch.cat(keys, 0), torch.cat(values, 0)
    return merged
