"""``lloco finetune``: one LoRA per document group, trained to answer from compressed contexts.

Each training pair is ``[cheat sheets of the chunks serving would retrieve | question] -> answer`` rendered
through the runtime's prompt template (the one serving uses), with the loss on the answer tokens only. Pairs
come from a QA JSONL (``{"doc_id", "question", "answers"}``; bad lines are reported one by one and skipped)
or, for groups without QA data, are built from the group's own chunks: extractive who/what/when/how-many
questions generated from their sentences (:mod:`.questions`; the answer a span of the chunk, which is always
among the pair's chunks), or with ``pairs="self-supervised"`` quote the first sentence / continue a snippet.
The result is registered in the store as a new adapter version and activated atomically.

Where the encoder has a reader adapter (``reader.safetensors``, trained with it to read its cheat sheets),
the group's LoRA starts from the reader (its rank and target modules), so the group adapter keeps the reading
skill and adds the group's knowledge and answer format. Where a text-reading teacher exists for the decoder
(``lloco train-teacher``; one ships for the default model), the loss adds token-level KL(teacher || student)
on the answer tokens, the teacher reading the same chunks as text (Feldman & Artzi 2025; PISCO).
"""

from __future__ import annotations

import json
import logging
import random
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from ..adapters import AdapterArtifact, lora_config_from_dict
from ..errors import AdapterError, ConfigError, InputError
from ..request import reading_order
from ..runtime import LLoCO
from ..store import DEFAULT_MODE
from .common import (
    load_optimizer,
    lr_at,
    plot_curves,
    read_checkpoint,
    save_optimizer,
    token_kl,
    write_checkpoint,
)
from .encoder_training import load_teacher

log = logging.getLogger(__name__)
TRAIN_ADAPTER = "lloco-finetune"
PAIR_SOURCES = ("auto", "generated", "self-supervised")
#: fewer generated questions than this (or than max_pairs) and self-supervised pairs are added
MIN_GENERATED = 32


@dataclass
class FinetuneConfig:
    """LoRA and optimisation settings (LLoCO's defaults: r=8, alpha=16 on q/k/v/o)."""

    steps: int = field(default=300, metadata={"help": "optimizer steps"})
    batch_size: int = field(default=4, metadata={"help": "pairs per step (gradient accumulation)"})
    lr: float = 5e-4
    warmup: int = 20
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    top_k: int = field(default=2, metadata={"help": "chunks retrieved per question, as at serving time"})
    mode: str = DEFAULT_MODE
    max_pairs: int = field(default=2000, metadata={"help": "cap on training pairs (sampled)"})
    val_pairs: int = 32
    eval_every: int = 50
    checkpoint_every: int = 25
    max_answer_tokens: int = 32
    seed: int = 0
    from_reader: bool = field(
        default=True,
        metadata={
            "help": "start from the encoder's reader adapter when it has one (its LoRA rank/targets replace lora_r, "
            "lora_alpha and target_modules)"
        },
    )
    kl_weight: float = field(
        default=1.0,
        metadata={
            "help": "weight of the KL to the text-reading teacher (0: off; used only where a teacher exists)"
        },
    )
    teacher: str | None = field(
        default=None,
        metadata={"help": "teacher adapter file (default: the shipped teacher when it fits the decoder)"},
    )
    pairs: str = field(
        default="auto",
        metadata={
            "help": "training pairs without QA data: auto (the QA file when given, else generated), generated "
            "(extractive questions made from the group's chunks) or self-supervised (quote / continue)"
        },
    )

    def __post_init__(self) -> None:
        if self.pairs not in PAIR_SOURCES:
            raise ConfigError(f"pairs must be one of {', '.join(PAIR_SOURCES)}, got {self.pairs!r}")
        if self.steps < 1 or self.batch_size < 1 or self.lora_r < 1 or self.top_k < 1:
            raise ConfigError("steps, batch_size, lora_r and top_k must be >= 1")
        if not isinstance(self.kl_weight, (int, float)) or self.kl_weight < 0:
            raise ConfigError(f"kl_weight must be a number >= 0, got {self.kl_weight!r}")
        self.target_modules = tuple(self.target_modules)


@dataclass
class QARow:
    line: int
    doc_id: str
    question: str
    answers: list[str]


@dataclass
class Pair:
    question: str
    answer: str
    chunk_ids: list[int]
    text: str = ""  # the same chunks as text, in the same order (what the teacher reads)


