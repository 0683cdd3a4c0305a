"""``lloco serve``: LLoCO over HTTP as a Ray Serve application with a FastAPI ingress.

Two deployments:

- :class:`LLoCOIngress` (FastAPI, async, light): validates requests, retrieves (embeds the question, searches
  Postgres, loads the cheat sheets checked against the decoder's encoder fingerprint), then hands one decode
  job per request to the decoder through a deployment handle; the job carries its adapter id.
- :class:`LLoCODecoder` (``--replicas N``): the decoder + encoder (``LLoCO``) with the store as its adapter
  source. Every request goes through ``@serve.batch``: one :meth:`LLoCO.generate_stream_batch` call per
  batch, whatever adapters its requests use. Rows with different adapters (group adapters, the encoder's
  reader, none) share every forward pass (peft's mixed-batch LoRA inference); only when
  :meth:`LoadedModel.can_mix` says they cannot (DoRA or other LoRA variants) does the core decode one
  sub-batch per adapter. The replica loads adapters from the store through its runtime's
  :class:`~lloco_runtime.adapters.AdapterManager` (LRU, ``MAX_ADAPTERS_PER_REPLICA`` besides the reader)
  and pins every adapter of a batch until the batch is done. Streaming requests share the same batches:
  the batch handler is an async generator (Serve's batched streaming) that hands every request its text after
  each forward pass (:meth:`LLoCO.generate_stream_batch`); a non-streaming request collects its answer.
  Requests arriving while a batch decodes wait for it and form the next batch together (:class:`IdleGate`).

Why not Serve's model multiplexing (``@serve.multiplexed``, ``multiplexed_model_id`` on the handle), which
the first version used for every request: on Ray 2.60 ``@serve.batch`` splits each batch by multiplexed
model id (``ray/serve/batching.py``, ``_split_batch_by_model_id``), so with two groups a batch of 8 became
two ``generate_batch`` calls of ~4, one after the other; and multiplexed routing sends every request for an
adapter to the replicas that hold it until they are full (``max_ongoing_requests``), so with one busy group
one replica decodes while another idles. Loading an adapter from the store costs a few hundred ms once per
replica and the LRU keeps it, so affinity buys little next to full, mixed batches spread over every replica
by Serve's queue-length routing. No request, streaming or not, carries a multiplexed model id: one adapter
path (the runtime's), one routing rule. With many more groups than ``MAX_ADAPTERS_PER_REPLICA``, replicas
reload adapters more often; raise that limit (memory permitting).

Endpoints: ``POST /v1/ask`` (the ``lloco ask --json`` answer, or server-sent events with ``stream: true``),
``POST /v1/chat/completions`` (OpenAI wire format; ``group`` adds retrieval over the last user message),
``GET /healthz`` (asks a decoder replica, within ``health_timeout_s``: 200 with the model and the decode
counters, 503 with the reason when none answers). Errors are JSON ``{"error": {"message", "type",
"code"}}``: 404 unknown group/adapter, 422 bad input, 503 overloaded or a replica lost, 500 anything else
(never a traceback).

    from lloco_runtime.serve import ServeOptions, run_server
    run_server(ServeOptions(replicas=2, port=8000))   # blocks; `lloco serve` does this
"""

import asyncio
import contextlib
import json
import logging
import os
import signal
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import ray
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

from .aio import iterate_in_thread
from .errors import ConfigError, InputError, LLoCOError, NotFoundError, StoreError
from .request import (
    Answer,
    RunStats,
    adapter_key,
    check_found,
    context_sheets,
    sources,
    stop_sequences,
)
from .runtime import AdapterChoice, route_adapter
from .store import DEFAULT_COLLECTION, DEFAULT_MODE, DEFAULT_TOP_K, RetrievalMode, RetrievalOptions

log = logging.getLogger(__name__)

APP_NAME = "lloco"
MAX_ADAPTERS_PER_REPLICA = 4  # adapters a decoder replica keeps loaded besides the reader (LRU; a batch pins)
_ENV_PASSED = (
    "LLOCO_HOME",
    "LLOCO_CACHE_DIR",
    "LLOCO_DATABASE_URL",
    "LLOCO_SCHEMA",
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "HF_HOME",
    "OMP_WAIT_POLICY",
    "TOKENIZERS_PARALLELISM",
)


