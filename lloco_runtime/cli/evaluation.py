"""``lloco eval`` (run a dataset folder in one or several context modes: :mod:`lloco_runtime.evaluation.harness`)
and ``lloco eval-report`` (tables with confidence intervals from saved runs:
:mod:`lloco_runtime.evaluation.report`)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import InputError
from . import _common
from ._common import add_collection_option, add_db_options, add_retrieval_options, check_png


def _mode(value: str) -> str:
    """``--mode`` checked against the one list of modes (``harness.MODES``), imported only when ``lloco eval``
    parses: importing the harness at module level would load torch while any command's parser is built."""
    from ..evaluation.harness import MODES

    if value not in MODES:
        raise argparse.ArgumentTypeError(f"unknown mode {value!r}; choose from {', '.join(MODES)}")
    return value


DESCRIPTION = (
    "Answer a dataset folder's questions (documents.jsonl + questions.jsonl, the shared/eval format) with one "
    "decoder and one prompt template, in one context mode or several (--compare), and score them: SQuAD F1/EM, "
    "multiple-choice accuracy, substring accuracy or ROUGE. Modes: none (question only); full (the document "
    "as text, head-truncated to the window); rag (top-k retrieved chunks as text); full-adapter / rag-adapter "
    "(the same, answered with the text adapter: a LoRA trained to answer from text, --text-adapter or the "
    "shipped teacher; the fair text baselines); lloco (the retrieved chunks' cheat sheets, no adapter); "
    "lloco-adapter (with the adapter); lloco-doc[-adapter] (the document's own cheat sheets in order); "
    "lloco[-adapter]-control (the cheat sheets retrieved for another question) and lloco-doc-control (another "
    "document's cheat sheets, with the adapter): the controls that separate content read from the cheat "
    "sheets from a learned answer format. Cheat-sheet adapter modes use --adapter-file if given, else the "
    "group's active adapter, else the encoder's reader adapter. Reading utilisation U = (lloco-doc-adapter - lloco-doc-control) / "
    "(full-adapter - none): run those four modes with --json, then `lloco eval-report PATH --u`. The "
    "documents are ingested into --group first (a no-op when unchanged)."
)


def _progress(mode: str) -> Callable[[int, int], None]:
    def show(i: int, n: int) -> None:
        print(f"\r{mode}: {i}/{n}", end="\n" if i == n else "", file=sys.stderr, flush=True)

    return show


