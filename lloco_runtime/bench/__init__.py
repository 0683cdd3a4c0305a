"""``lloco bench``: side-by-side measurements of what LLoCO promises, on the machine at hand.

A package on top of the core that uses its public API only (the runtime, the service, the store's
``CheatSheetStore`` methods): :func:`run` is the entry point of ``lloco bench``; the sections live in
:mod:`.serving`, :mod:`.model` and :mod:`.store`, the figures in :mod:`.plot`.

Every figure is measured in the same run as its baseline (interleaved repetitions, median), so ratios are
comparable even on a noisy machine. Sections (each a key of the JSON report):

- ``prefill`` / ``prefill_beyond_window``: time to first token (one forward pass over the prompt up to the
  first token's logits) with the passage as text vs. as cheat sheets, and cheat sheets alone past the window;
- ``end_to_end``: retrieve + cheat sheets + adapter + 32 tokens vs. full context and RAG-text
  (:mod:`.serving`);
- ``compression``: encoder tokens/s vs. the plain forward pass (:mod:`.model`);
- ``retrieval`` / ``ingest``: store latency and throughput (:mod:`.store`);
- ``adapters``: load from the store, switch, mixed-adapter batches (:mod:`.model`);
- ``decode``: decode ms/token of our loop vs. ``model.generate()``, batched decoding tokens/s at batch 1/4/8
  (:mod:`.model`);
- ``memory``: peak RSS of serving, stored bytes per chunk.
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

from ..runtime import LLoCO

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


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else ``platform.processor()``)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(lloco: LLoCO | None = None) -> dict:
    """What the numbers were measured on."""
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    info = {
        "platform": platform.platform(),
        "processor": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "load_average_at_start": load,
    }
    if lloco is not None:
        info.update(
            {
                "device": str(lloco.host.device),
                "dtype": str(lloco.host.dtype),
                "model": lloco.host.name,
                "context_window": lloco.host.context_window,
                "hidden_size": lloco.host.hidden_size,
                "segment_length": lloco.encoder.config.segment_length,
                "summary_length": lloco.encoder.config.summary_length,
                "positions_per_segment": lloco.encoder.config.positions,
                "encoder_fingerprint": lloco.encoder.fingerprint[:12],
            }
        )
    return info


# -- prefill ------------------------------------------------------------------------------------------------


@dataclass
class PrefillRow:
    """Time to first token at one context length: text vs. cheat sheets (``None`` where it does not fit)."""

    context_tokens: int
    full_s: float | None
    lloco_tokens: int
    lloco_s: float
    full_prompt_tokens: int | None
    lloco_prompt_positions: int
    shipped_lloco_tokens: int | None = None
    shipped_lloco_s: float | None = None

    @property
    def ratio(self) -> float | None:
        return self.full_s / self.lloco_s if self.full_s and self.lloco_s else None

    @property
    def shipped_ratio(self) -> float | None:
        return self.full_s / self.shipped_lloco_s if self.full_s and self.shipped_lloco_s else None

    def to_dict(self) -> dict:
        return {
            "context_tokens": self.context_tokens,
            "full_s": self.full_s,
            "lloco_tokens": self.lloco_tokens,
            "lloco_s": self.lloco_s,
            "ratio": self.ratio,
            "full_prompt_tokens": self.full_prompt_tokens,
            "lloco_prompt_positions": self.lloco_prompt_positions,
            "shipped_lloco_tokens": self.shipped_lloco_tokens,
            "shipped_lloco_s": self.shipped_lloco_s,
            "shipped_ratio": self.shipped_ratio,
        }


def _tiled_sheets(encoder, passage: str, n_vectors: int) -> list[torch.Tensor]:
    """``n_vectors`` cheat-sheet vectors: one real compressed segment, repeated (timing depends on count only)."""
    seg = encoder.compress_chunks([encoder.split(passage)[0]])[0]
    reps = -(-n_vectors // seg.shape[0])
    return [torch.cat([seg] * reps)[:n_vectors]]


def bench_prefill(
    lloco: LLoCO,
    context_tokens: list[int],
    *,
    reps: int = 5,
    segment_length: int = 512,
    summary_length: int = 16,
    beyond: list[int] | None = None,
    shipped_beyond: bool = True,
    question: str = "What did the archivist record in the year of the long frost?",
    progress: bool = True,
) -> tuple[list[PrefillRow], list[PrefillRow]]:
    """Prefill of the question over a passage as text vs. over its cheat sheets, per context length.

    Cheat sheets have ``summary_length`` vectors per ``segment_length`` tokens (default 16 per 512, 32x, the
    paper's ratio) and, when it differs, the runtime encoder's ratio too (``shipped_*`` fields). Prefill
    time depends on the number of vectors, not on their values, so the sheets are one real compressed
    segment repeated to the right count (compression itself is timed in its own section). ``beyond``:
    source lengths past the decoder window, measured with cheat sheets only (no text baseline fits); with
    ``shipped_beyond=False`` only at the paper's ratio there (at 8x, 64k tokens cost as much as 7k of text).
    Returns ``(in_window_rows, beyond_window_rows)``; a length whose text prompt does not fit is an error.
    """
    from tqdm.auto import tqdm

    from ..encoder import ContextEncoder, EncoderConfig

    cfg = lloco.encoder.config
    paper = (
        lloco.encoder
        if (cfg.segment_length, cfg.positions) == (segment_length, summary_length)
        else ContextEncoder(
            lloco.host, EncoderConfig(segment_length=segment_length, summary_length=summary_length)
        )
    )
    shipped = None if paper is lloco.encoder else lloco.encoder
    gen = lloco.generator
    window = lloco.host.context_window
    tok = lloco.host.tokenizer
    sample = synthetic_passage(tok, max(segment_length, cfg.segment_length))

    def sheets_prompt(encoder, n: int, seg: int, summ: int):
        n_vec = summ * -(-n // seg)
        prompt = lloco.prompt(question, _tiled_sheets(encoder, sample, n_vec))
        return n_vec, prompt, gen.embed(prompt)[0].shape[1]

    def fits(positions: int) -> bool:
        return positions + 1 <= window

    # warm-up (kernels, allocator) on a short prompt of each kind
    gen.prefill_time(lloco.prompt(question, sample))
    gen.prefill_time(sheets_prompt(paper, segment_length, segment_length, summary_length)[1])

    rows, beyond_rows = [], []
    for n in list(context_tokens) + list(beyond or []):
        in_window = n in context_tokens
        fns = {}
        if in_window:
            full_prompt = lloco.prompt(question, synthetic_passage(tok, n))
            full_len = gen.embed(full_prompt)[0].shape[1]
            if not fits(full_len):
                raise ValueError(
                    f"{n} context tokens ({full_len} prompt tokens) exceed the decoder window "
                    f"{window}; use smaller --contexts (longer ones go in --beyond)"
                )
            fns["full"] = full_prompt
        n_vec, lloco_prompt, lloco_len = sheets_prompt(paper, n, segment_length, summary_length)
        if not fits(lloco_len):
            raise ValueError(
                f"{n} source tokens give {n_vec} cheat-sheet vectors, more than the decoder window "
                f"{window} holds; use a smaller --beyond length"
            )
        fns["lloco"] = lloco_prompt
        s_vec = None
        if shipped is not None and (in_window or shipped_beyond):
            # a sheet's positions: its pooled or summary vectors plus its literal tokens
            s_vec, s_prompt, s_len = sheets_prompt(shipped, n, cfg.segment_length, cfg.positions)
            if fits(s_len):
                fns["shipped"] = s_prompt
        times: dict[str, list[float]] = {k: [] for k in fns}
        for _ in tqdm(range(reps), desc=f"prefill @ {n:,} tokens", disable=not progress, leave=False):
            for k, p in fns.items():
                times[k].append(gen.prefill_time(p))
        med = {k: statistics.median(v) for k, v in times.items()}
        row = PrefillRow(
            context_tokens=n,
            full_s=med.get("full"),
            lloco_tokens=n_vec,
            lloco_s=med["lloco"],
            full_prompt_tokens=full_len if in_window else None,
            lloco_prompt_positions=lloco_len,
            shipped_lloco_tokens=s_vec,
            shipped_lloco_s=med.get("shipped"),
        )
        (rows if in_window else beyond_rows).append(row)
    return rows, beyond_rows


# -- report -------------------------------------------------------------------------------------------------

TARGETS = {
    "ttft_ratio": ("time to first token, full text / LLoCO, largest context in the window", ">=", 20.0),
    "compression_efficiency": ("encoder tokens/s / plain forward tokens/s", ">=", 0.80),
    "retrieval_p95_ms_100k": ("dense retrieval p95 at 100k chunks (ms)", "<", 50.0),
    "adapter_switch_ms": ("switch between two loaded adapters (ms)", "<", 10.0),
}


def check_targets(report: dict) -> dict:
    """The issue's targets: value reached, target and whether it is met (``None``: not measured)."""
    values = {
        "ttft_ratio": (report["prefill"][-1]["ratio"] if report.get("prefill") else None),
        "compression_efficiency": (report.get("compression") or {}).get("efficiency"),
        "retrieval_p95_ms_100k": next(
            (r["p95_ms"] for r in report.get("retrieval") or [] if r["chunks"] >= 100_000), None
        ),
        "adapter_switch_ms": (report.get("adapters") or {}).get("switch_ms"),
    }
    out = {}
    for key, (what, op, target) in TARGETS.items():
        v = values[key]
        met = None if v is None else (v >= target if op == ">=" else v < target)
        out[key] = {"what": what, "value": v, "target": f"{op} {target:g}", "met": met}
    return out


def _f(v, fmt: str, none: str = "-") -> str:
    return none if v is None else format(v, fmt)


def format_prefill(rows: list[PrefillRow], beyond: list[PrefillRow] | None = None) -> str:
    """A markdown table of the prefill rows (cheat sheets alone past the window)."""
    shipped = any(r.shipped_lloco_tokens for r in rows + list(beyond or []))
    head = "| context tokens | full text TTFT (s) | LLoCO vectors | LLoCO TTFT (s) | speedup |"
    sep = "|---:|---:|---:|---:|---:|"
    if shipped:
        head += " shipped-encoder vectors | TTFT (s) | speedup |"
        sep += "---:|---:|---:|"
    lines = [head, sep]
    for r in rows + list(beyond or []):
        line = (
            f"| {r.context_tokens:,} | {_f(r.full_s, '.3f', 'does not fit')} | {r.lloco_tokens} | "
            f"{r.lloco_s:.4f} | {_f(r.ratio, '.1f')}{'x' if r.ratio else ''} |"
        )
        if shipped:
            line += (
                f" {_f(r.shipped_lloco_tokens, 'd')} | {_f(r.shipped_lloco_s, '.4f', 'does not fit')} | "
                f"{_f(r.shipped_ratio, '.1f')}{'x' if r.shipped_ratio else ''} |"
            )
        lines.append(line)
    return "\n".join(lines)


def format_report(report: dict) -> str:
    """The human-readable summary ``lloco bench`` prints: one block per section."""
    m, st = report["machine"], report["settings"]
    out = [
        (
            f"Machine: {m['processor']}, {m['cpu_count']} CPUs, {m['torch_threads']} torch threads, torch "
            f"{m['torch']}, {m.get('device')} {m.get('dtype')}, model {m.get('model')} (window "
            f"{m.get('context_window')}); load average at start {m.get('load_average_at_start')}"
        ),
        (
            f"Statistic: median of {st['reps']} interleaved repetitions; seconds per section: "
            f"{st.get('section_seconds')}"
        ),
        "",
    ]
    pf = st["prefill_summary_length"], st["prefill_segment_length"]
    out += [
        f"Prefill / time to first token: full text vs. cheat sheets ({pf[0]} vectors per {pf[1]} tokens"
        + (
            f"; shipped encoder {m.get('positions_per_segment', m['summary_length'])} per {m['segment_length']}"
            if m.get("segment_length") != pf[1]
            else ""
        )
        + ")",
        report["_prefill_table"],
        "",
    ]
    e2e = report.get("end_to_end")
    if e2e:
        pos = e2e["prompt_positions"]
        out.append(
            f"End to end (retrieve top {e2e['top_k']} + cheat sheets + adapter + {e2e['new_tokens']} "
            f"tokens), document of {e2e['document_tokens']:,} tokens:"
        )
        out.append(
            f"  LLoCO {e2e['lloco_s']:.3f} s ({pos.get('lloco')} positions) | RAG-text "
            f"{e2e['rag_text_s']:.3f} s ({pos.get('rag')}) | full context {e2e['full_context_s']:.3f} s "
            f"({pos.get('full')}) -> {e2e['speedup_vs_full']:.1f}x vs full, {e2e['speedup_vs_rag']:.2f}x "
            "vs RAG-text"
        )
        out.append("")
    c = report.get("compression")
    if c:
        out.append(
            f"Compression: encoder {c['lloco_tokens_per_s']:.0f} tokens/s vs plain forward "
            f"{c['forward_tokens_per_s']:.0f} tokens/s -> efficiency {100 * c['efficiency']:.0f}% "
            f"({c['segments']} segments of {c['segment_length']} + {c['summary_length']} summary "
            f"positions, batch {c['batch_size']}, encoder LoRA r{c['encoder_lora_r']})"
        )
        if c.get("with_summary_tokens_per_s"):
            out.append(
                f"  gap split: forward with the summary positions {c['with_summary_tokens_per_s']:.0f} "
                f"tokens/s (ceiling {100 * c['positions_ceiling']:.0f}%), and with the encoder LoRA "
                f"{_f(c.get('with_summary_and_lora_tokens_per_s'), '.0f')} tokens/s"
            )
        out.append("")
    fo = report.get("focus")
    if fo:
        out.append(
            f"Focus (literal tokens chosen for the question, top {fo['top_k']} sheets of {fo['segment_length']} "
            f"tokens, shared budget): {fo['focus_ms']:.2f} ms vs compressing them again {fo['compress_ms']:.1f} ms "
            f"({_f(fo['speedup_vs_compress'], '.1f')}x cheaper); {100 * fo['share_of_ttft']:.1f}% of time to "
            f"first token (prefill of their {fo['prompt_positions']} positions {fo['prefill_ms']:.1f} ms)"
        )
        out.append("")
    if report.get("retrieval"):
        out.append(
            f"Retrieval (dense, top {report['retrieval'][0].get('top_k')}, chunk rows + cheat sheets; "
            f"ANN index: {report['store'].get('ann_index')}):"
        )
        out += ["| chunks | index | p50 (ms) | p95 (ms) | recall@k vs exact |", "|---:|---|---:|---:|---:|"]
        for r in report["retrieval"]:
            out.append(
                f"| {r['chunks']:,} | {r.get('ann_index')} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | "
                f"{_f(r.get('recall'), '.3f')} |"
            )
            for e in [r.get("exact")] if r.get("exact") else []:
                out.append(
                    f"| {r['chunks']:,} | exact scan | {e['p50_ms']:.1f} | {e['p95_ms']:.1f} | 1.000 |"
                )
        out.append("")
    ing = report.get("ingest") or {}
    if ing.get("chunks_per_s") is not None:
        wo = ing.get("without_compression") or {}
        out += [
            f"Ingest: {ing['chunks_per_s']:.2f} chunks/s with compression ({ing.get('tokens_per_s')} tokens/s)"
            + (f", {wo['chunks_per_s']:.1f} chunks/s without" if wo else "")
            + (
                f"; bulk insert {ing['bulk_insert_rows_per_s']:.0f} rows/s"
                if ing.get("bulk_insert_rows_per_s")
                else ""
            ),
            "",
        ]
    a = report.get("adapters")
    if a:
        out.append(
            f"Adapters: load from {a['source']} {a['load_ms']:.1f} ms ({a['adapter_bytes'] / 1e6:.2f} MB), "
            f"switch {a['switch_ms']:.2f} ms (no switch {a['same_ms']:.3f} ms), mixed batch "
            f"{a['mixed_batch_ratio']:.2f}x the throughput of one adapter ({a['batch']} x "
            f"{a['seq_len']} tokens)"
        )
        out.append("")
    d = report.get("decode")
    if d:
        out.append(
            f"Decode ({d['new_tokens']} tokens after a {d['prompt_tokens']}-token prompt, greedy): ours "
            f"{d['ours_ms_per_token']:.1f} ms/token vs model.generate() {d['generate_ms_per_token']:.1f} "
            f"ms/token (overhead {_f(d['overhead'], '+.1%')}); batched: "
            + ", ".join(
                f"batch {r['batch']} {r['tokens_per_s']:.1f} tokens/s ({r['speedup_vs_1']:.2f}x)"
                for r in d["batch"]
            )
        )
        pp = d.get("prefill_paths")
        if pp:
            out.append(
                f"Batch of {pp['batch']} prompts: each prefilled alone {pp['alone_s']:.3f} s, one padded prefill "
                f"{pp['padded_s']:.3f} s ({pp['padded_over_alone']:.2f}x; default here: {pp['default']})"
            )
        out.append("")
    mem = report.get("memory") or {}
    out.append(
        f"Memory: peak RSS serving {_f(mem.get('peak_rss_mb'), '.0f')} MiB (whole bench "
        f"{_f(mem.get('bench_peak_rss_mb'), '.0f')} MiB); stored bytes per chunk "
        f"{_f(mem.get('bytes_per_chunk'), ',')} (cheat sheet {_f(mem.get('cheat_sheet_row_bytes'), ',')}, "
        f"chunk text {_f(mem.get('text_bytes'), ',.0f')})"
    )
    out += ["", "Targets:"]
    for t in report["targets"].values():
        mark = {True: "met", False: "MISSED", None: "not measured"}[t["met"]]
        out.append(f"  {t['what']}: {_f(t['value'], '.4g')} (target {t['target']}): {mark}")
    for note in report.get("notes", []):
        out.append(f"Note: {note}")
    return "\n".join(out)


QUICK = {
    "contexts": [1000, 7000],
    "beyond": [16_000, 64_000],
    "reps": 3,
    "store_sizes": (10_000,),
    "e2e_tokens": 2000,
    "compress_segments": 8,
    "shipped_beyond": False,
    "decode_tokens": 16,
}
FULL = {
    "contexts": [1000, 2000, 4000, 7000],
    "beyond": [16_000, 32_000, 64_000],
    "reps": 5,
    "store_sizes": (10_000, 100_000),
    "e2e_tokens": 6000,
    "compress_segments": 32,
    "shipped_beyond": True,
    "decode_tokens": 32,
}


def run(
    lloco: LLoCO,
    *,
    quick: bool = False,
    contexts: list[int] | None = None,
    reps: int | None = None,
    json_path: str | Path | None = None,
    store: bool = True,
    store_sizes: tuple[int, ...] | None = None,
    store_url: str | None = None,
    beyond: list[int] | None = None,
    plot_path: str | Path | None = None,
    eval_json: list[str | Path] | None = None,
    e2e_tokens: int | None = None,
    compress_segments: int | None = None,
    queries: int | None = None,
    progress: bool = True,
) -> dict:
    """Run every section and return (and optionally write) the JSON report.

    The serving section runs first so that ``memory.peak_rss_mb`` is the peak of a process that has loaded
    the model, the store client and the retrieval embedder and served one request, before any baseline.
    With ``store``, the store sections use a dedicated ``lloco_bench`` schema (dropped at the end; the real
    schema is never touched).
    """
    from . import model as bench_model
    from . import serving as bench_serving

    plan = QUICK if quick else FULL
    contexts = contexts or plan["contexts"]
    beyond = plan["beyond"] if beyond is None else beyond
    reps = reps or plan["reps"]
    window = lloco.host.context_window
    notes: list[str] = []
    report: dict = {
        "machine": machine_info(lloco),
        "settings": {
            "quick": quick,
            "reps": reps,
            "statistic": "median",
            "prefill_segment_length": 512,
            "prefill_summary_length": 16,
            "prefill_sheets": "one real compressed segment repeated to the count",
            "e2e_new_tokens": 32,
        },
    }
    question = "What did the archivist record in the year of the long frost?"
    tok = lloco.host.tokenizer
    e2e_tokens = min(e2e_tokens or plan["e2e_tokens"], window - 200)
    st = None
    clock = {"start": time.perf_counter()}
    seconds: dict[str, float] = {}

    def lap(name: str) -> None:
        now = time.perf_counter()
        seconds[name] = round(now - clock["start"], 1)
        clock["start"] = now

    if store:
        from . import store as store_bench

        st = store_bench.bench_store(store_url)
    try:
        # 1. serving: end to end, ingest with compression, memory
        if st is not None:
            serving = bench_serving.bench_end_to_end(
                lloco, st, synthetic_passage(tok, e2e_tokens), question=question, reps=reps
            )
            report["end_to_end"] = serving["end_to_end"]
            report["ingest"] = serving["ingest"]
            report["memory"] = {"peak_rss_mb": serving["serving_peak_rss_mb"], **serving["storage"]}
        else:
            sheets = _tiled_sheets(
                lloco.encoder, synthetic_passage(tok, lloco.encoder.config.segment_length), 64
            )
            lloco.answer(question, sheets, max_new_tokens=32)
            report["end_to_end"] = None
            report["ingest"] = {"chunks_per_s": None}
            report["memory"] = {"peak_rss_mb": bench_serving.peak_rss_mb(), "bytes_per_chunk": None}
            notes.append(
                "--no-store: end to end, retrieval, ingest and bytes per chunk skipped; adapters "
                "loaded from memory"
            )
        lap("end_to_end")
        # 2. adapters
        if st is not None:
            arts = [bench_model.random_adapter(lloco, seed=s) for s in (11, 12)]
            ids = tuple(
                str(
                    st.register_adapter(
                        "adapters",
                        a.to_bytes(),
                        base_fingerprint=a.base_fingerprint,
                        encoder_fingerprint=lloco.encoder.fingerprint,
                        collection="bench",
                    ).id
                )
                for a in arts
            )
            report["adapters"] = bench_model.bench_adapters(
                lloco, source=lambda aid: st.adapter_weights(int(aid)), adapter_ids=ids, reps=reps
            )
        else:
            report["adapters"] = bench_model.bench_adapters(lloco, reps=reps)
        lap("adapters")
        # 2b. decoding: our loop vs generate(), batched throughput
        report["decode"] = bench_model.bench_decode(lloco, new_tokens=plan["decode_tokens"], reps=reps)
        lap("decode")
        # 3. prefill
        rows, beyond_rows = bench_prefill(
            lloco,
            contexts,
            reps=reps,
            beyond=[b for b in beyond if b],
            shipped_beyond=plan["shipped_beyond"],
            question=question,
            progress=progress,
        )
        report["prefill"] = [r.to_dict() for r in rows]
        report["prefill_beyond_window"] = [r.to_dict() for r in beyond_rows]
        report["_prefill_table"] = format_prefill(rows, beyond_rows)
        lap("prefill")
        # 4. compression throughput
        segs = compress_segments or plan["compress_segments"]
        ids_ = tok(
            synthetic_passage(tok, segs * lloco.encoder.config.segment_length), add_special_tokens=False
        )["input_ids"]
        # one batch per run in --quick: more rounds keep its median steady on a shared machine
        report["compression"] = bench_model.bench_compression(
            lloco, ids_, segments=segs, reps=max(reps, 5), split=not quick
        )
        lap("compression")
        # 4b. question-aware literal tokens at answer time
        report["focus"] = bench_model.bench_focus(
            lloco, ids_, question, top_k=min(4, segs), reps=max(reps, 5)
        )
        if report["focus"] is None:
            notes.append("focus: this encoder cannot choose its literal tokens per question; not measured")
        lap("focus")
        # 5. retrieval and bulk insert
        if st is not None:
            from . import store as store_bench

            sizes = store_sizes or plan["store_sizes"]
            res = store_bench.run(
                st,
                sizes=sizes,
                encoder=lloco.encoder if not quick else None,
                queries=queries or (50 if quick else 100),
                exact_baseline=True,
            )
            report["retrieval"] = res["retrieval"]
            report["store"] = {"ann_index": res.get("ann_index"), "inserts": res.get("inserts")}
            if res.get("ingest"):
                report["ingest"]["without_compression"] = res["ingest"]["without_compression"]
            ins = [i for i in res.get("inserts", []) if i.get("chunks_per_s")]
            if ins:
                report["ingest"]["bulk_insert_rows_per_s"] = max(i["chunks_per_s"] for i in ins)
        else:
            report["retrieval"], report["store"] = [], {}
        lap("retrieval")
    finally:
        if st is not None:
            try:
                st.drop_schema()
            finally:
                st.close()
    report["memory"]["bench_peak_rss_mb"] = bench_serving.peak_rss_mb()
    report["settings"]["section_seconds"] = seconds
    report["targets"] = check_targets(report)
    if eval_json:
        from .plot import load_eval_points

        report["eval_points"] = load_eval_points(eval_json, default_ratio=lloco.encoder.config.ratio)
    report["notes"] = notes
    if plot_path:
        report["plots"] = write_plots(report, plot_path)
    if json_path:
        Path(json_path).write_text(
            json.dumps({k: v for k, v in report.items() if not k.startswith("_")}, indent=2)
        )
    report["_table"] = format_report(report)
    return report


def write_plots(report: dict, plot_path: str | Path) -> list[str]:
    """``PATH`` (latency vs context) and, with eval points, ``PATH-stem_f1.png`` next to it."""
    from .plot import plot_eval, plot_latency

    path = Path(plot_path)
    written = [str(plot_latency(report, path))]
    points = report.get("eval_points")
    if points:
        written.append(str(plot_eval(points, path.with_name(f"{path.stem}_f1{path.suffix or '.png'}"))))
    else:
        report["notes"].append(
            "compression ratio vs F1 plot skipped: no evaluation results (pass "
            "--eval-json FILE... written by `lloco eval --json`)"
        )
    return written


__all__ = [
    "FULL",
    "QUICK",
    "TARGETS",
    "PrefillRow",
    "bench_prefill",
    "check_targets",
    "cpu_model",
    "format_prefill",
    "format_report",
    "machine_info",
    "run",
    "synthetic_passage",
    "write_plots",
]
