"""``ChatLLoCO``: the LLoCO decoder as a LangChain chat model, reading cheat sheets by chunk id.

    chat = ChatLLoCO(service=service, max_new_tokens=64)
    chat.invoke([SystemMessage("Answer briefly."), HumanMessage("Who kept the light?")],
                cheat_sheet_ids=[3, 4], adapter_id=7)
    # or let a retriever pick them: the last human message is the query
    chat = ChatLLoCO(service=service, retriever=LLoCORetriever(service=service, group="manuals"))
    chat.invoke("How do I reset the pump?").usage_metadata   # {'input_tokens': ..., 'output_tokens': ...}

Messages are rendered with the decoder's own chat template (``LLoCO.prompt_chat``): system messages first,
earlier user/assistant turns verbatim, and the cheat sheets spliced into the last user turn. The model
cannot call tools or produce structured output (``bind_tools``/``with_structured_output`` say so).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from langchain_core.callbacks import (
    AsyncCallbackManager,
    AsyncCallbackManagerForLLMRun,
    CallbackManager,
    CallbackManagerForLLMRun,
)
from langchain_core.documents import Document
from langchain_core.language_models import BaseChatModel, LangSmithParams
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage, SystemMessage
from langchain_core.messages import ChatMessage as LCChatMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.runnables.config import run_in_executor
from pydantic import ConfigDict, Field

from lloco_runtime import (
    AdapterChoice,
    ChatMessage,
    ConfigError,
    InputError,
    LLoCO,
    LLoCOService,
    TokenStream,
    chat_messages,
    iterate_in_thread,
    route_adapter,
)

from ._base import LLoCOModelBase, Request
from .payload import payload_from_documents

__all__ = ["ChatLLoCO", "to_chat_messages"]

_ROLES = {"system": "system", "user": "user", "human": "user", "assistant": "assistant", "ai": "assistant"}
#: LangChain passes these through ``invoke``/``stream`` kwargs; they carry no decoding option.
_IGNORED_KWARGS = frozenset({"stream"})


def _text(message: BaseMessage, i: int) -> str:
    """The text of a message: a string, or content blocks of which only text blocks are allowed."""
    if isinstance(message.content, str):
        return message.content
    parts = []
    for block in message.content:
        if isinstance(block, str):
            parts.append(block)
        elif isinstance(block, Mapping) and block.get("type") == "text":
            parts.append(str(block.get("text", "")))
        else:
            kind = block.get("type") if isinstance(block, Mapping) else type(block).__name__
            raise InputError(
                f"message {i} has a {kind!r} content block; ChatLLoCO reads text only (text "
                "blocks or a string): drop images, audio and files, or describe them in text"
            )
    return "".join(parts)


def to_chat_messages(messages: Sequence[BaseMessage]) -> list[ChatMessage]:
    """LangChain messages as the runtime's :class:`~lloco_runtime.ChatMessage` turns.

    ``SystemMessage`` -> system, ``HumanMessage`` -> user, ``AIMessage`` -> assistant (a generic
    ``ChatMessage`` with one of those roles too). Tool and function messages are refused: the model has no
    tool calling.
    """
    out = []
    for i, m in enumerate(messages):
        if isinstance(m, SystemMessage):
            role = "system"
        elif isinstance(m, HumanMessage):
            role = "user"
        elif isinstance(m, AIMessage):
            if m.tool_calls:
                raise InputError(
                    f"message {i} is an AIMessage with tool calls; ChatLLoCO has no tool calling, "
                    "so conversations with tool calls and results cannot be continued by it"
                )
            role = "assistant"
        elif isinstance(m, LCChatMessage) and m.role in _ROLES:
            role = _ROLES[m.role]
        else:
            kind = f"ChatMessage with role {m.role!r}" if isinstance(m, LCChatMessage) else type(m).__name__
            raise InputError(
                f"message {i} is a {kind}; ChatLLoCO takes SystemMessage, HumanMessage and "
                "AIMessage (roles system, user, assistant): it has no tool calling, so tool "
                "messages cannot be answered"
            )
        out.append(ChatMessage(role, _text(m, i)))
    return out


def _child_config(run_manager: Any, manager_cls: type) -> dict[str, Any] | None:
    """Callbacks for the retrieval, nested under the chat model's run (LLM run managers have no get_child)."""
    if run_manager is None:
        return None
    manager = manager_cls(handlers=[], parent_run_id=run_manager.run_id)
    manager.set_handlers(run_manager.inheritable_handlers)
    manager.add_tags(run_manager.inheritable_tags)
    manager.add_metadata(run_manager.inheritable_metadata)
    return {"callbacks": manager}


@dataclass(frozen=True)
class _Call:
    """A parsed chat call: the turns, the request, and what the retriever contributed (if it ran)."""

    turns: list[ChatMessage]
    request: Request
    raw_tokens: int | None = None
    group: str | None = None


