"""Database commands: ``lloco db init|status|drop`` (the schema), ``retrieve`` (what a query finds, no
generation), ``groups list``, ``docs list`` and ``delete``. None of them loads a model."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from ..errors import InputError
from ._common import add_collection_option, add_db_options, add_retrieval_options, open_store, print_json


def cmd_db_init(args: argparse.Namespace) -> int:
    with open_store(args, create=True, ann_index=args.ann_index) as store:
        st = store.status()
    print(f"schema {st.schema} at version {st.version} in {st.url} (vector index: {st.ann_index})")
    return 0


def cmd_db_status(args: argparse.Namespace) -> int:
    with open_store(args) as store:
        st = store.status()
    if args.json:
        print_json(asdict(st))
        return 0
    print(f"database:  {st.url}{' (embedded)' if st.embedded else ''}")
    print(
        f"schema:    {st.schema} (version {st.version}/{st.latest_version}; pgvector in {st.vector_schema})"
    )
    print(f"embedder:  {st.embedder} ({st.embedding_dim} dims; index: {st.ann_index})")
    print("rows:      " + ", ".join(f"{k} {v}" for k, v in st.counts.items()))
    print("bytes:     " + ", ".join(f"{k} {v:,}" for k, v in st.bytes.items()))
    return 0


def cmd_db_drop(args: argparse.Namespace) -> int:
    if not args.yes:
        raise InputError("`lloco db drop` deletes every lloco table in the schema; add --yes to confirm")
    with open_store(args) as store:
        store.drop_schema()
        print(f"dropped schema {store.schema}")
    return 0


def cmd_retrieve(args: argparse.Namespace) -> int:
    filters = None
    if args.filter:
        try:
            filters = json.loads(args.filter)
        except json.JSONDecodeError as exc:
            raise InputError(f"--filter is not valid JSON: {exc.msg}") from None
    with open_store(args) as store:
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
        print_json(
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


def cmd_groups_list(args: argparse.Namespace) -> int:
    with open_store(args) as store:
        groups = store.list_groups(args.collection)
    if args.json:
        print_json([asdict(g) | {"encoder": g.encoder_state, "adapter": g.adapter_state} for g in groups])
        return 0
    if not groups:
        print("no groups yet; create one with `lloco ingest PATH --group NAME`")
    for g in groups:
        print(
            f"{g.collection}/{g.name}: {g.n_documents} documents, {g.n_chunks} chunks, "
            f"adapter {g.adapter_state}, encoder {g.encoder_state}"
        )
    return 0


def cmd_docs_list(args: argparse.Namespace) -> int:
    with open_store(args) as store:
        docs = store.list_documents(args.group, args.collection, limit=args.limit)
    if args.json:
        print_json([asdict(d) for d in docs])
        return 0
    for d in docs:
        print(f"{d.doc_id}: {d.n_chunks} chunks, {d.n_tokens} tokens, sha256 {d.sha256[:12]}")
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    with open_store(args) as store:
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


def register_schema(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """``lloco db``."""
    db = sub.add_parser("db", help="create, inspect or drop lloco's Postgres schema")
    dbs = db.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    s = dbs.add_parser("init", help="create or upgrade the schema (embedded Postgres unless --url)")
    add_db_options(s)
    s.add_argument(
        "--ann-index",
        choices=["auto", "hnsw", "none"],
        default="auto",
        help="HNSW index on retrieval embeddings (auto: unless the CPU cannot run it)",
    )
    s.set_defaults(func=cmd_db_init)
    s = dbs.add_parser("status", help="schema version, embedder, row counts and sizes")
    add_db_options(s)
    s.add_argument("--json", action="store_true", help="print as JSON")
    s.set_defaults(func=cmd_db_status)
    s = dbs.add_parser("drop", help="delete lloco's schema and everything in it")
    add_db_options(s)
    s.add_argument("--yes", action="store_true", help="confirm")
    s.set_defaults(func=cmd_db_drop)


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """``lloco retrieve``, ``groups``, ``docs``, ``delete``."""
    s = sub.add_parser("retrieve", help="show the chunks a query retrieves from a group (no generation)")
    s.add_argument("query", help="the query text")
    s.add_argument("--group", required=True)
    add_collection_option(s)
    add_retrieval_options(s)
    s.add_argument(
        "--filter",
        default=None,
        help='metadata filter as JSON, e.g. \'{"key": "year", "op": ">=", "value": 2020}\' or {"and": [...]}',
    )
    s.add_argument("--json", action="store_true")
    add_db_options(s)
    s.set_defaults(func=cmd_retrieve)

    g = sub.add_parser("groups", help="list document groups")
    gs = g.add_subparsers(dest="groups_command", metavar="ACTION", required=True)
    s = gs.add_parser(
        "list",
        help="groups with document/chunk counts, active adapter (stale if trained for "
        "another encoder) and the encoder fingerprint of their cheat sheets",
    )
    s.add_argument("--collection", default=None, help="only this collection")
    s.add_argument("--json", action="store_true")
    add_db_options(s)
    s.set_defaults(func=cmd_groups_list)

    d = sub.add_parser("docs", help="list a group's documents")
    ds = d.add_subparsers(dest="docs_command", metavar="ACTION", required=True)
    s = ds.add_parser("list", help="documents of a group")
    s.add_argument("--group", required=True)
    add_collection_option(s)
    s.add_argument("--limit", type=int, default=1000)
    s.add_argument("--json", action="store_true")
    add_db_options(s)
    s.set_defaults(func=cmd_docs_list)

    s = sub.add_parser(
        "delete",
        help="delete a document (--doc), a group (--group) or a collection",
        description="Deletes cascade: a collection takes its groups, a group its documents and "
        "adapters, a document its chunks and cheat sheets.",
    )
    add_collection_option(s, "collection to delete, or that holds --group")
    s.add_argument("--group", default=None)
    s.add_argument("--doc", default=None, help="document id")
    s.add_argument("--yes", action="store_true", help="confirm deleting a group or collection")
    add_db_options(s)
    s.set_defaults(func=cmd_delete)
