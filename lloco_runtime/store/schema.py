"""lloco's tables and their ordered migrations, all inside one schema that lloco owns.

Hierarchy: collection > group > document > chunk > cheat sheet; adapters belong to a group. Every foreign
key cascades on delete, so removing a collection, group or document removes everything below it.

The retrieval key (``chunks.embedding``, a small ``halfvec(d)`` with an HNSW cosine index, see
:func:`hnsw_index`) is kept apart from the cheat sheets (safetensors bytes from :mod:`lloco_runtime.codec`, in
their own table), because cheat sheets are far too wide for pgvector indexes and are read only for the final
top-k.

Migrations are ordered and recorded in ``schema_version``; each runs once, inside the same transaction
as its version row, under an advisory lock so two processes cannot migrate at the same time. Append
new migrations to :data:`MIGRATIONS`; never edit an applied one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pgvector.sqlalchemy import HALFVEC
from sqlalchemy import (
    DDL,
    BigInteger,
    Column,
    Computed,
    Connection,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    bindparam,
    column,
    func,
    insert,
    inspect,
    select,
    table,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, TSVECTOR
from sqlalchemy.schema import CreateSchema

from ..codec import dtype_name, encode_tensor
from ..errors import CheatSheetError, StoreError
from .legacy_codec import decode_legacy_tensor
from .names import validate_schema

TEXT_SEARCH_CONFIG = "english"  # must match the generated tsv column below
HNSW_INDEX = "ix_chunks_embedding_hnsw"
ADVISORY_LOCK_CLASS = 0x11C0  # first key of pg_advisory_xact_lock(int, int); the second is the schema's hash


@dataclass(frozen=True)
class Tables:
    """The SQLAlchemy ``Table`` objects of one lloco schema."""

    schema: str
    metadata: MetaData
    schema_version: Table
    settings: Table
    collections: Table
    groups: Table
    documents: Table
    chunks: Table
    cheat_sheets: Table
    adapters: Table


def _created_at() -> Column:
    return Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now())


def build_tables(schema: str, dim: int | None = None) -> Tables:
    """Define lloco's tables in ``schema``; ``dim`` is the retrieval embedding width (DDL needs it)."""
    validate_schema(schema)
    md = MetaData(schema=schema)
    schema_version = Table(
        "schema_version",
        md,
        Column("version", Integer, primary_key=True, autoincrement=False),
        Column("description", Text, nullable=False),
        Column("applied_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    )
    settings = Table(
        "settings",
        md,
        Column("key", Text, primary_key=True),
        Column("value", JSONB, nullable=False),
    )
    collections = Table(
        "collections",
        md,
        Column("id", BigInteger, Identity(), primary_key=True),
        Column("name", Text, nullable=False, unique=True),
        _created_at(),
    )
    groups = Table(
        "groups",
        md,
        Column("id", BigInteger, Identity(), primary_key=True),
        Column("collection_id", BigInteger, ForeignKey(collections.c.id, ondelete="CASCADE"), nullable=False),
        Column("name", Text, nullable=False),
        Column(
            "active_adapter_id",
            BigInteger,
            ForeignKey("adapters.id", ondelete="SET NULL", use_alter=True, name="fk_groups_active_adapter"),
            nullable=True,
        ),
        _created_at(),
        UniqueConstraint("collection_id", "name", name="uq_groups_collection_name"),
    )
    documents = Table(
        "documents",
        md,
        Column("id", BigInteger, Identity(), primary_key=True),
        Column("group_id", BigInteger, ForeignKey(groups.c.id, ondelete="CASCADE"), nullable=False),
        Column("doc_id", Text, nullable=False),
        Column("sha256", String(64), nullable=False),
        Column("encoder_fingerprint", Text, nullable=True),
        Column("metadata", JSONB, key="meta", nullable=False, server_default="{}"),
        Column("n_chunks", Integer, nullable=False),
        Column("n_tokens", Integer, nullable=False),
        Column("n_chars", Integer, nullable=False),
        _created_at(),
        Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        UniqueConstraint("group_id", "doc_id", name="uq_documents_group_doc"),
    )
    chunks = Table(
        "chunks",
        md,
        Column("id", BigInteger, Identity(), primary_key=True),
        Column("document_id", BigInteger, ForeignKey(documents.c.id, ondelete="CASCADE"), nullable=False),
        # Denormalised from the document so a group's top-k is one indexed scan without a join.
        Column("group_id", BigInteger, ForeignKey(groups.c.id, ondelete="CASCADE"), nullable=False),
        Column("ordinal", Integer, nullable=False),
        Column("text", Text, nullable=False),
        Column("n_tokens", Integer, nullable=False),
        Column("char_start", Integer, nullable=True),
        Column("char_end", Integer, nullable=True),
        Column("metadata", JSONB, key="meta", nullable=False, server_default="{}"),
        Column("embedding", HALFVEC(dim), nullable=False),
        Column("tsv", TSVECTOR, Computed("to_tsvector('english'::regconfig, text)", persisted=True)),
        UniqueConstraint("document_id", "ordinal", name="uq_chunks_document_ordinal"),
        Index("ix_chunks_group", "group_id"),
        Index("ix_chunks_tsv", "tsv", postgresql_using="gin"),
    )
    cheat_sheets = Table(
        "cheat_sheets",
        md,
        Column("chunk_id", BigInteger, ForeignKey(chunks.c.id, ondelete="CASCADE"), primary_key=True),
        Column("encoder_fingerprint", Text, nullable=False),
        Column("dtype", Text, nullable=False),
        Column("shape", ARRAY(Integer), nullable=False),
        Column("n_bytes", Integer, nullable=False),
        Column("data", LargeBinary, nullable=False),
    )
    adapters = Table(
        "adapters",
        md,
        Column("id", BigInteger, Identity(), primary_key=True),
        Column("group_id", BigInteger, ForeignKey(groups.c.id, ondelete="CASCADE"), nullable=False),
        Column("version", Integer, nullable=False),
        Column("base_fingerprint", Text, nullable=False),
        Column("encoder_fingerprint", Text, nullable=False),
        Column("weights", LargeBinary, nullable=False),
        Column("n_bytes", Integer, nullable=False),
        Column("config", JSONB, nullable=False, server_default="{}"),
        Column("metrics", JSONB, nullable=False, server_default="{}"),
        _created_at(),
        UniqueConstraint("group_id", "version", name="uq_adapters_group_version"),
    )
    return Tables(
        schema, md, schema_version, settings, collections, groups, documents, chunks, cheat_sheets, adapters
    )


def hnsw_index(t: Tables) -> Index:
    """The HNSW cosine index on the retrieval embeddings (created by :func:`ensure_hnsw_index`).

    Kept out of the table definition because some pgvector builds cannot run HNSW on some CPUs (see
    ``server.embedded_ann_supported``); without it dense retrieval is an exact scan of the group's rows.
    """
    index = Index(
        HNSW_INDEX,
        t.chunks.c.embedding,
        postgresql_using="hnsw",
        postgresql_with={"m": 16, "ef_construction": 64},
        postgresql_ops={"embedding": "halfvec_cosine_ops"},
    )
    t.chunks.indexes.discard(index)  # keep it out of create_all(): it is managed on its own
    return index


def has_hnsw_index(conn: Connection, t: Tables) -> bool:
    names = {ix["name"] for ix in inspect(conn).get_indexes("chunks", schema=t.schema)}
    return HNSW_INDEX in names


def ensure_hnsw_index(conn: Connection, t: Tables) -> None:
    """Create the HNSW index if it is missing (builds over existing rows; may take a while)."""
    if not has_hnsw_index(conn, t):
        hnsw_index(t).create(conn)


def drop_hnsw_index(conn: Connection, t: Tables) -> None:
    """Drop the HNSW index if present (it is derived data; retrieval falls back to exact search)."""
    if has_hnsw_index(conn, t):
        hnsw_index(t).drop(conn)


# -- migrations ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Migration:
    """One schema step: ``apply(conn, tables, settings)`` runs inside the migrating transaction."""

    version: int
    description: str
    apply: Callable[[Connection, Tables, dict], None]


def _v1_initial(conn: Connection, t: Tables, settings: dict) -> None:
    order = [t.settings, t.collections, t.groups, t.documents, t.chunks, t.cheat_sheets, t.adapters]
    t.metadata.create_all(conn, tables=order)
    # Cheat sheets are dense fp16/bf16 bytes: TOAST compression would cost CPU and save nothing.
    conn.execute(
        DDL("ALTER TABLE %(fullname)s ALTER COLUMN data SET STORAGE EXTERNAL").against(t.cheat_sheets)
    )
    conn.execute(insert(t.settings), [{"key": k, "value": v} for k, v in settings.items()])


SHEET_MIGRATION_BATCH = 64  # cheat sheets rewritten per round trip by migration 2 (bounded memory)


def _v2_safetensors_cheat_sheets(conn: Connection, t: Tables, settings: dict) -> None:
    """Rewrite every cheat sheet from the LLCS codec to safetensors (:mod:`lloco_runtime.codec`), in batches.

    Each legacy blob is checked (header and CRC-32, and against its row's dtype and shape) before it is
    rewritten; a damaged one aborts the migration, whose transaction then leaves every row as it was.
    """
    cs = t.cheat_sheets
    rewrite = (
        update(cs)
        .where(cs.c.chunk_id == bindparam("b_chunk_id"))
        .values(data=bindparam("b_data"), n_bytes=bindparam("b_n_bytes"))
    )
    last: int | None = None
    while True:
        stmt = select(cs.c.chunk_id, cs.c.dtype, cs.c.shape, cs.c.data).order_by(cs.c.chunk_id)
        if last is not None:
            stmt = stmt.where(cs.c.chunk_id > last)
        rows = conn.execute(stmt.limit(SHEET_MIGRATION_BATCH)).all()
        if not rows:
            return
        params = []
        for r in rows:
            try:
                tensor = decode_legacy_tensor(r.data)
                if dtype_name(tensor.dtype) != r.dtype or list(tensor.shape) != list(r.shape):
                    raise CheatSheetError(
                        f"its row says {r.dtype}{list(r.shape)}, its bytes {tensor.dtype}{list(tensor.shape)}"
                    )
            except CheatSheetError as exc:
                raise StoreError(_unreadable_sheet_message(conn, t, int(r.chunk_id), exc)) from exc
            blob = encode_tensor(tensor)
            params.append({"b_chunk_id": r.chunk_id, "b_data": blob, "b_n_bytes": len(blob)})
        conn.execute(rewrite, params)
        last = int(rows[-1].chunk_id)


def _unreadable_sheet_message(conn: Connection, t: Tables, chunk_id: int, exc: Exception) -> str:
    c, d, g, col = t.chunks, t.documents, t.groups, t.collections
    where = conn.execute(
        select(c.c.ordinal, d.c.id, d.c.doc_id, g.c.name.label("group"), col.c.name.label("collection"))
        .select_from(c.join(d, c.c.document_id == d.c.id).join(g, d.c.group_id == g.c.id))
        .join(col, g.c.collection_id == col.c.id)
        .where(c.c.id == chunk_id)
    ).one()
    return (
        f"cannot upgrade schema {t.schema!r} to version 2 (cheat sheets as safetensors): the cheat sheet of "
        f"chunk {chunk_id} (part {where.ordinal} of document {where.doc_id!r} in {where.collection}/"
        f"{where.group}) is corrupt ({exc}); nothing was changed. Delete that document, with the lloco "
        f"version that wrote it (`lloco delete --doc {where.doc_id} --group {where.group} --collection "
        f'{where.collection}`) or in SQL (`DELETE FROM "{t.schema}".documents WHERE id = {where.id}`, which '
        "removes its chunks and cheat sheets), run `lloco db init` again, then re-ingest the document"
    )


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1, "initial tables: collections, groups, documents, chunks, cheat_sheets, adapters", _v1_initial
    ),
    Migration(2, "cheat sheets re-encoded from the LLCS codec to safetensors", _v2_safetensors_cheat_sheets),
)
LATEST_VERSION = MIGRATIONS[-1].version

