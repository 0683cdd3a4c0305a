"""The ``lloco`` command line. ``lloco --help`` lists the commands; each has its own ``--help``."""

from __future__ import annotations

import os

# Before torch loads: on a busy machine (2 cores shared with other jobs) OpenMP threads that spin while
# waiting make every forward pass several times slower; passive waiting costs ~10% on an idle machine.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from . import config
from .errors import ConfigError, InputError, LLoCOError


def _preset(args: argparse.Namespace):
    """The preset named by ``--preset`` (None without one); an unknown name is bad input."""
    name = getattr(args, "preset", None)
    if name is None:
        return None
    from .presets import get_preset

    try:
        return get_preset(name)
    except ConfigError as exc:
        raise InputError(f"--preset: {exc}") from None


def _runtime(args: argparse.Namespace):
    from .runtime import LLoCO

    preset = _preset(args)
    if preset is None:
        return LLoCO.from_pretrained(args.model, encoder=args.encoder, device=args.device, dtype=args.dtype)
    # The preset's prompt template; its encoder settings make the fresh encoder a non-default model would get
    # anyway (an --encoder folder keeps its own, fingerprinted settings: `lloco info --preset` shows any gap).
    encoder = args.encoder
    if encoder is None and args.model not in (None, "default"):
        encoder = preset.encoder_config()
    return LLoCO.from_pretrained(
        args.model, encoder=encoder, device=args.device, dtype=args.dtype, template=preset.template()
    )


def _cmd_info(args: argparse.Namespace) -> int:
    preset = _preset(args)
    if preset is not None and args.model is None and args.encoder is None:
        print(json.dumps({"preset": preset.to_dict()}, indent=2))  # what it sets, without loading a model
        return 0
    lloco = _runtime(args)
    enc = lloco.encoder
    info = {
        "model": lloco.host.name,
        "model_path": str(lloco.host.path),
        "model_fingerprint": lloco.host.fingerprint,
        "device": str(lloco.host.device),
        "dtype": str(lloco.host.dtype),
        "hidden_size": lloco.host.hidden_size,
        "context_window": lloco.host.context_window,
        "encoder": enc.config.to_dict(),
        "encoder_fingerprint": enc.fingerprint,
        "compression_ratio": enc.config.ratio,
    }
    if preset is not None:
        info["preset"] = preset.to_dict()
        info["encoder_differs_from_preset"] = preset.encoder_mismatches(enc.config)
    print(json.dumps(info, indent=2))
    return 0


def _cmd_encoder_import(args: argparse.Namespace) -> int:
    from .encoder import ContextEncoder

    preset = _preset(args)
    src, out = Path(args.dir), Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"--out {out} already exists and is not an empty folder; choose a new folder")
    if args.segment_length is not None and args.segment_length < 1:
        raise InputError("--segment-length takes a positive token count, e.g. 1536")
    segment_length = args.segment_length or (preset.segment_length if preset else None)
    accumulate = args.accumulate if args.accumulate is not None else (preset.accumulate if preset else None)
    enc = ContextEncoder.from_autocompressor(
        src,
        segment_length=segment_length,
        accumulate=accumulate,
        expect_summary_length=preset.summary_length if preset else None,
        device=args.device,
        dtype=args.dtype,
    )
    enc.save(out)
    c = enc.config
    print(
        f"wrote encoder {out} from AutoCompressor {src}: {c.summary_length} summary vectors per "
        f"{c.segment_length}-token segment ({c.ratio:.1f}x), accumulation {'on' if c.accumulate else 'off'}, "
        f"{enc.dtype}; fingerprint {enc.fingerprint[:12]} on base model {enc.host.fingerprint[:12]}"
    )
    print(f"its decoder is the checkpoint's own Llama: use --model {src} --encoder {out}")
    return 0


