"""lloco_runtime: the framework-free core of LLoCO (encoder, decoder, adapters, store, training, CLI)."""

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
from .generation import GenerationConfig, GenerationResult, Generator
from .models import LoadedModel, load_model
from .prompt import Prompt, PromptTemplate
from .runtime import LLoCO, load_default_runtime

__version__ = "0.1.0"

__all__ = [
    "AdapterArtifact", "AdapterError", "AdapterManager", "CheatSheetError", "CheatSheets", "Chunk",
    "ConfigError", "ContextEncoder", "ContextTooLongError", "EncoderConfig", "FingerprintMismatchError",
    "GenerationConfig", "GenerationResult", "Generator", "InputError", "LLoCO", "LLoCOError", "LoadedModel",
    "ModelLoadError", "NotFoundError", "Prompt", "PromptTemplate", "StoreError", "load_default_runtime",
    "load_model",
]
