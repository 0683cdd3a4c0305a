"""``lloco train-encoder``: teach the summary embeddings (and an encoder LoRA) to carry a segment's content.

Objectives, on pairs of consecutive windows ``(A, B)`` of a text corpus, through the frozen decoder:

- **continuation** (AutoCompressor): language-model loss on ``B`` given only the cheat sheet of ``A``;
- **reconstruction** (autoencoding, as in ICAE): loss on ``A`` itself given its cheat sheet and a cue;
- **distillation**: KL divergence from the decoder reading ``A`` as plain text to the decoder reading its
  cheat sheet, on the tokens of ``B`` (the full-text model's whole next-token distribution is the target);
- **qa** (optional, ``--qa FILE``): ``[cheat sheet of a window holding the answer | question] -> answer``
  through the serving prompt template, for corpora with QA pairs (``{"doc_id", "question", "answers"}``,
  ``doc_id`` naming a corpus file). It asks the sheet for the facts questions ask about.

:func:`evaluate_encoder` is the held-out measurement the issue asks for: loss on ``B`` with no context, with
the right cheat sheet, with a *wrong* cheat sheet (another segment's; the control that separates content
from a learned format prompt) and with ``A`` as plain text (the ceiling).
"""

from __future__ import annotations

import bisect
import json
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from ..encoder import ENCODER_ADAPTER, READER_FILE, ContextEncoder  # noqa: F401 - READER_FILE re-exported
from ..errors import ConfigError, InputError
from ..textcheck import iter_jsonl
from .common import (
    fit_steps,
    load_optimizer,
    lr_at,
    plot_curves,
    read_checkpoint,
    save_optimizer,
    token_kl,
    write_checkpoint,
)
from .reading import (
    READER_ADAPTER,
    TEACHER_ADAPTER,
    ReadingSampler,
    prepare_items,
    reading_losses,
    reading_validation,
)

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
    distill_weight: float = field(default=0.0, metadata={"help": "KL to the text-context decoder on B"})
    qa_weight: float = field(default=0.0, metadata={"help": "answer loss on QA pairs (needs a QA file)"})
    max_answer_tokens: int = 32
    reader_lora_r: int = field(
        default=0,
        metadata={
            "help": "rank of a reader LoRA on the decoder trained jointly with the encoder (0: frozen decoder)"
        },
    )
    reader_lora_alpha: int = 32
    reader_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    reading_weight: float = field(
        default=0.0,
        metadata={
            "help": "answer cross-entropy on SQuAD-style items read from cheat sheets (needs a reading folder)"
        },
    )
    reading_kl_weight: float = field(
        default=0.0,
        metadata={
            "help": "KL to the text-reading teacher on the answer tokens (needs a reading folder and a teacher)"
        },
    )
    reading_batch_size: int = field(default=8, metadata={"help": "reading items per step"})
    reading_max_tokens: int = field(
        default=256, metadata={"help": "paragraphs longer than this are left out"}
    )
    reading_val: int = field(default=32, metadata={"help": "held-out reading questions for greedy F1 and U"})
    freeze_encoder: bool = field(
        default=False,
        metadata={
            "help": "train only the reader: the encoder (and its fingerprint, so every stored sheet) stays as it is"
        },
    )
    reading_focus: bool = field(
        default=False,
        metadata={
            "help": "answer objectives and validation read the sheets as lloco serves them: literal tokens "
            "chosen for each question (lloco_runtime.focus; needs an encoder that can focus)"
        },
    )
    reading_val_articles: int = 8
    max_minutes: float | None = field(
        default=None,
        metadata={
            "help": "stop after about this many minutes; the learning-rate schedule is fitted to the steps that fit"
        },
    )
    grad_clip: float = 1.0
    eval_every: int = 100
    eval_pairs: int = 24
    checkpoint_every: int = 50
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 0 or self.batch_size < 1 or self.continuation_length < 2:
            raise ConfigError(
                "steps must be >= 0 (0: evaluate and write the encoder as it starts), batch_size "
                ">= 1 and continuation_length >= 2"
            )
        weights = (
            self.continuation_weight,
            self.reconstruction_weight,
            self.distill_weight,
            self.qa_weight,
            self.reading_weight,
            self.reading_kl_weight,
        )
        if min(weights) < 0:
            raise ConfigError("objective weights must be >= 0")
        if sum(weights) == 0:
            raise ConfigError("at least one objective needs a positive weight")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise ConfigError(f"max_minutes must be > 0, got {self.max_minutes!r}")
        if self.reader_lora_r < 0 or self.reading_batch_size < 1 or self.reading_val < 2:
            raise ConfigError("reader_lora_r must be >= 0, reading_batch_size >= 1 and reading_val >= 2")
        self.reader_targets = tuple(self.reader_targets)

    @property
    def corpus_objectives(self) -> bool:
        """Whether any objective on corpus windows (continuation, reconstruction, distillation, qa) is on."""
        return any(
            w > 0
            for w in (
                self.continuation_weight,
                self.reconstruction_weight,
                self.distill_weight,
                self.qa_weight,
            )
        )

    @property
    def reading(self) -> bool:
        return self.reading_weight > 0 or self.reading_kl_weight > 0


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
            a_rows.append(doc[s : s + self.a_len])
            b_rows.append(doc[s + self.a_len : s + self.a_len + self.b_len])
        return a_rows, b_rows


