"""LlamaIndex classes that talk to a running ``lloco serve`` instead of loading a model.

    engine = LLoCOQueryEngine.from_endpoint("http://127.0.0.1:8000", group="lighthouse")
    print(engine.query("Who kept the light?"))
    llm = LLoCOLLM.from_endpoint("http://127.0.0.1:8000", group="lighthouse")   # complete/chat, retrieval on
                                                                                 # the server

The server retrieves the group's cheat sheets and applies its adapter; answers, token counts and sources
come back over HTTP (:class:`lloco_runtime.LLoCOClient`). Async methods use async HTTP: nothing
blocks the event loop.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Generator, Sequence
from typing import Any

from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
)
from llama_index.core.base.response.schema import AsyncStreamingResponse, Response, StreamingResponse
from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.custom import CustomLLM
from llama_index.core.query_engine import CustomQueryEngine
from llama_index.core.schema import NodeWithScore, TextNode

from lloco_runtime import AdapterChoice, InputError, LLoCOClient, stop_sequences
from lloco_runtime.store import DEFAULT_COLLECTION, DEFAULT_MODE, DEFAULT_TOP_K, RetrievalMode

from . import keys


def _messages(messages: Sequence[ChatMessage]) -> list[dict[str, str]]:
    from .llm import to_core_messages  # the same role mapping and refusals as the local LLM

    return [{"role": m.role, "content": m.content} for m in to_core_messages(messages)]


def source_nodes(answer: dict[str, Any], group: str, collection: str) -> list[NodeWithScore]:
    """The answer's sources as nodes carrying lloco's ids (text when the server sent it)."""
    nodes = []
    for s in answer.get("sources") or []:
        meta = {
            keys.CHUNK_ID: s["chunk_id"],
            keys.DOC_ID: s["doc_id"],
            keys.GROUP: group,
            keys.COLLECTION: collection,
        }
        node = TextNode(id_=f"{keys.NODE_ID_PREFIX}{s['chunk_id']}", text=s.get("text") or "", metadata=meta)
        nodes.append(NodeWithScore(node=node, score=s.get("score")))
    return nodes


def answer_metadata(answer: dict[str, Any]) -> dict[str, Any]:
    return {
        "cheat_sheet_ids": [s["chunk_id"] for s in answer.get("sources") or []],
        "adapter_id": answer.get("adapter_id"),
        "context_vectors": answer.get("context_tokens"),
        "raw_context_tokens": answer.get("raw_context_tokens"),
        "prefill_s": answer.get("prefill_s"),
        "total_s": answer.get("total_s"),
    }


class RemoteLLoCOLLM(CustomLLM):
    """A LlamaIndex LLM over ``lloco serve``'s ``/v1/chat/completions``: with ``group``, the server retrieves
    that group's cheat sheets for the last user message and applies its adapter; without, no context."""

    endpoint: str = Field(description="base URL of a running `lloco serve`")
    group: str | None = Field(default=None, description="group the server retrieves from (None: no context)")
    collection: str = Field(default=DEFAULT_COLLECTION)
    top_k: int = Field(default=DEFAULT_TOP_K, ge=1, description="chunks the server retrieves")
    max_new_tokens: int = Field(default=128, ge=1)
    temperature: float = Field(default=0.0, ge=0.0, description="0 = greedy")
    timeout: float = Field(default=300.0, gt=0)

    _client: LLoCOClient = PrivateAttr()

    def __init__(self, endpoint: str, **kwargs: Any) -> None:
        super().__init__(endpoint=endpoint, **kwargs)
        self._client = LLoCOClient(endpoint, timeout=self.timeout)

    @classmethod
    def class_name(cls) -> str:
        return "RemoteLLoCOLLM"

    @property
    def client(self) -> LLoCOClient:
        return self._client

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(num_output=self.max_new_tokens, is_chat_model=False, model_name="lloco-remote")

    def _options(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        unknown = set(kwargs) - {"max_new_tokens", "temperature", "stop", "group", "formatted"}
        if unknown:
            raise InputError(
                f"unknown RemoteLLoCOLLM argument(s) {sorted(unknown)}; the server retrieves the "
                "cheat sheets: pass group= (at construction or per call), not cheat_sheet_ids"
            )
        return {
            "group": kwargs.get("group", self.group),
            "collection": self.collection,
            "top_k": self.top_k,
            "max_tokens": kwargs.get("max_new_tokens", self.max_new_tokens),
            "temperature": kwargs.get("temperature", self.temperature),
            "stop": list(stop_sequences(kwargs.get("stop"))),
        }

    @staticmethod
    def _user(prompt: str) -> list[dict[str, str]]:
        if not isinstance(prompt, str) or not prompt.strip():
            raise InputError("the prompt is empty")
        return [{"role": "user", "content": prompt}]

    @staticmethod
    def _raw(out: dict[str, Any]) -> dict[str, Any]:
        lloco = out.get("lloco") or {}
        return {
            "usage": out.get("usage"),
            "finish_reason": (out.get("choices") or [{}])[0].get("finish_reason"),
            "cheat_sheet_ids": [s["chunk_id"] for s in lloco.get("sources") or []],
            "adapter_id": lloco.get("adapter_id"),
            "context_vectors": lloco.get("context_tokens"),
            "raw_context_tokens": lloco.get("raw_context_tokens"),
        }

    # -- completion ---------------------------------------------------------------------------------------

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        out = self._client.chat(self._user(prompt), **self._options(kwargs))
        return CompletionResponse(text=out["choices"][0]["message"]["content"], raw=self._raw(out))

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        deltas = self._client.stream_chat(self._user(prompt), **self._options(kwargs))

        def gen() -> Generator[CompletionResponse, None, None]:
            text = ""
            for d in deltas:
                text += d
                yield CompletionResponse(text=text, delta=d)

        return gen()

    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        out = await self._client.achat(self._user(prompt), **self._options(kwargs))
        return CompletionResponse(text=out["choices"][0]["message"]["content"], raw=self._raw(out))

    @llm_completion_callback()
    async def astream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseAsyncGen:
        deltas = self._client.astream_chat(self._user(prompt), **self._options(kwargs))

        async def gen() -> AsyncGenerator[CompletionResponse, None]:
            text = ""
            async for d in deltas:
                text += d
                yield CompletionResponse(text=text, delta=d)

        return gen()

    # -- chat ---------------------------------------------------------------------------------------------

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        out = self._client.chat(_messages(messages), **self._options(kwargs))
        return ChatResponse(
            message=ChatMessage(role="assistant", content=out["choices"][0]["message"]["content"]),
            raw=self._raw(out),
        )

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        deltas = self._client.stream_chat(_messages(messages), **self._options(kwargs))

        def gen() -> Generator[ChatResponse, None, None]:
            text = ""
            for d in deltas:
                text += d
                yield ChatResponse(message=ChatMessage(role="assistant", content=text), delta=d)

        return gen()

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        out = await self._client.achat(_messages(messages), **self._options(kwargs))
        return ChatResponse(
            message=ChatMessage(role="assistant", content=out["choices"][0]["message"]["content"]),
            raw=self._raw(out),
        )

    @llm_chat_callback()
    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        deltas = self._client.astream_chat(_messages(messages), **self._options(kwargs))

        async def gen() -> AsyncGenerator[ChatResponse, None]:
            text = ""
            async for d in deltas:
                text += d
                yield ChatResponse(message=ChatMessage(role="assistant", content=text), delta=d)

        return gen()


class RemoteLLoCOQueryEngine(CustomQueryEngine):
    """``LLoCOQueryEngine`` over ``lloco serve``'s ``/v1/ask``: the server retrieves, reads the cheat sheets
    with the group's adapter and answers; ``source_nodes`` carry lloco's chunk and document ids."""

    endpoint: str = Field(description="base URL of a running `lloco serve`")
    group: str = Field(description="the document group to answer over")
    collection: str = Field(default=DEFAULT_COLLECTION)
    top_k: int = Field(default=DEFAULT_TOP_K, ge=1)
    mode: RetrievalMode = Field(default=DEFAULT_MODE, description="retrieval mode: dense, fulltext or hybrid")
    streaming: bool = Field(default=False)
    use_adapter: bool = Field(default=True, description="apply the group's active adapter")
    max_new_tokens: int = Field(default=128, ge=1)
    timeout: float = Field(default=300.0, gt=0)

    _client: LLoCOClient = PrivateAttr()

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._client = LLoCOClient(self.endpoint, timeout=self.timeout)

    @property
    def client(self) -> LLoCOClient:
        return self._client

    def _options(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "collection": self.collection,
            "top_k": self.top_k,
            "mode": self.mode,
            "adapter": AdapterChoice.ACTIVE if self.use_adapter else AdapterChoice.NONE,
            "max_new_tokens": self.max_new_tokens,
            "with_text": True,
        }

    def _response(self, answer: dict[str, Any]) -> Response:
        return Response(
            response=answer["answer"],
            source_nodes=source_nodes(answer, self.group, self.collection),
            metadata=answer_metadata(answer),
        )

    def custom_query(self, query_str: str) -> Response | StreamingResponse:
        if not self.streaming:
            return self._response(self._client.ask(query_str, **self._options()))
        state: dict[str, Any] = {}
        deltas = self._client.stream_ask(query_str, state=state, **self._options())
        meta: dict[str, Any] = {}
        first = next(
            deltas, None
        )  # the request is sent (and errors raised) before the response object exists

        def gen() -> Generator[str, None, None]:
            if first is not None:
                yield first
            yield from deltas
            if "answer" in state:
                meta.update(answer_metadata(state["answer"]))

        return StreamingResponse(response_gen=gen(), source_nodes=[], metadata=meta)  # sources: in metadata

    async def acustom_query(self, query_str: str) -> Response | AsyncStreamingResponse:
        if not self.streaming:
            return self._response(await self._client.aask(query_str, **self._options()))
        state: dict[str, Any] = {}
        deltas = self._client.astream_ask(query_str, state=state, **self._options())
        meta: dict[str, Any] = {}

        async def gen() -> AsyncGenerator[str, None]:
            async for d in deltas:
                yield d
            if "answer" in state:
                meta.update(answer_metadata(state["answer"]))

        return AsyncStreamingResponse(response_gen=gen(), source_nodes=[], metadata=meta)
