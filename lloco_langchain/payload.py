"""The ids a LLoCO answer needs, as they travel through LangChain ``Document`` metadata.

LangChain never carries tensors to an LLM. :class:`~lloco_langchain.retriever.LLoCORetriever` writes the
chunk id, group and the group's active adapter id into each Document's metadata; the chain reads them back
here and passes them to :class:`~lloco_langchain.llm.LLoCOLLM` as call arguments, which loads the cheat
sheets and the adapter itself.
"""

from __future__ import annotations

from collections.abc import Sequence

from langchain_core.documents import Document

from lloco_runtime import ChunkRef, InputError, Payload, payload
from lloco_runtime.store import RetrievalResult

CHUNK_ID = "chunk_id"
DOC_ID = "doc_id"
SCORE = "score"
GROUP = "group"
COLLECTION = "collection"
ADAPTER_ID = "adapter_id"
ORDINAL = "ordinal"
N_TOKENS = "n_tokens"

#: Metadata keys lloco owns (they win over user metadata of the same name).
LLOCO_KEYS = (CHUNK_ID, DOC_ID, SCORE, GROUP, COLLECTION, ADAPTER_ID, ORDINAL, N_TOKENS)


def documents_from_result(result: RetrievalResult) -> list[Document]:
    """One Document per retrieved chunk: its text, its metadata plus lloco's ids (lloco's keys win)."""
    docs = []
    for c in result.chunks:
        meta = {
            **c.metadata,
            CHUNK_ID: c.chunk_id,
            DOC_ID: c.doc_id,
            ORDINAL: c.ordinal,
            N_TOKENS: c.n_tokens,
            SCORE: float(c.score),
            GROUP: result.group,
            COLLECTION: result.collection,
            ADAPTER_ID: result.adapter_id,
        }
        docs.append(Document(page_content=c.text, metadata=meta, id=str(c.chunk_id)))
    return docs


def payload_from_documents(documents: Sequence[Document]) -> Payload:
    """Collect chunk ids (in reading order) and the (single) adapter id from retrieved Documents: the
    request layer's :func:`lloco_runtime.payload` over their metadata.

    Raises :class:`InputError` for an empty list, Documents not made by a lloco retriever, or Documents of
    more than one group (one answer applies one group's adapter).
    """
    missing = [
        i for i, d in enumerate(documents) if not isinstance(d, Document) or d.metadata.get(CHUNK_ID) is None
    ]
    if missing:
        raise InputError(
            f"document(s) at position {missing[:5]} carry no lloco {CHUNK_ID!r} in their metadata; a LLoCO "
            "chain answers from cheat sheets stored by lloco, so retrieve with LLoCORetriever (or a retriever "
            "that keeps its metadata), not with a plain text retriever"
        )
    return payload(
        [
            ChunkRef(
                d.metadata[CHUNK_ID],
                doc_id=d.metadata.get(DOC_ID, ""),
                ordinal=d.metadata.get(ORDINAL, 0),
                n_tokens=d.metadata.get(N_TOKENS, 0),
                group=d.metadata.get(GROUP),
                collection=d.metadata.get(COLLECTION),
                adapter_id=d.metadata.get(ADAPTER_ID),
            )
            for d in documents
        ]
    )
