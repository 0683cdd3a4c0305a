"""``LLoCOLLM``: a LlamaIndex ``CustomLLM`` that reads cheat sheets by id and applies a group's adapter.

Call arguments carry the payload (never tensors): ``cheat_sheet_ids=[chunk ids]`` and ``adapter_id=``.
``complete(question, cheat_sheet_ids=...)`` renders the runtime's single prompt template (the one adapters
were trained with) with the cheat sheets in its context slot; ``chat(messages, ...)`` renders the
conversation with the same template (:meth:`LLoCO.prompt_chat`: earlier turns verbatim, the cheat sheets
in the last user message, a leading system message replacing the template's). The async methods run the
model on a worker thread; the async streams yield each token as it is decoded.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
    TextBlock,
)
from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.custom import CustomLLM

from lloco_runtime import ChatMessage as CoreChatMessage
from lloco_runtime import (
    InputError,
    LLoCO,
    LLoCOService,
    TokenStream,
    generation_config,
    iterate_in_thread,
    run_in_thread,
    stream_chunks,
)
from lloco_runtime.store import CheatSheetStore

if TYPE_CHECKING:
    from .remote import RemoteLLoCOLLM

_ROLES = {MessageRole.SYSTEM: "system", MessageRole.USER: "user", MessageRole.ASSISTANT: "assistant"}
_STORE_HINT = "LLoCOLLM(lloco, store=CheatSheetStore(...))"


def to_core_messages(messages: Sequence[ChatMessage]) -> list[CoreChatMessage]:
    """LlamaIndex chat messages as the runtime's (system, user and assistant roles; text only)."""
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, ChatMessage):
            raise InputError(f"message {i} is a {type(m).__name__}; pass llama_index ChatMessage objects")
        role = _ROLES.get(MessageRole(m.role))
        if role is None:
            raise InputError(
                f"message {i} has role {MessageRole(m.role).value!r}; LLoCOLLM chats with system, "
                "user and assistant messages only: put tool or function results into a user "
                "message, or leave them out"
            )
        other = [type(b).__name__ for b in m.blocks if not isinstance(b, TextBlock)]
        if other:
            raise InputError(
                f"message {i} holds a {other[0]}; LLoCOLLM reads text only (documents reach it as "
                "cheat sheets: pass cheat_sheet_ids=)"
            )
        out.append(CoreChatMessage(role, m.content or ""))
    return out


