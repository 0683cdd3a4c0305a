"""``lloco bench``: side-by-side measurements of what LLoCO promises, on the machine at hand.

Every figure is measured in the same run as its baseline (interleaved repetitions, median), so ratios are
comparable even on a noisy machine. Prefill = one forward pass over the prompt up to the first token's
logits, i.e. time to first token without tokenisation.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .runtime import LLoCO

_SENTENCES = (
    "The river town kept its records in a stone archive near the old mill.",
    "Each spring the council counted the boats, the looms and the wells.",
    "Merchants from the coast brought salt, copper and news of distant wars.",
    "In the year of the long frost the harbour froze for forty-one days.",
    "The archivist, a patient woman named Ilse Varga, wrote everything down.",
    "Her ledgers list prices, marriages, floods and the names of ships.",
)


def synthetic_passage(tokenizer, n_tokens: int) -> str:
    """Deterministic prose of exactly ``n_tokens`` tokens (content does not affect timing)."""
    parts, i = [], 0
    while True:
        parts.append(f"Entry {i}: {_SENTENCES[i % len(_SENTENCES)]}")
        i += 1
        if i % 50 == 0 or i > 8 * n_tokens:
            ids = tokenizer(" ".join(parts), add_special_tokens=False)["input_ids"]
            if len(ids) >= n_tokens:
                return tokenizer.decode(ids[:n_tokens])


def machine_info(lloco: LLoCO | None = None) -> dict:
    """What the numbers were measured on."""
    info = {
        "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if lloco is not None:
        info.update({"device": str(lloco.host.device), "dtype": str(lloco.host.dtype), "model": lloco.host.name,
                     "segment_length": lloco.encoder.config.segment_length,
                     "summary_length": lloco.encoder.config.summary_length})
    return info


@dataclass
class PrefillRow:
    context_tokens: int
    full_s: float
    lloco_tokens: int
    lloco_s: float
    full_prompt_tokens: int
    lloco_prompt_positions: int
    compress_s: float

    @property
    def ratio(self) -> float:
        return self.full_s / self.lloco_s if self.lloco_s else float("inf")

    def to_dict(self) -> dict:
        return {"context_tokens": self.context_tokens, "full_s": self.full_s, "lloco_tokens": self.lloco_tokens,
                "lloco_s": self.lloco_s, "ratio": self.ratio, "full_prompt_tokens": self.full_prompt_tokens,
                "lloco_prompt_positions": self.lloco_prompt_positions, "compress_s": self.compress_s}


def bench_prefill(lloco: LLoCO, context_tokens: list[int], *, reps: int = 5, segment_length: int = 512,
                  summary_length: int = 16,
                  question: str = "What did the archivist record in the year of the long frost?",
                  progress: bool = True) -> list[PrefillRow]:
    """Prefill of the question over a passage as text vs. over its cheat sheets, per context length.

    The cheat sheets come from an encoder with ``segment_length``/``summary_length`` (default 16 vectors per
    512 tokens, 32x) on the same decoder: timing depends on the number of vectors, not on trained weights.
    """
    from tqdm.auto import tqdm

    from .encoder import ContextEncoder, EncoderConfig

    cfg = lloco.encoder.config
    encoder = lloco.encoder if (cfg.segment_length, cfg.summary_length) == (segment_length, summary_length) \
        else ContextEncoder(lloco.host, EncoderConfig(segment_length=segment_length, summary_length=summary_length))
    rows = []
    gen = lloco.generator
    window = lloco.host.context_window
    for n in context_tokens:
        passage = synthetic_passage(lloco.host.tokenizer, n)
        t0 = time.perf_counter()
        sheets = encoder.compress(passage)
        compress_s = time.perf_counter() - t0
        full_prompt = lloco.prompt(question, passage)
        lloco_prompt = lloco.prompt(question, list(sheets.tensors))
        full_len = gen.embed(full_prompt)[0].shape[1]
        lloco_len = gen.embed(lloco_prompt)[0].shape[1]
        if full_len > window:
            raise ValueError(f"{n} context tokens exceed the decoder window {window}; use --contexts")
        gen.prefill_time(full_prompt)  # warm-up (allocator, kernels)
        gen.prefill_time(lloco_prompt)
        full_t, lloco_t = [], []
        for _ in tqdm(range(reps), desc=f"prefill @ {n} tokens", disable=not progress, leave=False):
            full_t.append(gen.prefill_time(full_prompt))
            lloco_t.append(gen.prefill_time(lloco_prompt))
        rows.append(PrefillRow(context_tokens=n, full_s=statistics.median(full_t), lloco_tokens=sheets.n_vectors,
                               lloco_s=statistics.median(lloco_t), full_prompt_tokens=full_len,
                               lloco_prompt_positions=lloco_len, compress_s=compress_s))
    return rows


def format_prefill(rows: list[PrefillRow]) -> str:
    """A markdown table of the prefill rows."""
    lines = ["| context tokens | full text prefill (s) | LLoCO vectors | LLoCO prefill (s) | speedup |",
             "|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r.context_tokens:,} | {r.full_s:.3f} | {r.lloco_tokens} | {r.lloco_s:.4f} | "
                     f"{r.ratio:.1f}x |")
    return "\n".join(lines)


def format_store(store_report: dict) -> str:
    """Markdown lines for the storage section."""
    lines = [f"Retrieval (dense, top 4, with cheat sheets; ANN index: {store_report.get('ann_index')})",
             "| chunks | p50 (ms) | p95 (ms) |", "|---:|---:|---:|"]
    for r in store_report.get("retrieval", []):
        lines.append(f"| {r['chunks']:,} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} |")
    ing = store_report.get("ingest")
    if ing:
        lines.append("")
        lines.append(f"Ingest ({ing['documents']} documents of {ing['words_per_doc']} words): "
                     f"{ing['without_compression']['chunks_per_s']:.2f} chunks/s without compression, "
                     f"{ing['with_compression']['chunks_per_s']:.2f} chunks/s with compression")
    return "\n".join(lines)


def run(lloco: LLoCO, *, quick: bool = False, contexts: list[int] | None = None, reps: int | None = None,
        json_path: str | Path | None = None, store: bool = True, store_sizes: tuple[int, ...] | None = None,
        store_url: str | None = None) -> dict:
    """Run the benchmark suite and return (and optionally write) the JSON report.

    Sections: ``prefill`` (always) and, with ``store``, ``retrieval``/``ingest`` on a dedicated
    ``lloco_bench`` schema (synthetic rows; the real schema is never touched).
    """
    contexts = contexts or ([6000] if quick else [1000, 2000, 4000, 6000, 7000])
    reps = reps or (3 if quick else 5)
    rows = bench_prefill(lloco, contexts, reps=reps)
    report = {"prefill": [r.to_dict() for r in rows], "machine": machine_info(lloco),
              "settings": {"quick": quick, "reps": reps, "statistic": "median",
                           "prefill_segment_length": 512, "prefill_summary_length": 16}}
    tables = [format_prefill(rows)]
    if store:
        from .store import bench as store_bench

        sizes = store_sizes or ((10_000,) if quick else (10_000, 100_000))
        st = store_bench.bench_store(store_url)
        try:
            res = store_bench.run(st, sizes=sizes, encoder=lloco.encoder)
            st.drop_schema()
        finally:
            st.close()
        report["retrieval"] = res["retrieval"]
        report["ingest"] = res.get("ingest")
        report["store"] = {"ann_index": res.get("ann_index"), "inserts": res.get("inserts")}
        tables.append(format_store(res | {"ann_index": res.get("ann_index")}))
    if json_path:
        Path(json_path).write_text(json.dumps(report, indent=2))
    report["_table"] = "\n\n".join(tables)
    return report
