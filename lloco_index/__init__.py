"""LlamaIndex integration for LLoCO: node parser, vector store, embedding, retriever, LLM and query engine.

from lloco_index import LLoCONodeParser, LLoCOQueryEngine
parser = LLoCONodeParser.from_components(lloco.encoder, store, group="manuals")
IngestionPipeline(transformations=[parser]).run(documents=docs)
engine = LLoCOQueryEngine.from_defaults(group="manuals", lloco=lloco, store=store)
print(engine.query("How do I reset the device?"))

# or through a VectorStoreIndex (embed_model: the store's own embedder, never OpenAI's default)
vs = LLoCOVectorStore(store, group="manuals")
index = VectorStoreIndex.from_vector_store(vs, embed_model=vs.embed_model)
engine = LLoCOQueryEngine(retriever=index.as_retriever(), llm=LLoCOLLM(lloco, store=store))

# or against a running `lloco serve` (no model in this process)
engine = LLoCOQueryEngine.from_endpoint("http://127.0.0.1:8000", group="manuals")
"""

from .embeddings import LLoCOEmbedding, embedder_from_llama, resolve_embedder
from .filters import to_store_filter
from .keys import ADAPTER_ID, CHUNK_ID, COLLECTION, DOC_ID, GROUP, PAYLOAD_KEYS
from .llm import LLoCOLLM
from .node_parser import LLoCONodeParser
from .query_engine import LLoCOQueryEngine
from .remote import RemoteLLoCOLLM, RemoteLLoCOQueryEngine
from .retriever import LLoCORetriever
from .vector_store import LLoCOVectorStore

__all__ = [
    "ADAPTER_ID",
    "CHUNK_ID",
    "COLLECTION",
    "DOC_ID",
    "GROUP",
    "PAYLOAD_KEYS",
    "LLoCOEmbedding",
    "LLoCOLLM",
    "LLoCONodeParser",
    "LLoCOQueryEngine",
    "LLoCORetriever",
    "LLoCOVectorStore",
    "RemoteLLoCOLLM",
    "RemoteLLoCOQueryEngine",
    "embedder_from_llama",
    "resolve_embedder",
    "to_store_filter",
]