def _tokenize(encoder: ContextEncoder, texts: Sequence[str]) -> list[list[int]]:
    tok = encoder.tokenizer
    return [tok(t, add_special_tokens=False)["input_ids"] for t in texts]


def _scored_loss(
    model, prefix: torch.Tensor | None, target: torch.Tensor, embed, skip_first: bool = False
) -> torch.Tensor:
    """Mean cross-entropy of ``target`` tokens ``[B, L]`` after an embedded ``prefix`` ``[B, P, H]``."""
    tgt_emb = embed(target)
    x = tgt_emb if prefix is None else torch.cat([prefix, tgt_emb], dim=1)
    p = 0 if prefix is None else prefix.shape[1]
    logits = model(inputs_embeds=x, use_cache=False).logits
    # token j of target sits at position p + j and is predicted by the logits at position p + j - 1
    first = 1 if (skip_first or p == 0) else 0
    pred = logits[:, p + first - 1 : p + target.shape[1] - 1]
    gold = target[:, first:]
    return F.cross_entropy(pred.reshape(-1, pred.shape[-1]).float(), gold.reshape(-1))


@dataclass
class QAItem:
    """A QA pair located in a corpus document: the answer's token span and the answer's target ids."""

    doc: int
    start: int
    end: int
    question: str
    target: list[int]


def read_qa_items(
    encoder: ContextEncoder,
    path: str | Path,
    names: Sequence[str],
    token_docs: Sequence[list[int]],
    texts: Sequence[str],
    max_answer_tokens: int,
) -> tuple[list[QAItem], list[tuple[int, str]]]:
    """QA rows (checked as ``lloco finetune`` checks them) whose answer occurs in their document, and
    ``(line, reason)`` for every row not used."""
    from .finetune import read_qa

    tok = encoder.tokenizer
    by_name = {n: i for i, n in enumerate(names)}
    rows, bad = read_qa(path, set(by_name), unknown="not a training document of the corpus")
    offsets: dict[int, list[int]] = {}
    items: list[QAItem] = []
    eos = tok.eos_token_id
    for row in rows:
        d = by_name[row.doc_id]
        text = texts[d]
        found = next(((a, text.find(a)) for a in row.answers if a in text), None)
        if found is None:
            bad.append((row.line, "no answer occurs in the document's text"))
            continue
        if d not in offsets:
            enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
            offsets[d] = [o[0] for o in enc["offset_mapping"]]
        starts = offsets[d]
        answer, c0 = found
        t0 = max(0, bisect.bisect_right(starts, c0) - 1)
        t1 = max(t0 + 1, bisect.bisect_left(starts, c0 + len(answer)))
        if t1 - t0 > encoder.config.segment_length or len(token_docs[d]) < encoder.config.segment_length:
            bad.append((row.line, "answer longer than a segment, or document shorter than one"))
            continue
        ids = tok(answer, add_special_tokens=False)["input_ids"][:max_answer_tokens]
        items.append(QAItem(d, t0, t1, row.question, ids + ([int(eos)] if eos is not None else [])))
    return items, sorted(bad)


