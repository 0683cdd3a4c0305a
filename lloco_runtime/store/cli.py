"""Storage commands of the ``lloco`` CLI: ``db``, ``ingest``, ``recompress``, ``retrieve``, ``groups``, ``docs``,
``delete``, ``adapters``. ``lloco_runtime.cli`` calls :func:`register`; errors are LLoCOErrors that the
main CLI prints as ``error: ...`` (exit 2 for bad input, 1 otherwise).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from typing import Any

from ..errors import InputError


def _store(args: argparse.Namespace, *, create: bool = False, **kw: Any):
    from .store import CheatSheetStore

    return CheatSheetStore(args.url, schema=args.schema, create=create, **kw)


def _db_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--url",
        default=None,
        help="Postgres URL (default: LLOCO_DATABASE_URL, else the embedded server under LLOCO_HOME)",
    )
    p.add_argument("--schema", default=None, help="schema lloco owns (default: LLOCO_SCHEMA or lloco)")


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str))


def _runtime(args: argparse.Namespace):
    """The encoder's runtime: the project default, or the one named by --model/--encoder/--device/--dtype."""
    from ..runtime import LLoCO, load_default_runtime

    if any(getattr(args, k, None) for k in ("model", "encoder", "device", "dtype")):
        return LLoCO.from_pretrained(args.model, encoder=args.encoder, device=args.device, dtype=args.dtype)
    return load_default_runtime()


# -- commands -----------------------------------------------------------------------------------------------


def _cmd_db_init(args: argparse.Namespace) -> int:
    with _store(args, create=True, ann_index=args.ann_index) as store:
        st = store.status()
    print(f"schema {st.schema} at version {st.version} in {st.url} (vector index: {st.ann_index})")
    return 0


def _cmd_db_status(args: argparse.Namespace) -> int:
    with _store(args) as store:
        st = store.status()
    if args.json:
        _print_json(asdict(st))
        return 0
    print(f"database:  {st.url}{' (embedded)' if st.embedded else ''}")
    print(
        f"schema:    {st.schema} (version {st.version}/{st.latest_version}; pgvector in {st.vector_schema})"
    )
    print(f"embedder:  {st.embedder} ({st.embedding_dim} dims; index: {st.ann_index})")
    print("rows:      " + ", ".join(f"{k} {v}" for k, v in st.counts.items()))
    print("bytes:     " + ", ".join(f"{k} {v:,}" for k, v in st.bytes.items()))
    return 0


def _cmd_db_drop(args: argparse.Namespace) -> int:
    if not args.yes:
        raise InputError("`lloco db drop` deletes every lloco table in the schema; add --yes to confirm")
    with _store(args) as store:
        store.drop_schema()
        print(f"dropped schema {store.schema}")
    return 0


