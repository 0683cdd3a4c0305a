"""Blocking model work off the event loop: the helpers every async method of the LlamaIndex and LangChain
integrations, and the replicas of ``lloco serve``, use.

Decoding is CPU/GPU bound and the store is synchronous, so async methods run them on a worker thread.
:func:`iterate_in_thread` turns a blocking iterator (a token stream) into an async one: each ``next()`` runs
on a worker thread, so other tasks run between tokens; when the consumer stops or is cancelled, the step in
flight finishes on its thread and the iterator is then closed off the loop (a token stream's ``finally``
releases the adapter it pinned). With ``same_thread=True`` every step and the close run on one thread of
their own, for iterators that hold thread-bound state between items (a lock taken in the generator body,
torch's per-thread grad mode).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")
_DONE = object()


async def run_in_thread(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` on the loop's default executor, with the caller's context variables (so
    LlamaIndex instrumentation spans nest); the event loop keeps running meanwhile."""
    loop = asyncio.get_running_loop()
    ctx = contextvars.copy_context()
    return await loop.run_in_executor(None, functools.partial(ctx.run, fn, *args, **kwargs))


async def iterate_in_thread(
    iterator: Iterator[T], *, same_thread: bool = False, thread_name: str = "lloco-iter"
) -> AsyncIterator[T]:
    """Yield the items of a blocking ``iterator`` as they come, each ``next()`` on a worker thread.

    ``same_thread=False`` (default): each step on the loop's default executor, any of its threads.
    ``same_thread=True``: every step, and the close, on one dedicated thread (named ``thread_name``) that
    lives as long as the iteration: a generator may then take a ``threading.Lock`` or enter a thread-local
    mode in its body and leave it in its ``finally``, on the thread that entered it. Steps still run one
    at a time, when the consumer asks for the next item (the iterator never runs ahead of its consumer).

    On cancellation or early exit the ``next()`` in flight is left to finish (a thread cannot be
    interrupted) and the iterator is closed after it, off the loop (on the same dedicated thread with
    ``same_thread=True``); iterators without ``close`` are left alone.
    """
    loop = asyncio.get_running_loop()
    ctx = contextvars.copy_context()  # one context for every step: the iterator sees its own variables
    executor: Executor | None = (
        ThreadPoolExecutor(max_workers=1, thread_name_prefix=thread_name) if same_thread else None
    )
    pending: asyncio.Future | None = None
    try:
        while True:
            pending = loop.run_in_executor(executor, ctx.run, next, iterator, _DONE)
            item = await asyncio.shield(pending)  # on cancel, the step finishes in the background
            pending = None
            if item is _DONE:
                return
            yield item
    finally:
        await asyncio.shield(_close_after(pending, iterator, ctx, executor))


async def _close_after(
    pending: asyncio.Future | None,
    iterator: Iterator[Any],
    ctx: contextvars.Context,
    executor: Executor | None = None,
) -> None:
    try:
        if pending is not None:
            with contextlib.suppress(BaseException):  # the step's own error already reached the consumer
                await pending
        close = getattr(iterator, "close", None)
        if close is not None:
            await asyncio.get_running_loop().run_in_executor(executor, ctx.run, close)
    finally:
        if executor is not None:
            executor.shutdown(wait=False)  # its one thread ends once the close has run
