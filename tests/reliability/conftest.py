"""Fixtures for the reliability suite (bad input, properties, crash safety, concurrency, injection, loading).

Everything runs against real components: the session's embedded Postgres (``pg_url``), tiny random Llama
models built in milliseconds (``tiny_model_dir``, ``make_tiny_host``), and a deterministic hashing embedder
(instant, so the tests measure lloco and not MiniLM). Each test works in a schema of its own.
"""

from __future__ import annotations

import pytest
from reliability_helpers import docs, new_schema, open_store


@pytest.fixture
def schema() -> str:
    return new_schema()


@pytest.fixture
def store(pg_url, schema):
    s = open_store(pg_url, schema)
    yield s
    s.drop_schema()
    s.close()


@pytest.fixture
def filled(store, tiny_encoder):
    """The store with the three texts ingested into default/g by the session's tiny encoder."""
    store.ingest(docs(), group="g", encoder=tiny_encoder)
    return store


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slow: a reliability test that runs subprocesses or servers (CI runs them)"
    )
