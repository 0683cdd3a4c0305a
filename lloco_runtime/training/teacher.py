"""``lloco train-teacher``: the text-reading teacher, a decoder LoRA that answers from the paragraph as text.

Trained on SQuAD-layout data (:mod:`.squad`): ``[template prefix | paragraph as text | question suffix] ->
first gold answer + EOS`` through the serving prompt template, cross-entropy on the answer tokens only. It is
the fair text baseline of evaluation (``lloco eval --text-adapter``, the shipped teacher) and the target of
the KL term of reader training (``lloco train-encoder --reading-kl-weight``).

Items are tokenised and scored by the same functions reader training uses for its teacher
(:func:`.reading.prepare_items` and :func:`.reading.answer_logits` with a text context), so the teacher is
trained on exactly the token sequences it is later asked to score. Paragraphs longer than
``max_context_tokens`` are left out rather than cut (a cut paragraph can lose its answer and would teach the
adapter to answer from nothing); with the default 384 that is about 1% of SQuAD's paragraphs.

Efficiency: a step is one right-padded batch; only the answer positions go through the LM head; batches
are drawn length-grouped (items of similar length together, every item equally likely), which on SQuAD
roughly halves the padding a random batch carries.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from ..adapters import AdapterArtifact
from ..errors import ConfigError, InputError
from .common import (
    fit_steps,
    load_optimizer,
    lr_at,
    plot_curves,
    read_checkpoint,
    save_optimizer,
    write_checkpoint,
)
from .finetune import lora_dropout_off
from .reading import PreparedItem, answer_logits, answer_targets, prepare_items
from .squad import read_reading_items, split_by_article

log = logging.getLogger(__name__)
TRAIN_ADAPTER = "lloco-teacher-train"  # not reading.TEACHER_ADAPTER: a loaded frozen teacher may coexist
ADAPTER_FILE = "adapter.safetensors"
_RUN_LENGTH = ("steps", "max_minutes", "eval_every", "checkpoint_every")  # may change when a run is resumed


@dataclass
class TeacherConfig:
    """LoRA and optimisation settings of the text-reading teacher (saved with every checkpoint)."""

    steps: int = field(default=2000, metadata={"help": "optimizer steps (the most, with max_minutes)"})
    batch_size: int = field(default=8, metadata={"help": "questions per step (one padded batch)"})
    lr: float = field(default=5e-4, metadata={"help": "peak learning rate (warm-up, then cosine to 10%)"})
    warmup: int = field(default=20, metadata={"help": "linear warm-up steps"})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling numerator (scale = alpha / r)"})
    lora_dropout: float = field(default=0.0, metadata={"help": "dropout on the LoRA input while training"})
    target_modules: tuple[str, ...] = field(
        default=("q_proj", "k_proj", "v_proj", "o_proj"), metadata={"help": "decoder modules that get a LoRA"}
    )
    max_answer_tokens: int = field(default=24, metadata={"help": "gold answers are cut to this many tokens"})
    max_context_tokens: int = field(
        default=384,
        metadata={"help": "paragraphs longer than this many tokens are left out (about 1% of SQuAD at 384)"},
    )
    val_articles: int = field(default=8, metadata={"help": "whole articles held out for validation"})
    val_questions: int = field(default=64, metadata={"help": "held-out questions scored at each validation"})
    eval_every: int = field(default=100, metadata={"help": "validate every this many steps (and at the end)"})
    checkpoint_every: int = field(
        default=25, metadata={"help": "checkpoint (and write the adapter) this often"}
    )
    max_minutes: float | None = field(
        default=None,
        metadata={
            "help": "stop after about this many minutes; the step count and learning-rate schedule are fitted to "
            "the pace of the first steps"
        },
    )
    group_by_length: bool = field(
        default=True,
        metadata={
            "help": "batch items of similar length together (less padding; each item stays equally likely)"
        },
    )
    grad_clip: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        self.target_modules = tuple(self.target_modules)
        ints = (
            "steps",
            "batch_size",
            "lora_r",
            "lora_alpha",
            "max_answer_tokens",
            "max_context_tokens",
            "val_articles",
            "val_questions",
            "eval_every",
            "checkpoint_every",
        )
        for name in ints:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {v!r}")
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, int) or self.warmup < 0:
            raise ConfigError(f"warmup must be an integer >= 0, got {self.warmup!r}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr!r}")
        if not 0 <= self.lora_dropout < 1:
            raise ConfigError(f"lora_dropout must be in [0, 1), got {self.lora_dropout!r}")
        if not self.target_modules or not all(isinstance(m, str) and m for m in self.target_modules):
            raise ConfigError("target_modules must name at least one module, e.g. q_proj,v_proj")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise ConfigError(f"max_minutes must be > 0, got {self.max_minutes!r}")
        if not self.grad_clip > 0:
            raise ConfigError(f"grad_clip must be > 0, got {self.grad_clip!r}")

    def identity(self) -> dict:
        """The settings a resumed run must share with its checkpoint (all but the run-length ones)."""
        return {k: v for k, v in json.loads(json.dumps(asdict(self))).items() if k not in _RUN_LENGTH}


def _text_side(host, cfg: TeacherConfig) -> SimpleNamespace:
    """What :func:`prepare_items` and :func:`answer_logits` read from an encoder when the context is text: the
    host, its tokenizer and a segment length (one segment per paragraph; segments are unused for text)."""
    return SimpleNamespace(
        host=host, tokenizer=host.tokenizer, config=SimpleNamespace(segment_length=cfg.max_context_tokens)
    )


def _autocast(host):
    """bf16 autocast for float32 models on CUDA (master weights stay float32); a no-op elsewhere."""
    dev = host.device
    return torch.autocast(
        device_type=dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda" and host.dtype == torch.float32
    )


def _length(it: PreparedItem) -> int:
    return len(it.prefix) + len(it.text) + len(it.suffix) + len(it.answer)


def sample_batch(items: list[PreparedItem], step: int, cfg: TeacherConfig) -> list[PreparedItem]:
    """The batch of ``step`` (reproducible, so a resumed run sees the same data). Length-grouped: a random
    pool of 16 batches is sorted by length and cut into batches, one of which is picked at random (every
    item of the pool is equally likely to be trained on, as with plain sampling)."""
    rng = random.Random(cfg.seed * 1_000_037 + step)
    n = min(cfg.batch_size, len(items))
    if not cfg.group_by_length or len(items) < 2 * n:
        return rng.sample(items, n)
    pool = rng.sample(range(len(items)), min(len(items), 16 * n) // n * n)
    pool.sort(key=lambda i: _length(items[i]))
    groups = [pool[i : i + n] for i in range(0, len(pool), n)]
    return [items[i] for i in rng.choice(groups)]


def answer_loss(
    host, items: list[PreparedItem], adapter: str | None, *, reduction: str = "mean"
) -> torch.Tensor:
    """Cross-entropy of the gold answer tokens (answer + EOS) given the paragraph as text, under ``adapter``."""
    side = SimpleNamespace(host=host)
    logits = answer_logits(side, items, [None] * len(items), adapter)  # type: ignore[arg-type]
    return F.cross_entropy(logits, answer_targets(items, logits.device), reduction=reduction)


@torch.no_grad()
def validate(
    host,
    items: list[PreparedItem],
    adapter: str | None,
    *,
    batch_size: int = 8,
    max_new_tokens: int = 24,
    generate: bool = True,
) -> dict:
    """Held-out answer loss (nats/token) and greedy token F1 / exact match against the gold answers, decoded
    from the serving prompt (template + paragraph as text) by the runtime's generator."""
    from ..evaluation import metrics as M
    from ..generation import GenerationConfig, Generator
    from ..prompt import PromptTemplate

    total, n_tokens = 0.0, 0
    for b in range(0, len(items), batch_size):
        part = items[b : b + batch_size]
        with _autocast(host):
            total += answer_loss(host, part, adapter, reduction="sum").item()
        n_tokens += sum(len(it.answer) for it in part)
    out: dict = {"loss": total / max(1, n_tokens)}
    if generate:
        gen, template = Generator(host), PromptTemplate()
        cfg = GenerationConfig(max_new_tokens=max_new_tokens)
        f1 = em = 0.0
        samples = []
        for it in items:
            prompt = template.build(host.tokenizer, it.item.question, it.item.context)
            with _autocast(host):
                text = gen.generate(prompt, cfg, adapter=adapter).text.strip()
            golds = list(it.item.answers)
            f1 += M.max_over_golds(M.token_f1, text, golds)
            em += M.max_over_golds(M.exact_match, text, golds)
            if len(samples) < 5:
                samples.append({"question": it.item.question, "gold": golds[0], "answer": text})
        out |= {"f1": f1 / len(items), "em": em / len(items), "samples": samples}
    return out


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def load_items(
    host, data_dir: str | Path, cfg: TeacherConfig
) -> tuple[list[PreparedItem], list[PreparedItem], int]:
    """``(train, held_out, left_out)``: tokenised training questions, ``cfg.val_questions`` held-out questions
    from ``cfg.val_articles`` whole articles, and how many training questions were left out (long paragraph)."""
    items = read_reading_items(data_dir)
    train_items, held = split_by_article(items, val_articles=cfg.val_articles, seed=cfg.seed)
    side = _text_side(host, cfg)
    prep = {"max_context_tokens": cfg.max_context_tokens, "max_answer_tokens": cfg.max_answer_tokens}
    train = prepare_items(side, train_items, **prep)  # type: ignore[arg-type]
    val_rng = random.Random(cfg.seed)
    val = prepare_items(
        side,
        val_rng.sample(held, min(len(held), 4 * cfg.val_questions)),  # type: ignore[arg-type]
        **prep,
    )[: cfg.val_questions]
    if not train or not val:
        raise InputError(
            f"too few usable questions in {data_dir}: {len(train)} for training, {len(val)} held out "
            f"(paragraphs over {cfg.max_context_tokens} tokens are left out; raise --max-context-tokens "
            "or lower --val-articles)"
        )
    print(
        f"teacher data: {len(train)} training questions ({len(train_items) - len(train)} left out: paragraph "
        f"over {cfg.max_context_tokens} tokens), {len(val)} held-out questions from {cfg.val_articles} articles"
    )
    return train, val, len(train_items) - len(train)