@dataclass(frozen=True)
class ServeOptions:
    """Everything a server needs, as plain values (each replica builds its runtime and store from them)."""

    model: str | None = None  # decoder: None/'default' (SmolLM2-135M), a local HF folder or a .gguf
    encoder: str | None = None  # encoder folder (None: the shipped encoder of the default model)
    url: str | None = None  # Postgres URL (None: LLOCO_DATABASE_URL, else the embedded server)
    schema: str | None = None
    device: str | None = None
    dtype: str | None = None
    replicas: int = 1  # decoder replicas
    max_batch_size: int = 8  # requests decoded together by one generate_batch call
    batch_wait_s: float = 0.02  # how long a replica waits to fill a batch
    max_ongoing_requests: int = 16  # per decoder replica (>= max_batch_size, else batches never fill)
    max_queued_requests: int = 64  # waiting for a decoder replica beyond this: 503
    host: str = "127.0.0.1"
    port: int = 8000
    torch_threads: int | None = None  # per decoder replica (default: cores / replicas)
    # the ingress's question embedding: one thread. Measured with both cores busy decoding, the MiniLM
    # embedding of one question took 280 ms with 2 intra-op threads and 29 ms with 1 (each parallel op waits
    # for both threads to be scheduled).
    ingress_threads: int = 1
    request_timeout_s: float = 120.0  # a request still unanswered after this gets an error, never a hang
    health_timeout_s: float = 5.0  # GET /healthz: 503 when no decoder replica answers within this
    focus: bool = True  # question-aware literal tokens (LLoCO.focus); False reads sheets as stored
    focus_budget: str = "shared"  # LLoCO.focus_budget: "shared" or "chunk"

    def __post_init__(self) -> None:
        for name in ("replicas", "max_batch_size", "max_ongoing_requests", "max_queued_requests"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        for name in ("request_timeout_s", "health_timeout_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0 seconds, got {getattr(self, name)!r}")
        if self.batch_wait_s < 0:
            raise ConfigError(f"batch_wait_s must be >= 0 seconds, got {self.batch_wait_s}")
        if not 0 < self.port < 65536:
            raise ConfigError(f"port must be in 1..65535, got {self.port}")
        if self.torch_threads is not None and self.torch_threads < 1:
            raise ConfigError(f"torch_threads must be a positive integer, got {self.torch_threads}")
        if not isinstance(self.ingress_threads, int) or self.ingress_threads < 1:
            raise ConfigError(f"ingress_threads must be a positive integer, got {self.ingress_threads!r}")
        if self.focus_budget not in ("shared", "chunk"):
            raise ConfigError(f"focus_budget must be 'shared' or 'chunk', got {self.focus_budget!r}")


# -- wire types -------------------------------------------------------------------------------------------


class AskRequest(BaseModel):
    """``POST /v1/ask``: the options of ``lloco ask``."""

    model_config = ConfigDict(extra="forbid")

    question: str = Field(min_length=1, description="the question")
    group: str = Field(min_length=1, description="document group to search")
    collection: str = Field(DEFAULT_COLLECTION, min_length=1)
    top_k: int = Field(DEFAULT_TOP_K, ge=1, le=100, description="chunks to retrieve")
    mode: RetrievalMode = DEFAULT_MODE
    adapter: int | AdapterChoice = Field(
        AdapterChoice.ACTIVE,
        description="'active': the group's active adapter; 'none': no group adapter; or an adapter id",
    )
    max_new_tokens: int = Field(64, ge=1, le=4096)
    stream: bool = False
    with_text: bool = Field(False, description="include each source chunk's text in `sources`")


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["text"] = "text"
    text: str


class ChatMessageIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant"]
    content: str | list[TextPart]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatRequest(BaseModel):
    """``POST /v1/chat/completions``: OpenAI's request plus lloco's retrieval fields."""

    model_config = ConfigDict(extra="ignore")  # OpenAI clients send fields lloco has no use for (user, ...)

    model: str = "lloco"
    messages: list[ChatMessageIn] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1, le=4096)
    max_completion_tokens: int | None = Field(None, ge=1, le=4096)
    temperature: float | None = Field(None, ge=0, le=2, description="default 0: greedy")
    top_p: float = Field(1.0, gt=0, le=1)
    seed: int | None = None
    n: int = Field(1, ge=1, le=1, description="one choice per request")
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    # lloco extras
    group: str | None = Field(
        None, min_length=1, description="retrieve from this group with the last user message"
    )
    collection: str = Field(DEFAULT_COLLECTION, min_length=1)
    top_k: int = Field(DEFAULT_TOP_K, ge=1, le=100)
    mode: RetrievalMode = DEFAULT_MODE
    adapter: int | AdapterChoice = AdapterChoice.ACTIVE


@dataclass
class DecodeJob:
    """One request as the decoder sees it: a question (ask) or messages (chat), its cheat sheets (in the
    order they go into the prompt), the adapter, and the decoding options."""

    question: str | None
    messages: list[dict[str, str]] | None
    sheets: list[Any]  # torch tensors
    adapter_id: str | None
    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass(frozen=True)
class BatchInfo:
    """The ``generate_batch`` call a request was decoded in: its rows, the distinct adapters of those rows
    (None, the plain decoder, counts as one), and whether all rows shared each forward pass (False only when
    the adapters could not be mixed and the core decoded one sub-batch per adapter)."""

    rows: int = 1
    adapters: int = 1
    shared_forward: bool = True

    @property
    def mixed(self) -> bool:
        """Rows with different adapters decoded in the same forward passes."""
        return self.adapters > 1 and self.shared_forward


@dataclass
class DecodeOut:
    """A decoded request: the text and the numbers of the run (the request layer's :class:`RunStats`), and
    the batch it was decoded in."""

    text: str = ""
    stats: RunStats = field(default_factory=RunStats)
    error: BaseException | None = field(default=None, repr=False)
    batch: BatchInfo | None = None


# -- errors -----------------------------------------------------------------------------------------------


class ServeStartError(LLoCOError, RuntimeError):
    """Ray Serve could not be started (proxy not up in time, port taken)."""