def cmd_eval(args: argparse.Namespace) -> int:
    """Validate the dataset (before any model loads), ingest if needed, run the mode(s), report."""
    from ..evaluation.datasets import load_dataset
    from ..evaluation.harness import (
        SHEET_ADAPTER_MODES,
        STORE_MODES,
        EvalSettings,
        Harness,
        finite,
        parse_modes,
        resolve_text_adapter,
    )
    from ..evaluation.report import markdown_table, plot, summary_line
    from ..store.names import validate_name

    dataset = load_dataset(args.dataset, metric=args.metric)
    if args.compare is None:
        modes = parse_modes([args.mode])
    else:
        modes = parse_modes(None if args.compare == "default" else args.compare)
    text_adapter = resolve_text_adapter(args.text_adapter, modes)  # before any model loads
    if args.adapter_file is not None and not Path(args.adapter_file).is_file():
        raise InputError(f"--adapter-file {args.adapter_file} is not a file")
    settings = EvalSettings(
        group=args.group or dataset.name,
        collection=args.collection,
        top_k=args.top_k,
        retrieval=args.retrieval,
        max_new_tokens=args.max_new_tokens,
        max_context_tokens=args.max_context_tokens,
        limit=args.limit,
        only_needed_docs=args.only_needed_docs,
        offset=args.offset,
    )
    validate_name(settings.group, "group")
    if settings.offset >= len(dataset.questions):  # before any model loads
        raise InputError(
            f"--offset {settings.offset} skips all {len(dataset.questions)} questions of {dataset.name}; "
            f"use an offset below {len(dataset.questions)}"
        )
    check_png(args.plot)  # fail now, with the install command, not after the run
    lloco = _common.load_runtime(args)
    store = _common.open_store(args, create=True) if any(m in STORE_MODES for m in modes) else None
    try:
        h = Harness(
            lloco, dataset, settings, store=store, text_adapter=text_adapter, adapter_file=args.adapter_file
        )
        if store is not None:
            rep = h.ingest(progress=sys.stderr.isatty())
            print(f"ingest: {rep.summary()}", file=sys.stderr)
        reports, skipped = [], {}
        for mode in modes:
            if args.compare is not None and mode in SHEET_ADAPTER_MODES and not h.has_adapter(mode):
                skipped[mode] = "no active adapter and no reader adapter"
                continue
            r = h.run(mode, progress=_progress(mode) if sys.stderr.isatty() else None)
            reports.append(finite(r))
            print(summary_line(r), file=sys.stderr)
    finally:
        if store is not None:
            store.close()
    if args.compare is not None:
        print(markdown_table(reports, skipped))
        out: Any = {"dataset": dataset.name, "runs": reports, "skipped": skipped}
    else:
        out = reports[0]
        print(summary_line(out))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2))
        print(f"wrote {args.json}", file=sys.stderr)
    if args.plot and reports:
        plot(reports, args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0


def cmd_eval_report(args: argparse.Namespace) -> int:
    from ..evaluation.report import (
        against_markdown,
        against_rows,
        load_reports,
        markdown,
        summary_rows,
        utilisation_markdown,
        utilisation_rows,
    )

    reports = load_reports(args.paths)
    u_rows = utilisation_rows(reports, args.u_modes) if args.u or args.u_modes else None
    datasets = list(dict.fromkeys(r.get("dataset") for r in reports))
    tables = [markdown([r for r in reports if r.get("dataset") == d], args.baseline) for d in datasets]
    if u_rows is not None:
        tables.append(utilisation_markdown(u_rows))
    a_rows = against_rows(reports, load_reports(args.against)) if args.against else None
    if a_rows is not None:
        tables.append(against_markdown(a_rows))
    print("\n\n".join(tables))
    if args.json:
        rows = summary_rows(reports, args.baseline)
        out: Any = rows
        if u_rows is not None or a_rows is not None:
            out = {"rows": rows}
            if u_rows is not None:
                out["utilisation"] = u_rows
            if a_rows is not None:
                out["against"] = a_rows
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    s = sub.add_parser(
        "eval",
        parents=[common],
        help="score answers on a dataset folder in several context modes",
        description=DESCRIPTION,
    )
    s.add_argument("dataset", help="folder with documents.jsonl and questions.jsonl")
    _common.add_focus_option(s)
    s.add_argument(
        "--mode",
        type=_mode,
        default="lloco",
        metavar="MODE",
        help="context mode, one of those above (default lloco)",
    )
    s.add_argument(
        "--compare",
        nargs="?",
        const="default",
        default=None,
        metavar="MODES",
        help="run several modes (comma-separated; default none,full,rag,lloco,lloco-adapter) and "
        "print a markdown table; cheat-sheet adapter modes are skipped when the group has no active "
        "adapter and no --adapter-file is given",
    )
    s.add_argument(
        "--text-adapter",
        default=None,
        metavar="PATH",
        help="adapter file (`lloco train-teacher`) "
        "of full-adapter and rag-adapter (default: the shipped teacher)",
    )
    s.add_argument(
        "--adapter-file",
        default=None,
        metavar="PATH",
        help="adapter file used by the cheat-sheet "
        "adapter modes (lloco-adapter, lloco-doc-adapter, lloco-adapter-control, lloco-doc-control) "
        "instead of the group's active adapter, e.g. the reader.safetensors of `lloco train-encoder`",
    )
    s.add_argument("--group", default=None, help="document group (default: the dataset folder's name)")
    add_collection_option(s)
    s.add_argument("--limit", type=int, default=None, help="only the first N questions (after --offset)")
    s.add_argument(
        "--offset",
        type=int,
        default=0,
        help="skip the first N questions: run a set in parts (e.g. --offset 600 --limit 600) and "
        "`lloco eval-report` pools the parts of a mode (default 0)",
    )
    add_retrieval_options(
        s,
        top_k_help="chunks retrieved per question (default %(default)s)",
        mode_flag="--retrieval",
        mode_help="retrieval mode for rag/lloco (default %(default)s)",
    )
    s.add_argument(
        "--max-new-tokens",
        type=int,
        default=None,
        help="answer length limit (default: 32 for QA, 8 for multiple choice, 128 for ROUGE sets)",
    )
    s.add_argument(
        "--max-context-tokens",
        type=int,
        default=None,
        help="cap the context of full / lloco-doc modes below the decoder's window",
    )
    s.add_argument(
        "--metric",
        choices=["auto", "qa", "choice", "contains", "rouge"],
        default="auto",
        help="scoring (default auto: choice with options, rouge for qmsum, contains for niah and "
        "longeval_lines, else qa)",
    )
    s.add_argument(
        "--only-needed-docs",
        action="store_true",
        help="ingest only the documents of the selected "
        "questions (faster with --limit; retrieval then sees fewer distractors)",
    )
    s.add_argument(
        "--json",
        default=None,
        metavar="PATH",
        help="write the report (one mode) or {dataset, runs: [...]} (--compare) as JSON",
    )
    s.add_argument(
        "--plot", default=None, metavar="PATH", help="PNG of the main metric vs. mean context tokens"
    )
    add_db_options(s)
    s.set_defaults(func=cmd_eval)

    s = sub.add_parser(
        "eval-report",
        help="tables with 95%% bootstrap intervals from saved `lloco eval --json` runs",
        description="Read `lloco eval --json` files (no model is loaded) and print, per dataset, each "
        "mode's headline score with a 95% bootstrap confidence interval and, with --baseline, its "
        "paired difference to that mode over the same questions.",
    )
    s.add_argument("paths", nargs="+", metavar="PATH", help="JSON files written by `lloco eval --json`")
    s.add_argument(
        "--baseline",
        default=None,
        metavar="MODE",
        help="mode to compare every other mode with "
        "(paired bootstrap over the questions both answered), e.g. none or rag",
    )
    s.add_argument(
        "--u",
        action="store_true",
        help="also print the reading utilisation U = (F1 right sheets - "
        "F1 wrong sheets) / (F1 text - F1 none) with paired bootstrap 95%% intervals (default modes "
        "lloco-doc-adapter, lloco-doc-control, full-adapter, none)",
    )
    s.add_argument(
        "--u-modes",
        default=None,
        metavar="RIGHT,WRONG,TEXT,NONE",
        help="the four modes of U (implies --u), e.g. lloco-adapter,lloco-adapter-control,rag-adapter,none",
    )
    s.add_argument(
        "--json",
        default=None,
        metavar="PATH",
        help="also write the rows as JSON (with --u or --against: {rows, utilisation, against})",
    )
    s.add_argument(
        "--against",
        nargs="+",
        default=None,
        metavar="PATH",
        help="runs to compare the same modes with (e.g. before a change): per mode found in both, the paired "
        "difference PATHs - these over the questions both answered",
    )
    s.set_defaults(func=cmd_eval_report)
