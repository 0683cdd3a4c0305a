"""``LLoCONodeParser``: Documents -> encoder-aligned chunks -> cheat sheets in Postgres -> TextNodes.

Each document is ingested into one store group (split with ``encoder.split``, compressed, embedded for
retrieval, written in one transaction; unchanged documents are skipped). The returned nodes are the stored
chunks: their ids are ``lloco-chunk-<id>``, their metadata carries the payload ids (hidden from the LLM
and embedder) and their ``embedding`` is the stored retrieval vector, so no embed step is needed after it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.node_parser.interface import NodeParser
from llama_index.core.schema import BaseNode, MetadataMode, NodeRelationship, RelatedNodeInfo, TextNode

from lloco_runtime import ContextEncoder, InputError, load_default_runtime
from lloco_runtime.store import DEFAULT_COLLECTION, CheatSheetStore, ChunkInfo, DocumentInput, validate_name

from . import keys


def chunk_to_node(
    row: ChunkInfo,
    *,
    group: str,
    collection: str,
    adapter_id: int | None = None,
    score_metadata: dict[str, Any] | None = None,
) -> TextNode:
    """A stored chunk as a TextNode with lloco's payload ids in (hidden) metadata."""
    meta = dict(row.metadata)
    meta.update(
        {
            keys.CHUNK_ID: row.chunk_id,
            keys.DOC_ID: row.doc_id,
            keys.ORDINAL: row.ordinal,
            keys.GROUP: group,
            keys.COLLECTION: collection,
            keys.N_TOKENS: row.n_tokens,
        }
    )
    if adapter_id is not None:
        meta[keys.ADAPTER_ID] = adapter_id
    if score_metadata:
        meta.update(score_metadata)
    node = TextNode(
        id_=keys.node_id_for(row.chunk_id),
        text=row.text,
        metadata=meta,
        embedding=row.embedding,
        start_char_idx=row.char_start,
        end_char_idx=row.char_end,
    )
    node.relationships[NodeRelationship.SOURCE] = RelatedNodeInfo(node_id=row.doc_id)
    keys.hide_payload(node)
    return node


class LLoCONodeParser(NodeParser):
    """Split on encoder segments, compress each chunk into a cheat sheet, store it, return the nodes.

    Build with :meth:`from_components` (an encoder and a store) or :meth:`from_defaults`. The pydantic
    fields hold the encoder's and the store's identity, so ``IngestionPipeline`` cache keys differ per
    encoder, embedder and database; the model and store handles are private attributes.
    """

    group: str = Field(description="store group (domain/task) the documents go to")
    collection: str = Field(default=DEFAULT_COLLECTION, description="store collection of the group")
    encoder_fingerprint: str = Field(description="fingerprint of the context encoder (cache key)")
    encoder_name: str = Field(description="base model and encoder config (cache key, human readable)")
    embedder_name: str = Field(description="retrieval embedder of the store (cache key)")
    store_location: str = Field(description="database URL (password hidden) and schema (cache key)")
    batch_size: int = Field(default=8, ge=1, description="chunks per encoder forward pass")

    _encoder: ContextEncoder = PrivateAttr()
    _store: CheatSheetStore = PrivateAttr()

    @classmethod
    def from_components(
        cls,
        encoder: ContextEncoder,
        store: CheatSheetStore,
        *,
        group: str,
        collection: str = DEFAULT_COLLECTION,
        batch_size: int = 8,
        **kwargs: Any,
    ) -> LLoCONodeParser:
        """A parser writing cheat sheets of ``encoder`` into ``store`` under ``collection/group``."""
        validate_name(group, "group")
        validate_name(collection, "collection")
        cfg = ",".join(f"{k}={v}" for k, v in sorted(encoder.config.to_dict().items()))
        parser = cls(
            group=group,
            collection=collection,
            encoder_fingerprint=encoder.fingerprint,
            encoder_name=f"{encoder.host.name}[{cfg}]",
            embedder_name=store.embedder.name,
            store_location=f"{store.url}#{store.schema}",
            batch_size=batch_size,
            **kwargs,
        )
        parser._encoder = encoder
        parser._store = store
        return parser

    @classmethod
    def from_defaults(
        cls,
        *,
        group: str,
        collection: str = DEFAULT_COLLECTION,
        lloco=None,
        store: CheatSheetStore | None = None,
        embed_model=None,
        **kwargs: Any,
    ) -> LLoCONodeParser:
        """Default runtime's encoder (or ``lloco.encoder``) into ``store`` (default: the configured store,
        with ``embed_model`` / ``Settings.embed_model`` as retrieval embedder if given)."""
        from .embeddings import resolve_embedder

        lloco = lloco or load_default_runtime()
        store = store or CheatSheetStore(embedder=resolve_embedder(embed_model))
        return cls.from_components(lloco.encoder, store, group=group, collection=collection, **kwargs)

    @classmethod
    def class_name(cls) -> str:
        return "LLoCONodeParser"

    @property
    def store(self) -> CheatSheetStore:
        return self._store

    @property
    def encoder(self) -> ContextEncoder:
        return self._encoder

    def _parse_nodes(
        self, nodes: Sequence[BaseNode], show_progress: bool = False, **kwargs: Any
    ) -> list[BaseNode]:
        if not hasattr(self, "_encoder") or getattr(self, "_encoder", None) is None:
            raise InputError(
                "LLoCONodeParser has no encoder/store (it was rebuilt from its fields?); create it "
                "with LLoCONodeParser.from_components(encoder, store, group=...)"
            )
        if self._encoder.fingerprint != self.encoder_fingerprint:
            raise InputError(
                "the encoder changed since this parser was built (its fingerprint differs); build "
                "a new parser so pipeline caches do not mix encoders"
            )
        docs = []
        for node in nodes:
            text = node.get_content(metadata_mode=MetadataMode.NONE)
            meta = {k: v for k, v in (node.metadata or {}).items() if k not in keys.PAYLOAD_KEYS}
            docs.append(
                DocumentInput(
                    doc_id=node.node_id, text=text, metadata=meta, source=f"document {node.node_id!r}"
                )
            )
        if not docs:
            return []
        self._store.ingest(
            docs,
            group=self.group,
            collection=self.collection,
            encoder=self._encoder,
            batch_size=self.batch_size,
            progress=show_progress,
        )
        # Read the chunks back (unchanged documents were skipped by ingest, and nodes carry the embeddings).
        rows = self._store.list_chunks(
            self.group, self.collection, doc_ids=[d.doc_id for d in docs], with_embeddings=True
        )
        by_doc: dict[str, list[ChunkInfo]] = {}
        for r in rows:
            by_doc.setdefault(r.doc_id, []).append(r)
        out: list[BaseNode] = []
        for node, doc in zip(nodes, docs, strict=True):
            for row in by_doc.get(doc.doc_id, []):
                child = chunk_to_node(row, group=self.group, collection=self.collection)
                child.relationships[NodeRelationship.SOURCE] = node.as_related_node_info()
                child.excluded_llm_metadata_keys = list(
                    dict.fromkeys([*node.excluded_llm_metadata_keys, *child.excluded_llm_metadata_keys])
                )
                child.excluded_embed_metadata_keys = list(
                    dict.fromkeys([*node.excluded_embed_metadata_keys, *child.excluded_embed_metadata_keys])
                )
                out.append(child)
        return out
