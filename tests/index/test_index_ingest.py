"""LLoCONodeParser alone and inside IngestionPipeline, on the embedded Postgres."""

from __future__ import annotations

import pytest
from llama_index.core.ingestion import IngestionCache, IngestionPipeline
from llama_index.core.ingestion.pipeline import get_transformation_hash
from llama_index.core.schema import MetadataMode, NodeRelationship

from lloco_index import PAYLOAD_KEYS, LLoCONodeParser, keys
from lloco_runtime.errors import InputError

GROUP = "lighthouses"  # as in conftest.py


def test_parser_stores_cheat_sheets_and_stamps_ids(ingested, index_lloco, index_store, documents):
    nodes = ingested
    texts = {d.id_: d.text for d in documents}
    # one node per encoder segment, in document order
    for doc_id, text in texts.items():
        mine = [n for n in nodes if n.ref_doc_id == doc_id]
        segments = index_lloco.encoder.split(text)
        assert [n.text for n in mine] == [c.text for c in segments]
        assert "".join(n.text for n in mine) == text
    node = nodes[0]
    meta = node.metadata
    assert {keys.CHUNK_ID, keys.DOC_ID, keys.GROUP, keys.COLLECTION} <= set(meta)
    assert meta[keys.GROUP] == GROUP and meta[keys.COLLECTION] == "default"
    assert node.node_id == keys.node_id_for(meta[keys.CHUNK_ID])
    assert meta["topic"] in ("history", "food", "travel")  # document metadata kept
    assert node.relationships[NodeRelationship.SOURCE].node_id == meta[keys.DOC_ID]
    # payload hidden from LLM and embedder, embedding = the stored retrieval vector
    for key in PAYLOAD_KEYS:
        assert key in node.excluded_llm_metadata_keys and key in node.excluded_embed_metadata_keys
    assert keys.CHUNK_ID not in node.get_content(metadata_mode=MetadataMode.LLM)
    assert node.embedding is not None and len(node.embedding) == index_store.embedder.dim
    # cheat sheets are in Postgres: summary_length x hidden per chunk
    sheets = index_store.cheat_sheets([n.metadata[keys.CHUNK_ID] for n in nodes])
    assert [tuple(s.shape) for s in sheets] == [(4, index_lloco.host.hidden_size)] * len(nodes)


def test_reparsing_unchanged_documents_keeps_node_ids(ingested, index_lloco, index_store, documents):
    parser = LLoCONodeParser.from_components(index_lloco.encoder, index_store, group=GROUP)
    again = parser.get_nodes_from_documents(documents)
    assert [n.node_id for n in again] == [n.node_id for n in ingested]


def test_ingestion_pipeline_run_and_cache(index_lloco, index_store, documents):
    parser = LLoCONodeParser.from_components(index_lloco.encoder, index_store, group="pipeline")
    cache = IngestionCache()
    pipeline = IngestionPipeline(transformations=[parser], cache=cache)
    nodes = pipeline.run(documents=documents[:2])
    assert nodes and all(keys.CHUNK_ID in n.metadata for n in nodes)
    assert {g.name: g.n_documents for g in index_store.list_groups()}["pipeline"] == 2
    # second run: served from the cache, same nodes
    again = IngestionPipeline(transformations=[parser], cache=cache).run(documents=documents[:2])
    assert [n.node_id for n in again] == [n.node_id for n in nodes]
    # async run works too
    import asyncio

    anodes = asyncio.run(IngestionPipeline(transformations=[parser]).arun(documents=documents[2:]))
    assert anodes and {n.ref_doc_id for n in anodes} == {"ferry"}


def test_cache_key_differs_per_encoder(index_lloco, index_store, documents):
    from lloco_runtime import ContextEncoder, EncoderConfig

    other = ContextEncoder(index_lloco.host, EncoderConfig(segment_length=64, summary_length=4))
    a = LLoCONodeParser.from_components(index_lloco.encoder, index_store, group=GROUP)
    b = LLoCONodeParser.from_components(other, index_store, group=GROUP)
    assert a.encoder_fingerprint != b.encoder_fingerprint
    assert get_transformation_hash(documents, a) != get_transformation_hash(documents, b)
    assert get_transformation_hash(documents, a) == get_transformation_hash(
        documents, LLoCONodeParser.from_components(index_lloco.encoder, index_store, group=GROUP)
    )


def test_parser_without_handles_says_how_to_build_it(documents):
    parser = LLoCONodeParser(
        group=GROUP, encoder_fingerprint="x", encoder_name="x", embedder_name="x", store_location="x"
    )
    with pytest.raises(InputError, match="from_components"):
        parser.get_nodes_from_documents(documents)
