"""The metadata keys that carry lloco's payload ids through LlamaIndex, and reading them back.

LlamaIndex never carries tensors to an LLM: nodes carry *ids* (chunk, document, group, adapter) in their
metadata, hidden from what the LLM and the embedder see, and :class:`~lloco_index.LLoCOLLM` loads the
cheat sheets itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from llama_index.core.schema import BaseNode, NodeWithScore

from lloco_runtime.errors import InputError

CHUNK_ID = "lloco_chunk_id"
DOC_ID = "lloco_doc_id"
ORDINAL = "lloco_ordinal"
GROUP = "lloco_group"
COLLECTION = "lloco_collection"
ADAPTER_ID = "lloco_adapter_id"
N_TOKENS = "lloco_n_tokens"

#: Every key lloco stamps; none of them is shown to the LLM or the embedder.
PAYLOAD_KEYS: tuple[str, ...] = (CHUNK_ID, DOC_ID, ORDINAL, GROUP, COLLECTION, ADAPTER_ID, N_TOKENS)

NODE_ID_PREFIX = "lloco-chunk-"


def node_id_for(chunk_id: int) -> str:
    """The LlamaIndex node id of a stored chunk (stable while the document is unchanged)."""
    return f"{NODE_ID_PREFIX}{int(chunk_id)}"


def chunk_id_from_node_id(node_id: str) -> int | None:
    """The chunk id encoded in a lloco node id, or None for a node id lloco did not make."""
    if isinstance(node_id, str) and node_id.startswith(NODE_ID_PREFIX):
        rest = node_id[len(NODE_ID_PREFIX) :]
        if rest.isdigit():
            return int(rest)
    return None


def hide_payload(node: BaseNode) -> None:
    """Exclude lloco's payload keys from the LLM's and the embedder's view of ``node`` (idempotent)."""
    for attr in ("excluded_llm_metadata_keys", "excluded_embed_metadata_keys"):
        keys = list(getattr(node, attr))
        keys.extend(k for k in PAYLOAD_KEYS if k not in keys)
        setattr(node, attr, keys)


def _node(n: BaseNode | NodeWithScore) -> BaseNode:
    return n.node if isinstance(n, NodeWithScore) else n


def chunk_ids_of(nodes: Sequence[BaseNode | NodeWithScore]) -> list[int]:
    """Chunk ids of retrieved nodes, in document order (doc, ordinal), without duplicates.

    Raises InputError naming the fix when a node carries no cheat-sheet id (e.g. it came from another
    vector store or a plain text splitter).
    """
    seen: dict[int, tuple[str, int]] = {}
    for n in nodes:
        node = _node(n)
        meta: dict[str, Any] = node.metadata or {}
        cid = meta.get(CHUNK_ID)
        if cid is None:
            cid = chunk_id_from_node_id(node.node_id)
        if isinstance(cid, bool) or not isinstance(cid, int):
            raise InputError(
                f"node {node.node_id!r} carries no lloco cheat-sheet id (metadata key {CHUNK_ID!r}); it was "
                "not made by lloco (a foreign vector store or text splitter?). Retrieve with LLoCORetriever "
                "or a VectorStoreIndex over LLoCOVectorStore, and ingest with LLoCONodeParser"
            )
        seen.setdefault(cid, (str(meta.get(DOC_ID, "")), int(meta.get(ORDINAL, 0) or 0)))
    return sorted(seen, key=lambda c: (*seen[c], c))


def adapter_id_of(nodes: Sequence[BaseNode | NodeWithScore]) -> int | None:
    """The adapter id the nodes agree on (their group's active adapter), or None.

    Nodes of groups with different adapters cannot be answered in one call: that is an InputError.
    """
    ids = {_node(n).metadata.get(ADAPTER_ID) for n in nodes}
    ids.discard(None)
    if len(ids) > 1:
        raise InputError(
            f"retrieved nodes come from groups with different adapters {sorted(ids)}; retrieve "
            "from one group per query"
        )
    return next(iter(ids), None)
