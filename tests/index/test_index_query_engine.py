"""LLoCORetriever, LLoCOLLM and LLoCOQueryEngine: sync, async, streaming, adapters and bad input."""

from __future__ import annotations

import asyncio

import pytest
from llama_index.core import Settings, VectorStoreIndex
from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.base.llms.types import ChatMessage
from llama_index.core.base.response.schema import Response, StreamingResponse
from llama_index.core.schema import MetadataMode, NodeWithScore, TextNode
from llama_index.core.vector_stores.types import MetadataFilter, MetadataFilters

from lloco_index import LLoCOLLM, LLoCOQueryEngine, LLoCORetriever, LLoCOVectorStore, keys
from lloco_runtime import RunStats
from lloco_runtime.errors import InputError, NotFoundError

GROUP = "lighthouses"
QUESTION = "Who was the first keeper of the lighthouse?"
GEN = {"max_new_tokens": 6}


@pytest.fixture(scope="module")
def adapter_id(index_lloco, index_store, ingested):
    """A real (zero-initialised) LoRA registered and activated for the group."""
    from peft import LoraConfig

    from lloco_runtime.adapters import AdapterArtifact

    host = index_lloco.host
    host.add_adapter("tmp_lora", LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    art = AdapterArtifact.from_model(
        host.model,
        "tmp_lora",
        base_fingerprint=host.fingerprint,
        encoder_fingerprint=index_lloco.encoder.fingerprint,
    )
    host.delete_adapter("tmp_lora")
    host.resync()
    info = index_store.register_adapter(
        GROUP,
        art.to_bytes(),
        base_fingerprint=host.fingerprint,
        encoder_fingerprint=index_lloco.encoder.fingerprint,
        activate=True,
    )
    return info.id


@pytest.fixture(scope="module")
def engine(index_lloco, index_store, adapter_id):
    return LLoCOQueryEngine.from_defaults(
        group=GROUP, lloco=index_lloco, store=index_store, top_k=2, max_new_tokens=6
    )


def test_retriever_nodes_carry_ids_hidden_from_llm(index_store, adapter_id):
    nodes = LLoCORetriever(index_store, group=GROUP, top_k=2).retrieve(QUESTION)
    assert len(nodes) == 2 and nodes[0].node.metadata[keys.DOC_ID] == "lighthouse"
    meta = nodes[0].node.metadata
    assert meta[keys.ADAPTER_ID] == adapter_id and isinstance(meta[keys.CHUNK_ID], int)
    for key in (keys.CHUNK_ID, keys.ADAPTER_ID, keys.GROUP):
        assert key in nodes[0].node.excluded_llm_metadata_keys
        assert key in nodes[0].node.excluded_embed_metadata_keys
    assert "lloco_" not in nodes[0].node.get_content(metadata_mode=MetadataMode.LLM)
    assert "lloco_" not in nodes[0].node.get_content(metadata_mode=MetadataMode.EMBED)
    flt = MetadataFilters(filters=[MetadataFilter(key="topic", value="food")])
    only = LLoCORetriever(index_store, group=GROUP, top_k=5, filters=flt).retrieve(QUESTION)
    assert only and {n.node.metadata[keys.DOC_ID] for n in only} == {"bakery"}
    assert (
        keys.ADAPTER_ID
        not in LLoCORetriever(index_store, group=GROUP, use_adapter=False).retrieve(QUESTION)[0].node.metadata
    )


def test_query_engine_sync_response(engine, index_lloco, adapter_id):
    resp = engine.query(QUESTION)
    assert isinstance(resp, Response) and isinstance(resp.response, str)
    assert len(resp.source_nodes) == 2 and resp.source_nodes[0].node.metadata[keys.DOC_ID] == "lighthouse"
    meta = resp.metadata
    assert meta["adapter_id"] == adapter_id and str(adapter_id) in index_lloco.adapters.loaded()
    assert meta["context_vectors"] == 2 * 4 == meta["cheat_sheets"] * 4
    assert meta["raw_context_tokens"] == sum(n.node.metadata[keys.N_TOKENS] for n in resp.source_nodes) > 8


def test_query_engine_streaming_and_async_agree(engine, index_lloco, index_store):
    sync_text = engine.query(QUESTION).response
    streaming = LLoCOQueryEngine.from_defaults(
        group=GROUP, lloco=index_lloco, store=index_store, top_k=2, max_new_tokens=6, streaming=True
    )
    sresp = streaming.query(QUESTION)
    assert isinstance(sresp, StreamingResponse) and len(sresp.source_nodes) == 2
    deltas = list(sresp.response_gen)
    assert "".join(deltas).strip() == sync_text
    assert sresp.metadata["context_vectors"] == 8 and sresp.metadata["prompt_tokens"] > 8
    aresp = asyncio.run(engine.aquery(QUESTION))
    assert isinstance(aresp, Response) and aresp.response == sync_text
    assert [n.node.node_id for n in aresp.source_nodes] == [n.node.node_id for n in sresp.source_nodes]


def test_query_engine_over_vector_store_index_retriever(index_lloco, index_store, hash_embed, engine):
    index = VectorStoreIndex.from_vector_store(
        LLoCOVectorStore(index_store, group=GROUP), embed_model=hash_embed
    )
    qe = LLoCOQueryEngine(
        retriever=index.as_retriever(similarity_top_k=2), llm=engine.llm, generation_kwargs=GEN
    )
    resp = qe.query(QUESTION)
    assert resp.source_nodes and resp.metadata["cheat_sheets"] == 2


def test_llm_complete_chat_and_metadata(engine, index_store, adapter_id):
    llm = engine.llm
    ids = [
        n.node.metadata[keys.CHUNK_ID]
        for n in LLoCORetriever(index_store, group=GROUP, top_k=2).retrieve(QUESTION)
    ]
    out = llm.complete(QUESTION, cheat_sheet_ids=ids, adapter_id=adapter_id, **GEN)
    assert out.raw["context_vectors"] == 8
    assert set(out.raw) == set(RunStats().to_dict())  # the request layer's keys, as LangChain reports them
    no_ctx = llm.complete(QUESTION, **GEN)
    assert no_ctx.raw["context_vectors"] == 0
    chunks = list(llm.stream_complete(QUESTION, cheat_sheet_ids=ids, **GEN))
    assert chunks[-1].raw["context_vectors"] == 8 and chunks[-1].text == "".join(c.delta for c in chunks)
    chat = llm.chat([ChatMessage(role="user", content=QUESTION)], cheat_sheet_ids=ids, **GEN)
    assert chat.message.role == "assistant" and chat.raw["context_vectors"] == 8
    streamed = list(llm.stream_chat([ChatMessage(role="user", content=QUESTION)], cheat_sheet_ids=ids, **GEN))
    assert streamed[-1].message.content.strip() == chat.message.content
    md = llm.metadata
    assert md.context_window == llm.decoder_window - llm.max_cheat_sheets * 4 and md.num_output == 6


class ForeignRetriever(BaseRetriever):
    """Stands for a retriever over another vector store: plain text nodes, no lloco ids."""

    def _retrieve(self, query_bundle):
        return [NodeWithScore(node=TextNode(text="The keeper was Martha Quill."), score=1.0)]


def test_foreign_nodes_give_a_clear_error(engine):
    qe = LLoCOQueryEngine(retriever=ForeignRetriever(), llm=engine.llm)
    with pytest.raises(InputError, match="LLoCORetriever") as err:
        qe.query(QUESTION)
    assert "LLoCONodeParser" in str(err.value)


def test_unknown_adapter_id_is_not_found(engine, index_store):
    ids = [
        n.node.metadata[keys.CHUNK_ID]
        for n in LLoCORetriever(index_store, group=GROUP, top_k=1).retrieve(QUESTION)
    ]
    with pytest.raises(NotFoundError, match="adapter"):
        engine.llm.complete(QUESTION, cheat_sheet_ids=ids, adapter_id=987654)
    with pytest.raises(NotFoundError, match="adapter"):
        engine.llm.complete(QUESTION, cheat_sheet_ids=ids, adapter_id="no-such-adapter")
    with pytest.raises(InputError, match="chunk ids"):
        engine.llm.complete(QUESTION, cheat_sheet_ids=["abc"])


def test_llm_without_store_refuses_cheat_sheet_ids(index_lloco):
    with pytest.raises(InputError, match="store"):
        LLoCOLLM(index_lloco).complete(QUESTION, cheat_sheet_ids=[1])


def test_from_defaults_uses_settings_embed_model_without_writing_it(
    index_lloco, hash_embed, monkeypatch, ingested, pg_url
):
    monkeypatch.setenv("LLOCO_DATABASE_URL", pg_url)  # the default store is the session's server
    monkeypatch.setenv("LLOCO_SCHEMA", "lloco_index_test")
    before = Settings._embed_model
    with monkeypatch.context() as m:
        m.setattr(Settings, "_embed_model", hash_embed)
        qe = LLoCOQueryEngine.from_defaults(group=GROUP, lloco=index_lloco, top_k=1, max_new_tokens=4)
        assert qe.retriever.store.embedder.name == "llama_index/HashEmbedding/hash-64"
        assert qe.query(QUESTION).source_nodes
        assert Settings._embed_model is hash_embed
    assert Settings._embed_model is before
    # explicit embed model, Settings left alone
    qe = LLoCOQueryEngine.from_defaults(group=GROUP, lloco=index_lloco, embed_model=hash_embed, top_k=1)
    assert qe.retriever.retrieve(QUESTION)
    assert Settings._embed_model is before


def test_query_emits_instrumentation_spans(engine):
    import llama_index.core.instrumentation as instrument
    from llama_index.core.instrumentation.span_handlers import SimpleSpanHandler

    handler = SimpleSpanHandler()
    root = instrument.get_dispatcher()
    root.add_span_handler(handler)
    try:
        engine.query(QUESTION)
    finally:
        root.span_handlers.remove(handler)
    names = {s.id_.split("-")[0] for s in handler.completed_spans}
    assert {"LLoCOQueryEngine.custom_query", "LLoCOQueryEngine._answer", "LLoCOLLM.complete"} <= names, names


def test_llm_async_complete_and_chat(engine, index_store):
    ids = [
        n.node.metadata[keys.CHUNK_ID]
        for n in LLoCORetriever(index_store, group=GROUP, top_k=1).retrieve(QUESTION)
    ]
    out = asyncio.run(engine.llm.acomplete(QUESTION, cheat_sheet_ids=ids, **GEN))
    assert out.raw["context_vectors"] == 4
    chat = asyncio.run(
        engine.llm.achat([ChatMessage(role="user", content=QUESTION)], cheat_sheet_ids=ids, **GEN)
    )
    assert chat.raw["context_vectors"] == 4
