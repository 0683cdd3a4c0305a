"""LangChain integration for LLoCO: an LLM that reads cheat sheets, a retriever and a chain factory.

    from lloco_runtime.service import LLoCOService
    from lloco_langchain import LLoCOLLM, LLoCORetriever, create_lloco_chain

    service = LLoCOService.from_defaults()
    chain = create_lloco_chain(LLoCORetriever(service=service, group="manuals"), LLoCOLLM(service=service))
    chain.invoke({"input": "How do I reset the pump?"})["answer"]

Tensors never travel through LangChain: Documents carry chunk ids and the adapter id in their metadata,
and the LLM loads cheat sheets and adapters itself.
"""

from .chain import create_lloco_chain
from .llm import LLoCOLLM
from .payload import Payload, payload_from_documents
from .retriever import LLoCORetriever
from .vectorstore import LLoCOVectorStore

__all__ = ["LLoCOLLM", "LLoCORetriever", "LLoCOVectorStore", "Payload", "create_lloco_chain", "payload_from_documents"]