def _int_list(value: str | None, flag: str, *, allow_empty: bool = False) -> list[int] | None:
    """``"1000,7000"`` -> ``[1000, 7000]``; InputError naming ``flag`` for anything else."""
    if value is None:
        return None
    parts = [x.strip() for x in value.split(",") if x.strip()]
    try:
        out = [int(x) for x in parts]
    except ValueError:
        out = []
    if (not out and not allow_empty) or any(c < 1 for c in out) or len(out) != len(parts):
        raise InputError(f"{flag} takes positive token counts, e.g. 1000,6000")
    return out


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
    from .serve import bench_serving_http, format_bench

    if not args.serve_group:
        raise InputError("--serve-url needs --serve-group (a group the server holds)")
    if args.serve_requests < 1 or args.serve_tokens < 1:
        raise InputError("--serve-requests and --serve-tokens must be >= 1")
    bodies = [
        {
            "question": SERVE_BENCH_QUESTIONS[i % len(SERVE_BENCH_QUESTIONS)],
            "group": args.serve_group,
            "max_new_tokens": args.serve_tokens,
        }
        for i in range(args.serve_requests)
    ]
    report = bench_serving_http(args.serve_url, bodies, concurrency=(1, 4, 8))
    print(format_bench(report))
    if args.json:
        Path(args.json).write_text(json.dumps({"http_serving": report}, indent=2))
        print(f"wrote {args.json}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from . import bench

    if args.serve_url:
        return _bench_http(args)
    contexts = _int_list(args.contexts, "--contexts")
    beyond = _int_list(args.beyond, "--beyond", allow_empty=True)
    sizes = _int_list(args.store_sizes, "--store-sizes")
    for path in args.eval_json or []:
        if not Path(path).is_file():
            raise InputError(f"--eval-json: {path} is not a file (write one with `lloco eval --json PATH`)")
    if args.plot and not args.plot.lower().endswith(".png"):
        raise InputError("--plot writes a PNG; give a path ending in .png")
    if args.plot:
        from .plotting import pyplot as _need_pyplot

        _need_pyplot()  # fail now, with the install command, not after the run
    lloco = _runtime(args)
    report = bench.run(
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


def _cmd_ask(args: argparse.Namespace) -> int:
    from .service import LLoCOService
    from .store import CheatSheetStore

    if not args.question.strip():
        raise InputError("the question is empty")
    store = CheatSheetStore(args.url, schema=args.schema, create=False)
    store.get_group(args.group, args.collection)  # an unknown group fails here, before the model loads
    service = LLoCOService(_runtime(args), store)
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
        print(json.dumps(answer.to_dict(), indent=2))
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


# -- `lloco serve` (issue #17): Ray Serve + FastAPI; the command and its parser in one block ------------------


def _cmd_serve(args: argparse.Namespace) -> int:
    try:
        from .serve import ServeOptions, run_server
    except ImportError as exc:
        raise ConfigError(
            f"`lloco serve` needs Ray Serve and FastAPI ({exc.name or exc} is not installed): "
            "pip install 'lloco[serve]'"
        ) from None
    from .store import CheatSheetStore

    opts = ServeOptions(
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
    )
    CheatSheetStore(
        args.url, schema=args.schema, create=False
    ).close()  # a missing schema fails before Ray starts

    def ready(url: str) -> None:
        print(
            f"lloco serving at {url} (POST /v1/ask, POST /v1/chat/completions, GET /healthz, docs at "
            f"{url}/docs); {opts.replicas} decoder replica(s), batches of up to {opts.max_batch_size}. "
            "Ctrl-C stops it.",
            flush=True,
        )

    try:
        run_server(opts, on_ready=ready)
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
    return 0


def _serve_parser(sub, common: argparse.ArgumentParser) -> None:
    s = sub.add_parser(
        "serve",
        parents=[common],
        help="serve answers over HTTP (Ray Serve + FastAPI)",
        description="Run LLoCO as a Ray Serve application: POST /v1/ask (the `lloco ask --json` "
        "answer, or server-sent events with stream: true), POST /v1/chat/completions (OpenAI wire "
        "format; extra fields group, top_k, collection, adapter), GET /healthz. Requests are "
        "decoded in batches; group adapters are multiplexed over the replicas. Blocks until "
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
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1; 0.0.0.0 for every interface)",
    )
    s.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    s.add_argument("--url", default=None, help="Postgres URL (default: LLOCO_DATABASE_URL or embedded)")
    s.add_argument("--schema", default=None, help="schema (default: LLOCO_SCHEMA or lloco)")
    s.set_defaults(func=_cmd_serve)


def _cmd_train_encoder(args: argparse.Namespace) -> int:
    from .encoder import ContextEncoder, EncoderConfig
    from .models import load_model
    from .training import EncoderTrainingConfig, train_encoder

    cfg = EncoderTrainingConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup=args.warmup,
        continuation_length=args.continuation_length,
        continuation_weight=args.continuation_weight,
        reconstruction_weight=args.reconstruction_weight,
        distill_weight=args.distill_weight,
        qa_weight=args.qa_weight,
        max_minutes=args.minutes,
        eval_every=args.eval_every,
        eval_pairs=args.eval_pairs,
        checkpoint_every=args.checkpoint_every,
        seed=args.seed,
        reader_lora_r=args.reader_lora_r,
        reader_lora_alpha=2 * args.reader_lora_r if args.reader_lora_r else 32,
        reading_weight=args.reading_weight,
        reading_kl_weight=args.reading_kl_weight,
        reading_batch_size=args.reading_batch_size,
        reading_max_tokens=args.reading_max_tokens,
        reading_val=args.reading_val,
    )
    teacher = args.teacher
    if cfg.reading_kl_weight > 0 and teacher is None:
        from .runtime import shipped_teacher_adapter

        teacher = shipped_teacher_adapter()
        if teacher is None:
            raise ConfigError(
                "--reading-kl-weight needs a teacher adapter: pass --teacher FILE (from "
                "`lloco train-teacher`); no shipped teacher was found"
            )
    learned = args.literal_selector == "learned"
    if args.reading and not cfg.reading and not learned:
        raise ConfigError(
            "--reading needs a positive --reading-weight and/or --reading-kl-weight, or "
            "--literal-selector learned"
        )
    if learned and not args.reading:
        raise ConfigError(
            "--literal-selector learned is fitted on a SQuAD-layout folder: pass --reading DIR "
            "(e.g. shared/corpus/squad_train)"
        )
    if args.qa and not args.qa_weight:
        raise ConfigError(
            "--qa needs a positive --qa-weight (the weight of the QA objective), e.g. --qa-weight 1"
        )
    host = load_model(args.model, device=args.device, dtype=args.dtype)
    if args.encoder and (args.literal_tokens or args.connector_init):
        raise ConfigError("--literal-tokens and --connector-init make a fresh encoder; drop --encoder")
    if args.encoder:
        encoder = ContextEncoder.load(args.encoder, host)
        if args.keep_ratio:  # same weights, a new fingerprint: stored sheets must be rebuilt
            encoder.set_keep_ratio(True)
        changes = {"strict_ratio": True} if args.strict_ratio else {}
        if args.literal_selector:
            changes.update(
                literal_selector=args.literal_selector, selector_layer=args.selector_layer if learned else 0
            )
        encoder.reconfigure(**changes)
    else:
        encoder = ContextEncoder(
            host,
            EncoderConfig(
                segment_length=args.segment_length,
                summary_length=args.summary_length,
                summary_layer=args.summary_layer,
                lora_r=args.lora_r,
                lora_alpha=2 * args.lora_r if args.lora_r else 32,
                lora_target_modules=tuple(args.lora_targets.split(",")),
                pooling=args.pooling,
                connector=args.connector,
                keep_ratio=args.keep_ratio,
                strict_ratio=args.strict_ratio,
                literal_tokens=args.literal_tokens,
                literal_selector=args.literal_selector or "rules",
                selector_layer=args.selector_layer if learned else 0,
            ),
        )
        if args.connector_init:
            encoder.init_connector_from(args.connector_init)
    if learned:
        from .training.selector import SelectorConfig, train_selector

        m = train_selector(
            encoder, args.reading, SelectorConfig(paragraphs=args.selector_paragraphs, seed=args.seed)
        )
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "selector.json").write_text(json.dumps(m, indent=2))
        print(
            f"literal selector (layer {m['layer']}, {m['tokens']} tokens of {m['paragraphs']} paragraphs): "
            f"held-out loss {m['held_out_bce']:.4f} vs {m['held_out_bce_constant']:.4f} constant; answers kept "
            f"whole on {m['val_questions']} held-out questions: {100 * m['kept_whole_learned']:.1f}% vs "
            f"{100 * m['kept_whole_rules']:.1f}% by rules"
        )
    history = train_encoder(
        encoder,
        args.corpus,
        args.out,
        cfg,
        resume=not args.no_resume,
        qa_path=args.qa or None,
        reading_path=args.reading if cfg.reading else None,
        teacher_path=teacher,
        reader_init=args.reader_init,
    )
    v = history["val"][-1]
    print(
        f"done: {history['train'][-1]['step'] if history['train'] else 0} steps in {history['seconds'] / 60:.1f} min; held-out loss "
        f"no-context {v['no_context']:.3f}, cheat sheet {v['cheat_sheet']:.3f}, wrong sheet "
        f"{v['wrong_cheat_sheet']:.3f}, text {v['text_context']:.3f}"
    )
    if "reading_f1_right" in v:
        u = "n/a" if v["reading_U"] is None else f"{v['reading_U']:.2f}"
        print(
            f"held-out reading F1: right sheets {100 * v['reading_f1_right']:.1f}, wrong sheets "
            f"{100 * v['reading_f1_wrong']:.1f}, text {100 * v['reading_f1_text']:.1f}, none "
            f"{100 * v['reading_f1_none']:.1f}; U = {u}"
        )
    print(f"encoder: {args.out}/encoder  loss curve: {args.out}/loss.png")
    return 0


