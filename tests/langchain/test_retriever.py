"""LLoCORetriever: Documents carrying lloco ids, per-call overrides, and LangChain's standard retriever tests."""

from __future__ import annotations

import pytest
from langchain_core.documents import Document
from langchain_tests.integration_tests import RetrieversIntegrationTests

from lloco_langchain import LLoCORetriever
from lloco_runtime.errors import InputError


def test_documents_carry_lloco_ids(lc_service):
    retriever = LLoCORetriever(service=lc_service, group="beta", k=3)
    docs = retriever.invoke("How do I reset the pump?")
    assert len(docs) == 3 and all(isinstance(d, Document) for d in docs)
    adapter = lc_service.store.list_groups()
    active = {g.name: g.active_adapter_id for g in adapter}["beta"]
    assert active is not None
    for d in docs:
        m = d.metadata
        assert isinstance(m["chunk_id"], int) and d.id == str(m["chunk_id"])
        assert m["doc_id"] in ("pump", "filter") and m["group"] == "beta" and m["collection"] == "default"
        assert m["adapter_id"] == active and isinstance(m["score"], float) and m["topic"] == "beta"
        assert d.page_content.strip()
    # The best hit for a pump question comes from the pump manual.
    assert docs[0].metadata["doc_id"] == "pump"


def test_per_call_overrides_and_filters(lc_service):
    retriever = LLoCORetriever(service=lc_service, group="alpha", k=4)
    assert len(retriever.invoke("lighthouse keeper", k=1)) == 1
    docs = retriever.invoke(
        "lighthouse", mode="dense", filters={"key": "topic", "op": "==", "value": "alpha"}
    )
    assert docs and all(d.metadata["topic"] == "alpha" for d in docs)
    with pytest.raises(InputError, match="unknown retriever argument"):
        retriever.invoke("lighthouse", top_k=2)


def test_service_is_required():
    with pytest.raises(InputError, match="LLoCOService"):
        LLoCORetriever(service=object(), group="alpha")


class TestLLoCORetrieverStandard(RetrieversIntegrationTests):
    """langchain-tests' integration suite for retrievers (constructor and call ``k``, sync and async)."""

    @pytest.fixture(autouse=True)
    def _service(self, lc_service):
        type(self)._svc = lc_service

    @property
    def retriever_constructor(self) -> type[LLoCORetriever]:
        return LLoCORetriever

    @property
    def retriever_constructor_params(self) -> dict:
        return {"service": self._svc, "group": "alpha"}

    @property
    def retriever_query_example(self) -> str:
        return "When was the lighthouse built?"
