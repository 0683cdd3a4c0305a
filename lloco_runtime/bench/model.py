"""Model-side sections of ``lloco bench``: compression throughput, adapters (load, switch, mixed batch) and
decoding.

Each figure is timed in the same run as its baseline, repetitions interleaved, medians reported, so a
ratio stays meaningful on a busy machine even when absolute times move.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..adapters import AdapterArtifact, AdapterManager
from ..encoder import ENCODER_ADAPTER
from ..generation import GenerationConfig
from ..prompt import Prompt
from ..runtime import LLoCO


def median_ms(samples: Sequence[float]) -> float:
    """Median of samples in seconds, as milliseconds (rounded to 0.001 ms)."""
    return round(1000 * statistics.median(samples), 3)


def interleaved(fns: dict[str, Callable[[], Any]], reps: int) -> dict[str, list[float]]:
    """Seconds per call of each function, ``reps`` rounds, the functions alternating within each round."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


# -- compression throughput ---------------------------------------------------------------------------------


def bench_compression(
    lloco: LLoCO,
    token_ids: Sequence[int],
    *,
    segments: int = 16,
    batch_size: int = 8,
    reps: int = 3,
    split: bool = True,
    warmup: bool = True,
) -> dict[str, Any]:
    """Encoder tokens/s (batched ``compress_chunks``) vs. the plain forward pass of the same backbone.

    The baseline runs the decoder's transformer body (no LM head, no adapter) over exactly the same
    segments in the same batches: the physical ceiling for turning those tokens into hidden states.
    ``efficiency`` = encoder tokens/s / forward tokens/s. The encoder does more work per segment by design:
    ``summary_length`` extra positions and, for a trained encoder, its LoRA. Two more forwards over the
    same batches split the gap (``split``): with the summary positions appended (``with_summary_tokens_per_s``)
    and, for an encoder with a LoRA, with it active too (``with_summary_and_lora_tokens_per_s``).
    ``warmup=False`` skips the untimed first round (the median of 3+ rounds absorbs a slow first one).
    """
    enc = lloco.encoder
    seg = enc.config.segment_length
    need = segments * seg
    if len(token_ids) < need:
        raise ValueError(f"need {need} tokens for {segments} segments of {seg}, got {len(token_ids)}")
    chunks = [tuple(token_ids[i * seg : (i + 1) * seg]) for i in range(segments)]
    host = lloco.host
    backbone = getattr(host.model, host.model.base_model_prefix)
    batches = [
        torch.tensor(chunks[b : b + batch_size], device=host.device) for b in range(0, segments, batch_size)
    ]

    def encode() -> None:
        enc.compress_chunks(chunks, batch_size=batch_size)

    def forward() -> None:
        with torch.inference_mode(), host.using(None):
            for ids in batches:
                backbone(input_ids=ids, use_cache=False)

    def with_summary(adapter: str | None) -> Callable[[], None]:
        def run() -> None:
            with torch.inference_mode(), host.using(adapter):
                emb = host.model.get_input_embeddings()
                for ids in batches:
                    summ = enc.embed_summary.weight.expand(ids.shape[0], -1, -1)
                    backbone(inputs_embeds=torch.cat([emb(ids), summ], dim=1), use_cache=False)

        return run

    fns = {"encode": encode, "forward": forward}
    if split:
        fns["summary"] = with_summary(None)
        if enc.has_lora:
            fns["summary_lora"] = with_summary(ENCODER_ADAPTER)
    for fn in fns.values() if warmup else ():
        fn()
    times = interleaved(fns, reps)
    n_tokens = segments * seg
    tps = {k: n_tokens / statistics.median(v) for k, v in times.items()}
    enc_tps, fwd_tps = tps["encode"], tps["forward"]
    return {
        "lloco_tokens_per_s": round(enc_tps, 1),
        "forward_tokens_per_s": round(fwd_tps, 1),
        "efficiency": round(enc_tps / fwd_tps, 4),
        "with_summary_tokens_per_s": round(tps["summary"], 1) if "summary" in tps else None,
        "with_summary_and_lora_tokens_per_s": round(tps["summary_lora"], 1)
        if "summary_lora" in tps
        else None,
        "positions_ceiling": round(seg / (seg + enc.config.summary_length), 4),
        "tokens": n_tokens,
        "segments": segments,
        "batch_size": batch_size,
        "segment_length": seg,
        "summary_length": enc.config.summary_length,
        "positions_per_segment": seg + enc.config.summary_length,
        "encoder_lora_r": enc.config.lora_r,
        "compression_ratio": enc.config.ratio,
        "reps": reps,
    }


