"""``lloco serve``: Ray Serve + FastAPI (the ``[serve]`` extra), the application in :mod:`lloco_runtime.serve`."""

from __future__ import annotations

import argparse
import sys

from ._common import add_db_options, add_focus_option, import_extra, open_store


def cmd_serve(args: argparse.Namespace) -> int:
    serve = import_extra(
        "lloco_runtime.serve", extra="serve", needs="`lloco serve` needs Ray Serve and FastAPI"
    )
    opts = serve.ServeOptions(
        model=args.model,
        encoder=args.encoder,
        url=args.url,
        schema=args.schema,
        device=args.device,
        dtype=args.dtype,
        replicas=args.replicas,
        max_batch_size=args.max_batch_size,
        batch_wait_s=args.batch_wait_ms / 1000,
        max_queued_requests=args.max_queued,
        host=args.host,
        port=args.port,
        torch_threads=args.torch_threads,
        ingress_threads=args.ingress_threads,
        focus=not args.no_focus,
        focus_budget=args.focus_budget or "shared",
    )
    open_store(args).close()  # a missing schema fails before Ray starts

    def ready(url: str) -> None:
        print(
            f"lloco serving at {url} (POST /v1/ask, POST /v1/chat/completions, GET /healthz, docs at "
            f"{url}/docs); {opts.replicas} decoder replica(s), batches of up to {opts.max_batch_size}. "
            "Ctrl-C stops it.",
            flush=True,
        )

    try:
        serve.run_server(opts, on_ready=ready)
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
    return 0


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    s = sub.add_parser(
        "serve",
        parents=[common],
        help="serve answers over HTTP (Ray Serve + FastAPI)",
        description="Run LLoCO as a Ray Serve application: POST /v1/ask (the `lloco ask --json` "
        "answer, or server-sent events with stream: true), POST /v1/chat/completions (OpenAI wire "
        "format; extra fields group, top_k, collection, adapter), GET /healthz. Requests are "
        "decoded in batches, requests for different group adapters in the same batch. Blocks until "
        "Ctrl-C. Needs pip install 'lloco[serve]'.",
    )
    s.add_argument("--replicas", type=int, default=1, help="decoder replicas (default 1)")
    s.add_argument("--max-batch-size", type=int, default=8, help="requests decoded together (default 8)")
    s.add_argument(
        "--batch-wait-ms",
        type=float,
        default=20.0,
        help="how long a replica waits to fill a batch (default 20 ms)",
    )
    s.add_argument(
        "--max-queued",
        type=int,
        default=64,
        help="requests waiting for a replica beyond this get 503 (default 64)",
    )
    s.add_argument(
        "--torch-threads", type=int, default=None, help="threads per replica (default: cores / replicas)"
    )
    s.add_argument(
        "--ingress-threads",
        type=int,
        default=1,
        help="torch threads of the HTTP front's question embedding (default 1: next to busy decoder "
        "replicas more threads make each request slower)",
    )
    s.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1; 0.0.0.0 for every interface)",
    )
    s.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    add_focus_option(s)
    add_db_options(s)
    s.set_defaults(func=cmd_serve)
