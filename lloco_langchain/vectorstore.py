"""``LLoCOVectorStore``: a LangChain ``VectorStore`` facade over one lloco group.

``add_texts``/``add_documents`` compress each text into cheat sheets with the runtime's encoder and store it
(one text = one lloco document, split into chunks); ``similarity_search`` returns chunk Documents carrying
lloco's ids, so ``store.as_retriever()`` plugs into :func:`~lloco_langchain.chain.create_lloco_chain` and
:class:`~lloco_langchain.chat.ChatLLoCO`.

Retrieval keys come from the store's embedder, fixed per schema. A LangChain ``Embeddings`` can be that
embedder: open the store with ``CheatSheetStore(..., embedder=LangChainEmbedder(embeddings, name=...))`` and
pass the same object as ``embedding=``; chunks are then indexed with ``embed_documents`` and queries embedded
with ``embed_query``/``aembed_query``. Any other ``embedding=`` is refused: its vectors would not match the
index.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.vectorstores import VectorStore

from lloco_runtime import CallableEmbedder, ConfigError, InputError, LLoCOService, NotFoundError
from lloco_runtime.store import DEFAULT_COLLECTION, ChunkInfo, DocumentInput, RetrievalMode, RetrievalResult

from . import payload as P


class LangChainEmbedder(CallableEmbedder):
    """A LangChain ``Embeddings`` as the store's retrieval embedder (documents via ``embed_documents``).

    ``name`` identifies the model in the schema (a schema never mixes embedders); ``dim`` is measured with
    one ``embed_query`` call when not given.
    """

    def __init__(self, embeddings: Embeddings, *, name: str, dim: int | None = None) -> None:
        if not isinstance(embeddings, Embeddings):
            raise ConfigError(
                f"LangChainEmbedder wraps a LangChain Embeddings, got {type(embeddings).__name__}"
            )
        if dim is None:
            dim = len(embeddings.embed_query("dimension probe"))
        super().__init__(embeddings.embed_documents, name=name, dim=dim)
        self.embeddings = embeddings


class LLoCOVectorStore(VectorStore):
    """Documents of ``collection/group`` in the lloco store, searchable by text (dense, full-text, hybrid).

    Ids: ``add_texts`` returns one id per text (the given ``ids``, a Document's own ``id``, or a new UUID);
    search results, ``get_by_ids`` and ``delete`` use the same ids (``Document.id``). Re-adding an id with
    the same text and metadata is a no-op; with other content it replaces that document.

    Args:
        service: the runtime (its encoder compresses) and the store.
        group, collection: where documents go and are searched (searching a group not created yet finds
            nothing).
        mode: default retrieval mode for searches (a :class:`~lloco_runtime.store.RetrievalMode` or its
            string: ``"dense"``, ``"fulltext"`` or ``"hybrid"``); dense unless given, see ``__init__``.
        embedding: a LangChain ``Embeddings`` only if it is the store's embedder (see the module doc).
        lloco_metadata: search results carry lloco's ids (``chunk_id``, ``adapter_id``, ... next to your
            metadata), which a LLoCO chain or ``ChatLLoCO`` needs. ``False`` gives plain LangChain Documents
            (only the metadata you added), for code that compares or re-stores them; such Documents cannot
            be answered from by a LLoCO chain.
    """

    def __init__(
        self,
        service: LLoCOService,
        *,
        group: str,
        collection: str = DEFAULT_COLLECTION,
        # A vector store's similarity search is dense by contract (LangChain's similarity_search and its
        # relevance scores are vector similarity), so this default is DENSE, unlike the retrievers' and the
        # service's (DEFAULT_MODE, hybrid).
        mode: RetrievalMode | str = RetrievalMode.DENSE,
        embedding: Embeddings | None = None,
        lloco_metadata: bool = True,
    ) -> None:
        if not isinstance(service, LLoCOService):
            raise InputError(f"LLoCOVectorStore needs an LLoCOService, got {type(service).__name__}")
        mode = RetrievalMode.parse(mode)
        self.service, self.group, self.collection, self.mode = service, group, collection, mode
        self.lloco_metadata = lloco_metadata
        self._embedding = _check_embedding(service, embedding)

    @property
    def embeddings(self) -> Embeddings | None:
        """The LangChain ``Embeddings`` the store indexes with, if it is one (else None: lloco's own)."""
        own = getattr(self.service.store.embedder, "embeddings", None)
        return own if isinstance(own, Embeddings) else None

    # -- write ---------------------------------------------------------------------------------------------

    def add_texts(
        self,
        texts: Iterable[str],
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str | None] | None = None,
        batch_size: int = 8,
        **kwargs: Any,
    ) -> list[str]:
        """Compress and store each text as one document (re-adding unchanged content is a no-op).

        Returns the document ids (given ``ids``, else new UUIDs); ``delete(ids)`` removes them again.
        """
        if kwargs:
            raise InputError(
                f"unknown add_texts argument(s) {sorted(kwargs)}; use metadatas, ids, batch_size"
            )
        texts = list(texts)
        metadatas = list(metadatas) if metadatas is not None else [{} for _ in texts]
        ids = (
            [i if i else str(uuid.uuid4()) for i in ids]
            if ids is not None
            else [str(uuid.uuid4()) for _ in texts]
        )
        if not len(texts) == len(metadatas) == len(ids):
            raise InputError(
                f"got {len(texts)} texts, {len(metadatas)} metadatas and {len(ids)} ids; "
                "pass one of each per text"
            )
        # Drop lloco's own keys (e.g. when re-adding retrieved Documents): the store assigns fresh ids.
        docs = [
            DocumentInput(doc_id, text, {k: v for k, v in (meta or {}).items() if k not in P.LLOCO_KEYS})
            for text, meta, doc_id in zip(texts, metadatas, ids, strict=True)
        ]
        self.service.store.ingest(
            docs,
            group=self.group,
            collection=self.collection,
            encoder=self.service.lloco.encoder,
            batch_size=batch_size,
        )
        return ids

    def delete(self, ids: list[str] | None = None, **kwargs: Any) -> bool | None:
        """Delete documents by id; True when all existed (missing ids are skipped). ``ids=None`` is refused:
        empty the group with ``service.store.clear_group(...)``."""
        if kwargs:
            raise InputError(f"unknown delete argument(s) {sorted(kwargs)}; pass ids")
        if ids is None:
            raise InputError(
                "delete() needs document ids; to empty the group use "
                "service.store.clear_group(group) (or delete_group)"
            )
        found = True
        for doc_id in ids:
            try:
                self.service.store.delete_document(doc_id, group=self.group, collection=self.collection)
            except NotFoundError:
                found = False
        return found

    # -- read ----------------------------------------------------------------------------------------------

    def get_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        """The stored documents of ``ids`` (missing ones are left out), text rebuilt from their chunks."""
        ids = [str(i) for i in ids]
        if not ids:
            return []
        try:
            chunks = self.service.store.list_chunks(self.group, self.collection, doc_ids=ids)
        except NotFoundError:
            if self._group_exists():
                raise
            return []
        by_doc: dict[str, list[ChunkInfo]] = {}
        for c in chunks:
            by_doc.setdefault(c.doc_id, []).append(c)
        return [
            Document(page_content=_document_text(by_doc[i]), metadata=dict(by_doc[i][0].metadata), id=i)
            for i in ids
            if i in by_doc
        ]

    def similarity_search_with_score(
        self, query: str, k: int = 4, filter: Any = None, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        """Top-``k`` chunks with their scores (cosine similarity in dense mode); ``filter`` on metadata."""
        mode, qvec = self._mode(kwargs), None
        if mode != RetrievalMode.FULLTEXT and self._embedding is not None:
            qvec = self._embedding.embed_query(query)
        return self._search(query, k, filter, mode, qvec)

    async def asimilarity_search_with_score(
        self, query: str, k: int = 4, filter: Any = None, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        from langchain_core.runnables.config import run_in_executor

        mode, qvec = self._mode(kwargs), None
        if mode != RetrievalMode.FULLTEXT and self._embedding is not None:
            qvec = await self._embedding.aembed_query(query)
        return await run_in_executor(None, self._search, query, k, filter, mode, qvec)

    def similarity_search(self, query: str, k: int = 4, filter: Any = None, **kwargs: Any) -> list[Document]:
        return [d for d, _ in self.similarity_search_with_score(query, k, filter, **kwargs)]

    async def asimilarity_search(
        self, query: str, k: int = 4, filter: Any = None, **kwargs: Any
    ) -> list[Document]:
        return [d for d, _ in await self.asimilarity_search_with_score(query, k, filter, **kwargs)]

    def _select_relevance_score_fn(self) -> Callable[[float], float]:
        return lambda score: (score + 1.0) / 2.0 if self.mode == RetrievalMode.DENSE else score

    def _mode(self, kwargs: dict[str, Any]) -> RetrievalMode:
        mode = kwargs.pop("mode", self.mode)
        if kwargs:
            raise InputError(f"unknown search argument(s) {sorted(kwargs)}; use k, filter, mode")
        return RetrievalMode.parse(mode)

    def _search(
        self, query: str, k: int, filter: Any, mode: RetrievalMode, query_vector: list[float] | None
    ) -> list[tuple[Document, float]]:
        try:
            result = self.service.store.retrieve(
                query,
                group=self.group,
                collection=self.collection,
                top_k=k,
                mode=mode,
                filters=filter,
                load_cheat_sheets=False,
                query_vector=query_vector,
            )
        except NotFoundError:
            if self._group_exists():
                raise
            return []  # nothing added yet
        return [(d, float(s)) for d, s in self._documents(result)]

    def _documents(self, result: RetrievalResult) -> list[tuple[Document, float]]:
        out = []
        for d, c in zip(P.documents_from_result(result), result.chunks, strict=True):
            meta = d.metadata if self.lloco_metadata else dict(c.metadata)
            out.append((Document(page_content=d.page_content, metadata=meta, id=c.doc_id), c.score))
        return out

    def _group_exists(self) -> bool:
        try:
            self.service.store.get_group(self.group, self.collection)
        except NotFoundError:
            return False
        return True

    @classmethod
    def from_texts(
        cls,
        texts: list[str],
        embedding: Embeddings | None = None,
        metadatas: list[dict] | None = None,
        *,
        ids: list[str] | None = None,
        service: LLoCOService | None = None,
        group: str | None = None,
        collection: str = DEFAULT_COLLECTION,
        **kwargs: Any,
    ) -> LLoCOVectorStore:
        """Build over ``service``/``group`` and add ``texts`` (``embedding``: see the module doc)."""
        if service is None or group is None:
            raise ConfigError("LLoCOVectorStore.from_texts needs service=LLoCOService(...) and group=...")
        store = cls(service, group=group, collection=collection, embedding=embedding, **kwargs)
        store.add_texts(texts, metadatas, ids=ids)
        return store


def _check_embedding(service: LLoCOService, embedding: Embeddings | None) -> Embeddings | None:
    """``embedding`` if it is the store's own embedder (then it embeds queries), None if not given."""
    if embedding is None:
        return None
    own = service.store.embedder
    if getattr(own, "embeddings", None) is embedding:
        return embedding
    raise ConfigError(
        f"this store indexes chunks with its embedder {own.name!r}, so queries must be embedded by the same "
        f"model, not by the {type(embedding).__name__} passed as embedding=. Either pass embedding=None (the "
        "store embeds queries itself), or open the CheatSheetStore with embedder=LangChainEmbedder(embedding, "
        "name=...) in a schema of its own and pass that same embedding object here"
    )


def _document_text(chunks: list[ChunkInfo]) -> str:
    """A document's text from its chunks in order: overlaps (by character span) are taken once."""
    chunks = sorted(chunks, key=lambda c: c.ordinal)
    if any(c.char_start is None or c.char_end is None for c in chunks):
        return " ".join(c.text for c in chunks)
    text, end = chunks[0].text, chunks[0].char_end
    for c in chunks[1:]:
        if c.char_start >= end:
            text += (" " if c.char_start > end else "") + c.text  # the gap held whitespace
        else:
            text += c.text[end - c.char_start :]
        end = max(end, c.char_end)
    return text
