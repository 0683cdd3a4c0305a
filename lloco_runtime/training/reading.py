"""Teaching the decoder to *read* cheat sheets: the answer objective of ``lloco train-encoder --reading``.

Each item is a SQuAD-style question about a paragraph (:mod:`.squad`). The student is the decoder with the
**reader LoRA** given ``[template prefix | cheat sheets of the paragraph's segments | question suffix]``;
the teacher is the decoder with the **text adapter** (``lloco train-teacher``) given the same prompt with the
paragraph as text. Losses on the gold answer's tokens (teacher-forced):

- ``reading``: cross-entropy of the gold answer;
- ``reading_kl``: token-level KL(teacher || student) over the answer positions (Feldman & Artzi 2025; the
  teacher's whole next-token distribution is the target).

:func:`reading_validation` judges by **generated** answers on held-out articles: token F1 with the right
cheat sheets, with another paragraph's cheat sheets (the control), with the text (teacher) and with no
context, and the reading-utilisation figure ``U = (right - wrong) / (text - none)``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..encoder import ENCODER_ADAPTER, ContextEncoder
from ..prompt import _SLOT as _SLOT_TEXT
from ..prompt import PromptTemplate
from .common import token_kl
from .squad import ReadingItem

READER_ADAPTER = "lloco-reader"
TEACHER_ADAPTER = "lloco-teacher"


@dataclass(frozen=True)
class PreparedItem:
    """A reading item tokenised for training: prompt pieces, the paragraph's segments, the answer."""

    item: ReadingItem
    prefix: tuple[int, ...]
    suffix: tuple[int, ...]
    text: tuple[int, ...]
    segments: tuple[tuple[int, ...], ...]
    answer: tuple[int, ...]


def prepare_items(
    encoder: ContextEncoder,
    items: Sequence[ReadingItem],
    *,
    max_context_tokens: int,
    max_answer_tokens: int,
    template: PromptTemplate | None = None,
) -> list[PreparedItem]:
    """Tokenise items the way serving does (:meth:`PromptTemplate.build` + the generator's per-piece
    tokenisation); paragraphs longer than ``max_context_tokens`` are left out.

    The chat template is rendered once with a marker for the question, and each item's suffix is that
    rendering with its question put in (checked against a full rendering for the first items; any
    difference falls back to rendering every item). Texts are tokenised in batches."""
    tok = encoder.tokenizer
    template = template or PromptTemplate()
    seg = encoder.config.segment_length
    eos = tok.eos_token_id
    eos = eos[0] if isinstance(eos, (list, tuple)) else eos
    marker = torch.zeros(1, 1)
    qmark = "\ue000QUESTION\ue000"
    prefix, suffix_form = _pieces(template, tok, qmark, marker)

    def render(question: str) -> tuple[str, str]:
        return prefix, suffix_form.replace(qmark, question.replace(_SLOT_TEXT, ""))

    if any(render(it.question) != _pieces(template, tok, it.question, marker) for it in items[:20]):

        def render(question: str) -> tuple[str, str]:
            return _pieces(template, tok, question, marker)

    def ids(texts: list[str]) -> list[list[int]]:
        return tok(texts, add_special_tokens=False)["input_ids"] if texts else []

    contexts = sorted({it.context for it in items})
    paragraph_ids = dict(zip(contexts, ids(contexts), strict=True))
    keep = [it for it in items if 0 < len(paragraph_ids[it.context]) <= max_context_tokens]
    rendered = [render(it.question) for it in keep]
    distinct = sorted({r[0] for r in rendered})
    prefixes = dict(zip(distinct, ids(distinct), strict=True))
    suffixes = ids([r[1] for r in rendered])
    answers = ids([it.answers[0] for it in keep])
    tail = (int(eos),) if eos is not None else ()
    out = []
    for it, (pre, _), suf, ans in zip(keep, rendered, suffixes, answers, strict=True):
        if not ans:
            continue
        para = paragraph_ids[it.context]
        out.append(
            PreparedItem(
                it,
                tuple(prefixes[pre]),
                tuple(suf),
                tuple(para),
                tuple(tuple(para[i : i + seg]) for i in range(0, len(para), seg)),
                tuple(ans[:max_answer_tokens]) + tail,
            )
        )
    return out