class QASampler:
    """Batches of QA items with a random segment-sized window around each answer (reproducible per step)."""

    def __init__(
        self, items: Sequence[QAItem], token_docs: Sequence[list[int]], seg_len: int, seed: int
    ) -> None:
        self.items, self.docs, self.seg_len, self.seed = list(items), token_docs, seg_len, seed

    def batch(self, step: int, size: int) -> tuple[list[list[int]], list[QAItem]]:
        rng = random.Random(self.seed * 1_000_033 + step)
        picked = rng.choices(self.items, k=size)
        windows = []
        for it in picked:
            doc = self.docs[it.doc]
            lo = max(0, it.end - self.seg_len)
            hi = min(it.start, len(doc) - self.seg_len)
            s = rng.randint(lo, max(lo, hi))
            windows.append(doc[s : s + self.seg_len])
        return windows, picked


def _qa_loss(encoder: ContextEncoder, soft: torch.Tensor, items: Sequence[QAItem]) -> torch.Tensor:
    """Answer loss of ``[template prefix | sheet | question suffix] -> answer`` (right-padded batch)."""
    from ..prompt import PromptTemplate

    host, tok = encoder.host, encoder.tokenizer
    model, embed, dev = host.model, host.model.get_input_embeddings(), host.device
    rows, spans = [], []
    for sheet, it in zip(soft, items, strict=True):
        pieces = PromptTemplate().build(tok, it.question, sheet).pieces
        parts = []
        for piece in pieces:
            if isinstance(piece, str):
                parts.append(
                    embed(torch.tensor(tok(piece, add_special_tokens=False)["input_ids"], device=dev))
                )
            else:
                parts.append(piece)
        n = sum(p.shape[0] for p in parts)
        parts.append(embed(torch.tensor(it.target, device=dev)))
        rows.append(torch.cat(parts, dim=0))
        spans.append((n, len(it.target)))
    length = max(r.shape[0] for r in rows)
    x = rows[0].new_zeros(len(rows), length, rows[0].shape[-1])
    labels = torch.full((len(rows), length), -100, dtype=torch.long, device=dev)
    for i, (r, (n, m)) in enumerate(zip(rows, spans, strict=True)):
        x[i, : r.shape[0]] = r  # right padding: causal attention never looks ahead at it
        labels[i, n : n + m] = torch.tensor(items[i].target, device=dev)
    logits = model(inputs_embeds=x, use_cache=False).logits[:, :-1]
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1), ignore_index=-100
    )


def _distill_loss(model, soft: torch.Tensor, a: torch.Tensor, b: torch.Tensor, embed) -> torch.Tensor:
    """KL(text-context decoder || cheat-sheet decoder) over the next-token distributions of ``B[1:]``."""
    n = b.shape[1]
    with torch.no_grad():
        x = embed(torch.cat([a, b], dim=1))
        teacher = model(inputs_embeds=x, use_cache=False).logits[:, a.shape[1] : a.shape[1] + n - 1].float()
    x = torch.cat([soft, embed(b)], dim=1)
    p = soft.shape[1]
    student = model(inputs_embeds=x, use_cache=False).logits[:, p : p + n - 1].float()
    return token_kl(student, teacher)


