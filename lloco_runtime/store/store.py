"""``CheatSheetStore``: the one object applications use to ingest, retrieve and manage cheat sheets.

It owns an engine (embedded Postgres by default, or any Postgres by URL), a schema (default ``lloco``)
and a retrieval embedder. Opening it creates or upgrades the schema; every method is one transaction.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Self

import numpy as np
import torch
from sqlalchemy import Connection, Engine, func, select
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.schema import DropSchema

from .. import config
from ..embeddings import Embedder, as_matrix, default_embedder
from ..errors import ConfigError, InputError, StoreError
from ..sheets import ChunkSheet
from . import bulk, catalog, chunks, registry
from .catalog import DEFAULT_COLLECTION
from .filters import Filter, compile_filter, parse_filter
from .ingest import (
    EncoderLike,
    PendingDocument,
    count_documents,
    existing_state,
    is_unchanged,
    pending_documents,
    prepare,
    prepare_recompress,
    settle_adapters,
    stored_chunks,
    write_document,
    write_recompressed,
)
from .inputs import DocumentInput, check_unicode, check_unique, read_paths
from .names import validate_name, validate_schema
from .options import DEFAULT_MODE, DEFAULT_TOP_K, RetrievalMode
from .records import (
    AdapterInfo,
    BulkDocument,
    BulkLoadReport,
    ChunkInfo,
    CollectionInfo,
    DocumentInfo,
    DocumentOutcome,
    GroupInfo,
    IngestReport,
    RecompressOutcome,
    RecompressReport,
    RetrievalResult,
    StorageStats,
    StoreStatus,
)
from .retrieve import (
    MAX_TOP_K,
    check_ef_search,
    check_top_k,
    dense_hits,
    fetch_cheat_sheets,
    fetch_chunks,
    fulltext_hits,
    reciprocal_rank_fusion,
    restrict,
)
from .schema import (
    LATEST_VERSION,
    Tables,
    build_tables,
    current_version,
    drop_hnsw_index,
    ensure_hnsw_index,
    has_hnsw_index,
    migrate,
    search_path_value,
    vector_extension_schema,
)
from .server import create_store_engine, default_ann_index, install_search_path, redact, resolve_url

_log = logging.getLogger(__name__)

SHEET_DTYPES = (None, "float16", "bfloat16", "float32")
ANN_INDEX = ("auto", "hnsw", "none")


class CheatSheetStore:
    """Cheat sheets, chunks, retrieval keys and adapters in one Postgres schema.

    Args:
        url: a Postgres URL; default ``LLOCO_DATABASE_URL``, else the embedded server under ``LLOCO_HOME``.
        schema: the schema lloco owns there; default ``LLOCO_SCHEMA`` or ``lloco``.
        embedder: retrieval embedder; default all-MiniLM-L6-v2. A schema records the embedder it was
            created with and refuses another one (vectors of two models are not comparable).
        create: create or upgrade the schema when needed (else an uninitialised schema is an error).
        ann_index: ``hnsw`` keeps an HNSW cosine index on the retrieval embeddings; ``none`` drops it (exact
            search); ``auto`` (default) is ``hnsw`` except for the embedded server on a CPU its pgvector
            build cannot run HNSW on: a local server on a CPU without AVX-512 (see ``server.default_ann_index``).
        cheat_sheet_dtype: storage dtype of cheat sheets: ``float16`` (default, half the bytes of fp32;
            falls back to the source dtype for values beyond fp16 range), ``bfloat16``, ``float32`` or
            None to keep the encoder's dtype.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        schema: str | None = None,
        embedder: Embedder | None = None,
        create: bool = True,
        ann_index: str = "auto",
        cheat_sheet_dtype: str | None = "float16",
        echo: bool = False,
    ) -> None:
        self.schema = validate_schema(config.schema_name() if schema is None else schema)
        if cheat_sheet_dtype not in SHEET_DTYPES:
            raise ConfigError(f"cheat_sheet_dtype must be one of {SHEET_DTYPES}, got {cheat_sheet_dtype!r}")
        self.cheat_sheet_dtype = cheat_sheet_dtype
        if ann_index not in ANN_INDEX:
            raise ConfigError(f"ann_index must be one of {ANN_INDEX}, got {ann_index!r}")
        self.embedder: Embedder = embedder if embedder is not None else default_embedder()
        self._url, self.embedded = resolve_url(url)
        if ann_index == "auto":
            ann_index = default_ann_index(self._url, self.embedded)
        self.ann_index = ann_index
        self.engine: Engine = create_store_engine(self._url, echo=echo)
        self.version = 0
        self.vector_schema: str | None = None
        self.tables: Tables = build_tables(self.schema, self.embedder.dim)
        self._open(create)

    # -- lifecycle ---------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The database URL with its password hidden."""
        return redact(self._url)

    def _settings(self) -> dict[str, Any]:
        return {"embedder": self.embedder.name, "embedding_dim": int(self.embedder.dim)}

    def _open(self, create: bool) -> None:
        try:
            with self.engine.begin() as conn:
                version = current_version(conn, self.schema)
                if version < LATEST_VERSION and create:
                    _, version, _ = migrate(conn, self.schema, self._settings())
                elif version == 0:
                    raise StoreError(
                        f"schema {self.schema!r} is not initialised in {self.url}; run `lloco db init`"
                    )
                elif version > LATEST_VERSION:
                    raise StoreError(
                        f"schema {self.schema!r} is at version {version}, newer than this lloco "
                        f"({LATEST_VERSION}); upgrade lloco"
                    )
                elif version < LATEST_VERSION:
                    raise StoreError(
                        f"schema {self.schema!r} is at version {version}; run `lloco db init` to upgrade it"
                    )
                vector_schema = vector_extension_schema(conn)
                settings = {r.key: r.value for r in conn.execute(select(self.tables.settings))}
                self._sync_ann_index(conn, vector_schema, create)
        except OperationalError as exc:
            raise StoreError(
                f"cannot reach Postgres at {self.url}: {str(exc.orig).strip().splitlines()[0]}; "
                "check LLOCO_DATABASE_URL or unset it to use the embedded server"
            ) from exc
        self.version, self.vector_schema = version, vector_schema
        want = self._settings()
        if (
            settings.get("embedding_dim") != want["embedding_dim"]
            or settings.get("embedder") != want["embedder"]
        ):
            raise ConfigError(
                f"schema {self.schema!r} indexes embeddings of {settings.get('embedder')!r} "
                f"({settings.get('embedding_dim')} dims) but this store was opened with {want['embedder']!r} "
                f"({want['embedding_dim']} dims); pass the same embedder, or use another schema (LLOCO_SCHEMA)"
            )
        if vector_schema is not None:
            install_search_path(self.engine, [vector_schema])

    def _sync_ann_index(self, conn: Connection, vector_schema: str | None, create: bool) -> None:
        """Create the HNSW index when wanted (only if ``create``: it can take long on a big table); drop it
        where it is not wanted, always, because a pgvector build that cannot run it crashes the server."""
        if self.ann_index == "hnsw":
            if create and vector_schema is not None and not has_hnsw_index(conn, self.tables):
                conn.execute(select(func.set_config("search_path", search_path_value([vector_schema]), True)))
                ensure_hnsw_index(conn, self.tables)
        elif has_hnsw_index(conn, self.tables):
            _log.warning(
                "dropping the HNSW index of schema %s: this pgvector build cannot run it here "
                "(retrieval uses exact search)",
                self.schema,
            )
            drop_hnsw_index(conn, self.tables)

    def close(self) -> None:
        """Release pooled connections (the embedded server stops when the process exits)."""
        self.engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def drop_schema(self) -> None:
        """Delete lloco's schema and everything in it (nothing else in the database is touched)."""
        with self.engine.begin() as conn:
            conn.execute(DropSchema(self.schema, cascade=True, if_exists=True))
        self.version = 0

    def status(self) -> StoreStatus:
        """Schema version, embedder, row counts and bytes of cheat sheets and adapters."""
        t = self.tables
        with self.engine.begin() as conn:
            counts = {
                name: int(conn.execute(select(func.count()).select_from(tab)).scalar_one())
                for name, tab in (
                    ("collections", t.collections),
                    ("groups", t.groups),
                    ("documents", t.documents),
                    ("chunks", t.chunks),
                    ("cheat_sheets", t.cheat_sheets),
                    ("adapters", t.adapters),
                )
            }
            sizes = {
                "cheat_sheets": int(
                    conn.execute(select(func.coalesce(func.sum(t.cheat_sheets.c.n_bytes), 0))).scalar_one()
                ),
                "adapters": int(
                    conn.execute(select(func.coalesce(func.sum(t.adapters.c.n_bytes), 0))).scalar_one()
                ),
                "chunk_text": int(
                    conn.execute(
                        select(func.coalesce(func.sum(func.octet_length(t.chunks.c.text)), 0))
                    ).scalar_one()
                ),
            }
            settings = {r.key: r.value for r in conn.execute(select(t.settings))}
            ann = "hnsw" if has_hnsw_index(conn, t) else "none"
        return StoreStatus(
            url=self.url,
            embedded=self.embedded,
            schema=self.schema,
            version=self.version,
            latest_version=LATEST_VERSION,
            vector_schema=self.vector_schema,
            embedder=settings.get("embedder"),
            embedding_dim=settings.get("embedding_dim"),
            ann_index=ann,
            counts=counts,
            bytes=sizes,
        )

    def storage_stats(self, group: str, collection: str = DEFAULT_COLLECTION) -> StorageStats:
        """Stored bytes per chunk of ``collection/group``: chunk row and cheat-sheet row, as Postgres stores
        them (see :class:`StorageStats`). NotFoundError if the group is absent."""
        t = self.tables
        c, cs = t.chunks, t.cheat_sheets
        chunk_row = (
            func.pg_column_size(c.c.text)
            + func.pg_column_size(c.c.embedding)
            + func.pg_column_size(c.c.tsv)
            + func.pg_column_size(c.c.meta)
            + 40  # fixed-width columns and tuple header
        )
        with self.engine.begin() as conn:
            gid = int(catalog.group_row(conn, t, group, collection).id)
            row = conn.execute(
                select(
                    func.count(),
                    func.avg(chunk_row),
                    func.avg(func.pg_column_size(cs.c.data) + 60),  # + fixed-width columns and tuple header
                    func.avg(cs.c.n_bytes),
                    func.avg(func.octet_length(c.c.text)),
                    func.avg(c.c.n_tokens),
                )
                .select_from(c.join(cs, cs.c.chunk_id == c.c.id))
                .where(c.c.group_id == gid)
            ).one()
        n, means = int(row[0]), [float(v or 0) for v in row[1:]]
        return StorageStats(group, collection, n, *means)

    # -- ingest ------------------------------------------------------------------------------------------

    def ingest(
        self,
        documents: Iterable[DocumentInput],
        *,
        group: str,
        collection: str = DEFAULT_COLLECTION,
        encoder: EncoderLike,
        compress: bool = True,
        batch_size: int = 8,
        progress: bool = False,
    ) -> IngestReport:
        """Ingest documents into ``collection/group`` (both created if missing), one transaction each.

        Unchanged documents (same text, metadata and encoder) are skipped without compressing; a changed
        document replaces its previous version atomically. ``compress=False`` stores chunks and retrieval
        keys only (for benchmarks; such chunks have no cheat sheets).
        """
        validate_name(group, "group")
        validate_name(collection, "collection")
        docs = list(documents)
        for d in docs:
            if not isinstance(d, DocumentInput):
                raise InputError(f"ingest() takes DocumentInput objects, got {type(d).__name__}")
        check_unique(docs)
        fingerprint = encoder.fingerprint if compress else None
        report = IngestReport(group=group, collection=collection)
        start = time.perf_counter()
        with self.engine.begin() as conn:
            gid = int(catalog.group_row(conn, self.tables, group, collection, create=True).id)
        from tqdm.auto import tqdm

        bar = tqdm(total=len(docs), desc=f"ingest {collection}/{group}", unit="doc", disable=not progress)
        try:
            for doc in docs:
                with self.engine.connect() as conn:
                    state = existing_state(conn, self.tables, gid, doc.doc_id)
                if is_unchanged(state, doc, fingerprint):
                    outcome = DocumentOutcome(doc.doc_id, "unchanged", 0)
                else:
                    prep = prepare(doc, encoder, self.embedder, compress=compress, batch_size=batch_size)
                    outcome = write_document(
                        self.engine, self.tables, group, collection, prep, sheet_dtype=self.cheat_sheet_dtype
                    )
                report.documents.append(outcome)
                bar.update(1)
                bar.set_postfix(chunks=report.chunks_written)
        finally:
            bar.close()
            report.seconds = time.perf_counter() - start
        return report

    def ingest_paths(self, paths: Sequence[str | Path], **kwargs: Any) -> IngestReport:
        """Read ``.txt``/``.md``/``.jsonl`` files and folders (all validated first), then :meth:`ingest`."""
        return self.ingest(read_paths(paths), **kwargs)

    def bulk_load(
        self,
        documents: Iterable[BulkDocument],
        *,
        group: str,
        collection: str = DEFAULT_COLLECTION,
        encoder_fingerprint: str | None = None,
        batch_chunks: int = 2000,
        rebuild_index: bool = True,
    ) -> BulkLoadReport:
        """Add documents whose chunks, retrieval vectors and cheat sheets were made elsewhere, many per
        transaction (about ``batch_chunks`` chunks each): for loading large stores, where :meth:`ingest` (one
        transaction and one embedder call per document) is too slow. ``documents`` may be a generator.

        ``encoder_fingerprint`` records the encoder that made the cheat sheets (required when any document
        has some). Documents are only added: a ``doc_id`` already in the group is an InputError (its batch is
        rolled back; earlier batches stay). Each document and its vectors are checked as :meth:`ingest` checks
        its own. With an HNSW index (``rebuild_index``, the default), the index is dropped first and built
        once at the end, also when the load fails; meanwhile dense retrieval scans exactly, so load while
        nobody is querying, or pass ``rebuild_index=False`` to keep the index maintained row by row.
        """
        validate_name(group, "group")
        validate_name(collection, "collection")
        if isinstance(batch_chunks, bool) or not isinstance(batch_chunks, int) or batch_chunks < 1:
            raise InputError(f"batch_chunks must be a positive integer, got {batch_chunks!r}")
        rebuild = rebuild_index and self.ann_index == "hnsw" and bulk.drop_index(self.engine, self.tables)
        start = time.perf_counter()
        try:
            n_docs, n_chunks = bulk.load(
                self.engine,
                self.tables,
                documents,
                group=group,
                collection=collection,
                dim=self.embedder.dim,
                encoder_fingerprint=encoder_fingerprint,
                sheet_dtype=self.cheat_sheet_dtype,
                batch_chunks=batch_chunks,
            )
            seconds = time.perf_counter() - start
        finally:
            build_s = bulk.build_index(self.engine, self.tables, self.vector_schema) if rebuild else None
        return BulkLoadReport(group, collection, n_docs, n_chunks, seconds, build_s)

    def recompress(
        self,
        *,
        group: str,
        collection: str = DEFAULT_COLLECTION,
        encoder: EncoderLike,
        batch_size: int = 8,
        progress: bool = False,
        deactivate_stale: bool = True,
    ) -> RecompressReport:
        """Re-encode every stored chunk of ``collection/group`` with ``encoder``, from the stored text.

        For a new encoder, whose fingerprint the stored cheat sheets do not match: no source file is read.
        Each stored chunk keeps its boundaries and gets a new cheat sheet; a document with a chunk longer
        than the encoder's segment is cut again from its stored text (new chunks and retrieval keys). One
        transaction per document, so a document never holds sheets of two encoders; documents that already
        have the encoder's sheets are skipped, so a killed run is finished by running it again, and running
        it with the same encoder does nothing.

        Adapters trained for another encoder than the group's sheets are listed as stale. Once the whole
        group is done, a stale ACTIVE adapter is taken off (the runtime cannot apply it to the new sheets;
        it stays stored), unless ``deactivate_stale=False``; the newest stored adapter trained for this
        encoder, if any, becomes active instead (a group without an active adapter is left without one;
        ``current_adapter_ids`` lists those that fit). Retrain with ``lloco finetune --group G``.
        NotFoundError for an unknown group; InputError for a bad ``batch_size``.
        """
        validate_name(group, "group")
        validate_name(collection, "collection")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InputError(
                f"batch_size must be a positive integer (chunks per encoder batch), got {batch_size!r}"
            )
        fingerprint = encoder.fingerprint
        t = self.tables
        start = time.perf_counter()
        with self.engine.begin() as conn:
            gid = int(catalog.group_row(conn, t, group, collection).id)
            before = catalog.group_fingerprints(conn, t, [gid]).get(gid, {})
            pending = pending_documents(conn, t, gid, fingerprint)
            n_docs = count_documents(conn, t, gid)
        report = RecompressReport(
            group=group,
            collection=collection,
            encoder_fingerprint=fingerprint,
            previous_fingerprints=before,
            skipped=n_docs - len(pending),
        )
        from tqdm.auto import tqdm

        bar = tqdm(
            total=sum(d.n_chunks for d in pending),
            desc=f"recompress {collection}/{group}",
            unit="chunk",
            disable=not progress,
        )
        try:
            for doc in pending:
                outcome = self._recompress_document(gid, doc, encoder, fingerprint, batch_size)
                if outcome is None:
                    report.skipped += 1  # done meanwhile (a concurrent recompress or ingest)
                else:
                    report.documents.append(outcome)
                bar.update(doc.n_chunks)
                bar.set_postfix(docs=len(report.documents))
        finally:
            bar.close()
        with self.engine.begin() as conn:
            state = settle_adapters(conn, t, gid, fingerprint, deactivate_stale=deactivate_stale)
        report.complete = state.complete
        report.active_adapter_id = state.active_adapter_id
        report.stale_adapter_ids = state.stale_adapter_ids
        report.current_adapter_ids = state.current_adapter_ids
        report.deactivated_adapter_id = state.deactivated
        report.activated_adapter_id = state.activated
        report.seconds = time.perf_counter() - start
        return report

    def _recompress_document(
        self,
        gid: int,
        doc: PendingDocument,
        encoder: EncoderLike,
        fingerprint: str,
        batch_size: int,
        attempts: int = 3,
    ) -> RecompressOutcome | None:
        """Re-encode one document; read again and retry when a concurrent writer changed it meanwhile.
        None when it needs nothing (any more)."""
        outcome = None
        for _ in range(attempts):
            with self.engine.connect() as conn:
                now = pending_documents(conn, self.tables, gid, fingerprint, doc_id=doc.doc_id)
                if not now:
                    return None
                doc = now[0]
                stored = stored_chunks(conn, self.tables, doc.id)
            plan = prepare_recompress(doc, stored, encoder, self.embedder, batch_size=batch_size)
            outcome = write_recompressed(
                self.engine, self.tables, plan, fingerprint, sheet_dtype=self.cheat_sheet_dtype
            )
            if outcome.status != "changed":
                return outcome
        return outcome

    # -- retrieve ----------------------------------------------------------------------------------------

    def retrieve(
        self,
        query: str,
        *,
        group: str,
        collection: str = DEFAULT_COLLECTION,
        top_k: int = DEFAULT_TOP_K,
        mode: RetrievalMode | str = DEFAULT_MODE,
        filters: Filter | dict | list | None = None,
        ef_search: int | None = None,
        load_cheat_sheets: bool = True,
        encoder_fingerprint: str | None = None,
        candidates: int | None = None,
        query_vector: Sequence[float] | np.ndarray | None = None,
        doc_ids: Sequence[str] | None = None,
        chunk_ids: Sequence[int] | None = None,
        exact: bool = False,
    ) -> RetrievalResult:
        """Top-k chunks of one group for ``query``, with scores, texts and (unless lazy) cheat sheets.

        ``mode`` (a :class:`RetrievalMode` or its string; default :data:`DEFAULT_MODE`, hybrid): ``dense``
        (cosine over retrieval embeddings, HNSW), ``fulltext`` (chunks containing any of the query's stemmed
        words, ranked by cover density) or ``hybrid`` (reciprocal-rank fusion of both, each taking
        ``candidates`` hits, default ``max(4 * top_k, 50)``). Scores: cosine similarity, ``ts_rank_cd``, or
        the RRF sum.
        ``query_vector``: a precomputed query embedding from the same embedder (skips embedding ``query``;
        frameworks that embed queries themselves pass it). ``encoder_fingerprint``: refuse cheat sheets
        made by another encoder. ``doc_ids`` / ``chunk_ids``: only chunks of these documents / with these ids
        (in SQL, before the top-k cut). With
        ``load_cheat_sheets=False`` the tensors are None; fetch them later with :meth:`cheat_sheets`.
        ``exact``: no index scans in this query, so dense search scans the group's rows (the exact nearest
        neighbours an ANN index is measured against; slower).
        """
        if not isinstance(query, str) or not query.strip():
            raise InputError("the query is empty; ask a question")
        if "\x00" in query:
            raise InputError("the query contains NUL characters")
        check_unicode(query, "the query")
        top_k = check_top_k(top_k)
        mode = RetrievalMode.parse(mode)
        ef = check_ef_search(ef_search, top_k)
        n_cand = top_k if mode != RetrievalMode.HYBRID else (candidates or max(4 * top_k, 50))
        if mode == RetrievalMode.HYBRID:
            n_cand = check_top_k(n_cand)
        flt = None if filters is None else parse_filter(filters)
        where = restrict(
            self.tables, compile_filter(flt, self.tables.chunks.c.meta), doc_ids=doc_ids, chunk_ids=chunk_ids
        )
        qvec = None
        if mode in (RetrievalMode.DENSE, RetrievalMode.HYBRID):
            if query_vector is not None:
                qvec = _check_query_vector(query_vector, self.embedder.dim)
            else:
                qvec = as_matrix(self.embedder.embed([query]), 1, self.embedder.dim, self.embedder.name)[0]
        t = self.tables
        with self.engine.begin() as conn:
            g = catalog.group_row(conn, t, group, collection)
            gid = int(g.id)
            if exact:
                conn.execute(select(func.set_config("enable_indexscan", "off", True)))
            dense = dense_hits(conn, t, gid, qvec, n_cand, where, ef) if qvec is not None else []
            text = fulltext_hits(conn, t, gid, query, n_cand, where) if mode != RetrievalMode.DENSE else []
            if mode == RetrievalMode.DENSE:
                hits = dense
            elif mode == RetrievalMode.FULLTEXT:
                hits = text
            else:
                hits = reciprocal_rank_fusion([dense, text])[:top_k]
            chunks = fetch_chunks(conn, t, hits)
            if load_cheat_sheets and chunks:
                sheets = fetch_cheat_sheets(conn, t, [c.chunk_id for c in chunks], encoder_fingerprint)
                for c, s in zip(chunks, sheets, strict=True):
                    c.cheat_sheet = s
        return RetrievalResult(
            query=query,
            group=group,
            collection=collection,
            mode=mode,
            adapter_id=g.active_adapter_id,
            chunks=chunks,
        )

    def cheat_sheets(
        self, chunk_ids: Sequence[int], *, encoder_fingerprint: str | None = None, with_text: bool = False
    ) -> list[torch.Tensor] | list[ChunkSheet]:
        """Decoded cheat sheets of ``chunk_ids`` in order (CheatSheetError / FingerprintMismatchError);
        ``with_text``: as :class:`~lloco_runtime.store.ChunkSheet` with their chunks' texts."""
        ids = [int(i) for i in chunk_ids]
        if len(ids) > MAX_TOP_K:
            raise InputError(f"at most {MAX_TOP_K} cheat sheets per call")
        with self.engine.begin() as conn:
            return fetch_cheat_sheets(conn, self.tables, ids, encoder_fingerprint, with_text=with_text)

    # -- manage ------------------------------------------------------------------------------------------

    def create_group(self, group: str, collection: str = DEFAULT_COLLECTION) -> GroupInfo:
        """Create ``collection/group`` if missing and return it."""
        with self.engine.begin() as conn:
            catalog.group_row(conn, self.tables, group, collection, create=True)
            return catalog.get_group(conn, self.tables, group, collection)

    def get_group(self, group: str, collection: str = DEFAULT_COLLECTION) -> GroupInfo:
        """``collection/group`` with its counts and active adapter (NotFoundError if absent)."""
        with self.engine.begin() as conn:
            return catalog.get_group(conn, self.tables, group, collection)

    def list_collections(self) -> list[CollectionInfo]:
        with self.engine.begin() as conn:
            return catalog.list_collections(conn, self.tables)

    def list_groups(self, collection: str | None = None) -> list[GroupInfo]:
        with self.engine.begin() as conn:
            return catalog.list_groups(conn, self.tables, collection)

    def list_documents(
        self, group: str, collection: str = DEFAULT_COLLECTION, *, limit: int = 1000, offset: int = 0
    ) -> list[DocumentInfo]:
        with self.engine.begin() as conn:
            return catalog.list_documents(conn, self.tables, group, collection, limit=limit, offset=offset)

    def get_document(self, doc_id: str, *, group: str, collection: str = DEFAULT_COLLECTION) -> DocumentInfo:
        with self.engine.begin() as conn:
            return catalog.get_document(conn, self.tables, doc_id, group, collection)

    def delete_document(self, doc_id: str, *, group: str, collection: str = DEFAULT_COLLECTION) -> None:
        """Delete a document with its chunks and cheat sheets (NotFoundError if absent)."""
        with self.engine.begin() as conn:
            catalog.delete_document(conn, self.tables, doc_id, group, collection)

    def list_chunks(
        self,
        group: str,
        collection: str = DEFAULT_COLLECTION,
        *,
        doc_ids: Sequence[str] | None = None,
        chunk_ids: Sequence[int] | None = None,
        filters: Filter | dict | list | None = None,
        with_embeddings: bool = False,
        limit: int = 100_000,
        offset: int = 0,
    ) -> list[ChunkInfo]:
        """Stored chunks of one group, ordered by ``(doc_id, ordinal)`` (NotFoundError if the group is absent).

        Narrow with ``doc_ids``, ``chunk_ids`` and/or ``filters`` (the metadata filters of :meth:`retrieve`);
        page with ``limit`` (at most 100,000) and ``offset``. ``with_embeddings`` adds the retrieval vectors.
        """
        flt = None if filters is None else parse_filter(filters)
        with self.engine.begin() as conn:
            return chunks.list_chunks(
                conn,
                self.tables,
                group,
                collection,
                doc_ids=doc_ids,
                chunk_ids=chunk_ids,
                where=flt,
                with_embeddings=with_embeddings,
                limit=limit,
                offset=offset,
            )

    def delete_chunks(
        self,
        group: str,
        collection: str = DEFAULT_COLLECTION,
        *,
        chunk_ids: Sequence[int] | None = None,
        filters: Filter | dict | list | None = None,
    ) -> int:
        """Delete chunks (and their cheat sheets) of one group by id and/or metadata filter; returns how many.

        At least one of ``chunk_ids`` and ``filters`` is required (InputError). Documents left without
        chunks are deleted; the others keep their remaining chunks with updated counts, and re-ingesting
        the full document restores the deleted ones. NotFoundError if the group is absent.
        """
        flt = None if filters is None else parse_filter(filters)
        with self.engine.begin() as conn:
            return chunks.delete_chunks(conn, self.tables, group, collection, chunk_ids=chunk_ids, where=flt)

    def clear_group(self, group: str, collection: str = DEFAULT_COLLECTION) -> None:
        """Delete every document of the group with its chunks and cheat sheets; the group and its adapters
        stay (NotFoundError if the group is absent)."""
        with self.engine.begin() as conn:
            chunks.clear_group(conn, self.tables, group, collection)

    def delete_group(self, group: str, collection: str = DEFAULT_COLLECTION) -> None:
        """Delete a group with its documents, chunks, cheat sheets and adapters."""
        with self.engine.begin() as conn:
            catalog.delete_group(conn, self.tables, group, collection)

    def delete_collection(self, collection: str) -> None:
        """Delete a collection with all its groups."""
        with self.engine.begin() as conn:
            catalog.delete_collection(conn, self.tables, collection)

    # -- adapters ----------------------------------------------------------------------------------------

    def register_adapter(
        self,
        group: str,
        weights: bytes,
        *,
        base_fingerprint: str,
        encoder_fingerprint: str,
        config: dict[str, Any] | None = None,
        metrics: dict[str, Any] | None = None,
        collection: str = DEFAULT_COLLECTION,
        activate: bool = False,
        create_group: bool = True,
    ) -> AdapterInfo:
        """Store a new version of the group's LoRA (safetensors bytes); optionally make it active.

        One transaction: a failed activation (encoder mismatch) leaves no row behind. ``create_group=False``
        refuses an unknown group (NotFoundError) instead of creating it.
        """
        with self.engine.begin() as conn:
            aid = registry.register(
                conn,
                self.tables,
                group,
                collection,
                weights,
                base_fingerprint=base_fingerprint,
                encoder_fingerprint=encoder_fingerprint,
                config=config,
                metrics=metrics,
                create_group=create_group,
            )
            if activate:
                registry.activate(conn, self.tables, aid)
            return registry.get(conn, self.tables, aid)

    def activate_adapter(self, adapter_id: int) -> AdapterInfo:
        """Make an adapter its group's active one (atomic; refuses an encoder fingerprint mismatch)."""
        with self.engine.begin() as conn:
            registry.activate(conn, self.tables, adapter_id)
            return registry.get(conn, self.tables, adapter_id)

    def deactivate_adapter(self, group: str, collection: str = DEFAULT_COLLECTION) -> int | None:
        """Leave the group without an active adapter (answers use the base decoder or the encoder's reader);
        its adapters stay stored. Returns the id that was active (None if none was). NotFoundError if the
        group is absent."""
        with self.engine.begin() as conn:
            return registry.deactivate(conn, self.tables, group, collection)

    def get_adapter(self, adapter_id: int) -> AdapterInfo:
        with self.engine.begin() as conn:
            return registry.get(conn, self.tables, adapter_id)

    def adapter_weights(self, adapter_id: int) -> bytes:
        """The adapter's safetensors bytes."""
        with self.engine.begin() as conn:
            return registry.weights(conn, self.tables, adapter_id)

    def list_adapters(self, group: str, collection: str = DEFAULT_COLLECTION) -> list[AdapterInfo]:
        with self.engine.begin() as conn:
            return registry.list_for_group(conn, self.tables, group, collection)

    def delete_adapter(self, adapter_id: int) -> AdapterInfo:
        """Delete one stored adapter version (NotFoundError if absent); returns what it was. A group that had
        it active is left with no active adapter, in the same transaction."""
        with self.engine.begin() as conn:
            info = registry.get(conn, self.tables, adapter_id)
            registry.remove(conn, self.tables, adapter_id)
            return info


