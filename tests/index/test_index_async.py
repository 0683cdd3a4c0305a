"""LLoCOLLM / LLoCOQueryEngine async: the model runs off the event loop, streams yield tokens as they come,
and a cancelled stream releases the adapter it pinned."""

from __future__ import annotations

import asyncio
import time

import pytest
from llama_index.core.base.llms.types import ChatMessage
from llama_index.core.base.response.schema import AsyncStreamingResponse, Response

from lloco_index import LLoCOLLM, LLoCOQueryEngine, LLoCORetriever, keys
from lloco_runtime.errors import InputError

GROUP = "lighthouses"
QUESTION = "Who was the first keeper of the lighthouse?"


@pytest.fixture(scope="module")
def adapter_id(index_lloco, index_store, ingested) -> int:
    """A real (zero-initialised) LoRA of the group, registered but not activated (other modules' state stays)."""
    from peft import LoraConfig

    from lloco_runtime.adapters import AdapterArtifact

    host = index_lloco.host
    host.add_adapter("tmp_async_lora", LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    art = AdapterArtifact.from_model(
        host.model,
        "tmp_async_lora",
        base_fingerprint=host.fingerprint,
        encoder_fingerprint=index_lloco.encoder.fingerprint,
    )
    host.delete_adapter("tmp_async_lora")
    host.resync()
    info = index_store.register_adapter(
        GROUP,
        art.to_bytes(),
        base_fingerprint=host.fingerprint,
        encoder_fingerprint=index_lloco.encoder.fingerprint,
        activate=False,
    )
    return info.id


@pytest.fixture(scope="module")
def llm(index_lloco, index_store) -> LLoCOLLM:
    return LLoCOLLM(index_lloco, store=index_store, max_new_tokens=6)


@pytest.fixture(scope="module")
def ids(index_store, ingested) -> list[int]:
    return [
        n.node.metadata[keys.CHUNK_ID]
        for n in LLoCORetriever(index_store, group=GROUP, top_k=2).retrieve(QUESTION)
    ]


def pins(index_lloco) -> dict[str, int]:
    return dict(index_lloco.adapters._pins)


async def released(index_lloco, timeout: float = 5.0) -> bool:
    """Wait (on the loop) until no adapter is pinned: the step in flight ends on its thread, then the stream
    is closed."""
    end = time.monotonic() + timeout
    while pins(index_lloco) and time.monotonic() < end:
        await asyncio.sleep(0.01)
    return not pins(index_lloco)


async def consume_with_ticker(agen, loop_marks: list[bool]) -> tuple[list, int, float]:
    """Read an async stream while a task ticks every 5 ms. ``loop_marks``: for each item after the first,
    whether a callback scheduled when the previous item arrived ran before this one (the loop was free
    between the two tokens)."""
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.005)
            ticks += 1

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0.02)
    loop = asyncio.get_running_loop()
    items, mark = [], None
    start_ticks, start = ticks, time.perf_counter()
    try:
        async for item in agen:
            if mark is not None:
                loop_marks.append(mark.is_set())
            items.append(item)
            mark = asyncio.Event()
            loop.call_soon(mark.set)
    finally:
        task.cancel()
    return items, ticks - start_ticks, time.perf_counter() - start


@pytest.mark.parametrize("kind", ["complete", "chat"])
def test_async_streams_keep_the_event_loop_free(llm, ids, adapter_id, index_lloco, kind):
    async def main():
        if kind == "complete":
            agen = await llm.astream_complete(
                QUESTION, cheat_sheet_ids=ids, adapter_id=adapter_id, max_new_tokens=48
            )
        else:
            agen = await llm.astream_chat(
                [
                    ChatMessage(role="system", content="Answer briefly."),
                    ChatMessage(role="user", content=QUESTION),
                ],
                cheat_sheet_ids=ids,
                adapter_id=adapter_id,
                max_new_tokens=48,
            )
        marks: list[bool] = []
        items, ticks, elapsed = await consume_with_ticker(agen, marks)
        return items, marks, ticks, elapsed

    items, marks, ticks, elapsed = asyncio.run(main())
    assert len(items) >= 8, "the stream should yield one response per token"
    assert all(marks), f"the event loop was blocked between tokens {marks.count(False)} times"
    # a 5 ms ticker keeps running while the model decodes (a blocking stream would starve it)
    assert ticks >= 3 and ticks >= elapsed / 0.005 / 5, (ticks, elapsed)
    last = items[-1]
    assert last.raw["context_vectors"] == 8 and last.raw["cheat_sheets"] == 2
    text = last.message.content if kind == "chat" else last.text
    assert text == "".join(r.delta for r in items)
    # the same tokens as the synchronous stream
    if kind == "complete":
        sync = list(
            llm.stream_complete(QUESTION, cheat_sheet_ids=ids, adapter_id=adapter_id, max_new_tokens=48)
        )
        assert [r.delta for r in sync] == [r.delta for r in items]
    assert not pins(index_lloco)


