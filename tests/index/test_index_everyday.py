"""LlamaIndex's everyday patterns from a fresh store with the default (MiniLM) embedder, Settings at defaults.

Issue #20: ``VectorStoreIndex.from_vector_store`` must not reach for OpenAI; ``LLoCOEmbedding`` embeds
queries with the store's own model; a query embedder that does not match the stored keys is refused.
Every test runs with LlamaIndex's ``Settings`` reset to their defaults and restored afterwards, and with
connections to anything but the local database refused.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.util
import socket
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from llama_index.core import Settings, VectorStoreIndex
from llama_index.core.base.response.schema import Response

from lloco_index import (
    LLoCOEmbedding,
    LLoCOLLM,
    LLoCONodeParser,
    LLoCOQueryEngine,
    LLoCOVectorStore,
    embedder_from_llama,
    keys,
    resolve_embedder,
)
from lloco_runtime.embeddings import CallableEmbedder, MiniLMEmbedder
from lloco_runtime.errors import ConfigError, InputError

SCHEMA = "lloco_index_everyday"
GROUP = "u"
QUESTION = "Who was the first keeper of the lighthouse?"
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "llamaindex_vector_store_index.py"


@pytest.fixture(autouse=True)
def settings_at_defaults():
    """LlamaIndex's global Settings at their defaults for the test, restored afterwards."""
    saved = {f.name: getattr(Settings, f.name) for f in dataclasses.fields(Settings)}
    for name in saved:
        setattr(Settings, name, None)
    yield
    for name, value in saved.items():
        setattr(Settings, name, value)


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """Refuse every connection except Unix sockets and loopback (the embedded Postgres)."""
    real_connect, real_getaddrinfo = socket.socket.connect, socket.getaddrinfo
    local = {"localhost", "127.0.0.1", "::1", None}

    def connect(sock, address):
        if sock.family != socket.AF_UNIX and address[0] not in local:
            raise OSError(f"network access in a test: {address!r}")
        return real_connect(sock, address)

    def getaddrinfo(host, *args, **kwargs):
        if host not in local and host != b"localhost":
            raise OSError(f"name lookup in a test: {host!r}")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


@pytest.fixture(scope="module")
def fresh_store(pg_url):
    """A new schema with the store's default retrieval embedder (the bundled all-MiniLM-L6-v2)."""
    from lloco_runtime.store import CheatSheetStore

    store = CheatSheetStore(pg_url, schema=SCHEMA)
    yield store
    store.drop_schema()
    store.close()


@pytest.fixture(scope="module")
def store(fresh_store, index_lloco, make_docs):
    """The three test documents ingested into group ``u`` of the fresh store."""
    parser = LLoCONodeParser.from_components(index_lloco.encoder, fresh_store, group=GROUP)
    parser.get_nodes_from_documents(make_docs())
    return fresh_store


@pytest.fixture
def llm(index_lloco, store):
    return LLoCOLLM(index_lloco, store=store, max_new_tokens=6)


@pytest.fixture
def count_embeds(store, monkeypatch):
    """Counts calls of the store's embedder (``calls`` list of batch sizes)."""
    calls: list[int] = []
    real = store.embedder.embed

    def embed(texts):
        calls.append(len(texts))
        return real(texts)

    monkeypatch.setattr(store.embedder, "embed", embed)
    return calls


def assert_settings_untouched():
    assert Settings._embed_model is None and Settings._llm is None


def hash_embedder(dim: int, name: str) -> CallableEmbedder:
    """A lloco Embedder of another model (seeded random projection of character counts)."""
    proj = np.random.default_rng(dim).standard_normal((256, dim)).astype(np.float32)

    def fn(texts):
        counts = np.zeros((len(texts), 256), dtype=np.float32)
        for i, t in enumerate(texts):
            for b in t.encode():
                counts[i, b] += 1
        return counts @ proj

    return CallableEmbedder(fn, name=name, dim=dim)


# -- LLoCOEmbedding ---------------------------------------------------------------------------------------