def _objective(
    encoder: ContextEncoder,
    a_rows,
    b_rows,
    cfg: EncoderTrainingConfig,
    qa: tuple[list[list[int]], list[QAItem]] | None = None,
    decoder: str | None = None,
) -> dict[str, torch.Tensor]:
    """Corpus-window losses; the decoder side runs with adapter ``decoder`` (the reader LoRA, or None)."""
    host = encoder.host
    model = host.model
    embed = model.get_input_embeddings()
    dev = host.device
    adapter = ENCODER_ADAPTER if encoder.has_lora else None
    with host.using(adapter):
        soft = encoder.summarize(a_rows)  # [B, S, H], differentiable
        qa_soft = encoder.summarize(qa[0]) if qa is not None else None
    losses: dict[str, torch.Tensor] = {}
    with host.using(decoder):
        b = torch.tensor(b_rows, device=dev)
        if cfg.continuation_weight > 0:
            losses["continuation"] = _scored_loss(model, soft, b, embed)
        if cfg.reconstruction_weight > 0:
            cue = torch.tensor(
                encoder.tokenizer(RECON_CUE, add_special_tokens=False)["input_ids"], device=dev
            )
            prefix = torch.cat([soft, embed(cue).unsqueeze(0).expand(len(a_rows), -1, -1)], dim=1)
            a = torch.tensor(a_rows, device=dev)
            losses["reconstruction"] = _scored_loss(model, prefix, a, embed)
        if cfg.distill_weight > 0:
            losses["distill"] = _distill_loss(model, soft, torch.tensor(a_rows, device=dev), b, embed)
        if qa_soft is not None:
            losses["qa"] = _qa_loss(encoder, qa_soft, qa[1])
    return losses


def _autocast(encoder: ContextEncoder):
    """bf16 autocast for float32 models on CUDA (master weights stay float32); a no-op elsewhere."""
    dev = encoder.host.device
    return torch.autocast(
        device_type=dev.type,
        dtype=torch.bfloat16,
        enabled=dev.type == "cuda" and encoder.dtype == torch.float32,
    )


@torch.no_grad()
def evaluate_encoder(
    encoder: ContextEncoder,
    texts: Sequence[str],
    *,
    n_pairs: int = 24,
    b_len: int = 128,
    seed: int = 1234,
    batch_size: int = 4,
    decoder: str | None = None,
) -> dict[str, float]:
    """Held-out LM loss of ``B`` (tokens 2..L, nats/token) under four contexts; see the module docstring.
    ``decoder``: the decoder adapter the cheat-sheet contexts are read with (a reader LoRA; None: base)."""
    a_len = encoder.config.segment_length
    sampler = PairSampler(_tokenize(encoder, texts), a_len, b_len, seed)
    a_rows, b_rows = sampler.batch(0, n_pairs)
    host = encoder.host
    model, embed, dev = host.model, host.model.get_input_embeddings(), host.device
    adapter = ENCODER_ADAPTER if encoder.has_lora else None
    sums = {"no_context": 0.0, "cheat_sheet": 0.0, "wrong_cheat_sheet": 0.0, "text_context": 0.0}
    for i in range(0, n_pairs, batch_size):
        a, b = a_rows[i : i + batch_size], torch.tensor(b_rows[i : i + batch_size], device=dev)
        with host.using(adapter):
            soft = encoder.summarize(a)
        wrong = soft.roll(1, dims=0) if len(a) > 1 else encoder.summarize(a_rows[i - 1 : i])
        with host.using(None):
            sums["no_context"] += _scored_loss(model, None, b, embed).item() * len(a)
        with host.using(decoder):
            sums["cheat_sheet"] += _scored_loss(model, soft, b, embed, skip_first=True).item() * len(a)
            sums["wrong_cheat_sheet"] += _scored_loss(model, wrong, b, embed, skip_first=True).item() * len(a)
        with host.using(None):
            text = embed(torch.tensor(a, device=dev))
            sums["text_context"] += _scored_loss(model, text, b, embed, skip_first=True).item() * len(a)
    return {k: v / n_pairs for k, v in sums.items()}


