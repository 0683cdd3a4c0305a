"""Run an evaluation set through one decoder in several context modes and score the answers.

Every mode uses the same decoder and the same prompt template (:class:`~lloco_runtime.prompt.PromptTemplate`);
only the context differs:

- ``none``: the question alone.
- ``full``: the question's document as text. A document longer than the decoder's window is truncated to
  its **head**: the window minus the prompt template with the question, minus ``max_new_tokens``, minus a
  16-token margin (and at most ``max_context_tokens`` if set). Per question the JSON says ``truncated`` and
  ``context_fraction`` (kept / total document tokens).
- ``rag``: the top-k retrieved chunks of the group as text (document order).
- ``lloco``: the cheat sheets of the same top-k chunks, no adapter.
- ``lloco-adapter``: the same with the group's active adapter.
- ``lloco-doc`` / ``lloco-doc-adapter``: the question's document's own cheat sheets in order (no
  retrieval, as in the paper's QA experiments), head-truncated to the window like ``full``.
- ``lloco-control`` / ``lloco-adapter-control``: the control every cheat-sheet claim needs: the cheat sheets
  retrieved for *another* question (the next selected question about a different document), so the context
  is real but unrelated. A trained adapter also learns the answer format, which helps whatever the context;
  only the gap between ``lloco-adapter`` and ``lloco-adapter-control`` is knowledge read from cheat sheets.
- ``lloco-doc-control``: the same control for ``lloco-doc-adapter``: the cheat sheets (in order, truncated
  alike) of *another* document, that of the next selected question whose document differs, with the same
  adapter. Per question the JSON names it (``control_qid``, ``control_doc_id``).
- ``full-adapter`` / ``rag-adapter``: ``full`` / ``rag`` answered with the **text adapter** (a LoRA trained
  to answer from text, ``lloco train-teacher``; the shipped teacher unless another file is given): the fair
  text baselines of an adapter that reads cheat sheets.

Adapters: the text-adapter modes need an adapter file (``text_adapter``). The cheat-sheet adapter modes
(``lloco-adapter``, ``lloco-doc-adapter``, ``lloco-adapter-control``, ``lloco-doc-control``) use
``adapter_file`` when given (e.g. the reader LoRA of ``lloco train-encoder``), else the group's active
adapter, else the encoder's own reader adapter (``reader.safetensors`` in its folder). The modes without
"adapter" in their name run the plain decoder. File adapters are registered on the runtime as ``file:text`` / ``file:reader`` (fingerprints are
checked then, before any question runs); each mode's report says which adapter it used
(``settings.adapter``). Reading utilisation, ``(lloco-doc-adapter - lloco-doc-control) / (full-adapter -
none)``, is computed from saved runs by ``lloco eval-report --u``.

Retrieval modes search the whole group (all documents of the set), so other documents act as distractors.
The set's documents are ingested into the group once; re-ingesting unchanged documents with the same
encoder is a no-op in the store (a different encoder replaces them).

This module runs and scores; the tables, lines and plots made from its reports are in :mod:`.report`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from ..errors import InputError
from ..request import check_found, context_sheets, reading_order
from ..store import DEFAULT_COLLECTION, DEFAULT_MODE, DEFAULT_TOP_K, RetrievalMode
from . import metrics as M
from .datasets import Dataset, Question

log = logging.getLogger(__name__)

MODES = (
    "none",
    "full",
    "full-adapter",
    "rag",
    "rag-adapter",
    "lloco",
    "lloco-adapter",
    "lloco-doc",
    "lloco-doc-adapter",
    "lloco-control",
    "lloco-adapter-control",
    "lloco-doc-control",
)
FULL_MODES = frozenset({"full", "full-adapter"})  # the document as text
RAG_TEXT_MODES = frozenset({"rag", "rag-adapter"})  # the retrieved chunks as text
RETRIEVAL_MODES = frozenset(
    {"rag", "rag-adapter", "lloco", "lloco-adapter", "lloco-control", "lloco-adapter-control"}
)
DOC_MODES = frozenset({"lloco-doc", "lloco-doc-adapter", "lloco-doc-control"})  # the document's cheat sheets
CONTROL_MODES = frozenset({"lloco-control", "lloco-adapter-control", "lloco-doc-control"})
COMPARE_DEFAULT = ("none", "full", "rag", "lloco", "lloco-adapter")
STORE_MODES = frozenset(MODES) - {"none"} - FULL_MODES
TEXT_ADAPTER_MODES = frozenset({"full-adapter", "rag-adapter"})  # with the text adapter (the teacher)
SHEET_ADAPTER_MODES = frozenset(
    {"lloco-adapter", "lloco-doc-adapter", "lloco-adapter-control", "lloco-doc-control"}
)
ADAPTER_MODES = TEXT_ADAPTER_MODES | SHEET_ADAPTER_MODES
TEXT_ADAPTER_ID = "file:text"  # runtime ids of adapters registered from files
READER_ADAPTER_ID = "file:reader"
DEFAULT_MAX_NEW_TOKENS = {"qa": 32, "contains": 32, "choice": 8, "rouge": 128}
MARGIN = 16  # tokens kept free when truncating: decode -> re-encode can shift a token or two
MC_INSTRUCTION = "Answer with the letter of the correct option."


@dataclass(frozen=True)
class EvalSettings:
    """How one evaluation runs (recorded in the JSON report)."""

    group: str
    collection: str = DEFAULT_COLLECTION
    top_k: int = DEFAULT_TOP_K
    retrieval: str = DEFAULT_MODE.value
    max_new_tokens: int | None = None  # None: by metric (DEFAULT_MAX_NEW_TOKENS)
    max_context_tokens: int | None = None  # cap for full / lloco-doc (None: the decoder's window)
    limit: int | None = None
    only_needed_docs: bool = False
    offset: int = 0  # questions skipped before ``limit`` counts: run a set in parts, pooled by eval-report

    def __post_init__(self) -> None:
        if self.top_k < 1:
            raise InputError("--top-k must be >= 1")
        if self.limit is not None and self.limit < 1:
            raise InputError("--limit must be >= 1")
        if self.offset < 0:
            raise InputError("--offset must be >= 0")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise InputError("--max-new-tokens must be >= 1")
        if self.max_context_tokens is not None and self.max_context_tokens < 1:
            raise InputError("--max-context-tokens must be >= 1")
        RetrievalMode.parse(self.retrieval)  # InputError naming the modes


def parse_modes(spec: str | Sequence[str] | None) -> list[str]:
    """``"none,rag"`` -> ``["none", "rag"]`` (InputError naming the valid modes); None -> the default list."""
    if spec is None:
        return list(COMPARE_DEFAULT)
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    modes = [m.strip() for m in items if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise InputError(
            f"unknown mode(s) {', '.join(bad) or '(none given)'}; choose from {', '.join(MODES)}"
        )
    return list(dict.fromkeys(modes))


def resolve_text_adapter(path: str | Path | None, modes: Sequence[str]) -> Path | None:
    """The text adapter file for ``modes``: ``path`` if given, else the shipped teacher when a text-adapter
    mode is asked for. Checked before any model loads: InputError if it is needed and there is none."""
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise InputError(
                f"--text-adapter {p} is not a file; train a text adapter with `lloco train-teacher`"
            )
        return p
    needing = [m for m in modes if m in TEXT_ADAPTER_MODES]
    if not needing:
        return None
    from .. import runtime

    shipped = runtime.shipped_teacher_adapter()
    if shipped is None:
        raise InputError(
            f"mode(s) {', '.join(needing)} answer with the text adapter (a LoRA trained to answer "
            "from text), but none was given and no shipped teacher was found: pass --text-adapter "
            "FILE, or train one with `lloco train-teacher`"
        )
    return Path(shipped)


def question_text(q: Question) -> str:
    """The question as the model sees it: with ``A) ... B) ...`` options and a letter instruction for MC."""
    if q.options is None:
        return q.question
    return f"{q.question}\n\nOptions:\n{M.format_options(q.options)}\n\n{MC_INSTRUCTION}"


def score(q: Question, prediction: str, metric: str) -> dict[str, Any]:
    """Per-question scores; keys that do not apply to ``metric`` are None."""
    out: dict[str, Any] = {"f1": None, "em": None, "correct": None, "choice": None, "rouge": None}
    if metric == "choice":
        out["choice"] = M.parse_choice(prediction, q.options or ())
        out["correct"] = float(out["choice"] == q.gold_label)
        return out
    if metric == "rouge":
        out["rouge"] = M.rouge(prediction, q.answers)
        return out
    out["f1"] = M.max_over_golds(M.token_f1, prediction, q.answers)
    out["em"] = M.max_over_golds(M.exact_match, prediction, q.answers)
    if metric == "contains":
        out["correct"] = M.contains_answer(prediction, q.answers)
    return out


def _mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def summarise(
    dataset: str, mode: str, metric: str, rows: list[dict[str, Any]], settings: dict[str, Any]
) -> dict[str, Any]:
    """The report of one mode: means over ``rows`` (None where the metric does not apply)."""
    rouge = None
    if metric == "rouge":
        rouge = {k: _mean([r["rouge"][k] for r in rows]) for k in ("rouge1", "rouge2", "rougeL")}
    return {
        "dataset": dataset,
        "mode": mode,
        "n": len(rows),
        "metric": metric,
        "f1": _mean([r["f1"] for r in rows]),
        "em": _mean([r["em"] for r in rows]),
        "accuracy": _mean([r["correct"] for r in rows]),
        "rouge": rouge,
        "context_tokens_mean": _mean([r["context_tokens"] for r in rows]),
        "latency_s_mean": _mean([r["latency_s"] for r in rows]),
        "prefill_s_mean": _mean([r["prefill_s"] for r in rows]),
        "settings": settings,
        "per_question": rows,
    }


class Harness:
    """One dataset, one runtime, optionally one store; :meth:`run` evaluates a mode.

    ``lloco`` is a :class:`~lloco_runtime.runtime.LLoCO`; ``store`` a
    :class:`~lloco_runtime.store.CheatSheetStore` (needed only for the retrieval and ``lloco-doc`` modes).
    ``text_adapter``: adapter file of the text-adapter modes; ``adapter_file``: adapter file of the
    cheat-sheet adapter modes (instead of the group's active adapter). Both are registered on the runtime
    here, so a fingerprint mismatch is refused before anything runs.
    """

    def __init__(
        self,
        lloco,
        dataset: Dataset,
        settings: EvalSettings,
        store=None,
        *,
        text_adapter: str | Path | None = None,
        adapter_file: str | Path | None = None,
    ) -> None:
        self.lloco = lloco
        self.dataset = dataset
        self.settings = settings
        self.store = store
        self.service = None
        if store is not None:
            from ..service import LLoCOService

            self.service = LLoCOService(lloco, store)
        start = settings.offset
        stop = start + settings.limit if settings.limit else None
        self.questions = list(dataset.questions[start:stop])
        if not self.questions:
            raise InputError(
                f"--offset {start} skips all {len(dataset.questions)} questions of {dataset.name}; "
                f"use an offset below {len(dataset.questions)}"
            )
        self.max_new_tokens = settings.max_new_tokens or DEFAULT_MAX_NEW_TOKENS[dataset.metric]
        self._doc_ids: dict[str, list[int]] = {}
        self._doc_sheets: dict[str, list[torch.Tensor]] = {}
        self.ingest_report = None
        self.text_adapter = (
            None
            if text_adapter is None
            else self._register_file(TEXT_ADAPTER_ID, text_adapter, "--text-adapter", text_only=True)
        )
        self.adapter_file = (
            None
            if adapter_file is None
            else self._register_file(READER_ADAPTER_ID, adapter_file, "--adapter-file", text_only=False)
        )

    def _register_file(self, adapter_id: str, path: str | Path, flag: str, *, text_only: bool) -> Path:
        """Register an adapter file on the runtime as ``adapter_id`` (AdapterManager checks fingerprints)."""
        from ..adapters import AdapterArtifact
        from ..errors import AdapterError, FingerprintMismatchError

        p = Path(path)
        if not p.is_file():
            raise InputError(f"{flag} {p} is not a file")
        try:
            data = p.read_bytes()
            if text_only:
                # A text adapter reads text, never cheat sheets: only its base model has to match, so an
                # encoder it may record (e.g. the one current when it was trained) is not held against it.
                data = replace(AdapterArtifact.from_bytes(data), encoder_fingerprint=None).to_bytes()
            self.lloco.adapters.register(adapter_id, data)
        except FingerprintMismatchError as exc:
            raise FingerprintMismatchError(f"{flag} {p}: {exc}") from None
        except AdapterError as exc:
            raise AdapterError(f"{flag} {p}: {exc}") from None
        return p

    # -- setup --------------------------------------------------------------------------------------------

    def ingest(self, *, progress: bool = False):
        """Ingest the set's documents (or only those the selected questions need) into the group."""
        if self.store is None:
            raise InputError("this mode needs a store (retrieval or cheat sheets); open a CheatSheetStore")
        docs = self.dataset.documents_for(self.questions if self.settings.only_needed_docs else None)
        self.ingest_report = self.store.ingest(
            docs,
            group=self.settings.group,
            collection=self.settings.collection,
            encoder=self.lloco.encoder,
            progress=progress,
        )
        log.info("ingest: %s", self.ingest_report.summary())
        return self.ingest_report

    def active_adapter(self) -> int | None:
        """The group's active adapter id (None if it has none)."""
        return self.store.get_group(self.settings.group, self.settings.collection).active_adapter_id

    def has_adapter(self, mode: str) -> bool:
        """Whether ``mode`` can run as far as adapters go (True for modes without one)."""
        if mode in TEXT_ADAPTER_MODES:
            return self.text_adapter is not None
        if mode in SHEET_ADAPTER_MODES:
            return (
                self.adapter_file is not None
                or self.active_adapter() is not None
                or self.lloco.reader_id is not None
            )
        return True

    def adapter_for(self, mode: str) -> tuple[int | str | None, dict[str, Any] | None]:
        """(id passed to the runtime, description for the report) of the adapter ``mode`` answers with."""
        if mode in TEXT_ADAPTER_MODES:
            if self.text_adapter is None:
                raise InputError(
                    f"mode {mode!r} answers with the text adapter, but none was given: pass "
                    "--text-adapter FILE, or train one with `lloco train-teacher`"
                )
            return TEXT_ADAPTER_ID, {"source": "file", "id": TEXT_ADAPTER_ID, "path": str(self.text_adapter)}
        if mode not in SHEET_ADAPTER_MODES:
            return None, None
        if self.adapter_file is not None:
            return READER_ADAPTER_ID, {
                "source": "file",
                "id": READER_ADAPTER_ID,
                "path": str(self.adapter_file),
            }
        adapter_id = self.active_adapter()
        if adapter_id is None and self.lloco.reader_id is not None:
            return self.lloco.reader_id, {"source": "encoder", "id": self.lloco.reader_id, "path": None}
        if adapter_id is None:
            plain = {
                "lloco-adapter": "lloco",
                "lloco-doc-adapter": "lloco-doc",
                "lloco-adapter-control": "lloco-control",
            }.get(mode)
            raise InputError(
                f"group {self.settings.collection}/{self.settings.group} has no active adapter; "
                f"train one with `lloco finetune --group {self.settings.group}`, pass --adapter-file "
                "FILE" + (f", or use mode {plain!r}" if plain else "")
            )
        return adapter_id, {"source": "group", "id": adapter_id, "path": None}

    # -- context ------------------------------------------------------------------------------------------

    def _tokens(self, text: str) -> list[int]:
        return self.lloco.host.tokenizer(text, add_special_tokens=False)["input_ids"]

    def budget(self, qtext: str) -> int:
        """Context tokens/vectors that fit: window - template with question - max_new_tokens - margin."""
        prompt = self.lloco.prompt(qtext, "")
        template = sum(len(self._tokens(p)) for p in prompt.pieces if isinstance(p, str))
        room = self.lloco.host.context_window - template - self.max_new_tokens - MARGIN
        if self.settings.max_context_tokens is not None:
            room = min(room, self.settings.max_context_tokens)
        if room < 1:
            raise InputError(
                f"no room for context: the decoder's window is {self.lloco.host.context_window} "
                f"tokens and the prompt takes {template} plus {self.max_new_tokens} new tokens"
            )
        return room

    def _doc_token_ids(self, doc_id: str) -> list[int]:
        if doc_id not in self._doc_ids:
            self._doc_ids[doc_id] = self._tokens(self.dataset.documents[doc_id].text)
        return self._doc_ids[doc_id]

    def full_context(self, q: Question, qtext: str) -> tuple[str, dict[str, Any]]:
        """The document's head that fits the window (see the module docstring)."""
        ids = self._doc_token_ids(q.doc_id)
        room = self.budget(qtext)
        if len(ids) <= room:
            return self.dataset.documents[q.doc_id].text, {"truncated": False, "context_fraction": 1.0}
        keep = room
        text = self.lloco.host.tokenizer.decode(ids[:keep])
        while len(self._tokens(text)) > room and keep > 1:  # re-encoding may merge/split a token
            keep -= max(1, (len(self._tokens(text)) - room))
            text = self.lloco.host.tokenizer.decode(ids[:keep])
        return text, {"truncated": True, "context_fraction": keep / len(ids)}

    def doc_sheets(
        self, q: Question, qtext: str, doc_id: str | None = None
    ) -> tuple[list[torch.Tensor], dict[str, Any]]:
        """The document's own cheat sheets in order (``doc_id``'s if given), head-truncated to the window."""
        doc_id = q.doc_id if doc_id is None else doc_id
        if doc_id not in self._doc_sheets:
            chunks = self.store.list_chunks(self.settings.group, self.settings.collection, doc_ids=[doc_id])
            if not chunks:
                raise InputError(
                    f"document {doc_id!r} has no chunks in group {self.settings.group!r}; was it ingested?"
                )
            ids = [c.chunk_id for c in reading_order(chunks)]  # one document: by position
            sheets: list[torch.Tensor] = []
            for i in range(0, len(ids), 500):
                sheets.extend(self.service.cheat_sheets(ids[i : i + 500]))
            self._doc_sheets[doc_id] = sheets
        sheets = self._doc_sheets[doc_id]
        room, kept, used = self.budget(qtext), [], 0
        for s in sheets:
            if used + s.shape[0] > room:
                break
            kept.append(s)
            used += int(s.shape[0])
        if not kept:
            raise InputError(f"the first cheat sheet of {doc_id!r} does not fit the window")
        return kept, {"truncated": len(kept) < len(sheets), "context_fraction": len(kept) / len(sheets)}

    # -- running ------------------------------------------------------------------------------------------

    def answer(self, q: Question, mode: str, adapter_id: int | str | None) -> dict[str, Any]:
        """Answer one question in ``mode`` (with ``adapter_id`` in adapter modes); the per-question record
        (without scores)."""
        qtext = question_text(q)
        start = time.perf_counter()
        info: dict[str, Any] = {}
        adapter = None
        if mode == "none":
            context, n_ctx = None, 0
        elif mode in FULL_MODES:
            context, info = self.full_context(q, qtext)
            n_ctx = len(self._tokens(context))
        elif mode in RETRIEVAL_MODES:
            query = q.question
            if mode in CONTROL_MODES:
                other = self.control_question(q)
                query, info["control_qid"] = other.question, other.qid
            t0 = time.perf_counter()
            res = self.service.retrieve(
                query,
                group=self.settings.group,
                collection=self.settings.collection,
                top_k=self.settings.top_k,
                mode=self.settings.retrieval,
                load_cheat_sheets=mode not in RAG_TEXT_MODES,
            )
            info["retrieval_s"] = time.perf_counter() - t0
            ordered = reading_order(check_found(res).chunks)
            info["chunk_ids"] = [c.chunk_id for c in ordered]
            info["gold_doc_retrieved"] = any(c.doc_id == q.doc_id for c in ordered)
            if mode in RAG_TEXT_MODES:
                context = "\n\n".join(c.text for c in ordered)
                n_ctx = len(self._tokens(context))
            else:
                context = context_sheets(res, self.lloco.host.dtype)  # with their texts: focus applies
                n_ctx = sum(int(s.shape[0]) for s in context)
                info["raw_context_tokens"] = res.raw_context_tokens
        elif mode == "lloco-doc-control":  # another document's cheat sheets, truncated alike
            other = self.control_question(q)
            info["control_qid"], info["control_doc_id"] = other.qid, other.doc_id
            context, more = self.doc_sheets(q, qtext, doc_id=other.doc_id)
            info.update(more)
            n_ctx = sum(int(s.shape[0]) for s in context)
        else:  # lloco-doc, lloco-doc-adapter
            context, info = self.doc_sheets(q, qtext)
            n_ctx = sum(int(s.shape[0]) for s in context)
        if mode in ADAPTER_MODES:
            adapter = None if adapter_id is None else str(adapter_id)
        # adapters are explicit here (adapter_for): modes without one run the plain decoder, not the reader
        result = self.lloco.answer(
            qtext, context, adapter_id=adapter, use_reader=False, max_new_tokens=self.max_new_tokens
        )
        latency = time.perf_counter() - start
        return {
            "qid": q.qid,
            "doc_id": q.doc_id,
            "question": q.question,
            "prediction": result.text.strip(),
            "answers": list(q.answers),
            "gold_label": q.gold_label,
            "context_tokens": n_ctx,
            "prompt_tokens": result.prompt_tokens,
            "prefill_s": result.prefill_s,
            "generate_s": result.total_s,
            "latency_s": latency,
            **info,
        }

    def control_question(self, q: Question) -> Question:
        """The next selected question (cyclically) about a different document: whose retrieval is the
        unrelated context of the control modes. With a single document, the next question."""
        qs = self.questions
        i = next(k for k, x in enumerate(qs) if x.qid == q.qid)
        for step in range(1, len(qs)):
            other = qs[(i + step) % len(qs)]
            if other.doc_id != q.doc_id:
                return other
        return qs[(i + 1) % len(qs)]

    def run(self, mode: str, *, progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
        """Evaluate every selected question in ``mode``; the report dict (see :func:`summarise`)."""
        if mode not in MODES:
            raise InputError(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
        if mode in STORE_MODES and self.service is None:
            raise InputError(f"mode {mode!r} needs a store (retrieval / cheat sheets)")
        adapter_id, adapter_info = self.adapter_for(mode)
        if mode in CONTROL_MODES and len({q.doc_id for q in self.questions}) < 2:
            log.warning(
                "%s: the selected questions are about one document, so the control reads the "
                "question's own document",
                mode,
            )
        rows = []
        for i, q in enumerate(self.questions):
            row = self.answer(q, mode, adapter_id)
            row.update(score(q, row["prediction"], self.dataset.metric))
            rows.append(row)
            if progress:
                progress(i + 1, len(self.questions))
        settings = asdict(self.settings) | {
            "max_new_tokens": self.max_new_tokens,
            "adapter_id": adapter_id,
            "adapter": adapter_info,
            "context_window": self.lloco.host.context_window,
            "model": self.lloco.host.name,
            "encoder_fingerprint": self.lloco.encoder.fingerprint,
            "focus": self.lloco.focuses,
            "focus_budget": self.lloco.focus_budget if self.lloco.focuses else None,
            "truncation": (
                "head: document tokens beyond window - prompt - max_new_tokens - 16 are dropped"
                if mode in FULL_MODES | DOC_MODES
                else None
            ),
            "retrieval_scope": "group" if mode in RETRIEVAL_MODES else None,
        }
        return summarise(self.dataset.name, mode, self.dataset.metric, rows, settings)


def finite(obj: Any) -> Any:
    """Replace NaN/inf by None so the report is strict JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [finite(v) for v in obj]
    return obj