class ChatLLoCO(BaseChatModel, LLoCOModelBase):
    """A LangChain chat model over a :class:`~lloco_runtime.LLoCO` runtime (and optionally its store).

    Args:
        service: an :class:`~lloco_runtime.LLoCOService`; needed for cheat sheets and adapters stored
            in the database.
        lloco: a bare runtime instead (no store): plain conversations, or adapters registered on
            ``lloco.adapters`` by id.
        retriever: a LangChain retriever returning Documents with lloco metadata (``LLoCORetriever``,
            ``LLoCOVectorStore.as_retriever()``). Each call then retrieves with the last human message and
            reads those chunks' cheat sheets under their group's active adapter. Per-call
            ``cheat_sheet_ids`` skip retrieval; a per-call ``adapter_id`` replaces the group's adapter.
        adapter_id: default adapter when a call names none and no retriever supplies one (per call
            ``adapter_id=None`` means the base model).
        max_new_tokens (alias ``max_tokens``), temperature, top_p, top_k, seed, stop: decoding defaults,
            overridable per call (``invoke(..., max_new_tokens=16)``).
        streaming: ``invoke`` decodes through the streaming path (token callbacks fire).
        cache: must stay ``False`` (the cache keys do not cover the stored cheat sheets or retrieval).

    Per call (``invoke(messages, **kw)`` or ``.bind(**kw)``): ``cheat_sheet_ids``, ``adapter_id``,
    ``max_new_tokens``, ``temperature``, ``top_p``, ``top_k``, ``seed`` and LangChain's ``stop``.

    The ``AIMessage`` carries ``usage_metadata`` (``input_tokens`` = prompt tokens, cheat-sheet vectors
    included) and ``response_metadata``: ``model_name``, ``finish_reason`` (``eos``/``stop``/``length``),
    ``context_vectors`` (decoder positions the cheat sheets take), ``raw_context_tokens`` (tokens of those
    chunks as text; known when a retriever supplied them, else None), ``chunk_ids``, ``adapter_id``,
    ``group`` and timings.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, populate_by_name=True, extra="forbid")

    retriever: Runnable | None = Field(default=None, exclude=True)
    streaming: bool = False
    cache: Any = Field(default=False, exclude=True)

    def __init__(
        self, *, service: LLoCOService | None = None, lloco: LLoCO | None = None, **data: Any
    ) -> None:
        self._check_backend("ChatLLoCO", service, lloco, data)
        data = self._resolve_aliases(data)
        known = {*type(self).model_fields, "max_tokens"}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(
                f"unknown ChatLLoCO parameter(s) {sorted(unknown)}; ChatLLoCO decodes in-process "
                "(no api_key, timeout or retries); decoding options are "
                f"{sorted(LLoCOModelBase.model_fields)} (max_tokens is max_new_tokens)"
            )
        retriever = data.get("retriever")
        if retriever is not None and not isinstance(retriever, Runnable):
            raise ConfigError(
                f"retriever must be a LangChain retriever (e.g. LLoCORetriever), got "
                f"{type(retriever).__name__}"
            )
        super().__init__(**data)
        self._attach(service, lloco)

    # -- LangChain metadata -------------------------------------------------------------------------------

    @property
    def _llm_type(self) -> str:
        return "lloco-chat"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {**self._model_params(), "retriever": None if self.retriever is None else repr(self.retriever)}

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        model = kwargs.get("model")
        params = LangSmithParams(
            ls_provider="lloco",
            ls_model_type="chat",
            ls_model_name=model if isinstance(model, str) else self.model_name,
            ls_temperature=kwargs.get("temperature", self.temperature),
            ls_max_tokens=kwargs.get("max_new_tokens", self.max_new_tokens),
        )
        stops = stop if stop is not None else self.stop
        if stops:
            params["ls_stop"] = list(stops)
        return params

    # -- no tools, no structured output ------------------------------------------------------------------

    def bind_tools(self, tools: Sequence[Any], *, tool_choice: str | None = None, **kwargs: Any) -> Any:
        raise NotImplementedError(
            "ChatLLoCO has no tool calling: its decoder (a 135M model reading cheat sheets) was not trained to "
            "emit tool calls. Route tool use to another chat model and use ChatLLoCO for the answer over "
            "the documents"
        )

    def with_structured_output(self, schema: Any, *, include_raw: bool = False, **kwargs: Any) -> Any:
        raise NotImplementedError(
            "ChatLLoCO has no structured output (no tool calling, no JSON mode): parse its text answer "
            "yourself, or use another chat model for structured output"
        )

    # -- the request ---------------------------------------------------------------------------------------

    def _parse(
        self, messages: Sequence[BaseMessage], stop: list[str] | None, kwargs: Mapping[str, Any]
    ) -> _Call:
        req = self._request(stop, {k: v for k, v in kwargs.items() if k not in _IGNORED_KWARGS})
        turns = chat_messages(to_chat_messages(messages))  # roles, order, a last user turn: before any work
        return _Call(turns, req)

    def _needs_retrieval(self, call: _Call) -> bool:
        return self.retriever is not None and not call.request.explicit_ids

    @staticmethod
    def _query(call: _Call) -> str:
        return next(t.content for t in reversed(call.turns) if t.role == "user")

    @staticmethod
    def _with_documents(call: _Call, documents: Sequence[Document]) -> _Call:
        p = payload_from_documents(documents)
        req = call.request
        # adapter routing: a per-call adapter_id wins over the retrieved group's active adapter
        adapter = route_adapter(
            req.adapter_id if req.explicit_adapter else AdapterChoice.ACTIVE, p.adapter_id
        )
        return replace(
            call,
            request=replace(req, chunk_ids=p.chunk_ids, adapter_id=adapter),
            raw_tokens=p.raw_tokens,
            group=p.group,
        )

    def _retrieve(self, call: _Call, run_manager: CallbackManagerForLLMRun | None) -> _Call:
        if not self._needs_retrieval(call):
            return call
        docs = self.retriever.invoke(self._query(call), config=_child_config(run_manager, CallbackManager))
        return self._with_documents(call, docs)

    async def _aretrieve(self, call: _Call, run_manager: AsyncCallbackManagerForLLMRun | None) -> _Call:
        if not self._needs_retrieval(call):
            return call
        docs = await self.retriever.ainvoke(
            self._query(call), config=_child_config(run_manager, AsyncCallbackManager)
        )
        return self._with_documents(call, docs)

    def _stream_of(self, call: _Call) -> TokenStream:
        """The answer's token stream (the prompt is built now; decoding starts at the first ``next``)."""
        return self._tokens(call.turns, call.request)

    def _metadata(self, call: _Call, tokens: TokenStream) -> tuple[UsageMetadata, dict[str, Any]]:
        stats = tokens.stats
        usage = UsageMetadata(
            input_tokens=stats.prompt_tokens,
            output_tokens=stats.completion_tokens,
            total_tokens=stats.prompt_tokens + stats.completion_tokens,
        )
        info = {
            **stats.to_dict(),
            "model_name": self.model_name,
            "raw_context_tokens": call.raw_tokens,
            "chunk_ids": list(call.request.chunk_ids),
            "adapter_id": call.request.adapter_id,
            "group": call.group,
        }
        return usage, info

    def _result(self, call: _Call, tokens: TokenStream) -> ChatResult:
        usage, info = self._metadata(call, tokens)
        message = AIMessage(content=tokens.text, usage_metadata=usage, response_metadata=info)
        return ChatResult(
            generations=[ChatGeneration(message=message, generation_info=info)],
            llm_output={"model_name": self.model_name},
        )

    def _last_chunk(self, call: _Call, tokens: TokenStream) -> ChatGenerationChunk:
        """The closing chunk: no text, the usage and the numbers (so they appear once in the merged message)."""
        usage, info = self._metadata(call, tokens)
        return ChatGenerationChunk(
            message=AIMessageChunk(
                content="", usage_metadata=usage, response_metadata=info, chunk_position="last"
            ),
            generation_info=info,
        )

    def _run(self, call: _Call) -> ChatResult:
        return self._result(call, self._stream_of(call).finish())

    # -- sync ----------------------------------------------------------------------------------------------

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return self._run(self._retrieve(self._parse(messages, stop, kwargs), run_manager))

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        call = self._retrieve(self._parse(messages, stop, kwargs), run_manager)
        tokens = self._stream_of(call)
        try:
            for text in tokens:
                chunk = ChatGenerationChunk(message=AIMessageChunk(content=text))
                if run_manager:
                    run_manager.on_llm_new_token(text, chunk=chunk)
                yield chunk
        finally:
            tokens.close()  # releases the adapter pin at once when the caller stops early
        yield self._last_chunk(call, tokens)

    # -- async: the decoder is synchronous; run it on a worker thread, never on the event loop -------------

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        call = await self._aretrieve(self._parse(messages, stop, kwargs), run_manager)
        return await run_in_executor(None, self._run, call)

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        call = await self._aretrieve(self._parse(messages, stop, kwargs), run_manager)
        # Loading cheat sheets reads the store: off the loop too.
        tokens = await run_in_executor(None, self._stream_of, call)
        async with contextlib.aclosing(iterate_in_thread(tokens)) as texts:
            async for text in texts:
                chunk = ChatGenerationChunk(message=AIMessageChunk(content=text))
                if run_manager:
                    await run_manager.on_llm_new_token(text, chunk=chunk)
                yield chunk
        yield self._last_chunk(call, tokens)
