"""LlamaIndex embeddings <-> the store's retrieval embedder (``lloco_runtime`` Embedder), both ways.

:class:`LLoCOEmbedding` is a LlamaIndex ``BaseEmbedding`` over a store's own retrieval embedder (the
bundled all-MiniLM-L6-v2 by default), so a ``VectorStoreIndex`` embeds queries with the model that made the
stored keys. :func:`embedder_from_llama` goes the other way: any ``BaseEmbedding`` as a store embedder.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from llama_index.core.base.embeddings.base import BaseEmbedding, Embedding
from llama_index.core.bridge.pydantic import Field, PrivateAttr

from lloco_runtime import CallableEmbedder, Embedder, InputError, as_matrix, default_embedder
from lloco_runtime.store import CheatSheetStore

_PROBE = "lloco embedding width probe"


class _Issued:
    """Which embedder made a query vector: a bounded map digest(float32 vector) -> embedder name.

    :class:`LLoCOEmbedding` records every query vector it returns, so :class:`~lloco_index.LLoCOVectorStore`
    can use such a vector as it is; a vector nobody recorded is checked against the store's own embedding
    of the query text (one more embedding call) before it is scored.
    """

    def __init__(self, maxsize: int = 4096) -> None:
        self._names: OrderedDict[bytes, str] = OrderedDict()
        self._maxsize = maxsize
        self._lock = threading.Lock()

    @staticmethod
    def _key(vector: Sequence[float] | np.ndarray) -> bytes:
        return hashlib.blake2b(np.asarray(vector, dtype=np.float32).tobytes(), digest_size=16).digest()

    def record(self, name: str, vector: Sequence[float] | np.ndarray) -> None:
        key = self._key(vector)
        with self._lock:
            self._names[key] = name
            self._names.move_to_end(key)
            while len(self._names) > self._maxsize:
                self._names.popitem(last=False)

    def maker(self, vector: Sequence[float] | np.ndarray) -> str | None:
        """The name of the embedder an :class:`LLoCOEmbedding` made ``vector`` with, or None."""
        with self._lock:
            return self._names.get(self._key(vector))


ISSUED = _Issued()


class LLoCOEmbedding(BaseEmbedding):
    """A store's retrieval embedder as a LlamaIndex embedding model (no network, no API key).

    ``LLoCOEmbedding()`` is the bundled all-MiniLM-L6-v2 (the default store's embedder);
    ``LLoCOEmbedding(store)`` is ``store.embedder``, whatever it is; ``LLoCOEmbedding(embedder)`` wraps a
    lloco ``Embedder``. Queries and texts are embedded alike (the store's protocol has one method), in
    batches of ``embed_batch_size``; the async methods run on a worker thread, off the event loop.
    ``LLoCOVectorStore.embed_model`` is one for the vector store's own store:

        index = VectorStoreIndex.from_vector_store(vs, embed_model=vs.embed_model)
    """

    dim: int = Field(default=0, description="vector width of the embedder")
    embed_batch_size: int = Field(default=32, gt=0, le=2048, description="texts per embedder call")

    _embedder: Embedder = PrivateAttr()

    def __init__(self, embedder: Embedder | CheatSheetStore | None = None, **kwargs: Any) -> None:
        if isinstance(embedder, CheatSheetStore):
            embedder = embedder.embedder
        elif embedder is None:
            embedder = default_embedder()
        elif isinstance(embedder, LLoCOEmbedding):
            embedder = embedder.embedder
        if isinstance(embedder, BaseEmbedding) or not isinstance(embedder, Embedder):
            raise InputError(
                f"LLoCOEmbedding wraps a CheatSheetStore or a lloco Embedder (name, dim, embed), got "
                f"{type(embedder).__name__}; a llama_index model is used as it is, or made a store "
                "embedder with embedder_from_llama"
            )
        # model_name/dim are the embedder's; given (e.g. by from_dict), they must agree with it
        for key, value in (("model_name", embedder.name), ("dim", int(embedder.dim))):
            if kwargs.setdefault(key, value) != value:
                raise InputError(
                    f"LLoCOEmbedding {key}={kwargs[key]!r} does not match its embedder ({value!r}); "
                    "build it over the store instead: LLoCOEmbedding(store)"
                )
        super().__init__(**kwargs)
        self._embedder = embedder

    @classmethod
    def class_name(cls) -> str:
        return "LLoCOEmbedding"

    @property
    def embedder(self) -> Embedder:
        """The lloco ``Embedder`` this model calls (its ``name`` is what stores record)."""
        return self._embedder

    # -- embedding ---------------------------------------------------------------------------------------

    def _embed(self, texts: list[str]) -> list[Embedding]:
        if not texts:
            return []
        emb = self._embedder
        return as_matrix(emb.embed(list(texts)), len(texts), emb.dim, emb.name).tolist()

    def _get_query_embedding(self, query: str) -> Embedding:
        return self._embed([query])[0]

    def _get_text_embedding(self, text: str) -> Embedding:
        return self._embed([text])[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return self._embed(texts)

    async def _aget_query_embedding(self, query: str) -> Embedding:
        return (await asyncio.to_thread(self._embed, [query]))[0]

    async def _aget_text_embedding(self, text: str) -> Embedding:
        return (await asyncio.to_thread(self._embed, [text]))[0]

    async def _aget_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return await asyncio.to_thread(self._embed, texts)

    # -- query vectors are recorded as this embedder's (LLoCOVectorStore then trusts them) ----------------

    def _issued(self, vector: Embedding) -> Embedding:
        ISSUED.record(self._embedder.name, vector)
        return vector

    def get_query_embedding(self, query: str) -> Embedding:
        return self._issued(super().get_query_embedding(query))

    async def aget_query_embedding(self, query: str) -> Embedding:
        return self._issued(await super().aget_query_embedding(query))

    def get_agg_embedding_from_queries(
        self, queries: list[str], agg_fn: Callable[..., Embedding] | None = None
    ) -> Embedding:
        return self._issued(super().get_agg_embedding_from_queries(queries, agg_fn))

    async def aget_agg_embedding_from_queries(
        self, queries: list[str], agg_fn: Callable[..., Embedding] | None = None
    ) -> Embedding:
        return self._issued(await super().aget_agg_embedding_from_queries(queries, agg_fn))


def embedder_from_llama(
    embed_model: BaseEmbedding, *, name: str | None = None, dim: int | None = None
) -> Embedder:
    """Wrap ``embed_model`` (any llama_index ``BaseEmbedding``) as a store embedder.

    ``name`` defaults to ``llama_index/<class>/<model_name>``: the store records it with the schema and
    refuses a different embedder later. ``dim`` is probed with one embedding call when not given.
    Queries are embedded with the same text embedding as chunks (the store's protocol has one method).
    An :class:`LLoCOEmbedding` (with neither ``name`` nor ``dim``) gives back the embedder it wraps.
    """
    if not isinstance(embed_model, BaseEmbedding):
        raise InputError(f"embed_model must be a llama_index BaseEmbedding, got {type(embed_model).__name__}")
    if isinstance(embed_model, LLoCOEmbedding) and name is None and dim is None:
        return embed_model.embedder
    if name is None:
        name = f"llama_index/{embed_model.class_name()}/{embed_model.model_name}"
    if dim is None:
        dim = len(embed_model.get_text_embedding(_PROBE))
    return CallableEmbedder(embed_model.get_text_embedding_batch, name=name, dim=dim)


def resolve_embedder(embed_model: BaseEmbedding | Embedder | None) -> Embedder | None:
    """An explicit model (wrapped if needed; an :class:`LLoCOEmbedding` gives back its embedder), else
    ``Settings.embed_model`` if the app set one, else None (the store's default embedder). Never writes to
    ``Settings``."""
    if embed_model is None:
        from llama_index.core import Settings

        # Read the private slot: the public property would build OpenAI's default model when none is set.
        embed_model = getattr(Settings, "_embed_model", None)
        if embed_model is None:
            return None
    if isinstance(embed_model, BaseEmbedding):
        return embedder_from_llama(embed_model)
    if isinstance(embed_model, Embedder):
        return embed_model
    raise InputError(
        f"embed_model must be a llama_index BaseEmbedding or a lloco Embedder, got "
        f"{type(embed_model).__name__}"
    )
