"""How to retrieve: the retrieval modes, their one default, and the options of one retrieval.

Every caller (the service, ``lloco serve``, the CLI, the LlamaIndex and LangChain retrievers) takes its
defaults from here. Modes are a ``str`` enum, so the strings ``"dense"``, ``"fulltext"`` and ``"hybrid"``
keep working wherever a mode is expected.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from ..errors import InputError
from .catalog import DEFAULT_COLLECTION


class RetrievalMode(StrEnum):
    """``dense``: cosine over retrieval embeddings (HNSW); ``fulltext``: chunks containing any of the query's
    stemmed words, ranked by cover density; ``hybrid``: reciprocal-rank fusion of both."""

    DENSE = "dense"
    FULLTEXT = "fulltext"
    HYBRID = "hybrid"

    @classmethod
    def parse(cls, value: object) -> RetrievalMode:
        """``value`` as a mode (a member or its string); InputError naming the modes otherwise."""
        try:
            return cls(value)
        except ValueError:
            names = tuple(m.value for m in cls)
            raise InputError(f"unknown retrieval mode {value!r}; use one of {names}") from None


#: The one default mode: what a question is answered with unless the caller chooses. (A vector store's
#: similarity search is dense by contract: the LlamaIndex and LangChain vector stores pass DENSE themselves.)
DEFAULT_MODE = RetrievalMode.HYBRID
#: Chunks retrieved per question unless the caller chooses.
DEFAULT_TOP_K = 4


@dataclass(frozen=True)
class RetrievalOptions:
    """The options of one retrieval within a group: which collection, how many chunks, how, which chunks.

    ``filters``: a store filter (:class:`MetadataFilter`/:class:`FilterGroup` or their dict form). ``mode`` is
    checked (and turned into a :class:`RetrievalMode`) here; ``top_k`` and ``filters`` by the store.
    """

    collection: str = DEFAULT_COLLECTION
    top_k: int = DEFAULT_TOP_K
    mode: RetrievalMode = DEFAULT_MODE
    filters: Any = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "mode", RetrievalMode.parse(self.mode))

    def replace(self, **changes: Any) -> RetrievalOptions:
        """A copy with some options changed (checked again)."""
        return replace(self, **changes)

    def as_kwargs(self) -> dict[str, Any]:
        """The options as :meth:`CheatSheetStore.retrieve` keyword arguments."""
        return {
            "collection": self.collection,
            "top_k": self.top_k,
            "mode": self.mode,
            "filters": self.filters,
        }
