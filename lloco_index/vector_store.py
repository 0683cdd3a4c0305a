"""``LLoCOVectorStore``: a LlamaIndex vector store over one group of the lloco store.

Nodes are written by :class:`~lloco_index.LLoCONodeParser` (which must run first: cheat sheets are made
at ingest), so :meth:`add` only checks that they are stored in this group. Queries are embedded with the
model that made the stored keys: give the index ``embed_model=vector_store.embed_model`` (an
:class:`~lloco_index.LLoCOEmbedding` over the store's own embedder; LlamaIndex's default would be OpenAI).
A query vector from any other model (another width, or the same width but another model) is refused with
a :class:`~lloco_runtime.ConfigError`, never scored; an accepted ``query_embedding`` is what the dense
search uses (queries without one are embedded by the store). ``filters``, ``doc_ids`` and ``node_ids``
narrow the search in SQL, before the top-k cut. Results carry the payload ids the
:class:`~lloco_index.LLoCOLLM` needs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import numpy as np
from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.schema import BaseNode
from llama_index.core.vector_stores.types import (
    BasePydanticVectorStore,
    MetadataFilters,
    VectorStoreQuery,
    VectorStoreQueryMode,
    VectorStoreQueryResult,
)

from lloco_runtime import ConfigError, InputError, NotFoundError, as_matrix
from lloco_runtime.store import DEFAULT_COLLECTION, CheatSheetStore, ChunkInfo, RetrievalMode, validate_name

from . import keys
from .embeddings import ISSUED, LLoCOEmbedding
from .filters import to_store_filter
from .node_parser import chunk_to_node

#: LlamaIndex's query modes as the store's (DEFAULT: the vector store's ``default_mode``)
_MODES = {
    VectorStoreQueryMode.HYBRID: RetrievalMode.HYBRID,
    VectorStoreQueryMode.TEXT_SEARCH: RetrievalMode.FULLTEXT,
    VectorStoreQueryMode.SPARSE: RetrievalMode.FULLTEXT,
}


class LLoCOVectorStore(BasePydanticVectorStore):
    """One ``collection/group`` of a :class:`~lloco_runtime.store.CheatSheetStore` as a vector store."""

    stores_text: bool = True
    is_embedding_query: bool = True
    flat_metadata: bool = False
    group: str = Field(description="store group this vector store reads and writes")
    collection: str = Field(default=DEFAULT_COLLECTION)
    # A vector store's similarity search is dense by contract (LlamaIndex's DEFAULT query mode is the vector
    # search), so this default is DENSE, unlike the retrievers' and the service's (DEFAULT_MODE, hybrid).
    default_mode: RetrievalMode = Field(
        default=RetrievalMode.DENSE, description="store retrieval mode for VectorStoreQueryMode.DEFAULT"
    )

    _store: CheatSheetStore = PrivateAttr()
    _embed_model: LLoCOEmbedding | None = PrivateAttr(default=None)

    def __init__(
        self,
        store: CheatSheetStore,
        *,
        group: str,
        collection: str = DEFAULT_COLLECTION,
        default_mode: RetrievalMode | str = RetrievalMode.DENSE,  # dense by contract: see the field
        **kwargs: Any,
    ) -> None:
        validate_name(group, "group")
        validate_name(collection, "collection")
        default_mode = RetrievalMode.parse(default_mode)
        super().__init__(group=group, collection=collection, default_mode=default_mode, **kwargs)
        self._store = store

    @classmethod
    def class_name(cls) -> str:
        return "LLoCOVectorStore"

    @property
    def client(self) -> CheatSheetStore:
        """The underlying :class:`CheatSheetStore`."""
        return self._store

    @property
    def embed_model(self) -> LLoCOEmbedding:
        """The store's own retrieval embedder as a LlamaIndex embedding model, for the index:
        ``VectorStoreIndex.from_vector_store(vs, embed_model=vs.embed_model)``."""
        if self._embed_model is None:
            self._embed_model = LLoCOEmbedding(self._store.embedder)
        return self._embed_model

    # -- write -----------------------------------------------------------------------------------------

    def add(self, nodes: Sequence[BaseNode], **kwargs: Any) -> list[str]:
        """Check that ``nodes`` are this group's stored chunks (made by LLoCONodeParser); returns their ids."""
        wanted: dict[int, str] = {}
        for node in nodes:
            meta = node.metadata or {}
            cid = meta.get(keys.CHUNK_ID)
            if cid is None:
                raise InputError(
                    f"node {node.node_id!r} was not ingested by lloco: LLoCOVectorStore stores cheat sheets, "
                    "which are made at parse time. Put LLoCONodeParser in the transformations (it writes the "
                    "chunks to the store) instead of another splitter"
                )
            if (meta.get(keys.GROUP), meta.get(keys.COLLECTION)) != (self.group, self.collection):
                raise InputError(
                    f"node {node.node_id!r} belongs to {meta.get(keys.COLLECTION)}/{meta.get(keys.GROUP)}, not "
                    f"to this vector store's {self.collection}/{self.group}; use one group for both"
                )
            wanted[int(cid)] = node.node_id
        if wanted:
            try:
                found = {
                    r.chunk_id
                    for r in self._store.list_chunks(self.group, self.collection, chunk_ids=list(wanted))
                }
            except NotFoundError:  # the group is absent: none of the chunks is stored
                found = set()
            missing = [c for c in wanted if c not in found]
            if missing:
                raise NotFoundError(
                    f"chunks {missing[:5]} are not in {self.collection}/{self.group} (deleted or "
                    "re-ingested since they were parsed?); run LLoCONodeParser again"
                )
        return [n.node_id for n in nodes]

    def delete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        """Delete a document (all its chunks and cheat sheets); absent documents are ignored."""
        try:
            self._store.delete_document(ref_doc_id, group=self.group, collection=self.collection)
        except NotFoundError:  # LlamaIndex semantics: deleting an absent document (or group) is a no-op
            pass

    def delete_nodes(
        self, node_ids: list[str] | None = None, filters: MetadataFilters | None = None, **delete_kwargs: Any
    ) -> None:
        """Delete chunks by node id and/or metadata filter (node ids lloco did not make are ignored)."""
        flt = to_store_filter(filters)
        ids = None
        if node_ids is not None:
            ids = [c for c in (keys.chunk_id_from_node_id(n) for n in node_ids) if c is not None]
            if not ids:
                return
        if ids is None and flt is None:
            return
        try:
            self._store.delete_chunks(self.group, self.collection, chunk_ids=ids, filters=flt)
        except NotFoundError:  # no group yet: nothing to delete
            pass

    def clear(self) -> None:
        """Delete every document of the group (the group and its adapters stay)."""
        try:
            self._store.clear_group(self.group, self.collection)
        except NotFoundError:  # no group yet: already empty
            pass

    def get_nodes(
        self, node_ids: list[str] | None = None, filters: MetadataFilters | None = None
    ) -> list[BaseNode]:
        """Stored chunks as nodes, by node id and/or filter (all of the group when neither is given)."""
        ids = None
        if node_ids is not None:
            ids = [c for c in (keys.chunk_id_from_node_id(n) for n in node_ids) if c is not None]
            if not ids:
                return []
        try:
            rows = self._store.list_chunks(
                self.group,
                self.collection,
                chunk_ids=ids,
                filters=to_store_filter(filters),
                with_embeddings=True,
            )
        except NotFoundError:  # no group yet: no nodes
            return []
        adapter = self._adapter_id()
        return [
            chunk_to_node(r, group=self.group, collection=self.collection, adapter_id=adapter) for r in rows
        ]

    def _adapter_id(self) -> int | None:
        try:
            return self._store.get_group(self.group, self.collection).active_adapter_id
        except NotFoundError:
            return None

    # -- read ------------------------------------------------------------------------------------------

    def query(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        """Top-k chunks for ``query``: ``query_embedding`` (when given; checked to come from the store's
        embedder) drives the dense search, else the store embeds ``query_str``; ``filters`` (nested and/or),
        ``doc_ids`` and ``node_ids`` narrow the search in SQL, before the top-k cut."""
        qmode = VectorStoreQueryMode(query.mode)
        mode = self.default_mode if qmode == VectorStoreQueryMode.DEFAULT else _MODES.get(qmode)
        if mode is None:
            raise InputError(
                f"query mode {query.mode!r} is not supported by LLoCOVectorStore; use default, "
                "hybrid or text_search"
            )
        if not query.query_str:
            raise InputError(
                "LLoCOVectorStore needs query_str, also with a query_embedding (full-text search "
                "and the embedder check read it); VectorStoreIndex retrievers always pass it, "
                "so set VectorStoreQuery(query_str=...) when building a query by hand"
            )
        flt = to_store_filter(query.filters)
        top_k = (
            int(query.hybrid_top_k or query.similarity_top_k)
            if mode == RetrievalMode.HYBRID
            else int(query.similarity_top_k)
        )
        doc_ids = list(query.doc_ids) if query.doc_ids else None
        chunk_ids = None
        if query.node_ids:
            chunk_ids = [c for c in (keys.chunk_id_from_node_id(n) for n in query.node_ids) if c is not None]
            if not chunk_ids:  # none of the node ids is a lloco chunk: nothing of this store can match
                return VectorStoreQueryResult(nodes=[], similarities=[], ids=[])
        qvec = None
        if mode != RetrievalMode.FULLTEXT and query.query_embedding is not None:
            qvec = self._query_vector(query.query_embedding, query.query_str)
        result = self._store.retrieve(
            query.query_str,
            group=self.group,
            collection=self.collection,
            top_k=top_k,
            mode=mode,
            filters=flt,
            load_cheat_sheets=False,
            query_vector=qvec,
            doc_ids=doc_ids,
            chunk_ids=chunk_ids,
            **kwargs,
        )
        chunks = result.chunks
        nodes = [
            chunk_to_node(
                ChunkInfo(c.chunk_id, c.doc_id, c.ordinal, c.text, c.n_tokens, None, None, dict(c.metadata)),
                group=self.group,
                collection=self.collection,
                adapter_id=result.adapter_id,
            )
            for c in chunks
        ]
        return VectorStoreQueryResult(
            nodes=nodes, similarities=[float(c.score) for c in chunks], ids=[n.node_id for n in nodes]
        )

    def _query_vector(self, vector: list[float], query_str: str) -> np.ndarray:
        """``vector`` if it was made by the store's embedder, else ConfigError (it would be scored against keys
        of another model). Vectors an LLoCOEmbedding made are known and used as they are (they may embed another
        text than ``query_str``); others are compared with the store's own embedding of ``query_str`` (cosine
        >= 0.98: the same model, up to numerics) and then used."""
        emb = self._store.embedder
        fix = (
            "build the index with VectorStoreIndex.from_vector_store(vector_store, embed_model=vector_store."
            "embed_model) (an LLoCOEmbedding over the store's embedder), or set Settings.embed_model = "
            "LLoCOEmbedding(store) in your app"
        )
        arr = np.asarray(vector, dtype=np.float32)
        if arr.shape != (emb.dim,):
            raise ConfigError(
                f"the query embedding has {arr.size} dims but {self.collection}/{self.group} is keyed "
                f"by {emb.dim}-dim embeddings of {emb.name!r}: the index embeds queries with "
                f"another model; {fix}"
            )
        maker = ISSUED.maker(arr)
        if maker == emb.name:
            return arr
        if maker is not None:
            raise ConfigError(
                f"the query was embedded by {maker!r} but {self.collection}/{self.group} is keyed by "
                f"embeddings of {emb.name!r}; {fix}"
            )
        own = as_matrix(emb.embed([query_str]), 1, emb.dim, emb.name)[0]
        norm = float(np.linalg.norm(arr) * np.linalg.norm(own))
        cosine = float(own @ arr) / norm if norm > 0 and np.isfinite(norm) else 0.0
        if cosine < 0.98:
            raise ConfigError(
                f"the query embedding was not made by {emb.name!r}, the model that made the keys of "
                f"{self.collection}/{self.group} (cosine {cosine:.2f} with its embedding of the same "
                f"query; the index embeds queries with another model); {fix}"
            )
        return arr

    # -- async (the store is synchronous: run in a worker thread) ---------------------------------------

    async def async_add(self, nodes: Sequence[BaseNode], **kwargs: Any) -> list[str]:
        return await asyncio.to_thread(self.add, nodes, **kwargs)

    async def adelete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        await asyncio.to_thread(self.delete, ref_doc_id, **delete_kwargs)

    async def adelete_nodes(
        self, node_ids: list[str] | None = None, filters: MetadataFilters | None = None, **delete_kwargs: Any
    ) -> None:
        await asyncio.to_thread(self.delete_nodes, node_ids, filters, **delete_kwargs)

    async def aclear(self) -> None:
        await asyncio.to_thread(self.clear)

    async def aget_nodes(
        self, node_ids: list[str] | None = None, filters: MetadataFilters | None = None
    ) -> list[BaseNode]:
        return await asyncio.to_thread(self.get_nodes, node_ids, filters)

    async def aquery(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        return await asyncio.to_thread(self.query, query, **kwargs)