def _trainable(
    encoder: ContextEncoder, reader: str | None = None, *, freeze_encoder: bool = False
) -> tuple[list[str], list[torch.nn.Parameter]]:
    """The parameters train-encoder updates: the encoder's own (summary embeddings, connector, encoder LoRA),
    unless ``freeze_encoder``, and, with ``reader``, that decoder LoRA's."""
    names, params = [], []
    if encoder.uses_summary_tokens and not freeze_encoder:
        names.append("embed_summary.weight")
        params.append(encoder.embed_summary.weight)
    for n, p in encoder.connector.named_parameters() if not freeze_encoder else ():
        names.append(f"connector.{n}")
        params.append(p)
    adapters = ([] if freeze_encoder else [ENCODER_ADAPTER]) + ([reader] if reader else [])
    for n, p in encoder.host.model.named_parameters():
        if "lora_" in n and any(f".{a}." in f"{n}." for a in adapters):
            names.append(n)
            params.append(p)
    return names, params


def _add_reader(encoder: ContextEncoder, cfg: EncoderTrainingConfig, init: str | Path | None) -> str:
    """Inject the reader LoRA on the decoder (fresh, or from an adapter file made by an earlier run)."""
    from peft import LoraConfig, set_peft_model_state_dict

    from ..adapters import AdapterArtifact, lora_config_from_dict

    host = encoder.host
    if READER_ADAPTER in host.adapter_names():
        host.delete_adapter(READER_ADAPTER)
    if init is not None:
        art = AdapterArtifact.from_bytes(Path(init).read_bytes())
        if art.base_fingerprint != host.fingerprint:
            raise ConfigError(
                f"reader adapter {init} was trained on another base model; start a fresh reader"
            )
        host.add_adapter(READER_ADAPTER, lora_config_from_dict(art.lora_config))
        set_peft_model_state_dict(host.model, art.tensors, adapter_name=READER_ADAPTER)
    else:
        host.add_adapter(
            READER_ADAPTER,
            LoraConfig(
                r=cfg.reader_lora_r,
                lora_alpha=cfg.reader_lora_alpha,
                lora_dropout=0.0,
                target_modules=list(cfg.reader_targets),
                bias="none",
            ),
        )
    host.resync()
    return READER_ADAPTER


def load_teacher(host, path: str | Path) -> str:
    """Inject the frozen text-reading teacher (an adapter file of ``lloco train-teacher``)."""
    from peft import set_peft_model_state_dict

    from ..adapters import AdapterArtifact, lora_config_from_dict

    p = Path(path)
    if not p.is_file():
        raise InputError(
            f"teacher adapter {p} does not exist; train one with `lloco train-teacher` or drop "
            "--reading-kl-weight"
        )
    art = AdapterArtifact.from_bytes(p.read_bytes())
    if art.base_fingerprint != host.fingerprint:
        raise ConfigError(
            f"teacher adapter {p} was trained on another base model ({art.base_fingerprint[:12]}, "
            f"loaded {host.fingerprint[:12]}); train a teacher for this model"
        )
    if TEACHER_ADAPTER in host.adapter_names():
        host.delete_adapter(TEACHER_ADAPTER)
    host.add_adapter(TEACHER_ADAPTER, lora_config_from_dict(art.lora_config))
    set_peft_model_state_dict(host.model, art.tensors, adapter_name=TEACHER_ADAPTER)
    host.resync()
    return TEACHER_ADAPTER


