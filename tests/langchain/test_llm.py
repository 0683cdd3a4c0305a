"""LLoCOLLM as a plain LangChain LLM: ids as call arguments or via .bind, streaming callbacks, async, no cache."""

from __future__ import annotations

import asyncio

import pytest
from langchain_core.callbacks import AsyncCallbackHandler, BaseCallbackHandler

from lloco_langchain import LLoCOLLM, LLoCORetriever
from lloco_runtime import RunStats
from lloco_runtime.errors import ConfigError, InputError

QUESTION = "When was the lighthouse built?"


class TokenRecorder(BaseCallbackHandler):
    def __init__(self) -> None:
        self.tokens: list[str] = []
        self.ends: list = []

    def on_llm_new_token(self, token: str, **kwargs) -> None:
        self.tokens.append(token)

    def on_llm_end(self, response, **kwargs) -> None:
        self.ends.append(response)


class AsyncTokenRecorder(AsyncCallbackHandler):
    def __init__(self) -> None:
        self.tokens: list[str] = []

    async def on_llm_new_token(self, token: str, **kwargs) -> None:
        self.tokens.append(token)


@pytest.fixture(scope="module")
def payload(lc_service):
    docs = LLoCORetriever(service=lc_service, group="alpha", k=2).invoke(QUESTION)
    return [d.metadata["chunk_id"] for d in docs], docs[0].metadata["adapter_id"]


@pytest.fixture(scope="module")
def expected(lc_service, payload):
    """The runtime's own answer for the same ids and adapter: what the LLM must return."""
    ids, adapter = payload
    return lc_service.answer_chunks(QUESTION, ids, adapter_id=adapter, max_new_tokens=8).text


def test_invoke_matches_runtime(lc_llm, payload, expected):
    ids, adapter = payload
    out = lc_llm.invoke(QUESTION, cheat_sheet_ids=ids, adapter_id=adapter)
    assert out == expected and out.strip()
    assert lc_llm.bind(cheat_sheet_ids=ids, adapter_id=adapter).invoke(QUESTION) == expected


def test_payload_changes_the_answer(lc_llm, payload, expected):
    ids, _ = payload
    assert lc_llm.invoke(QUESTION, cheat_sheet_ids=ids, adapter_id=None) != expected  # base model
    assert lc_llm.invoke(QUESTION) != expected  # no context, no adapter


def test_stream_calls_on_llm_new_token_for_every_token(lc_llm, payload, expected):
    ids, adapter = payload
    rec = TokenRecorder()
    chunks = list(
        lc_llm.stream(QUESTION, config={"callbacks": [rec]}, cheat_sheet_ids=ids, adapter_id=adapter)
    )
    assert "".join(chunks) == expected and len([c for c in chunks if c]) > 1
    assert rec.tokens == [c for c in chunks if c]
    info = rec.ends[0].generations[0][0].generation_info
    assert info["context_vectors"] > 0 and info["finish_reason"] in ("length", "eos", "stop")


def test_generate_reports_counts(lc_llm, payload):
    ids, adapter = payload
    res = lc_llm.generate([QUESTION], cheat_sheet_ids=ids, adapter_id=adapter)
    info = res.generations[0][0].generation_info
    assert info == RunStats(**info).to_dict()  # the request layer's keys, as the LlamaIndex LLM reports them
    assert info["context_vectors"] == 4 * len(ids) or info["context_vectors"] >= len(ids)
    assert info["completion_tokens"] <= 8


async def test_async_invoke_and_stream(lc_llm, payload, expected):
    ids, adapter = payload
    bound = lc_llm.bind(cheat_sheet_ids=ids, adapter_id=adapter)
    assert await bound.ainvoke(QUESTION) == expected
    rec = AsyncTokenRecorder()
    chunks = [c async for c in bound.astream(QUESTION, config={"callbacks": [rec]})]
    assert "".join(chunks) == expected and rec.tokens == [c for c in chunks if c]


async def test_astream_keeps_the_loop_free(lc_llm, payload):
    """While tokens are decoded on a worker thread, other tasks on the loop keep running."""
    ids, adapter = payload
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    try:
        async for _ in lc_llm.astream(QUESTION, cheat_sheet_ids=ids, adapter_id=adapter, max_new_tokens=16):
            pass
    finally:
        task.cancel()
    assert ticks > 16


def test_stopping_early_releases_the_adapter(lc_llm, lc_service, payload):
    ids, adapter = payload
    stream = lc_llm.stream(QUESTION, cheat_sheet_ids=ids, adapter_id=adapter, max_new_tokens=16)
    next(stream)
    stream.close()
    assert not lc_service.lloco.adapters._pins


def test_stop_strings_and_overrides(lc_llm, payload, expected):
    ids, adapter = payload
    cut = expected[len(expected) // 2 :]
    out = lc_llm.invoke(QUESTION, stop=[cut], cheat_sheet_ids=ids, adapter_id=adapter)
    assert out == expected[: expected.index(cut)]
    assert len(lc_llm.invoke(QUESTION, max_new_tokens=2)) <= len(lc_llm.invoke(QUESTION))


def test_identity_and_type(lc_llm):
    params = lc_llm._identifying_params
    assert lc_llm._llm_type == "lloco" and params["max_new_tokens"] == 8 and "model_name" in params


def test_cache_is_refused(lc_service):
    with pytest.raises(ConfigError, match="cache"):
        LLoCOLLM(service=lc_service, cache=True)
    assert LLoCOLLM(service=lc_service).cache is False


def test_bad_arguments(lc_llm, lc_service):
    with pytest.raises(InputError, match="unknown LLoCOLLM argument"):
        lc_llm.invoke(QUESTION, chunk_ids=[1])
    with pytest.raises(InputError, match="cheat_sheet_ids"):
        lc_llm.invoke(QUESTION, cheat_sheet_ids="1,2")
    with pytest.raises(ConfigError, match="service="):
        LLoCOLLM()
    with pytest.raises(ConfigError, match="need a store"):
        LLoCOLLM(lloco=lc_service.lloco).invoke(QUESTION, cheat_sheet_ids=[1])


async def test_cancelled_astream_releases_the_adapter(lc_llm, lc_service, payload):
    ids, adapter = payload

    async def consume():
        async for _ in lc_llm.astream(QUESTION, cheat_sheet_ids=ids, adapter_id=adapter, max_new_tokens=64):
            await asyncio.sleep(0)

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(100):  # the step in flight finishes on its thread, then the generator is closed
        if not lc_service.lloco.adapters._pins:
            break
        await asyncio.sleep(0.02)
    assert not lc_service.lloco.adapters._pins
