"""Use a LlamaIndex embedding model as the store's retrieval embedder (``lloco_runtime`` Embedder)."""

from __future__ import annotations

from llama_index.core.base.embeddings.base import BaseEmbedding

from lloco_runtime.embeddings import CallableEmbedder, Embedder
from lloco_runtime.errors import InputError

_PROBE = "lloco embedding width probe"


def embedder_from_llama(embed_model: BaseEmbedding, *, name: str | None = None,
                        dim: int | None = None) -> Embedder:
    """Wrap ``embed_model`` (any llama_index ``BaseEmbedding``) as a store embedder.

    ``name`` defaults to ``llama_index/<class>/<model_name>``: the store records it with the schema and
    refuses a different embedder later. ``dim`` is probed with one embedding call when not given.
    Queries are embedded with the same text embedding as chunks (the store's protocol has one method).
    """
    if not isinstance(embed_model, BaseEmbedding):
        raise InputError(f"embed_model must be a llama_index BaseEmbedding, got {type(embed_model).__name__}")
    if name is None:
        name = f"llama_index/{embed_model.class_name()}/{embed_model.model_name}"
    if dim is None:
        dim = len(embed_model.get_text_embedding(_PROBE))
    return CallableEmbedder(embed_model.get_text_embedding_batch, name=name, dim=dim)


def resolve_embedder(embed_model: BaseEmbedding | Embedder | None) -> Embedder | None:
    """An explicit model (wrapped if needed), else ``Settings.embed_model`` if the app set one, else None
    (the store's default embedder). Never writes to ``Settings``."""
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
    raise InputError(f"embed_model must be a llama_index BaseEmbedding or a lloco Embedder, got "
                     f"{type(embed_model).__name__}")
