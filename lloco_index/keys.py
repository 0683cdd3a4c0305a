"""The metadata keys that carry lloco's payload ids through LlamaIndex, and reading them back.

LlamaIndex never carries tensors to an LLM: nodes carry *ids* (chunk, document, group, adapter) in their
metadata, hidden from what the LLM and the embedder see, and :class:`~lloco_index.LLoCOLLM` loads the
cheat sheets itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from llama_index.core.schema import BaseNode, NodeWithScore

from lloco_runtime import ChunkRef, InputError, Payload, payload

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


def chunk_ref(n: BaseNode | NodeWithScore) -> ChunkRef:
    """A retrieved node as the request layer's :class:`~lloco_runtime.ChunkRef` (its payload ids).

    Raises InputError naming the fix when a node carries no cheat-sheet id (e.g. it came from another
    vector store or a plain text splitter).
    """
    node = _node(n)
    meta: dict[str, Any] = node.metadata or {}
    cid = meta.get(CHUNK_ID)
    if cid is None:
        cid = chunk_id_from_node_id(node.node_id)
    try:
        return ChunkRef(
            cid,
            doc_id=meta.get(DOC_ID, ""),
            ordinal=meta.get(ORDINAL, 0),
            n_tokens=meta.get(N_TOKENS, 0),
            group=meta.get(GROUP),
            collection=meta.get(COLLECTION),
            adapter_id=meta.get(ADAPTER_ID),
        )
    except InputError:
        raise InputError(
            f"node {node.node_id!r} carries no lloco cheat-sheet id (metadata key {CHUNK_ID!r}); it was "
            "not made by lloco (a foreign vector store or text splitter?). Retrieve with LLoCORetriever "
            "or a VectorStoreIndex over LLoCOVectorStore, and ingest with LLoCONodeParser"
        ) from None


def payload_of(nodes: Sequence[BaseNode | NodeWithScore]) -> Payload:
    """What an answer over retrieved nodes needs (:func:`lloco_runtime.payload`): chunk ids in reading order,
    once each, and the one adapter id of their one group; InputError for no nodes, foreign nodes, or nodes
    of several groups or adapters."""
    return payload([chunk_ref(n) for n in nodes])