# -- question-aware literal tokens (focus) -----------------------------------------------------------------


def bench_focus(
    lloco: LLoCO,
    token_ids: Sequence[int],
    question: str,
    *,
    top_k: int = 4,
    reps: int = 5,
) -> dict[str, Any] | None:
    """What choosing the literal tokens for the question costs at answer time (``lloco`` does it for every
    prompt with retrieved sheets), against what it saves and what it adds to.

    ``top_k`` segments of ``segment_length`` tokens are focused together (one shared budget, what serving
    does) and timed, interleaved with (a) compressing the same segments through the encoder
    (:meth:`~lloco_runtime.encoder.ContextEncoder.compress_chunks`: what rebuilding sheets per question would
    cost if it needed a forward pass) and (b) the decoder's prefill of the prompt the focused sheets make
    (embedding and forward pass to the first token's logits: time to first token without focus).
    ``share_of_ttft`` = focus / (focus + prefill). None when the encoder
    cannot focus (:attr:`~lloco_runtime.encoder.ContextEncoder.can_focus`)."""
    enc = lloco.encoder
    if not enc.can_focus:
        return None
    seg = enc.config.segment_length
    need = top_k * seg
    if len(token_ids) < need:
        raise ValueError(f"need {need} tokens for {top_k} segments of {seg}, got {len(token_ids)}")
    segments = [list(token_ids[i * seg : (i + 1) * seg]) for i in range(top_k)]
    prompt = lloco.prompt(question, enc.focus_sheets(segments, question))
    gen = lloco.generator
    fns = {
        "focus": lambda: enc.focus_sheets(segments, question),
        "compress": lambda: enc.compress_chunks([tuple(s) for s in segments]),
        "prefill": lambda: gen.prefill_time(prompt),
    }
    for fn in fns.values():  # warm-up
        fn()
    times = interleaved(fns, reps)
    ms = {k: median_ms(v) for k, v in times.items()}
    return {
        "focus_ms": ms["focus"],
        "compress_ms": ms["compress"],
        "prefill_ms": ms["prefill"],
        "speedup_vs_compress": round(ms["compress"] / ms["focus"], 2) if ms["focus"] > 0 else None,
        "share_of_ttft": round(ms["focus"] / (ms["focus"] + ms["prefill"]), 4),
        "top_k": top_k,
        "segment_length": seg,
        "prompt_positions": prompt.context_vectors,
        "reps": reps,
    }


# -- adapters -----------------------------------------------------------------------------------------------


def random_adapter(
    lloco: LLoCO,
    *,
    r: int = 8,
    seed: int = 0,
    target_modules: Sequence[str] = ("q_proj", "k_proj", "v_proj", "o_proj"),
) -> AdapterArtifact:
    """A LoRA artifact with random (non-zero) weights for this decoder: what a finetuned one costs to serve."""
    from peft import LoraConfig

    host = lloco.host
    name = f"lloco_bench_tmp_{seed}"
    torch.manual_seed(seed)
    host.add_adapter(
        name, LoraConfig(r=r, lora_alpha=2 * r, target_modules=list(target_modules), init_lora_weights=False)
    )
    try:
        return AdapterArtifact.from_model(
            host.model,
            name,
            base_fingerprint=host.fingerprint,
            encoder_fingerprint=lloco.encoder.fingerprint,
            info={"benchmark": True, "seed": seed},
        )
    finally:
        host.delete_adapter(name)


