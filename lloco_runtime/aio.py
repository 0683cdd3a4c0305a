"""Blocking model work off the event loop: the helpers every async method of the LlamaIndex and LangChain
integrations uses.

Decoding is CPU/GPU bound and the store is synchronous, so async methods run them on a worker thread.
:func:`iterate_in_thread` turns a blocking iterator (a token stream) into an async one: each ``next()`` runs
on a worker thread, so other tasks run between tokens; when the consumer stops or is cancelled, the step in
flight finishes on its thread and the iterator is then closed off the loop (a token stream's ``finally``
releases the adapter it pinned).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")
_DONE = object()


async def run_in_thread(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` on the loop's default executor, with the caller's context variables (so
    LlamaIndex instrumentation spans nest); the event loop keeps running meanwhile."""
    loop = asyncio.get_running_loop()
    ctx = contextvars.copy_context()
    return await loop.run_in_executor(None, functools.partial(ctx.run, fn, *args, **kwargs))


async def iterate_in_thread(iterator: Iterator[T]) -> AsyncIterator[T]:
    """Yield the items of a blocking ``iterator`` as they come, each ``next()`` on a worker thread.

    On cancellation or early exit the ``next()`` in flight is left to finish (a thread cannot be
    interrupted) and the iterator is closed after it, off the loop; iterators without ``close`` are left
    alone.
    """
    loop = asyncio.get_running_loop()
    ctx = contextvars.copy_context()  # one context for every step: the iterator sees its own variables
    pending: asyncio.Future | None = None
    try:
        while True:
            pending = loop.run_in_executor(None, ctx.run, next, iterator, _DONE)
            item = await asyncio.shield(pending)  # on cancel, the step finishes in the background
            pending = None
            if item is _DONE:
                return
            yield item
    finally:
        await asyncio.shield(_close_after(pending, iterator, ctx))


async def _close_after(
    pending: asyncio.Future | None, iterator: Iterator[Any], ctx: contextvars.Context
) -> None:
    if pending is not None:
        with contextlib.suppress(BaseException):  # the step's own error already reached the consumer
            await pending
    close = getattr(iterator, "close", None)
    if close is not None:
        await asyncio.get_running_loop().run_in_executor(None, ctx.run, close)
