"""Fit the learned literal-token selector: which tokens of a segment should stay as themselves.

A mean-pooling encoder with ``literal_tokens`` keeps a few of each segment's tokens as their own embeddings
beside the pooled vectors. The rules (numbers, capitalised words) keep about a third of SQuAD answers whole
at 4x. The learned selector is a logistic regression on the decoder's hidden states after
``selector_layer``, trained offline on reading-comprehension paragraphs (``shared/corpus/squad_train``) to
predict which tokens lie inside an answer that someone asked about: the tokens questions are written on.
It never sees the question at compression time (cheat sheets are made offline), only the segment.

The fit is a convex problem on fixed features: standardise, full-batch Adam with a small L2 penalty, then fold
the standardisation into one ``nn.Linear(hidden, 1)``. Held-out articles measure it against the rules by the
share of answers kept whole at the encoder's literal budget.
"""

from __future__ import annotations

import logging
import random
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..encoder import ENCODER_ADAPTER, ContextEncoder
from ..errors import ConfigError, InputError
from ..evaluation.metrics import normalize_answer
from .squad import ReadingItem, read_reading_items, split_by_article

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SelectorConfig:
    """How the selector is fitted."""

    paragraphs: int = 800  # training paragraphs (their segments' tokens are the examples)
    val_articles: int = 4  # whole articles held out for the comparison with the rules
    val_questions: int = 400
    epochs: int = 300
    lr: float = 1e-2
    l2: float = 1e-4
    batch_size: int = 16  # segments per forward pass
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("paragraphs", "epochs", "batch_size", "val_questions"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"selector {name} must be a positive integer, got {getattr(self, name)!r}")
        if self.lr <= 0 or self.l2 < 0:
            raise ConfigError("selector lr must be > 0 and l2 >= 0")


def _segments(encoder: ContextEncoder, text: str) -> list[tuple[list[int], list[tuple[int, int]]]]:
    """The encoder's segments of ``text`` (as :meth:`ContextEncoder.split` cuts them) with character offsets."""
    enc = encoder.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    n = encoder.config.segment_length
    return [(ids[s : s + n], offsets[s : s + n]) for s in range(0, len(ids), n)]


def _answer_spans(context: str, answers: Sequence[str]) -> list[tuple[int, int]]:
    spans = []
    for a in answers:
        i = context.find(a)
        if i >= 0:
            spans.append((i, i + len(a)))
    return spans


def _by_paragraph(items: Sequence[ReadingItem]) -> dict[str, list[ReadingItem]]:
    out: dict[str, list[ReadingItem]] = defaultdict(list)
    for it in items:
        out[it.context].append(it)
    return out


@torch.no_grad()
def _states(
    encoder: ContextEncoder, token_lists: list[list[int]], batch_size: int, desc: str, progress: bool
) -> list[torch.Tensor]:
    adapter = ENCODER_ADAPTER if encoder.has_lora else None
    out: list[torch.Tensor] = []
    bar = tqdm(total=len(token_lists), desc=desc, unit="seg", disable=not progress)
    for b in range(0, len(token_lists), batch_size):
        batch = token_lists[b : b + batch_size]
        with encoder.host.using(adapter):
            out.extend(h.float().cpu() for h in encoder.selector_states(batch))
        bar.update(len(batch))
    bar.close()
    return out


def answers_kept(
    encoder: ContextEncoder,
    items: Sequence[ReadingItem],
    scores: dict[str, list[torch.Tensor]] | None = None,
    *,
    focus: bool = False,
) -> list[bool]:
    """For each item: does its answer (any of them) survive whole, after normalisation, inside one run of
    consecutive kept tokens of its paragraph's segments? ``scores`` (paragraph -> per-segment token scores)
    selects with the learned ranking, else the rules; ``focus``: the tokens chosen for the item's question at
    answer time (:meth:`ContextEncoder.focus_positions`)."""
    out = []
    runs_of: dict[str, list[str]] = {}
    for it in items:
        key = (it.context, it.question) if focus else it.context
        if key not in runs_of:
            runs: list[str] = []
            for k, (ids, _) in enumerate(_segments(encoder, it.context)):
                sc = scores[it.context][k] if scores is not None else None
                keep = (
                    encoder.focus_positions(ids, it.question) if focus else encoder.literal_positions(ids, sc)
                )
                run: list[str] = []
                prev = None
                for p in keep:
                    if prev is not None and p != prev + 1:
                        runs.append(normalize_answer("".join(run)))
                        run = []
                    run.append(encoder.tokenizer.decode([ids[p]]))
                    prev = p
                if run:
                    runs.append(normalize_answer("".join(run)))
            runs_of[key] = runs
        answers = [normalize_answer(a) for a in it.answers]
        out.append(any(a and any(a in r for r in runs_of[key]) for a in answers))
    return out


def kept_answer_share(
    encoder: ContextEncoder, items: Sequence[ReadingItem], scores: dict[str, list[torch.Tensor]] | None = None
) -> float:
    """Share of ``items`` whose answer survives whole as literal tokens (:func:`answers_kept`)."""
    return sum(answers_kept(encoder, items, scores)) / len(items) if items else 0.0


