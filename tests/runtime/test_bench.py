"""``lloco bench`` on a tiny model: every section runs and the JSON report has every field.

Benchmarks are not tests: nothing here asserts a wall-clock time, only that each figure is measured, has
the documented shape and is consistent with the others (ratios, counts, recall bounds).
"""

from __future__ import annotations

import json

import pytest
import torch

from lloco_runtime import bench
from lloco_runtime.bench import model as bench_model
from lloco_runtime.bench import plot as bench_plot
from lloco_runtime.cli import main

REQUIRED = {
    "prefill": {"context_tokens", "full_s", "lloco_tokens", "lloco_s", "ratio"},
    "compression": {"lloco_tokens_per_s", "forward_tokens_per_s", "efficiency"},
    "retrieval": {"chunks", "p50_ms", "p95_ms"},
    "ingest": {"chunks_per_s"},
    "adapters": {"load_ms", "switch_ms", "mixed_batch_ratio"},
    "memory": {"peak_rss_mb", "bytes_per_chunk"},
    "machine": {"processor", "cpu_count", "torch_threads", "torch"},
    "end_to_end": {"lloco_s", "rag_text_s", "full_context_s"},
}


def _eval_file(tmp_path):
    """A `lloco eval --compare --json` result, as the harness writes it."""
    runs = [
        {
            "dataset": "toy",
            "mode": "full",
            "n": 2,
            "metric": "f1",
            "f1": 0.5,
            "em": 0.5,
            "accuracy": None,
            "rouge": None,
            "context_tokens_mean": 800.0,
            "per_question": [{"context_tokens": 800}],
        },
        {
            "dataset": "toy",
            "mode": "lloco",
            "n": 2,
            "metric": "f1",
            "f1": 0.25,
            "em": 0.0,
            "accuracy": None,
            "rouge": None,
            "context_tokens_mean": 32.0,
            "per_question": [
                {"context_tokens": 32, "raw_context_tokens": 256},
                {"context_tokens": 32, "raw_context_tokens": 256},
            ],
        },
    ]
    path = tmp_path / "eval.json"
    path.write_text(json.dumps({"dataset": "toy", "runs": runs, "skipped": {}}))
    return path


