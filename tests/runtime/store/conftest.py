"""Fixtures for the store tests: ONE embedded Postgres per session, a fresh schema per test.

The real retrieval embedder (all-MiniLM-L6-v2) and the real ``ContextEncoder`` on the session's tiny random
Llama (``tiny_encoder`` from tests/conftest.py) are used throughout; test doubles only wrap the encoder to
make it fail on purpose.
"""

from __future__ import annotations

import uuid

import pytest

from store_helpers import DOCS


@pytest.fixture(scope="session")
def pg_url(tmp_path_factory) -> str:
    """URL of the session's embedded Postgres (its own data dir; stopped at the end of the session)."""
    from lloco_runtime.store.server import start_embedded

    return start_embedded(tmp_path_factory.mktemp("pg") / "data")


@pytest.fixture(scope="session")
def embedder():
    from lloco_runtime.embeddings import MiniLMEmbedder

    return MiniLMEmbedder()


@pytest.fixture(scope="session")
def encoder(tiny_encoder):
    """The real ContextEncoder (tiny random Llama, 32-token segments, 4 summary vectors)."""
    return tiny_encoder


@pytest.fixture
def schema() -> str:
    return "t_" + uuid.uuid4().hex[:10]


@pytest.fixture
def store(pg_url, schema, embedder):
    """A store in a fresh schema, dropped afterwards."""
    from lloco_runtime.store import CheatSheetStore

    s = CheatSheetStore(pg_url, schema=schema, embedder=embedder)
    yield s
    s.drop_schema()
    s.close()


@pytest.fixture
def docs():
    from lloco_runtime.store import DocumentInput

    return [DocumentInput(doc_id=k, text=v, metadata={"topic": k, "year": 2000 + i, "tags": [k[:3], "all"]})
            for i, (k, v) in enumerate(DOCS.items())]


@pytest.fixture
def filled(store, docs, encoder):
    """The store with the three topical documents ingested into default/g."""
    store.ingest(docs, group="g", encoder=encoder)
    return store