def _cmd_ingest(args: argparse.Namespace) -> int:
    from .inputs import read_paths

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
        lloco = _runtime(args)
        with _store(args, create=True) as store:
            report = store.ingest(
                docs,
                group=args.group,
                collection=args.collection,
                encoder=lloco.encoder,
                batch_size=args.batch_size,
                progress=progress,
            )
    if args.json:
        _print_json(
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
    with _store(args, create=True) as store:
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


def _cmd_recompress(args: argparse.Namespace) -> int:
    with _store(args) as store:
        store.get_group(args.group, args.collection)  # an unknown group fails here, before the model loads
        lloco = _runtime(args)
        report = store.recompress(
            group=args.group,
            collection=args.collection,
            encoder=lloco.encoder,
            batch_size=args.batch_size,
            deactivate_stale=not args.keep_adapter,
            progress=not args.no_progress and sys.stderr.isatty(),
        )
    if args.json:
        _print_json(
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


def _cmd_retrieve(args: argparse.Namespace) -> int:
    filters = None
    if args.filter:
        try:
            filters = json.loads(args.filter)
        except json.JSONDecodeError as exc:
            raise InputError(f"--filter is not valid JSON: {exc.msg}") from None
    with _store(args) as store:
        res = store.retrieve(
            args.query,
            group=args.group,
            collection=args.collection,
            top_k=args.top_k,
            mode=args.mode,
            filters=filters,
            load_cheat_sheets=False,
        )
    if args.json:
        _print_json(
            {
                "adapter_id": res.adapter_id,
                "chunks": [
                    {
                        "chunk_id": c.chunk_id,
                        "doc_id": c.doc_id,
                        "ordinal": c.ordinal,
                        "score": c.score,
                        "text": c.text,
                        "metadata": c.metadata,
                    }
                    for c in res.chunks
                ],
            }
        )
        return 0
    for c in res.chunks:
        print(
            f"{c.score:.4f}  {c.doc_id} #{c.ordinal} (chunk {c.chunk_id}): {' '.join(c.text.split())[:100]}"
        )
    if not res.chunks:
        print("no matches")
    return 0


def _cmd_groups_list(args: argparse.Namespace) -> int:
    with _store(args) as store:
        groups = store.list_groups(args.collection)
    if args.json:
        _print_json([asdict(g) | {"encoder": g.encoder_state, "adapter": g.adapter_state} for g in groups])
        return 0
    if not groups:
        print("no groups yet; create one with `lloco ingest PATH --group NAME`")
    for g in groups:
        print(
            f"{g.collection}/{g.name}: {g.n_documents} documents, {g.n_chunks} chunks, "
            f"adapter {g.adapter_state}, encoder {g.encoder_state}"
        )
    return 0


def _cmd_docs_list(args: argparse.Namespace) -> int:
    with _store(args) as store:
        docs = store.list_documents(args.group, args.collection, limit=args.limit)
    if args.json:
        _print_json([asdict(d) for d in docs])
        return 0
    for d in docs:
        print(f"{d.doc_id}: {d.n_chunks} chunks, {d.n_tokens} tokens, sha256 {d.sha256[:12]}")
    return 0


def _cmd_delete(args: argparse.Namespace) -> int:
    with _store(args) as store:
        if args.doc:
            if not args.group:
                raise InputError("--doc needs --group")
            store.delete_document(args.doc, group=args.group, collection=args.collection)
            print(f"deleted document {args.doc} from {args.collection}/{args.group}")
        elif args.group:
            if not args.yes:
                raise InputError("deleting a group removes its documents and adapters; add --yes to confirm")
            store.delete_group(args.group, args.collection)
            print(f"deleted group {args.collection}/{args.group}")
        else:
            if not args.yes:
                raise InputError("deleting a collection removes all its groups; add --yes to confirm")
            store.delete_collection(args.collection)
            print(f"deleted collection {args.collection}")
    return 0


def _cmd_adapters_list(args: argparse.Namespace) -> int:
    with _store(args) as store:
        adapters = store.list_adapters(args.group, args.collection)
    if args.json:
        _print_json([asdict(a) for a in adapters])
        return 0
    for a in adapters:
        print(
            f"{a.id}: v{a.version}{' (active)' if a.active else ''}, {a.n_bytes:,} bytes, "
            f"metrics {json.dumps(a.metrics)}"
        )
    return 0


def _cmd_adapters_activate(args: argparse.Namespace) -> int:
    with _store(args) as store:
        a = store.activate_adapter(args.adapter_id)
    print(f"adapter {a.id} (v{a.version}) is now active for {a.collection}/{a.group}")
    return 0


def _cmd_adapters_deactivate(args: argparse.Namespace) -> int:
    with _store(args) as store:
        previous = store.deactivate_adapter(args.group, args.collection)
    was = f"adapter {previous} stays stored" if previous is not None else "it had none"
    print(
        f"{args.collection}/{args.group} now has no active adapter ({was}; `lloco adapters activate ID` "
        "turns one on again)"
    )
    return 0


def _cmd_adapters_delete(args: argparse.Namespace) -> int:
    with _store(args) as store:
        a = store.delete_adapter(args.adapter_id)
    print(
        f"deleted adapter {a.id} (v{a.version} of {a.collection}/{a.group})"
        + ("; the group now has no active adapter" if a.active else "")
    )
    return 0


def _cmd_adapters_export(args: argparse.Namespace) -> int:
    from ..adapters import AdapterArtifact
    from ..peft_io import SAFETENSORS_NAME, export_peft_folder

    with _store(args) as store:
        a = store.get_adapter(args.adapter_id)
        data = store.adapter_weights(args.adapter_id)
    art = AdapterArtifact.from_bytes(data)
    out = export_peft_folder(
        art,
        args.dir,
        base_model_name_or_path=args.base_model,
        extra_metadata={
            "lloco_adapter_id": str(a.id),
            "lloco_version": str(a.version),
            "lloco_group": f"{a.collection}/{a.group}",
        },
    )
    print(
        f"wrote adapter {a.id} (v{a.version} of {a.collection}/{a.group}) to {out} as a PEFT LoRA folder "
        f"(adapter_config.json, {SAFETENSORS_NAME}); load it with peft.PeftModel.from_pretrained(model, DIR)"
    )
    return 0


def _cmd_adapters_import(args: argparse.Namespace) -> int:
    from ..peft_io import check_fits, read_peft_folder, to_artifact

    adapter = read_peft_folder(args.dir)  # the files are checked before any model loads
    with _store(args) as store:
        store.get_group(args.group, args.collection)  # an unknown group fails here, before the model loads
        lloco = _runtime(args)
        check_fits(adapter, lloco.host)
        art = to_artifact(adapter, lloco.host, encoder_fingerprint=lloco.encoder.fingerprint)
        a = store.register_adapter(
            args.group,
            art.to_bytes(),
            base_fingerprint=art.base_fingerprint,
            encoder_fingerprint=art.encoder_fingerprint,
            config=art.lora_config,
            metrics={"imported_from": art.info["source"]},
            collection=args.collection,
            activate=args.activate,
            create_group=False,
        )
    state = "active" if a.active else "not active: `lloco adapters activate " + str(a.id) + "` turns it on"
    print(
        f"imported {args.dir} as adapter {a.id} (v{a.version} of {a.collection}/{a.group}, LoRA r"
        f"{art.lora_config.get('r')} on {art.lora_config.get('target_modules')}; {state})"
    )
    return 0


# -- wiring -------------------------------------------------------------------------------------------------


def register(sub: argparse._SubParsersAction) -> None:
    """Add the storage commands to the main ``lloco`` parser's subcommands."""
    db = sub.add_parser("db", help="create, inspect or drop lloco's Postgres schema")
    dbs = db.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    s = dbs.add_parser("init", help="create or upgrade the schema (embedded Postgres unless --url)")
    _db_options(s)
    s.add_argument(
        "--ann-index",
        choices=["auto", "hnsw", "none"],
        default="auto",
        help="HNSW index on retrieval embeddings (auto: unless the CPU cannot run it)",
    )
    s.set_defaults(func=_cmd_db_init)
    s = dbs.add_parser("status", help="schema version, embedder, row counts and sizes")
    _db_options(s)
    s.add_argument("--json", action="store_true", help="print as JSON")
    s.set_defaults(func=_cmd_db_status)
    s = dbs.add_parser("drop", help="delete lloco's schema and everything in it")
    _db_options(s)
    s.add_argument("--yes", action="store_true", help="confirm")
    s.set_defaults(func=_cmd_db_drop)

    s = sub.add_parser(
        "ingest",
        help="compress .txt/.md/.jsonl files or folders into a group",
        description="Split documents into encoder segments, compress them into cheat sheets "
        "and store them with retrieval embeddings (one transaction per document; unchanged "
        'documents are skipped). JSONL lines: {"doc_id"|"id", "text", ...metadata}.',
    )
    s.add_argument("paths", nargs="+", metavar="PATH", help="files or folders")
    s.add_argument("--group", required=True, help="document group (created if missing)")
    s.add_argument("--collection", default="default", help="collection of the group (default: default)")
    s.add_argument("--batch-size", type=int, default=8, help="chunks per encoder batch (default 8)")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.add_argument("--json", action="store_true", help="print the ingest report as JSON")
    s.add_argument("--model", default=None, help="decoder/encoder base model (default: the project default)")
    s.add_argument("--encoder", default=None, help="encoder folder (default: the shipped encoder)")
    s.add_argument("--device", default=None, help="cpu or cuda")
    s.add_argument("--dtype", default=None, help="float32, bfloat16 or float16")
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
    _db_options(s)
    s.set_defaults(func=_cmd_ingest)

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
    s.add_argument("--collection", default="default", help="collection of the group (default: default)")
    s.add_argument("--batch-size", type=int, default=8, help="chunks per encoder batch (default 8)")
    s.add_argument(
        "--keep-adapter",
        action="store_true",
        help="leave a stale active adapter active (answers with it fail until it is retrained)",
    )
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.add_argument("--json", action="store_true", help="print the report as JSON")
    s.add_argument("--model", default=None, help="decoder/encoder base model (default: the project default)")
    s.add_argument("--encoder", default=None, help="encoder folder (default: the shipped encoder)")
    s.add_argument("--device", default=None, help="cpu or cuda")
    s.add_argument("--dtype", default=None, help="float32, bfloat16 or float16")
    _db_options(s)
    s.set_defaults(func=_cmd_recompress)

    s = sub.add_parser("retrieve", help="show the chunks a query retrieves from a group (no generation)")
    s.add_argument("query", help="the query text")
    s.add_argument("--group", required=True)
    s.add_argument("--collection", default="default")
    s.add_argument("--top-k", type=int, default=4)
    s.add_argument("--mode", choices=["dense", "fulltext", "hybrid"], default="hybrid")
    s.add_argument(
        "--filter",
        default=None,
        help='metadata filter as JSON, e.g. \'{"key": "year", "op": ">=", "value": 2020}\' or {"and": [...]}',
    )
    s.add_argument("--json", action="store_true")
    _db_options(s)
    s.set_defaults(func=_cmd_retrieve)

    g = sub.add_parser("groups", help="list document groups")
    gs = g.add_subparsers(dest="groups_command", metavar="ACTION", required=True)
    s = gs.add_parser(
        "list",
        help="groups with document/chunk counts, active adapter (stale if trained for "
        "another encoder) and the encoder fingerprint of their cheat sheets",
    )
    s.add_argument("--collection", default=None, help="only this collection")
    s.add_argument("--json", action="store_true")
    _db_options(s)
    s.set_defaults(func=_cmd_groups_list)

    d = sub.add_parser("docs", help="list a group's documents")
    ds = d.add_subparsers(dest="docs_command", metavar="ACTION", required=True)
    s = ds.add_parser("list", help="documents of a group")
    s.add_argument("--group", required=True)
    s.add_argument("--collection", default="default")
    s.add_argument("--limit", type=int, default=1000)
    s.add_argument("--json", action="store_true")
    _db_options(s)
    s.set_defaults(func=_cmd_docs_list)

    s = sub.add_parser(
        "delete",
        help="delete a document (--doc), a group (--group) or a collection",
        description="Deletes cascade: a collection takes its groups, a group its documents and "
        "adapters, a document its chunks and cheat sheets.",
    )
    s.add_argument("--collection", default="default")
    s.add_argument("--group", default=None)
    s.add_argument("--doc", default=None, help="document id")
    s.add_argument("--yes", action="store_true", help="confirm deleting a group or collection")
    _db_options(s)
    s.set_defaults(func=_cmd_delete)

    a = sub.add_parser(
        "adapters", help="list, activate, deactivate, delete, import or export a group's LoRA adapters"
    )
    as_ = a.add_subparsers(dest="adapters_command", metavar="ACTION", required=True)
    s = as_.add_parser("list", help="adapter versions of a group")
    s.add_argument("--group", required=True)
    s.add_argument("--collection", default="default")
    s.add_argument("--json", action="store_true")
    _db_options(s)
    s.set_defaults(func=_cmd_adapters_list)
    s = as_.add_parser("activate", help="make an adapter its group's active one")
    s.add_argument("adapter_id", type=int, help="the adapter's id (`lloco adapters list`), not its version")
    _db_options(s)
    s.set_defaults(func=_cmd_adapters_activate)
    s = as_.add_parser(
        "deactivate", help="leave a group without an active adapter (its adapters stay stored)"
    )
    s.add_argument("--group", required=True)
    s.add_argument("--collection", default="default")
    _db_options(s)
    s.set_defaults(func=_cmd_adapters_deactivate)
    s = as_.add_parser(
        "delete", help="delete one stored adapter version by id (an active one leaves its group with none)"
    )
    s.add_argument("adapter_id", type=int, help="the adapter's id (`lloco adapters list`), not its version")
    _db_options(s)
    s.set_defaults(func=_cmd_adapters_delete)
    s = as_.add_parser(
        "export",
        help="write a stored adapter as a PEFT LoRA folder",
        description="Writes DIR/adapter_config.json and DIR/adapter_model.safetensors, which "
        "peft.PeftModel.from_pretrained(base_model, DIR) loads on the decoder it was trained on.",
    )
    s.add_argument("adapter_id", type=int, help="the adapter's id (`lloco adapters list`)")
    s.add_argument("dir", metavar="DIR", help="a new (or empty) folder")
    s.add_argument("--base-model", default=None, help="recorded as base_model_name_or_path (default: none)")
    _db_options(s)
    s.set_defaults(func=_cmd_adapters_export)
    s = as_.add_parser(
        "import",
        help="store a PEFT LoRA folder as a new version of a group's adapter",
        description="Reads DIR/adapter_config.json with DIR/adapter_model.safetensors (or "
        "adapter_model.bin, loaded with torch.load(weights_only=True) only), checks that it fits "
        "the loaded decoder (architecture, hidden size, layer count, target modules, shapes) and "
        "stores it for the current encoder; nothing is written when a check fails.",
    )
    s.add_argument("dir", metavar="DIR", help="folder written by peft's save_pretrained")
    s.add_argument("--group", required=True, help="an existing group (`lloco groups list`)")
    s.add_argument("--collection", default="default")
    s.add_argument("--activate", action="store_true", help="make it the group's active adapter")
    s.add_argument(
        "--model", default=None, help="decoder the adapter was trained on (default: the project default)"
    )
    s.add_argument("--encoder", default=None, help="encoder folder (default: the shipped encoder)")
    s.add_argument("--device", default=None, help="cpu or cuda")
    s.add_argument("--dtype", default=None, help="float32, bfloat16 or float16")
    _db_options(s)
    s.set_defaults(func=_cmd_adapters_import)
