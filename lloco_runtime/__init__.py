"""lloco_runtime: the framework-free core of LLoCO (encoder, decoder, adapters, store, training, CLI).

The public API is ``__all__`` here and in :mod:`lloco_runtime.store`: the integrations (``lloco_index``,
``lloco_langchain``) and the examples import nothing deeper (a test checks it). Names are imported lazily
(PEP 562), so ``import lloco_runtime`` and ``lloco --help`` stay fast and the CLI can set threading options
before torch is loaded.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_EXPORTS = {
    "AdapterArtifact": "adapters",
    "AdapterManager": "adapters",
    "iterate_in_thread": "aio",
    "run_in_thread": "aio",
    "LLoCOClient": "client",
    "RemoteError": "client",
    "database_url": "config",
    "home_dir": "config",
    "CallableEmbedder": "embeddings",
    "Embedder": "embeddings",
    "as_matrix": "embeddings",
    "default_embedder": "embeddings",
    "CheatSheets": "encoder",
    "ChunkSheet": "sheets",
    "Chunk": "encoder",
    "ContextEncoder": "encoder",
    "EncoderConfig": "encoder",
    "AdapterError": "errors",
    "CheatSheetError": "errors",
    "ConfigError": "errors",
    "ContextTooLongError": "errors",
    "FingerprintMismatchError": "errors",
    "InputError": "errors",
    "LLoCOError": "errors",
    "ModelLoadError": "errors",
    "NotFoundError": "errors",
    "StoreError": "errors",
    "GenerationConfig": "generation",
    "GenerationResult": "generation",
    "Generator": "generation",
    "StreamStats": "generation",
    "LoadedModel": "models",
    "load_model": "models",
    "ChatMessage": "prompt",
    "Prompt": "prompt",
    "PromptTemplate": "prompt",
    "chat_messages": "prompt",
    "Answer": "request",
    "ChunkRef": "request",
    "MissingStoreError": "errors",
    "Payload": "request",
    "RunStats": "request",
    "Source": "request",
    "TokenStream": "request",
    "adapter_key": "request",
    "check_found": "request",
    "chunk_ids": "request",
    "context_sheets": "request",
    "generation_config": "request",
    "load_cheat_sheets": "request",
    "no_chunks_error": "request",
    "payload": "request",
    "reading_order": "request",
    "sources": "request",
    "start_stream": "request",
    "stop_sequences": "request",
    "stream_chunks": "request",
    "AdapterChoice": "runtime",
    "LLoCO": "runtime",
    "load_default_runtime": "runtime",
    "route_adapter": "runtime",
    "LLoCOService": "service",
    "CheatSheetStore": "store",
    "FinetuneConfig": "training.finetune",
    "finetune_group": "training.finetune",
}

__all__ = [
    "AdapterArtifact",
    "AdapterChoice",
    "AdapterError",
    "AdapterManager",
    "Answer",
    "CallableEmbedder",
    "ChatMessage",
    "CheatSheetError",
    "CheatSheetStore",
    "CheatSheets",
    "Chunk",
    "ChunkRef",
    "ChunkSheet",
    "ConfigError",
    "ContextEncoder",
    "ContextTooLongError",
    "Embedder",
    "EncoderConfig",
    "FinetuneConfig",
    "FingerprintMismatchError",
    "GenerationConfig",
    "GenerationResult",
    "Generator",
    "InputError",
    "LLoCO",
    "LLoCOClient",
    "LLoCOError",
    "LLoCOService",
    "LoadedModel",
    "MissingStoreError",
    "ModelLoadError",
    "NotFoundError",
    "Payload",
    "Prompt",
    "PromptTemplate",
    "RemoteError",
    "RunStats",
    "Source",
    "StoreError",
    "StreamStats",
    "TokenStream",
    "adapter_key",
    "as_matrix",
    "chat_messages",
    "check_found",
    "chunk_ids",
    "context_sheets",
    "database_url",
    "default_embedder",
    "finetune_group",
    "generation_config",
    "home_dir",
    "iterate_in_thread",
    "load_cheat_sheets",
    "load_default_runtime",
    "load_model",
    "no_chunks_error",
    "payload",
    "reading_order",
    "route_adapter",
    "run_in_thread",
    "sources",
    "start_stream",
    "stop_sequences",
    "stream_chunks",
]  # = sorted(_EXPORTS), checked by a test


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'lloco_runtime' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # static analysers and IDEs see the real names
    from .adapters import AdapterArtifact, AdapterManager
    from .aio import iterate_in_thread, run_in_thread
    from .client import LLoCOClient, RemoteError
    from .config import database_url, home_dir
    from .embeddings import CallableEmbedder, Embedder, as_matrix, default_embedder
    from .encoder import CheatSheets, Chunk, ContextEncoder, EncoderConfig
    from .errors import (
        AdapterError,
        CheatSheetError,
        ConfigError,
        ContextTooLongError,
        FingerprintMismatchError,
        InputError,
        LLoCOError,
        MissingStoreError,
        ModelLoadError,
        NotFoundError,
        StoreError,
    )
    from .generation import GenerationConfig, GenerationResult, Generator, StreamStats
    from .models import LoadedModel, load_model
    from .prompt import ChatMessage, Prompt, PromptTemplate, chat_messages
    from .request import (
        Answer,
        ChunkRef,
        Payload,
        RunStats,
        Source,
        TokenStream,
        adapter_key,
        check_found,
        chunk_ids,
        context_sheets,
        generation_config,
        load_cheat_sheets,
        no_chunks_error,
        payload,
        reading_order,
        sources,
        start_stream,
        stop_sequences,
        stream_chunks,
    )
    from .runtime import AdapterChoice, LLoCO, load_default_runtime, route_adapter
    from .service import LLoCOService
    from .sheets import ChunkSheet
    from .store import CheatSheetStore
    from .training.finetune import FinetuneConfig, finetune_group
