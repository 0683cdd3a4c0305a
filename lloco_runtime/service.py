"""Retrieve -> cheat sheets + adapter -> answer: the serving path shared by the CLI and both integrations.

:class:`LLoCOService` joins a :class:`~lloco_runtime.runtime.LLoCO` (decoder, encoder, adapters) with a
:class:`~lloco_runtime.store.CheatSheetStore`. Adapters are fetched from the store by id on first use and
kept in the runtime's LRU; cheat sheets are checked against the runtime's encoder fingerprint and cast from
their storage dtype to the decoder's.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from .errors import InputError, NotFoundError
from .generation import GenerationConfig, StreamStats
from .runtime import LLoCO
from .store import CheatSheetStore
from .store.records import RecompressReport, RetrievalResult


@dataclass
class Source:
    """One retrieved chunk an answer was built from."""

    doc_id: str
    chunk_id: int
    score: float
    ordinal: int
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)


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

    def to_dict(self, *, with_text: bool = False) -> dict[str, Any]:
        """The ``lloco ask --json`` shape."""
        sources = [
            {"doc_id": s.doc_id, "chunk_id": s.chunk_id, "score": s.score}
            | ({"text": s.text} if with_text else {})
            for s in self.sources
        ]
        return {
            "answer": self.answer,
            "sources": sources,
            "adapter_id": self.adapter_id,
            "context_tokens": self.context_tokens,
            "raw_context_tokens": self.raw_context_tokens,
            "prefill_s": self.prefill_s,
            "total_s": self.total_s,
        }


class LLoCOService:
    """Answers questions over a store's groups with a runtime; thread-safe for concurrent requests."""

    def __init__(self, lloco: LLoCO, store: CheatSheetStore) -> None:
        self.lloco = lloco
        self.store = store
        lloco.adapters.source = self._adapter_weights

    def _adapter_weights(self, adapter_id: str) -> bytes:
        """An adapter's bytes from the store; ids are the store's integers (anything else is unknown)."""
        try:
            key = int(adapter_id)
        except (TypeError, ValueError):
            raise NotFoundError(
                f"unknown adapter {adapter_id!r}: stored adapters have integer ids; list them "
                "with `lloco adapters list`"
            ) from None
        return self.store.adapter_weights(key)

    @classmethod
    def from_defaults(
        cls, *, url: str | None = None, schema: str | None = None, **runtime_kwargs
    ) -> LLoCOService:
        """Default runtime (or ``LLoCO.from_pretrained(**runtime_kwargs)``) over the default store."""
        from .runtime import load_default_runtime

        lloco = LLoCO.from_pretrained(**runtime_kwargs) if runtime_kwargs else load_default_runtime()
        return cls(lloco, CheatSheetStore(url, schema=schema))

    # -- offline --------------------------------------------------------------------------------------------

    def ingest(
        self,
        paths: Sequence[str],
        *,
        group: str,
        collection: str = "default",
        progress: bool = False,
        batch_size: int = 8,
    ):
        """Read files/folders, compress with the runtime's encoder, store (one transaction per document)."""
        return self.store.ingest_paths(
            paths,
            group=group,
            collection=collection,
            encoder=self.lloco.encoder,
            progress=progress,
            batch_size=batch_size,
        )

    def recompress(
        self,
        *,
        group: str,
        collection: str = "default",
        progress: bool = False,
        batch_size: int = 8,
        deactivate_stale: bool = True,
    ) -> RecompressReport:
        """Re-encode the group's stored chunks with the runtime's encoder (after an encoder change), from the
        stored text: see :meth:`CheatSheetStore.recompress`. Then retrain its adapter (``lloco finetune``)."""
        return self.store.recompress(
            group=group,
            collection=collection,
            encoder=self.lloco.encoder,
            batch_size=batch_size,
            progress=progress,
            deactivate_stale=deactivate_stale,
        )

    # -- online ---------------------------------------------------------------------------------------------

    def retrieve(
        self,
        question: str,
        *,
        group: str,
        collection: str = "default",
        top_k: int = 4,
        mode: str = "hybrid",
        filters: Any = None,
        load_cheat_sheets: bool = True,
    ) -> RetrievalResult:
        """Top-k chunks of ``group`` with cheat sheets made by this runtime's encoder (else an error)."""
        return self.store.retrieve(
            question,
            group=group,
            collection=collection,
            top_k=top_k,
            mode=mode,
            filters=filters,
            load_cheat_sheets=load_cheat_sheets,
            encoder_fingerprint=self.lloco.encoder.fingerprint,
        )

    def cheat_sheets(self, chunk_ids: Sequence[int]) -> list[torch.Tensor]:
        """Cheat sheets of ``chunk_ids`` (fingerprint-checked) in the decoder's dtype, in the given order."""
        sheets = self.store.cheat_sheets(chunk_ids, encoder_fingerprint=self.lloco.encoder.fingerprint)
        return [s.to(self.lloco.host.dtype) for s in sheets]

    def _context(self, result: RetrievalResult) -> list[torch.Tensor]:
        # Document order reads more naturally than score order: (doc, ordinal).
        ordered = sorted(result.chunks, key=lambda c: (c.doc_id, c.ordinal))
        return [c.cheat_sheet.to(self.lloco.host.dtype) for c in ordered if c.cheat_sheet is not None]

    @staticmethod
    def _sources(result: RetrievalResult) -> list[Source]:
        return [
            Source(c.doc_id, c.chunk_id, float(c.score), c.ordinal, c.text, dict(c.metadata))
            for c in result.chunks
        ]

    def answer(
        self,
        question: str,
        *,
        group: str,
        collection: str = "default",
        top_k: int = 4,
        mode: str = "hybrid",
        filters: Any = None,
        use_adapter: bool = True,
        config: GenerationConfig | None = None,
        **gen,
    ) -> Answer:
        """Retrieve, splice the cheat sheets, apply the group's active adapter, generate."""
        st = StreamStats()
        result = self.retrieve(
            question, group=group, collection=collection, top_k=top_k, mode=mode, filters=filters
        )
        for _ in self._stream(question, result, use_adapter, config, st, gen):
            pass
        return self._answer(result, use_adapter, st)

    def stream(
        self,
        question: str,
        *,
        group: str,
        collection: str = "default",
        top_k: int = 4,
        mode: str = "hybrid",
        filters: Any = None,
        use_adapter: bool = True,
        config: GenerationConfig | None = None,
        **gen,
    ) -> tuple[Iterator[str], RetrievalResult]:
        """Retrieve now; return (text deltas iterator, retrieval result with the sources)."""
        result = self.retrieve(
            question, group=group, collection=collection, top_k=top_k, mode=mode, filters=filters
        )
        return self._stream(question, result, use_adapter, config, None, gen), result

    def _stream(self, question, result, use_adapter, config, state, gen) -> Iterator[str]:
        if not result.chunks:
            raise InputError(
                f"group {result.group!r} has no chunks matching the query and filters; "
                "ingest documents first or relax the filters"
            )
        adapter = str(result.adapter_id) if (use_adapter and result.adapter_id is not None) else None
        yield from self.lloco.stream(
            question, self._context(result), adapter_id=adapter, config=config, state=state, **gen
        )

    def _answer(self, result: RetrievalResult, use_adapter: bool, st: StreamStats) -> Answer:
        return Answer(
            answer=st.text.strip(),
            sources=self._sources(result),
            adapter_id=result.adapter_id if use_adapter else None,
            context_tokens=result.context_tokens,
            raw_context_tokens=result.raw_context_tokens,
            prefill_s=st.prefill_s,
            total_s=st.total_s,
        )

    def answer_chunks(
        self,
        question: str,
        chunk_ids: Sequence[int],
        *,
        adapter_id: int | str | None = None,
        config: GenerationConfig | None = None,
        **gen,
    ):
        """Answer over given chunk ids (what the framework LLM classes receive) with an optional adapter."""
        sheets = self.cheat_sheets(chunk_ids)
        return self.lloco.answer(
            question,
            sheets or None,
            adapter_id=None if adapter_id is None else str(adapter_id),
            config=config,
            **gen,
        )


def answer_dict(answer: Answer) -> dict[str, Any]:
    """Plain-dict form (for JSON APIs)."""
    return asdict(answer)