def bench_adapters(
    lloco: LLoCO,
    *,
    source: Callable[[str], bytes] | None = None,
    adapter_ids: tuple[str, str] | None = None,
    reps: int = 5,
    switch_reps: int = 50,
    batch: int = 4,
    seq_len: int = 128,
) -> dict[str, Any]:
    """Load (from ``source``, e.g. the store), switch between two loaded adapters, mixed-adapter batches.

    - ``load_ms``: fetch bytes + verify + inject + copy weights of one adapter (median over ``reps``), on an
      :class:`AdapterManager` of its own so the runtime's LRU is untouched.
    - ``switch_ms``: activating adapter B on the model while A is active (what every request for another
      group pays), against ``same_ms``, re-entering the already active adapter.
    - ``mixed_batch_ratio``: throughput of one forward over ``batch`` rows that alternate between A and B
      (:meth:`LoadedModel.using_batch`, what batched decoding runs) / throughput of the same batch under A
      alone. 1.0 = mixing is free.
    """
    host = lloco.host
    if source is None or adapter_ids is None:
        arts = {f"bench-a{i}": random_adapter(lloco, seed=i).to_bytes() for i in range(2)}
        adapter_ids = tuple(arts)  # type: ignore[assignment]
        source = arts.__getitem__
        where = "memory"
    else:
        where = "store"
    assert adapter_ids is not None and source is not None
    a_id, b_id = adapter_ids

    load_t = []
    for _ in range(reps):
        mgr = AdapterManager(host, encoder_fingerprint=lloco.encoder.fingerprint, capacity=2, source=source)
        t0 = time.perf_counter()
        with mgr.acquire(a_id):
            load_t.append(time.perf_counter() - t0)
        host.delete_adapter(AdapterManager.peft_name(a_id))

    mgr = AdapterManager(host, encoder_fingerprint=lloco.encoder.fingerprint, capacity=2, source=source)
    try:
        with mgr.acquire(a_id) as a, mgr.acquire(b_id) as b:
            switch_t, same_t = [], []
            for _ in range(switch_reps):
                with host.using(a):
                    pass
                t0 = time.perf_counter()
                with host.using(b):  # A -> B
                    pass
                switch_t.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                with host.using(b):  # B -> B: no change
                    pass
                same_t.append(time.perf_counter() - t0)

            ids = torch.randint(
                0,
                int(host.model.config.vocab_size),
                (batch, seq_len),
                generator=torch.Generator().manual_seed(0),
            ).to(host.device)
            names = [a if i % 2 == 0 else b for i in range(batch)]
            backbone = getattr(host.model, host.model.base_model_prefix)

            def one() -> None:
                with torch.inference_mode(), host.using(a):
                    backbone(input_ids=ids, use_cache=False)

            def mixed() -> None:
                with torch.inference_mode(), host.using_batch(names):
                    backbone(input_ids=ids, use_cache=False)

            one(), mixed()  # warm-up
            times = interleaved({"one": one, "mixed": mixed}, reps)
    finally:
        for aid in (a_id, b_id):
            name = AdapterManager.peft_name(aid)
            if name in host.adapter_names():
                host.delete_adapter(name)
    one_s, mixed_s = statistics.median(times["one"]), statistics.median(times["mixed"])
    n_layers = sum(1 for m in host.model.modules() if hasattr(m, "lora_A"))
    return {
        "load_ms": median_ms(load_t),
        "switch_ms": median_ms(switch_t),
        "same_ms": median_ms(same_t),
        "mixed_batch_ratio": round(one_s / mixed_s, 4),
        "one_adapter_batch_s": round(one_s, 4),
        "mixed_batch_s": round(mixed_s, 4),
        "batch": batch,
        "seq_len": seq_len,
        "source": where,
        "adapter_bytes": len(source(a_id)),
        "lora_layers": n_layers,
        "reps": reps,
        "switch_reps": switch_reps,
    }


# -- decoding -----------------------------------------------------------------------------------------------


