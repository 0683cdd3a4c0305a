"""The ``lloco`` CLI: help, errors as exit codes, and the bench JSON on a tiny model."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from lloco_runtime.cli import build_parser, main


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("info", "bench", "ask"):
        assert cmd in out


def test_every_subcommand_has_help():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, sp in sub.choices.items():
        assert sp.format_help().strip(), name


def test_missing_model_path_is_a_clean_error(capsys, tmp_path):
    code = main(["info", "--model", str(tmp_path / "nope")])
    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith("error:") and "does not exist" in err


def test_bad_contexts_is_input_error(capsys, tiny_model_dir):
    assert main(["bench", "--model", str(tiny_model_dir), "--contexts", "0"]) == 2
    assert "positive" in capsys.readouterr().err


def test_bench_json_on_tiny_model(tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "bench.json"
    code = main(
        [
            "bench",
            "--model",
            str(tiny_model_dir),
            "--contexts",
            "600,1100",
            "--reps",
            "2",
            "--json",
            str(out),
            "--no-store",
        ]
    )
    assert code == 0
    report = json.loads(out.read_text())
    assert [r["context_tokens"] for r in report["prefill"]] == [600, 1100]
    for row in report["prefill"]:
        assert set(row) >= {"context_tokens", "full_s", "lloco_tokens", "lloco_s", "ratio"}
        assert row["full_s"] > 0 and row["lloco_s"] > 0
        assert row["ratio"] == pytest.approx(row["full_s"] / row["lloco_s"])
        # 16 vectors per 512 tokens, never truncated: 600 tokens -> 2 segments
        assert row["lloco_tokens"] == 16 * -(-row["context_tokens"] // 512)
        assert row["lloco_prompt_positions"] < row["full_prompt_tokens"]
    assert {"torch", "cpu_count", "torch_threads", "device"} <= set(report["machine"])
    assert "speedup" in capsys.readouterr().out


def _corpus(tmp_path):
    d = tmp_path / "corpus"
    d.mkdir()
    words = [
        "the",
        "keeper",
        "lit",
        "the",
        "lamp",
        "every",
        "night",
        "and",
        "wrote",
        "the",
        "weather",
        "in",
        "a",
        "ledger",
    ]
    for i in range(3):
        (d / f"d{i}.txt").write_text(" ".join(words[(i + j) % len(words)] for j in range(300)))
    return d


def test_train_then_eval_encoder_cli(tmp_path, tiny_model_dir, capsys):
    corpus, out = _corpus(tmp_path), tmp_path / "run"
    code = main(
        [
            "train-encoder",
            "--model",
            str(tiny_model_dir),
            "--corpus",
            str(corpus),
            "--out",
            str(out),
            "--segment-length",
            "32",
            "--summary-length",
            "4",
            "--lora-r",
            "2",
            "--steps",
            "2",
            "--batch-size",
            "1",
            "--continuation-length",
            "16",
            "--eval-every",
            "2",
            "--eval-pairs",
            "2",
        ]
    )
    assert code == 0
    assert "held-out loss" in capsys.readouterr().out
    assert (out / "encoder" / "encoder_config.json").exists() and (out / "loss.png").exists()
    code = main(
        [
            "eval-encoder",
            str(corpus),
            "--model",
            str(tiny_model_dir),
            "--encoder",
            str(out / "encoder"),
            "--pairs",
            "2",
            "--continuation-length",
            "16",
        ]
    )
    assert code == 0
    res = json.loads(capsys.readouterr().out)
    assert {"no_context", "cheat_sheet", "wrong_cheat_sheet", "text_context"} <= set(res)
    assert res["segment_length"] == 32


def test_eval_encoder_checks_documents_before_loading_a_model(tmp_path, capsys):
    assert main(["eval-encoder", str(tmp_path / "missing"), "--model", str(tmp_path / "no-model")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_building_the_parser_imports_no_model_or_store_code():
    """`lloco --help` stays fast: the command modules import torch, the store and the rest when they run."""
    code = (
        "import sys; from lloco_runtime.cli import build_parser; build_parser(); "
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('lloco_runtime.store')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_cli_defaults_are_the_stores():
    """The CLI spells out the store's defaults (building the parser imports no store code); they agree."""
    from lloco_runtime import store
    from lloco_runtime.cli import _common

    assert _common.DEFAULT_COLLECTION == store.DEFAULT_COLLECTION
    assert _common.RETRIEVAL_MODE_CHOICES == tuple(m.value for m in store.RetrievalMode)
    assert _common.DEFAULT_RETRIEVAL_MODE == store.DEFAULT_MODE
    assert _common.DEFAULT_TOP_K == store.DEFAULT_TOP_K
