"""``LLoCOQueryEngine``: retrieve -> cheat sheets + the group's adapter -> answer, as a LlamaIndex engine.

A drop-in for ``index.as_query_engine()``: ``query`` returns a ``Response`` with ``source_nodes``
(a ``StreamingResponse`` when ``streaming=True``); ``aquery`` runs retrieval and decoding on worker threads
and, when streaming, returns an ``AsyncStreamingResponse`` whose tokens arrive as they are decoded. Every
step is an instrumentation span. A response synthesizer is deliberately not used: it would turn nodes into text and
lose the cheat sheets; the LLM receives chunk ids and loads the tensors itself.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Generator
from typing import TYPE_CHECKING, Any

import llama_index.core.instrumentation as instrument
from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.base.response.schema import AsyncStreamingResponse, Response, StreamingResponse
from llama_index.core.bridge.pydantic import Field
from llama_index.core.query_engine import CustomQueryEngine
from llama_index.core.schema import NodeWithScore
from llama_index.core.vector_stores.types import MetadataFilters

from lloco_runtime import (
    AdapterChoice,
    InputError,
    LLoCO,
    Payload,
    load_default_runtime,
    route_adapter,
    run_in_thread,
)
from lloco_runtime.store import (
    DEFAULT_COLLECTION,
    DEFAULT_MODE,
    DEFAULT_TOP_K,
    CheatSheetStore,
    RetrievalMode,
)

from . import keys
from .llm import LLoCOLLM
from .retriever import LLoCORetriever

if TYPE_CHECKING:
    from .remote import RemoteLLoCOQueryEngine

dispatcher = instrument.get_dispatcher(__name__)


class LLoCOQueryEngine(CustomQueryEngine):
    """Answers questions over one group's cheat sheets with the group's adapter.

    ``retriever``: an :class:`LLoCORetriever` or any retriever whose nodes carry lloco chunk ids (e.g.
    ``VectorStoreIndex(...LLoCOVectorStore...).as_retriever()``). ``llm``: an :class:`LLoCOLLM` with a store.
    """

    retriever: BaseRetriever = Field(description="returns nodes carrying lloco chunk ids")
    llm: LLoCOLLM = Field(description="the LLoCO decoder")
    streaming: bool = Field(default=False, description="return a StreamingResponse")
    use_adapter: bool = Field(default=True, description="apply the group's active adapter")
    generation_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="passed to llm.complete (max_new_tokens, ...)"
    )

    @classmethod
    def from_defaults(
        cls,
        *,
        group: str,
        collection: str = DEFAULT_COLLECTION,
        lloco: LLoCO | None = None,
        store: CheatSheetStore | None = None,
        embed_model: Any = None,
        top_k: int = DEFAULT_TOP_K,
        mode: RetrievalMode | str = DEFAULT_MODE,
        filters: MetadataFilters | None = None,
        streaming: bool = False,
        use_adapter: bool = True,
        max_new_tokens: int = 128,
        **generation_kwargs: Any,
    ) -> LLoCOQueryEngine:
        """The common case: default runtime, the configured store, an LLoCORetriever over ``group``.

        The store's retrieval embedder is ``embed_model`` if given, else ``Settings.embed_model`` if the
        application set one, else lloco's default (all-MiniLM-L6-v2). ``Settings`` is never written.
        """
        from .embeddings import resolve_embedder

        lloco = lloco or load_default_runtime()
        if store is None:
            store = CheatSheetStore(embedder=resolve_embedder(embed_model))
        elif embed_model is not None:
            raise InputError("pass either store= or embed_model= (a store already has its embedder)")
        retriever = LLoCORetriever(
            store,
            group=group,
            collection=collection,
            top_k=top_k,
            mode=mode,
            filters=filters,
            use_adapter=use_adapter,
        )
        llm = LLoCOLLM(lloco, store=store, max_new_tokens=max_new_tokens, max_cheat_sheets=top_k)
        return cls(
            retriever=retriever,
            llm=llm,
            streaming=streaming,
            use_adapter=use_adapter,
            generation_kwargs=generation_kwargs,
        )

    @classmethod
    def from_endpoint(
        cls,
        endpoint: str,
        *,
        group: str,
        collection: str = DEFAULT_COLLECTION,
        top_k: int = DEFAULT_TOP_K,
        mode: RetrievalMode | str = DEFAULT_MODE,
        streaming: bool = False,
        use_adapter: bool = True,
        max_new_tokens: int = 128,
        timeout: float = 300.0,
    ) -> RemoteLLoCOQueryEngine:
        """The same engine against a running ``lloco serve`` at ``endpoint`` (retrieval, cheat sheets and the
        group's adapter on the server): a :class:`~lloco_index.remote.RemoteLLoCOQueryEngine`."""
        from .remote import RemoteLLoCOQueryEngine

        return RemoteLLoCOQueryEngine(
            endpoint=endpoint,
            group=group,
            collection=collection,
            top_k=top_k,
            mode=mode,
            streaming=streaming,
            use_adapter=use_adapter,
            max_new_tokens=max_new_tokens,
            timeout=timeout,
        )

    @dispatcher.span
    def _payload(self, nodes: list[NodeWithScore]) -> tuple[Payload, int | None]:
        """The nodes' chunk ids (reading order) and the adapter to read them with (the group's active one)."""
        p = keys.payload_of(nodes)
        choice = AdapterChoice.ACTIVE if self.use_adapter else AdapterChoice.NONE
        return p, route_adapter(choice, p.adapter_id)

    def _metadata(self, p: Payload, adapter: int | None) -> dict[str, Any]:
        """Context vectors the decoder reads vs. raw tokens of the same chunks, and the payload ids."""
        return {
            "context_vectors": len(p.chunk_ids) * self.llm.summary_length,
            "raw_context_tokens": p.raw_tokens,
            "cheat_sheet_ids": p.chunk_ids,
            "adapter_id": adapter,
        }

    @dispatcher.span
    def custom_query(self, query_str: str) -> Response | StreamingResponse:
        nodes = self.retriever.retrieve(query_str)
        return self._answer(query_str, nodes)

    @dispatcher.span
    async def acustom_query(self, query_str: str) -> Response | AsyncStreamingResponse:
        nodes = await self.retriever.aretrieve(query_str)
        if not self.streaming:
            return await run_in_thread(self._answer, query_str, nodes)
        p, adapter = self._payload(nodes)
        meta = self._metadata(p, adapter)
        gen = await self.llm.astream_complete(
            query_str, cheat_sheet_ids=p.chunk_ids, adapter_id=adapter, **self.generation_kwargs
        )

        async def deltas() -> AsyncGenerator[str, None]:
            try:
                async for r in gen:
                    if r.raw:
                        meta.update(r.raw)
                    if r.delta:
                        yield r.delta
            finally:
                await gen.aclose()  # on early exit or cancellation: releases the adapter

        return AsyncStreamingResponse(response_gen=deltas(), source_nodes=nodes, metadata=meta)

    @dispatcher.span
    def _answer(self, query_str: str, nodes: list[NodeWithScore]) -> Response | StreamingResponse:
        p, adapter = self._payload(nodes)
        meta = self._metadata(p, adapter)
        if self.streaming:
            gen = self.llm.stream_complete(
                query_str, cheat_sheet_ids=p.chunk_ids, adapter_id=adapter, **self.generation_kwargs
            )

            def deltas() -> Generator[str, None, None]:
                try:
                    for r in gen:
                        if r.raw:
                            meta.update(r.raw)
                        if r.delta:
                            yield r.delta
                finally:
                    gen.close()

            return StreamingResponse(response_gen=deltas(), source_nodes=nodes, metadata=meta)
        out = self.llm.complete(
            query_str, cheat_sheet_ids=p.chunk_ids, adapter_id=adapter, **self.generation_kwargs
        )
        meta.update(out.raw or {})
        return Response(response=out.text, source_nodes=nodes, metadata=meta)
