"""``lloco train-encoder``: teach the summary embeddings (and an encoder LoRA) to carry a segment's content.

Objectives, on pairs of consecutive windows ``(A, B)`` of a text corpus, through the frozen decoder:

- **continuation** (AutoCompressor): language-model loss on ``B`` given only the cheat sheet of ``A``;
- **reconstruction** (autoencoding, as in ICAE): loss on ``A`` itself given its cheat sheet and a cue.

:func:`evaluate_encoder` is the held-out measurement the issue asks for: loss on ``B`` with no context, with
the right cheat sheet, with a *wrong* cheat sheet (another segment's; the control that separates content
from a learned format prompt) and with ``A`` as plain text (the ceiling).
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from ..encoder import ENCODER_ADAPTER, ContextEncoder
from ..errors import ConfigError, InputError
from ..store.inputs import iter_jsonl
from .common import load_optimizer, lr_at, plot_curves, read_checkpoint, save_optimizer, write_checkpoint

log = logging.getLogger(__name__)
RECON_CUE = "\nRepeat the text above:\n"


@dataclass
class EncoderTrainingConfig:
    """Hyper-parameters of encoder pre-training (saved with every checkpoint)."""

    steps: int = field(default=1000, metadata={"help": "optimizer steps"})
    batch_size: int = field(default=4, metadata={"help": "(A, B) pairs per step"})
    lr: float = field(default=1e-3, metadata={"help": "peak learning rate (LoRA and summary embeddings)"})
    warmup: int = 50
    continuation_length: int = field(default=128, metadata={"help": "tokens of B scored after A's sheet"})
    continuation_weight: float = 1.0
    reconstruction_weight: float = field(default=1.0, metadata={"help": "0 disables reconstruction"})
    grad_clip: float = 1.0
    eval_every: int = 100
    eval_pairs: int = 24
    checkpoint_every: int = 50
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.continuation_length < 2:
            raise ConfigError("steps and batch_size must be >= 1 and continuation_length >= 2")
        if self.continuation_weight < 0 or self.reconstruction_weight < 0:
            raise ConfigError("objective weights must be >= 0")
        if self.continuation_weight + self.reconstruction_weight == 0:
            raise ConfigError("at least one objective needs a positive weight")


def read_corpus(path: str | Path) -> list[tuple[str, str]]:
    """``(name, text)`` for every ``.txt``/``.md`` file under ``path`` and every row of its ``.jsonl`` files."""
    root = Path(path)
    if not root.exists():
        raise InputError(f"corpus {root} does not exist")
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    docs: list[tuple[str, str]] = []
    for f in files:
        if f.suffix in (".txt", ".md"):
            text = f.read_text(encoding="utf-8", errors="strict")
            if text.strip():
                docs.append((f.stem, text))
        elif f.suffix == ".jsonl":  # rows without a "text" (e.g. QA pairs beside the texts) are skipped
            for _, where, row in iter_jsonl(f):
                if isinstance(row, dict) and isinstance(row.get("text"), str) and row["text"].strip():
                    docs.append((str(row.get("doc_id") or row.get("id") or where), row["text"]))
    if not docs:
        raise InputError(f"no text found under {root} (.txt, .md or .jsonl with a 'text' field)")
    return docs


class PairSampler:
    """Random consecutive windows ``(A, B)`` from tokenised documents, reproducible per step."""

    def __init__(self, token_docs: Sequence[list[int]], a_len: int, b_len: int, seed: int) -> None:
        self.docs = [d for d in token_docs if len(d) >= a_len + b_len]
        if not self.docs:
            raise InputError(f"no document is long enough for a {a_len}+{b_len}-token window")
        self.a_len, self.b_len, self.seed = a_len, b_len, seed
        self.weights = [len(d) - a_len - b_len + 1 for d in self.docs]

    def batch(self, step: int, size: int) -> tuple[list[list[int]], list[list[int]]]:
        rng = random.Random(self.seed * 1_000_003 + step)
        a_rows, b_rows = [], []
        for doc in rng.choices(self.docs, weights=self.weights, k=size):
            s = rng.randrange(0, len(doc) - self.a_len - self.b_len + 1)
            a_rows.append(doc[s:s + self.a_len])
            b_rows.append(doc[s + self.a_len:s + self.a_len + self.b_len])
        return a_rows, b_rows


def _tokenize(encoder: ContextEncoder, texts: Sequence[str]) -> list[list[int]]:
    tok = encoder.tokenizer
    return [tok(t, add_special_tokens=False)["input_ids"] for t in texts]


def _scored_loss(model, prefix: torch.Tensor | None, target: torch.Tensor, embed, skip_first: bool = False
                 ) -> torch.Tensor:
    """Mean cross-entropy of ``target`` tokens ``[B, L]`` after an embedded ``prefix`` ``[B, P, H]``."""
    tgt_emb = embed(target)
    x = tgt_emb if prefix is None else torch.cat([prefix, tgt_emb], dim=1)
    p = 0 if prefix is None else prefix.shape[1]
    logits = model(inputs_embeds=x, use_cache=False).logits
    # token j of target sits at position p + j and is predicted by the logits at position p + j - 1
    first = 1 if (skip_first or p == 0) else 0
    pred = logits[:, p + first - 1:p + target.shape[1] - 1]
    gold = target[:, first:]
    return F.cross_entropy(pred.reshape(-1, pred.shape[-1]).float(), gold.reshape(-1))


def _objective(encoder: ContextEncoder, a_rows, b_rows, cfg: EncoderTrainingConfig) -> dict[str, torch.Tensor]:
    host = encoder.host
    model = host.model
    embed = model.get_input_embeddings()
    dev = host.device
    adapter = ENCODER_ADAPTER if encoder.has_lora else None
    with host.using(adapter):
        soft = encoder.summarize(a_rows)  # [B, S, H], differentiable
    losses: dict[str, torch.Tensor] = {}
    with host.using(None):
        if cfg.continuation_weight > 0:
            b = torch.tensor(b_rows, device=dev)
            losses["continuation"] = _scored_loss(model, soft, b, embed)
        if cfg.reconstruction_weight > 0:
            cue = torch.tensor(encoder.tokenizer(RECON_CUE, add_special_tokens=False)["input_ids"], device=dev)
            prefix = torch.cat([soft, embed(cue).unsqueeze(0).expand(len(a_rows), -1, -1)], dim=1)
            a = torch.tensor(a_rows, device=dev)
            losses["reconstruction"] = _scored_loss(model, prefix, a, embed)
    return losses


@torch.no_grad()
def evaluate_encoder(encoder: ContextEncoder, texts: Sequence[str], *, n_pairs: int = 24, b_len: int = 128,
                     seed: int = 1234, batch_size: int = 4) -> dict[str, float]:
    """Held-out LM loss of ``B`` (tokens 2..L, nats/token) under four contexts; see the module docstring."""
    a_len = encoder.config.segment_length
    sampler = PairSampler(_tokenize(encoder, texts), a_len, b_len, seed)
    a_rows, b_rows = sampler.batch(0, n_pairs)
    host = encoder.host
    model, embed, dev = host.model, host.model.get_input_embeddings(), host.device
    adapter = ENCODER_ADAPTER if encoder.has_lora else None
    sums = {"no_context": 0.0, "cheat_sheet": 0.0, "wrong_cheat_sheet": 0.0, "text_context": 0.0}
    for i in range(0, n_pairs, batch_size):
        a, b = a_rows[i:i + batch_size], torch.tensor(b_rows[i:i + batch_size], device=dev)
        with host.using(adapter):
            soft = encoder.summarize(a)
        wrong = soft.roll(1, dims=0) if len(a) > 1 else encoder.summarize(a_rows[i - 1:i])
        with host.using(None):
            sums["no_context"] += _scored_loss(model, None, b, embed).item() * len(a)
            sums["cheat_sheet"] += _scored_loss(model, soft, b, embed, skip_first=True).item() * len(a)
            sums["wrong_cheat_sheet"] += _scored_loss(model, wrong, b, embed, skip_first=True).item() * len(a)
            text = embed(torch.tensor(a, device=dev))
            sums["text_context"] += _scored_loss(model, text, b, embed, skip_first=True).item() * len(a)
    return {k: v / n_pairs for k, v in sums.items()}


def _trainable(encoder: ContextEncoder) -> tuple[list[str], list[torch.nn.Parameter]]:
    names, params = ["embed_summary.weight"], [encoder.embed_summary.weight]
    for n, p in encoder.host.model.named_parameters():
        if "lora_" in n and f".{ENCODER_ADAPTER}." in f"{n}.":
            names.append(n)
            params.append(p)
    return names, params


@torch.enable_grad()
def train_encoder(encoder: ContextEncoder, corpus: str | Path, out_dir: str | Path,
                  cfg: EncoderTrainingConfig | None = None, *, resume: bool = True, progress: bool = True,
                  val_texts: Sequence[str] | None = None) -> dict:
    """Train ``encoder`` in place on ``corpus``; checkpoints, history, loss PNG and the artifact go to
    ``out_dir`` (``encoder/`` is loadable with :meth:`ContextEncoder.load`). Resumes from the last
    checkpoint in ``out_dir`` when ``resume``. Returns the history dict."""
    from peft import set_peft_model_state_dict
    from tqdm.auto import tqdm

    cfg = cfg or EncoderTrainingConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    docs = read_corpus(corpus)
    rng = random.Random(cfg.seed)
    order = list(range(len(docs)))
    rng.shuffle(order)
    n_val = 0 if val_texts is not None else max(1, len(docs) // 20)
    val = list(val_texts) if val_texts is not None else [docs[i][1] for i in order[:n_val]]
    train = [docs[i][1] for i in order[n_val:]]
    sampler = PairSampler(_tokenize(encoder, train), encoder.config.segment_length, cfg.continuation_length,
                          cfg.seed)

    host = encoder.host
    for p in host.model.parameters():
        p.requires_grad_(False)
    names, params = _trainable(encoder)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    history: dict = {"config": asdict(cfg), "encoder": encoder.config.to_dict(), "train": [], "val": [],
                     "seconds": 0.0}
    start_step = 0
    ckpt_dir = out / "checkpoint"
    ck = read_checkpoint(ckpt_dir) if resume else None
    if ck is not None:
        saved, opt_tensors, meta = ck
        if meta.get("encoder") != encoder.config.to_dict():
            raise ConfigError(f"checkpoint in {ckpt_dir} is for encoder config {meta.get('encoder')}; "
                              "use another --out folder or the same settings")
        with torch.no_grad():
            encoder.embed_summary.weight.copy_(saved["embed_summary.weight"])
        lora = {k[len("lora."):]: v for k, v in saved.items() if k.startswith("lora.")}
        if lora:
            set_peft_model_state_dict(host.model, lora, adapter_name=ENCODER_ADAPTER)
        load_optimizer(opt, names, opt_tensors)
        history = meta["history"]
        start_step = int(meta["step"])
        log.info("resumed from step %d", start_step)
        print(f"resuming from checkpoint at step {start_step}")

    def evaluate(step: int) -> None:
        res = evaluate_encoder(encoder, val, n_pairs=cfg.eval_pairs, b_len=cfg.continuation_length)
        history["val"].append({"step": step, **res})

    def checkpoint(step: int) -> None:
        state = {k: v for k, v in encoder.trainable_state().items()}
        write_checkpoint(ckpt_dir, params=state, opt_state=save_optimizer(opt, names),
                         meta={"step": step, "encoder": encoder.config.to_dict(), "history": history})

    if start_step == 0 and not history["val"]:
        evaluate(0)
    bar = tqdm(range(start_step, cfg.steps), initial=start_step, total=cfg.steps, desc="train-encoder",
               disable=not progress)
    t_last = time.perf_counter()
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = lr_at(step, base=cfg.lr, warmup=cfg.warmup, total=cfg.steps)
        a_rows, b_rows = sampler.batch(step, cfg.batch_size)
        losses = _objective(encoder, a_rows, b_rows, cfg)
        loss = (cfg.continuation_weight * losses.get("continuation", torch.tensor(0.0))
                + cfg.reconstruction_weight * losses.get("reconstruction", torch.tensor(0.0)))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        now = time.perf_counter()
        history["seconds"] += now - t_last
        t_last = now
        row = {"step": step + 1, "loss": loss.item()} | {k: v.item() for k, v in losses.items()}
        history["train"].append(row)
        bar.set_postfix({k: f"{v:.3f}" for k, v in row.items() if k != "step"})
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            evaluate(step + 1)
            v = history["val"][-1]
            bar.write(f"step {step + 1}: held-out loss no-context {v['no_context']:.3f} | cheat sheet "
                      f"{v['cheat_sheet']:.3f} | wrong sheet {v['wrong_cheat_sheet']:.3f} | text "
                      f"{v['text_context']:.3f}")
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
            checkpoint(step + 1)
            _write_outputs(encoder, out, history)
    bar.close()
    for p in params:
        p.requires_grad_(False)
    encoder.invalidate_fingerprint()
    _write_outputs(encoder, out, history)
    return history


def _write_outputs(encoder: ContextEncoder, out: Path, history: dict) -> None:
    encoder.invalidate_fingerprint()
    encoder.save(out / "encoder")
    (out / "history.json").write_text(json.dumps(history, indent=1))
    train = [(r["step"], r["loss"]) for r in history["train"]]
    val = {name: [(r["step"], r[key]) for r in history["val"]]
           for name, key in (("held-out: no context", "no_context"), ("held-out: cheat sheet", "cheat_sheet"),
                             ("held-out: wrong sheet", "wrong_cheat_sheet"),
                             ("held-out: text context", "text_context"))}
    plot_curves(out / "loss.png", train, val, "lloco train-encoder")