_pg_extension = table("pg_extension", column("extname"), column("extnamespace"), schema="pg_catalog")
_pg_namespace = table("pg_namespace", column("oid"), column("nspname"), schema="pg_catalog")


def vector_extension_schema(conn: Connection) -> str | None:
    """The schema holding the ``vector`` extension in this database, or None if it is not installed."""
    stmt = (
        select(_pg_namespace.c.nspname)
        .select_from(_pg_extension.join(_pg_namespace, _pg_extension.c.extnamespace == _pg_namespace.c.oid))
        .where(_pg_extension.c.extname == "vector")
    )
    return conn.execute(stmt).scalar_one_or_none()


def ensure_vector_extension(conn: Connection) -> str:
    """Install pgvector if missing and return the schema it lives in.

    ``CREATE EXTENSION IF NOT EXISTS vector`` is the one statement lloco runs outside its own schema (the
    extension lands in the database's default creation schema, usually ``public``). An extension that
    already exists, in any schema, is used as it is.
    """
    found = vector_extension_schema(conn)
    if found is not None:
        return found
    try:
        with conn.begin_nested():
            conn.execute(DDL("CREATE EXTENSION IF NOT EXISTS vector"))
    except Exception as exc:
        raise StoreError(
            "the pgvector extension is not installed and could not be created "
            f"({type(exc).__name__}: {str(exc).splitlines()[0]}); ask the database owner to run "
            "CREATE EXTENSION vector, or use the embedded server (unset LLOCO_DATABASE_URL)"
        ) from exc
    found = vector_extension_schema(conn)
    assert found is not None
    return found


