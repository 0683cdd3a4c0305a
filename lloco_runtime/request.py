"""The request layer: the one path from a question to the decoder and back, framework-free.

:class:`~lloco_runtime.service.LLoCOService`, ``lloco serve`` and the LlamaIndex and LangChain classes all go
through this module, so each rule of a request exists once; the integrations only map their names and types
onto it:

- how to retrieve: :class:`~lloco_runtime.store.RetrievalOptions` (a :class:`~lloco_runtime.store.
  RetrievalMode`, one default), defined by the store and used as is;
- chunk ids a caller passes: :func:`chunk_ids` (integers, or strings of digits);
- reading order: :func:`reading_order` (document, then position in it);
- one group and one adapter per answer, and the "no chunks" error: :func:`payload`, :func:`no_chunks_error`;
- which adapter: :func:`~lloco_runtime.runtime.route_adapter` (an explicit id / the group's active adapter /
  none; the encoder's reader is the runtime's fallback) and :func:`adapter_key` (stored adapter ids are
  integers, checked in the store before decoding starts);
- cheat sheets: :func:`load_cheat_sheets` (by id, fingerprint-checked) and :func:`context_sheets` (those of a
  retrieval, in reading order), both in the decoder's dtype;
- decoding: :func:`stream_chunks` and :func:`start_stream` return a :class:`TokenStream`, whose
  :class:`RunStats` has one set of keys on every path;
- what an answer over a retrieval is: :class:`Answer` with its :class:`Source` chunks.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, TypeVar

import torch

from .errors import InputError, MissingStoreError, NotFoundError
from .generation import GenerationConfig, GenerationResult, StreamStats
from .prompt import MessageLike
from .runtime import LLoCO
from .store import CheatSheetStore, ChunkSheet, RetrievalResult

# -- chunk ids ----------------------------------------------------------------------------------------------

_IDS_HINT = "the chunk_id a retrieved Document or node carries"


def _int_id(value: object) -> int | None:
    """``value`` as a store id (chunk or adapter): a non-negative integer, or a string of its digits (ids that
    travelled through text metadata); None for anything else."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    return None


def chunk_id(value: object) -> int:
    """One chunk id (an integer, or its digits); InputError otherwise."""
    cid = _int_id(value)
    if cid is None:
        raise InputError(f"cheat_sheet_ids must be chunk ids (integers: {_IDS_HINT}), got {value!r}")
    return cid


def chunk_ids(values: Iterable[object] | None) -> list[int]:
    """A caller's ``cheat_sheet_ids`` as chunk ids, in the given order (None: none)."""
    if values is None:
        return []
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise InputError(
            f"cheat_sheet_ids must be a list of chunk ids (integers: {_IDS_HINT}), got {values!r}"
        )
    return [chunk_id(v) for v in values]


# -- reading order, one group and one adapter per answer ----------------------------------------------------


class _Placed(Protocol):
    doc_id: str
    ordinal: int


P = TypeVar("P", bound=_Placed)


def reading_order(chunks: Iterable[P]) -> list[P]:
    """Chunks as a reader meets them: by document, then by position in it (reads more naturally than score
    order); the sort is stable, so equal places keep their given order."""
    return sorted(chunks, key=lambda c: (c.doc_id, c.ordinal))


def no_chunks_error(group: str | None = None) -> InputError:
    """The error for an answer with nothing retrieved to read."""
    who = f"group {group!r} has" if group else "the retrieval found"
    return InputError(
        f"{who} no chunks matching the query and filters, so there are no documents to answer from; "
        "ingest documents into the group first, or relax the filters"
    )


def check_found(result: RetrievalResult) -> RetrievalResult:
    """``result`` if it holds chunks, else :func:`no_chunks_error`."""
    if not result.chunks:
        raise no_chunks_error(result.group)
    return result


