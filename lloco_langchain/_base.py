"""What :class:`~lloco_langchain.llm.LLoCOLLM` and :class:`~lloco_langchain.chat.ChatLLoCO` share.

The runtime/service they decode with, the decoding defaults, and per-call argument parsing: LangChain's
names mapped onto the core's request layer (:func:`lloco_runtime.stream_chunks` loads the cheat sheets,
checks the adapter and returns a :class:`~lloco_runtime.TokenStream` whose ``stats`` are the numbers of the
run; async token streams use :func:`lloco_runtime.iterate_in_thread`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Self

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, PrivateAttr

from lloco_runtime import (
    ChatMessage,
    ConfigError,
    GenerationConfig,
    InputError,
    LLoCO,
    LLoCOService,
    TokenStream,
    chunk_ids,
    generation_config,
    stream_chunks,
)

#: Per-call keyword arguments (``invoke(..., **kw)`` or ``.bind(**kw)``) besides LangChain's ``stop``.
CALL_KWARGS = frozenset(
    {"cheat_sheet_ids", "adapter_id", "max_new_tokens", "temperature", "top_p", "top_k", "seed"}
)


@dataclass(frozen=True)
class Request:
    """One parsed call: cheat-sheet chunk ids, the adapter id (None: base model) and decoding options."""

    chunk_ids: list[int]
    adapter_id: int | str | None
    config: GenerationConfig
    explicit_ids: bool
    explicit_adapter: bool


class LLoCOModelBase(BaseModel):
    """Fields and helpers of the LLoCO LangChain models (a pydantic mixin next to LangChain's base class)."""

    model_config = ConfigDict(arbitrary_types_allowed=True, populate_by_name=True)

    adapter_id: int | str | None = None
    max_new_tokens: int = Field(default=64, validation_alias=AliasChoices("max_new_tokens", "max_tokens"))
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: list[str] | None = None

    _service: LLoCOService | None = PrivateAttr(default=None)
    _lloco: LLoCO = PrivateAttr()

    @staticmethod
    def _check_backend(
        name: str, service: LLoCOService | None, lloco: LLoCO | None, data: Mapping[str, Any]
    ) -> None:
        """Refuse a missing or ambiguous runtime and LangChain's cache, before pydantic builds the model."""
        if service is None and lloco is None:
            raise ConfigError(
                f"{name} needs service=LLoCOService(...) (runtime + store) or lloco=LLoCO(...); "
                f"{name}.from_defaults() builds the default service"
            )
        if service is not None and not isinstance(service, LLoCOService):
            raise ConfigError(f"{name} needs service=LLoCOService(...), got {type(service).__name__}")
        if lloco is not None and not isinstance(lloco, LLoCO):
            raise ConfigError(f"{name} needs lloco=LLoCO(...), got {type(lloco).__name__}")
        if service is not None and lloco is not None and service.lloco is not lloco:
            raise ConfigError("pass either service= or lloco=, not two different runtimes")
        if data.get("cache", False) is not False:
            raise ConfigError(
                f"{name} does not support LangChain's model cache (cache must be False): its keys "
                "do not cover what the answer reads (the stored cheat sheets, the adapter, or the "
                "retrieved documents), so stale or foreign answers would be returned; cache "
                "whole chain outputs yourself if you need to"
            )

    @staticmethod
    def _resolve_aliases(data: dict[str, Any]) -> dict[str, Any]:
        """``max_tokens`` (LangChain's standard name) is ``max_new_tokens``; given both, ``max_new_tokens`` wins."""
        if "max_new_tokens" in data:
            data.pop("max_tokens", None)
        return data

    def _attach(self, service: LLoCOService | None, lloco: LLoCO | None) -> None:
        self._service = service
        self._lloco = lloco if lloco is not None else service.lloco  # type: ignore[union-attr]
        GenerationConfig(**self._gen_defaults())  # validate the decoding defaults now

    @classmethod
    def from_defaults(cls, **kwargs: Any) -> Self:
        """The default runtime over the default store (embedded Postgres under ``LLOCO_HOME``)."""
        return cls(service=LLoCOService.from_defaults(), **kwargs)

    @property
    def service(self) -> LLoCOService | None:
        return self._service

    @property
    def lloco(self) -> LLoCO:
        return self._lloco

    @property
    def model_name(self) -> str:
        """The decoder's name (``response_metadata["model_name"]``, LangSmith's ``ls_model_name``)."""
        return self._lloco.host.name

    def _model_params(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "base_fingerprint": self._lloco.host.fingerprint[:12],
            "encoder_fingerprint": self._lloco.encoder.fingerprint[:12],
            **self._gen_defaults(),
            "adapter_id": self.adapter_id,
        }

    def _gen_defaults(self) -> dict[str, Any]:
        return {
            "max_new_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "seed": self.seed,
        }

    def _request(self, stop: list[str] | None, kwargs: Mapping[str, Any]) -> Request:
        """Parse per-call arguments (unknown ones are refused, naming the known ones)."""
        unknown = set(kwargs) - CALL_KWARGS
        if unknown:
            raise InputError(
                f"unknown {type(self).__name__} argument(s) {sorted(unknown)}; known: {sorted(CALL_KWARGS)}"
            )
        ids = kwargs.get("cheat_sheet_ids")
        defaults = {**self._gen_defaults(), "stop": stop if stop is not None else self.stop}
        return Request(
            chunk_ids(ids),
            kwargs.get("adapter_id", self.adapter_id),
            generation_config(defaults, kwargs),
            explicit_ids=ids is not None,
            explicit_adapter="adapter_id" in kwargs,
        )

    def _tokens(self, prompt: str | Sequence[ChatMessage], req: Request) -> TokenStream:
        """The answer's token stream (the request layer's path: cheat sheets loaded from the service's store,
        the adapter checked there, the prompt built now)."""
        return stream_chunks(
            self._lloco,
            self._service.store if self._service is not None else None,
            prompt,
            req.chunk_ids,
            adapter_id=req.adapter_id,
            config=req.config,
            build_hint=f"{type(self).__name__}(service=LLoCOService(lloco, store))",
        )
