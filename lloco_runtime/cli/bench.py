"""``lloco bench``: the measurements of :mod:`lloco_runtime.bench`, or (``--serve-url``) the serving section
against a running ``lloco serve``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import InputError
from . import _common
from ._common import check_png, import_extra, int_list

SERVE_BENCH_QUESTIONS = (
    "What is this document about?",
    "Who is named first?",
    "When did it happen?",
    "Where did it take place?",
    "How many are there?",
    "What happened next?",
    "Why was it built?",
    "What is it made of?",
)


def _bench_http(args: argparse.Namespace) -> int:
    """`lloco bench --serve-url`: the serving section against a running `lloco serve` (no model here)."""
    groups = [g.strip() for g in (args.serve_group or "").split(",") if g.strip()]
    if not groups:
        raise InputError("--serve-url needs --serve-group (a group the server holds, or several: a,b)")
    if args.serve_requests < 1 or args.serve_tokens < 1:
        raise InputError("--serve-requests and --serve-tokens must be >= 1")
    serve = import_extra(
        "lloco_runtime.serve", extra="serve", needs="`lloco bench --serve-url` needs Ray Serve and FastAPI"
    )
    bodies = [
        {
            "question": SERVE_BENCH_QUESTIONS[i % len(SERVE_BENCH_QUESTIONS)],
            "group": groups[i % len(groups)],
            "max_new_tokens": args.serve_tokens,
        }
        for i in range(args.serve_requests)
    ]
    report = serve.bench_serving_http(args.serve_url, bodies, concurrency=(1, 4, 8))
    print(serve.format_bench(report))
    if args.json:
        Path(args.json).write_text(json.dumps({"http_serving": report}, indent=2))
        print(f"wrote {args.json}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    if args.serve_url:
        return _bench_http(args)
    contexts = int_list(args.contexts, "--contexts")
    beyond = int_list(args.beyond, "--beyond", allow_empty=True)
    sizes = int_list(args.store_sizes, "--store-sizes")
    for path in args.eval_json or []:
        if not Path(path).is_file():
            raise InputError(f"--eval-json: {path} is not a file (write one with `lloco eval --json PATH`)")
    check_png(args.plot)  # fail now, with the install command, not after the run
    from ..bench import run

    lloco = _common.load_runtime(args)
    report = run(
        lloco,
        quick=args.quick,
        contexts=contexts,
        reps=args.reps,
        json_path=args.json,
        store=not args.no_store,
        store_sizes=tuple(sizes) if sizes else None,
        store_url=args.url,
        beyond=beyond,
        plot_path=args.plot,
        eval_json=args.eval_json,
        progress=sys.stderr.isatty(),
    )
    print(report["_table"])
    for path in report.get("plots", []):
        print(f"wrote {path}")
    if args.json:
        print(f"wrote {args.json}")
    return 0


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    s = sub.add_parser(
        "bench",
        parents=[common],
        help="measure what LLoCO promises, side by side",
        description="Measure, each against its baseline in the same run (median of interleaved "
        "repetitions): time to first token full text vs. cheat sheets (and cheat sheets alone "
        "past the window), end-to-end answer latency vs. full context and RAG-text, encoder "
        "throughput vs. the plain forward pass, retrieval latency, ingest rate, adapter "
        "load/switch/mixed batches, peak RSS and stored bytes per chunk. See BENCHMARKS.md.",
    )
    s.add_argument(
        "--quick",
        action="store_true",
        help="fewer lengths (1k, 7k; 16k, 64k beyond the window), "
        "3 repetitions, a 2k-token end-to-end document: a few minutes on 2 cores",
    )
    s.add_argument(
        "--contexts",
        default=None,
        help="comma-separated context lengths in tokens, within the "
        "decoder window (default 1000,2000,4000,7000)",
    )
    s.add_argument(
        "--beyond",
        default=None,
        help="source lengths past the window, cheat sheets only (default 16000,32000,64000; '' for none)",
    )
    s.add_argument("--reps", type=int, default=None, help="repetitions per measurement")
    s.add_argument("--json", default=None, metavar="PATH", help="write the results as JSON")
    s.add_argument(
        "--plot",
        default=None,
        metavar="PATH",
        help="write latency vs. context length as a PNG (and PATH-stem_f1.png with --eval-json)",
    )
    s.add_argument(
        "--eval-json",
        nargs="+",
        default=None,
        metavar="PATH",
        help="`lloco eval --json` result files for the compression ratio vs. F1 plot",
    )
    s.add_argument(
        "--no-store",
        action="store_true",
        help="skip the store sections (end to end, retrieval, ingest, bytes per chunk)",
    )
    s.add_argument(
        "--store-sizes", default=None, help="chunk counts for retrieval latency (default 10000,100000)"
    )
    s.add_argument(  # not add_db_options: the bench makes its own schema, lloco_bench
        "--url",
        default=None,
        help="Postgres URL for the store sections (schema lloco_bench, dropped afterwards)",
    )
    s.add_argument(
        "--serve-url",
        default=None,
        metavar="URL",
        help="instead of the sections above: throughput "
        "and p50/p95 latency of a running `lloco serve` at 1, 4 and 8 concurrent clients, against the "
        "same requests one at a time (needs --serve-group)",
    )
    s.add_argument(
        "--serve-group",
        default=None,
        metavar="GROUP[,GROUP...]",
        help="group(s) the --serve-url requests ask; with several, requests take them in turn",
    )
    s.add_argument(
        "--serve-requests", type=int, default=16, help="requests per concurrency level (default 16)"
    )
    s.add_argument("--serve-tokens", type=int, default=16, help="max_new_tokens per request (default 16)")
    s.set_defaults(func=cmd_bench)
