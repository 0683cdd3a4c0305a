"""``lloco ingest`` (documents into a group: locally, or on Ray Data with ``--ray``) and ``lloco recompress`` (a
group's stored chunks re-encoded with another encoder)."""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict

from ..errors import InputError
from . import _common
from ._common import add_collection_option, add_db_options, add_model_options, open_store, print_json


def cmd_ingest(args: argparse.Namespace) -> int:
    from ..store.inputs import read_paths

    if args.ray is None and (args.ray_workers is not None or args.ray_cpus_per_worker is not None):
        raise InputError("--ray-workers and --ray-cpus-per-worker only apply with --ray [ADDRESS]")
    if args.ray is not None:
        from ..ray_ingest import import_ray

        import_ray()  # without the serve extra: say how to install it before reading anything
    docs = read_paths(args.paths)  # validate every input before loading any model
    progress = not args.no_progress and sys.stderr.isatty()
    if args.ray is not None:
        report = _ray_ingest(args, docs, progress)
    else:
        lloco = _common.load_runtime(args)
        with open_store(args, create=True) as store:
            report = store.ingest(
                docs,
                group=args.group,
                collection=args.collection,
                encoder=lloco.encoder,
                batch_size=args.batch_size,
                progress=progress,
            )
    if args.json:
        print_json(
            {
                "group": report.group,
                "collection": report.collection,
                "seconds": report.seconds,
                "chunks_written": report.chunks_written,
                "documents": [asdict(d) for d in report.documents],
            }
        )
    else:
        print(report.summary())
    return 0


def _ray_ingest(args: argparse.Namespace, docs: list, progress: bool):
    """``lloco ingest --ray``: the workers load the runtime themselves (from --model/--encoder/...)."""
    from ..ray_ingest import RaySettings, RuntimeSpec, ray_ingest

    settings = RaySettings(
        address=args.ray or None,
        workers=1 if args.ray_workers is None else args.ray_workers,
        cpus_per_worker=1.0 if args.ray_cpus_per_worker is None else args.ray_cpus_per_worker,
    )
    settings.check()
    runtime = RuntimeSpec.of(args.model, args.encoder, args.device, args.dtype, check_paths=not args.ray)
    with open_store(args, create=True) as store:
        return ray_ingest(
            store,
            docs,
            group=args.group,
            collection=args.collection,
            runtime=runtime,
            settings=settings,
            batch_size=args.batch_size,
            progress=progress,
        )


def cmd_recompress(args: argparse.Namespace) -> int:
    with open_store(args) as store:
        store.get_group(args.group, args.collection)  # an unknown group fails here, before the model loads
        lloco = _common.load_runtime(args)
        report = store.recompress(
            group=args.group,
            collection=args.collection,
            encoder=lloco.encoder,
            batch_size=args.batch_size,
            deactivate_stale=not args.keep_adapter,
            progress=not args.no_progress and sys.stderr.isatty(),
        )
    if args.json:
        print_json(
            asdict(report)
            | {
                "chunks_encoded": report.chunks_encoded,
                "retrain": _retrain_command(args) if report.stale_adapter_ids else None,
            }
        )
        return 0
    print(report.summary())
    if not report.complete:
        print(
            "some documents still hold cheat sheets of another encoder (changed while this ran); run "
            "`lloco recompress` again"
        )
    if report.deactivated_adapter_id is not None:
        instead = (
            f"adapter {report.activated_adapter_id}, trained for this encoder, is active instead"
            if report.activated_adapter_id is not None
            else "the group has no active adapter now"
        )
        print(
            f"adapter {report.deactivated_adapter_id} was trained for another encoder: deactivated (it stays "
            f"stored); {instead}"
        )
    elif report.active_adapter_id is not None and report.active_adapter_id in report.stale_adapter_ids:
        print(
            f"adapter {report.active_adapter_id} is still active but stale (trained for another encoder): "
            f"answers with it fail until you retrain, or `lloco adapters deactivate --group {args.group}`"
        )
    if report.active_adapter_id is None and report.current_adapter_ids:
        print(
            f"adapter {report.current_adapter_ids[-1]} was trained for this encoder: "
            f"`lloco adapters activate {report.current_adapter_ids[-1]}` turns it on"
        )
    if report.stale_adapter_ids:
        ids = ", ".join(str(i) for i in report.stale_adapter_ids)
        print(
            f"stale adapters (trained for another encoder): {ids}; retrain for this encoder with "
            f"`{_retrain_command(args)}`"
        )
    return 0