class LLoCOLLM(CustomLLM):
    """The LLoCO decoder as a LlamaIndex LLM. Build with ``LLoCOLLM(lloco, store=store)``.

    ``store`` is needed to resolve ``cheat_sheet_ids`` and adapter ids of the store's registry; without it
    only adapters registered on ``lloco.adapters`` can be used and cheat sheets cannot be loaded.
    """

    model_name: str = Field(default="lloco", description="decoder name (from the runtime)")
    max_new_tokens: int = Field(default=128, ge=1, description="tokens to generate (num_output)")
    temperature: float = Field(default=0.0, ge=0.0, description="0 = greedy")
    max_cheat_sheets: int = Field(
        default=4, ge=0, description="cheat sheets reserved in metadata.context_window (top_k)"
    )
    summary_length: int = Field(
        default=16,
        ge=1,
        description="vectors per full cheat sheet (from the encoder: summary vectors plus literal tokens)",
    )
    decoder_window: int = Field(default=2048, ge=1, description="the decoder's context window")

    _lloco: LLoCO = PrivateAttr()
    _service: LLoCOService | None = PrivateAttr(default=None)

    def __init__(self, lloco: LLoCO, *, store: CheatSheetStore | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("model_name", lloco.host.name)
        super().__init__(
            summary_length=lloco.encoder.config.positions, decoder_window=lloco.host.context_window, **kwargs
        )
        self._lloco = lloco
        self._service = LLoCOService(lloco, store) if store is not None else None  # the adapters' source

    @classmethod
    def class_name(cls) -> str:
        return "LLoCOLLM"

    @classmethod
    def from_endpoint(cls, endpoint: str, **kwargs: Any) -> RemoteLLoCOLLM:
        """An LLM that talks to a running ``lloco serve`` at ``endpoint`` instead of loading a model (``group=``:
        the server retrieves that group's cheat sheets): a :class:`~lloco_index.remote.RemoteLLoCOLLM`."""
        from .remote import RemoteLLoCOLLM

        return RemoteLLoCOLLM(endpoint, **kwargs)

    @property
    def lloco(self) -> LLoCO:
        return self._lloco

    @property
    def metadata(self) -> LLMMetadata:
        """``context_window`` is what remains for text after ``max_cheat_sheets`` cheat sheets."""
        reserved = self.max_cheat_sheets * self.summary_length
        return LLMMetadata(
            context_window=max(1, self.decoder_window - reserved),
            num_output=self.max_new_tokens,
            is_chat_model=False,
            model_name=self.model_name,
        )

    # -- token streams: the request layer's path (prompt built and checked now; the adapter is pinned from the
    # first token on); this class maps LlamaIndex's arguments and responses onto it ----------------------------

    def _stream(
        self,
        prompt: str | list[CoreChatMessage],
        cheat_sheet_ids: Sequence[int] | None,
        adapter_id: int | str | None,
        kwargs: dict[str, Any],
    ) -> TokenStream:
        defaults = {"max_new_tokens": self.max_new_tokens, "temperature": self.temperature}
        return stream_chunks(
            self._lloco,
            self._service.store if self._service is not None else None,
            prompt,
            cheat_sheet_ids,
            adapter_id=adapter_id,
            config=generation_config(defaults, kwargs),
            build_hint=_STORE_HINT,
        )

    def _completion_stream(
        self,
        prompt: str,
        cheat_sheet_ids: Sequence[int] | None,
        adapter_id: int | str | None,
        kwargs: dict[str, Any],
    ) -> TokenStream:
        return self._stream(prompt, cheat_sheet_ids, adapter_id, kwargs)

    def _chat_stream(
        self,
        messages: Sequence[ChatMessage],
        cheat_sheet_ids: Sequence[int] | None,
        adapter_id: int | str | None,
        kwargs: dict[str, Any],
    ) -> TokenStream:
        return self._stream(to_core_messages(messages), cheat_sheet_ids, adapter_id, kwargs)

    @staticmethod
    def _finish(stream: TokenStream) -> tuple[str, dict[str, Any]]:
        stream.finish()
        return stream.text.strip(), stream.stats.to_dict()

    @staticmethod
    def _responses(stream: TokenStream) -> CompletionResponseGen:
        """Deltas as responses; the last one's ``raw`` holds the run's numbers. Closing it closes the token
        stream (releasing the adapter)."""
        text, pending = "", None
        try:
            for delta in stream:
                if pending is not None:
                    yield CompletionResponse(text=text, delta=pending)
                text += delta
                pending = delta
            yield CompletionResponse(text=text, delta=pending or "", raw=stream.stats.to_dict())
        finally:
            stream.close()

    @staticmethod
    def _as_chat(r: CompletionResponse) -> ChatResponse:
        return ChatResponse(
            message=ChatMessage(role=MessageRole.ASSISTANT, content=r.text), delta=r.delta, raw=r.raw
        )

    def _chat_responses(self, stream: TokenStream) -> ChatResponseGen:
        responses = self._responses(stream)
        try:
            for r in responses:
                yield self._as_chat(r)
        finally:
            responses.close()

    def _complete(
        self,
        prompt: str,
        cheat_sheet_ids: Sequence[int] | None = None,
        adapter_id: int | str | None = None,
        **kwargs: Any,
    ) -> CompletionResponse:
        text, raw = self._finish(self._completion_stream(prompt, cheat_sheet_ids, adapter_id, kwargs))
        return CompletionResponse(text=text, raw=raw)

    def _chat(
        self,
        messages: Sequence[ChatMessage],
        cheat_sheet_ids: Sequence[int] | None = None,
        adapter_id: int | str | None = None,
        **kwargs: Any,
    ) -> ChatResponse:
        text, raw = self._finish(self._chat_stream(messages, cheat_sheet_ids, adapter_id, kwargs))
        return ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=text), raw=raw)

    # -- completion ------------------------------------------------------------------------------------

    @llm_completion_callback()
    def complete(
        self,
        prompt: str,
        formatted: bool = False,
        *,
        cheat_sheet_ids: Sequence[int] | None = None,
        adapter_id: int | str | None = None,
        **kwargs: Any,
    ) -> CompletionResponse:
        """Answer ``prompt`` over the cheat sheets of ``cheat_sheet_ids`` with adapter ``adapter_id``."""
        return self._complete(prompt, cheat_sheet_ids, adapter_id, **kwargs)

    @llm_completion_callback()
    def stream_complete(
        self,
        prompt: str,
        formatted: bool = False,
        *,
        cheat_sheet_ids: Sequence[int] | None = None,
        adapter_id: int | str | None = None,
        **kwargs: Any,
    ) -> CompletionResponseGen:
        """Like :meth:`complete`, yielding deltas; the last response's ``raw`` holds the token counts."""
        return self._responses(self._completion_stream(prompt, cheat_sheet_ids, adapter_id, kwargs))

    @llm_completion_callback()
    async def acomplete(
        self,
        prompt: str,
        formatted: bool = False,
        *,
        cheat_sheet_ids: Sequence[int] | None = None,
        adapter_id: int | str | None = None,
        **kwargs: Any,
    ) -> CompletionResponse:
        """:meth:`complete` on a worker thread (decoding is CPU/GPU bound; the event loop stays free)."""
        return await run_in_thread(self._complete, prompt, cheat_sheet_ids, adapter_id, **kwargs)

    @llm_completion_callback()
    async def astream_complete(
        self,
        prompt: str,
        formatted: bool = False,
        *,
        cheat_sheet_ids: Sequence[int] | None = None,
        adapter_id: int | str | None = None,
        **kwargs: Any,
    ) -> CompletionResponseAsyncGen:
        """:meth:`stream_complete` with every step on a worker thread: tokens arrive as they are decoded.
        Cancelling (or leaving) the stream closes it and releases the adapter."""
        stream = await run_in_thread(self._completion_stream, prompt, cheat_sheet_ids, adapter_id, kwargs)
        return iterate_in_thread(self._responses(stream))

    # -- chat ------------------------------------------------------------------------------------------

    @llm_chat_callback()
    def chat(
        self,
        messages: Sequence[ChatMessage],
        *,
        cheat_sheet_ids: Sequence[int] | None = None,
        adapter_id: int | str | None = None,
        **kwargs: Any,
    ) -> ChatResponse:
        """Answer the last user message of a conversation (system, user and assistant messages) over the
        cheat sheets of ``cheat_sheet_ids``, which go into that message as :meth:`complete` puts them."""
        return self._chat(messages, cheat_sheet_ids, adapter_id, **kwargs)

    @llm_chat_callback()
    def stream_chat(
        self,
        messages: Sequence[ChatMessage],
        *,
        cheat_sheet_ids: Sequence[int] | None = None,
        adapter_id: int | str | None = None,
        **kwargs: Any,
    ) -> ChatResponseGen:
        """Like :meth:`chat`, yielding deltas; the last response's ``raw`` holds the token counts."""
        return self._chat_responses(self._chat_stream(messages, cheat_sheet_ids, adapter_id, kwargs))

    @llm_chat_callback()
    async def achat(
        self,
        messages: Sequence[ChatMessage],
        *,
        cheat_sheet_ids: Sequence[int] | None = None,
        adapter_id: int | str | None = None,
        **kwargs: Any,
    ) -> ChatResponse:
        """:meth:`chat` on a worker thread."""
        return await run_in_thread(self._chat, messages, cheat_sheet_ids, adapter_id, **kwargs)

    @llm_chat_callback()
    async def astream_chat(
        self,
        messages: Sequence[ChatMessage],
        *,
        cheat_sheet_ids: Sequence[int] | None = None,
        adapter_id: int | str | None = None,
        **kwargs: Any,
    ) -> ChatResponseAsyncGen:
        """:meth:`stream_chat` with every step on a worker thread (see :meth:`astream_complete`)."""
        stream = await run_in_thread(self._chat_stream, messages, cheat_sheet_ids, adapter_id, kwargs)
        return iterate_in_thread(self._chat_responses(stream))
