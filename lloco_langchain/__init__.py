"""LangChain integration for LLoCO: an LLM and a chat model that read cheat sheets, a retriever, a vector
store and a chain factory.

    from lloco_runtime import LLoCOService
    from lloco_langchain import ChatLLoCO, LLoCOLLM, LLoCORetriever, create_lloco_chain

    service = LLoCOService.from_defaults()
    chain = create_lloco_chain(LLoCORetriever(service=service, group="manuals"), LLoCOLLM(service=service))
    chain.invoke({"input": "How do I reset the pump?"})["answer"]

    chat = ChatLLoCO(service=service, retriever=LLoCORetriever(service=service, group="manuals"))
    chat.invoke("How do I reset the pump?").content

    remote = LLoCOLLM.from_endpoint("http://127.0.0.1:8000", group="manuals")   # a running `lloco serve`

Tensors never travel through LangChain: Documents carry chunk ids and the adapter id in their metadata,
and the models load cheat sheets and adapters themselves.
"""

from .chain import create_lloco_chain
from .chat import ChatLLoCO
from .llm import LLoCOLLM
from .payload import Payload, payload_from_documents
from .remote import RemoteLLoCOLLM
from .retriever import LLoCORetriever
from .vectorstore import LangChainEmbedder, LLoCOVectorStore

__all__ = [
    "ChatLLoCO",
    "LLoCOLLM",
    "LLoCORetriever",
    "LLoCOVectorStore",
    "LangChainEmbedder",
    "Payload",
    "RemoteLLoCOLLM",
    "create_lloco_chain",
    "payload_from_documents",
]
