"""The exceptions lloco raises. Every one says what went wrong and how to fix it.

All derive from :class:`LLoCOError`, so an application can catch one type. Most also derive from the
built-in exception a Python user would expect (``ValueError`` for bad input, ``LookupError`` for unknown
names), so generic handlers keep working.
"""

from __future__ import annotations


class LLoCOError(Exception):
    """Root of every error lloco raises on purpose."""


class ConfigError(LLoCOError, ValueError):
    """A configuration value is invalid (wrong type, out of range, inconsistent with another value)."""


class InputError(LLoCOError, ValueError):
    """User input cannot be used: empty or binary text, malformed JSONL, an out-of-range argument."""


class ModelLoadError(LLoCOError, RuntimeError):
    """A model, tokenizer, encoder or adapter could not be found or loaded from local files."""


class FingerprintMismatchError(LLoCOError, ValueError):
    """Two artifacts that must belong to one encoder/decoder unit come from different ones."""


class CheatSheetError(LLoCOError, ValueError):
    """Cheat-sheet tensors are corrupted or do not fit the decoder (shape, hidden size, dtype)."""


class NotFoundError(LLoCOError, LookupError):
    """A named object (collection, group, document, chunk, adapter) does not exist."""


class AdapterError(LLoCOError, RuntimeError):
    """An adapter cannot be registered, loaded or applied."""


class StoreError(LLoCOError, RuntimeError):
    """The database is unreachable, misconfigured, or holds data this version cannot read."""


class ContextTooLongError(InputError):
    """A prompt (text plus cheat sheets) does not fit the decoder's context window."""


class ChunkNotFoundError(NotFoundError, CheatSheetError):
    """A chunk id names no stored chunk (deleted, never ingested, or from another database)."""


class MissingStoreError(ConfigError, InputError):
    """Cheat sheets were asked for by chunk id, but the model was built without a store (a configuration
    error, and an input error for callers that catch those)."""
