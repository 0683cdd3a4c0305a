"""create_lloco_chain with real LCEL runnables: invoke/batch/stream/async/events, callbacks, concurrency."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.documents import Document
from langchain_core.prompts import PromptTemplate
from langchain_core.runnables import RunnableLambda

from lloco_langchain import LLoCORetriever, create_lloco_chain
from lloco_runtime.errors import ConfigError, InputError

QUESTIONS = {"alpha": "When was the lighthouse built?", "beta": "How do I reset the pump?"}


@pytest.fixture(scope="module")
def chains(make_chain):
    return {g: make_chain(g) for g in QUESTIONS}


@pytest.fixture(scope="module")
def expected(chains):
    """Single-threaded answers, the reference for every other way of running the chains."""
    return {g: chains[g].invoke({"input": q})["answer"] for g, q in QUESTIONS.items()}


def test_invoke_shape_and_payload(chains, expected, lc_service):
    out = chains["alpha"].invoke({"input": QUESTIONS["alpha"]})
    assert set(out) == {"input", "context", "answer"} and out["input"] == QUESTIONS["alpha"]
    assert len(out["context"]) == 2 and all(isinstance(d, Document) for d in out["context"])
    assert out["answer"] == expected["alpha"] and out["answer"].strip()
    # The same as the service's own retrieve -> cheat sheets + group adapter -> answer path.
    svc = lc_service.answer(QUESTIONS["alpha"], group="alpha", top_k=2, max_new_tokens=8)
    assert out["answer"].strip() == svc.answer
    assert [d.metadata["chunk_id"] for d in out["context"]] == [s.chunk_id for s in svc.sources]


def test_groups_use_their_own_adapter(chains, expected, lc_service):
    """Swapping the adapter for the other group's changes the answer: the chain passes the right one."""
    docs = chains["alpha"].invoke({"input": QUESTIONS["alpha"]})["context"]
    ids = sorted(docs, key=lambda d: (d.metadata["doc_id"], d.metadata["ordinal"]))
    ids = [d.metadata["chunk_id"] for d in ids]
    beta_adapter = {g.name: g.active_adapter_id for g in lc_service.store.list_groups()}["beta"]
    wrong = lc_service.answer_chunks(QUESTIONS["alpha"], ids, adapter_id=beta_adapter, max_new_tokens=8).text
    assert wrong != expected["alpha"]


def test_batch(chains, expected):
    outs = chains["beta"].batch([{"input": QUESTIONS["beta"]}, {"input": QUESTIONS["beta"]}])
    assert [o["answer"] for o in outs] == [expected["beta"]] * 2


def test_stream_and_callbacks(chains, expected):
    class Recorder(BaseCallbackHandler):
        def __init__(self) -> None:
            self.tokens: list[str] = []

        def on_llm_new_token(self, token, **kwargs):
            self.tokens.append(token)

    rec = Recorder()
    parts = list(chains["alpha"].stream({"input": QUESTIONS["alpha"]}, config={"callbacks": [rec]}))
    answer = "".join(p["answer"] for p in parts if "answer" in p)
    assert answer == expected["alpha"] and len([p for p in parts if p.get("answer")]) > 1
    assert any("context" in p for p in parts)
    assert "".join(rec.tokens) == expected["alpha"] and rec.tokens == [
        p["answer"] for p in parts if p.get("answer")
    ]


async def test_async_invoke_stream_and_events(chains, expected):
    q = {"input": QUESTIONS["beta"]}
    assert (await chains["beta"].ainvoke(q))["answer"] == expected["beta"]
    parts = [p async for p in chains["beta"].astream(q)]
    assert "".join(p.get("answer", "") for p in parts) == expected["beta"]
    events = [e async for e in chains["beta"].astream_events(q, version="v2")]
    kinds = {e["event"] for e in events}
    assert {"on_retriever_end", "on_llm_start", "on_llm_stream", "on_llm_end", "on_chain_end"} <= kinds
    streamed = "".join(e["data"]["chunk"].text for e in events if e["event"] == "on_llm_stream")
    assert streamed == expected["beta"]
    llm_start = next(e for e in events if e["event"] == "on_llm_start")
    assert llm_start["data"]["input"]["prompts"] == [QUESTIONS["beta"]]


def test_concurrent_threads_get_their_own_adapters(chains, expected):
    jobs = [g for g in QUESTIONS for _ in range(3)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        outs = list(pool.map(lambda g: (g, chains[g].invoke({"input": QUESTIONS[g]})["answer"]), jobs))
    assert all(answer == expected[g] for g, answer in outs)
    streamed = list(
        ThreadPoolExecutor(2).map(
            lambda g: (g, "".join(p.get("answer", "") for p in chains[g].stream({"input": QUESTIONS[g]}))),
            list(QUESTIONS),
        )
    )
    assert all(answer == expected[g] for g, answer in streamed)


async def test_concurrent_asyncio_gets_their_own_adapters(chains, expected):
    async def stream(g):
        return g, "".join([p.get("answer", "") async for p in chains[g].astream({"input": QUESTIONS[g]})])

    async def invoke(g):
        return g, (await chains[g].ainvoke({"input": QUESTIONS[g]}))["answer"]

    outs = await asyncio.gather(*(f(g) for g in QUESTIONS for f in (stream, invoke, stream)))
    assert all(answer == expected[g] for g, answer in outs)


def test_custom_prompt_and_bound_llm(lc_service, lc_llm, expected):
    retriever = LLoCORetriever(service=lc_service, group="alpha", k=2)
    prompt = PromptTemplate.from_template("{input} Answer in one word.")
    out = create_lloco_chain(retriever, lc_llm.bind(max_new_tokens=3), prompt).invoke(
        {"input": QUESTIONS["alpha"]}
    )
    assert out["answer"] and out["answer"] != expected["alpha"]
    with pytest.raises(ConfigError, match="must not use \\{context\\}"):
        create_lloco_chain(retriever, lc_llm, PromptTemplate.from_template("{context}\n{input}"))


def test_documents_without_lloco_ids_are_refused(lc_llm):
    plain = RunnableLambda(lambda q: [Document(page_content="some text", metadata={"source": "x"})])
    with pytest.raises(InputError, match="no lloco 'chunk_id'"):
        create_lloco_chain(plain, lc_llm).invoke({"input": "anything?"})
    empty = RunnableLambda(lambda q: [])
    with pytest.raises(InputError, match="no documents"):
        create_lloco_chain(empty, lc_llm).invoke({"input": "anything?"})
    with pytest.raises(InputError, match="input"):
        create_lloco_chain(empty, lc_llm).invoke({"question": "anything?"})


def test_mixed_groups_are_refused(lc_service, lc_llm):
    a = LLoCORetriever(service=lc_service, group="alpha", k=1)
    b = LLoCORetriever(service=lc_service, group="beta", k=1)
    both = RunnableLambda(lambda q: a.invoke(q) + b.invoke(q))
    with pytest.raises(InputError, match="several groups"):
        create_lloco_chain(both, lc_llm).invoke({"input": "pump lighthouse"})