class ServiceUnavailable(Exception):
    """Overloaded, or the replica serving the request was lost: the client should retry."""


def _unwrap(exc: BaseException) -> BaseException:
    """The exception a deployment raised, not Ray's wrapper (whose text holds a remote traceback)."""
    from ray.exceptions import RayTaskError

    seen = 0
    while isinstance(exc, RayTaskError) and seen < 5:
        cause = getattr(exc, "cause", None)
        if cause is None:
            break
        exc, seen = cause, seen + 1
    return exc


def _is_replica_lost(exc: BaseException) -> bool:
    from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError, WorkerCrashedError

    return isinstance(exc, (RayActorError, ActorDiedError, ActorUnavailableError, WorkerCrashedError))


def error_status(exc: BaseException) -> tuple[int, str, str]:
    """(HTTP status, error type, short message) for an exception; never a traceback."""
    exc = _unwrap(exc)
    if isinstance(exc, NotFoundError):
        return 404, "not_found", str(exc)
    if isinstance(exc, InputError):
        return 422, "invalid_request", str(exc)
    if isinstance(exc, BackPressureError):
        return (
            503,
            "overloaded",
            (
                "the server is at capacity (every decoder replica's queue is full); retry "
                "later, or start it with more --replicas"
            ),
        )
    if isinstance(exc, ServiceUnavailable):
        return 503, "unavailable", str(exc)
    if _is_replica_lost(exc):
        return (
            503,
            "unavailable",
            "the decoder replica serving this request was lost; retry (Serve restarts it)",
        )
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
        return 503, "timeout", "the request was not answered in time (server busy); retry later"
    if isinstance(exc, StoreError):
        return 503, "store_unavailable", str(exc)
    if isinstance(exc, LLoCOError):
        return 500, "server_error", str(exc)
    return 500, "server_error", f"internal error ({type(exc).__name__}); the server log has the details"


def error_body(status: int, kind: str, message: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "code": status}}


def error_response(exc: BaseException) -> JSONResponse:
    status, kind, message = error_status(exc)
    if status >= 500 and kind == "server_error":
        log.error("request failed: %s", message, exc_info=_unwrap(exc))
    return JSONResponse(error_body(status, kind, message), status_code=status)


def _sse(obj: Any) -> str:
    return f"data: {json.dumps(obj)}\n\n"


# -- the decoder deployment -------------------------------------------------------------------------------


def _build_runtime(opts: ServeOptions):
    from .runtime import LLoCO

    return LLoCO.from_pretrained(
        opts.model,
        encoder=opts.encoder,
        device=opts.device,
        dtype=opts.dtype,
        adapter_capacity=MAX_ADAPTERS_PER_REPLICA + 1,  # + the encoder's reader
        focus=opts.focus,
        focus_budget=opts.focus_budget,
    )


def _open_store(opts: ServeOptions):
    from .store import CheatSheetStore

    return CheatSheetStore(opts.url, schema=opts.schema, create=False)


class IdleGate:
    """Holds a replica's new requests while a batch decodes, so that they enter Serve's batch queue together.

    Ray Serve's ``@serve.batch`` (2.60, ``ray/serve/batching.py``, ``_process_batches``) forms the next batch
    as soon as a request arrives, within ``batch_wait_timeout_s``, even while the previous batch still runs:
    the new batch then waits on the ``max_concurrent_batches`` semaphore. Under steady load each request
    arrived alone during a running batch and became a batch of one queued behind it (measured: 192 requests
    at 1-8 clients on 2 replicas, never two in one batch). Behind this gate the requests that arrive during a
    batch wait until it ends and are then handed to the batcher in the same event-loop turn, so the next
    batch takes all of them (up to ``max_batch_size``).

    One gate per replica, used on its event loop only: :meth:`wait` before queueing a request,
    :meth:`running` around the batch handler.
    """

    def __init__(self) -> None:
        self._running = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def wait(self) -> None:
        """Return at once when no batch runs, else when the running one ends."""
        await self._idle.wait()

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        self._running += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._running -= 1
            if self._running == 0:
                self._idle.set()


