"""The framework-free entry point: one decoder, its context encoder, adapters and the prompt template.

from lloco_runtime import LLoCO
lloco = LLoCO.from_pretrained()                 # bundled SmolLM2-135M + default encoder
sheets = lloco.compress(long_text)              # offline: cheat sheets (32x fewer vectors)
print(lloco.answer("Who ...?", sheets).text)    # online: spliced into the prompt
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from enum import StrEnum
from importlib import resources
from pathlib import Path

import torch

from .adapters import AdapterManager, AdapterSource
from .encoder import CheatSheets, ContextEncoder, EncoderConfig
from .errors import FingerprintMismatchError, InputError
from .generation import GenerationConfig, GenerationResult, Generator, StreamStats
from .models import LoadedModel, load_model
from .prompt import MessageLike, Prompt, PromptTemplate, chat_messages
from .sheets import ChunkSheet

log = logging.getLogger(__name__)

READER_ADAPTER_ID = "reader"  # runtime id of the encoder's reader adapter (store adapter ids are integers)
Context = str | CheatSheets | torch.Tensor | Sequence[torch.Tensor | ChunkSheet] | None

# -- adapter routing: which adapter answers (this module decides; every path calls these two steps) ---------


class AdapterChoice(StrEnum):
    """A request's adapter choice other than an explicit adapter id (``lloco serve``'s ``adapter`` field)."""

    ACTIVE = "active"  # the active adapter of the group the request retrieved from
    NONE = "none"  # no stored adapter


def route_adapter(
    choice: AdapterChoice | int | str | None, group_adapter_id: int | None = None
) -> int | str | None:
    """Adapter routing, step 1: the stored adapter a request is answered with.

    ``choice``: an explicit adapter id (a store's integer id, or the name of an adapter registered on
    :attr:`LLoCO.adapters`) wins; ``"active"`` is ``group_adapter_id``, the active adapter of the group the
    request's cheat sheets were retrieved from (None when the group has none); ``"none"`` or None is no
    stored adapter. Step 2 is :meth:`LLoCO.adapter_for`: a prompt left without an adapter that carries cheat
    sheets is read with the encoder's reader adapter.
    """
    if choice is None or choice == AdapterChoice.NONE:
        return None
    if choice == AdapterChoice.ACTIVE:
        return group_adapter_id
    return choice


FOCUS_BUDGETS = ("shared", "chunk")


def check_focus_budget(value: str) -> str:
    """``value`` if it names a focus budget (:data:`FOCUS_BUDGETS`), else an InputError saying which do."""
    if value not in FOCUS_BUDGETS:
        raise InputError(f"focus_budget must be one of {', '.join(FOCUS_BUDGETS)}, got {value!r}")
    return value


def shipped_encoder_dir() -> Path | None:
    """The default encoder shipped in the package for SmolLM2-135M, if present."""
    d = resources.files("lloco_runtime") / "assets" / "encoder-smollm2-135m"
    path = Path(str(d))
    return path if (path / "encoder_config.json").exists() else None


def shipped_teacher_adapter() -> Path | None:
    """The text-reading teacher adapter shipped for SmolLM2-135M (``lloco train-teacher``), if present.

    A decoder LoRA trained on SQuAD-style (paragraph as text, question) -> short answer: the fair text
    baseline of every evaluation and the distillation target of reader training.
    """
    d = resources.files("lloco_runtime") / "assets" / "teacher-smollm2-135m" / "adapter.safetensors"
    path = Path(str(d))
    return path if path.is_file() else None


class LLoCO:
    """Compress offline, answer online: the core API every integration wraps."""

    def __init__(
        self,
        host: LoadedModel,
        encoder: ContextEncoder,
        *,
        template: PromptTemplate | None = None,
        adapter_capacity: int = 4,
        adapter_source: AdapterSource | None = None,
        focus: bool = True,
        focus_budget: str = "shared",
    ) -> None:
        if encoder.host is not host:
            raise InputError("the encoder must be built on the same LoadedModel as the decoder")
        self.host = host
        self.encoder = encoder
        self.template = template or PromptTemplate()
        self.generator = Generator(host)
        #: question-aware literal tokens (:mod:`lloco_runtime.focus`): cheat sheets that come with their
        #: chunk's text (:class:`~lloco_runtime.encoder.ChunkSheet`, :class:`CheatSheets` from
        #: :meth:`compress`) get their literal tokens chosen for the question, where the encoder allows it
        #: (:attr:`ContextEncoder.can_focus`); False reads every sheet as stored
        self.focus = bool(focus)
        #: how focus spends literal tokens when several sheets are read for one question: ``"shared"``
        #: pools their budgets, so the chunks the question's words point to keep more of their text and
        #: the others less (the same positions in all); ``"chunk"`` keeps each chunk's own budget
        self.focus_budget = check_focus_budget(focus_budget)
        self.adapters = AdapterManager(
            host, encoder_fingerprint=encoder.fingerprint, capacity=adapter_capacity, source=adapter_source
        )
        #: runtime id of the encoder's reader adapter (see :meth:`adapter_for`), None if it has none
        self.reader_id: str | None = None
        if encoder.reader is not None:
            self.adapters.register(READER_ADAPTER_ID, encoder.reader)
            self.reader_id = READER_ADAPTER_ID

    @classmethod
    def from_pretrained(
        cls,
        model: str | Path | None = None,
        *,
        encoder: str | Path | EncoderConfig | None = None,
        device: str | None = None,
        dtype: str | torch.dtype | None = None,
        template: PromptTemplate | None = None,
        **kwargs,
    ) -> LLoCO:
        """Load a decoder (default: bundled SmolLM2-135M-Instruct) and an encoder.

        ``encoder``: a folder saved by :meth:`ContextEncoder.save`, an :class:`EncoderConfig` for a fresh
        (untrained) encoder, or ``None`` for the shipped default encoder of the default model (a fresh
        default-config encoder if none ships for this model).
        """
        host = load_model(model, device=device, dtype=dtype)
        if isinstance(encoder, EncoderConfig):
            enc = ContextEncoder(host, encoder)
        elif encoder is not None:
            enc = ContextEncoder.load(encoder, host)
        else:
            shipped = shipped_encoder_dir() if model in (None, "default") else None
            if shipped is not None:
                enc = ContextEncoder.load(shipped, host)
            else:
                log.info("no trained encoder given: using a fresh one (summary embeddings = EOS)")
                enc = ContextEncoder(host, EncoderConfig())
        return cls(host, enc, template=template, **kwargs)

    # -- offline --------------------------------------------------------------------------------------------

    def compress(self, text: str, *, batch_size: int = 8, progress: bool = False) -> CheatSheets:
        """Cheat sheets for ``text`` (segmented, never truncated)."""
        return self.encoder.compress(text, batch_size=batch_size, progress=progress)

    # -- online ---------------------------------------------------------------------------------------------

    @property
    def focuses(self) -> bool:
        """True when sheets that come with their text are focused on the question (:attr:`focus` on and an
        encoder that can: :attr:`ContextEncoder.can_focus`)."""
        return self.focus and self.encoder.can_focus

    def _context(self, context: Context, question: str | None = None):
        if isinstance(context, CheatSheets):
            if context.fingerprint != self.encoder.fingerprint:
                raise FingerprintMismatchError(
                    f"cheat sheets were made by encoder {context.fingerprint[:12]}, but this runtime's encoder "
                    f"is {self.encoder.fingerprint[:12]}; re-compress the text with the current encoder "
                    "(a stored group: `lloco recompress --group GROUP`)"
                )
            if context.texts is not None and len(context.texts) == len(context.tensors):
                context = [ChunkSheet(t, x) for t, x in zip(context.tensors, context.texts, strict=True)]
            else:
                return list(context.tensors)
        if isinstance(context, ChunkSheet):
            context = [context]
        if isinstance(context, (list, tuple)) and any(isinstance(c, ChunkSheet) for c in context):
            if self.focus_budget == "shared" and sum(isinstance(c, ChunkSheet) for c in context) > 1:
                return self.sheets_for(list(context), question)
            return [self.sheet_for(c, question) if isinstance(c, ChunkSheet) else c for c in context]
        return context

    def _focus_ids(self, item: ChunkSheet) -> list[int] | None:
        """The chunk's token ids when its sheet can be rebuilt for a question: the text is one segment and
        the stored sheet was made from it (its pooled vectors, its offline shape); else None."""
        ids = self.host.tokenizer(item.text, add_special_tokens=False)["input_ids"]
        if not ids or len(ids) > self.encoder.config.segment_length:
            return None
        if item.sheet.shape[0] != self.encoder.sheet_rows(len(ids)) or not self.encoder.made_from(
            ids, item.sheet
        ):
            log.debug("focus: the chunk text does not match its stored sheet; read as stored")
            return None
        return ids

    def sheets_for(
        self, items: Sequence[ChunkSheet | torch.Tensor], question: str | None
    ) -> list[torch.Tensor]:
        """The tensors several context items go into one prompt as, with :attr:`focuses` and a question: the
        :class:`ChunkSheet` items rebuilt together with a shared literal budget
        (:meth:`ContextEncoder.focus_sheets`: as many positions in all as stored, spent where the question's
        words are); tensors, and sheets whose text does not match, as stored."""
        if not (self.focuses and question and question.strip()):
            return [c.sheet if isinstance(c, ChunkSheet) else c for c in items]
        out: list[torch.Tensor] = [c.sheet if isinstance(c, ChunkSheet) else c for c in items]
        slots, segments = [], []
        for i, c in enumerate(items):
            ids = self._focus_ids(c) if isinstance(c, ChunkSheet) else None
            if ids is not None:
                slots.append(i)
                segments.append(ids)
        if segments:
            for i, sheet in zip(slots, self.encoder.focus_sheets(segments, question), strict=True):
                out[i] = sheet.to(out[i].dtype)
        return out

    def sheet_for(self, item: ChunkSheet, question: str | None) -> torch.Tensor:
        """The tensor a :class:`ChunkSheet` goes into the prompt as: with :attr:`focuses` and a question,
        rebuilt with its literal tokens chosen for the question (:meth:`ContextEncoder.focus_sheet`, same
        shape); else the stored sheet. A text the sheet was not made from (edited after compression: other
        pooled vectors or another shape) is read as stored."""
        if not (self.focuses and question and question.strip()):
            return item.sheet
        ids = self._focus_ids(item)
        if ids is None:
            return item.sheet
        return self.encoder.focus_sheet(ids, question).to(item.sheet.dtype)

    def prompt(self, question: str, context: Context = None) -> Prompt:
        """The prompt the decoder sees: template prefix | context (text or cheat sheets) | question."""
        return self.template.build(self.host.tokenizer, question, self._context(context, question))

    def adapter_for(
        self, prompt: Prompt, adapter_id: str | None = None, *, use_reader: bool = True
    ) -> str | None:
        """Adapter routing, step 2: the adapter a prompt is answered with: ``adapter_id`` if given (the
        request's choice after :func:`route_adapter`, e.g. a group adapter; those trained by ``lloco
        finetune`` start from the reader, so they read cheat sheets too); else, when the prompt carries cheat
        sheets and the encoder has a reader adapter, the reader (``use_reader=False`` turns this off: the
        plain decoder); else None."""
        if adapter_id is not None:
            return adapter_id
        if use_reader and self.reader_id is not None and prompt.context_vectors > 0:
            return self.reader_id
        return None

    def prompt_chat(self, messages: Sequence[MessageLike], context: Context = None) -> Prompt:
        """The prompt for a conversation: earlier turns, then the last user message with the context (see
        :meth:`PromptTemplate.build_chat`)."""
        question = chat_messages(messages)[-1].content
        return self.template.build_chat(self.host.tokenizer, messages, self._context(context, question))

    def answer(
        self,
        question: str,
        context: Context = None,
        *,
        adapter_id: str | None = None,
        use_reader: bool = True,
        config: GenerationConfig | None = None,
        **gen,
    ) -> GenerationResult:
        """Answer ``question`` over ``context`` (text, cheat sheets, or None) with an optional adapter (see
        :meth:`adapter_for` for the encoder's reader adapter, used with cheat sheets when none is given)."""
        return self.generate(
            self.prompt(question, context), adapter_id=adapter_id, use_reader=use_reader, config=config, **gen
        )

    def stream(
        self,
        question: str,
        context: Context = None,
        *,
        adapter_id: str | None = None,
        use_reader: bool = True,
        config: GenerationConfig | None = None,
        state: StreamStats | None = None,
        **gen,
    ) -> Iterator[str]:
        """Like :meth:`answer` but yields text as it is generated."""
        return self.generate_stream(
            self.prompt(question, context),
            adapter_id=adapter_id,
            use_reader=use_reader,
            config=config,
            state=state,
            **gen,
        )

    def answer_chat(
        self,
        messages: Sequence[MessageLike],
        context: Context = None,
        *,
        adapter_id: str | None = None,
        use_reader: bool = True,
        config: GenerationConfig | None = None,
        **gen,
    ) -> GenerationResult:
        """Answer the last user message of a conversation over ``context`` (see :meth:`prompt_chat`)."""
        return self.generate(
            self.prompt_chat(messages, context),
            adapter_id=adapter_id,
            use_reader=use_reader,
            config=config,
            **gen,
        )

    def stream_chat(
        self,
        messages: Sequence[MessageLike],
        context: Context = None,
        *,
        adapter_id: str | None = None,
        use_reader: bool = True,
        config: GenerationConfig | None = None,
        state: StreamStats | None = None,
        **gen,
    ) -> Iterator[str]:
        """Like :meth:`answer_chat` but yields text as it is generated."""
        return self.generate_stream(
            self.prompt_chat(messages, context),
            adapter_id=adapter_id,
            use_reader=use_reader,
            config=config,
            state=state,
            **gen,
        )

    def generate(
        self,
        prompt: Prompt,
        *,
        adapter_id: str | None = None,
        use_reader: bool = True,
        config: GenerationConfig | None = None,
        **gen,
    ) -> GenerationResult:
        """Decode a built :class:`Prompt` with the adapter :meth:`adapter_for` picks."""
        cfg = config or GenerationConfig(**gen)
        with self.adapters.acquire(self.adapter_for(prompt, adapter_id, use_reader=use_reader)) as name:
            return self.generator.generate(prompt, cfg, adapter=name)

    def generate_stream(
        self,
        prompt: Prompt,
        *,
        adapter_id: str | None = None,
        use_reader: bool = True,
        config: GenerationConfig | None = None,
        state: StreamStats | None = None,
        **gen,
    ) -> Iterator[str]:
        """Like :meth:`generate` but yields text as it is generated; the adapter stays pinned until the
        iterator ends or is closed."""
        cfg = config or GenerationConfig(**gen)
        with self.adapters.acquire(self.adapter_for(prompt, adapter_id, use_reader=use_reader)) as name:
            yield from self.generator.stream(prompt, cfg, adapter=name, state=state)

    def answer_batch(
        self,
        questions: Sequence[str],
        contexts: Sequence[Context] | None = None,
        *,
        adapter_ids: Sequence[str | None] | None = None,
        use_reader: bool = True,
        config: GenerationConfig | None = None,
        configs: Sequence[GenerationConfig] | None = None,
        **gen,
    ) -> list[GenerationResult]:
        """Answer several questions, each with its own context and adapter, decoded as one batch (see
        :meth:`generate_batch`); the same results as calling :meth:`answer` on each (greedy decoding gives
        the same tokens)."""
        n = len(questions)
        contexts = list(contexts) if contexts is not None else [None] * n
        adapter_ids = list(adapter_ids) if adapter_ids is not None else [None] * n
        if len(contexts) != n or len(adapter_ids) != n:
            raise InputError(
                f"answer_batch: {n} questions but {len(contexts)} contexts and {len(adapter_ids)} "
                "adapter ids; give one of each per question"
            )
        prompts = [self.prompt(q, c) for q, c in zip(questions, contexts, strict=True)]
        return self.generate_batch(
            prompts, adapter_ids=adapter_ids, use_reader=use_reader, config=config, configs=configs, **gen
        )

    def generate_batch(
        self,
        prompts: Sequence[Prompt],
        *,
        adapter_ids: Sequence[str | None] | None = None,
        use_reader: bool = True,
        config: GenerationConfig | None = None,
        configs: Sequence[GenerationConfig] | None = None,
        **gen,
    ) -> list[GenerationResult]:
        """Decode several built prompts as one batch, each with the adapter :meth:`adapter_for` picks for it
        (rows with different adapters share the forward passes; see :meth:`Generator.generate_batch`).

        ``configs`` (optional): one :class:`GenerationConfig` per prompt, instead of ``config`` for all.
        Every adapter of the batch is pinned (loaded if needed, never evicted) until the batch is done.
        Results come in the order of ``prompts``."""
        cfg, chosen = self._batch_args(
            "generate_batch", prompts, adapter_ids, use_reader, config, configs, gen
        )
        if not prompts:
            return []
        with self._pinned(chosen) as names:
            return self.generator.generate_batch(prompts, cfg, names)

    def generate_stream_batch(
        self,
        prompts: Sequence[Prompt],
        *,
        adapter_ids: Sequence[str | None] | None = None,
        use_reader: bool = True,
        config: GenerationConfig | None = None,
        configs: Sequence[GenerationConfig] | None = None,
        states: Sequence[StreamStats] | None = None,
        **gen,
    ) -> Iterator[list[tuple[str, bool]]]:
        """:meth:`generate_batch` as it goes (:meth:`Generator.stream_batch`): after every forward pass one
        ``(text added, finished)`` per prompt; ``states`` (one :class:`StreamStats` per prompt) receive each
        row's numbers. The batch's adapters stay pinned until the iterator ends or is closed."""
        cfg, chosen = self._batch_args(
            "generate_stream_batch", prompts, adapter_ids, use_reader, config, configs, gen
        )
        if not prompts:
            return
        with self._pinned(chosen) as names:
            yield from self.generator.stream_batch(prompts, cfg, names, states=states)

    def _batch_args(
        self,
        who: str,
        prompts: Sequence[Prompt],
        adapter_ids: Sequence[str | None] | None,
        use_reader: bool,
        config: GenerationConfig | None,
        configs: Sequence[GenerationConfig] | None,
        gen: dict,
    ) -> tuple[GenerationConfig | list[GenerationConfig], list[str | None]]:
        """The batch's decoding config(s), checked against the prompts, and each prompt's adapter id."""
        n = len(prompts)
        if configs is not None:
            if config is not None or gen:
                raise InputError(f"{who}: give either configs (one per prompt) or config/keywords")
            cfg: GenerationConfig | list[GenerationConfig] = list(configs)
            if len(cfg) != n:
                raise InputError(f"{who}: {n} prompts but {len(cfg)} configs")
        else:
            cfg = config or GenerationConfig(**gen)
        adapter_ids = list(adapter_ids) if adapter_ids is not None else [None] * n
        if len(adapter_ids) != n:
            raise InputError(f"{who}: {n} prompts but {len(adapter_ids)} adapter ids")
        chosen = [
            self.adapter_for(p, a, use_reader=use_reader) for p, a in zip(prompts, adapter_ids, strict=True)
        ]
        return cfg, chosen

    @contextlib.contextmanager
    def _pinned(self, chosen: Sequence[str | None]) -> Iterator[list[str | None]]:
        """Every adapter of a batch loaded and pinned; yields the loaded name per row (None: base weights)."""
        with contextlib.ExitStack() as pins:
            names = {
                aid: pins.enter_context(self.adapters.acquire(aid))
                for aid in dict.fromkeys(chosen)
                if aid is not None
            }
            yield [names.get(a) if a is not None else None for a in chosen]

    def complete(
        self, text: str, *, adapter_id: str | None = None, config: GenerationConfig | None = None, **gen
    ) -> GenerationResult:
        """Plain-text completion through the same decoding path (no template)."""
        cfg = config or GenerationConfig(**gen)
        with self.adapters.acquire(adapter_id) as name:
            return self.generator.generate(Prompt.from_text(text), cfg, adapter=name)


_DEFAULT: LLoCO | None = None


def load_default_runtime() -> LLoCO:
    """A process-wide default runtime (bundled model + default encoder), loaded on first use."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = LLoCO.from_pretrained()
    return _DEFAULT