def test_embedding_is_the_stores_embedder_sync_async_batched(store):
    emb = LLoCOEmbedding()  # the bundled MiniLM, as the default store's embedder
    assert isinstance(emb.embedder, MiniLMEmbedder) and emb.model_name == store.embedder.name
    assert emb.dim == 384 == store.embedder.dim
    assert LLoCOEmbedding(store).embedder is store.embedder
    assert LLoCOVectorStore(store, group=GROUP).embed_model.embedder is store.embedder
    # handing it back to lloco gives the same embedder (same name: the store's schema accepts it)
    assert resolve_embedder(emb) is emb.embedder and embedder_from_llama(emb) is emb.embedder

    texts = ["the lighthouse keeper", "cardamom buns", "ferry tickets", "a white tower", "rye bread"]
    want = store.embedder.embed(texts)
    q = emb.get_query_embedding(texts[0])
    np.testing.assert_allclose(q, want[0], atol=1e-5)
    np.testing.assert_allclose(emb.get_text_embedding(texts[1]), want[1], atol=1e-5)
    np.testing.assert_allclose(emb.get_text_embedding_batch(texts), want, atol=1e-5)
    np.testing.assert_allclose(asyncio.run(emb.aget_query_embedding(texts[0])), want[0], atol=1e-5)
    np.testing.assert_allclose(asyncio.run(emb.aget_text_embedding_batch(texts)), want, atol=1e-5)


def test_embedding_batches_and_runs_async_off_the_event_loop():
    calls: list[tuple[int, int]] = []

    def fn(texts):
        calls.append((len(texts), threading.get_ident()))
        return [[float(len(t)), 1.0] for t in texts]

    emb = LLoCOEmbedding(CallableEmbedder(fn, name="lengths", dim=2), embed_batch_size=2)
    assert emb.model_name == "lengths" and emb.dim == 2
    with pytest.raises(
        InputError, match="does not match its embedder"
    ):  # e.g. from_dict without the embedder
        LLoCOEmbedding.from_dict(emb.to_dict())
    assert LLoCOEmbedding.from_dict(LLoCOEmbedding().to_dict()).embedder.name == MiniLMEmbedder.name
    out = emb.get_text_embedding_batch(["a", "bb", "ccc", "dddd", "eeeee"])
    assert [n for n, _ in calls] == [2, 2, 1] and len(out) == 5
    assert abs(np.linalg.norm(out[2]) - 1) < 1e-6  # unit vectors, as stored

    async def run():
        calls.clear()
        loop_thread = threading.get_ident()
        await emb.aget_query_embedding("q")
        await emb.aget_text_embedding_batch(["a", "bb", "ccc"])
        return loop_thread

    loop_thread = asyncio.run(run())
    assert [n for n, _ in calls] == [1, 2, 1]
    assert all(t != loop_thread for _, t in calls)


# -- the everyday patterns ----------------------------------------------------------------------------------


def test_from_vector_store_then_generic_query_engine_answers_with_sources(store, llm):
    """The issue's snippet with the documented one-liner, then ``index.as_query_engine(llm=LLoCOLLM(...))``."""
    vs = LLoCOVectorStore(store, group=GROUP)
    index = VectorStoreIndex.from_vector_store(vs, embed_model=vs.embed_model)
    resp = index.as_query_engine(llm=llm).query(QUESTION)
    # the generic engine reads the chunks as text (its synthesizer cannot pass cheat sheets) and still answers
    assert isinstance(resp, Response) and isinstance(resp.response, str) and resp.response
    assert resp.source_nodes and resp.source_nodes[0].node.metadata[keys.DOC_ID] == "lighthouse"
    assert all(keys.CHUNK_ID in n.node.metadata for n in resp.source_nodes)
    assert_settings_untouched()


def test_settings_one_liner_makes_the_bare_snippet_work(store, llm, index_lloco):
    """An app that sets ``Settings.embed_model = LLoCOEmbedding(store)`` once can use the snippet as written."""
    Settings.embed_model = LLoCOEmbedding(store)  # app code (restored by the fixture); lloco never does this
    index = VectorStoreIndex.from_vector_store(LLoCOVectorStore(store, group=GROUP))
    resp = index.as_query_engine(llm=llm).query(QUESTION)
    assert resp.response and resp.source_nodes[0].node.metadata[keys.DOC_ID] == "lighthouse"
    # lloco's own defaults read it back as the store's embedder (not a wrapper with another name)
    qe = LLoCOQueryEngine.from_defaults(group=GROUP, lloco=index_lloco, store=store, top_k=1)
    assert qe.retriever.store.embedder.name == "sentence-transformers/all-MiniLM-L6-v2"
    assert resolve_embedder(None) is store.embedder


