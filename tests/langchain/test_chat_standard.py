"""ChatLLoCO: messages through the decoder's chat template, cheat sheets per call or from a retriever,
usage metadata, streaming, native async, refusals; and langchain-tests' standard chat-model suites."""

from __future__ import annotations

import asyncio

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.prompts import ChatPromptTemplate
from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests

from lloco_langchain import ChatLLoCO, LLoCORetriever, create_lloco_chain
from lloco_runtime import ChatMessage
from lloco_runtime.errors import ConfigError, InputError

QUESTION = "When was the lighthouse built?"
#: The suites' standard parameters minus those of remote APIs (api_key, timeout, max_retries): ChatLLoCO
#: decodes in-process, so it has none of them and refuses unknown parameters.
LOCAL_STANDARD_PARAMS = {"temperature": 0, "max_tokens": 100, "stop": []}


@pytest.fixture(scope="module")
def chat(lc_service):
    return ChatLLoCO(service=lc_service, max_new_tokens=8)


@pytest.fixture(scope="module")
def payload(lc_service):
    docs = LLoCORetriever(service=lc_service, group="alpha", k=2).invoke(QUESTION)
    return sorted(docs, key=lambda d: (d.metadata["doc_id"], d.metadata["ordinal"]))


def runtime_answer(service, turns, ids, adapter):
    sheets = service.cheat_sheets(ids) if ids else None
    return service.lloco.answer_chat(
        turns, sheets, adapter_id=None if adapter is None else str(adapter), max_new_tokens=8
    )


def test_invoke_matches_the_runtimes_chat_answer(chat, lc_service, payload):
    ids, adapter = [d.metadata["chunk_id"] for d in payload], payload[0].metadata["adapter_id"]
    msgs = [SystemMessage("Answer briefly."), HumanMessage("Hi"), AIMessage("Hello."), HumanMessage(QUESTION)]
    turns = [
        ChatMessage("system", "Answer briefly."),
        ChatMessage("user", "Hi"),
        ChatMessage("assistant", "Hello."),
        ChatMessage("user", QUESTION),
    ]
    ref = runtime_answer(lc_service, turns, ids, adapter)
    out = chat.invoke(msgs, cheat_sheet_ids=ids, adapter_id=adapter)
    assert isinstance(out, AIMessage) and out.content == ref.text and out.content.strip()
    assert out.usage_metadata == {
        "input_tokens": ref.prompt_tokens,
        "output_tokens": len(ref.token_ids),
        "total_tokens": ref.prompt_tokens + len(ref.token_ids),
    }
    meta = out.response_metadata
    assert meta["context_vectors"] == ref.context_vectors > 0 and meta["chunk_ids"] == ids
    assert meta["model_name"] == lc_service.lloco.host.name and meta["finish_reason"] in (
        "length",
        "eos",
        "stop",
    )
    # .bind is the same inside LCEL; content blocks are read as their text
    bound = chat.bind(cheat_sheet_ids=ids, adapter_id=adapter)
    blocks = [*msgs[:-1], HumanMessage(content=[{"type": "text", "text": QUESTION}])]
    assert bound.invoke(blocks).content == ref.text


def test_retriever_supplies_chunks_and_the_groups_adapter(lc_service, payload):
    retriever = LLoCORetriever(service=lc_service, group="alpha", k=2)
    chat = ChatLLoCO(service=lc_service, retriever=retriever, max_new_tokens=8)
    ids, adapter = [d.metadata["chunk_id"] for d in payload], payload[0].metadata["adapter_id"]
    ref = runtime_answer(lc_service, [ChatMessage("user", QUESTION)], ids, adapter)
    out = chat.invoke(QUESTION)
    assert out.content == ref.text
    meta = out.response_metadata
    assert meta["chunk_ids"] == ids and meta["adapter_id"] == adapter and meta["group"] == "alpha"
    assert meta["raw_context_tokens"] == sum(d.metadata["n_tokens"] for d in payload) > 0
    # earlier turns do not change the query: the last human message is retrieved with
    history = [HumanMessage("Tell me about the pump."), AIMessage("Which pump?"), HumanMessage(QUESTION)]
    assert chat.invoke(history).response_metadata["chunk_ids"] == ids
    # per call: explicit ids skip retrieval, an explicit adapter replaces the group's
    assert chat.invoke(QUESTION, cheat_sheet_ids=ids[:1]).response_metadata["chunk_ids"] == ids[:1]
    assert chat.invoke(QUESTION, adapter_id=None).response_metadata["adapter_id"] is None