@dataclass(frozen=True)
class ChunkRef:
    """A retrieved chunk as a framework carries it (a LlamaIndex node, a LangChain Document): its id, its
    place in its document, its size as text, and the group it was retrieved from with that group's active
    adapter. ``chunk_id`` is checked with :func:`chunk_id`."""

    chunk_id: int
    doc_id: str = ""
    ordinal: int = 0
    n_tokens: int = 0
    group: str | None = None
    collection: str | None = None
    adapter_id: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "chunk_id", chunk_id(self.chunk_id))
        object.__setattr__(self, "doc_id", str(self.doc_id or ""))
        object.__setattr__(self, "ordinal", int(self.ordinal or 0))
        object.__setattr__(self, "n_tokens", int(self.n_tokens or 0))


@dataclass(frozen=True)
class Payload:
    """What one answer over retrieved chunks needs: the chunk ids in reading order (each once), the active
    adapter of their group, the group, and the chunks' size as text (``raw_tokens``)."""

    chunk_ids: list[int]
    adapter_id: int | None
    group: str | None
    raw_tokens: int
    collection: str | None = None


def payload(refs: Sequence[ChunkRef]) -> Payload:
    """The :class:`Payload` of retrieved chunks. InputError for none (:func:`no_chunks_error`), for chunks of
    more than one group, or for chunks naming different adapters (one answer reads one group with its
    adapter)."""
    if not refs:
        raise no_chunks_error()
    groups = {(r.collection, r.group) for r in refs}
    if len(groups) > 1:
        names = sorted(f"{c}/{g}" for c, g in groups)
        raise InputError(
            f"the retrieved chunks come from several groups ({', '.join(names)}); one LLoCO answer reads "
            "one group with its adapter: retrieve from a single group"
        )
    adapters = {r.adapter_id for r in refs}
    if len(adapters) > 1:
        raise InputError(
            f"the retrieved chunks name different adapters {sorted(map(str, adapters))}; retrieve them in "
            "one call so they share their group's active adapter"
        )
    unique = {r.chunk_id: r for r in reversed(refs)}  # the first of duplicates wins
    ordered = reading_order(sorted(unique.values(), key=lambda r: r.chunk_id))  # ties: by chunk id
    ((collection, group),) = groups
    return Payload(
        chunk_ids=[r.chunk_id for r in ordered],
        adapter_id=adapters.pop(),
        group=group,
        raw_tokens=sum(r.n_tokens for r in ordered),
        collection=collection,
    )


# -- adapters and cheat sheets ------------------------------------------------------------------------------


def stored_adapter_id(adapter_id: object) -> int:
    """A stored adapter's id (an integer, or its digits); NotFoundError naming the fix otherwise."""
    aid = _int_id(adapter_id)
    if aid is not None:
        return aid
    raise NotFoundError(
        f"unknown adapter id {adapter_id!r}: stored adapters have integer ids; list them with "
        "`lloco adapters list`"
    )


def adapter_key(adapter_id: int | str | None, store: CheatSheetStore | None) -> str | None:
    """The runtime's key for the adapter a request chose (None: none; see
    :func:`~lloco_runtime.runtime.route_adapter`). With ``store``, the id is a stored adapter's, checked to
    exist now (NotFoundError naming ``lloco adapters list``), so a bad id fails before decoding starts;
    without one (a bare runtime, or an id the store just gave), it is used as it is: the name of an adapter
    registered on :attr:`LLoCO.adapters`, or a stored id its adapter source resolves."""
    if adapter_id is None:
        return None
    if store is None:
        return str(adapter_id)
    key = stored_adapter_id(adapter_id)
    store.get_adapter(key)  # NotFoundError naming the fix
    return str(key)


def load_cheat_sheets(
    lloco: LLoCO,
    store: CheatSheetStore | None,
    ids: Sequence[int],
    *,
    build_hint: str = "the model with a store",
) -> list[torch.Tensor] | list[ChunkSheet] | None:
    """The stored cheat sheets of ``ids`` (None for none), checked against ``lloco``'s encoder fingerprint,
    in the decoder's dtype, each with its chunk's text when the runtime focuses literal tokens on the
    question (:attr:`LLoCO.focuses`). Without a store: :class:`MissingStoreError` ("cheat_sheet_ids need a
    store: build <build_hint>")."""
    if not ids:
        return None
    if store is None:
        raise MissingStoreError(f"cheat_sheet_ids need a store: build {build_hint}")
    sheets = store.cheat_sheets(ids, encoder_fingerprint=lloco.encoder.fingerprint, with_text=lloco.focuses)
    return [s.to(lloco.host.dtype) for s in sheets]


