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


def test_serve_without_ray_names_the_extra(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "lloco_runtime.serve", None)  # import fails as without ray installed
    assert main(["serve"]) == 1
    err = capsys.readouterr().err
    assert "pip install 'lloco[serve]'" in err and "Traceback" not in err