def test_stream_matches_invoke_and_reports_usage_once(chat, payload):
    ids = [d.metadata["chunk_id"] for d in payload]
    ref = chat.invoke(QUESTION, cheat_sheet_ids=ids)
    chunks = list(chat.stream(QUESTION, cheat_sheet_ids=ids))
    assert "".join(c.content for c in chunks) == ref.content and len(chunks) > 2
    assert [c.usage_metadata for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    assert chunks[-1].chunk_position == "last" and chunks[-1].usage_metadata == ref.usage_metadata
    full = sum(chunks[1:], chunks[0])
    assert full.response_metadata["context_vectors"] == ref.response_metadata["context_vectors"]


async def test_async_matches_sync_and_keeps_the_loop_free(lc_service, payload):
    retriever = LLoCORetriever(service=lc_service, group="alpha", k=2)
    chat = ChatLLoCO(service=lc_service, retriever=retriever, max_new_tokens=16)
    ref = chat.invoke(QUESTION)
    assert (await chat.ainvoke(QUESTION)).content == ref.content
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    try:
        text = "".join([c.content async for c in chat.astream(QUESTION)])
    finally:
        task.cancel()
    assert text == ref.content and ticks > 16


async def test_cancelled_astream_releases_the_adapter(chat, lc_service, payload):
    ids, adapter = [d.metadata["chunk_id"] for d in payload], payload[0].metadata["adapter_id"]

    async def consume():
        async for _ in chat.astream(QUESTION, cheat_sheet_ids=ids, adapter_id=adapter, max_new_tokens=64):
            await asyncio.sleep(0)

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(100):
        if not lc_service.lloco.adapters._pins:
            break
        await asyncio.sleep(0.02)
    assert not lc_service.lloco.adapters._pins


def test_chain_takes_the_chat_model(lc_service, make_chain):
    """create_lloco_chain works with ChatLLoCO as with LLoCOLLM (also under a chat prompt)."""
    retriever = LLoCORetriever(service=lc_service, group="alpha", k=2)
    chat = ChatLLoCO(service=lc_service, max_new_tokens=8)
    out = create_lloco_chain(retriever, chat).invoke({"input": QUESTION})
    ids = [
        d.metadata["chunk_id"]
        for d in sorted(out["context"], key=lambda d: (d.metadata["doc_id"], d.metadata["ordinal"]))
    ]
    ref = runtime_answer(
        lc_service, [ChatMessage("user", QUESTION)], ids, out["context"][0].metadata["adapter_id"]
    )
    assert isinstance(out["answer"], str) and out["answer"] == ref.text
    prompt = ChatPromptTemplate.from_messages([("system", "Answer briefly."), ("human", "{input}")])
    streamed = [
        c for c in create_lloco_chain(retriever, chat, prompt).stream({"input": QUESTION}) if "answer" in c
    ]
    assert "".join(c["answer"] for c in streamed).strip()
    with pytest.raises(ConfigError, match="context"):
        create_lloco_chain(
            retriever, chat, ChatPromptTemplate.from_messages([("human", "{context} {input}")])
        )


def test_refusals(chat, lc_service):
    with pytest.raises(InputError, match="ToolMessage"):
        chat.invoke([HumanMessage("hi"), ToolMessage("42", tool_call_id="1")])
    with pytest.raises(InputError, match="text only"):
        chat.invoke([HumanMessage(content=[{"type": "image", "url": "https://example.com/a.png"}])])
    with pytest.raises(InputError, match="last message must be a non-empty user message"):
        chat.invoke([HumanMessage("hi"), AIMessage("hello")])
    with pytest.raises(InputError, match="unknown ChatLLoCO argument"):
        chat.invoke("hi", chunk_ids=[1])
    with pytest.raises(NotImplementedError, match="no tool calling"):
        chat.bind_tools([])
    with pytest.raises(NotImplementedError, match="no structured output"):
        chat.with_structured_output({"type": "object"})
    with pytest.raises(ConfigError, match="service="):
        ChatLLoCO()
    with pytest.raises(ConfigError, match="cache"):
        ChatLLoCO(service=lc_service, cache=True)
    with pytest.raises(ConfigError, match="need a store"):
        ChatLLoCO(lloco=lc_service.lloco).invoke("hi", cheat_sheet_ids=[1])
    with pytest.raises(ConfigError, match="retriever"):
        ChatLLoCO(service=lc_service, retriever="alpha")
    with pytest.raises(
        ConfigError, match=r"unknown ChatLLoCO parameter\(s\) \['max_new_token'\].*max_new_tokens"
    ):
        ChatLLoCO(service=lc_service, max_new_token=8)  # a typo is an error, not silently ignored


def test_identity(chat):
    assert chat._llm_type == "lloco-chat" and chat._identifying_params["max_new_tokens"] == 8
    ls = chat._get_ls_params()
    assert ls["ls_provider"] == "lloco" and ls["ls_model_name"] == chat.lloco.host.name
    assert ChatLLoCO(lloco=chat.lloco, max_tokens=5).max_new_tokens == 5  # LangChain's standard name


class _Declared:
    """What ChatLLoCO cannot do, declared to the standard suites (their tests for it then do not apply)."""

    @property
    def chat_model_class(self) -> type[ChatLLoCO]:
        return ChatLLoCO

    @property
    def standard_chat_model_params(self) -> dict:
        return dict(LOCAL_STANDARD_PARAMS)

    has_tool_calling = False
    has_tool_choice = False
    has_structured_output = False
    supports_json_mode = False
    supports_image_inputs = False
    supports_image_urls = False
    supports_image_tool_message = False
    supports_pdf_inputs = False
    supports_pdf_tool_message = False
    supports_audio_inputs = False
    supports_anthropic_inputs = False
    supports_model_override = False
    returns_usage_metadata = True


class TestChatLLoCOUnit(_Declared, ChatModelUnitTests):
    """langchain-tests' unit suite on a bare runtime (no store)."""

    @pytest.fixture(autouse=True)
    def _runtime(self, lc_lloco):
        type(self)._lloco = lc_lloco

    @property
    def chat_model_params(self) -> dict:
        return {"lloco": self._lloco, "max_new_tokens": 8}


class TestChatLLoCOIntegration(_Declared, ChatModelIntegrationTests):
    """langchain-tests' integration suite on the tiny random Llama over the real store."""

    @pytest.fixture(autouse=True)
    def _service(self, lc_service):
        type(self)._svc = lc_service

    @property
    def chat_model_params(self) -> dict:
        return {"service": self._svc, "max_new_tokens": 8}