def context_sheets(result: RetrievalResult, dtype: torch.dtype | None = None) -> list[ChunkSheet]:
    """A retrieval's loaded cheat sheets in reading order (the order they go into the prompt), each with its
    chunk's text (:class:`~lloco_runtime.store.ChunkSheet`: the runtime focuses its literal tokens on the
    question), cast to ``dtype`` when given."""
    sheets = [
        ChunkSheet(c.cheat_sheet, c.text) for c in reading_order(result.chunks) if c.cheat_sheet is not None
    ]
    return sheets if dtype is None else [s.to(dtype) for s in sheets]


# -- decoding: one token stream, one set of numbers ---------------------------------------------------------

#: decoding options a framework call may carry (besides LangChain's own ``stop`` argument)
GENERATION_KEYS = ("max_new_tokens", "temperature", "top_p", "top_k", "stop", "seed")


def stop_sequences(stop: str | Iterable[str] | None) -> tuple[str, ...]:
    """Stop sequences as a tuple: a string is one sequence, None none."""
    if stop is None:
        return ()
    return (stop,) if isinstance(stop, str) else tuple(stop)


def generation_config(
    defaults: Mapping[str, Any], overrides: Mapping[str, Any] | None = None
) -> GenerationConfig:
    """``defaults`` updated with the :data:`GENERATION_KEYS` among ``overrides`` (others are not read), as a
    checked :class:`GenerationConfig`; ``stop`` may be a string or a list."""
    opts = dict(defaults)
    opts.update({k: v for k, v in (overrides or {}).items() if k in GENERATION_KEYS})
    if "stop" in opts:
        opts["stop"] = stop_sequences(opts["stop"])
    return GenerationConfig(**opts)