def _retrain_command(args: argparse.Namespace) -> str:
    """The ``lloco finetune`` line that trains an adapter for the encoder this command used."""
    parts = ["lloco finetune", f"--group {args.group}"]
    if args.collection != "default":
        parts.append(f"--collection {args.collection}")
    for flag in ("model", "encoder", "device", "dtype", "url", "schema"):
        value = getattr(args, flag, None)
        if value is not None and not (flag == "url" and _has_password(value)):  # never echo a password
            parts.append(f"--{flag} {value}")
    return " ".join(parts)


def _has_password(url: str) -> bool:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).password is not None
    except ArgumentError:
        return True  # unparsable: do not echo it


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    s = sub.add_parser(
        "ingest",
        help="compress .txt/.md/.jsonl files or folders into a group",
        description="Split documents into encoder segments, compress them into cheat sheets "
        "and store them with retrieval embeddings (one transaction per document; unchanged "
        'documents are skipped). JSONL lines: {"doc_id"|"id", "text", ...metadata}.',
    )
    s.add_argument("paths", nargs="+", metavar="PATH", help="files or folders")
    s.add_argument("--group", required=True, help="document group (created if missing)")
    add_collection_option(s)
    s.add_argument("--batch-size", type=int, default=8, help="chunks per encoder batch (default 8)")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.add_argument("--json", action="store_true", help="print the ingest report as JSON")
    add_model_options(s)
    s.add_argument(
        "--ray",
        nargs="?",
        const="",
        default=None,
        metavar="ADDRESS",
        help="compress on Ray Data: a local Ray, or the cluster at ADDRESS (e.g. ray://host:10001 or "
        "auto); workers load --model/--encoder themselves, this process writes to the store "
        "(needs pip install 'lloco[serve]')",
    )
    s.add_argument(
        "--ray-workers",
        type=int,
        default=None,
        metavar="N",
        help="with --ray: compress actors, each loading the model once (default 1)",
    )
    s.add_argument(
        "--ray-cpus-per-worker",
        type=float,
        default=None,
        metavar="C",
        help="with --ray: CPUs (torch threads) per compress actor (default 1)",
    )
    add_db_options(s)
    s.set_defaults(func=cmd_ingest)

    s = sub.add_parser(
        "recompress",
        help="re-encode a group's stored chunks with another encoder (no files read)",
        description="After an encoder change the stored cheat sheets no longer fit (retrieval "
        "refuses them): this re-encodes every stored chunk of the group from its stored text, one "
        "transaction per document, keeping chunk boundaries (a chunk longer than the new "
        "encoder's segment makes its document be cut again). A killed run is finished by running "
        "it again; documents already done are skipped. Adapters trained for the old encoder are "
        "reported stale and the active one is deactivated (kept stored) once the group is done; "
        "retrain with `lloco finetune --group G`.",
    )
    s.add_argument("--group", required=True, help="an existing group (`lloco groups list`)")
    add_collection_option(s)
    s.add_argument("--batch-size", type=int, default=8, help="chunks per encoder batch (default 8)")
    s.add_argument(
        "--keep-adapter",
        action="store_true",
        help="leave a stale active adapter active (answers with it fail until it is retrained)",
    )
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.add_argument("--json", action="store_true", help="print the report as JSON")
    add_model_options(s)
    add_db_options(s)
    s.set_defaults(func=cmd_recompress)
