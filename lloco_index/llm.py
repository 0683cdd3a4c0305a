"""``LLoCOLLM``: a LlamaIndex ``CustomLLM`` that reads cheat sheets by id and applies a group's adapter.

Call arguments carry the payload (never tensors): ``cheat_sheet_ids=[chunk ids]`` and ``adapter_id=``.
``complete(question, cheat_sheet_ids=...)`` renders the runtime's single prompt template (the one adapters
were trained with) with the cheat sheets in its context slot; ``chat(messages, ...)`` renders the model's
chat template and splices the cheat sheets into the last user message.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
)
from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.custom import CustomLLM

from lloco_runtime.errors import InputError, NotFoundError
from lloco_runtime.generation import GenerationConfig, StreamStats
from lloco_runtime.prompt import Prompt
from lloco_runtime.runtime import LLoCO
from lloco_runtime.service import LLoCOService
from lloco_runtime.store import CheatSheetStore

_SLOT = "\u2063LLOCO_INDEX_SLOT\u2063"
_GEN_KEYS = ("max_new_tokens", "temperature", "top_p", "top_k", "stop", "seed")


class LLoCOLLM(CustomLLM):
    """The LLoCO decoder as a LlamaIndex LLM. Build with ``LLoCOLLM(lloco, store=store)``.

    ``store`` is needed to resolve ``cheat_sheet_ids`` and adapter ids of the store's registry; without it
    only adapters registered on ``lloco.adapters`` can be used and cheat sheets cannot be loaded.
    """

    model_name: str = Field(default="lloco", description="decoder name (from the runtime)")
    max_new_tokens: int = Field(default=128, ge=1, description="tokens to generate (num_output)")
    temperature: float = Field(default=0.0, ge=0.0, description="0 = greedy")
    max_cheat_sheets: int = Field(default=4, ge=0,
                                  description="cheat sheets reserved in metadata.context_window (top_k)")
    summary_length: int = Field(default=16, ge=1, description="vectors per full cheat sheet (from the encoder: "
                                "summary vectors plus literal tokens)")
    decoder_window: int = Field(default=2048, ge=1, description="the decoder's context window")

    _lloco: LLoCO = PrivateAttr()
    _service: LLoCOService | None = PrivateAttr(default=None)

    def __init__(self, lloco: LLoCO, *, store: CheatSheetStore | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("model_name", lloco.host.name)
        super().__init__(summary_length=lloco.encoder.config.positions,
                         decoder_window=lloco.host.context_window, **kwargs)
        self._lloco = lloco
        self._service = LLoCOService(lloco, store) if store is not None else None

    @classmethod
    def class_name(cls) -> str:
        return "LLoCOLLM"

    @property
    def lloco(self) -> LLoCO:
        return self._lloco

    @property
    def metadata(self) -> LLMMetadata:
        """``context_window`` is what remains for text after ``max_cheat_sheets`` cheat sheets."""
        reserved = self.max_cheat_sheets * self.summary_length
        return LLMMetadata(context_window=max(1, self.decoder_window - reserved), num_output=self.max_new_tokens,
                           is_chat_model=False, model_name=self.model_name)

    # -- payload ---------------------------------------------------------------------------------------

    def _sheets(self, cheat_sheet_ids: Sequence[int] | None) -> list[torch.Tensor] | None:
        if not cheat_sheet_ids:
            return None
        if self._service is None:
            raise InputError("cheat_sheet_ids need a store: build LLoCOLLM(lloco, store=CheatSheetStore(...))")
        ids = []
        for i in cheat_sheet_ids:
            if isinstance(i, bool) or not isinstance(i, (int, str)) or not str(i).isdigit():
                raise InputError(f"cheat_sheet_ids must be chunk ids (integers), got {i!r}")
            ids.append(int(i))
        return self._service.cheat_sheets(ids)

    def _adapter(self, adapter_id: int | str | None) -> str | None:
        if adapter_id is None:
            return None
        aid = str(adapter_id)
        if self._service is not None:
            if isinstance(adapter_id, bool) or not aid.isdigit():
                raise NotFoundError(f"unknown adapter id {adapter_id!r}: store adapter ids are integers; list "
                                    "them with `lloco adapters list`")
            self._service.store.get_adapter(int(aid))  # NotFoundError naming the fix
        return aid

    def _config(self, kwargs: dict[str, Any]) -> GenerationConfig:
        opts = {"max_new_tokens": self.max_new_tokens, "temperature": self.temperature}
        opts.update({k: kwargs.pop(k) for k in _GEN_KEYS if k in kwargs})
        if "stop" in opts and isinstance(opts["stop"], str):
            opts["stop"] = (opts["stop"],)
        return GenerationConfig(**{k: tuple(v) if k == "stop" else v for k, v in opts.items()})

    @staticmethod
    def _raw(st: StreamStats, n_sheets: int) -> dict[str, Any]:
        return {"prompt_tokens": st.prompt_tokens, "context_vectors": st.context_vectors, "cheat_sheets": n_sheets,
                "finish_reason": st.finish_reason, "prefill_s": st.prefill_s, "total_s": st.total_s}

    def _run(self, prompt: Prompt, adapter: str | None, cfg: GenerationConfig, st: StreamStats) -> Iterator[str]:
        lloco = self._lloco
        with lloco.adapters.acquire(lloco.adapter_for(prompt, adapter)) as name:
            yield from lloco.generator.stream(prompt, cfg, adapter=name, state=st)

    def _completion_prompt(self, prompt: str, sheets: list[torch.Tensor] | None) -> Prompt:
        return self._lloco.prompt(prompt, sheets)

    def _chat_prompt(self, messages: Sequence[ChatMessage], sheets: list[torch.Tensor] | None) -> Prompt:
        msgs = [{"role": m.role.value, "content": m.content or ""} for m in messages]
        if not msgs:
            raise InputError("chat needs at least one message")
        tok = self._lloco.host.tokenizer
        if sheets:
            last = max((i for i, m in enumerate(msgs) if m["role"] == MessageRole.USER.value), default=None)
            if last is None:
                raise InputError("cheat sheets are spliced into a user message; the chat has none")
            user_fmt = self._lloco.template.user
            msgs[last] = {"role": "user", "content": user_fmt.format(context=_SLOT, question=msgs[last]["content"])}
        if getattr(tok, "chat_template", None):
            text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        else:
            text = "\n".join(f"{m['role']}: {m['content']}" for m in msgs) + "\nassistant:"
        if not sheets:
            return Prompt((text,))
        prefix, suffix = text.split(_SLOT)
        return Prompt(tuple(p for p in (prefix, *sheets, suffix) if not (isinstance(p, str) and not p)))

    # -- completion ------------------------------------------------------------------------------------

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, *, cheat_sheet_ids: Sequence[int] | None = None,
                 adapter_id: int | str | None = None, **kwargs: Any) -> CompletionResponse:
        """Answer ``prompt`` over the cheat sheets of ``cheat_sheet_ids`` with adapter ``adapter_id``."""
        cfg = self._config(kwargs)
        sheets = self._sheets(cheat_sheet_ids)
        adapter = self._adapter(adapter_id)
        st = StreamStats()
        for _ in self._run(self._completion_prompt(prompt, sheets), adapter, cfg, st):
            pass
        return CompletionResponse(text=st.text.strip(), raw=self._raw(st, len(sheets or ())))

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, *,
                        cheat_sheet_ids: Sequence[int] | None = None, adapter_id: int | str | None = None,
                        **kwargs: Any) -> CompletionResponseGen:
        """Like :meth:`complete`, yielding deltas; the last response's ``raw`` holds the token counts."""
        cfg = self._config(kwargs)
        sheets = self._sheets(cheat_sheet_ids)
        adapter = self._adapter(adapter_id)
        return self._stream_responses(self._completion_prompt(prompt, sheets), adapter, cfg, len(sheets or ()))

    def _stream_responses(self, prompt: Prompt, adapter, cfg, n_sheets: int) -> CompletionResponseGen:
        st = StreamStats()
        text, pending = "", None
        for delta in self._run(prompt, adapter, cfg, st):
            if pending is not None:
                yield CompletionResponse(text=text, delta=pending)
            text += delta
            pending = delta
        yield CompletionResponse(text=text, delta=pending or "", raw=self._raw(st, n_sheets))

    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        """:meth:`complete` on a worker thread (decoding is CPU/GPU bound; the event loop stays free)."""
        return await asyncio.to_thread(self.complete, prompt, formatted, **kwargs)

    # -- chat ------------------------------------------------------------------------------------------

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], *, cheat_sheet_ids: Sequence[int] | None = None,
             adapter_id: int | str | None = None, **kwargs: Any) -> ChatResponse:
        """Chat through the model's chat template, cheat sheets spliced into the last user message."""
        cfg = self._config(kwargs)
        sheets = self._sheets(cheat_sheet_ids)
        st = StreamStats()
        for _ in self._run(self._chat_prompt(messages, sheets), self._adapter(adapter_id), cfg, st):
            pass
        return ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=st.text.strip()),
                            raw=self._raw(st, len(sheets or ())))

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], *, cheat_sheet_ids: Sequence[int] | None = None,
                    adapter_id: int | str | None = None, **kwargs: Any) -> ChatResponseGen:
        cfg = self._config(kwargs)
        sheets = self._sheets(cheat_sheet_ids)
        prompt = self._chat_prompt(messages, sheets)
        adapter = self._adapter(adapter_id)

        def gen() -> ChatResponseGen:
            for r in self._stream_responses(prompt, adapter, cfg, len(sheets or ())):
                yield ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=r.text), delta=r.delta,
                                   raw=r.raw)

        return gen()

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return await asyncio.to_thread(self.chat, messages, **kwargs)