@torch.enable_grad()
def train_encoder(
    encoder: ContextEncoder,
    corpus: str | Path,
    out_dir: str | Path,
    cfg: EncoderTrainingConfig | None = None,
    *,
    resume: bool = True,
    progress: bool = True,
    val_texts: Sequence[str] | None = None,
    qa_path: str | Path | None = None,
    reading_path: str | Path | None = None,
    teacher_path: str | Path | None = None,
    reader_init: str | Path | None = None,
) -> dict:
    """Train ``encoder`` in place on ``corpus``; checkpoints, history, loss PNG and the artifact go to
    ``out_dir`` (``encoder/`` is loadable with :meth:`ContextEncoder.load`). Resumes from the last
    checkpoint in ``out_dir`` when ``resume``. ``qa_path`` (with ``cfg.qa_weight > 0``) adds the QA objective
    on pairs whose ``doc_id`` names a training document of the corpus.

    With ``cfg.reader_lora_r > 0`` a reader LoRA on the decoder trains jointly (``reader_init``: start it from
    an adapter file) and is written as ``encoder/reader.safetensors``. ``reading_path`` (a SQuAD-layout
    folder, with ``cfg.reading_weight`` / ``cfg.reading_kl_weight``) adds the answer objectives of
    :mod:`.reading`, the KL one against the teacher adapter at ``teacher_path``. Returns the history dict."""
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
    train_tokens = _tokenize(encoder, train)
    sampler = PairSampler(train_tokens, encoder.config.segment_length, cfg.continuation_length, cfg.seed)
    qa_sampler: QASampler | None = None
    if (cfg.qa_weight > 0) != (qa_path is not None):
        raise ConfigError("the QA objective needs both a QA file (--qa) and a positive --qa-weight")
    if qa_path is not None:
        items, bad = read_qa_items(
            encoder, qa_path, [docs[i][0] for i in order[n_val:]], train_tokens, train, cfg.max_answer_tokens
        )
        for line, reason in bad[:20]:
            log.warning("%s:%d: not used: %s", qa_path, line, reason)
        print(
            f"QA objective: {len(items)} pairs from {qa_path}, {len(bad)} rows not used"
            + (" (first reasons in the log)" if bad else "")
        )
        if not items:
            raise InputError(
                f"no usable QA pair in {qa_path}: doc_id must name a corpus file (its stem) and an "
                "answer must occur in that document's text"
            )
        qa_sampler = QASampler(items, train_tokens, encoder.config.segment_length, cfg.seed)
    if cfg.reading != (reading_path is not None):
        raise ConfigError(
            "the reading objectives need both a reading folder (--reading) and a positive "
            "--reading-weight or --reading-kl-weight"
        )
    if cfg.reading_kl_weight > 0 and teacher_path is None:
        raise ConfigError(
            "--reading-kl-weight needs a teacher adapter (--teacher, from `lloco train-teacher`)"
        )
    if cfg.reading_focus and not (cfg.reading and encoder.can_focus):
        raise ConfigError(
            "--reading-focus needs the reading objectives (--reading with a weight) and an encoder whose "
            "literal tokens can be chosen per question: --pooling mean --summary-layer 0 --literal-tokens N"
        )
    reading_sampler: ReadingSampler | None = None
    reading_val: list = []
    if reading_path is not None:
        from .squad import read_reading_items, split_by_article

        train_items, val_items = split_by_article(
            read_reading_items(reading_path), val_articles=cfg.reading_val_articles, seed=cfg.seed
        )
        prep = {"max_context_tokens": cfg.reading_max_tokens, "max_answer_tokens": cfg.max_answer_tokens}
        prepared = prepare_items(encoder, train_items, **prep)
        val_rng = random.Random(cfg.seed)
        reading_val = prepare_items(
            encoder, val_rng.sample(val_items, min(len(val_items), 4 * cfg.reading_val)), **prep
        )[: cfg.reading_val]
        print(
            f"reading objective: {len(prepared)} training questions ({len(train_items) - len(prepared)} with "
            f"paragraphs over {cfg.reading_max_tokens} tokens left out), {len(reading_val)} held-out"
        )
        if not prepared or len(reading_val) < 2:
            raise InputError(f"too few usable reading questions in {reading_path}")
        reading_sampler = ReadingSampler(prepared, cfg.seed)

    host = encoder.host
    reader = _add_reader(encoder, cfg, reader_init) if cfg.reader_lora_r > 0 or reader_init else None
    teacher = load_teacher(host, teacher_path) if teacher_path is not None else None
    for p in host.model.parameters():
        p.requires_grad_(False)
    names, params = _trainable(encoder, reader, freeze_encoder=cfg.freeze_encoder)
    if not params:
        raise ConfigError(
            "nothing to train: --freeze-encoder needs a reader (--reader-lora-r or --reader-init)"
        )
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    history: dict = {
        "config": asdict(cfg),
        "encoder": encoder.config.to_dict(),
        "train": [],
        "val": [],
        "seconds": 0.0,
    }
    start_step = 0
    ckpt_dir = out / "checkpoint"
    ck = read_checkpoint(ckpt_dir) if resume else None
    if ck is not None:
        saved, opt_tensors, meta = ck
        if meta.get("encoder") != encoder.config.to_dict():
            raise ConfigError(
                f"checkpoint in {ckpt_dir} is for encoder config {meta.get('encoder')}; "
                "use another --out folder or the same settings"
            )
        with torch.no_grad():
            if encoder.uses_summary_tokens:
                encoder.embed_summary.weight.copy_(saved["embed_summary.weight"])
            encoder.connector.load_state_dict(
                {k[len("connector.") :]: v for k, v in saved.items() if k.startswith("connector.")}
            )
        lora = {k[len("lora.") :]: v for k, v in saved.items() if k.startswith("lora.")}
        if lora:
            set_peft_model_state_dict(host.model, lora, adapter_name=ENCODER_ADAPTER)
        reader_state = {k[len("reader.") :]: v for k, v in saved.items() if k.startswith("reader.")}
        if reader is not None and reader_state:
            set_peft_model_state_dict(host.model, reader_state, adapter_name=reader)
        load_optimizer(opt, names, opt_tensors)
        history = meta["history"]
        start_step = int(meta["step"])
        log.info("resumed from step %d", start_step)
        print(f"resuming from checkpoint at step {start_step}")

    def evaluate(step: int) -> None:
        with _autocast(encoder):
            res = evaluate_encoder(
                encoder, val, n_pairs=cfg.eval_pairs, b_len=cfg.continuation_length, decoder=reader
            )
            if reading_val:
                r = reading_validation(
                    encoder,
                    reading_val,
                    reader=reader,
                    teacher=teacher,
                    baselines=history.get("reading_baselines"),
                    focus=cfg.reading_focus,
                )
                history["reading_baselines"] = {k: r[k] for k in ("f1_text", "f1_none")}
                res |= {f"reading_{k}": v for k, v in r.items()}
        history["val"].append({"step": step, **res})

    def checkpoint(step: int) -> None:
        state = {k: v for k, v in encoder.trainable_state().items()}
        if reader is not None:
            from peft import get_peft_model_state_dict

            state |= {
                f"reader.{k}": v
                for k, v in get_peft_model_state_dict(host.model, adapter_name=reader).items()
            }
        write_checkpoint(
            ckpt_dir,
            params=state,
            opt_state=save_optimizer(opt, names),
            meta={"step": step, "encoder": encoder.config.to_dict(), "history": history},
        )

    if start_step == 0 and not history["val"]:
        evaluate(0)
    weights = {
        "continuation": cfg.continuation_weight,
        "reconstruction": cfg.reconstruction_weight,
        "distill": cfg.distill_weight,
        "qa": cfg.qa_weight,
        "reading": cfg.reading_weight,
        "reading_kl": cfg.reading_kl_weight,
    }
    total = int(history.get("planned_steps") or cfg.steps)
    bar = tqdm(initial=start_step, total=total, desc="train-encoder", disable=not progress)
    t_begin = t_last = time.perf_counter()
    step = start_step
    while step < total:
        if cfg.max_minutes is not None:  # fit the plan to the time budget (the pace measured so far)
            now = time.perf_counter()
            total = fit_steps(
                step,
                first=start_step,
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
        losses: dict[str, torch.Tensor] = {}
        with _autocast(encoder):
            if cfg.corpus_objectives:
                a_rows, b_rows = sampler.batch(step, cfg.batch_size)
                qa = qa_sampler.batch(step, cfg.batch_size) if qa_sampler is not None else None
                losses |= _objective(encoder, a_rows, b_rows, cfg, qa, decoder=reader)
            if reading_sampler is not None:
                losses |= reading_losses(
                    encoder,
                    reading_sampler.batch(step, cfg.reading_batch_size),
                    reader=reader,
                    teacher=teacher,
                    kl=cfg.reading_kl_weight > 0,
                    focus=cfg.reading_focus,
                )
        loss = sum(weights[k] * v for k, v in losses.items())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        now = time.perf_counter()
        history["seconds"] += now - t_last
        t_last = now
        row = {"step": step + 1, "loss": loss.item()} | {k: v.item() for k, v in losses.items()}
        history["train"].append(row)
        bar.update(1)
        bar.set_postfix({k: f"{v:.3f}" for k, v in row.items() if k != "step"})
        last = step + 1 == total
        if (step + 1) % cfg.eval_every == 0 or last:
            evaluate(step + 1)
            v = history["val"][-1]
            bar.write(
                f"step {step + 1}: held-out loss no-context {v['no_context']:.3f} | cheat sheet "
                f"{v['cheat_sheet']:.3f} | wrong sheet {v['wrong_cheat_sheet']:.3f} | text "
                f"{v['text_context']:.3f}"
            )
            if "reading_f1_right" in v:
                bar.write(
                    f"step {step + 1}: held-out reading F1 right sheets {100 * v['reading_f1_right']:.1f} | "
                    f"wrong sheets {100 * v['reading_f1_wrong']:.1f} | text {100 * v['reading_f1_text']:.1f} "
                    f"| none {100 * v['reading_f1_none']:.1f} | U {_fmt(v['reading_U'])} | answer loss "
                    f"{v['reading_answer_loss_right']:.3f} right / {v['reading_answer_loss_wrong']:.3f} wrong"
                )
        if (step + 1) % cfg.checkpoint_every == 0 or last:
            checkpoint(step + 1)
            _write_outputs(encoder, out, history, reader)
        step += 1
    bar.close()
    for p in params:
        p.requires_grad_(False)
    encoder.invalidate_fingerprint()
    _write_outputs(encoder, out, history, reader)
    if teacher is not None:
        host.delete_adapter(teacher)
    return history


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}"