def current_version(conn: Connection, schema: str) -> int:
    """The highest applied migration in ``schema``; 0 when lloco has not been initialised there."""
    if not inspect(conn).has_table("schema_version", schema=schema):
        return 0
    t = build_tables(schema)
    return int(conn.execute(select(func.coalesce(func.max(t.schema_version.c.version), 0))).scalar_one())


def search_path_value(schemas: list[str]) -> str:
    """A ``search_path`` setting naming ``schemas`` (quoted), for ``set_config`` as a bound value."""
    return ", ".join('"' + s.replace('"', '""') + '"' for s in schemas)


def migrate(conn: Connection, schema: str, settings: dict) -> tuple[int, int, str]:
    """Create/upgrade lloco's schema; returns ``(version_before, version_after, vector_schema)``.

    ``settings`` (embedder name and dimension) are recorded by the first migration. Runs in the caller's
    transaction; takes a transaction-scoped advisory lock keyed on the schema name.
    """
    validate_schema(schema)
    conn.execute(select(func.pg_advisory_xact_lock(ADVISORY_LOCK_CLASS, func.hashtext(schema))))
    vector_schema = ensure_vector_extension(conn)
    # DDL names pgvector's type and operator class unqualified: resolve them in the extension's schema.
    conn.execute(select(func.set_config("search_path", search_path_value([vector_schema]), True)))
    conn.execute(CreateSchema(schema, if_not_exists=True))
    tables = build_tables(schema, int(settings["embedding_dim"]))
    tables.schema_version.create(conn, checkfirst=True)
    before = current_version(conn, schema)
    if before > LATEST_VERSION:
        raise StoreError(
            f"schema {schema!r} is at version {before}, newer than this lloco understands ({LATEST_VERSION}); "
            "upgrade lloco"
        )
    for m in MIGRATIONS:
        if m.version > before:
            m.apply(conn, tables, settings)
            conn.execute(insert(tables.schema_version).values(version=m.version, description=m.description))
    return before, LATEST_VERSION, vector_schema