def test_bench_reports_every_section(tiny_lloco, pg_url, tmp_path):
    out, png = tmp_path / "bench.json", tmp_path / "latency.png"
    report = bench.run(
        tiny_lloco,
        contexts=[300, 900],
        beyond=[6000],
        reps=2,
        store_url=pg_url,
        store_sizes=(60, 150),
        queries=3,
        e2e_tokens=300,
        compress_segments=4,
        json_path=out,
        plot_path=png,
        eval_json=[_eval_file(tmp_path)],
        progress=False,
    )
    data = json.loads(out.read_text())
    for section, fields in REQUIRED.items():
        rows = data[section] if isinstance(data[section], list) else [data[section]]
        assert rows, section
        for row in rows:
            assert fields <= set(row), (section, fields - set(row))

    seg, summ = data["settings"]["prefill_segment_length"], data["settings"]["prefill_summary_length"]
    assert [r["context_tokens"] for r in data["prefill"]] == [300, 900]
    for r in data["prefill"]:
        assert r["lloco_tokens"] == summ * -(-r["context_tokens"] // seg)
        assert r["ratio"] == pytest.approx(r["full_s"] / r["lloco_s"])
        # the tiny runtime's own encoder (32 -> 4) differs from the 512 -> 16 sheets: measured as well
        assert r["shipped_lloco_tokens"] == 4 * -(-r["context_tokens"] // 32) and r["shipped_lloco_s"] > 0
    (far,) = data["prefill_beyond_window"]
    assert far["context_tokens"] == 6000 and far["full_s"] is None and far["ratio"] is None
    assert far["lloco_tokens"] == 16 * 12 and far["lloco_s"] > 0

    e2e = data["end_to_end"]
    assert e2e["prompt_positions"]["lloco"] < e2e["prompt_positions"]["rag"] < e2e["prompt_positions"]["full"]
    # both times are rounded to 0.1 ms and the speed-up to 2 decimals: a few ms per answer on the tiny model
    # leaves about 1% of rounding in the ratio
    assert e2e["speedup_vs_full"] == pytest.approx(e2e["full_context_s"] / e2e["lloco_s"], rel=0.03, abs=0.01)

    c = data["compression"]
    assert c["efficiency"] == pytest.approx(c["lloco_tokens_per_s"] / c["forward_tokens_per_s"], rel=0.01)
    assert c["tokens"] == 4 * 32

    assert [r["chunks"] for r in data["retrieval"]] == [60, 150]
    for r in data["retrieval"]:
        assert 0 < r["p50_ms"] <= r["p95_ms"]
        if r["ann_index"] == "hnsw":
            assert 0.0 <= r["recall"] <= 1.0 and r["exact"]["p50_ms"] > 0
    assert data["ingest"]["chunks_per_s"] > 0 and data["ingest"]["chunks"] >= 300 // 32

    a = data["adapters"]
    assert a["source"] == "store" and a["load_ms"] > 0 and a["switch_ms"] > 0 and a["mixed_batch_ratio"] > 0
    assert a["adapter_bytes"] > 0 and a["lora_layers"] > 0

    m = data["memory"]
    assert 0 < m["peak_rss_mb"] <= m["bench_peak_rss_mb"]
    # a cheat sheet of 4 vectors x 64 hidden in fp16 is 512 bytes of payload; the row holds more
    assert m["cheat_sheet_payload_bytes"] >= 4 * 64 * 2 and m["bytes_per_chunk"] > 512

    assert data["focus"] is None  # the tiny encoder pools no literal tokens: said so, not faked
    assert any(n.startswith("focus:") for n in data["notes"])
    assert set(data["targets"]) == set(bench.TARGETS)
    assert data["targets"]["adapter_switch_ms"]["value"] == a["switch_ms"]
    assert {p["mode"]: p["ratio"] for p in data["eval_points"]} == {"full": 1.0, "lloco": 8.0}
    plots = data["plots"]
    assert plots[0] == str(png) and len(plots) == 2
    for p in plots:
        with open(p, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    for heading in (
        "Prefill",
        "End to end",
        "Compression",
        "Retrieval",
        "Ingest",
        "Adapters",
        "Memory",
        "Targets",
    ):
        assert heading in report["_table"], heading

    from sqlalchemy import create_engine, inspect

    from lloco_runtime.store.server import sqlalchemy_url

    engine = create_engine(sqlalchemy_url(pg_url))
    try:
        assert "lloco_bench" not in inspect(engine).get_schema_names()  # the bench cleans up after itself
    finally:
        engine.dispose()


def test_focus_section(make_tiny_host):
    """Focusing the top k sheets, timed beside compressing them again and beside the prompt's prefill."""
    from lloco_runtime import ContextEncoder, EncoderConfig, LLoCO

    host = make_tiny_host()
    cfg = EncoderConfig(
        segment_length=32, summary_length=4, literal_tokens=4, pooling="mean", summary_layer=0
    )
    lloco = LLoCO(host, ContextEncoder(host, cfg))
    question = "What did the archivist record in the year of the long frost?"
    ids = host.tokenizer(bench.synthetic_passage(host.tokenizer, 4 * 32), add_special_tokens=False)[
        "input_ids"
    ]
    f = bench_model.bench_focus(lloco, ids, question, top_k=3, reps=2)
    assert f["top_k"] == 3 and f["segment_length"] == 32 and f["reps"] == 2
    assert f["focus_ms"] > 0 and f["compress_ms"] > 0 and f["prefill_ms"] > 0
    assert f["speedup_vs_compress"] == pytest.approx(f["compress_ms"] / f["focus_ms"], rel=0.01)
    assert f["share_of_ttft"] == pytest.approx(f["focus_ms"] / (f["focus_ms"] + f["prefill_ms"]), abs=1e-4)
    # the focused sheets have the stored sheets' positions: 3 x (4 pooled + 4 literal)
    assert f["prompt_positions"] == 3 * (4 + 4)
    with pytest.raises(ValueError, match="segments"):
        bench_model.bench_focus(lloco, ids[:40], question, top_k=3)
    report = {
        "machine": bench.machine_info(lloco),
        "_prefill_table": "",
        "settings": {"reps": 1, "prefill_summary_length": 16, "prefill_segment_length": 512},
        "targets": {},
        "focus": f,
    }
    assert any(x.startswith("Focus (literal tokens") for x in bench.format_report(report).splitlines())
    plain = LLoCO(host, ContextEncoder(host, EncoderConfig(segment_length=32, summary_length=4)))
    assert bench_model.bench_focus(plain, ids, question) is None
    # the prefill section counts a literal-token sheet's positions: 4 pooled + 4 literal per 32 tokens
    (row,), _ = bench.bench_prefill(lloco, [64], reps=1, beyond=[], progress=False)
    assert row.shipped_lloco_tokens == 2 * (4 + 4)


def test_mixed_adapter_batch_routes_each_row(tiny_lloco):
    """Row i of a mixed batch gets exactly what adapter_names[i] alone would give it."""
    lloco = tiny_lloco
    host = lloco.host
    arts = {f"m{i}": bench_model.random_adapter(lloco, seed=i).to_bytes() for i in range(2)}
    for aid, data in arts.items():
        lloco.adapters.register(aid, data)
    ids = torch.randint(0, 100, (2, 12), generator=torch.Generator().manual_seed(0))
    backbone = getattr(host.model, host.model.base_model_prefix)
    with lloco.adapters.acquire("m0") as a, lloco.adapters.acquire("m1") as b, torch.inference_mode():
        with host.using(a):
            only_a = backbone(input_ids=ids).last_hidden_state
        with host.using(b):
            only_b = backbone(input_ids=ids).last_hidden_state
        with host.using_batch([a, b]):
            mixed = backbone(input_ids=ids).last_hidden_state
        with host.using(a):  # hooks removed on exit
            again = backbone(input_ids=ids).last_hidden_state
    assert not torch.allclose(only_a[1], only_b[1])
    torch.testing.assert_close(mixed[0], only_a[0])
    torch.testing.assert_close(mixed[1], only_b[1])
    torch.testing.assert_close(again, only_a)


def test_decode_section(tiny_lloco):
    """Our decode loop vs generate(), and batched throughput: exactly new_tokens per row (EOS ignored)."""
    d = bench_model.bench_decode(tiny_lloco, new_tokens=6, reps=1, batch_sizes=(1, 3), warmup=False)
    assert d["ours_ms_per_token"] > 0 and d["generate_ms_per_token"] >= 0 and d["new_tokens"] == 6
    assert d["overhead"] is None or d["overhead"] == pytest.approx(
        d["ours_ms_per_token"] / d["generate_ms_per_token"] - 1, abs=1e-3
    )
    assert [(r["batch"], r["tokens"]) for r in d["batch"]] == [(1, 6), (3, 18)]
    assert all(r["tokens_per_s"] > 0 for r in d["batch"]) and d["batch"][0]["speedup_vs_1"] == 1.0
    pp = d["prefill_paths"]
    assert pp["batch"] == 3 and pp["alone_s"] > 0 and pp["padded_s"] > 0 and pp["default"] == "padded"
    assert pp["padded_over_alone"] == pytest.approx(pp["padded_s"] / pp["alone_s"], rel=1e-2)
    assert tiny_lloco.generator.prefill_alone is None  # the bench put the setting back
    assert (
        tiny_lloco.host.model.generation_config.eos_token_id is not None
    )  # only the bench's generator ignores it
    with pytest.raises(ValueError, match="new_tokens"):
        bench_model.bench_decode(tiny_lloco, new_tokens=1)
    report = {
        "machine": bench.machine_info(tiny_lloco),
        "_prefill_table": "",
        "settings": {"reps": 1, "prefill_summary_length": 16, "prefill_segment_length": 512},
        "targets": {},
        "decode": d,
    }
    line = next(x for x in bench.format_report(report).splitlines() if x.startswith("Decode"))
    assert "model.generate()" in line and "batch 3" in line
    assert any(
        x.startswith("Batch of 3 prompts: each prefilled alone")
        for x in bench.format_report(report).splitlines()
    )


def test_compression_ratio_of_eval_runs():
    assert bench_plot.compression_ratio({"mode": "rag"}) == 1.0
    assert bench_plot.compression_ratio({"mode": "none"}) is None
    run = {
        "mode": "lloco",
        "per_question": [
            {"context_tokens": 16, "raw_context_tokens": 128},
            {"context_tokens": 48, "raw_context_tokens": 384},
        ],
    }
    assert bench_plot.compression_ratio(run) == 8.0
    assert (
        bench_plot.compression_ratio(
            {"mode": "lloco-doc", "per_question": [{"context_tokens": 9}]}, default_ratio=8.0
        )
        == 8.0
    )


def test_targets_are_judged_from_the_report():
    report = {
        "prefill": [{"ratio": 5.0}, {"ratio": 25.0}],
        "compression": {"efficiency": 0.7},
        "retrieval": [{"chunks": 10_000, "p95_ms": 80.0}, {"chunks": 100_000, "p95_ms": 49.0}],
        "adapters": {"switch_ms": 12.0},
    }
    t = bench.check_targets(report)
    assert t["ttft_ratio"]["met"] is True and t["ttft_ratio"]["value"] == 25.0
    assert t["compression_efficiency"]["met"] is False
    assert t["retrieval_p95_ms_100k"] == {**t["retrieval_p95_ms_100k"], "value": 49.0, "met": True}
    assert t["adapter_switch_ms"]["met"] is False
    assert bench.check_targets({"prefill": []})["retrieval_p95_ms_100k"]["met"] is None


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--beyond", "12k"], "--beyond"),
        (["--store-sizes", "0"], "--store-sizes"),
        (["--plot", "out.svg"], "PNG"),
        (["--eval-json", "missing.json"], "is not a file"),
    ],
)
def test_bench_cli_input_errors(argv, message, capsys, tiny_model_dir):
    assert main(["bench", "--model", str(tiny_model_dir), *argv]) == 2
    assert message in capsys.readouterr().err
