"""LlamaIndex integration for LLoCO: node parser, vector store, retriever, LLM and query engine.

    from lloco_index import LLoCONodeParser, LLoCOQueryEngine
    parser = LLoCONodeParser.from_components(lloco.encoder, store, group="manuals")
    IngestionPipeline(transformations=[parser]).run(documents=docs)
    engine = LLoCOQueryEngine.from_defaults(group="manuals", lloco=lloco, store=store)
    print(engine.query("How do I reset the device?"))
"""

from .embeddings import embedder_from_llama, resolve_embedder
from .filters import to_store_filter
from .keys import ADAPTER_ID, CHUNK_ID, COLLECTION, DOC_ID, GROUP, PAYLOAD_KEYS
from .llm import LLoCOLLM
from .node_parser import LLoCONodeParser
from .query_engine import LLoCOQueryEngine
from .retriever import LLoCORetriever
from .vector_store import LLoCOVectorStore

__all__ = [
    "ADAPTER_ID",
    "CHUNK_ID",
    "COLLECTION",
    "DOC_ID",
    "GROUP",
    "PAYLOAD_KEYS",
    "LLoCOLLM",
    "LLoCONodeParser",
    "LLoCOQueryEngine",
    "LLoCORetriever",
    "LLoCOVectorStore",
    "embedder_from_llama",
    "resolve_embedder",
    "to_store_filter",
]