def _write_outputs(encoder: ContextEncoder, out: Path, history: dict, reader: str | None = None) -> None:
    encoder.invalidate_fingerprint()
    encoder.reader = None  # a reader loaded with the encoder was made for its old weights
    if reader is not None:
        from ..adapters import AdapterArtifact

        last = history["val"][-1] if history["val"] else {}
        info = {
            "kind": "reader",
            "step": last.get("step"),
            "reading_U": last.get("reading_U"),
            "reading_f1_right": last.get("reading_f1_right"),
            "reading_f1_wrong": last.get("reading_f1_wrong"),
        }
        art = AdapterArtifact.from_model(
            encoder.host.model,
            reader,
            base_fingerprint=encoder.host.fingerprint,
            encoder_fingerprint=encoder.fingerprint,
            info=info,
        )
        encoder.reader = art.to_bytes()
    encoder.save(out / "encoder")  # encoder files + reader.safetensors (READER_FILE) when trained
    (out / "history.json").write_text(json.dumps(history, indent=1))
    train = [(r["step"], r["loss"]) for r in history["train"]]
    val = {
        name: [(r["step"], r[key]) for r in history["val"]]
        for name, key in (
            ("held-out: no context", "no_context"),
            ("held-out: cheat sheet", "cheat_sheet"),
            ("held-out: wrong sheet", "wrong_cheat_sheet"),
            ("held-out: text context", "text_context"),
        )
    }
    plot_curves(out / "loss.png", train, val, "lloco train-encoder")