def bench_decode(
    lloco: LLoCO,
    prompt_text: str | None = None,
    *,
    new_tokens: int = 32,
    reps: int = 3,
    batch_sizes: Sequence[int] = (1, 4, 8),
    warmup: bool = True,
) -> dict[str, Any]:
    """Decode speed: our loop vs. transformers' ``model.generate()``, and batched decoding throughput.

    - ``ours_ms_per_token``: :meth:`Generator.generate` (greedy, no adapter), (total - prefill) / decode steps;
    - ``generate_ms_per_token``: ``model.generate(inputs_embeds=...)`` over the same embeddings, greedy, forced
      to ``new_tokens`` tokens: (time of ``new_tokens`` tokens - time of 1 token) / (``new_tokens`` - 1);
      ``overhead`` = ours / generate() - 1 (what our loop costs per token beyond the model's own);
    - ``batch``: :meth:`Generator.generate_batch` over ``b`` prompts of different lengths (the prompt cut at
      different points): generated tokens / wall seconds (prefill included), for each ``b`` in ``batch_sizes``,
      and ``speedup_vs_1`` against ``b = 1``;
    - ``prefill_paths``: the largest batch decoded with each prompt prefilled alone (caches merged) and with
      one left-padded prefill, side by side: seconds each, ``padded_over_alone``, and which one this machine
      uses by default (:attr:`Generator.prefill_alone`).

    Every run decodes exactly ``new_tokens`` tokens (``GenerationConfig.ignore_eos``, as ``min_new_tokens``
    does for generate()), greedy, no adapter. Repetitions are interleaved; medians.
    """
    if new_tokens < 2:
        raise ValueError("bench_decode needs new_tokens >= 2 (a decode step after the first token)")
    host = lloco.host
    gen = lloco.generator
    tok = host.tokenizer
    text = prompt_text or (
        "The river town kept its records in a stone archive near the old mill. Each spring "
        "the council counted the boats, the looms and the wells. Write the story of the town:"
    )
    words = text.split()
    prompt = Prompt.from_text(text)
    cfg = GenerationConfig(max_new_tokens=new_tokens, ignore_eos=True)
    embeds, _, _ = gen.embed(prompt)
    mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=host.device)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    ours_steps: list[float] = []

    def ours() -> None:
        res = gen.generate(prompt, cfg)
        ours_steps.append((res.total_s - res.prefill_s) / max(1, len(res.token_ids) - 1))

    def hf(n: int) -> Callable[[], None]:
        def run() -> None:
            with torch.no_grad(), host.using(None) as model:
                model.generate(
                    inputs_embeds=embeds,
                    attention_mask=mask,
                    max_new_tokens=n,
                    min_new_tokens=n,
                    do_sample=False,
                    pad_token_id=pad,
                )

        return run

    # b prompts of different lengths: the text cut after a different number of words each
    batches = {
        b: [Prompt.from_text(" ".join(words[: max(4, len(words) - 3 * i)])) for i in range(b)]
        for b in batch_sizes
    }
    batch_tokens: dict[int, list[int]] = {b: [] for b in batch_sizes}

    def batched(b: int) -> Callable[[], None]:
        def run() -> None:
            res = gen.generate_batch(batches[b], cfg, [None] * b)
            batch_tokens[b].append(sum(len(r.token_ids) for r in res))

        return run

    # the largest batch again with the other prefill path (one padded forward pass for all prompts, instead
    # of each prompt alone with the caches merged), side by side
    widest = max(batch_sizes)
    prefill_paths = {"alone": True, "padded": False}

    def prefill_path(flag: bool) -> Callable[[], None]:
        def run() -> None:
            saved = gen.prefill_alone
            gen.prefill_alone = flag
            try:
                gen.generate_batch(batches[widest], cfg, [None] * widest)
            finally:
                gen.prefill_alone = saved

        return run

    fns: dict[str, Callable[[], None]] = {"ours": ours, "hf_1": hf(1), "hf_n": hf(new_tokens)}
    fns.update({f"batch_{b}": batched(b) for b in batch_sizes})
    if widest > 1:
        fns.update({f"prefill_{k}": prefill_path(v) for k, v in prefill_paths.items()})
    for fn in fns.values() if warmup else ():
        fn()
    ours_steps.clear()
    for v in batch_tokens.values():
        v.clear()
    times = interleaved(fns, reps)
    ours_ms = 1000 * statistics.median(ours_steps)
    hf_ms = (
        1000
        * max(statistics.median(times["hf_n"]) - statistics.median(times["hf_1"]), 0.0)
        / (new_tokens - 1)
    )
    batch = []
    for b in batch_sizes:
        tps = [n / t for n, t in zip(batch_tokens[b], times[f"batch_{b}"], strict=True)]
        batch.append(
            {
                "batch": b,
                "tokens_per_s": round(statistics.median(tps), 2),
                "tokens": int(statistics.median(batch_tokens[b])),
                "seconds": round(statistics.median(times[f"batch_{b}"]), 4),
            }
        )
    base = next((r["tokens_per_s"] for r in batch if r["batch"] == 1), None)
    for r in batch:
        r["speedup_vs_1"] = round(r["tokens_per_s"] / base, 3) if base else None
    prefill = None
    if widest > 1:
        alone, padded = (statistics.median(times[f"prefill_{k}"]) for k in prefill_paths)
        prefill = {
            "batch": widest,
            "alone_s": round(alone, 4),
            "padded_s": round(padded, 4),
            "padded_over_alone": round(padded / alone, 3) if alone else None,
            "default": "alone"
            if gen.prefills_alone([gen.embed(q)[0].shape[1] for q in batches[widest]])
            else "padded",
        }
    return {
        "ours_ms_per_token": round(ours_ms, 3),
        "prefill_paths": prefill,
        "generate_ms_per_token": round(hf_ms, 3),
        "overhead": round(ours_ms / hf_ms - 1, 4) if hf_ms else None,
        "batch": batch,
        "prompt_tokens": int(embeds.shape[1]),
        "new_tokens": new_tokens,
        "reps": reps,
    }
