"""Concurrency: parallel questions over groups with different adapters answer exactly as one at a time;
concurrent ingests of one file store it once; the connection pool stays bounded and survives a server restart.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from reliability_helpers import TEXTS, docs, make_adapter_bytes, new_schema, open_store
from sqlalchemy import create_engine, func, select, text

from lloco_runtime.errors import LLoCOError, StoreError

GROUPS = ("alpha", "beta", "gamma")
QUESTIONS = [
    "When was the lighthouse built?",
    "How do I reset the pump?",
    "How is sourdough baked?",
    "What is the tower made of?",
]


@pytest.fixture
def three_groups(pg_url, make_tiny_host):
    """A service over 3 groups (same texts, different metadata), each with its own active adapter; the runtime
    keeps at most 2 adapters loaded, so concurrent requests also evict and reload."""
    from lloco_runtime import ContextEncoder, EncoderConfig, LLoCO
    from lloco_runtime.service import LLoCOService

    host = make_tiny_host()
    lloco = LLoCO(
        host, ContextEncoder(host, EncoderConfig(segment_length=32, summary_length=4)), adapter_capacity=2
    )
    store = open_store(pg_url)
    for i, g in enumerate(GROUPS):
        store.ingest(docs(prefix=g, meta={"g": g}), group=g, encoder=lloco.encoder)
        store.register_adapter(
            g,
            make_adapter_bytes(host, lloco.encoder.fingerprint, seed=100 + i),
            base_fingerprint=host.fingerprint,
            encoder_fingerprint=lloco.encoder.fingerprint,
            activate=True,
        )
    yield LLoCOService(lloco, store)
    store.drop_schema()
    store.close()


def _jobs():
    return [(g, q) for g in GROUPS for q in QUESTIONS]


def test_8_threads_over_3_groups_answer_as_single_threaded(three_groups):
    service = three_groups
    ask = lambda job: service.answer(job[1], group=job[0], max_new_tokens=6, top_k=2).answer
    expected = {job: ask(job) for job in _jobs()}
    per_group = [{expected[(g, q)] for q in QUESTIONS} for g in GROUPS]
    assert len({expected[(g, QUESTIONS[0])] for g in GROUPS}) > 1, (
        "adapters must change answers for this test"
    )
    assert all(per_group)
    work = _jobs() * 3
    with ThreadPoolExecutor(max_workers=8) as pool:
        got = list(pool.map(ask, work))
    mismatches = [(job, a) for job, a in zip(work, got, strict=True) if a != expected[job]]
    assert not mismatches, f"{len(mismatches)} of {len(work)} concurrent answers differ: {mismatches[:3]}"
    assert len(service.lloco.adapters.loaded()) <= 2


def test_8_async_tasks_through_both_integrations(three_groups):
    from lloco_index import LLoCOLLM as IndexLLM
    from lloco_langchain import LLoCOLLM

    service = three_groups
    store = service.store
    payload = {}
    for g in GROUPS:
        res = store.retrieve("lighthouse pump sourdough", group=g, top_k=2, load_cheat_sheets=False)
        payload[g] = ([c.chunk_id for c in res.chunks], res.adapter_id)
    lc = LLoCOLLM(service=service, max_new_tokens=6)
    li = IndexLLM(service.lloco, store=store, max_new_tokens=6)
    jobs = _jobs()
    expected_lc = {
        j: lc.invoke(j[1], cheat_sheet_ids=payload[j[0]][0], adapter_id=payload[j[0]][1]) for j in jobs
    }
    expected_li = {
        j: li.complete(j[1], cheat_sheet_ids=payload[j[0]][0], adapter_id=payload[j[0]][1]).text for j in jobs
    }
    assert len(set(expected_lc.values())) > 1

    async def run():
        sem = asyncio.Semaphore(8)  # 8 tasks in flight at a time

        async def one(kind, job):
            async with sem:
                ids, aid = payload[job[0]]
                if kind == "lc":
                    return await lc.ainvoke(job[1], cheat_sheet_ids=ids, adapter_id=aid)
                return (await li.acomplete(job[1], cheat_sheet_ids=ids, adapter_id=aid)).text

        work = [(k, j) for j in jobs * 2 for k in ("lc", "li")]
        return work, await asyncio.gather(*(one(k, j) for k, j in work))

    work, got = asyncio.run(run())
    for (kind, job), answer in zip(work, got, strict=True):
        assert answer == (expected_lc if kind == "lc" else expected_li)[job], (kind, job)


def test_4_concurrent_ingests_of_one_file_store_it_once(pg_url, tiny_encoder, tmp_path):
    path = tmp_path / "manual.txt"
    path.write_text(" ".join(TEXTS.values()) * 4, encoding="utf-8")
    schema = new_schema()
    stores = [open_store(pg_url, schema) for _ in range(4)]  # four clients, four connection pools
    try:
        barrier = threading.Barrier(4)

        def ingest(store):
            barrier.wait()
            return store.ingest_paths([path], group="g", encoder=tiny_encoder)

        for _ in range(2):  # the second round: everyone finds it unchanged
            with ThreadPoolExecutor(max_workers=4) as pool:
                reports = list(pool.map(ingest, stores))
            statuses = sorted(r.documents[0].status for r in reports)
            assert statuses.count("added") <= 1 and set(statuses) <= {"added", "unchanged"}, statuses
            (doc,) = stores[0].list_documents("g")
            chunks = stores[0].list_chunks("g")
            assert doc.doc_id == "manual" and len(chunks) == doc.n_chunks
            assert [c.ordinal for c in chunks] == list(range(doc.n_chunks))
            assert stores[0].status().counts["cheat_sheets"] == doc.n_chunks
    finally:
        stores[0].drop_schema()
        for s in stores:
            s.close()


def test_connection_pool_is_bounded(pg_url, tiny_encoder):
    """24 threads hammering one store never open more than pool_size + max_overflow (10) connections."""
    app = f"lloco_pool_{new_schema()}"
    url = pg_url + ("&" if "?" in pg_url else "?") + f"application_name={app}"
    store = open_store(url)
    store.ingest(docs(), group="g", encoder=tiny_encoder)
    from lloco_runtime.store.server import sqlalchemy_url

    observer = create_engine(sqlalchemy_url(pg_url))
    peak, stop = [0], threading.Event()

    def watch():
        with observer.connect() as conn:
            while not stop.is_set():
                n = conn.execute(
                    select(func.count())
                    .select_from(text("pg_stat_activity"))
                    .where(text("application_name = :a").bindparams(a=app))
                ).scalar_one()
                peak[0] = max(peak[0], n)
                time.sleep(0.01)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with ThreadPoolExecutor(max_workers=24) as pool:
            results = list(
                pool.map(
                    lambda i: store.retrieve(
                        f"lighthouse {i}", group="g", mode="hybrid", load_cheat_sheets=True
                    ),
                    range(240),
                )
            )
        assert all(r.chunks for r in results)
    finally:
        stop.set()
        watcher.join()
        store.drop_schema()
        store.close()
        observer.dispose()
    print(f"\npeak connections with 24 threads: {peak[0]}")
    assert 1 <= peak[0] <= 10


@pytest.mark.slow
def test_requests_fail_cleanly_while_the_server_restarts_then_recover(tiny_encoder):
    from lloco_runtime.store.server import start_embedded, stop_embedded

    root = Path(tempfile.mkdtemp(prefix="lloco-pgr-"))
    data = root / "data"
    url = start_embedded(data)
    store = open_store(url)
    try:
        store.ingest(docs(), group="g", encoder=tiny_encoder)
        outcomes: list[tuple[float, str]] = []
        stop = threading.Event()

        def client():
            while not stop.is_set():
                try:
                    store.retrieve("lighthouse", group="g", top_k=2)
                    outcomes.append((time.monotonic(), "ok"))
                except LLoCOError as exc:
                    assert isinstance(exc, StoreError) and "database" in str(exc), exc
                    outcomes.append((time.monotonic(), "store-error"))
                except Exception as exc:  # noqa: BLE001 - anything else is a failure of the test
                    outcomes.append((time.monotonic(), f"raw {type(exc).__name__}: {exc}"))
                time.sleep(0.02)

        threads = [threading.Thread(target=client) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        stop_embedded(data)
        down_at = time.monotonic()
        time.sleep(1.5)
        assert start_embedded(data) == url
        up_at = time.monotonic()
        time.sleep(2.0)
        stop.set()
        for t in threads:
            t.join()
        raw = [o for _, o in outcomes if o.startswith("raw")]
        assert not raw, raw[:3]
        assert any(o == "ok" for ts, o in outcomes if ts < down_at)
        assert any(o == "store-error" for ts, o in outcomes if down_at < ts < up_at), (
            "no request saw the outage"
        )
        late = [o for ts, o in outcomes if ts > up_at + 1.0]
        assert late and all(o == "ok" for o in late), late[-5:]
        # After the restart the pool recovered: writes work too, and nothing was lost.
        store.ingest(docs(prefix="after-"), group="g", encoder=tiny_encoder)
        assert len(store.list_documents("g")) == 2 * len(TEXTS)
        with pytest.raises(StoreError, match="database"):
            stop_embedded(data)
            store.list_groups()
    finally:
        stop_embedded(data)
        store.close()
        shutil.rmtree(root, ignore_errors=True)