def selector_scores(
    encoder: ContextEncoder, contexts: Sequence[str], batch_size: int = 16
) -> dict[str, list[torch.Tensor]]:
    """The learned selector's token scores for each segment of each paragraph in ``contexts``."""
    segments = {c: [ids for ids, _ in _segments(encoder, c)] for c in dict.fromkeys(contexts)}
    flat = [ids for segs in segments.values() for ids in segs]
    scores: list[torch.Tensor] = []
    for b in range(0, len(flat), batch_size):
        with encoder.host.using(ENCODER_ADAPTER if encoder.has_lora else None):
            scores.extend(encoder.literal_scores(flat[b : b + batch_size]))
    out, k = {}, 0
    for c, segs in segments.items():
        out[c] = scores[k : k + len(segs)]
        k += len(segs)
    return out


def train_selector(
    encoder: ContextEncoder,
    reading_path: str | Path,
    config: SelectorConfig | None = None,
    *,
    progress: bool = True,
) -> dict:
    """Fit ``encoder``'s learned selector (``literal_selector="learned"``) on a SQuAD-layout folder; returns
    the metrics (held-out loss, answers kept whole by the rules and by the selector). Changes the encoder's
    weights (and so its fingerprint)."""
    cfg = config or SelectorConfig()
    if encoder.selector is None:
        raise ConfigError(
            "this encoder chooses literal tokens by rules; configure a learned selector first "
            "(literal_selector='learned', e.g. `lloco train-encoder --literal-selector learned`)"
        )
    t0 = time.time()
    items = read_reading_items(reading_path)
    train_items, val_items = split_by_article(items, val_articles=cfg.val_articles, seed=cfg.seed)
    paragraphs = _by_paragraph(train_items)
    contexts = sorted(paragraphs)
    random.Random(cfg.seed).shuffle(contexts)
    contexts = contexts[: cfg.paragraphs]
    token_lists: list[list[int]] = []
    labels: list[torch.Tensor] = []
    for ctx in contexts:
        spans = _answer_spans(ctx, [a for it in paragraphs[ctx] for a in it.answers])
        for ids, offsets in _segments(encoder, ctx):
            token_lists.append(ids)
            labels.append(
                torch.tensor(
                    [any(s < e2 and s2 < e for s2, e2 in spans) for s, e in offsets], dtype=torch.float32
                )
            )
    if not token_lists:
        raise InputError(f"{reading_path}: no training paragraphs for the selector")
    x = torch.cat(_states(encoder, token_lists, cfg.batch_size, "selector features", progress))
    y = torch.cat(labels)
    if not 0 < float(y.mean()) < 1:
        raise InputError(
            f"{reading_path}: the answers mark {'no' if float(y.mean()) == 0 else 'every'} token; "
            "the selector needs both kinds"
        )
    g = torch.Generator().manual_seed(cfg.seed)
    order = torch.randperm(len(y), generator=g)
    cut = int(0.9 * len(y))
    fit, held = order[:cut], order[cut:]
    mu, sd = x[fit].mean(0), x[fit].std(0).clamp_min(1e-4)
    z = (x - mu) / sd
    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.zeros((), requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=cfg.lr)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    with torch.enable_grad():
        for _ in tqdm(range(cfg.epochs), desc="selector fit", disable=not progress):
            opt.zero_grad()
            loss = bce(z[fit] @ w + b, y[fit]) + cfg.l2 * w.pow(2).sum()
            loss.backward()
            opt.step()
    with torch.no_grad():
        held_loss = float(bce(z[held] @ w + b, y[held]))
        base = float(y[fit].mean())
        base_loss = float(bce(torch.full_like(y[held], float(torch.logit(torch.tensor(base)))), y[held]))
        weight = (w / sd).to(torch.float32)
        bias = (b - (mu * weight).sum()).to(torch.float32)
        encoder.selector.weight.copy_(weight.unsqueeze(0).to(encoder.selector.weight.device))
        encoder.selector.bias.copy_(bias.reshape(1).to(encoder.selector.bias.device))
    encoder.invalidate_fingerprint()
    # held-out articles: answers kept whole by the rules vs by the selector, at the encoder's literal budget
    val = random.Random(cfg.seed).sample(val_items, min(cfg.val_questions, len(val_items)))
    scores = selector_scores(encoder, sorted({it.context for it in val}), cfg.batch_size)
    metrics = {
        "config": asdict(cfg),
        "layer": encoder.config.selector_layer,
        "paragraphs": len(contexts),
        "segments": len(token_lists),
        "tokens": len(y),
        "answer_token_share": round(base, 4),
        "held_out_bce": round(held_loss, 4),
        "held_out_bce_constant": round(base_loss, 4),
        "val_questions": len(val),
        "kept_whole_rules": round(kept_answer_share(encoder, val), 4),
        "kept_whole_learned": round(kept_answer_share(encoder, val, scores), 4),
        "seconds": round(time.time() - t0, 1),
    }
    log.info("selector: %s", metrics)
    return metrics
