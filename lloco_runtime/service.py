"""Retrieve -> cheat sheets + adapter -> answer: the serving path shared by the CLI, ``lloco serve`` and both
integrations.

:class:`LLoCOService` joins a :class:`~lloco_runtime.runtime.LLoCO` (decoder, encoder, adapters) with a
:class:`~lloco_runtime.store.CheatSheetStore`. Adapters are fetched from the store by id on first use and
kept in the runtime's LRU; cheat sheets are checked against the runtime's encoder fingerprint and cast from
their storage dtype to the decoder's. Each rule of a request (reading order, ids, adapter routing, the
numbers of a run, the "no chunks" error) lives in :mod:`lloco_runtime.request`; this class strings them
together.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch

from .generation import GenerationConfig, GenerationResult
from .prompt import MessageLike
from .request import (
    Answer,
    Source,
    TokenStream,
    adapter_key,
    check_found,
    context_sheets,
    load_cheat_sheets,
    start_stream,
    stored_adapter_id,
    stream_chunks,
)
from .runtime import AdapterChoice, LLoCO, route_adapter
from .store import (
    DEFAULT_COLLECTION,
    DEFAULT_MODE,
    DEFAULT_TOP_K,
    CheatSheetStore,
    RecompressReport,
    RetrievalMode,
    RetrievalOptions,
    RetrievalResult,
)

__all__ = ["Answer", "LLoCOService", "Source"]  # Answer and Source live in the request layer


class LLoCOService:
    """Answers questions over a store's groups with a runtime; thread-safe for concurrent requests."""

    def __init__(self, lloco: LLoCO, store: CheatSheetStore) -> None:
        self.lloco = lloco
        self.store = store
        lloco.adapters.source = self._adapter_weights

    def _adapter_weights(self, adapter_id: str) -> bytes:
        """An adapter's bytes from the store; ids are the store's integers (anything else is unknown)."""
        return self.store.adapter_weights(stored_adapter_id(adapter_id))

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
        collection: str = DEFAULT_COLLECTION,
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
        collection: str = DEFAULT_COLLECTION,
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

    # -- online: retrieval ----------------------------------------------------------------------------------

    def retrieve(
        self,
        question: str,
        *,
        group: str,
        collection: str = DEFAULT_COLLECTION,
        top_k: int = DEFAULT_TOP_K,
        mode: RetrievalMode | str = DEFAULT_MODE,
        filters: Any = None,
        load_cheat_sheets: bool = True,
    ) -> RetrievalResult:
        """Top-k chunks of ``group`` with cheat sheets made by this runtime's encoder (else an error)."""
        options = RetrievalOptions(collection=collection, top_k=top_k, mode=mode, filters=filters)
        return self.retrieve_with(question, group=group, options=options, load_cheat_sheets=load_cheat_sheets)

    def retrieve_with(
        self, question: str, *, group: str, options: RetrievalOptions, load_cheat_sheets: bool = True
    ) -> RetrievalResult:
        """:meth:`retrieve` with the options as one :class:`~lloco_runtime.store.RetrievalOptions`."""
        return self.store.retrieve(
            question,
            group=group,
            **options.as_kwargs(),
            load_cheat_sheets=load_cheat_sheets,
            encoder_fingerprint=self.lloco.encoder.fingerprint,
        )

    def cheat_sheets(self, chunk_ids: Sequence[int]) -> list[torch.Tensor]:
        """Cheat sheets of ``chunk_ids`` (fingerprint-checked) in the decoder's dtype, in the given order."""
        return load_cheat_sheets(self.lloco, self.store, chunk_ids) or []

    def _context(self, result: RetrievalResult) -> list[torch.Tensor]:
        """The retrieval's cheat sheets in reading order, in the decoder's dtype (what :meth:`answer` reads)."""
        return context_sheets(result, self.lloco.host.dtype)

    # -- online: answers over a retrieval -------------------------------------------------------------------

    def answer(
        self,
        question: str,
        *,
        group: str,
        collection: str = DEFAULT_COLLECTION,
        top_k: int = DEFAULT_TOP_K,
        mode: RetrievalMode | str = DEFAULT_MODE,
        filters: Any = None,
        use_adapter: bool = True,
        config: GenerationConfig | None = None,
        **gen,
    ) -> Answer:
        """Retrieve, splice the cheat sheets, apply the group's active adapter, generate."""
        result = self.retrieve(
            question, group=group, collection=collection, top_k=top_k, mode=mode, filters=filters
        )
        tokens = self.stream_over(question, result, use_adapter=use_adapter, config=config, **gen).finish()
        return Answer.of(
            result, text=tokens.text, adapter_id=self.adapter_of(result, use_adapter), stats=tokens.stats
        )

    def stream(
        self,
        question: str,
        *,
        group: str,
        collection: str = DEFAULT_COLLECTION,
        top_k: int = DEFAULT_TOP_K,
        mode: RetrievalMode | str = DEFAULT_MODE,
        filters: Any = None,
        use_adapter: bool = True,
        config: GenerationConfig | None = None,
        **gen,
    ) -> tuple[TokenStream, RetrievalResult]:
        """Retrieve now; return (text deltas iterator, retrieval result with the sources)."""
        result = self.retrieve(
            question, group=group, collection=collection, top_k=top_k, mode=mode, filters=filters
        )
        return self.stream_over(question, result, use_adapter=use_adapter, config=config, **gen), result

    @staticmethod
    def adapter_of(result: RetrievalResult, use_adapter: bool = True) -> int | None:
        """The stored adapter an answer over ``result`` reads with: its group's active one, unless
        ``use_adapter`` is off (see :func:`~lloco_runtime.runtime.route_adapter`)."""
        return route_adapter(AdapterChoice.ACTIVE if use_adapter else AdapterChoice.NONE, result.adapter_id)

    def stream_over(
        self,
        prompt: str | Sequence[MessageLike],
        result: RetrievalResult,
        *,
        use_adapter: bool = True,
        config: GenerationConfig | None = None,
        **gen,
    ) -> TokenStream:
        """Decode ``prompt`` (a question, or a conversation) over a retrieval with cheat sheets loaded: its
        sheets in reading order, its group's adapter (:meth:`adapter_of`); the no-chunks error when it found
        nothing."""
        check_found(result)
        adapter = adapter_key(self.adapter_of(result, use_adapter), None)  # the store's own id: no check
        return start_stream(
            self.lloco,
            prompt,
            self._context(result),
            adapter=adapter,
            config=config or GenerationConfig(**gen),
        )

    # -- online: answers over given chunks (what the framework LLM classes receive) -------------------------

    def stream_chunks(
        self,
        prompt: str | Sequence[MessageLike],
        chunk_ids: Iterable[object] | None = None,
        *,
        adapter_id: int | str | None = None,
        config: GenerationConfig | None = None,
        **gen,
    ) -> TokenStream:
        """Decode ``prompt`` (a question, or a conversation) over the cheat sheets of ``chunk_ids`` with an
        optional stored adapter: :func:`lloco_runtime.request.stream_chunks`, the path of the framework LLMs."""
        return stream_chunks(
            self.lloco,
            self.store,
            prompt,
            chunk_ids,
            adapter_id=adapter_id,
            config=config or GenerationConfig(**gen),
        )

    def answer_chunks(
        self,
        question: str,
        chunk_ids: Sequence[int],
        *,
        adapter_id: int | str | None = None,
        config: GenerationConfig | None = None,
        **gen,
    ) -> GenerationResult:
        """:meth:`stream_chunks` decoded to the end."""
        return self.stream_chunks(question, chunk_ids, adapter_id=adapter_id, config=config, **gen).result()
