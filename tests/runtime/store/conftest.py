"""Fixtures for the store tests: a fresh schema per test on the session's embedded Postgres (``pg_url``
from tests/conftest.py).

The real retrieval embedder (all-MiniLM-L6-v2) and the real ``ContextEncoder`` on the session's tiny random
Llama (``tiny_encoder`` from tests/conftest.py) are used throughout; test doubles only wrap the encoder to
make it fail on purpose.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
from store_helpers import DOCS, new_schema, open_store


@pytest.fixture
def second_server():
    """A second, separate embedded Postgres for one test (its own data dir, removed afterwards): its URL."""
    from lloco_runtime.store.server import start_embedded, stop_embedded

    root = Path(tempfile.mkdtemp(prefix="lloco-pg2-"))  # short path: the Unix socket lives in it
    yield start_embedded(root / "data")
    stop_embedded(root / "data")
    shutil.rmtree(root, ignore_errors=True)


class MemoEmbedder:
    """The real MiniLM embedder, memoised per text: tests embed the same chunks many times."""

    def __init__(self, inner) -> None:
        self.inner, self.name, self.dim = inner, inner.name, inner.dim
        self.memo: dict[str, object] = {}

    def embed(self, texts):
        import numpy as np

        missing = [t for t in dict.fromkeys(texts) if t not in self.memo]
        if missing:
            self.memo.update(zip(missing, self.inner.embed(missing)))
        return np.stack([self.memo[t] for t in texts]) if texts else self.inner.embed([])


@pytest.fixture(scope="session")
def embedder():
    from lloco_runtime.embeddings import MiniLMEmbedder

    return MemoEmbedder(MiniLMEmbedder())


@pytest.fixture(scope="session")
def encoder(tiny_encoder):
    """The real ContextEncoder (tiny random Llama, 32-token segments, 4 summary vectors)."""
    return tiny_encoder


@pytest.fixture
def schema() -> str:
    return new_schema()


@pytest.fixture
def store(pg_url, schema, embedder):
    """A store in a fresh schema, dropped afterwards."""
    s = open_store(pg_url, schema, embedder)
    yield s
    s.drop_schema()
    s.close()


def make_docs():
    from lloco_runtime.store import DocumentInput

    return [
        DocumentInput(doc_id=k, text=v, metadata={"topic": k, "year": 2000 + i, "tags": [k[:3], "all"]})
        for i, (k, v) in enumerate(DOCS.items())
    ]


@pytest.fixture
def docs():
    return make_docs()


@pytest.fixture
def filled(store, docs, encoder):
    """The store with the three topical documents ingested into default/g (private to the test)."""
    store.ingest(docs, group="g", encoder=encoder)
    return store


@pytest.fixture(scope="module")
def shared_filled(pg_url, embedder, encoder):
    """Like ``filled`` but shared by a module's tests: READ-ONLY by convention."""
    s = open_store(pg_url, new_schema(), embedder)
    s.ingest(make_docs(), group="g", encoder=encoder)
    yield s
    s.drop_schema()
    s.close()
