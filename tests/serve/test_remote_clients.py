"""Remote clients against a running ``lloco serve``: the core ``LLoCOClient``, LlamaIndex's
``LLoCOQueryEngine.from_endpoint`` / ``LLoCOLLM.from_endpoint`` and LangChain's ``LLoCOLLM.from_endpoint``
give the in-process service's answers; server errors become lloco's exceptions; a dead URL says so."""

from __future__ import annotations

import asyncio
import socket

import pytest
from conftest import GROUPS, MAX_NEW, QUESTIONS

from lloco_runtime.client import LLoCOClient, RemoteError
from lloco_runtime.errors import InputError, NotFoundError

pytestmark = pytest.mark.ray


def _expected(service, group: str, question: str) -> dict:
    return service.answer(question, group=group, max_new_tokens=MAX_NEW).to_dict()


def test_client_ask_stream_and_async(served):
    url, service, _, _ = served
    client = LLoCOClient(url)
    assert client.health()["status"] == "ok"
    want = _expected(service, GROUPS[0], QUESTIONS[0])
    got = client.ask(QUESTIONS[0], group=GROUPS[0], max_new_tokens=MAX_NEW)
    assert got["answer"] == want["answer"] and got["sources"] == want["sources"]
    state: dict = {}
    deltas = list(client.stream_ask(QUESTIONS[0], group=GROUPS[0], max_new_tokens=MAX_NEW, state=state))
    assert "".join(deltas).strip() == want["answer"] == state["answer"]["answer"]

    async def both():
        a = await client.aask(QUESTIONS[0], group=GROUPS[0], max_new_tokens=MAX_NEW)
        st: dict = {}
        parts = [
            d
            async for d in client.astream_ask(QUESTIONS[0], group=GROUPS[0], max_new_tokens=MAX_NEW, state=st)
        ]
        return a, "".join(parts), st

    a, streamed, st = asyncio.run(both())
    assert a["answer"] == want["answer"] == streamed.strip() == st["answer"]["answer"]


def test_client_errors(served):
    url = served[0]
    client = LLoCOClient(url)
    with pytest.raises(NotFoundError, match="nope"):
        client.ask("q?", group="nope")
    with pytest.raises(InputError):
        client.ask("q?", group=GROUPS[0], top_k=0)
    with pytest.raises(InputError, match="empty"):
        client.ask("  ", group=GROUPS[0])
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    with pytest.raises(RemoteError, match="lloco serve"):
        LLoCOClient(dead, timeout=5).ask("q?", group="g")
    with pytest.raises(Exception, match="http"):
        LLoCOClient("127.0.0.1:8000")


def test_llamaindex_query_engine_and_llm_from_endpoint(served):
    from llama_index.core.llms import ChatMessage

    from lloco_index import CHUNK_ID, LLoCOLLM, LLoCOQueryEngine

    url, service, _, info = served
    want = _expected(service, GROUPS[1], QUESTIONS[1])
    engine = LLoCOQueryEngine.from_endpoint(url, group=GROUPS[1], max_new_tokens=MAX_NEW)
    r = engine.query(QUESTIONS[1])
    assert str(r) == want["answer"]
    assert [n.node.metadata[CHUNK_ID] for n in r.source_nodes] == [s["chunk_id"] for s in want["sources"]]
    texts = {c.chunk_id: c.text for c in service.store.list_chunks(GROUPS[1])}
    assert [n.node.get_content() for n in r.source_nodes] == [texts[s["chunk_id"]] for s in want["sources"]]
    assert r.metadata["adapter_id"] == info["adapters"][GROUPS[1]]
    streaming = LLoCOQueryEngine.from_endpoint(url, group=GROUPS[1], max_new_tokens=MAX_NEW, streaming=True)
    assert "".join(streaming.query(QUESTIONS[1]).response_gen).strip() == want["answer"]

    async def aquery():
        resp = await streaming.aquery(QUESTIONS[1])
        return "".join([d async for d in resp.async_response_gen()])

    assert asyncio.run(aquery()).strip() == want["answer"]
    llm = LLoCOLLM.from_endpoint(url, group=GROUPS[1], max_new_tokens=MAX_NEW)
    out = llm.complete(QUESTIONS[1])
    assert out.text and out.raw["cheat_sheet_ids"] == [s["chunk_id"] for s in want["sources"]]
    assert "".join(r.delta for r in llm.stream_complete(QUESTIONS[1])).strip() == out.text
    chat = llm.chat([ChatMessage(role="user", content=QUESTIONS[1])])
    assert chat.message.content == out.text


def test_langchain_llm_from_endpoint(served):
    from lloco_langchain import LLoCOLLM

    url, service, _, _ = served
    want = _expected(service, GROUPS[0], QUESTIONS[3])
    llm = LLoCOLLM.from_endpoint(url, group=GROUPS[0], max_new_tokens=MAX_NEW)
    assert llm.invoke(QUESTIONS[3]) == want["answer"]
    assert "".join(llm.stream(QUESTIONS[3])).strip() == want["answer"]
    assert asyncio.run(llm.ainvoke(QUESTIONS[3])) == want["answer"]
    with pytest.raises(InputError, match="cheat_sheet_ids"):
        llm.invoke(QUESTIONS[3], cheat_sheet_ids=[1])
    with pytest.raises(NotFoundError):
        llm.invoke(QUESTIONS[3], group="nope")


def test_bench_serving_section_against_the_server(served, tmp_path, capsys):
    import json

    from lloco_runtime.cli import main

    url = served[0]
    out = tmp_path / "bench.json"

    def bench(groups: str) -> int:
        args = ["bench", "--serve-url", url, "--serve-group", groups, "--serve-requests", "4"]
        return main(args + ["--serve-tokens", "4", "--json", str(out)])

    assert bench(GROUPS[0]) == 0
    text = capsys.readouterr().out
    assert "clients" in text and "req/s" in text
    runs = json.loads(out.read_text())["http_serving"]["runs"]
    assert [r["concurrency"] for r in runs] == [1, 4, 8]
    assert all(r["ok"] == 4 and r["errors"] == 0 and r["throughput_rps"] > 0 for r in runs)
    # several groups (the load: 2 groups, 2 adapters): requests take them in turn
    two = ",".join(GROUPS)
    assert bench(two) == 0
    capsys.readouterr()
    report = json.loads(out.read_text())["http_serving"]
    assert all(r["ok"] == 4 and r["errors"] == 0 for r in report["runs"])
    assert main(["bench", "--serve-url", url]) != 0  # no group: a clear error
    assert "--serve-group" in capsys.readouterr().err