@torch.enable_grad()
def train_teacher(
    host,
    data_dir: str | Path,
    out_dir: str | Path,
    cfg: TeacherConfig | None = None,
    *,
    resume: bool = True,
    progress: bool = True,
) -> dict:
    """Train the text-reading teacher LoRA on ``host`` from the SQuAD-layout folder ``data_dir``.

    Writes ``out_dir/adapter.safetensors`` (an :class:`AdapterArtifact`: base fingerprint, no encoder
    fingerprint, validation figures in its info), ``history.json``, ``loss.png`` and ``checkpoint/``
    (resumed from when ``resume``). The training adapter is removed from ``host`` at the end; load the
    artifact to use it. Returns the history dict (with ``"adapter"``: the artifact's path)."""
    from peft import LoraConfig, get_peft_model_state_dict, set_peft_model_state_dict
    from tqdm.auto import tqdm

    cfg = cfg or TeacherConfig()
    out = Path(out_dir)
    train, val, left_out = load_items(host, data_dir, cfg)
    out.mkdir(parents=True, exist_ok=True)

    if TRAIN_ADAPTER in host.adapter_names():
        host.delete_adapter(TRAIN_ADAPTER)
    with torch.random.fork_rng(devices=[]):  # a reproducible LoRA init, without touching the caller's RNG
        torch.manual_seed(cfg.seed)
        host.add_adapter(
            TRAIN_ADAPTER,
            LoraConfig(
                r=cfg.lora_r,
                lora_alpha=cfg.lora_alpha,
                lora_dropout=cfg.lora_dropout,
                target_modules=list(cfg.target_modules),
                bias="none",
            ),
        )
    params: list[torch.nn.Parameter] = []
    try:
        for p in host.model.parameters():
            p.requires_grad_(False)
        named = [(n, p) for n, p in host.model.named_parameters() if f".{TRAIN_ADAPTER}." in f"{n}."]
        names, params = [n for n, _ in named], [p for _, p in named]
        for p in params:
            p.requires_grad_(True)
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
        history: dict = {
            "config": asdict(cfg),
            "data": str(data_dir),
            "model": host.name,
            "base_fingerprint": host.fingerprint,
            "n_train": len(train),
            "n_val": len(val),
            "left_out": left_out,
            "train": [],
            "val": [],
            "seconds": 0.0,
        }
        start = 0
        ckpt = out / "checkpoint"
        if resume and (ck := read_checkpoint(ckpt)) is not None:
            saved, opt_tensors, meta = ck
            old = meta.get("history", {})
            if (
                meta.get("kind") != "teacher"
                or old.get("base_fingerprint") != host.fingerprint
                or meta.get("identity") != cfg.identity()
            ):
                raise ConfigError(
                    f"the checkpoint in {ckpt} belongs to another run (other settings or base "
                    "model); use another --out folder, the same settings, or --no-resume"
                )
            set_peft_model_state_dict(host.model, saved, adapter_name=TRAIN_ADAPTER)
            load_optimizer(opt, names, opt_tensors)
            history = old | {"config": asdict(cfg)}
            start = int(meta["step"])
            print(f"resuming from checkpoint at step {start}")

        def evaluate(step: int) -> dict:
            with lora_dropout_off(host.model, TRAIN_ADAPTER):
                row = {"step": step} | validate(
                    host, val, TRAIN_ADAPTER, batch_size=cfg.batch_size, max_new_tokens=cfg.max_answer_tokens
                )
                if "baseline" not in history:  # the base model on the same questions (does not change)
                    base = validate(
                        host, val, None, batch_size=cfg.batch_size, max_new_tokens=cfg.max_answer_tokens
                    )
                    history["baseline"] = {k: base[k] for k in ("loss", "f1", "em")}
                    history["baseline_samples"] = base["samples"]
                    row |= {f"{k}_no_adapter": v for k, v in history["baseline"].items()}
            history["val"].append(row)
            b = history["baseline"]
            print(
                f"step {step}: held-out answer loss {row['loss']:.3f} (no adapter {b['loss']:.3f}) | greedy F1 "
                f"{100 * row['f1']:.1f} EM {100 * row['em']:.1f} (no adapter F1 {100 * b['f1']:.1f} EM "
                f"{100 * b['em']:.1f})",
                flush=True,
            )
            return row

        def write_outputs(step: int) -> None:
            last = history["val"][-1] if history["val"] else {}
            b = history.get("baseline", {})
            info = {
                "kind": "teacher",
                "step": step,
                "data": Path(str(data_dir)).name,
                "val_loss": last.get("loss"),
                "val_f1": last.get("f1"),
                "val_em": last.get("em"),
                "val_step": last.get("step"),
                "val_loss_no_adapter": b.get("loss"),
                "val_f1_no_adapter": b.get("f1"),
                "val_em_no_adapter": b.get("em"),
                "train_loss": history["train"][-1]["loss"] if history["train"] else None,
                "seconds": round(history["seconds"], 1),
                "n_train": len(train),
                "n_val": len(val),
                "max_context_tokens": cfg.max_context_tokens,
                "max_answer_tokens": cfg.max_answer_tokens,
            }
            art = AdapterArtifact.from_model(
                host.model,
                TRAIN_ADAPTER,
                base_fingerprint=host.fingerprint,
                encoder_fingerprint=None,
                info=info,
            )
            _write_atomic(out / ADAPTER_FILE, art.to_bytes())
            (out / "history.json").write_text(json.dumps(history, indent=1))
            val_curves = {"held-out (adapter)": [(r["step"], r["loss"]) for r in history["val"]]}
            if b:
                val_curves["held-out (no adapter)"] = [(0, b["loss"]), (max(step, 1), b["loss"])]
            plot_curves(
                out / "loss.png",
                [(r["step"], r["loss"]) for r in history["train"]],
                val_curves,
                "lloco train-teacher (answer cross-entropy)",
            )

        if not history["val"]:
            evaluate(0)
        total = cfg.steps
        if cfg.max_minutes is not None and history.get("planned_steps"):
            total = min(cfg.steps, max(start, int(history["planned_steps"])))
        bar = tqdm(initial=start, total=total, desc="train-teacher", disable=not progress)
        t_begin = t_last = time.perf_counter()
        step = start
        while step < total:
            if cfg.max_minutes is not None:  # fit the plan to the time budget (the pace measured so far)
                now = time.perf_counter()
                total = fit_steps(
                    step,
                    first=start,
                    planned=total,
                    max_steps=cfg.steps,
                    max_minutes=cfg.max_minutes,
                    seconds_done=history["seconds"],
                    elapsed=now - t_begin,
                    since_last=now - t_last,
                )
                history["planned_steps"] = total
                bar.total = total
            for g in opt.param_groups:
                g["lr"] = lr_at(step, base=cfg.lr, warmup=cfg.warmup, total=total)
            batch = sample_batch(train, step, cfg)
            with _autocast(host):
                loss = answer_loss(host, batch, TRAIN_ADAPTER)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            now = time.perf_counter()
            history["seconds"] += now - t_last
            t_last = now
            history["train"].append(
                {
                    "step": step + 1,
                    "loss": loss.item(),
                    "lr": opt.param_groups[0]["lr"],
                    "tokens": len(batch) * max(_length(it) for it in batch),
                }
            )
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
            last = step + 1 == total
            if (step + 1) % cfg.eval_every == 0 or last:
                evaluate(step + 1)
            if (step + 1) % cfg.checkpoint_every == 0 or last:
                write_checkpoint(
                    ckpt,
                    params=get_peft_model_state_dict(host.model, adapter_name=TRAIN_ADAPTER),
                    opt_state=save_optimizer(opt, names),
                    meta={
                        "kind": "teacher",
                        "step": step + 1,
                        "identity": cfg.identity(),
                        "history": history,
                    },
                )
                write_outputs(step + 1)
            step += 1
        bar.close()
        write_outputs(step)
    finally:
        for p in params:
            p.requires_grad_(False)
        if TRAIN_ADAPTER in host.adapter_names():
            host.delete_adapter(TRAIN_ADAPTER)
    history["adapter"] = str(out / ADAPTER_FILE)
    return history
