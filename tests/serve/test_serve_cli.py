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
