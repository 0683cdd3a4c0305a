"""Training commands: ``lloco train-encoder``, ``finetune`` (a group's LoRA adapter), ``train-teacher`` (the
text-reading teacher adapter) and ``eval-encoder`` (held-out LM loss with and without cheat sheets)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .. import config
from ..errors import ConfigError, InputError
from . import _common
from ._common import (
    add_collection_option,
    add_db_options,
    add_preset_option,
    open_store,
    preset_of,
    print_json,
)


def cmd_train_encoder(args: argparse.Namespace) -> int:
    from ..encoder import ContextEncoder, EncoderConfig
    from ..models import load_model
    from ..training import EncoderTrainingConfig, train_encoder

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
        reading_focus=args.reading_focus,
        freeze_encoder=args.freeze_encoder,
    )
    teacher = args.teacher
    if cfg.reading_kl_weight > 0 and teacher is None:
        from ..runtime import shipped_teacher_adapter

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
        from ..training.selector import SelectorConfig, train_selector

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


def cmd_finetune(args: argparse.Namespace) -> int:
    from ..service import LLoCOService
    from ..training.finetune import FinetuneConfig, finetune_group, read_qa

    preset = preset_of(args)
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
    store = open_store(args)
    if args.qa:  # report bad QA lines before any model is loaded
        docs = {d.doc_id for d in store.list_documents(args.group, args.collection, limit=1_000_000)}
        rows, bad = read_qa(args.qa, docs)
        for line, reason in bad:
            print(f"{args.qa}:{line}: skipped: {reason}", file=sys.stderr)
        print(f"{len(rows)} usable QA rows, {len(bad)} rejected")
        if bad and args.strict:
            raise InputError(f"{len(bad)} bad rows in {args.qa} (see above); fix them or drop --strict")
    service = LLoCOService(_common.load_runtime(args), store)
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


def cmd_train_teacher(args: argparse.Namespace) -> int:
    from ..models import load_model
    from ..training.squad import read_reading_items
    from ..training.teacher import TeacherConfig, train_teacher

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


def cmd_eval_encoder(args: argparse.Namespace) -> int:
    from ..encoder import EncoderConfig
    from ..runtime import LLoCO
    from ..training.encoder_training import evaluate_encoder, read_corpus

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
    print_json(res)
    return 0


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
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
    s.add_argument(
        "--freeze-encoder",
        action="store_true",
        help="train only the reader adapter: the encoder keeps its weights and fingerprint, so stores "
        "made with it stay valid (needs --reader-lora-r or --reader-init)",
    )
    s.add_argument(
        "--reading-focus",
        action="store_true",
        help="train and validate on the sheets as lloco serves them: literal tokens chosen for each "
        "question at answer time (needs mean pooling of input embeddings with literal tokens)",
    )
    s.add_argument("--eval-every", type=int, default=100)
    s.add_argument("--eval-pairs", type=int, default=24)
    s.add_argument("--checkpoint-every", type=int, default=50)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint in --out")
    s.set_defaults(func=cmd_train_encoder)

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
    add_collection_option(s)
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
    add_preset_option(
        s, "; with a preset the adapter starts fresh with the preset's LoRA, not from the encoder's reader"
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
    add_db_options(s)
    s.set_defaults(func=cmd_finetune)

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
    s.set_defaults(func=cmd_train_teacher)

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
    s.set_defaults(func=cmd_eval_encoder)
