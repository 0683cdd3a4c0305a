"""``RemoteLLoCOLLM``: a LangChain ``LLM`` that asks a running ``lloco serve`` instead of loading a model.

    llm = LLoCOLLM.from_endpoint("http://127.0.0.1:8000", group="lighthouse")
    llm.invoke("Who kept the light?")            # the server retrieves, reads the cheat sheets, answers

The prompt string is the question, as for :class:`~lloco_langchain.llm.LLoCOLLM`; retrieval of the group's
cheat sheets and its adapter happen on the server (``/v1/ask``). Async calls use async HTTP.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models.llms import LLM
from langchain_core.outputs import Generation, GenerationChunk, LLMResult
from pydantic import Field, PrivateAttr

from lloco_runtime import AdapterChoice, ConfigError, InputError, LLoCOClient
from lloco_runtime.store import DEFAULT_COLLECTION, DEFAULT_MODE, DEFAULT_TOP_K, RetrievalMode

__all__ = ["REMOTE_CALL_KWARGS", "RemoteLLoCOLLM"]

#: per-call keyword arguments of a remote LLM
REMOTE_CALL_KWARGS = frozenset({"group", "adapter_id", "max_new_tokens"})


def _info(answer: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "adapter_id": answer.get("adapter_id"),
        "context_vectors": answer.get("context_tokens"),
        "raw_context_tokens": answer.get("raw_context_tokens"),
        "chunk_ids": [s["chunk_id"] for s in answer.get("sources") or []],
        "prefill_s": answer.get("prefill_s"),
        "total_s": answer.get("total_s"),
    }


class RemoteLLoCOLLM(LLM):
    """A LangChain LLM over ``lloco serve``'s ``/v1/ask`` (greedy decoding on the server).

    Args:
        endpoint: base URL of the server, e.g. ``http://127.0.0.1:8000``.
        group: the group the server retrieves from (per call ``group=`` overrides it).
        adapter_id: ``"active"`` (the group's active adapter, default), ``"none"``, or a stored adapter id.
        k: chunks retrieved per question; collection, mode, max_new_tokens, timeout.
    """

    endpoint: str
    group: str | None = None
    collection: str = DEFAULT_COLLECTION
    k: int = Field(default=DEFAULT_TOP_K, ge=1)
    mode: RetrievalMode = DEFAULT_MODE
    adapter_id: int | str = AdapterChoice.ACTIVE
    max_new_tokens: int = Field(default=64, ge=1)
    timeout: float = Field(default=300.0, gt=0)
    cache: Any = Field(default=False, exclude=True)

    _client: LLoCOClient = PrivateAttr()

    def __init__(self, endpoint: str, **data: Any) -> None:
        if data.get("cache", False) is not False:
            raise ConfigError(
                "RemoteLLoCOLLM does not support LangChain's LLM cache (its keys ignore the group "
                "and adapter); cache whole chain outputs yourself if you need to"
            )
        super().__init__(endpoint=endpoint, **data)
        self._client = LLoCOClient(endpoint, timeout=self.timeout)

    @property
    def client(self) -> LLoCOClient:
        return self._client

    @property
    def _llm_type(self) -> str:
        return "lloco-remote"

    @property
    def _identifying_params(self) -> Mapping[str, Any]:
        return {
            "endpoint": self.endpoint,
            "group": self.group,
            "collection": self.collection,
            "k": self.k,
            "adapter_id": self.adapter_id,
            "max_new_tokens": self.max_new_tokens,
        }

    def _options(self, stop: list[str] | None, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        unknown = set(kwargs) - REMOTE_CALL_KWARGS
        if unknown:
            raise InputError(
                f"unknown RemoteLLoCOLLM argument(s) {sorted(unknown)}; known: "
                f"{sorted(REMOTE_CALL_KWARGS)} (the server retrieves the cheat sheets: no "
                "cheat_sheet_ids)"
            )
        if stop:
            raise InputError(
                "RemoteLLoCOLLM cannot apply stop sequences (the server's /v1/ask has none); use "
                "ChatOpenAI-style clients against /v1/chat/completions for that"
            )
        group = kwargs.get("group", self.group)
        if not group:
            raise InputError("RemoteLLoCOLLM needs group= (at construction or per call)")
        return {
            "group": group,
            "collection": self.collection,
            "top_k": self.k,
            "mode": self.mode,
            "adapter": kwargs.get("adapter_id", self.adapter_id),  # the client sends None as "none"
            "max_new_tokens": kwargs.get("max_new_tokens", self.max_new_tokens),
        }

    def _call(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> str:
        return self._client.ask(prompt, **self._options(stop, kwargs))["answer"]

    def _generate(
        self,
        prompts: list[str],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> LLMResult:
        gens = []
        for prompt in prompts:
            answer = self._client.ask(prompt, **self._options(stop, kwargs))
            gens.append([Generation(text=answer["answer"], generation_info=_info(answer))])
        return LLMResult(generations=gens)

    async def _agenerate(
        self,
        prompts: list[str],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> LLMResult:
        gens = []
        for prompt in prompts:
            answer = await self._client.aask(prompt, **self._options(stop, kwargs))
            gens.append([Generation(text=answer["answer"], generation_info=_info(answer))])
        return LLMResult(generations=gens)

    def _stream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[GenerationChunk]:
        state: dict[str, Any] = {}
        for text in self._client.stream_ask(prompt, state=state, **self._options(stop, kwargs)):
            chunk = GenerationChunk(text=text)
            if run_manager:
                run_manager.on_llm_new_token(text, chunk=chunk)
            yield chunk
        yield GenerationChunk(text="", generation_info=_info(state.get("answer") or {}))

    async def _astream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[GenerationChunk]:
        state: dict[str, Any] = {}
        async for text in self._client.astream_ask(prompt, state=state, **self._options(stop, kwargs)):
            chunk = GenerationChunk(text=text)
            if run_manager:
                await run_manager.on_llm_new_token(text, chunk=chunk)
            yield chunk
        yield GenerationChunk(text="", generation_info=_info(state.get("answer") or {}))