def _check_query_vector(vector: Sequence[float] | np.ndarray, dim: int) -> np.ndarray:
    """A caller-supplied query embedding as a unit float32 vector of width ``dim`` (else InputError)."""
    try:
        arr = np.asarray(vector, dtype=np.float32)
    except (ValueError, TypeError):
        raise InputError(f"query_vector must be {dim} finite floats") from None
    if arr.shape != (dim,) or not np.isfinite(arr).all() or not np.any(arr):
        raise InputError(f"query_vector must be {dim} finite floats, not all zero; got shape {arr.shape}")
    return arr / np.linalg.norm(arr)


def _database_errors(method):
    """Turn a lost or refused database connection into a StoreError that says what to do (retrying is safe:
    every method is one transaction, rolled back by the server when the connection drops)."""

    @functools.wraps(method)
    def wrapper(self: CheatSheetStore, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except (OperationalError, InterfaceError) as exc:
            raise _unavailable(self, exc) from exc
        except DBAPIError as exc:
            if exc.connection_invalidated:
                raise _unavailable(self, exc) from exc
            raise

    return wrapper


def _unavailable(store: CheatSheetStore, exc: DBAPIError) -> StoreError:
    detail = str(exc.orig if exc.orig is not None else exc).strip().splitlines()
    return StoreError(
        f"the database at {store.url} is unavailable ({detail[0] if detail else type(exc).__name__}); "
        "its unfinished transaction was rolled back: check that the server is running and retry "
        "(retrying is safe)"
    )


for _name, _member in list(vars(CheatSheetStore).items()):
    if callable(_member) and not _name.startswith("_") and _name != "close":
        setattr(CheatSheetStore, _name, _database_errors(_member))
