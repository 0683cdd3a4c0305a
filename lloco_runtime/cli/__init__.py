"""The ``lloco`` command line. ``lloco --help`` lists the commands; each has its own ``--help``.

One module per command family (:mod:`.info`, :mod:`.bench`, :mod:`.ask`, :mod:`.serve`, :mod:`.training`,
:mod:`.evaluation`, :mod:`.db`, :mod:`.ingest`, :mod:`.adapters`), each with a ``register`` that adds its
commands; the options they share, loading the runtime and the store, and the error handling are in
:mod:`._common`. Building the parser imports no model or database code: each command imports what it needs
when it runs.
"""

from __future__ import annotations

import os

# Before torch loads: on a busy machine (2 cores shared with other jobs) OpenMP threads that spin while
# waiting make every forward pass several times slower; passive waiting costs ~10% on an idle machine.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import logging
from collections.abc import Sequence

from . import adapters, ask, bench, db, evaluation, info, ingest, serve, training
from ._common import model_parent, run_command

__all__ = ["build_parser", "main"]

# The order of `lloco --help`.
_REGISTER = (
    info.register,  # info, encoder import
    bench.register,
    ask.register,
    serve.register,
    training.register,  # train-encoder, finetune, train-teacher, eval-encoder
    evaluation.register,  # eval, eval-report
    db.register_schema,  # db init/status/drop
    ingest.register,  # ingest, recompress
    db.register,  # retrieve, groups, docs, delete
    adapters.register,
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for docs and tests)."""
    p = argparse.ArgumentParser(
        prog="lloco",
        description="LLoCO: answer over long documents with compressed "
        "cheat sheets, per-group LoRA adapters and Postgres storage.",
    )
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    common = model_parent()
    for register in _REGISTER:
        register(sub, common)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=[logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)],
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return run_command(args.func, args)
