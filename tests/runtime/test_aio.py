"""``lloco_runtime.aio.iterate_in_thread``: a blocking iterator consumed from the event loop, each step off
the loop; with ``same_thread=True`` every step and the close on one dedicated thread (what ``lloco serve``'s
streams need: the replica's lock is taken and released in the generator body)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time

import pytest

from lloco_runtime.aio import iterate_in_thread


class Recorder:
    """A generator that records the thread of every step and of its ``finally``, sleeping per item (a
    decode step) and optionally holding an RLock, which only the thread that took it may release."""

    def __init__(self, n: int = 5, *, step_s: float = 0.02, lock: threading.RLock | None = None) -> None:
        self.n, self.step_s, self.lock = n, step_s, lock
        self.step_threads: list[int] = []
        self.close_thread: int | None = None
        self.produced = 0
        self.released = False

    def __call__(self):
        held = self.lock.acquire() if self.lock is not None else False
        try:
            for i in range(self.n):
                time.sleep(self.step_s)
                self.step_threads.append(threading.get_ident())
                self.produced += 1
                yield i
        finally:
            self.close_thread = threading.get_ident()
            if held:
                self.lock.release()  # RuntimeError on any other thread than the one that acquired it
                self.released = True


async def _consume_with_ticker(agen, limit: int | None = None) -> tuple[list, int]:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.002)
            ticks += 1

    task = asyncio.create_task(ticker())
    items = []
    try:
        async with contextlib.aclosing(agen) as it:
            async for item in it:
                items.append(item)
                if limit is not None and len(items) >= limit:
                    break
    finally:
        task.cancel()
    return items, ticks


def test_default_runs_steps_off_the_loop_and_keeps_the_loop_free():
    rec = Recorder(5)

    async def main():
        loop_thread = threading.get_ident()
        items, ticks = await _consume_with_ticker(iterate_in_thread(rec()))
        return loop_thread, items, ticks

    loop_thread, items, ticks = asyncio.run(main())
    assert items == [0, 1, 2, 3, 4]
    assert loop_thread not in rec.step_threads and rec.close_thread != loop_thread
    assert ticks >= 5  # the loop ran other tasks while the steps slept


def test_same_thread_runs_every_step_and_the_close_on_one_dedicated_thread():
    lock = threading.RLock()
    rec = Recorder(6, lock=lock)

    async def main():
        loop_thread = threading.get_ident()
        items, ticks = await _consume_with_ticker(
            iterate_in_thread(rec(), same_thread=True, thread_name="lloco-test-iter")
        )
        return loop_thread, items, ticks

    loop_thread, items, ticks = asyncio.run(main())
    assert items == list(range(6))
    assert len(set(rec.step_threads)) == 1 and rec.step_threads[0] != loop_thread
    assert rec.close_thread == rec.step_threads[0]
    assert rec.released and lock.acquire(blocking=False)  # released by its owner: free again
    lock.release()
    assert ticks >= 5
    deadline = time.monotonic() + 5  # the dedicated thread ends with the iteration
    while any(t.name.startswith("lloco-test-iter") for t in threading.enumerate()):
        assert time.monotonic() < deadline, "the iteration's thread outlived it"
        time.sleep(0.01)


@pytest.mark.parametrize("same_thread", [False, True])
def test_steps_follow_the_consumer_and_early_exit_closes_the_iterator(same_thread):
    """The iterator is not run ahead of its consumer; leaving early closes it (on its own thread when
    ``same_thread``), so a lock taken in its body is released."""
    # Only the dedicated thread promises to release a lock on the thread that took it; on the default
    # executor the close may land on another of its threads (which made this case flaky), so no lock there.
    rec = Recorder(50, step_s=0.005, lock=threading.RLock() if same_thread else None)

    async def main():
        items, _ = await _consume_with_ticker(iterate_in_thread(rec(), same_thread=same_thread), limit=3)
        return items

    items = asyncio.run(main())
    assert items == [0, 1, 2] and rec.produced == 3
    assert rec.close_thread is not None
    if same_thread:
        assert rec.released and rec.close_thread == rec.step_threads[0]


def test_same_thread_cancelled_mid_step_closes_on_the_same_thread_after_the_step():
    lock = threading.RLock()
    rec = Recorder(50, step_s=0.2, lock=lock)

    async def main():
        started = asyncio.Event()

        async def consume():
            async with contextlib.aclosing(iterate_in_thread(rec(), same_thread=True)) as it:
                async for _ in it:
                    started.set()

        task = asyncio.create_task(consume())
        await asyncio.wait_for(started.wait(), timeout=10)
        await asyncio.sleep(0.05)  # the second step is in flight
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert rec.produced in (1, 2)  # the step in flight finished; no step after it
    assert rec.released and rec.close_thread == rec.step_threads[0]


@pytest.mark.parametrize("same_thread", [False, True])
def test_errors_reach_the_consumer(same_thread):
    def broken():
        yield 1
        raise ValueError("boom")

    async def main():
        got = []
        with pytest.raises(ValueError, match="boom"):
            async for item in iterate_in_thread(broken(), same_thread=same_thread):
                got.append(item)
        return got

    assert asyncio.run(main()) == [1]
