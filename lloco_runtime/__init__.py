"""lloco_runtime: the framework-free core of LLoCO (encoder, decoder, adapters, store, training, CLI).

Names are imported lazily (PEP 562), so ``import lloco_runtime`` and ``lloco --help`` stay fast and the
CLI can set threading options before torch is loaded.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_EXPORTS = {
    "AdapterArtifact": "adapters",
    "AdapterManager": "adapters",
    "CheatSheets": "encoder",
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
    "LLoCO": "runtime",
    "load_default_runtime": "runtime",
    "LLoCOService": "service",
    "Answer": "service",
    "Source": "service",
    "CheatSheetStore": "store",
}

__all__ = [
    "AdapterArtifact",
    "AdapterError",
    "AdapterManager",
    "Answer",
    "ChatMessage",
    "CheatSheetError",
    "CheatSheetStore",
    "CheatSheets",
    "Chunk",
    "ConfigError",
    "ContextEncoder",
    "ContextTooLongError",
    "EncoderConfig",
    "FingerprintMismatchError",
    "GenerationConfig",
    "GenerationResult",
    "Generator",
    "InputError",
    "LLoCO",
    "LLoCOError",
    "LLoCOService",
    "LoadedModel",
    "ModelLoadError",
    "NotFoundError",
    "Prompt",
    "PromptTemplate",
    "Source",
    "StoreError",
    "StreamStats",
    "load_default_runtime",
    "load_model",
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
    from .encoder import CheatSheets, Chunk, ContextEncoder, EncoderConfig
    from .errors import (
        AdapterError,
        CheatSheetError,
        ConfigError,
        ContextTooLongError,
        FingerprintMismatchError,
        InputError,
        LLoCOError,
        ModelLoadError,
        NotFoundError,
        StoreError,
    )
    from .generation import GenerationConfig, GenerationResult, Generator, StreamStats
    from .models import LoadedModel, load_model
    from .prompt import ChatMessage, Prompt, PromptTemplate
    from .runtime import LLoCO, load_default_runtime
    from .service import Answer, LLoCOService, Source
    from .store import CheatSheetStore
