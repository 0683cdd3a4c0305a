"""Where lloco keeps its files and which database it talks to.

Everything is resolved from environment variables at call time (never cached at import), so tests and
applications can point one process at a fresh home directory.

- ``LLOCO_HOME``: data directory (embedded Postgres, artifacts). Default: the per-user data directory.
- ``LLOCO_CACHE_DIR``: dequantised model cache. Default: ``$LLOCO_HOME/cache``.
- ``LLOCO_DATABASE_URL``: an existing Postgres to use instead of the embedded server.
- ``LLOCO_SCHEMA``: the schema lloco owns inside that database. Default: ``lloco``.
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

DEFAULT_SCHEMA = "lloco"


def home_dir() -> Path:
    """The lloco data directory (created on first use)."""
    env = os.environ.get("LLOCO_HOME")
    path = Path(env).expanduser() if env else Path(platformdirs.user_data_dir("lloco", appauthor=False))
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_dir() -> Path:
    """Directory for dequantised model caches (created on first use)."""
    env = os.environ.get("LLOCO_CACHE_DIR")
    path = Path(env).expanduser() if env else home_dir() / "cache"
    path.mkdir(parents=True, exist_ok=True)
    return path


def database_url() -> str | None:
    """The URL of an existing Postgres, or None for the embedded server."""
    url = os.environ.get("LLOCO_DATABASE_URL", "").strip()
    return url or None


def schema_name() -> str:
    """The schema lloco creates and uses; validated where it is used."""
    return os.environ.get("LLOCO_SCHEMA", "").strip() or DEFAULT_SCHEMA