@serve.deployment(name="LLoCODecoder")
class LLoCODecoder:
    """The model replicas: every request, streamed or not, decoded in batches that mix adapters;
    adapters loaded from the store by the runtime's adapter manager (no Serve multiplexing: see the module
    docstring)."""

    def __init__(self, opts: ServeOptions) -> None:
        import torch

        from .service import LLoCOService

        torch.set_num_threads(opts.torch_threads or max(1, (os.cpu_count() or 1) // opts.replicas))
        self.service = LLoCOService(_build_runtime(opts), _open_store(opts))  # store = the adapter source
        self.lloco = self.service.lloco
        self._lock = threading.Lock()  # one decode at a time per replica (CPU-bound)
        self._gate = IdleGate()  # requests arriving during a batch wait and form the next one together
        self._decode_batch.set_max_batch_size(opts.max_batch_size)
        self._decode_batch.set_batch_wait_timeout_s(opts.batch_wait_s)

    async def info(self) -> dict[str, Any]:
        """Who this replica is (cheap: no model work; ``GET /healthz`` asks it). The loaded adapters are read
        off the event loop: the adapter manager's lock is held while an adapter loads."""
        host = self.lloco.host
        loaded = await asyncio.to_thread(self.lloco.adapters.loaded)
        return {
            "model": host.name,
            "model_fingerprint": host.fingerprint,
            "dtype": str(host.dtype),
            "device": str(host.device),
            "encoder_fingerprint": self.lloco.encoder.fingerprint,
            "pid": os.getpid(),
            "replica": serve.get_replica_context().replica_id.unique_id,
            "adapters_loaded": loaded,
        }

    def _prompt(self, job: DecodeJob):
        sheets = [s.to(self.lloco.host.dtype) for s in job.sheets] or None
        if job.messages is not None:
            return self.lloco.prompt_chat(job.messages, sheets)
        return self.lloco.prompt(job.question or "", sheets)

    @staticmethod
    def _config(job: DecodeJob):
        from .generation import GenerationConfig

        return GenerationConfig(
            max_new_tokens=job.max_new_tokens,
            temperature=job.temperature,
            top_p=job.top_p,
            stop=job.stop,
            seed=job.seed,
        )

    def _batch_steps(self, jobs: list[DecodeJob]) -> Iterator[list[list[dict[str, Any]]]]:
        """The decoding of one batch, step by step (runs on one thread from start to close: the replica lock
        is released by the thread that took it): yields, after every forward pass, one list of events per
        job: ``{"delta": text}``, then ``{"done": DecodeOut}`` when the job is finished, or ``{"error": exc}``.

        One :meth:`LLoCO.generate_stream_batch` call for the batch, whatever adapters its requests use (each
        with its own decoding options), streaming or not. Every adapter of the batch is loaded and pinned
        first, one by one: a request whose adapter cannot be loaded (unknown, made for other weights) fails
        alone, as does one whose prompt cannot be built (too long, bad messages)."""
        from .generation import StreamStats

        events: list[list[dict[str, Any]]] = [[] for _ in jobs]
        ready: list[tuple[int, Any, Any, str | None]] = []  # (job index, prompt, config, adapter id)
        for i, job in enumerate(jobs):
            try:
                prompt = self._prompt(job)
                ready.append((i, prompt, self._config(job), self.lloco.adapter_for(prompt, job.adapter_id)))
            except Exception as exc:  # noqa: BLE001 - reported to that request only
                events[i].append({"error": exc})
        with self._lock, contextlib.ExitStack() as pins:
            names: dict[str | None, str | None] = {None: None}
            for aid in dict.fromkeys(a for _, _, _, a in ready):
                if aid is None:
                    continue
                try:
                    names[aid] = pins.enter_context(self.lloco.adapters.acquire(aid))
                except Exception as exc:  # noqa: BLE001 - the requests of that adapter fail, not the batch
                    for i, _, _, a in ready:
                        if a == aid:
                            events[i].append({"error": exc})
            ready = [r for r in ready if r[3] in names]
            if any(events):
                yield events
                events = [[] for _ in jobs]
            if not ready:
                return
            rows = [names[a] for _, _, _, a in ready]
            batch = BatchInfo(
                rows=len(ready), adapters=len(set(rows)), shared_forward=self.lloco.host.can_mix(rows)
            )
            states = [StreamStats() for _ in ready]
            sent = [False] * len(ready)
            try:
                for step in self.lloco.generate_stream_batch(
                    [p for _, p, _, _ in ready],
                    adapter_ids=[a for _, _, _, a in ready],
                    configs=[c for _, _, c, _ in ready],
                    states=states,
                ):
                    for k, ((i, _, _, _), (text, finished), st) in enumerate(
                        zip(ready, step, states, strict=True)
                    ):
                        if text:
                            events[i].append({"delta": text})
                        if finished and not sent[k]:
                            sent[k] = True
                            stats = RunStats.of(st, len(jobs[i].sheets))
                            events[i].append({"done": DecodeOut(text=st.text, stats=stats, batch=batch)})
                    yield events
                    events = [[] for _ in jobs]
            except Exception as exc:  # noqa: BLE001 - the batch failed: every unfinished request gets the error
                failed = {r[0] for k, r in enumerate(ready) if not sent[k]}
                yield [[{"error": exc}] if i in failed else [] for i in range(len(jobs))]

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.02)
    async def _decode_batch(self, jobs: list[DecodeJob]) -> AsyncIterator[list[Any]]:
        """Serve's batcher hands the concurrent requests of this replica over together; one list per forward
        pass, one entry per request: its events, or ``StopIteration`` once it has its result."""
        ended = [False] * len(jobs)
        with self._gate.running():
            async with contextlib.aclosing(
                iterate_in_thread(self._batch_steps(jobs), same_thread=True, thread_name="lloco-decode")
            ) as steps:
                async for per_job in steps:
                    out: list[Any] = []
                    for i, evs in enumerate(per_job):
                        out.append(StopIteration if ended[i] else evs)
                        ended[i] = ended[i] or any("done" in e or "error" in e for e in evs)
                    yield out

    async def _events(self, job: DecodeJob) -> AsyncIterator[dict[str, Any]]:
        """This request's events from the batch it joins; a request arriving while a batch decodes waits for
        it (:class:`IdleGate`) and joins the next one."""
        await self._gate.wait()
        async for evs in self._decode_batch(job):
            for ev in evs:
                if "error" in ev:
                    raise ev["error"]
                yield ev
                if "done" in ev:
                    return

    async def decode(self, job: DecodeJob) -> DecodeOut:
        """Decode one request, batched with the concurrent requests on this replica (any adapters, streaming
        or not)."""
        async for ev in self._events(job):
            if "done" in ev:
                return ev["done"]
        raise RuntimeError("the decoder ended a request without a result")

    async def stream(self, job: DecodeJob) -> AsyncIterator[dict[str, Any]]:
        """Yield ``{"delta": text}`` as tokens come, then ``{"done": DecodeOut}``; decoded in the same batches
        as every other request of this replica."""
        async for ev in self._events(job):
            yield ev


# -- the HTTP ingress -------------------------------------------------------------------------------------

app = FastAPI(
    title="lloco", description="LLoCO: answers over compressed cheat sheets with per-group adapters"
)


@app.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    parts = []
    for e in exc.errors()[:5]:
        where = ".".join(str(x) for x in e.get("loc", ()) if x != "body") or "body"
        parts.append(f"{where}: {e.get('msg', 'invalid')}")
    message = "invalid request: " + "; ".join(parts) + " (see GET /docs for the request schema)"
    return JSONResponse(error_body(422, "invalid_request", message), status_code=422)


@app.exception_handler(Exception)
async def _any_error(request: Request, exc: Exception) -> JSONResponse:
    return error_response(exc)


# Defined before the ingress class: @serve.ingress copies the FastAPI app (and its routes' globals) when the
# class is decorated, so helpers the endpoints call must exist by then.
def _finish(reason: str) -> str:
    return "length" if reason == "length" else "stop"  # lloco's "eos"/"stop" are OpenAI's "stop"


def _usage(stats: RunStats) -> dict[str, int]:
    """OpenAI's ``usage`` names for the run's numbers."""
    prompt, completion = stats.prompt_tokens, stats.completion_tokens
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


@dataclass
class _Retrieved:
    """A request's retrieval (cheat sheets loaded) and the stored adapter it is answered with."""

    result: Any  # RetrievalResult
    adapter_id: int | None

    @property
    def sheets(self) -> list[Any]:
        return context_sheets(self.result)  # reading order; the decoder casts them to its dtype

    def answer(self, out: DecodeOut, *, with_text: bool = False) -> dict[str, Any]:
        """The ``/v1/ask`` answer: :meth:`Answer.to_dict`, as ``lloco ask --json`` prints it."""
        a = Answer.of(self.result, text=out.text, adapter_id=self.adapter_id, stats=out.stats)
        return a.to_dict(with_text=with_text)

    def lloco_extra(self) -> dict[str, Any]:
        """What a chat completion adds about the retrieval (its ``lloco`` field)."""
        return {
            "sources": [
                {"doc_id": s.doc_id, "chunk_id": s.chunk_id, "score": s.score} for s in sources(self.result)
            ],
            "adapter_id": self.adapter_id,
            "context_tokens": self.result.context_tokens,
            "raw_context_tokens": self.result.raw_context_tokens,
        }


@serve.deployment(name="LLoCOIngress")
@serve.ingress(app)
class LLoCOIngress:
    """HTTP front: validation, retrieval, then one decode job per request to :class:`LLoCODecoder`."""

    def __init__(self, decoder: DeploymentHandle, opts: ServeOptions) -> None:
        import torch

        torch.set_num_threads(opts.ingress_threads)  # small per-request work next to busy decoders
        self.decoder = decoder
        self.opts = opts
        self.store = _open_store(opts)
        self._decoder_info: dict[str, Any] | None = None
        # what the decoded requests report about their batches (GET /healthz shows it): requests answered,
        # those decoded in a batch with other requests, those in a batch whose rows used different adapters
        # in the same forward passes, and the largest batch (rows, distinct adapters) seen
        self._decoding = {
            "requests": 0,
            "batched_with_others": 0,
            "in_mixed_adapter_batches": 0,
            "max_batch_rows": 0,
            "max_batch_adapters": 0,
        }

    async def _info(self) -> dict[str, Any]:
        if self._decoder_info is None:
            self._decoder_info = await self._call(lambda: self.decoder.info.remote())
        return self._decoder_info

    async def _call(self, make: Callable[[], Any], *, timeout_s: float | None = None) -> Any:
        """Await a handle call; a lost replica is retried once on another, then 503; never waits forever
        (``timeout_s`` per try, default the request timeout)."""
        for attempt in range(2):
            try:
                return await asyncio.wait_for(make(), timeout=timeout_s or self.opts.request_timeout_s)
            except BackPressureError:
                raise
            except Exception as exc:  # noqa: BLE001
                cause = _unwrap(exc)
                if not _is_replica_lost(cause) and not _is_replica_lost(exc):
                    raise cause from None
                if attempt == 1:
                    raise ServiceUnavailable(
                        "the decoder replica serving this request was lost and the retry "
                        "failed too; retry shortly (Serve is restarting it)"
                    ) from None
                log.warning("decoder replica lost (%s); retrying the request once", type(exc).__name__)
                await asyncio.sleep(0.2)
        raise AssertionError("unreachable")

    async def _retrieve(
        self, question: str, *, group: str, options: RetrievalOptions, adapter: int | AdapterChoice
    ) -> _Retrieved:
        """Retrieve as :class:`~lloco_runtime.service.LLoCOService` does (cheat sheets checked against the
        decoder's encoder), then route the adapter; the no-chunks error when nothing matched."""
        fingerprint = (await self._info())["encoder_fingerprint"]
        result = await asyncio.to_thread(
            self.store.retrieve,
            question,
            group=group,
            **options.as_kwargs(),
            encoder_fingerprint=fingerprint,
        )
        check_found(result)
        return _Retrieved(result, await self._adapter(adapter, result.adapter_id))

    async def _adapter(self, choice: int | AdapterChoice, group_adapter_id: int | None = None) -> int | None:
        """The stored adapter a request is answered with (:func:`route_adapter`); an id the request named is
        checked in the store now, so an unknown one is a 404 before any replica is asked."""
        adapter_id = route_adapter(choice, group_adapter_id)
        if adapter_id is not None and adapter_id != group_adapter_id:
            await asyncio.to_thread(adapter_key, adapter_id, self.store)
        return adapter_id

    async def _decode(self, job: DecodeJob) -> DecodeOut:
        # No multiplexed_model_id: the adapter travels in the job, so Serve's batcher does not split batches
        # by adapter and its router balances by queue length alone (see the module docstring).
        out: DecodeOut = await self._call(lambda: self.decoder.decode.remote(job))
        self._count(out)
        return out

    def _count(self, out: DecodeOut) -> None:
        """Record the batch a request (streamed or not) was decoded in, for ``GET /healthz``."""
        if out.batch is not None:
            d, b = self._decoding, out.batch
            d["requests"] += 1
            d["batched_with_others"] += b.rows > 1
            d["in_mixed_adapter_batches"] += b.mixed
            d["max_batch_rows"] = max(d["max_batch_rows"], b.rows)
            d["max_batch_adapters"] = max(d["max_batch_adapters"], b.adapters)

    async def _stream(self, job: DecodeJob) -> AsyncIterator[dict[str, Any]]:
        """The decoder's events; a replica lost before the first event is retried once."""
        for attempt in range(2):
            sent = False
            try:
                gen = self.decoder.options(stream=True).stream.remote(job)
                deadline = time.monotonic() + self.opts.request_timeout_s
                while True:
                    try:
                        item = await asyncio.wait_for(
                            gen.__anext__(), timeout=max(0.1, deadline - time.monotonic())
                        )
                    except StopAsyncIteration:
                        return
                    sent = True
                    if "done" in item:
                        self._count(item["done"])
                    yield item
            except BackPressureError:
                raise
            except Exception as exc:  # noqa: BLE001
                cause = _unwrap(exc)
                lost = _is_replica_lost(cause) or _is_replica_lost(exc)
                if not lost:
                    raise cause from None
                if sent or attempt == 1:
                    raise ServiceUnavailable(
                        "the decoder replica streaming this answer was lost; retry"
                    ) from None
                await asyncio.sleep(0.2)

    # -- endpoints --------------------------------------------------------------------------------------

    @app.get("/healthz", response_model=None)
    async def healthz(self) -> dict[str, Any] | JSONResponse:
        """Asks a decoder replica now (never a cached answer): 200 when one answers within
        ``health_timeout_s``, else 503 with the reason."""
        timeout = self.opts.health_timeout_s
        try:
            info = await self._call(lambda: self.decoder.info.remote(), timeout_s=timeout)
        except Exception as exc:  # noqa: BLE001 - every failure is the same answer: not healthy
            _, kind, message = error_status(exc)
            if isinstance(_unwrap(exc), (TimeoutError, asyncio.TimeoutError)):
                kind, message = (
                    "unavailable",
                    (
                        f"no decoder replica answered within {timeout:g} s: all of them dead or restarting, "
                        "or too busy to answer"
                    ),
                )
            body = error_body(503, kind, f"unhealthy: {message}")
            return JSONResponse({"status": "unavailable"} | body, status_code=503)
        self._decoder_info = info
        return {
            "status": "ok",
            "model": info["model"],
            "encoder_fingerprint": info["encoder_fingerprint"],
            "replicas": self.opts.replicas,
            "max_batch_size": self.opts.max_batch_size,
            "replica": {"id": info["replica"], "adapters_loaded": info["adapters_loaded"]},
            "decoding": dict(self._decoding),
        }

    @app.post("/v1/ask", response_model=None)
    async def ask(self, req: AskRequest) -> dict[str, Any] | JSONResponse | StreamingResponse:
        try:
            if not req.question.strip():
                raise InputError("the question is empty")
            r = await self._retrieve(
                req.question,
                group=req.group,
                options=RetrievalOptions(collection=req.collection, top_k=req.top_k, mode=req.mode),
                adapter=req.adapter,
            )
            job = DecodeJob(
                req.question,
                None,
                r.sheets,
                adapter_key(r.adapter_id, None),
                max_new_tokens=req.max_new_tokens,
            )
            if not req.stream:
                return r.answer(await self._decode(job), with_text=req.with_text)
        except Exception as exc:  # noqa: BLE001 - every error becomes a JSON response
            return error_response(exc)

        async def events() -> AsyncIterator[str]:
            try:
                async for ev in self._stream(job):
                    if "delta" in ev:
                        yield _sse({"delta": ev["delta"]})
                    else:
                        yield _sse(r.answer(ev["done"], with_text=req.with_text))
            except Exception as exc:  # noqa: BLE001 - headers are sent: the error is an event
                yield _sse(error_body(*error_status(exc)))
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(self, req: ChatRequest) -> dict[str, Any] | JSONResponse | StreamingResponse:
        from .prompt import chat_messages

        try:
            messages = [{"role": m.role, "content": m.text()} for m in req.messages]
            chat_messages(messages)  # checks the roles/order now: a 422, not a failed decode
            r = None
            if req.group is not None:
                question = next(m["content"] for m in reversed(messages) if m["role"] == "user")
                r = await self._retrieve(
                    question,
                    group=req.group,
                    options=RetrievalOptions(collection=req.collection, top_k=req.top_k, mode=req.mode),
                    adapter=req.adapter,
                )
                adapter = r.adapter_id
            else:  # no retrieval: only an explicit adapter id applies
                adapter = await self._adapter(req.adapter)
            job = DecodeJob(
                None,
                messages,
                r.sheets if r else [],
                adapter_key(adapter, None),
                max_new_tokens=req.max_completion_tokens or req.max_tokens or 256,
                temperature=req.temperature or 0.0,
                top_p=req.top_p,
                stop=stop_sequences(req.stop),
                seed=req.seed,
            )
            cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
            extra = {} if r is None else {"lloco": r.lloco_extra()}
            if not req.stream:
                out = await self._decode(job)
                return {
                    "id": cid,
                    "object": "chat.completion",
                    "created": created,
                    "model": req.model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": out.text.strip()},
                            "logprobs": None,
                            "finish_reason": _finish(out.stats.finish_reason),
                        }
                    ],
                    "usage": _usage(out.stats),
                } | extra
        except Exception as exc:  # noqa: BLE001
            return error_response(exc)

        def chunk(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
            return {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": req.model,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            }

        async def events() -> AsyncIterator[str]:
            try:
                yield _sse(chunk({"role": "assistant", "content": ""}, None))
                # The contents concatenate to the non-streamed message, which is stripped: whitespace at the
                # start is dropped, whitespace after a piece is held back until more text follows it.
                first, held = True, ""
                async for ev in self._stream(job):
                    if "delta" in ev:
                        text = held + ev["delta"]
                        if first:
                            text = text.lstrip()
                        body = text.rstrip()
                        held = text[len(body) :]
                        if body:
                            first = False
                            yield _sse(chunk({"content": body}, None))
                    else:
                        d = ev["done"].stats
                        yield _sse(chunk({}, _finish(d.finish_reason)) | extra)
                        if req.stream_options is not None and req.stream_options.include_usage:
                            yield _sse(
                                {
                                    "id": cid,
                                    "object": "chat.completion.chunk",
                                    "created": created,
                                    "model": req.model,
                                    "choices": [],
                                    "usage": _usage(d),
                                }
                            )
            except Exception as exc:  # noqa: BLE001
                yield _sse(error_body(*error_status(exc)))
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")


# -- running ----------------------------------------------------------------------------------------------


def build_app(opts: ServeOptions):
    """The Serve application: the ingress bound to ``opts.replicas`` decoder replicas."""
    decoder = LLoCODecoder.options(
        num_replicas=opts.replicas,
        max_ongoing_requests=max(opts.max_ongoing_requests, opts.max_batch_size),
        max_queued_requests=opts.max_queued_requests,
        ray_actor_options={"num_cpus": 0},
    ).bind(opts)
    return LLoCOIngress.options(
        num_replicas=1, max_ongoing_requests=1024, max_queued_requests=-1, ray_actor_options={"num_cpus": 0}
    ).bind(decoder, opts)


def start_server(
    opts: ServeOptions, *, num_cpus: int | None = None, name: str = APP_NAME, route_prefix: str = "/"
) -> str:
    """Start Ray (if needed) and Serve on ``opts.host:opts.port``, deploy the app as ``name`` under
    ``route_prefix``, return its base URL. Serve's HTTP options apply when Serve starts: a second app in the
    same Serve (another name and prefix) shares its host and port."""
    if not ray.is_initialized():
        env = {k: os.environ[k] for k in _ENV_PASSED if k in os.environ}
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        ray.init(
            num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": env}
        )
    http = {"host": opts.host, "port": opts.port, "request_timeout_s": opts.request_timeout_s + 30}
    for attempt in range(3):  # on a busy machine Serve's HTTP proxy can miss its 60 s start deadline
        try:
            serve.start(http_options=http)
            break
        except (TimeoutError, ray.exceptions.RayActorError) as exc:
            log.warning("Ray Serve did not start (%s); retrying", type(exc).__name__)
            serve.shutdown()
            if attempt == 2:
                raise ServeStartError(
                    f"Ray Serve's HTTP proxy did not start on {opts.host}:{opts.port} in 3 tries "
                    "(machine overloaded, or the port is taken?); free the port or retry"
                ) from None
    serve.run(build_app(opts), name=name, route_prefix=route_prefix, blocking=False)
    return f"http://{opts.host}:{opts.port}{route_prefix.rstrip('/')}"


def stop_server() -> None:
    """Delete the app and shut Serve down (Ray stays up)."""
    serve.shutdown()


def run_server(opts: ServeOptions, *, on_ready: Callable[[str], None] | None = None) -> None:
    """Start the server and block until Ctrl-C (or SIGTERM), then shut Serve and Ray down."""
    if threading.current_thread() is threading.main_thread():

        def stop(signum, frame):  # SIGTERM (docker stop, kill) stops as cleanly as Ctrl-C
            raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started in the background
    url = start_server(opts)
    if on_ready is not None:
        on_ready(url)
    try:
        while True:
            time.sleep(3600)
    finally:
        stop_server()
        ray.shutdown()


# -- load benchmark ---------------------------------------------------------------------------------------


def _percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


async def run_load(
    base_url: str,
    requests: Sequence[dict[str, Any]],
    *,
    concurrency: int,
    path: str = "/v1/ask",
    timeout_s: float = 120.0,
) -> dict[str, Any]:
    """Send ``requests`` (JSON bodies) with ``concurrency`` clients; each client takes the next request.

    Returns ``{"results": [(status, body or None, latency_s)], "seconds", "throughput_rps", "p50_s",
    "p95_s", "ok", "errors"}`` in request order; a client timeout is recorded as status 0 (never a hang).
    """
    import httpx

    results: list[tuple[int, Any, float] | None] = [None] * len(requests)
    nxt = iter(range(len(requests)))

    async def client(c: httpx.AsyncClient) -> None:
        for i in nxt:
            t0 = time.perf_counter()
            try:
                r = await c.post(path, json=requests[i])
                body = (
                    r.json() if r.headers.get("content-type", "").startswith("application/json") else r.text
                )
                results[i] = (r.status_code, body, time.perf_counter() - t0)
            except httpx.TimeoutException:
                results[i] = (0, "client timeout", time.perf_counter() - t0)
            except httpx.HTTPError as exc:
                results[i] = (-1, f"{type(exc).__name__}: {exc}", time.perf_counter() - t0)

    t0 = time.perf_counter()
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, timeout=timeout_s, limits=limits) as c:
        await asyncio.gather(*(client(c) for _ in range(concurrency)))
    seconds = time.perf_counter() - t0
    done = [r for r in results if r is not None]
    lat = [r[2] for r in done if r[0] == 200]
    return {
        "results": done,
        "seconds": round(seconds, 3),
        "concurrency": concurrency,
        "requests": len(requests),
        "ok": len(lat),
        "errors": len(done) - len(lat),
        "throughput_rps": round(len(lat) / seconds, 3) if seconds > 0 else 0.0,
        "p50_s": round(_percentile(lat, 0.5), 4),
        "p95_s": round(_percentile(lat, 0.95), 4),
    }


def bench_serving_http(
    base_url: str,
    requests: Sequence[dict[str, Any]],
    *,
    concurrency: Sequence[int] = (1, 4, 8),
    path: str = "/v1/ask",
    timeout_s: float = 120.0,
) -> dict[str, Any]:
    """Throughput and p50/p95 latency of a running server at each client concurrency (1 = one at a time).

    ``requests``: JSON bodies for ``path`` (e.g. ``{"question", "group", "max_new_tokens"}`` for /v1/ask).
    Returns ``{"url", "requests", "runs": [{concurrency, seconds, throughput_rps, p50_s, p95_s, ok, errors,
    speedup_vs_1}]}``; the same requests run at every level.
    """
    if not requests:
        raise InputError("bench_serving_http needs at least one request body")
    runs = []
    for n in concurrency:
        if n < 1:
            raise InputError(f"concurrency levels must be positive, got {n}")
        r = asyncio.run(run_load(base_url, requests, concurrency=n, path=path, timeout_s=timeout_s))
        r.pop("results")
        runs.append(r)
    base = next((r["throughput_rps"] for r in runs if r["concurrency"] == 1), None)
    for r in runs:
        r["speedup_vs_1"] = round(r["throughput_rps"] / base, 2) if base else None
    return {"url": base_url, "path": path, "requests": len(requests), "runs": runs}


def format_bench(report: dict[str, Any]) -> str:
    """A small table of :func:`bench_serving_http`'s report."""
    lines = [
        f"{report['requests']} requests to {report['url']}{report['path']}",
        "clients  req/s   p50 s   p95 s   ok/err  x vs 1",
    ]
    for r in report["runs"]:
        lines.append(
            f"{r['concurrency']:>7}  {r['throughput_rps']:>5.2f}  {r['p50_s']:>6.3f}  {r['p95_s']:>6.3f}  "
            f"{r['ok']:>3}/{r['errors']:<3} {r['speedup_vs_1'] or 0:>5.2f}"
        )
    return "\n".join(lines)


__all__ = [
    "AskRequest",
    "ChatRequest",
    "DecodeJob",
    "LLoCODecoder",
    "LLoCOIngress",
    "ServeOptions",
    "app",
    "bench_serving_http",
    "build_app",
    "error_status",
    "format_bench",
    "run_load",
    "run_server",
    "start_server",
    "stop_server",
]