@dataclass(frozen=True)
class RunStats:
    """The numbers of one decoding run, with the one set of keys every path reports (:meth:`to_dict`): the
    LlamaIndex ``raw``, LangChain's ``generation_info``/``response_metadata``, ``lloco serve``. Frameworks
    rename only where their own API demands a name (LangChain's ``usage_metadata``, OpenAI's ``usage``)."""

    finish_reason: str = "length"  # "eos", "stop" or "length"
    prompt_tokens: int = 0  # decoder positions of the prompt, cheat-sheet vectors included
    completion_tokens: int = 0
    context_vectors: int = 0  # decoder positions the cheat sheets take
    cheat_sheets: int = 0  # cheat sheets in the prompt
    prefill_s: float = 0.0
    total_s: float = 0.0

    @classmethod
    def of(cls, run: StreamStats | GenerationResult, cheat_sheets: int = 0) -> RunStats:
        return cls(
            finish_reason=run.finish_reason,
            prompt_tokens=run.prompt_tokens,
            completion_tokens=len(run.token_ids),
            context_vectors=run.context_vectors,
            cheat_sheets=cheat_sheets,
            prefill_s=run.prefill_s,
            total_s=run.total_s,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class TokenStream(Iterator[str]):
    """A started answer: iterate for the text deltas. :attr:`stats` and :attr:`text` hold the numbers and the
    text once it ends; :meth:`close` ends it early and releases the adapter it pinned (so does running out).
    """

    def __init__(self, tokens: Iterator[str], state: StreamStats, cheat_sheets: int) -> None:
        self._tokens, self._state, self._cheat_sheets = tokens, state, cheat_sheets

    def __iter__(self) -> TokenStream:
        return self

    def __next__(self) -> str:
        return next(self._tokens)

    def close(self) -> None:
        close = getattr(self._tokens, "close", None)
        if close is not None:
            close()

    @property
    def text(self) -> str:
        return self._state.text

    @property
    def stats(self) -> RunStats:
        return RunStats.of(self._state, self._cheat_sheets)

    def finish(self) -> TokenStream:
        """Decode to the end (the text and the numbers are then complete)."""
        for _ in self:
            pass
        return self

    def result(self) -> GenerationResult:
        """Decode to the end; the text with its token counts and timings."""
        self.finish()
        st = self._state
        return GenerationResult(
            text=st.text,
            token_ids=list(st.token_ids),
            prompt_tokens=st.prompt_tokens,
            context_vectors=st.context_vectors,
            finish_reason=st.finish_reason,
            prefill_s=st.prefill_s,
            total_s=st.total_s,
        )


def start_stream(
    lloco: LLoCO,
    prompt: str | Sequence[MessageLike],
    sheets: Sequence[torch.Tensor] | None,
    *,
    adapter: str | None,
    config: GenerationConfig,
) -> TokenStream:
    """Decode ``prompt`` (a question, or a conversation whose last user turn gets the cheat sheets) over
    ``sheets`` with the runtime's adapter key ``adapter`` (None: the runtime's routing picks the reader for
    cheat sheets). The prompt is built and checked now; the adapter is pinned from the first token on."""
    st = StreamStats()
    context = list(sheets) if sheets else None
    if isinstance(prompt, str):
        tokens = lloco.stream(prompt, context, adapter_id=adapter, config=config, state=st)
    else:
        tokens = lloco.stream_chat(prompt, context, adapter_id=adapter, config=config, state=st)
    return TokenStream(tokens, st, len(context or ()))


def stream_chunks(
    lloco: LLoCO,
    store: CheatSheetStore | None,
    prompt: str | Sequence[MessageLike],
    cheat_sheet_ids: Iterable[object] | None = None,
    *,
    adapter_id: int | str | None = None,
    config: GenerationConfig | None = None,
    build_hint: str = "the model with a store",
) -> TokenStream:
    """Answer over cheat sheets by chunk id, the path of every framework LLM: ids checked
    (:func:`chunk_ids`), sheets loaded (:func:`load_cheat_sheets`), the adapter checked (:func:`adapter_key`),
    then :func:`start_stream`."""
    ids = chunk_ids(cheat_sheet_ids)
    sheets = load_cheat_sheets(lloco, store, ids, build_hint=build_hint)
    adapter = adapter_key(adapter_id, store)
    return start_stream(lloco, prompt, sheets, adapter=adapter, config=config or GenerationConfig())


# -- answers over a retrieval -------------------------------------------------------------------------------


@dataclass
class Source:
    """One retrieved chunk an answer was built from."""

    doc_id: str
    chunk_id: int
    score: float
    ordinal: int
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)


def sources(result: RetrievalResult) -> list[Source]:
    """A retrieval's chunks as :class:`Source` records, best first."""
    return [
        Source(c.doc_id, c.chunk_id, float(c.score), c.ordinal, c.text, dict(c.metadata))
        for c in result.chunks
    ]


@dataclass
class Answer:
    """An answer with its sources and what it cost."""

    answer: str
    sources: list[Source]
    adapter_id: int | None
    context_tokens: int
    raw_context_tokens: int
    prefill_s: float = 0.0
    total_s: float = 0.0

    @classmethod
    def of(cls, result: RetrievalResult, *, text: str, adapter_id: int | None, stats: RunStats) -> Answer:
        """The answer ``text`` decoded over ``result`` with ``adapter_id`` (the one routed to)."""
        return cls(
            answer=text.strip(),
            sources=sources(result),
            adapter_id=adapter_id,
            context_tokens=result.context_tokens,
            raw_context_tokens=result.raw_context_tokens,
            prefill_s=stats.prefill_s,
            total_s=stats.total_s,
        )

    def to_dict(self, *, with_text: bool = False) -> dict[str, Any]:
        """The ``lloco ask --json`` shape (and ``lloco serve``'s ``/v1/ask``)."""
        srcs = [
            {"doc_id": s.doc_id, "chunk_id": s.chunk_id, "score": s.score}
            | ({"text": s.text} if with_text else {})
            for s in self.sources
        ]
        return {
            "answer": self.answer,
            "sources": srcs,
            "adapter_id": self.adapter_id,
            "context_tokens": self.context_tokens,
            "raw_context_tokens": self.raw_context_tokens,
            "prefill_s": self.prefill_s,
            "total_s": self.total_s,
        }