def _pieces(template: PromptTemplate, tok, question: str, marker: torch.Tensor) -> tuple[str, str]:
    """The template's text before and after the context slot for ``question``."""
    pieces = template.build(tok, question, marker).pieces
    at = next(i for i, p in enumerate(pieces) if p is marker)
    return "".join(pieces[:at]), "".join(pieces[at + 1 :])


def paragraph_sheets(
    encoder: ContextEncoder, items: Sequence[PreparedItem], *, focus: bool = False
) -> list[torch.Tensor]:
    """The cheat sheets of each item's paragraph (its segments' vectors concatenated), differentiable;
    all segments of the batch run through the encoder together. ``focus``: with literal tokens chosen for
    the item's question, as the runtime serves them (:meth:`ContextEncoder.focus_summarize`)."""
    if focus:
        return [
            torch.cat([encoder.focus_summarize(s, it.item.question) for s in it.segments], dim=0)
            for it in items
        ]
    flat = [s for it in items for s in it.segments]
    with encoder.host.using(ENCODER_ADAPTER if encoder.has_lora else None):
        vectors = encoder.summarize_list(flat)
    out, i = [], 0
    for it in items:
        n = len(it.segments)
        out.append(torch.cat(vectors[i : i + n], dim=0))
        i += n
    return out


def answer_logits(
    encoder: ContextEncoder,
    items: Sequence[PreparedItem],
    contexts: Sequence[torch.Tensor | None],
    adapter: str | None,
) -> torch.Tensor:
    """Logits ``[n_answer_tokens_total, vocab]`` predicting each item's answer tokens after
    ``prefix | context | suffix``; ``context`` is a cheat sheet ``[n, H]``, or None for the paragraph as text.
    Only the answer positions go through the LM head (the vocabulary projection dominates otherwise)."""
    host = encoder.host
    model = host.model
    embed = model.get_input_embeddings()
    dev = host.device
    rows, starts = [], []
    for it, ctx in zip(items, contexts, strict=True):
        middle = embed(torch.tensor(it.text, device=dev)) if ctx is None else ctx.to(dev)
        head = torch.cat(
            [
                embed(torch.tensor(it.prefix, device=dev)),
                middle,
                embed(torch.tensor(it.suffix + it.answer, device=dev)),
            ],
            dim=0,
        )
        rows.append(head)
        starts.append(head.shape[0] - len(it.answer))
    length = max(r.shape[0] for r in rows)
    x = rows[0].new_zeros(len(rows), length, rows[0].shape[-1])
    for i, r in enumerate(rows):
        x[i, : r.shape[0]] = r  # right padding: causal attention never looks ahead at it
    batch_idx = torch.tensor([i for i, it in enumerate(items) for _ in it.answer], device=dev)
    pos_idx = torch.tensor(
        [s - 1 + j for s, it in zip(starts, items, strict=True) for j in range(len(it.answer))], device=dev
    )
    with host.using(adapter):
        hidden = getattr(model, model.base_model_prefix)(inputs_embeds=x, use_cache=False).last_hidden_state
        return model.get_output_embeddings()(hidden[batch_idx, pos_idx]).float()


def answer_targets(items: Sequence[PreparedItem], device: torch.device) -> torch.Tensor:
    return torch.tensor([t for it in items for t in it.answer], device=device)


def reading_losses(
    encoder: ContextEncoder,
    items: Sequence[PreparedItem],
    *,
    reader: str | None,
    teacher: str | None,
    kl: bool,
    focus: bool = False,
) -> dict[str, torch.Tensor]:
    """``reading`` (answer CE from cheat sheets) and, with ``kl`` and a teacher, ``reading_kl``; ``focus``:
    the sheets as served, literal tokens chosen for each question (:func:`paragraph_sheets`)."""
    sheets = paragraph_sheets(encoder, items, focus=focus)
    student = answer_logits(encoder, items, sheets, reader)
    gold = answer_targets(items, student.device)
    losses = {"reading": F.cross_entropy(student, gold)}
    if kl and teacher is not None:
        with torch.no_grad():
            target = answer_logits(encoder, items, [None] * len(items), teacher)
        losses["reading_kl"] = token_kl(student, target)
    return losses


