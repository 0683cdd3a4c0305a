"""Helpers shared by the store tests (imported by name: this folder is on sys.path)."""

from __future__ import annotations

from pathlib import Path

DOCS = {
    "astronomy": "The Andromeda galaxy is the nearest large spiral galaxy to the Milky Way. Astronomers "
    "measure its distance at about two and a half million light years. Telescopes reveal "
    "billions of stars, dust lanes and a bright central bulge.",
    "cooking": "To bake sourdough bread, feed the starter with flour and water the night before. Knead the "
    "dough, let it rise slowly, shape the loaf and bake it in a hot Dutch oven until the crust "
    "turns deep brown.",
    "football": "The striker scored twice in the second half, and the goalkeeper saved a penalty in the final "
    "minute. The coach praised the defence after the team won the championship match.",
}


def new_schema() -> str:
    """A fresh schema name (each test or module gets its own on the session's server)."""
    import uuid

    return "t_" + uuid.uuid4().hex[:10]


def open_store(url, schema, embedder):
    from lloco_runtime.store import CheatSheetStore

    return CheatSheetStore(url, schema=schema, embedder=embedder)


def row_counts(store) -> dict[str, int]:
    """Rows per lloco table (for no-partial-write assertions)."""
    from sqlalchemy import func, select

    t = store.tables
    with store.engine.connect() as conn:
        return {
            name: conn.execute(select(func.count()).select_from(getattr(t, name))).scalar_one()
            for name in ("documents", "chunks", "cheat_sheets")
        }


class FailingEncoder:
    """Wraps the real encoder; ``compress_chunks`` compresses the first ``after`` chunks, then raises."""

    def __init__(self, inner, after: int = 1) -> None:
        self.inner, self.after = inner, after

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def compress_chunks(self, chunks, **kw):
        self.inner.compress_chunks(list(chunks)[: self.after], **kw)
        raise RuntimeError("encoder crashed midway")


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path