def _cmd_finetune(args: argparse.Namespace) -> int:
    from .service import LLoCOService
    from .store import CheatSheetStore
    from .training.finetune import FinetuneConfig, finetune_group, read_qa

    preset = _preset(args)
    # explicit flags > the preset > the defaults (LLoCO's r8, alpha 16 on q/k/v/o)
    lora_r = args.lora_r if args.lora_r is not None else (preset.lora_r if preset else 8)
    lora_alpha = args.lora_alpha if args.lora_alpha is not None else (preset.lora_alpha if preset else 16)
    targets = (
        tuple(args.target_modules.split(","))
        if args.target_modules is not None
        else (preset.lora_target_modules if preset else ("q_proj", "k_proj", "v_proj", "o_proj"))
    )
    extra = {"lora_dropout": preset.lora_dropout} if preset else {}
    cfg = FinetuneConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        lora_r=lora_r,
        lora_alpha=lora_alpha,
        top_k=args.top_k,
        max_pairs=args.max_pairs,
        eval_every=args.eval_every,
        seed=args.seed,
        target_modules=targets,
        from_reader=not args.no_reader_init and preset is None,
        kl_weight=args.kl_weight,
        teacher=args.teacher,
        pairs=args.pairs,
        **extra,
    )
    if args.teacher is not None and not Path(args.teacher).is_file():
        raise InputError(f"--teacher {args.teacher} is not a file; train one with `lloco train-teacher`")
    store = CheatSheetStore(args.url, schema=args.schema, create=False)
    if args.qa:  # report bad QA lines before any model is loaded
        docs = {d.doc_id for d in store.list_documents(args.group, args.collection, limit=1_000_000)}
        rows, bad = read_qa(args.qa, docs)
        for line, reason in bad:
            print(f"{args.qa}:{line}: skipped: {reason}", file=sys.stderr)
        print(f"{len(rows)} usable QA rows, {len(bad)} rejected")
        if bad and args.strict:
            raise InputError(f"{len(bad)} bad rows in {args.qa} (see above); fix them or drop --strict")
    service = LLoCOService(_runtime(args), store)
    out = args.out or str(Path(config.home_dir()) / "finetune" / f"{args.collection}-{args.group}")
    history = finetune_group(
        service,
        args.group,
        collection=args.collection,
        qa_path=args.qa,
        cfg=cfg,
        out_dir=out,
        resume=not args.no_resume,
        activate=not args.no_activate,
    )
    v0, v1 = history["val"][0], history["val"][-1]
    print(
        f"adapter {history['adapter_id']} for {args.collection}/{args.group}"
        f"{' (active)' if not args.no_activate else ''}: {history['n_train']} {history['source']} pairs, "
        f"{cfg.steps} steps in {history['seconds'] / 60:.1f} min; validation answer loss "
        f"{v0['no_adapter']:.3f} without adapter -> {v1['adapter']:.3f} with it"
        + (f" (started from the reader: {v0['adapter']:.3f})" if history["init"] == "reader" else "")
        + ("; distilled from the text teacher" if history["teacher"] else "")
    )
    print(f"loss curve: {out}/loss.png")
    return 0


