"""``LLoCOLLM``: the LLoCO decoder as a LangChain ``LLM``, reading cheat sheets by chunk id.

    llm = LLoCOLLM(service=service, max_new_tokens=64)
    llm.invoke("Who kept the light?", cheat_sheet_ids=[3, 4], adapter_id=7)
    bound = llm.bind(cheat_sheet_ids=[3, 4], adapter_id=7)   # the same, inside LCEL

The prompt string is the *question*: the runtime renders it with its own template, splicing the cheat
sheets (loaded from the store by id, fingerprint-checked) into the context slot. Without cheat sheets the
question is answered with no context.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models.llms import LLM
from langchain_core.outputs import Generation, GenerationChunk, LLMResult
from langchain_core.runnables.config import run_in_executor
from pydantic import ConfigDict, Field, PrivateAttr

from lloco_runtime.errors import ConfigError, InputError
from lloco_runtime.generation import GenerationConfig, StreamStats
from lloco_runtime.runtime import LLoCO
from lloco_runtime.service import LLoCOService

#: Per-call keyword arguments (``invoke(..., **kw)`` or ``.bind(**kw)``) besides LangChain's ``stop``.
CALL_KWARGS = frozenset({"cheat_sheet_ids", "adapter_id", "max_new_tokens", "temperature", "top_p", "top_k",
                         "seed"})
_DONE = object()


class LLoCOLLM(LLM):
    """A LangChain LLM over a :class:`~lloco_runtime.runtime.LLoCO` runtime (and optionally its store).

    Args:
        service: an :class:`~lloco_runtime.service.LLoCOService`; needed for ``cheat_sheet_ids`` and adapter
            ids stored in the database.
        lloco: a bare runtime instead (no store): plain questions, or adapters registered on
            ``lloco.adapters`` by id.
        adapter_id: default adapter when a call names none (per call ``adapter_id=None`` means the base model).
        max_new_tokens, temperature, top_p, top_k, seed, stop: decoding defaults, overridable per call.
        cache: must stay ``False``: LangChain's LLM cache keys ignore call arguments, so it would return an
            answer for other cheat sheets or another adapter.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    adapter_id: int | str | None = None
    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: list[str] | None = None
    cache: Any = Field(default=False, exclude=True)

    _service: LLoCOService | None = PrivateAttr(default=None)
    _lloco: LLoCO = PrivateAttr()

    def __init__(self, *, service: LLoCOService | None = None, lloco: LLoCO | None = None, **data: Any) -> None:
        if service is None and lloco is None:
            raise ConfigError("LLoCOLLM needs service=LLoCOService(...) (runtime + store) or lloco=LLoCO(...); "
                              "LLoCOLLM.from_defaults() builds the default service")
        if service is not None and lloco is not None and service.lloco is not lloco:
            raise ConfigError("pass either service= or lloco=, not two different runtimes")
        if data.get("cache", False) is not False:
            raise ConfigError("LLoCOLLM does not support LangChain's LLM cache (cache must be False): its keys "
                              "ignore call arguments, so answers for other cheat sheets or adapters would be "
                              "returned; cache whole chain outputs yourself if you need to")
        super().__init__(**data)
        self._service = service
        self._lloco = lloco if lloco is not None else service.lloco
        GenerationConfig(**self._gen_defaults())  # validate the decoding defaults now

    @classmethod
    def from_defaults(cls, **kwargs: Any) -> LLoCOLLM:
        """The default runtime over the default store (embedded Postgres under ``LLOCO_HOME``)."""
        return cls(service=LLoCOService.from_defaults(), **kwargs)

    @property
    def service(self) -> LLoCOService | None:
        return self._service

    @property
    def lloco(self) -> LLoCO:
        return self._lloco

    # -- LangChain metadata -------------------------------------------------------------------------------

    @property
    def _llm_type(self) -> str:
        return "lloco"

    @property
    def _identifying_params(self) -> Mapping[str, Any]:
        host = self._lloco.host
        return {"model_name": host.name, "base_fingerprint": host.fingerprint[:12],
                "encoder_fingerprint": self._lloco.encoder.fingerprint[:12], **self._gen_defaults(),
                "adapter_id": self.adapter_id}

    # -- the request ---------------------------------------------------------------------------------------

    def _gen_defaults(self) -> dict[str, Any]:
        return {"max_new_tokens": self.max_new_tokens, "temperature": self.temperature, "top_p": self.top_p,
                "top_k": self.top_k, "seed": self.seed}

    def _request(self, stop: list[str] | None, kwargs: dict[str, Any]):
        unknown = set(kwargs) - CALL_KWARGS
        if unknown:
            raise InputError(f"unknown LLoCOLLM argument(s) {sorted(unknown)}; known: {sorted(CALL_KWARGS)}")
        ids: Sequence[int] | None = kwargs.get("cheat_sheet_ids")
        if ids is not None and (isinstance(ids, (str, bytes)) or not all(isinstance(i, int) for i in ids)):
            raise InputError("cheat_sheet_ids must be a list of integer chunk ids (Document.metadata['chunk_id'])")
        adapter = kwargs.get("adapter_id", self.adapter_id)
        gen = {k: kwargs.get(k, v) for k, v in self._gen_defaults().items()}
        stops = tuple(stop if stop is not None else (self.stop or ()))
        return list(ids or []), adapter, GenerationConfig(stop=stops, **gen)

    def _tokens(self, prompt: str, stop: list[str] | None, kwargs: dict[str, Any], state: StreamStats) -> Iterator[str]:
        """Text deltas of one answer; ``state`` receives token counts and timings when it ends."""
        ids, adapter, cfg = self._request(stop, kwargs)
        if ids and self._service is None:
            raise ConfigError("cheat_sheet_ids need a store: build LLoCOLLM(service=LLoCOService(lloco, store))")
        sheets = self._service.cheat_sheets(ids) if ids else None
        yield from self._lloco.stream(prompt, sheets or None, adapter_id=None if adapter is None else str(adapter),
                                      config=cfg, state=state)

    @staticmethod
    def _info(st: StreamStats) -> dict[str, Any]:
        return {"finish_reason": st.finish_reason, "prompt_tokens": st.prompt_tokens,
                "context_vectors": st.context_vectors, "completion_tokens": len(st.token_ids),
                "prefill_s": st.prefill_s, "total_s": st.total_s}

    def _run(self, prompt: str, stop: list[str] | None, run_manager: CallbackManagerForLLMRun | None,
             kwargs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        st = StreamStats()
        for _ in self._tokens(prompt, stop, kwargs, st):
            pass
        return st.text, self._info(st)

    # -- sync ----------------------------------------------------------------------------------------------

    def _call(self, prompt: str, stop: list[str] | None = None,
              run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> str:
        return self._run(prompt, stop, run_manager, kwargs)[0]

    def _generate(self, prompts: list[str], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> LLMResult:
        """Like ``LLM._generate`` but keeps token counts and timings in ``generation_info``."""
        gens = []
        for prompt in prompts:
            text, info = self._run(prompt, stop, run_manager, kwargs)
            gens.append([Generation(text=text, generation_info=info)])
        return LLMResult(generations=gens)

    def _stream(self, prompt: str, stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> Iterator[GenerationChunk]:
        st = StreamStats()
        tokens = self._tokens(prompt, stop, kwargs, st)
        try:
            for text in tokens:
                chunk = GenerationChunk(text=text)
                if run_manager:
                    run_manager.on_llm_new_token(text, chunk=chunk)
                yield chunk
        finally:
            tokens.close()  # releases the adapter pin at once when the caller stops early
        # A closing empty chunk carries the numbers into the merged generation (on_llm_end).
        yield GenerationChunk(text="", generation_info=self._info(st))

    # -- async: the decoder is synchronous; run it on a worker thread, never on the event loop -------------

    async def _acall(self, prompt: str, stop: list[str] | None = None,
                     run_manager: AsyncCallbackManagerForLLMRun | None = None, **kwargs: Any) -> str:
        return (await run_in_executor(None, self._run, prompt, stop, None, kwargs))[0]

    async def _agenerate(self, prompts: list[str], stop: list[str] | None = None,
                         run_manager: AsyncCallbackManagerForLLMRun | None = None, **kwargs: Any) -> LLMResult:
        gens = []
        for prompt in prompts:
            text, info = await run_in_executor(None, self._run, prompt, stop, None, kwargs)
            gens.append([Generation(text=text, generation_info=info)])
        return LLMResult(generations=gens)

    async def _astream(self, prompt: str, stop: list[str] | None = None,
                       run_manager: AsyncCallbackManagerForLLMRun | None = None,
                       **kwargs: Any) -> AsyncIterator[GenerationChunk]:
        st = StreamStats()
        tokens = self._tokens(prompt, stop, kwargs, st)
        pending: asyncio.Future | None = None
        try:
            while True:
                pending = asyncio.ensure_future(run_in_executor(None, next, tokens, _DONE))
                text = await asyncio.shield(pending)  # on cancel, the step finishes in the background
                pending = None
                if text is _DONE:
                    break
                chunk = GenerationChunk(text=text)
                if run_manager:
                    await run_manager.on_llm_new_token(text, chunk=chunk)
                yield chunk
        finally:
            # Close the generator (releases the adapter pin) off the loop, after any step still running.
            await asyncio.shield(_close_after(pending, tokens))
        yield GenerationChunk(text="", generation_info=self._info(st))


async def _close_after(pending: asyncio.Future | None, tokens: Iterator[str]) -> None:
    if pending is not None:
        with contextlib.suppress(BaseException):  # the step's own error already reached the caller
            await pending
    await run_in_executor(None, tokens.close)
