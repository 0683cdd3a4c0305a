"""``create_lloco_chain``: retrieval + LLoCO answer as one LCEL runnable, like ``create_retrieval_chain``.

    chain = create_lloco_chain(LLoCORetriever(service=svc, group="manuals"), LLoCOLLM(service=svc))
    chain.invoke({"input": "How do I reset the pump?"})
    # -> {"input": ..., "context": [Document, ...], "answer": "..."}
    chain = create_lloco_chain(retriever, ChatLLoCO(service=svc))   # the chat model works the same way

The retrieved Documents are not pasted into the prompt as text: their chunk ids and the group's adapter id
go to the LLM as call arguments, and the LLM splices the stored cheat sheets into its own template.
"""

from __future__ import annotations

from typing import Any

from langchain_core.language_models import BaseLanguageModel
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import BasePromptTemplate, PromptTemplate
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import Runnable, RunnableLambda, RunnablePassthrough

from lloco_runtime import ConfigError, InputError

from .payload import payload_from_documents

DEFAULT_PROMPT = PromptTemplate.from_template("{input}")


def create_lloco_chain(
    retriever: BaseRetriever | Runnable,
    llm: BaseLanguageModel | Runnable,
    prompt: BasePromptTemplate | None = None,
) -> Runnable:
    """Build ``{"input": question} -> {"input", "context": [Document], "answer": str}``.

    Args:
        retriever: a :class:`~lloco_langchain.retriever.LLoCORetriever` (or any runnable returning Documents
            that carry its metadata), invoked with the ``input`` string.
        llm: a :class:`~lloco_langchain.llm.LLoCOLLM` or :class:`~lloco_langchain.chat.ChatLLoCO`, possibly
            bound (``llm.bind(max_new_tokens=32)``); the answer is a string either way.
        prompt: formats the *question* the decoder sees (default: the input as is). It may use ``{input}``
            and any other keys of the chain input, but not ``{context}``: the context reaches the decoder as
            cheat sheets, not as text. With ``ChatLLoCO`` it may be a ``ChatPromptTemplate`` (e.g. a system
            message, then ``("human", "{input}")``).
    """
    prompt = prompt if prompt is not None else DEFAULT_PROMPT
    if "context" in prompt.input_variables:
        raise ConfigError(
            "the prompt of a LLoCO chain must not use {context}: the retrieved chunks reach the "
            "decoder as cheat sheets (the runtime's template has the context slot); format only "
            "the question, e.g. PromptTemplate.from_template('{input}')"
        )
    if not isinstance(retriever, Runnable):
        raise ConfigError(f"retriever must be a LangChain retriever/runnable, got {type(retriever).__name__}")

    def answer_with_cheat_sheets(inputs: dict[str, Any]) -> Runnable:
        # Runs per input: bind that input's chunk ids and adapter, then let LCEL invoke/stream the result.
        p = payload_from_documents(inputs["context"])
        bound = llm.bind(cheat_sheet_ids=p.chunk_ids, adapter_id=p.adapter_id)
        return prompt | bound | StrOutputParser()

    retrieve = RunnableLambda(_question, name="question") | retriever
    return (
        RunnablePassthrough.assign(context=retrieve.with_config(run_name="retrieve_documents")).assign(
            answer=RunnableLambda(answer_with_cheat_sheets, name="lloco_answer")
        )
    ).with_config(run_name="lloco_chain")


def _question(inputs: dict[str, Any]) -> str:
    if not isinstance(inputs, dict) or not isinstance(inputs.get("input"), str):
        raise InputError('a LLoCO chain takes {"input": "<question>"}')
    return inputs["input"]
