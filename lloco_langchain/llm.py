"""``LLoCOLLM``: the LLoCO decoder as a LangChain ``LLM``, reading cheat sheets by chunk id.

    llm = LLoCOLLM(service=service, max_new_tokens=64)
    llm.invoke("Who kept the light?", cheat_sheet_ids=[3, 4], adapter_id=7)
    bound = llm.bind(cheat_sheet_ids=[3, 4], adapter_id=7)   # the same, inside LCEL

The prompt string is the *question*: the runtime renders it with its own template, splicing the cheat
sheets (loaded from the store by id, fingerprint-checked) into the context slot. Without cheat sheets the
question is answered with no context. For conversations (system/user/assistant messages) use
:class:`~lloco_langchain.chat.ChatLLoCO`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models.llms import LLM
from langchain_core.outputs import Generation, GenerationChunk, LLMResult
from langchain_core.runnables.config import run_in_executor
from pydantic import Field

from lloco_runtime import LLoCO, LLoCOService, TokenStream, iterate_in_thread

from ._base import CALL_KWARGS, LLoCOModelBase
from .remote import RemoteLLoCOLLM

__all__ = ["CALL_KWARGS", "LLoCOLLM"]


class LLoCOLLM(LLM, LLoCOModelBase):
    """A LangChain LLM over a :class:`~lloco_runtime.LLoCO` runtime (and optionally its store).

    Args:
        service: an :class:`~lloco_runtime.LLoCOService`; needed for ``cheat_sheet_ids`` and adapter
            ids stored in the database.
        lloco: a bare runtime instead (no store): plain questions, or adapters registered on
            ``lloco.adapters`` by id.
        adapter_id: default adapter when a call names none (per call ``adapter_id=None`` means the base model).
        max_new_tokens (alias ``max_tokens``), temperature, top_p, top_k, seed, stop: decoding defaults,
            overridable per call.
        cache: must stay ``False``: LangChain's LLM cache keys ignore call arguments, so it would return an
            answer for other cheat sheets or another adapter.
    """

    cache: Any = Field(default=False, exclude=True)

    def __init__(
        self, *, service: LLoCOService | None = None, lloco: LLoCO | None = None, **data: Any
    ) -> None:
        self._check_backend("LLoCOLLM", service, lloco, data)
        data = self._resolve_aliases(data)
        super().__init__(**data)
        self._attach(service, lloco)

    @classmethod
    def from_endpoint(cls, endpoint: str, **kwargs: Any) -> RemoteLLoCOLLM:
        """An LLM that asks a running ``lloco serve`` at ``endpoint`` instead of loading a model (``group=``:
        the server retrieves that group's cheat sheets): a :class:`~lloco_langchain.remote.RemoteLLoCOLLM`."""
        return RemoteLLoCOLLM(endpoint, **kwargs)

    # -- LangChain metadata -------------------------------------------------------------------------------

    @property
    def _llm_type(self) -> str:
        return "lloco"

    @property
    def _identifying_params(self) -> Mapping[str, Any]:
        return self._model_params()

    # -- the request ---------------------------------------------------------------------------------------

    def _stream_of(self, prompt: str, stop: list[str] | None, kwargs: dict[str, Any]) -> TokenStream:
        """The answer's token stream; its ``stats`` hold token counts and timings when it ends."""
        return self._tokens(prompt, self._request(stop, kwargs))

    def _run(self, prompt: str, stop: list[str] | None, kwargs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        tokens = self._stream_of(prompt, stop, kwargs).finish()
        return tokens.text, tokens.stats.to_dict()

    # -- sync ----------------------------------------------------------------------------------------------

    def _call(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> str:
        return self._run(prompt, stop, kwargs)[0]

    def _generate(
        self,
        prompts: list[str],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> LLMResult:
        """Like ``LLM._generate`` but keeps token counts and timings in ``generation_info``."""
        gens = []
        for prompt in prompts:
            text, info = self._run(prompt, stop, kwargs)
            gens.append([Generation(text=text, generation_info=info)])
        return LLMResult(generations=gens)

    def _stream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[GenerationChunk]:
        tokens = self._stream_of(prompt, stop, kwargs)
        try:
            for text in tokens:
                chunk = GenerationChunk(text=text)
                if run_manager:
                    run_manager.on_llm_new_token(text, chunk=chunk)
                yield chunk
        finally:
            tokens.close()  # releases the adapter pin at once when the caller stops early
        # A closing empty chunk carries the numbers into the merged generation (on_llm_end).
        yield GenerationChunk(text="", generation_info=tokens.stats.to_dict())

    # -- async: the decoder is synchronous; run it on a worker thread, never on the event loop -------------

    async def _acall(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> str:
        return (await run_in_executor(None, self._run, prompt, stop, kwargs))[0]

    async def _agenerate(
        self,
        prompts: list[str],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> LLMResult:
        gens = []
        for prompt in prompts:
            text, info = await run_in_executor(None, self._run, prompt, stop, kwargs)
            gens.append([Generation(text=text, generation_info=info)])
        return LLMResult(generations=gens)

    async def _astream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[GenerationChunk]:
        tokens = await run_in_executor(None, self._stream_of, prompt, stop, kwargs)  # reads the store
        async with contextlib.aclosing(iterate_in_thread(tokens)) as texts:
            async for text in texts:
                chunk = GenerationChunk(text=text)
                if run_manager:
                    await run_manager.on_llm_new_token(text, chunk=chunk)
                yield chunk
        yield GenerationChunk(text="", generation_info=tokens.stats.to_dict())
