"""Plain helpers of the reliability suite (texts, schemas, stores, snapshots, adapters).

A module of its own (not ``conftest``): several test folders have a ``conftest.py``, and ``from conftest
import ...`` inside a test resolves to whichever was imported last; subprocess children import it too.
"""

from __future__ import annotations

import uuid

from lloco_test_support import HashingEmbedder, make_adapter_bytes  # noqa: F401 - re-exported
from sqlalchemy import select

TEXTS = {
    "lighthouse": "The lighthouse at Carrow Point was built in 1852 after the schooner Margaret Ann was lost on "
    "the rocks. Its tower is forty-one metres tall and made from grey granite quarried on Skerra.",
    "pump": "To reset the pump, switch off the mains supply and wait thirty seconds. Press the red reset "
    "button until the green light flashes twice, then switch the supply back on.",
    "bread": "To bake sourdough bread, feed the starter with flour and water the night before. Knead the dough, "
    "let it rise slowly and bake it in a hot Dutch oven until the crust turns deep brown.",
}


def new_schema() -> str:
    return "r_" + uuid.uuid4().hex[:10]


def open_store(url: str, schema: str | None = None, **kw):
    from lloco_runtime.store import CheatSheetStore

    return CheatSheetStore(url, schema=schema or new_schema(), embedder=HashingEmbedder(), **kw)


def snapshot(store) -> dict[str, list[tuple]]:
    """Every row of every lloco table (key columns): equal snapshots mean the database was left as it was."""
    t = store.tables
    cols = {
        "collections": (t.collections.c.id, t.collections.c.name),
        "groups": (t.groups.c.id, t.groups.c.name, t.groups.c.active_adapter_id),
        "documents": (
            t.documents.c.id,
            t.documents.c.doc_id,
            t.documents.c.sha256,
            t.documents.c.n_chunks,
            t.documents.c.encoder_fingerprint,
        ),
        "chunks": (t.chunks.c.id, t.chunks.c.document_id, t.chunks.c.ordinal, t.chunks.c.text),
        "cheat_sheets": (t.cheat_sheets.c.chunk_id, t.cheat_sheets.c.n_bytes, t.cheat_sheets.c.data),
        "adapters": (t.adapters.c.id, t.adapters.c.version, t.adapters.c.n_bytes),
        "settings": (t.settings.c.key, t.settings.c.value),
    }
    with store.engine.connect() as conn:
        return {
            name: sorted(tuple(r) for r in conn.execute(select(*c).order_by(c[0])))
            for name, c in cols.items()
        }


def docs(prefix: str = "", meta: dict | None = None):
    from lloco_runtime.store import DocumentInput

    return [DocumentInput(prefix + k, v, dict(meta or {}, topic=k)) for k, v in TEXTS.items()]
