"""``lloco serve`` command line: options, and the error when the serve extra is missing (no Ray started)."""

from __future__ import annotations

import sys

from lloco_runtime.cli import build_parser, main


def test_serve_options_parse():
    args = build_parser().parse_args(
        [
            "serve",
            "--replicas",
            "2",
            "--max-batch-size",
            "4",
            "--port",
            "8123",
            "--model",
            "m",
            "--encoder",
            "e",
            "--url",
            "postgresql://x/y",
            "--schema",
            "s",
        ]
    )
    assert (args.replicas, args.max_batch_size, args.port, args.host) == (2, 4, 8123, "127.0.0.1")
    assert (args.model, args.encoder, args.url, args.schema) == ("m", "e", "postgresql://x/y", "s")
    assert (
        args.ingress_threads == 1
        and build_parser().parse_args(["serve", "--ingress-threads", "2"]).ingress_threads == 2
    )


def test_serve_options_check_thread_counts():
    import pytest

    from lloco_runtime.errors import ConfigError
    from lloco_runtime.serve import ServeOptions

    assert ServeOptions().ingress_threads == 1
    with pytest.raises(ConfigError, match="ingress_threads"):
        ServeOptions(ingress_threads=0)
    with pytest.raises(ConfigError, match="torch_threads"):
        ServeOptions(torch_threads=0)


def test_serve_without_ray_names_the_extra(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "lloco_runtime.serve", None)  # import fails as without ray installed
    assert main(["serve"]) == 1
    err = capsys.readouterr().err
    assert "pip install 'lloco[serve]'" in err and "Traceback" not in err


def test_serve_focus_options_reach_the_replicas_runtime(tiny_model_dir):
    import pytest

    from lloco_runtime import EncoderConfig
    from lloco_runtime.errors import ConfigError
    from lloco_runtime.serve import ServeOptions, _build_runtime

    args = build_parser().parse_args(["serve", "--no-focus", "--focus-budget", "chunk"])
    assert (args.no_focus, args.focus_budget) == (True, "chunk")
    default = build_parser().parse_args(["serve"])
    assert (default.no_focus, default.focus_budget) == (False, None)
    with pytest.raises(ConfigError, match="focus_budget"):
        ServeOptions(focus_budget="global")
    enc = tiny_model_dir.parent / "focus-enc"
    from lloco_runtime import ContextEncoder, load_model

    ContextEncoder(load_model(str(tiny_model_dir)), EncoderConfig(segment_length=32, summary_length=4)).save(
        enc
    )
    lloco = _build_runtime(
        ServeOptions(model=str(tiny_model_dir), encoder=str(enc), focus=False, focus_budget="chunk")
    )
    assert (lloco.focus, lloco.focus_budget) == (False, "chunk")