def test_acomplete_and_achat_run_on_a_worker_thread(llm, ids, adapter_id):
    async def main():
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.005)
                ticks += 1

        task = asyncio.create_task(ticker())
        await asyncio.sleep(0.02)
        before = ticks
        out = await llm.acomplete(QUESTION, cheat_sheet_ids=ids, adapter_id=adapter_id, max_new_tokens=48)
        chat = await llm.achat(
            [ChatMessage(role="user", content=QUESTION)],
            cheat_sheet_ids=ids,
            adapter_id=adapter_id,
            max_new_tokens=48,
        )
        task.cancel()
        return out, chat, ticks - before

    out, chat, ticks = asyncio.run(main())
    assert ticks >= 3
    assert (
        out.text == llm.complete(QUESTION, cheat_sheet_ids=ids, adapter_id=adapter_id, max_new_tokens=48).text
    )
    assert chat.message.content == out.text  # one user message: the same prompt as complete
    assert out.raw["context_vectors"] == chat.raw["context_vectors"] == 8


@pytest.mark.parametrize("kind", ["complete", "chat"])
def test_cancelled_async_stream_releases_the_adapter(llm, ids, adapter_id, index_lloco, kind):
    async def main():
        first = asyncio.Event()
        pinned_while_streaming: list[dict] = []

        async def consume() -> None:
            if kind == "complete":
                agen = await llm.astream_complete(
                    QUESTION, cheat_sheet_ids=ids, adapter_id=adapter_id, max_new_tokens=400
                )
            else:
                agen = await llm.astream_chat(
                    [ChatMessage(role="user", content=QUESTION)],
                    cheat_sheet_ids=ids,
                    adapter_id=adapter_id,
                    max_new_tokens=400,
                )
            async for _ in agen:
                if not first.is_set():
                    pinned_while_streaming.append(pins(index_lloco))
                    first.set()

        task = asyncio.create_task(consume())
        await first.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return pinned_while_streaming, await released(index_lloco)

    during, ok = asyncio.run(main())
    assert during == [{str(adapter_id): 1}], "the adapter is pinned while the stream runs"
    assert ok, f"a cancelled stream left adapters pinned: {pins(index_lloco)}"


def test_leaving_an_async_stream_early_releases_the_adapter(llm, ids, adapter_id, index_lloco):
    async def main():
        agen = await llm.astream_complete(
            QUESTION, cheat_sheet_ids=ids, adapter_id=adapter_id, max_new_tokens=400
        )
        async for _ in agen:
            break
        assert pins(index_lloco) == {str(adapter_id): 1}
        await agen.aclose()
        return await released(index_lloco)

    assert asyncio.run(main())


def test_async_errors_are_raised_when_called(llm, ids):
    async def main():
        with pytest.raises(InputError, match="chunk ids"):
            await llm.astream_complete(QUESTION, cheat_sheet_ids=["abc"])
        with pytest.raises(InputError, match="role 'tool'"):
            await llm.astream_chat(
                [ChatMessage(role="tool", content="42"), ChatMessage(role="user", content="Q?")]
            )

    asyncio.run(main())


def test_aquery_streaming_returns_an_async_streaming_response(index_lloco, index_store, ingested):
    streaming = LLoCOQueryEngine.from_defaults(
        group=GROUP, lloco=index_lloco, store=index_store, top_k=2, max_new_tokens=12, streaming=True
    )
    plain = LLoCOQueryEngine.from_defaults(
        group=GROUP, lloco=index_lloco, store=index_store, top_k=2, max_new_tokens=12
    )
    expected = plain.query(QUESTION).response

    async def main():
        resp = await streaming.aquery(QUESTION)
        assert isinstance(resp, AsyncStreamingResponse) and len(resp.source_nodes) == 2
        marks: list[bool] = []
        deltas, _, _ = await consume_with_ticker(resp.async_response_gen(), marks)
        assert all(marks), "the event loop was blocked between tokens"
        final = await resp.get_response()
        return resp, deltas, final

    resp, deltas, final = asyncio.run(main())
    assert len(deltas) >= 2 and "".join(deltas).strip() == expected
    assert isinstance(final, Response) and final.response.strip() == expected
    assert resp.metadata["context_vectors"] == 8 and resp.metadata["prompt_tokens"] > 8
    assert not pins(index_lloco)