class ReadingSampler:
    """Reproducible batches of prepared items."""

    def __init__(self, items: Sequence[PreparedItem], seed: int) -> None:
        self.items, self.seed = list(items), seed

    def batch(self, step: int, size: int) -> list[PreparedItem]:
        return random.Random(self.seed * 1_000_037 + step).sample(self.items, min(size, len(self.items)))


def control_partner(items: Sequence[PreparedItem], i: int) -> PreparedItem:
    """The next item about a different paragraph (its cheat sheets are the wrong-sheet control)."""
    me = (items[i].item.doc_id, items[i].item.paragraph_index)
    for k in range(1, len(items)):
        other = items[(i + k) % len(items)]
        if (other.item.doc_id, other.item.paragraph_index) != me:
            return other
    raise ValueError("the control needs items about at least two paragraphs")


@torch.no_grad()
def reading_validation(
    encoder: ContextEncoder,
    items: Sequence[PreparedItem],
    *,
    reader: str | None,
    teacher: str | None,
    baselines: dict | None = None,
    max_new_tokens: int = 24,
    batch_size: int = 8,
    focus: bool = False,
) -> dict:
    """Held-out reading: answer loss and greedy token F1 with the right and the wrong cheat sheets; text and
    no-context F1 (``baselines``, computed when not given: they do not change while the encoder trains).
    ``focus``: sheets as served, literal tokens chosen for the question asked (the wrong paragraph's too)."""
    from ..evaluation import metrics as M
    from ..generation import GenerationConfig, Generator

    host = encoder.host
    gen = Generator(host)
    cfg = GenerationConfig(max_new_tokens=max_new_tokens)
    template = PromptTemplate()
    sheets: list[torch.Tensor] = []
    for b in range(0, len(items), batch_size):
        sheets.extend(
            s.to(host.dtype) for s in paragraph_sheets(encoder, items[b : b + batch_size], focus=focus)
        )
    index = {id(it): k for k, it in enumerate(items)}
    if focus:  # the other paragraph's sheets, focused on this question (what serving would read)
        wrong = [
            torch.cat(
                [encoder.focus_summarize(s, it.item.question) for s in control_partner(items, i).segments]
            ).to(host.dtype)
            for i, it in enumerate(items)
        ]
    else:
        wrong = [sheets[index[id(control_partner(items, i))]] for i in range(len(items))]

    def f1(prediction: str, it: PreparedItem) -> float:
        return M.max_over_golds(M.token_f1, prediction, list(it.item.answers))

    def answer(it: PreparedItem, context, adapter: str | None) -> str:
        prompt = template.build(host.tokenizer, it.item.question, context)
        return gen.generate(prompt, cfg, adapter=adapter).text.strip()

    out: dict = {"n": len(items)}
    loss_right = loss_wrong = 0.0
    for b in range(0, len(items), batch_size):
        part = items[b : b + batch_size]
        gold = answer_targets(part, host.device)
        loss_right += F.cross_entropy(
            answer_logits(encoder, part, sheets[b : b + batch_size], reader), gold, reduction="sum"
        ).item()
        loss_wrong += F.cross_entropy(
            answer_logits(encoder, part, wrong[b : b + batch_size], reader), gold, reduction="sum"
        ).item()
    n_tokens = sum(len(it.answer) for it in items)
    out["answer_loss_right"] = loss_right / n_tokens
    out["answer_loss_wrong"] = loss_wrong / n_tokens
    out["f1_right"] = sum(f1(answer(it, [s], reader), it) for it, s in zip(items, sheets, strict=True)) / len(
        items
    )
    out["f1_wrong"] = sum(f1(answer(it, [s], reader), it) for it, s in zip(items, wrong, strict=True)) / len(
        items
    )
    if baselines is None:
        text = [f1(answer(it, it.item.context, teacher), it) for it in items]
        none = [f1(answer(it, None, None), it) for it in items]
        baselines = {"f1_text": sum(text) / len(items), "f1_none": sum(none) / len(items)}
    out.update(baselines)
    gap = out["f1_text"] - out["f1_none"]
    out["U"] = (out["f1_right"] - out["f1_wrong"]) / gap if gap > 0 else None
    return out
