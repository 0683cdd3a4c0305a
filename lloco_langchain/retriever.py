"""``LLoCORetriever``: top-k chunks of one lloco group as LangChain ``Document``s carrying lloco ids."""

from __future__ import annotations

from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForRetrieverRun, CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables.config import run_in_executor
from pydantic import ConfigDict, PrivateAttr

from lloco_runtime import InputError, LLoCOService
from lloco_runtime.store import (
    DEFAULT_COLLECTION,
    DEFAULT_MODE,
    DEFAULT_TOP_K,
    RetrievalMode,
    RetrievalOptions,
)

from . import payload as P

_SEARCH_KWARGS = frozenset({"k", "filters", "mode"})


class LLoCORetriever(BaseRetriever):
    """Retrieves chunks of ``collection/group`` from the lloco store (dense, full-text or hybrid).

    Each Document holds the chunk text as ``page_content`` and, in ``metadata``, the chunk's own metadata
    plus ``chunk_id``, ``doc_id``, ``ordinal``, ``n_tokens``, ``score``, ``group``, ``collection`` and the
    group's active ``adapter_id`` (None without one). Cheat sheets are not loaded here: the LLM loads them by
    id. ``k``, ``filters`` and ``mode`` may be overridden per call: ``retriever.invoke(q, k=2)``.

    Args:
        service: the :class:`~lloco_runtime.LLoCOService` (runtime + store) to retrieve from.
        group, collection: which document group to search.
        k: number of chunks.
        mode: a :class:`~lloco_runtime.store.RetrievalMode` or its string: ``"dense"``, ``"fulltext"`` or
            ``"hybrid"`` (reciprocal-rank fusion, the default).
        filters: a store filter (``MetadataFilter``/``FilterGroup`` or their dict form) on chunk metadata.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    group: str
    collection: str = DEFAULT_COLLECTION
    k: int = DEFAULT_TOP_K
    mode: RetrievalMode = DEFAULT_MODE
    filters: Any = None

    _service: LLoCOService = PrivateAttr()

    def __init__(self, *, service: LLoCOService, **data: Any) -> None:
        if not isinstance(service, LLoCOService):
            raise InputError(f"LLoCORetriever needs service=LLoCOService(...), got {type(service).__name__}")
        super().__init__(**data)
        self._service = service

    @property
    def service(self) -> LLoCOService:
        return self._service

    def _search(self, query: str, kwargs: dict[str, Any]) -> list[Document]:
        unknown = set(kwargs) - _SEARCH_KWARGS
        if unknown:
            raise InputError(f"unknown retriever argument(s) {sorted(unknown)}; use {sorted(_SEARCH_KWARGS)}")
        options = RetrievalOptions(
            collection=self.collection,
            top_k=kwargs.get("k", self.k),
            mode=kwargs.get("mode", self.mode),
            filters=kwargs.get("filters", self.filters),
        )
        result = self._service.retrieve_with(
            query, group=self.group, options=options, load_cheat_sheets=False
        )
        return P.documents_from_result(result)

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun, **kwargs: Any
    ) -> list[Document]:
        return self._search(query, kwargs)

    async def _aget_relevant_documents(
        self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun, **kwargs: Any
    ) -> list[Document]:
        # The store is synchronous (SQLAlchemy + psycopg); keep the event loop free.
        return await run_in_executor(None, self._search, query, kwargs)
