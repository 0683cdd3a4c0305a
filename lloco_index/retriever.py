"""``LLoCORetriever``: top-k chunks of one group as NodeWithScore, with cheat-sheet and adapter ids."""

from __future__ import annotations

import asyncio
from typing import Any

from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.callbacks import CallbackManager
from llama_index.core.schema import NodeWithScore, QueryBundle
from llama_index.core.vector_stores.types import MetadataFilters

from lloco_runtime.store import (
    DEFAULT_COLLECTION,
    DEFAULT_MODE,
    DEFAULT_TOP_K,
    CheatSheetStore,
    ChunkInfo,
    Filter,
    RetrievalMode,
    RetrievalOptions,
    validate_name,
)

from .filters import to_store_filter
from .node_parser import chunk_to_node


class LLoCORetriever(BaseRetriever):
    """Retrieve from one ``collection/group`` of the store (dense, full-text or hybrid RRF).

    Each node's metadata carries ``lloco_chunk_id``, ``lloco_doc_id``, ``lloco_group``,
    ``lloco_collection`` and ``lloco_adapter_id`` (the group's active adapter, if any); these keys are
    excluded from what the LLM and the embedder see. ``filters``: llama_index ``MetadataFilters`` or the
    store's own filter types/dicts.
    """

    def __init__(
        self,
        store: CheatSheetStore,
        *,
        group: str,
        collection: str = DEFAULT_COLLECTION,
        top_k: int = DEFAULT_TOP_K,
        mode: RetrievalMode | str = DEFAULT_MODE,
        filters: MetadataFilters | Filter | dict | list | None = None,
        use_adapter: bool = True,
        callback_manager: CallbackManager | None = None,
        verbose: bool = False,
    ) -> None:
        validate_name(group, "group")
        validate_name(collection, "collection")
        flt = to_store_filter(filters) if isinstance(filters, MetadataFilters) else filters
        self.store, self.group, self.use_adapter = store, group, use_adapter
        self.options = RetrievalOptions(collection=collection, top_k=top_k, mode=mode, filters=flt)
        super().__init__(callback_manager=callback_manager, verbose=verbose)

    @property
    def collection(self) -> str:
        return self.options.collection

    @property
    def top_k(self) -> int:
        return self.options.top_k

    @property
    def mode(self) -> RetrievalMode:
        return self.options.mode

    @property
    def filters(self) -> Filter | dict | list | None:
        return self.options.filters

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        result = self.store.retrieve(
            query_bundle.query_str, group=self.group, **self.options.as_kwargs(), load_cheat_sheets=False
        )
        adapter = result.adapter_id if self.use_adapter else None
        out = []
        for c in result.chunks:
            node = chunk_to_node(
                ChunkInfo(c.chunk_id, c.doc_id, c.ordinal, c.text, c.n_tokens, None, None, dict(c.metadata)),
                group=self.group,
                collection=self.collection,
                adapter_id=adapter,
            )
            out.append(NodeWithScore(node=node, score=float(c.score)))
        return out

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return await asyncio.to_thread(self._retrieve, query_bundle)

    def with_options(self, **overrides: Any) -> LLoCORetriever:
        """A copy with some options changed (``top_k``, ``mode``, ``filters``, ...)."""
        kw = {
            "group": self.group,
            "collection": self.collection,
            "top_k": self.top_k,
            "mode": self.mode,
            "filters": self.filters,
            "use_adapter": self.use_adapter,
            "callback_manager": self.callback_manager,
        }
        kw.update(overrides)
        return LLoCORetriever(self.store, **kw)
