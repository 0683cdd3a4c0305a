"""LLoCOVectorStore: add (compress + store), search with filters, delete, as_retriever into a LLoCO chain."""

from __future__ import annotations

import pytest

from lloco_langchain import LLoCOVectorStore, create_lloco_chain
from lloco_runtime.errors import ConfigError, InputError

TEXTS = [
    "The ferry to Skerra leaves the quay at nine every morning and returns at four in the afternoon.",
    "Granite from the Skerra quarry was shipped to Glasgow for the new bank buildings in 1870.",
]


@pytest.fixture(scope="module")
def vstore(lc_service):
    store = LLoCOVectorStore.from_texts(
        TEXTS,
        metadatas=[{"kind": "ferry"}, {"kind": "quarry"}],
        ids=["ferry", "quarry"],
        service=lc_service,
        group="gamma",
    )
    yield store
    lc_service.store.delete_group("gamma")


def test_add_search_filter_delete(vstore, lc_service):
    docs = vstore.similarity_search("When does the ferry leave?", k=1)
    assert docs[0].metadata["doc_id"] == "ferry" and docs[0].metadata["group"] == "gamma"
    only = vstore.similarity_search("ferry", k=4, filter={"key": "kind", "op": "==", "value": "quarry"})
    assert only and {d.metadata["doc_id"] for d in only} == {"quarry"}
    scored = vstore.similarity_search_with_score("granite quarry", k=2)
    assert scored[0][0].metadata["doc_id"] == "quarry" and scored[0][1] >= scored[1][1]
    # A retrieved Document can be added back (lloco's ids in its metadata are dropped) and deleted by id.
    assert vstore.add_documents([docs[0]], ids=["extra"]) == ["extra"]
    assert vstore.delete(["extra"]) is True and vstore.delete(["missing"]) is False
    assert {d.doc_id for d in lc_service.store.list_documents("gamma")} == {"ferry", "quarry"}


def test_as_retriever_feeds_a_lloco_chain(vstore, lc_llm):
    chain = create_lloco_chain(vstore.as_retriever(search_kwargs={"k": 1}), lc_llm)
    out = chain.invoke({"input": "When does the ferry leave?"})
    assert out["context"][0].metadata["doc_id"] == "ferry" and out["answer"]


def test_refusals(lc_service, vstore):
    with pytest.raises(ConfigError, match="embedding=None"):
        LLoCOVectorStore.from_texts(TEXTS, embedding=object(), service=lc_service, group="gamma")
    with pytest.raises(InputError, match="delete_group"):
        vstore.delete()