def test_as_retriever_feeds_the_cheat_sheet_engine_sync_and_async(store, llm, count_embeds):
    vs = LLoCOVectorStore(store, group=GROUP)
    index = VectorStoreIndex.from_vector_store(vs, embed_model=vs.embed_model)
    retriever = index.as_retriever(similarity_top_k=2)
    nodes = retriever.retrieve(QUESTION)
    assert len(nodes) == 2 and nodes[0].node.metadata[keys.DOC_ID] == "lighthouse"
    assert count_embeds == [1]  # the index embedded the query once; the store used that vector as it is
    engine = LLoCOQueryEngine(retriever=retriever, llm=llm)
    resp = engine.query(QUESTION)
    assert resp.metadata["cheat_sheets"] == 2 and resp.metadata["context_vectors"] == 2 * 4
    assert [n.node.node_id for n in resp.source_nodes] == [n.node.node_id for n in nodes]
    aresp = asyncio.run(engine.aquery(QUESTION))
    assert aresp.response == resp.response
    assert [n.score for n in aresp.source_nodes] == pytest.approx([n.score for n in nodes], abs=1e-5)
    hybrid = index.as_retriever(similarity_top_k=2, vector_store_query_mode="hybrid").retrieve(
        "cardamom buns"
    )
    assert hybrid[0].node.metadata[keys.DOC_ID] == "bakery"
    assert_settings_untouched()


def test_example_script_runs_from_a_fresh_store(pg_url, index_lloco, capsys):
    from llama_index.core.schema import Document

    from lloco_runtime.store import CheatSheetStore

    spec = importlib.util.spec_from_file_location("example_llamaindex_vector_store_index", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = example
    spec.loader.exec_module(example)
    text = (EXAMPLE.parent / "data" / "lighthouse.txt").read_text(encoding="utf-8")[:1500]
    with CheatSheetStore(pg_url, schema="lloco_index_example") as store:
        try:
            out = example.run(
                index_lloco,
                store,
                [Document(id_="lighthouse", text=text)],
                questions=["Who was the keeper?"],
                top_k=2,
                max_new_tokens=4,
            )
        finally:
            store.drop_schema()
    assert len(out) == 1 and out[0]["cheat_sheets"].metadata["cheat_sheets"] == 2
    assert out[0]["text"].source_nodes and isinstance(out[0]["text"].response, str)
    printed = capsys.readouterr().out
    assert "LLoCOQueryEngine (cheat sheets)" in printed and "index.as_query_engine (text)" in printed
    assert_settings_untouched()


# -- mismatched query embedders are refused -----------------------------------------------------------------


def test_another_dimension_is_refused(store, hash_embed):
    index = VectorStoreIndex.from_vector_store(LLoCOVectorStore(store, group=GROUP), embed_model=hash_embed)
    with pytest.raises(ConfigError, match=r"64 dims .* 384-dim embeddings of 'sentence-transformers") as err:
        index.as_retriever().retrieve(QUESTION)
    assert "embed_model=vector_store.embed_model" in str(err.value)
    with pytest.raises(ConfigError, match="64 dims"):
        asyncio.run(index.as_retriever().aretrieve(QUESTION))


def test_another_model_of_the_same_dimension_is_refused(store, hash_embed, count_embeds):
    foreign = type(hash_embed)(dim=384, model_name="hash-384")  # a llama_index model lloco knows nothing of
    index = VectorStoreIndex.from_vector_store(LLoCOVectorStore(store, group=GROUP), embed_model=foreign)
    with pytest.raises(ConfigError, match="was not made by 'sentence-transformers/all-MiniLM-L6-v2'"):
        index.as_retriever().retrieve(QUESTION)
    # an LLoCOEmbedding over another embedder: refused by name, without embedding the query again
    count_embeds.clear()
    other = LLoCOEmbedding(hash_embedder(384, "hash-proj-384"))
    index = VectorStoreIndex.from_vector_store(LLoCOVectorStore(store, group=GROUP), embed_model=other)
    with pytest.raises(
        ConfigError, match="embedded by 'hash-proj-384' but default/u is keyed by embeddings of"
    ):
        index.as_retriever().retrieve(QUESTION)
    assert count_embeds == []
    # Settings.embed_model set by the app for other indexes: the same refusal, not a silent mis-scoring
    Settings.embed_model = foreign
    with pytest.raises(ConfigError, match="was not made by"):
        VectorStoreIndex.from_vector_store(LLoCOVectorStore(store, group=GROUP)).as_retriever().retrieve(
            QUESTION
        )


def test_store_opened_with_another_llama_embedding_is_refused(pg_url, store):
    from lloco_runtime.store import CheatSheetStore

    other = LLoCOEmbedding(hash_embedder(384, "hash-proj-384"))
    with pytest.raises(ConfigError, match="indexes embeddings of 'sentence-transformers/all-MiniLM-L6-v2'"):
        CheatSheetStore(pg_url, schema=SCHEMA, embedder=resolve_embedder(other))
