"""``lloco ask``: answer a question over an ingested group (streamed, or as JSON)."""

from __future__ import annotations

import argparse

from ..errors import InputError
from . import _common
from ._common import (
    add_collection_option,
    add_db_options,
    add_preset_option,
    add_retrieval_options,
    open_store,
    print_json,
)


def cmd_ask(args: argparse.Namespace) -> int:
    from ..service import LLoCOService

    if not args.question.strip():
        raise InputError("the question is empty")
    store = open_store(args)
    store.get_group(args.group, args.collection)  # an unknown group fails here, before the model loads
    service = LLoCOService(_common.load_runtime(args), store)
    gen = {"max_new_tokens": args.max_new_tokens}
    kwargs = {
        "group": args.group,
        "collection": args.collection,
        "top_k": args.top_k,
        "mode": args.mode,
        "use_adapter": not args.no_adapter,
    }
    if args.json:
        answer = service.answer(args.question, **kwargs, **gen)
        print_json(answer.to_dict())
        return 0
    deltas, result = service.stream(args.question, **kwargs, **gen)
    for d in deltas:
        print(d, end="", flush=True)
    print()
    adapter = result.adapter_id if not args.no_adapter else None
    print(
        f"\n[{result.context_tokens} cheat-sheet vectors instead of {result.raw_context_tokens} text tokens; "
        f"adapter: {adapter if adapter is not None else 'none'}]"
    )
    for c in result.chunks:
        preview = " ".join(c.text.split())[:90]
        print(f"  {c.score:.3f}  {c.doc_id} #{c.ordinal} (chunk {c.chunk_id}): {preview}...")
    return 0


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    s = sub.add_parser(
        "ask",
        parents=[common],
        help="answer a question over an ingested group",
        description="Retrieve the group's best chunks, splice their cheat sheets into the "
        "prompt, apply the group's active adapter and answer (streamed).",
    )
    s.add_argument("question", help="the question")
    s.add_argument("--group", required=True, help="document group to search")
    add_collection_option(s)
    add_retrieval_options(
        s, top_k_help="chunks to retrieve (default %(default)s)", mode_help="retrieval mode"
    )
    s.add_argument("--no-adapter", action="store_true", help="answer without the group's adapter")
    _common.add_focus_option(s)
    s.add_argument("--max-new-tokens", type=int, default=64, help="answer length limit (default 64)")
    s.add_argument(
        "--json",
        action="store_true",
        help="print {answer, sources, adapter_id, context_tokens, raw_context_tokens} as JSON",
    )
    add_db_options(s)
    add_preset_option(s, " (use the one the group's adapter was fine-tuned with)")
    s.set_defaults(func=cmd_ask)