def read_qa(
    path: str | Path, known_docs: set[str], *, unknown: str = "not ingested in this group"
) -> tuple[list[QARow], list[tuple[int, str]]]:
    """Valid rows and ``(line, reason)`` for every rejected line (malformed, unknown doc, empty answers);
    ``unknown`` says where a known ``doc_id`` would have come from."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"QA file {p} does not exist")
    rows, bad = [], []
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise InputError(f"QA file {p} is not UTF-8 text") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as exc:
            bad.append((n, f"not valid JSON ({exc.msg})"))
            continue
        if not isinstance(obj, dict):
            bad.append((n, "not a JSON object"))
            continue
        doc, q, answers = obj.get("doc_id"), obj.get("question"), obj.get("answers")
        if not isinstance(doc, str) or not doc:
            bad.append((n, "missing doc_id"))
        elif doc not in known_docs:
            bad.append((n, f"unknown doc_id {doc!r} ({unknown})"))
        elif not isinstance(q, str) or not q.strip():
            bad.append((n, "missing or empty question"))
        elif (
            not isinstance(answers, list)
            or not answers
            or not all(isinstance(a, str) and a.strip() for a in answers)
        ):
            bad.append((n, "answers must be a non-empty list of non-empty strings"))
        else:
            rows.append(QARow(n, doc, q.strip(), [a.strip() for a in answers]))
    return rows, bad


_SENT = re.compile(r"(?<=[.!?])\s+")


def self_supervised_pairs(chunks, rng: random.Random, limit: int) -> list[Pair]:
    """Questions about a chunk that only its content answers: its first sentence, and what follows a
    snippet taken from its middle."""
    pairs = []
    for c in chunks:
        text = " ".join(c.text.split())
        sentences = [s for s in _SENT.split(text) if len(s.split()) >= 4]
        if sentences:
            pairs.append(
                Pair(
                    "Quote the first sentence of the context.",
                    " ".join(sentences[0].split()[:30]),
                    [c.chunk_id],
                    c.text,
                )
            )
        words = text.split()
        if len(words) >= 24:
            i = rng.randrange(4, len(words) - 16)
            snippet, follow = " ".join(words[i - 4 : i]), " ".join(words[i : i + 8])
            pairs.append(
                Pair(
                    f'In the context, which words come right after "{snippet}"?', follow, [c.chunk_id], c.text
                )
            )
    rng.shuffle(pairs)
    return pairs[:limit]


@contextmanager
def lora_dropout_off(model: torch.nn.Module, adapter: str) -> Iterator[None]:
    """``adapter``'s LoRA dropout in eval mode for the block (peft injects modules in training mode, so
    validation would otherwise see random dropout), back in training mode afterwards."""
    dropouts = [
        m.lora_dropout[adapter]
        for m in model.modules()
        if isinstance(getattr(m, "lora_dropout", None), torch.nn.ModuleDict) and adapter in m.lora_dropout
    ]
    for d in dropouts:
        d.eval()
    try:
        yield
    finally:
        for d in dropouts:
            d.train()


class _Batcher:
    """Renders pairs through the serving template and computes the answer-only loss (plus, with a teacher,
    the KL to the teacher reading the same chunks as text)."""

    def __init__(self, lloco: LLoCO, service, cfg: FinetuneConfig, teacher: str | None = None) -> None:
        self.lloco, self.service, self.cfg, self.teacher = lloco, service, cfg, teacher
        self._sheets: dict[int, torch.Tensor] = {}

    def sheets(self, chunk_ids: list[int]) -> list[torch.Tensor]:
        missing = [i for i in chunk_ids if i not in self._sheets]
        if missing:
            for i, t in zip(missing, self.service.cheat_sheets(missing), strict=True):
                self._sheets[i] = t
        return [self._sheets[i] for i in chunk_ids]

    def _target(self, pair: Pair) -> torch.Tensor:
        tok = self.lloco.host.tokenizer
        ids = tok(pair.answer, add_special_tokens=False)["input_ids"][: self.cfg.max_answer_tokens]
        eos = tok.eos_token_id
        return torch.tensor(ids + ([eos] if eos is not None else []), device=self.lloco.host.device)

    def _logits(self, context, pair: Pair, target: torch.Tensor, adapter: str | None) -> torch.Tensor:
        """Logits predicting each answer token, the answer teacher-forced after the prompt."""
        host = self.lloco.host
        embeds, _, _ = self.lloco.generator.embed(self.lloco.prompt(pair.question, context))
        x = torch.cat([embeds[0], host.model.get_input_embeddings()(target)], dim=0).unsqueeze(0)
        p = embeds.shape[1]
        with host.using(adapter) as model:
            return model(inputs_embeds=x, use_cache=False).logits[0, p - 1 : p - 1 + len(target)].float()

    def loss(self, pair: Pair, adapter: str | None, *, kl: bool = True) -> torch.Tensor:
        target = self._target(pair)
        logits = self._logits(self.sheets(pair.chunk_ids), pair, target, adapter)
        loss = F.cross_entropy(logits, target)
        if kl and self.teacher is not None and self.cfg.kl_weight > 0 and pair.text.strip():
            with torch.no_grad():
                teacher = self._logits(pair.text, pair, target, self.teacher)
            loss = loss + self.cfg.kl_weight * token_kl(logits, teacher)
        return loss


def _load_teacher(lloco: LLoCO, cfg: FinetuneConfig) -> tuple[str | None, Path | None]:
    """Inject the teacher to distil from: ``cfg.teacher``, else the shipped one when it fits the decoder (else
    none, said in the log). Returns (adapter name, file)."""
    if cfg.kl_weight <= 0:
        return None, None
    if cfg.teacher is not None:
        return load_teacher(lloco.host, cfg.teacher), Path(cfg.teacher)
    from ..runtime import shipped_teacher_adapter

    path = shipped_teacher_adapter()
    if path is None:
        return None, None
    try:
        return load_teacher(lloco.host, path), path
    except ConfigError:  # the shipped teacher is for another base model
        log.info("no teacher for this decoder (the shipped one is for another base model): no distillation")
    except AdapterError as exc:
        log.warning(
            "the shipped teacher adapter %s is unreadable (%s); fine-tuning without distillation", path, exc
        )
    return None, None


def _retrieved_pair(
    service, group: str, collection: str, cfg: FinetuneConfig, question: str, answer: str, source=None
) -> Pair | None:
    """A pair whose chunks are those retrieved for ``question`` (top_k, in reading order), with ``source`` (the
    chunk the answer is in, when known) replacing the last-ranked hit if retrieval missed it."""
    res = service.retrieve(
        question, group=group, collection=collection, top_k=cfg.top_k, mode=cfg.mode, load_cheat_sheets=False
    )
    chunks = list(res.chunks)
    if source is not None and all(c.chunk_id != source.chunk_id for c in chunks):
        chunks = chunks[: cfg.top_k - 1] + [source]
    ordered = reading_order(chunks)
    if not ordered:
        return None
    return Pair(question, answer, [c.chunk_id for c in ordered], "\n\n".join(c.text for c in ordered))


def _generated_pairs(
    service,
    group: str,
    collection: str,
    chunks,
    rng: random.Random,
    cfg: FinetuneConfig,
    *,
    progress: bool = True,
) -> tuple[list[Pair], list[tuple[int, str]], str]:
    """Pairs for extractive questions generated from the group's chunks (:mod:`.questions`), retrieved like QA
    rows; topped up with self-supervised pairs when fewer than :data:`MIN_GENERATED` questions come out."""
    from tqdm.auto import tqdm

    from .questions import generate_questions, kinds_of

    questions = generate_questions(chunks, seed=cfg.seed, limit=cfg.max_pairs)
    by_id = {c.chunk_id: c for c in chunks}
    log.info("generated %d questions from %d chunks: %s", len(questions), len(chunks), kinds_of(questions))
    pairs = [
        p
        for q in tqdm(questions, desc="retrieving contexts", disable=not progress, unit="q")
        if (p := _retrieved_pair(service, group, collection, cfg, q.question, q.answer, by_id[q.chunk_id]))
    ]
    if len(pairs) >= min(MIN_GENERATED, cfg.max_pairs):
        return pairs, [], "generated"
    extra = self_supervised_pairs(chunks, rng, cfg.max_pairs - len(pairs))
    return (
        pairs + extra,
        [],
        (
            f"generated+self-supervised (only {len(pairs)} generated questions, "
            f"{len(extra)} self-supervised pairs added)"
        ),
    )


def build_pairs(
    lloco: LLoCO,
    service,
    group: str,
    collection: str,
    qa_path: str | None,
    cfg: FinetuneConfig,
    *,
    progress: bool = True,
) -> tuple[list[Pair], list[tuple[int, str]], str]:
    """Training pairs and the rejected QA lines; ``source`` says where the pairs came from: ``qa`` (the QA
    file, with ``cfg.pairs == "auto"``), ``generated`` (questions generated from the group's chunks, each pair's
    chunks including the one its answer is in; ``generated+self-supervised (...)`` when too few came out) or
    ``self-supervised``."""
    from tqdm.auto import tqdm

    rng = random.Random(cfg.seed)
    docs = {d.doc_id for d in service.store.list_documents(group, collection, limit=1_000_000)}
    if not docs:
        raise InputError(f"group {group!r} has no documents; run `lloco ingest PATH --group {group}` first")
    if qa_path and cfg.pairs != "auto":
        raise ConfigError(
            f"pairs={cfg.pairs!r} builds pairs from the group's chunks and would ignore the QA "
            f"file {qa_path}; use pairs='auto' with a QA file, or drop the QA file"
        )
    if qa_path:
        rows, bad = read_qa(qa_path, docs)
        if not rows:
            raise InputError(f"no usable rows in {qa_path} ({len(bad)} rejected); see the report above")
        rng.shuffle(rows)
        rows = rows[: cfg.max_pairs]
        pairs = [
            p
            for r in tqdm(rows, desc="retrieving contexts", disable=not progress, unit="q")
            if (p := _retrieved_pair(service, group, collection, cfg, r.question, r.answers[0]))
        ]
        return pairs, bad, "qa"
    chunks = service.store.list_chunks(group, collection)
    if cfg.pairs == "self-supervised":
        return self_supervised_pairs(chunks, rng, cfg.max_pairs), [], "self-supervised"
    return _generated_pairs(service, group, collection, chunks, rng, cfg, progress=progress)


@torch.enable_grad()
def finetune_group(
    service,
    group: str,
    *,
    collection: str = "default",
    qa_path: str | None = None,
    cfg: FinetuneConfig | None = None,
    out_dir: str | Path | None = None,
    resume: bool = True,
    activate: bool = True,
    progress: bool = True,
) -> dict:
    """Train a LoRA for ``group`` and register it as a new version (active when ``activate``)."""
    from peft import LoraConfig, set_peft_model_state_dict
    from tqdm.auto import tqdm

    cfg = cfg or FinetuneConfig()
    lloco: LLoCO = service.lloco
    host = lloco.host
    out = Path(out_dir) if out_dir else None
    pairs, bad, source = build_pairs(lloco, service, group, collection, qa_path, cfg, progress=progress)
    if len(pairs) < 2:
        raise InputError(f"only {len(pairs)} training pair(s) for group {group!r}; add documents or QA rows")
    rng = random.Random(cfg.seed)
    rng.shuffle(pairs)
    n_val = min(cfg.val_pairs, max(1, len(pairs) // 10))
    val, train = pairs[:n_val], pairs[n_val:]

    if TRAIN_ADAPTER in host.adapter_names():
        host.delete_adapter(TRAIN_ADAPTER)
    reader = (
        AdapterArtifact.from_bytes(lloco.encoder.reader)
        if (cfg.from_reader and lloco.encoder.reader)
        else None
    )
    if reader is not None:  # the group adapter starts as the reader: its rank and targets
        lora = lora_config_from_dict({**reader.lora_config, "lora_dropout": cfg.lora_dropout})
    else:
        lora = LoraConfig(
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules=list(cfg.target_modules),
            bias="none",
        )
    host.add_adapter(TRAIN_ADAPTER, lora)
    if reader is not None:
        set_peft_model_state_dict(host.model, reader.tensors, adapter_name=TRAIN_ADAPTER)
    teacher, teacher_file = _load_teacher(lloco, cfg)
    for p in host.model.parameters():
        p.requires_grad_(False)
    names = [n for n, p in host.model.named_parameters() if f".{TRAIN_ADAPTER}." in f"{n}."]
    params = [p for n, p in host.model.named_parameters() if f".{TRAIN_ADAPTER}." in f"{n}."]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    batcher = _Batcher(lloco, service, cfg, teacher)
    history: dict = {
        "config": asdict(cfg),
        "source": source,
        "n_train": len(train),
        "n_val": len(val),
        "rejected": len(bad),
        "train": [],
        "val": [],
        "seconds": 0.0,
        "init": "reader" if reader is not None else "fresh",
        "teacher": None if teacher_file is None else str(teacher_file),
    }
    start = 0
    ckpt = out / "checkpoint" if out else None
    if ckpt and resume and (ck := read_checkpoint(ckpt)) is not None:
        saved, opt_t, meta = ck
        if meta.get("group") != [collection, group] or meta["history"]["config"] != json.loads(
            json.dumps(asdict(cfg))
        ):
            raise ConfigError(
                f"checkpoint in {ckpt} belongs to another run; use another --out or --no-resume"
            )
        set_peft_model_state_dict(host.model, saved, adapter_name=TRAIN_ADAPTER)
        load_optimizer(opt, names, opt_t)
        history, start = meta["history"], int(meta["step"])
        print(f"resuming from checkpoint at step {start}")

    def val_loss(adapter: str | None) -> float:
        with lora_dropout_off(host.model, TRAIN_ADAPTER), torch.no_grad():
            return sum(batcher.loss(p, adapter, kl=False).item() for p in val) / len(val)

    try:
        if start == 0:
            history["val"].append(
                {"step": 0, "adapter": val_loss(TRAIN_ADAPTER), "no_adapter": val_loss(None)}
            )
        bar = tqdm(
            range(start, cfg.steps),
            initial=start,
            total=cfg.steps,
            desc=f"finetune {group}",
            disable=not progress,
        )
        t_last = time.perf_counter()
        for step in bar:
            for g in opt.param_groups:
                g["lr"] = lr_at(step, base=cfg.lr, warmup=cfg.warmup, total=cfg.steps)
            prng = random.Random(cfg.seed * 7919 + step)
            batch = prng.sample(train, min(cfg.batch_size, len(train)))
            opt.zero_grad(set_to_none=True)
            total = 0.0
            for pair in batch:
                loss = batcher.loss(pair, TRAIN_ADAPTER) / len(batch)
                loss.backward()
                total += loss.item()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            now = time.perf_counter()
            history["seconds"] += now - t_last
            t_last = now
            history["train"].append({"step": step + 1, "loss": total})
            bar.set_postfix(loss=f"{total:.3f}")
            if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
                history["val"].append({"step": step + 1, "adapter": val_loss(TRAIN_ADAPTER)})
                bar.write(
                    f"step {step + 1}: validation answer loss {history['val'][-1]['adapter']:.3f} "
                    f"(no adapter {history['val'][0]['no_adapter']:.3f})"
                )
            if ckpt and ((step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps):
                from peft import get_peft_model_state_dict

                write_checkpoint(
                    ckpt,
                    params=get_peft_model_state_dict(host.model, adapter_name=TRAIN_ADAPTER),
                    opt_state=save_optimizer(opt, names),
                    meta={"step": step + 1, "group": [collection, group], "history": history},
                )
        bar.close()
        metrics = {
            "val_loss": history["val"][-1]["adapter"],
            "val_loss_no_adapter": history["val"][0]["no_adapter"],
            "train_loss": history["train"][-1]["loss"] if history["train"] else None,
            "steps": cfg.steps,
            "pairs": len(train),
            "source": source,
            "seconds": round(history["seconds"], 1),
            "init": history["init"],
            "distilled": teacher is not None,
        }
        art = AdapterArtifact.from_model(
            host.model,
            TRAIN_ADAPTER,
            base_fingerprint=host.fingerprint,
            encoder_fingerprint=lloco.encoder.fingerprint,
            info=metrics,
        )
        info = service.store.register_adapter(
            group,
            art.to_bytes(),
            base_fingerprint=host.fingerprint,
            encoder_fingerprint=lloco.encoder.fingerprint,
            config=art.lora_config,
            metrics=metrics,
            collection=collection,
            activate=activate,
        )
    finally:
        for p in params:
            p.requires_grad_(False)
        for name in (TRAIN_ADAPTER, teacher):
            if name is not None and name in host.adapter_names():
                host.delete_adapter(name)
    history["adapter_id"] = info.id
    history["adapter_version"] = getattr(info, "version", None)
    if out:
        out.mkdir(parents=True, exist_ok=True)
        (out / "history.json").write_text(json.dumps(history, indent=1))
        plot_curves(
            out / "loss.png",
            [(r["step"], r["loss"]) for r in history["train"]],
            {"validation (adapter)": [(r["step"], r["adapter"]) for r in history["val"]]},
            f"lloco finetune {group}",
        )
    return history
