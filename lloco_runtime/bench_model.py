"""Model-side sections of ``lloco bench``: compression throughput and adapters (load, switch, mixed batch).

Each figure is timed in the same run as its baseline, repetitions interleaved, medians reported, so a
ratio stays meaningful on a busy machine even when absolute times move.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from .adapters import AdapterArtifact, AdapterManager
from .runtime import LLoCO


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


def bench_compression(lloco: LLoCO, token_ids: Sequence[int], *, segments: int = 16, batch_size: int = 8,
                      reps: int = 3, split: bool = True, warmup: bool = True) -> dict[str, Any]:
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
    chunks = [tuple(token_ids[i * seg:(i + 1) * seg]) for i in range(segments)]
    host = lloco.host
    backbone = getattr(host.model, host.model.base_model_prefix)
    batches = [torch.tensor(chunks[b:b + batch_size], device=host.device) for b in range(0, segments, batch_size)]

    def encode() -> None:
        enc.compress_chunks(chunks, batch_size=batch_size)

    def forward() -> None:
        with torch.inference_mode(), host.using(None):
            for ids in batches:
                backbone(input_ids=ids, use_cache=False)

    from .encoder import ENCODER_ADAPTER

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
    return {"lloco_tokens_per_s": round(enc_tps, 1), "forward_tokens_per_s": round(fwd_tps, 1),
            "efficiency": round(enc_tps / fwd_tps, 4),
            "with_summary_tokens_per_s": round(tps["summary"], 1) if "summary" in tps else None,
            "with_summary_and_lora_tokens_per_s": round(tps["summary_lora"], 1) if "summary_lora" in tps else None,
            "positions_ceiling": round(seg / (seg + enc.config.summary_length), 4),
            "tokens": n_tokens, "segments": segments,
            "batch_size": batch_size, "segment_length": seg, "summary_length": enc.config.summary_length,
            "positions_per_segment": seg + enc.config.summary_length, "encoder_lora_r": enc.config.lora_r,
            "compression_ratio": enc.config.ratio, "reps": reps}


# -- adapters -----------------------------------------------------------------------------------------------


def random_adapter(lloco: LLoCO, *, r: int = 8, seed: int = 0,
                   target_modules: Sequence[str] = ("q_proj", "k_proj", "v_proj", "o_proj")) -> AdapterArtifact:
    """A LoRA artifact with random (non-zero) weights for this decoder: what a finetuned one costs to serve."""
    from peft import LoraConfig

    host = lloco.host
    name = f"lloco_bench_tmp_{seed}"
    torch.manual_seed(seed)
    host.add_adapter(name, LoraConfig(r=r, lora_alpha=2 * r, target_modules=list(target_modules),
                                      init_lora_weights=False))
    try:
        return AdapterArtifact.from_model(host.model, name, base_fingerprint=host.fingerprint,
                                          encoder_fingerprint=lloco.encoder.fingerprint,
                                          info={"benchmark": True, "seed": seed})
    finally:
        host.delete_adapter(name)


@contextlib.contextmanager
def mixed_adapters(model: torch.nn.Module, adapter_names: list[str]) -> Iterator[None]:
    """Route batch row ``i`` through LoRA ``adapter_names[i]`` (peft's mixed-batch inference) in the block."""
    from peft.tuners.lora.layer import LoraLayer
    from peft.tuners.lora.model import _adapter_names_pre_forward_hook

    handles = []
    try:
        for module in model.modules():
            if isinstance(module, LoraLayer):
                hook = _pre_hook(_adapter_names_pre_forward_hook, adapter_names)
                handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
        yield
    finally:
        for h in handles:
            h.remove()


def _pre_hook(fn, adapter_names):
    return lambda module, args, kwargs: fn(module, args, kwargs, adapter_names=adapter_names)


def bench_adapters(lloco: LLoCO, *, source: Callable[[str], bytes] | None = None,
                   adapter_ids: tuple[str, str] | None = None, reps: int = 5, switch_reps: int = 50,
                   batch: int = 4, seq_len: int = 128) -> dict[str, Any]:
    """Load (from ``source``, e.g. the store), switch between two loaded adapters, mixed-adapter batches.

    - ``load_ms``: fetch bytes + verify + inject + copy weights of one adapter (median over ``reps``), on an
      :class:`AdapterManager` of its own so the runtime's LRU is untouched.
    - ``switch_ms``: activating adapter B on the model while A is active (what every request for another
      group pays), against ``same_ms``, re-entering the already active adapter.
    - ``mixed_batch_ratio``: throughput of one forward over ``batch`` rows that alternate between A and B
      (peft's per-row ``adapter_names``) / throughput of the same batch under A alone. 1.0 = mixing is free.
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

            ids = torch.randint(0, int(host.model.config.vocab_size), (batch, seq_len),
                                generator=torch.Generator().manual_seed(0)).to(host.device)
            names = [a if i % 2 == 0 else b for i in range(batch)]
            backbone = getattr(host.model, host.model.base_model_prefix)

            def one() -> None:
                with torch.inference_mode(), host.using(a):
                    backbone(input_ids=ids, use_cache=False)

            def mixed() -> None:
                with torch.inference_mode(), host.using(a), mixed_adapters(host.model, names):
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
    return {"load_ms": median_ms(load_t), "switch_ms": median_ms(switch_t), "same_ms": median_ms(same_t),
            "mixed_batch_ratio": round(one_s / mixed_s, 4), "one_adapter_batch_s": round(one_s, 4),
            "mixed_batch_s": round(mixed_s, 4), "batch": batch, "seq_len": seq_len, "source": where,
            "adapter_bytes": len(source(a_id)), "lora_layers": n_layers, "reps": reps,
            "switch_reps": switch_reps}
