"""Fixtures for the LlamaIndex integration: a private tiny LLoCO, a hashing embed model, the embedded store.

The store runs on the session's embedded Postgres (``pg_url`` from ``tests/conftest.py``), in a schema of
its own, with a llama_index ``BaseEmbedding`` as retrieval embedder (so the wrapping is tested too). Models
are tiny: a forward pass takes milliseconds.
"""

from __future__ import annotations

import re
import zlib

import numpy as np
import pytest
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.schema import Document

SCHEMA = "lloco_index_test"
GROUP = "lighthouses"

DOCS = {
    "lighthouse": (
        (
            "The old lighthouse on Gull Rock was built in 1872 by the harbour board. Its first keeper was "
            "Martha Quill, who kept the lamp burning for forty years and logged every storm in a green "
            "notebook. The tower is white with a red lantern room and stands thirty metres tall."
        ),
        {"topic": "history", "year": 1872, "tags": ["coast", "tower"]},
    ),
    "bakery": (
        (
            "The bakery on Mill Street opens at six in the morning. Its rye bread is baked in a wood oven, "
            "and on Fridays the baker sells cardamom buns to the fishermen before they sail out of the harbour."
        ),
        {"topic": "food", "year": 1990, "tags": ["bread"]},
    ),
    "ferry": (
        (
            "The ferry to the island leaves twice a day in summer and once a day in winter. Tickets are sold "
            "on board; bicycles travel free, but cars must be booked a week ahead."
        ),
        {"topic": "travel", "year": 2005, "tags": ["coast", "boat"]},
    ),
}


class HashEmbedding(BaseEmbedding):
    """Deterministic bag-of-words hashing embedding (64 dims): similar words, similar vectors."""

    dim: int = 64

    @classmethod
    def class_name(cls) -> str:
        return "HashEmbedding"

    def _vec(self, text: str) -> list[float]:
        v = np.zeros(self.dim, dtype=np.float32)
        for w in re.findall(r"[a-z0-9]+", text.lower()):
            v[zlib.crc32(w.encode()) % self.dim] += 1.0
        v[0] += 1e-3
        return (v / np.linalg.norm(v)).tolist()

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._vec(query)

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._vec(query)

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._vec(text)


def make_documents() -> list[Document]:
    return [Document(id_=k, text=t, metadata=m) for k, (t, m) in DOCS.items()]


@pytest.fixture
def documents() -> list[Document]:
    """Fresh llama_index Documents for the three test texts (ids ``lighthouse``, ``bakery``, ``ferry``)."""
    return make_documents()


@pytest.fixture(scope="session")
def make_docs():
    """``make_docs()`` -> fresh Documents of the three test texts (for fixtures wider than one test)."""
    return make_documents


@pytest.fixture(scope="session")
def hash_embed() -> HashEmbedding:
    return HashEmbedding(model_name="hash-64")


@pytest.fixture(scope="session")
def index_lloco(tiny_model_dir):
    """A private tiny LLoCO (own host: adapters may be injected) with a 32-token / 4-vector encoder."""
    from lloco_runtime import ContextEncoder, EncoderConfig, LLoCO, load_model

    host = load_model(tiny_model_dir, device="cpu", dtype="float32")
    return LLoCO(host, ContextEncoder(host, EncoderConfig(segment_length=32, summary_length=4)))


@pytest.fixture(scope="session")
def index_store(pg_url, hash_embed):
    """The store in schema ``lloco_index_test`` with the hashing embed model as retrieval embedder."""
    from lloco_index import embedder_from_llama
    from lloco_runtime.store import CheatSheetStore

    store = CheatSheetStore(pg_url, schema=SCHEMA, embedder=embedder_from_llama(hash_embed))
    yield store
    store.drop_schema()
    store.close()


@pytest.fixture(scope="session")
def ingested(index_lloco, index_store):
    """The three documents ingested into group ``lighthouses``; returns the parsed nodes."""
    from lloco_index import LLoCONodeParser

    parser = LLoCONodeParser.from_components(index_lloco.encoder, index_store, group=GROUP)
    return parser.get_nodes_from_documents(make_documents())
