"""``LLoCOVectorStore``: a LangChain ``VectorStore`` facade over one lloco group.

``add_texts``/``add_documents`` compress each text into cheat sheets with the runtime's encoder and store it
(one text = one lloco document, split into chunks); ``similarity_search`` returns chunk Documents carrying
lloco's ids, so ``store.as_retriever()`` plugs into :func:`~lloco_langchain.chain.create_lloco_chain`.
Retrieval keys come from the store's own embedder (fixed per schema), not from a LangChain ``Embeddings``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.vectorstores import VectorStore

from lloco_runtime.errors import ConfigError, InputError, NotFoundError
from lloco_runtime.service import LLoCOService
from lloco_runtime.store import DocumentInput

from . import payload as P


class LLoCOVectorStore(VectorStore):
    """Documents of ``collection/group`` in the lloco store, searchable by text (dense, full-text, hybrid).

    Args:
        service: the runtime (its encoder compresses) and the store.
        group, collection: where documents go and are searched.
        mode: default retrieval mode for searches (``"dense"``, ``"fulltext"`` or ``"hybrid"``).
    """

    def __init__(self, service: LLoCOService, *, group: str, collection: str = "default",
                 mode: str = "dense") -> None:
        if not isinstance(service, LLoCOService):
            raise InputError(f"LLoCOVectorStore needs an LLoCOService, got {type(service).__name__}")
        self.service, self.group, self.collection, self.mode = service, group, collection, mode

    @property
    def embeddings(self) -> Embeddings | None:
        return None  # the store embeds with its own retrieval embedder

    # -- write ---------------------------------------------------------------------------------------------

    def add_texts(self, texts: Iterable[str], metadatas: list[dict[str, Any]] | None = None, *,
                  ids: list[str] | None = None, batch_size: int = 8, **kwargs: Any) -> list[str]:
        """Compress and store each text as one document (re-adding unchanged content is a no-op).

        Returns the document ids (given ``ids``, else new UUIDs); ``delete(ids)`` removes them again.
        """
        if kwargs:
            raise InputError(f"unknown add_texts argument(s) {sorted(kwargs)}")
        texts = list(texts)
        metadatas = list(metadatas) if metadatas is not None else [{} for _ in texts]
        ids = [i if i else str(uuid.uuid4()) for i in ids] if ids is not None else [str(uuid.uuid4()) for _ in texts]
        if not len(texts) == len(metadatas) == len(ids):
            raise InputError(f"got {len(texts)} texts, {len(metadatas)} metadatas and {len(ids)} ids; "
                             "pass one of each per text")
        # Drop lloco's own keys (e.g. when re-adding retrieved Documents): the store assigns fresh ids.
        docs = [DocumentInput(doc_id, text, {k: v for k, v in (meta or {}).items() if k not in P.LLOCO_KEYS})
                for text, meta, doc_id in zip(texts, metadatas, ids, strict=True)]
        self.service.store.ingest(docs, group=self.group, collection=self.collection,
                                  encoder=self.service.lloco.encoder, batch_size=batch_size)
        return ids

    def delete(self, ids: list[str] | None = None, **kwargs: Any) -> bool | None:
        """Delete documents by the ids ``add_texts`` returned (``ids=None`` is refused: delete the group)."""
        if ids is None:
            raise InputError("delete() needs document ids; to empty the group use store.delete_group(...)")
        found = True
        for doc_id in ids:
            try:
                self.service.store.delete_document(doc_id, group=self.group, collection=self.collection)
            except NotFoundError:
                found = False
        return found

    # -- read ----------------------------------------------------------------------------------------------

    def similarity_search_with_score(self, query: str, k: int = 4, filter: Any = None,
                                     **kwargs: Any) -> list[tuple[Document, float]]:
        """Top-``k`` chunks with their scores (cosine similarity in dense mode); ``filter`` on metadata."""
        mode = kwargs.pop("mode", self.mode)
        if kwargs:
            raise InputError(f"unknown search argument(s) {sorted(kwargs)}; use k, filter, mode")
        result = self.service.retrieve(query, group=self.group, collection=self.collection, top_k=k, mode=mode,
                                       filters=filter, load_cheat_sheets=False)
        return [(d, d.metadata[P.SCORE]) for d in P.documents_from_result(result)]

    def similarity_search(self, query: str, k: int = 4, filter: Any = None, **kwargs: Any) -> list[Document]:
        return [d for d, _ in self.similarity_search_with_score(query, k, filter, **kwargs)]

    def _select_relevance_score_fn(self):
        return lambda score: (score + 1.0) / 2.0 if self.mode == "dense" else score

    @classmethod
    def from_texts(cls, texts: list[str], embedding: Embeddings | None = None,
                   metadatas: list[dict] | None = None, *, ids: list[str] | None = None,
                   service: LLoCOService | None = None, group: str | None = None, collection: str = "default",
                   **kwargs: Any) -> LLoCOVectorStore:
        """Build over ``service``/``group`` and add ``texts``. ``embedding`` must be None (see the module doc)."""
        if embedding is not None:
            raise ConfigError("LLoCOVectorStore embeds with the store's retrieval embedder (fixed per schema); "
                              "pass embedding=None, or open the CheatSheetStore with embedder=...")
        if service is None or group is None:
            raise ConfigError("LLoCOVectorStore.from_texts needs service=LLoCOService(...) and group=...")
        store = cls(service, group=group, collection=collection, **kwargs)
        store.add_texts(texts, metadatas, ids=ids)
        return store
