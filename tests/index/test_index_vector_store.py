"""LLoCOVectorStore under real llama_index classes (VectorStoreIndex, retrievers, filters)."""

from __future__ import annotations

import asyncio

import pytest
from llama_index.core import StorageContext, VectorStoreIndex
from llama_index.core.schema import TextNode
from llama_index.core.vector_stores.types import (
    FilterCondition,
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
    VectorStoreQuery,
    VectorStoreQueryMode,
)

from lloco_index import LLoCONodeParser, LLoCOVectorStore, keys, to_store_filter
from lloco_runtime.errors import CheatSheetError, InputError, NotFoundError
from lloco_runtime.store import FilterGroup
from lloco_runtime.store import MetadataFilter as StoreFilter

GROUP = "lighthouses"


def F(key, value, op=FilterOperator.EQ):
    return MetadataFilter(key=key, value=value, operator=op)


def test_filter_translation_nested_and_or():
    flt = MetadataFilters(filters=[
        F("topic", "history"),
        MetadataFilters(filters=[F("year", 2000, FilterOperator.GT), F("tags", ["boat", "x"], FilterOperator.ANY)],
                        condition=FilterCondition.OR),
    ], condition=FilterCondition.AND)
    out = to_store_filter(flt)
    assert out == FilterGroup([StoreFilter("topic", "==", "history"), FilterGroup([
        StoreFilter("year", ">", 2000),
        FilterGroup([StoreFilter("tags", "contains", "boat"), StoreFilter("tags", "contains", "x")], "or"),
    ], "or")], "and")
    assert to_store_filter(MetadataFilters(filters=[])) is None
    assert to_store_filter(MetadataFilters(filters=[F("t", "Ab", FilterOperator.TEXT_MATCH_INSENSITIVE)])) == \
        StoreFilter("t", "text_match", "Ab")
    with pytest.raises(InputError, match="not supported"):
        to_store_filter(MetadataFilters(filters=[F("t", None, FilterOperator.IS_EMPTY)]))
    with pytest.raises(InputError, match="not supported"):
        to_store_filter(MetadataFilters(filters=[F("t", 1)], condition=FilterCondition.NOT))
    with pytest.raises(InputError, match="invalid metadata key"):
        to_store_filter(MetadataFilters(filters=[F("a') OR 1=1 --", 1)]))


@pytest.fixture(scope="module")
def vstore(ingested, index_store):
    return LLoCOVectorStore(index_store, group=GROUP)


def test_vector_store_index_retrieval_with_filters(vstore, hash_embed):
    index = VectorStoreIndex.from_vector_store(vstore, embed_model=hash_embed)
    nodes = index.as_retriever(similarity_top_k=2).retrieve("Who was the keeper of the lighthouse?")
    assert len(nodes) == 2 and nodes[0].node.metadata[keys.DOC_ID] == "lighthouse"
    assert all(isinstance(n.score, float) for n in nodes)
    assert keys.CHUNK_ID in nodes[0].node.excluded_llm_metadata_keys
    # nested and/or filters: (topic == travel) or (year < 1900 and tags contains coast)
    flt = MetadataFilters(filters=[
        F("topic", "travel"),
        MetadataFilters(filters=[F("year", 1900, FilterOperator.LT), F("tags", "coast", FilterOperator.CONTAINS)]),
    ], condition=FilterCondition.OR)
    got = index.as_retriever(similarity_top_k=50, filters=flt).retrieve("lighthouse ferry bread")
    assert {n.node.metadata[keys.DOC_ID] for n in got} == {"lighthouse", "ferry"}
    got = index.as_retriever(similarity_top_k=50, filters=MetadataFilters(
        filters=[F("topic", ["food"], FilterOperator.IN)])).retrieve("bread oven baker")
    assert {n.node.metadata[keys.DOC_ID] for n in got} == {"bakery"}
    # hybrid and text-search modes
    for mode in (VectorStoreQueryMode.HYBRID, VectorStoreQueryMode.TEXT_SEARCH):
        got = index.as_retriever(similarity_top_k=3, vector_store_query_mode=mode).retrieve("cardamom buns")
        assert got and got[0].node.metadata[keys.DOC_ID] == "bakery"


def test_async_query_and_get_nodes(vstore):
    q = VectorStoreQuery(query_str="ferry tickets bicycles", similarity_top_k=1)
    res = asyncio.run(vstore.aquery(q))
    assert len(res.nodes) == 1 and res.nodes[0].metadata[keys.DOC_ID] == "ferry"
    assert res.ids == [res.nodes[0].node_id]
    got = vstore.get_nodes(node_ids=[res.nodes[0].node_id])
    assert [n.node_id for n in got] == res.ids and got[0].embedding is not None
    assert {n.metadata[keys.DOC_ID] for n in vstore.get_nodes(filters=MetadataFilters(filters=[F("topic", "food")]))} \
        == {"bakery"}


def test_add_accepts_parsed_nodes_and_rejects_foreign_ones(vstore, ingested):
    assert vstore.add(ingested[:2]) == [n.node_id for n in ingested[:2]]
    with pytest.raises(InputError, match="LLoCONodeParser"):
        vstore.add([TextNode(text="from SentenceSplitter")])
    wrong_group = ingested[0].model_copy(deep=True)
    wrong_group.metadata[keys.GROUP] = "other"
    with pytest.raises(InputError, match="one group"):
        vstore.add([wrong_group])


def test_from_documents_then_delete_delete_nodes_clear(index_lloco, index_store, hash_embed, documents):
    group = "deletions"
    parser = LLoCONodeParser.from_components(index_lloco.encoder, index_store, group=group)
    vs = LLoCOVectorStore(index_store, group=group)
    index = VectorStoreIndex.from_documents(documents, storage_context=StorageContext.from_defaults(vector_store=vs),
                                            transformations=[parser], embed_model=hash_embed)
    all_nodes = vs.get_nodes()
    assert {n.metadata[keys.DOC_ID] for n in all_nodes} == {"lighthouse", "bakery", "ferry"}
    # delete(ref_doc_id) removes a document; unknown ids are ignored
    vs.delete("bakery")
    vs.delete("no-such-doc")
    assert "bakery" not in {n.metadata[keys.DOC_ID] for n in vs.get_nodes()}
    # delete_nodes by id and by filter
    ferry = [n for n in vs.get_nodes() if n.metadata[keys.DOC_ID] == "ferry"]
    vs.delete_nodes(node_ids=[ferry[0].node_id, "not-a-lloco-id"])
    left = vs.get_nodes()
    assert ferry[0].node_id not in {n.node_id for n in left}
    with pytest.raises(CheatSheetError, match="does not exist"):
        index_store.cheat_sheets([ferry[0].metadata[keys.CHUNK_ID]])
    asyncio.run(vs.adelete_nodes(filters=MetadataFilters(filters=[F("topic", "travel")])))
    assert {n.metadata[keys.DOC_ID] for n in vs.get_nodes()} == {"lighthouse"}
    assert index_store.get_document("lighthouse", group=group).n_chunks == len(vs.get_nodes())
    # clear: the group stays (with its adapters), its documents go
    vs.clear()
    assert vs.get_nodes() == []
    assert any(g.name == group for g in index_store.list_groups())
    assert index.as_retriever().retrieve("lighthouse") == []


def test_unknown_group_query_is_not_found(index_store):
    vs = LLoCOVectorStore(index_store, group="nobody-here")
    with pytest.raises(NotFoundError):
        vs.query(VectorStoreQuery(query_str="anything"))