def _cmd_train_teacher(args: argparse.Namespace) -> int:
    from .models import load_model
    from .training.squad import read_reading_items
    from .training.teacher import TeacherConfig, train_teacher

    if args.encoder:
        raise InputError(
            "train-teacher trains a decoder adapter that reads the paragraph as text; --encoder "
            "is not used (drop it)"
        )
    try:
        cfg = TeacherConfig(
            steps=args.steps,
            batch_size=args.batch_size,
            lr=args.lr,
            warmup=args.warmup,
            lora_r=args.lora_r,
            lora_alpha=args.lora_alpha or 2 * args.lora_r,
            lora_dropout=args.lora_dropout,
            target_modules=tuple(m.strip() for m in args.target_modules.split(",") if m.strip()),
            max_answer_tokens=args.max_answer_tokens,
            max_context_tokens=args.max_context_tokens,
            val_articles=args.val_articles,
            val_questions=args.val_questions,
            eval_every=args.eval_every,
            checkpoint_every=args.checkpoint_every,
            max_minutes=args.minutes,
            seed=args.seed,
        )
    except ConfigError as exc:  # bad command-line values: user input
        raise InputError(str(exc)) from None
    read_reading_items(args.data, limit=1)  # a wrong --data folder fails here, before the model loads
    host = load_model(args.model, device=args.device, dtype=args.dtype)
    history = train_teacher(
        host, args.data, args.out, cfg, resume=not args.no_resume, progress=sys.stderr.isatty()
    )
    v, b = history["val"][-1], history["baseline"]
    print(
        f"done: {v['step']} steps in {history['seconds'] / 60:.1f} min; held-out answer loss {b['loss']:.3f} "
        f"without the adapter -> {v['loss']:.3f} with it; greedy F1 {100 * b['f1']:.1f} -> {100 * v['f1']:.1f}, "
        f"EM {100 * b['em']:.1f} -> {100 * v['em']:.1f} ({history['n_val']} held-out questions)"
    )
    print(f"adapter: {history['adapter']}  loss curve: {args.out}/loss.png")
    return 0


def _cmd_eval_encoder(args: argparse.Namespace) -> int:
    from .encoder import EncoderConfig
    from .runtime import LLoCO
    from .training.encoder_training import evaluate_encoder, read_corpus

    texts = [t for _, t in read_corpus(args.documents)]  # validated before any model loads
    fresh = (
        EncoderConfig(segment_length=args.segment_length, summary_length=args.summary_length)
        if args.segment_length
        else None
    )
    lloco = LLoCO.from_pretrained(
        args.model, encoder=args.encoder or fresh, device=args.device, dtype=args.dtype
    )
    res = evaluate_encoder(
        lloco.encoder, texts, n_pairs=args.pairs, b_len=args.continuation_length, seed=args.seed
    )
    res |= {
        "pairs": args.pairs,
        "segment_length": lloco.encoder.config.segment_length,
        "summary_length": lloco.encoder.config.summary_length,
        "continuation_length": args.continuation_length,
        "encoder_fingerprint": lloco.encoder.fingerprint,
    }
    print(json.dumps(res, indent=2))
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from .evaluation.cli import run

    return run(args, _runtime)


