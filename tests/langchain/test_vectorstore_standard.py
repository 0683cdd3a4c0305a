"""LLoCOVectorStore under langchain-tests' VectorStoreIntegrationTests, with the store's own embedder and with
a LangChain Embeddings as the store's embedder (``embedding=``); plus the embedding checks and text rebuild."""

from __future__ import annotations

import contextlib
import uuid

import pytest
from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_tests.integration_tests import VectorStoreIntegrationTests

from lloco_langchain import ChatLLoCO, LangChainEmbedder, LLoCOVectorStore, create_lloco_chain
from lloco_runtime.errors import ConfigError, NotFoundError

FAKE = DeterministicFakeEmbedding(size=16)


@pytest.fixture(scope="module")
def lc_embedded_service(pg_url, lc_lloco):
    """The tiny runtime over a store whose retrieval embedder is a LangChain Embeddings."""
    from lloco_runtime.service import LLoCOService
    from lloco_runtime.store import CheatSheetStore

    store = CheatSheetStore(
        pg_url,
        schema="lloco_langchain_fake_emb",
        embedder=LangChainEmbedder(FAKE, name="langchain/deterministic-fake-16"),
    )
    yield LLoCOService(lc_lloco, store)
    store.drop_schema()
    store.close()


def _fresh_group(service, **kw):
    group = f"std-{uuid.uuid4().hex[:10]}"
    yield LLoCOVectorStore(service, group=group, **kw)
    with contextlib.suppress(NotFoundError):  # never created
        service.store.delete_group(group)


class TestLLoCOVectorStoreStandard(VectorStoreIntegrationTests):
    """The store's own embedder, plain Documents (``lloco_metadata=False``: the suite compares metadata)."""

    @pytest.fixture()
    def vectorstore(self, lc_service):
        yield from _fresh_group(lc_service, lloco_metadata=False)


class TestLLoCOVectorStoreLangChainEmbeddings(VectorStoreIntegrationTests):
    """A LangChain Embeddings indexes the chunks and embeds the queries (``embedding=``)."""

    @pytest.fixture()
    def vectorstore(self, lc_embedded_service):
        yield from _fresh_group(lc_embedded_service, embedding=FAKE, lloco_metadata=False)


def test_embedding_must_be_the_stores(lc_service, lc_embedded_service):
    with pytest.raises(ConfigError, match="LangChainEmbedder"):
        LLoCOVectorStore(lc_service, group="g", embedding=FAKE)
    with pytest.raises(ConfigError, match="same embedding object"):
        LLoCOVectorStore(lc_embedded_service, group="g", embedding=DeterministicFakeEmbedding(size=16))
    assert LLoCOVectorStore(lc_embedded_service, group="g", embedding=FAKE).embeddings is FAKE
    assert LLoCOVectorStore(lc_service, group="g").embeddings is None


def test_lloco_metadata_feeds_a_chain_and_long_texts_come_back_whole(lc_embedded_service):
    text = " ".join(
        f"Sentence {i} says the harbour light was painted red in year {1900 + i}." for i in range(30)
    )
    for store in _fresh_group(lc_embedded_service, embedding=FAKE):
        store.add_texts(
            [text, "The quay has a ferry."], [{"kind": "long"}, {"kind": "short"}], ids=["long", "q"]
        )
        assert lc_embedded_service.store.get_document("long", group=store.group).n_chunks > 1
        (doc,) = store.get_by_ids(["long"])
        assert doc.page_content == text and doc.metadata == {"kind": "long"} and doc.id == "long"
        hits = store.similarity_search("The quay has a ferry.", k=1)
        assert hits[0].id == "q" and hits[0].metadata["chunk_id"] and hits[0].metadata["kind"] == "short"
        chat = ChatLLoCO(service=lc_embedded_service, max_new_tokens=4)
        out = create_lloco_chain(store.as_retriever(search_kwargs={"k": 1}), chat).invoke(
            {"input": "The quay has a ferry."}
        )
        assert out["context"][0].id == "q" and out["answer"]
        # the same retriever straight into the chat model
        reply = ChatLLoCO(
            service=lc_embedded_service,
            retriever=store.as_retriever(search_kwargs={"k": 1}),
            max_new_tokens=4,
        ).invoke("The quay has a ferry.")
        assert reply.response_metadata["chunk_ids"] == [hits[0].metadata["chunk_id"]] and reply.content
