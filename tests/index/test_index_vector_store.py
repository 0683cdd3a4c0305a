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
from lloco_runtime.errors import CheatSheetError, ConfigError, InputError, NotFoundError
from lloco_runtime.store import FilterGroup
from lloco_runtime.store import MetadataFilter as StoreFilter

GROUP = "lighthouses"


def F(key, value, op=FilterOperator.EQ):
    return MetadataFilter(key=key, value=value, operator=op)


def test_filter_translation_nested_and_or():
    flt = MetadataFilters(
        filters=[
            F("topic", "history"),
            MetadataFilters(
                filters=[F("year", 2000, FilterOperator.GT), F("tags", ["boat", "x"], FilterOperator.ANY)],
                condition=FilterCondition.OR,
            ),
        ],
        condition=FilterCondition.AND,
    )
    out = to_store_filter(flt)
    assert out == FilterGroup(
        [
            StoreFilter("topic", "==", "history"),
            FilterGroup(
                [
                    StoreFilter("year", ">", 2000),
                    FilterGroup(
                        [StoreFilter("tags", "contains", "boat"), StoreFilter("tags", "contains", "x")], "or"
                    ),
                ],
                "or",
            ),
        ],
        "and",
    )
    assert to_store_filter(MetadataFilters(filters=[])) is None
    assert to_store_filter(
        MetadataFilters(filters=[F("t", "Ab", FilterOperator.TEXT_MATCH_INSENSITIVE)])
    ) == StoreFilter("t", "text_match", "Ab")
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
    flt = MetadataFilters(
        filters=[
            F("topic", "travel"),
            MetadataFilters(
                filters=[F("year", 1900, FilterOperator.LT), F("tags", "coast", FilterOperator.CONTAINS)]
            ),
        ],
        condition=FilterCondition.OR,
    )
    got = index.as_retriever(similarity_top_k=50, filters=flt).retrieve("lighthouse ferry bread")
    assert {n.node.metadata[keys.DOC_ID] for n in got} == {"lighthouse", "ferry"}
    got = index.as_retriever(
        similarity_top_k=50, filters=MetadataFilters(filters=[F("topic", ["food"], FilterOperator.IN)])
    ).retrieve("bread oven baker")
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
    assert {
        n.metadata[keys.DOC_ID]
        for n in vstore.get_nodes(filters=MetadataFilters(filters=[F("topic", "food")]))
    } == {"bakery"}


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
    index = VectorStoreIndex.from_documents(
        documents,
        storage_context=StorageContext.from_defaults(vector_store=vs),
        transformations=[parser],
        embed_model=hash_embed,
    )
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


KEEPER = "Who was the keeper of the lighthouse?"


def test_doc_ids_and_node_ids_narrow_before_top_k(vstore, hash_embed):
    ferry = [n for n in vstore.get_nodes() if n.metadata[keys.DOC_ID] == "ferry"]
    k = len(ferry)
    assert k >= 2
    top = vstore.query(VectorStoreQuery(query_str=KEEPER, similarity_top_k=k))
    assert top.nodes[0].metadata[keys.DOC_ID] == "lighthouse"  # ferry ranks low for this question
    for mode in (VectorStoreQueryMode.DEFAULT, VectorStoreQueryMode.HYBRID):
        res = vstore.query(
            VectorStoreQuery(query_str=KEEPER, similarity_top_k=k, doc_ids=["ferry"], mode=mode)
        )
        assert sorted(res.ids) == sorted(n.node_id for n in ferry)
    res = vstore.query(
        VectorStoreQuery(
            query_str=KEEPER, similarity_top_k=3, node_ids=[ferry[-1].node_id, "not-a-lloco-node"]
        )
    )
    assert res.ids == [ferry[-1].node_id]
    res = vstore.query(VectorStoreQuery(query_str=KEEPER, similarity_top_k=3, node_ids=["not-a-lloco-node"]))
    assert res.ids == [] and res.nodes == []
    res = vstore.query(
        VectorStoreQuery(query_str=KEEPER, similarity_top_k=3, doc_ids=["ferry"], node_ids=[top.ids[0]])
    )
    assert res.ids == []  # both restrictions hold
    # through VectorStoreIndex retrievers (their doc_ids= / node_ids= arguments)
    index = VectorStoreIndex.from_vector_store(vstore, embed_model=hash_embed)
    got = index.as_retriever(similarity_top_k=k, doc_ids=["ferry"]).retrieve(KEEPER)
    assert [n.node.metadata[keys.DOC_ID] for n in got] == ["ferry"] * k


def test_query_embedding_drives_the_dense_search(vstore, hash_embed):
    target = [n for n in vstore.get_nodes() if n.metadata[keys.DOC_ID] == "bakery"][-1]
    vec = vstore.embed_model.get_query_embedding(target.get_content())  # an LLoCOEmbedding's: used as given
    res = vstore.query(VectorStoreQuery(query_str=KEEPER, query_embedding=vec, similarity_top_k=1))
    assert res.ids == [target.node_id]
    assert res.similarities[0] == pytest.approx(1.0, abs=5e-3)  # the cosine with the given vector
    without = vstore.query(VectorStoreQuery(query_str=KEEPER, similarity_top_k=1))
    assert without.nodes[0].metadata[keys.DOC_ID] == "lighthouse"
    # a vector of the right width from an unrecorded source is checked against the query text
    same = hash_embed.get_query_embedding(KEEPER)
    assert (
        vstore.query(VectorStoreQuery(query_str=KEEPER, query_embedding=same, similarity_top_k=1)).ids
        == without.ids
    )
    with pytest.raises(ConfigError, match="was not made by"):
        vstore.query(
            VectorStoreQuery(
                query_str=KEEPER,
                query_embedding=hash_embed.get_query_embedding("cardamom buns"),
                similarity_top_k=1,
            )
        )
    with pytest.raises(ConfigError, match=r"has 3 dims but default/lighthouses is keyed by 64-dim"):
        vstore.query(VectorStoreQuery(query_str=KEEPER, query_embedding=[0.1, 0.2, 0.3], similarity_top_k=1))
    with pytest.raises(InputError, match="needs query_str"):
        vstore.query(VectorStoreQuery(query_embedding=vec, similarity_top_k=1))
