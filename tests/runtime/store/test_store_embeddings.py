"""Retrieval embedders: the offline MiniLM and the callable wrapper."""

from __future__ import annotations

import numpy as np
import pytest

from lloco_runtime.embeddings import CallableEmbedder, Embedder, MiniLMEmbedder, minilm_model_dir
from lloco_runtime.errors import InputError, ModelLoadError


def test_minilm_is_offline_normalised_and_semantic(embedder):
    assert isinstance(embedder.inner, Embedder) and embedder.dim == 384
    assert (minilm_model_dir() / "model.safetensors").is_file()
    v = embedder.inner.embed(
        ["A cat sits on the mat.", "A kitten is sitting on a rug.", "Stock markets fell."]
    )
    assert v.shape == (3, 384) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert v[0] @ v[1] > v[0] @ v[2] + 0.2
    assert embedder.inner.embed([]).shape == (0, 384)
    with pytest.raises(InputError):
        embedder.inner.embed("not a list")


def test_minilm_bad_dir(tmp_path):
    with pytest.raises(ModelLoadError, match="could not load"):
        MiniLMEmbedder(tmp_path).embed(["x"])


def test_callable_embedder_normalises_and_checks_shape():
    e = CallableEmbedder(lambda texts: [[3.0, 4.0] for _ in texts], name="toy", dim=2)
    np.testing.assert_allclose(e.embed(["a", "b"]), [[0.6, 0.8], [0.6, 0.8]])
    bad = CallableEmbedder(lambda texts: [[1.0, 2.0, 3.0]], name="bad", dim=2)
    with pytest.raises(ModelLoadError, match="shape"):
        bad.embed(["a"])
    with pytest.raises(InputError):
        CallableEmbedder(lambda t: t, name="huge", dim=5000)