def _cmd_eval_report(args: argparse.Namespace) -> int:
    from .evaluation.report import (
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
    print("\n\n".join(tables))
    if args.json:
        rows = summary_rows(reports, args.baseline)
        out = rows if u_rows is None else {"rows": rows, "utilisation": u_rows}
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for docs and tests)."""
    p = argparse.ArgumentParser(
        prog="lloco",
        description="LLoCO: answer over long documents with compressed "
        "cheat sheets, per-group LoRA adapters and Postgres storage.",
    )
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--model", default=None, help="decoder: 'default' (SmolLM2-135M), a local HF folder or a .gguf file"
    )
    common.add_argument("--encoder", default=None, help="encoder folder (default: the shipped encoder)")
    common.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    common.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (default: by device)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    preset_help = (
        "named settings, overridden by explicit flags; `lloco info --preset NAME` shows what one "
        "sets (lloco-paper: LLaMA-2-chat prompt, 50 summary vectors per 1,536 tokens accumulated over "
        "a document, group LoRA r8 alpha16 on q/k/v/o)"
    )
    s = sub.add_parser(
        "info",
        parents=[common],
        help="show the model, encoder and fingerprints",
        description="Show the model, encoder and fingerprints. With --preset alone: what the preset "
        "sets, without loading a model; with --model or --encoder too: also how the encoder "
        "differs from it.",
    )
    s.add_argument("--preset", default=None, metavar="NAME", help=preset_help)
    s.set_defaults(func=_cmd_info)

    s = sub.add_parser("encoder", help="import an encoder from another format")
    es = s.add_subparsers(dest="encoder_command", metavar="ACTION", required=True)
    s = es.add_parser(
        "import",
        help="make a lloco encoder folder from an AutoCompressor checkpoint folder",
        description="Read an AutoCompressor-Llama checkpoint folder (config.json with the summary "
        "fields summary_length / accumulate_summary / segment_lengths, weights with "
        "embed_summary.weight as safetensors, sharded or not, or pytorch_model*.bin read with "
        "torch.load(weights_only=True) only) and write a lloco encoder folder with its "
        "fingerprint. The encoder runs on the checkpoint's own Llama: pass the same folder as "
        "--model to the other commands.",
    )
    s.add_argument("dir", metavar="DIR", help="the checkpoint folder, e.g. AutoCompressor-Llama-2-7b-6k")
    s.add_argument("--out", required=True, metavar="ENC", help="a new (or empty) folder for the encoder")
    s.add_argument(
        "--segment-length",
        type=int,
        default=None,
        metavar="N",
        help="tokens per segment (default: "
        "the preset's, else the checkpoint config's segment_lengths[0], else 1536)",
    )
    s.add_argument(
        "--accumulate",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="prepend a "
        "document's earlier summaries to its later segments (default: the preset's, else the "
        "checkpoint's accumulate_summary)",
    )
    s.add_argument(
        "--preset",
        default=None,
        metavar="NAME",
        help=preset_help + "; the checkpoint's summary vector count must match the preset's",
    )
    s.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    s.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (default: by device)")
    s.set_defaults(func=_cmd_encoder_import)

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
    s.add_argument(
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
    s.add_argument("--serve-group", default=None, metavar="GROUP", help="group the --serve-url requests ask")
    s.add_argument(
        "--serve-requests", type=int, default=16, help="requests per concurrency level (default 16)"
    )
    s.add_argument("--serve-tokens", type=int, default=16, help="max_new_tokens per request (default 16)")
    s.set_defaults(func=_cmd_bench)

    s = sub.add_parser(
        "ask",
        parents=[common],
        help="answer a question over an ingested group",
        description="Retrieve the group's best chunks, splice their cheat sheets into the "
        "prompt, apply the group's active adapter and answer (streamed).",
    )
    s.add_argument("question", help="the question")
    s.add_argument("--group", required=True, help="document group to search")
    s.add_argument("--collection", default="default", help="collection of the group (default: default)")
    s.add_argument("--top-k", type=int, default=4, help="chunks to retrieve (default 4)")
    s.add_argument("--mode", choices=["dense", "fulltext", "hybrid"], default="hybrid", help="retrieval mode")
    s.add_argument("--no-adapter", action="store_true", help="answer without the group's adapter")
    s.add_argument("--max-new-tokens", type=int, default=64, help="answer length limit (default 64)")
    s.add_argument(
        "--json",
        action="store_true",
        help="print {answer, sources, adapter_id, context_tokens, raw_context_tokens} as JSON",
    )
    s.add_argument("--url", default=None, help="Postgres URL (default: LLOCO_DATABASE_URL or embedded)")
    s.add_argument("--schema", default=None, help="schema (default: LLOCO_SCHEMA or lloco)")
    s.add_argument(
        "--preset",
        default=None,
        metavar="NAME",
        help=preset_help + " (use the one the group's adapter was fine-tuned with)",
    )
    s.set_defaults(func=_cmd_ask)
    _serve_parser(sub, common)

    s = sub.add_parser(
        "train-encoder",
        parents=[common],
        help="pre-train the context encoder on a text corpus",
        description="Train the summary embeddings and an encoder LoRA so cheat sheets carry "
        "their segment's content: continuation (AutoCompressor) and reconstruction losses "
        "through the frozen decoder. Resumable; writes OUT/encoder, OUT/loss.png, "
        "OUT/history.json.",
    )
    s.add_argument("--corpus", required=True, help="folder of .txt/.md/.jsonl files")
    s.add_argument("--out", default="lloco-encoder-run", help="output folder (checkpoints, artifact, plot)")
    s.add_argument("--segment-length", type=int, default=128)
    s.add_argument("--summary-length", type=int, default=16)
    s.add_argument(
        "--summary-layer",
        type=int,
        default=None,
        help="layer to read summaries from (default: final layer after norm)",
    )
    s.add_argument(
        "--pooling",
        choices=["summary", "mean"],
        default="summary",
        help="summary: learned summary "
        "tokens (AutoCompressor); mean: average the hidden states over --summary-length groups of "
        "tokens (a fresh encoder only)",
    )
    s.add_argument(
        "--keep-ratio",
        action="store_true",
        help="mean pooling: short segments (a document's tail) "
        "get ceil(tokens / ratio) vectors instead of up to --summary-length (also turns it on for a "
        "mean-pooling --encoder)",
    )
    s.add_argument(
        "--literal-tokens",
        type=int,
        default=0,
        metavar="N",
        help="mean pooling: keep N of a segment's "
        "tokens as themselves beside the pooled vectors (names and numbers first; they count as context "
        "positions: 128 tokens -> 16 vectors + 16 literal tokens is 4x)",
    )
    s.add_argument(
        "--literal-selector",
        choices=["rules", "learned"],
        default=None,
        help="how literal tokens are "
        "chosen: rules (numbers, capitalised words) or learned (a linear scorer on the hidden states "
        "after --selector-layer, fitted on --reading's answer spans before training; also for an "
        "--encoder)",
    )
    s.add_argument(
        "--selector-layer",
        type=int,
        default=6,
        metavar="L",
        help="learned selector: decoder layer "
        "whose hidden states it scores (compression then runs the first L layers)",
    )
    s.add_argument(
        "--selector-paragraphs",
        type=int,
        default=800,
        metavar="N",
        help="learned selector: training paragraphs from --reading",
    )
    s.add_argument(
        "--strict-ratio",
        action="store_true",
        help="with --keep-ratio: a short segment gets at most "
        "floor(tokens / ratio) positions, so every document keeps the ratio (also for an --encoder)",
    )
    s.add_argument(
        "--connector-init",
        default=None,
        metavar="ENC",
        help="start the connector from this encoder "
        "folder's connector (same decoder), e.g. to change the ratio of a trained encoder",
    )
    s.add_argument(
        "--connector",
        choices=["none", "linear", "mlp"],
        default="none",
        help="trainable map from encoder states to decoder embeddings (a fresh encoder only)",
    )
    s.add_argument("--lora-r", type=int, default=16, help="encoder LoRA rank (0: summary embeddings only)")
    s.add_argument(
        "--lora-targets",
        default="q_proj,k_proj,v_proj,o_proj",
        help="modules of the encoder LoRA, comma-separated (add gate_proj,up_proj,down_proj for the MLPs)",
    )
    s.add_argument(
        "--steps",
        type=int,
        default=1000,
        help="optimizer steps (the most, with --minutes); 0 "
        "evaluates and writes the encoder as it starts, e.g. a new ratio built with --connector-init "
        "and --reader-init",
    )
    s.add_argument(
        "--minutes",
        type=float,
        default=None,
        help="train for about this long: the step count and "
        "learning-rate schedule are fitted to the pace of the first steps",
    )
    s.add_argument("--batch-size", type=int, default=4)
    s.add_argument("--lr", type=float, default=1e-3)
    s.add_argument("--warmup", type=int, default=50)
    s.add_argument("--continuation-length", type=int, default=128)
    s.add_argument("--continuation-weight", type=float, default=1.0)
    s.add_argument("--reconstruction-weight", type=float, default=1.0)
    s.add_argument(
        "--distill-weight",
        type=float,
        default=0.0,
        help="KL from the decoder reading the segment as "
        "text to the decoder reading its cheat sheet (0: off)",
    )
    s.add_argument(
        "--qa",
        default=None,
        help="QA JSONL ({doc_id, question, answers}, doc_id = a corpus file's "
        "stem) for the QA objective: cheat sheet of a window holding the answer + question -> answer",
    )
    s.add_argument("--qa-weight", type=float, default=0.0, help="weight of the QA objective (needs --qa)")
    s.add_argument(
        "--reader-lora-r",
        type=int,
        default=0,
        help="rank of a reader LoRA on the decoder trained "
        "jointly with the encoder, written as OUT/encoder/reader.safetensors (0: frozen decoder)",
    )
    s.add_argument("--reader-init", default=None, help="start the reader LoRA from this adapter file")
    s.add_argument(
        "--reading",
        default=None,
        metavar="DIR",
        help="SQuAD-layout folder (paragraphs.jsonl + "
        "qa.jsonl, e.g. shared/corpus/squad_train) for the answer objectives: question about a "
        "paragraph read from its cheat sheets -> gold answer",
    )
    s.add_argument(
        "--reading-weight", type=float, default=0.0, help="answer cross-entropy weight (needs --reading)"
    )
    s.add_argument(
        "--reading-kl-weight",
        type=float,
        default=0.0,
        help="KL to the text-reading teacher on the "
        "answer tokens (needs --reading; teacher from --teacher or the shipped one)",
    )
    s.add_argument("--teacher", default=None, help="teacher adapter file (`lloco train-teacher`)")
    s.add_argument("--reading-batch-size", type=int, default=8)
    s.add_argument("--reading-max-tokens", type=int, default=256, help="leave out longer paragraphs")
    s.add_argument(
        "--reading-val",
        type=int,
        default=32,
        help="held-out reading questions (greedy F1 and U at each evaluation)",
    )
    s.add_argument("--eval-every", type=int, default=100)
    s.add_argument("--eval-pairs", type=int, default=24)
    s.add_argument("--checkpoint-every", type=int, default=50)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint in --out")
    s.set_defaults(func=_cmd_train_encoder)

    s = sub.add_parser(
        "finetune",
        parents=[common],
        help="train a LoRA adapter for a document group",
        description="Fine-tune one LoRA for a group on [retrieved cheat sheets | question] -> "
        "answer through the serving prompt template (loss on the answer only). Pairs come from "
        "--qa JSONL ({doc_id, question, answers}) or, without it, from the group's own chunks: "
        "extractive who/what/when/how-many questions generated from their sentences (answers "
        "are spans of the chunk; the source chunk is always in the pair's context), or with "
        "--pairs self-supervised, quote-the-first-sentence / continue-the-snippet pairs. "
        "The adapter is stored as a new version and activated atomically.",
    )
    s.add_argument("--group", required=True)
    s.add_argument("--collection", default="default")
    s.add_argument("--qa", default=None, help="QA JSONL; bad lines are reported and skipped")
    s.add_argument("--strict", action="store_true", help="abort if the QA file has bad lines")
    s.add_argument(
        "--pairs",
        choices=("auto", "generated", "self-supervised"),
        default="auto",
        help="training pairs: auto (--qa when given, else generated), generated (extractive "
        "questions from the group's chunks, topped up with self-supervised pairs when too few come "
        "out) or self-supervised (quote the first sentence / continue a snippet; the old behaviour)",
    )
    s.add_argument("--steps", type=int, default=300)
    s.add_argument("--batch-size", type=int, default=4)
    s.add_argument("--lr", type=float, default=5e-4)
    s.add_argument(
        "--lora-r",
        type=int,
        default=None,
        help="LoRA rank of a fresh adapter (default: the "
        "preset's, else 8; an adapter started from the encoder's reader keeps the reader's rank and "
        "targets)",
    )
    s.add_argument("--lora-alpha", type=int, default=None, help="default: the preset's, else 16")
    s.add_argument(
        "--target-modules",
        default=None,
        help="comma-separated (default: the preset's, else q_proj,k_proj,v_proj,o_proj)",
    )
    s.add_argument(
        "--preset",
        default=None,
        metavar="NAME",
        help=preset_help + "; with a preset the adapter "
        "starts fresh with the preset's LoRA, not from the encoder's reader",
    )
    s.add_argument(
        "--no-reader-init",
        action="store_true",
        help="start from a fresh LoRA even when the encoder "
        "has a reader adapter (default: start from the reader, which already reads cheat sheets)",
    )
    s.add_argument(
        "--kl-weight",
        type=float,
        default=1.0,
        help="weight of the KL to the text-reading teacher on "
        "the answer tokens, the teacher reading the same chunks as text (default 1; 0: off; used "
        "only where a teacher exists for the decoder)",
    )
    s.add_argument(
        "--teacher",
        default=None,
        metavar="FILE",
        help="teacher adapter file (default: the shipped "
        "teacher when it fits the decoder; `lloco train-teacher` makes one)",
    )
    s.add_argument("--top-k", type=int, default=2, help="chunks retrieved per question (as when serving)")
    s.add_argument("--max-pairs", type=int, default=2000)
    s.add_argument("--eval-every", type=int, default=50)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", default=None, help="checkpoints, history and loss.png (default under LLOCO_HOME)")
    s.add_argument("--no-resume", action="store_true")
    s.add_argument("--no-activate", action="store_true", help="register the adapter without activating it")
    s.add_argument("--url", default=None)
    s.add_argument("--schema", default=None)
    s.set_defaults(func=_cmd_finetune)

    s = sub.add_parser(
        "train-teacher",
        parents=[common],
        help="train the text-reading teacher adapter on SQuAD",
        description="Train a LoRA on the decoder to answer SQuAD-style questions from the paragraph "
        "as text (serving prompt template, loss on the short gold answer only): the fair text "
        "baseline of `lloco eval` (--text-adapter) and the teacher of `lloco train-encoder "
        "--reading-kl-weight`. Resumable; writes OUT/adapter.safetensors, OUT/history.json, "
        "OUT/loss.png and OUT/checkpoint/. Validation on held-out articles: answer loss and greedy "
        "F1/EM, with and without the adapter.",
    )
    s.add_argument(
        "--data",
        required=True,
        metavar="DIR",
        help="SQuAD-layout folder (paragraphs.jsonl + qa.jsonl, e.g. shared/corpus/squad_train)",
    )
    s.add_argument(
        "--out",
        default="lloco-teacher-run",
        metavar="DIR",
        help="output folder (adapter, history, loss plot, checkpoint; default lloco-teacher-run)",
    )
    s.add_argument(
        "--steps", type=int, default=2000, help="optimizer steps (the most, with --minutes; default 2000)"
    )
    s.add_argument(
        "--minutes",
        type=float,
        default=None,
        help="train for about this long: the step count and "
        "learning-rate schedule are fitted to the pace of the first steps",
    )
    s.add_argument("--batch-size", type=int, default=8, help="questions per step (default 8)")
    s.add_argument("--lr", type=float, default=5e-4, help="peak learning rate (default 5e-4)")
    s.add_argument("--warmup", type=int, default=20, help="warm-up steps (default 20)")
    s.add_argument("--lora-r", type=int, default=16, help="LoRA rank (default 16)")
    s.add_argument("--lora-alpha", type=int, default=None, help="LoRA alpha (default 2 x rank)")
    s.add_argument("--lora-dropout", type=float, default=0.0)
    s.add_argument(
        "--target-modules",
        default="q_proj,k_proj,v_proj,o_proj",
        help="decoder modules with a LoRA, comma-separated",
    )
    s.add_argument(
        "--max-answer-tokens", type=int, default=24, help="gold answers are cut to this many tokens"
    )
    s.add_argument(
        "--max-context-tokens",
        type=int,
        default=384,
        help="leave out paragraphs longer than this (about 1%% of SQuAD at 384)",
    )
    s.add_argument("--val-articles", type=int, default=8, help="whole articles held out for validation")
    s.add_argument(
        "--val-questions",
        type=int,
        default=64,
        help="held-out questions scored at each validation (greedy decoding: about 1 s each on 2 CPU cores)",
    )
    s.add_argument("--eval-every", type=int, default=100, help="validate every N steps (and at the end)")
    s.add_argument(
        "--checkpoint-every", type=int, default=25, help="checkpoint and rewrite the adapter every N steps"
    )
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint in --out")
    s.set_defaults(func=_cmd_train_teacher)

    s = sub.add_parser(
        "eval-encoder",
        parents=[common],
        help="held-out LM loss with and without cheat sheets",
        description="Loss (nats/token) of a text window B given: nothing; the cheat sheet of the "
        "preceding window A; the cheat sheet of another window (control); A as plain text "
        "(ceiling).",
    )
    s.add_argument("documents", help="folder or .jsonl/.txt file of held-out documents")
    s.add_argument("--pairs", type=int, default=64)
    s.add_argument(
        "--segment-length",
        type=int,
        default=None,
        help="without --encoder: evaluate a fresh (untrained) encoder with this segment length",
    )
    s.add_argument("--summary-length", type=int, default=16, help="with --segment-length")
    s.add_argument("--continuation-length", type=int, default=64)
    s.add_argument("--seed", type=int, default=1234)
    s.set_defaults(func=_cmd_eval_encoder)

    from .evaluation import cli as eval_cli  # `lloco eval` (arguments live with the harness)

    s = sub.add_parser(
        "eval",
        parents=[common],
        help="score answers on a dataset folder in several context modes",
        description=eval_cli.DESCRIPTION,
    )
    eval_cli.add_arguments(s)
    s.set_defaults(func=_cmd_eval)

    s = sub.add_parser(
        "eval-report",
        help="tables with 95%% bootstrap intervals from saved `lloco eval --json` runs",
        description="Read `lloco eval --json` files (no model is loaded) and print, per dataset, each "
        "mode's headline score with a 95%% bootstrap confidence interval and, with --baseline, its "
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
        help="also write the rows as JSON (with --u: {rows, utilisation})",
    )
    s.set_defaults(func=_cmd_eval_report)

    try:  # storage commands (db, ingest, ...) live with the store
        from .store.cli import register
    except ImportError:
        pass
    else:
        register(sub)
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
    try:
        return int(args.func(args) or 0)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except LLoCOError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
