"""The real ``openai`` client (the ``dev`` extra) against ``lloco serve``'s ``/v1/chat/completions``: the answer
of ``/v1/ask`` for the same question and group, streamed chunks that concatenate to it, and the server's
errors as openai's exception classes with the server's message."""

from __future__ import annotations

import asyncio

import httpx
import openai
import pytest
from conftest import GROUPS, MAX_NEW, QUESTIONS

pytestmark = pytest.mark.ray


def _client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)


def _ask(url: str, question: str, group: str) -> dict:
    r = httpx.post(
        f"{url}/v1/ask", json={"question": question, "group": group, "max_new_tokens": MAX_NEW}, timeout=120
    )
    assert r.status_code == 200, r.text
    return r.json()


def test_openai_chat_completion_equals_ask(served):
    url, _, _, info = served
    question, group = QUESTIONS[1], GROUPS[0]
    want = _ask(url, question, group)
    c = _client(url).chat.completions.create(
        model="lloco",
        messages=[{"role": "user", "content": question}],
        max_tokens=MAX_NEW,
        extra_body={"group": group},
    )
    assert isinstance(c, openai.types.chat.ChatCompletion) and c.object == "chat.completion"
    (choice,) = c.choices
    assert choice.message.role == "assistant" and choice.message.content == want["answer"]
    assert choice.finish_reason in ("stop", "length") and c.model == "lloco"
    assert c.usage.completion_tokens >= 1
    assert c.usage.total_tokens == c.usage.prompt_tokens + c.usage.completion_tokens
    lloco = c.model_extra["lloco"]  # lloco's extra field reaches the client as an extra attribute
    assert lloco["adapter_id"] == want["adapter_id"] == info["adapters"][group]
    assert [s["chunk_id"] for s in lloco["sources"]] == [s["chunk_id"] for s in want["sources"]]


def test_openai_stream_concatenates_to_the_answer(served):
    url = served[0]
    question, group = QUESTIONS[2], GROUPS[1]
    want = _ask(url, question, group)
    client = _client(url)
    plain = client.chat.completions.create(
        model="lloco",
        messages=[{"role": "user", "content": question}],
        max_tokens=MAX_NEW,
        extra_body={"group": group},
    )
    stream = client.chat.completions.create(
        model="lloco",
        messages=[{"role": "user", "content": question}],
        max_tokens=MAX_NEW,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"group": group},
    )
    chunks = list(stream)
    assert all(isinstance(ch, openai.types.chat.ChatCompletionChunk) for ch in chunks)
    assert len({ch.id for ch in chunks}) == 1
    with_choice = [ch for ch in chunks if ch.choices]
    assert with_choice[0].choices[0].delta.role == "assistant"
    text = "".join(ch.choices[0].delta.content or "" for ch in with_choice)
    assert text == want["answer"] == plain.choices[0].message.content
    finish = [ch.choices[0].finish_reason for ch in with_choice if ch.choices[0].finish_reason]
    assert finish == [plain.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage == plain.usage

    async def astream() -> str:
        aclient = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)
        parts = []
        async with aclient:
            s = await aclient.chat.completions.create(
                model="lloco",
                messages=[{"role": "user", "content": question}],
                max_tokens=MAX_NEW,
                stream=True,
                extra_body={"group": group},
            )
            async for ch in s:
                if ch.choices and ch.choices[0].delta.content:
                    parts.append(ch.choices[0].delta.content)
        return "".join(parts)

    assert asyncio.run(astream()) == want["answer"]


def test_openai_errors_carry_the_servers_message(served):
    client = _client(served[0])
    messages = [{"role": "user", "content": QUESTIONS[0]}]
    for stream in (False, True):
        with pytest.raises(openai.NotFoundError) as err:
            client.chat.completions.create(
                model="lloco", messages=messages, stream=stream, extra_body={"group": "no-such-group"}
            )
        assert err.value.status_code == 404
        assert "no-such-group" in err.value.message and "Traceback" not in err.value.message
        assert err.value.body["message"] in err.value.message  # the server's own message, whole
    with pytest.raises(openai.UnprocessableEntityError) as err:
        client.chat.completions.create(model="lloco", messages=messages, temperature=-1)
    assert err.value.status_code == 422 and "temperature" in err.value.message
