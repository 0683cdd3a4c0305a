"""The adapter registry: versioned LoRA adapters (safetensors bytes) per group, one of them active."""

from __future__ import annotations

import json
import struct
from typing import Any

from sqlalchemy import Connection, delete, func, insert, select, update

from ..errors import AdapterError, FingerprintMismatchError, NotFoundError
from .catalog import group_row
from .names import check_json_value
from .records import AdapterInfo
from .schema import Tables

MAX_HEADER = 100 * 1024 * 1024
ADAPTER_FORMAT = (
    "lloco-adapter/1"  # lloco_runtime.adapters.FORMAT (not imported: the store stays torch-model free)
)


def check_safetensors(blob: bytes) -> dict:
    """Cheap structural check that ``blob`` is a safetensors file (8-byte length + JSON header); its header."""
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise AdapterError(f"adapter weights must be bytes (a safetensors file), got {type(blob).__name__}")
    data = bytes(blob[:8])
    if len(data) < 8:
        raise AdapterError("adapter weights are not a safetensors file (too short)")
    (n,) = struct.unpack("<Q", data)
    if n < 2 or n > MAX_HEADER or 8 + n > len(blob):
        raise AdapterError("adapter weights are not a safetensors file (bad header length)")
    try:
        header = json.loads(bytes(blob[8 : 8 + n]))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise AdapterError("adapter weights are not a safetensors file (header is not JSON)") from None
    if not isinstance(header, dict):
        raise AdapterError("adapter weights are not a safetensors file (header is not an object)")
    return header


def check_declared_fingerprints(header: dict, base_fingerprint: str, encoder_fingerprint: str) -> None:
    """A lloco adapter records the fingerprints it was trained with: the declared ones must be the same."""
    meta = header.get("__metadata__")
    if not isinstance(meta, dict) or meta.get("format") != ADAPTER_FORMAT:
        return  # plain safetensors: checked when loaded
    for name, declared in (
        ("base_fingerprint", base_fingerprint),
        ("encoder_fingerprint", encoder_fingerprint),
    ):
        recorded = meta.get(name) or None
        if recorded is not None and recorded != declared:
            raise FingerprintMismatchError(
                f"{name} {declared[:12]} given at registration, but the adapter's header records "
                f"{str(recorded)[:12]}; register it with the fingerprints it was trained with (its own header)"
            )


def _info(r, active_id: int | None) -> AdapterInfo:
    return AdapterInfo(
        id=int(r.id),
        group=r.group_name,
        collection=r.collection_name,
        version=int(r.version),
        base_fingerprint=r.base_fingerprint,
        encoder_fingerprint=r.encoder_fingerprint,
        n_bytes=int(r.n_bytes),
        config=dict(r.config),
        metrics=dict(r.metrics),
        active=active_id == int(r.id),
        created_at=r.created_at,
    )


def _select_infos(t: Tables):
    a, g, c = t.adapters, t.groups, t.collections
    return select(
        a.c.id,
        a.c.version,
        a.c.base_fingerprint,
        a.c.encoder_fingerprint,
        a.c.n_bytes,
        a.c.config,
        a.c.metrics,
        a.c.created_at,
        g.c.name.label("group_name"),
        c.c.name.label("collection_name"),
        g.c.active_adapter_id,
    ).select_from(a.join(g, a.c.group_id == g.c.id).join(c, g.c.collection_id == c.c.id))


def register(
    conn: Connection,
    t: Tables,
    group: str,
    collection: str,
    weights: bytes,
    *,
    base_fingerprint: str,
    encoder_fingerprint: str,
    config: dict[str, Any] | None,
    metrics: dict[str, Any] | None,
    create_group: bool = True,
) -> int:
    """Insert the next version of the group's adapter; returns its id. Locks the group row for the version.

    ``create_group=False``: an unknown group is a NotFoundError instead of being created.
    """
    header = check_safetensors(weights)
    for name, fp in (("base_fingerprint", base_fingerprint), ("encoder_fingerprint", encoder_fingerprint)):
        if not isinstance(fp, str) or not fp.strip() or len(fp) > 256:
            raise AdapterError(f"{name} must be a non-empty string")
    check_declared_fingerprints(header, base_fingerprint, encoder_fingerprint)
    config, metrics = dict(config or {}), dict(metrics or {})
    check_json_value(config, "adapter config")
    check_json_value(metrics, "adapter metrics")
    gid = int(group_row(conn, t, group, collection, create=create_group, lock=True).id)
    a = t.adapters
    version = conn.execute(
        select(func.coalesce(func.max(a.c.version), 0) + 1).where(a.c.group_id == gid)
    ).scalar_one()
    return int(
        conn.execute(
            insert(a)
            .values(
                group_id=gid,
                version=version,
                base_fingerprint=base_fingerprint,
                encoder_fingerprint=encoder_fingerprint,
                weights=bytes(weights),
                n_bytes=len(weights),
                config=config,
                metrics=metrics,
            )
            .returning(a.c.id)
        ).scalar_one()
    )


def get(conn: Connection, t: Tables, adapter_id: int) -> AdapterInfo:
    r = conn.execute(_select_infos(t).where(t.adapters.c.id == int(adapter_id))).one_or_none()
    if r is None:
        raise NotFoundError(f"adapter {adapter_id} does not exist; list adapters with `lloco adapters list`")
    return _info(r, r.active_adapter_id)


def list_for_group(conn: Connection, t: Tables, group: str, collection: str) -> list[AdapterInfo]:
    gid = int(group_row(conn, t, group, collection).id)
    rows = conn.execute(_select_infos(t).where(t.adapters.c.group_id == gid).order_by(t.adapters.c.version))
    return [_info(r, r.active_adapter_id) for r in rows]


def weights(conn: Connection, t: Tables, adapter_id: int) -> bytes:
    data = conn.execute(
        select(t.adapters.c.weights).where(t.adapters.c.id == int(adapter_id))
    ).scalar_one_or_none()
    if data is None:
        raise NotFoundError(f"adapter {adapter_id} does not exist; list adapters with `lloco adapters list`")
    return bytes(data)


def activate(conn: Connection, t: Tables, adapter_id: int) -> None:
    """Make ``adapter_id`` its group's active adapter (one UPDATE, so readers see old or new, never neither).

    Refuses an adapter trained for another encoder than the one that compressed the group's documents.
    """
    a, d, g = t.adapters, t.documents, t.groups
    row = conn.execute(
        select(a.c.group_id, a.c.encoder_fingerprint).where(a.c.id == int(adapter_id)).with_for_update()
    ).one_or_none()
    if row is None:
        raise NotFoundError(f"adapter {adapter_id} does not exist; list adapters with `lloco adapters list`")
    others = (
        conn.execute(
            select(d.c.encoder_fingerprint)
            .distinct()
            .where(
                d.c.group_id == row.group_id,
                d.c.encoder_fingerprint.is_not(None),
                d.c.encoder_fingerprint != row.encoder_fingerprint,
            )
        )
        .scalars()
        .all()
    )
    if others:
        raise FingerprintMismatchError(
            f"adapter {adapter_id} was trained for encoder {row.encoder_fingerprint[:12]}, but the group's "
            f"documents were compressed by {others[0][:12]}; re-encode the group with that encoder "
            "(`lloco recompress --group G --encoder ...`, no files needed) or train an adapter for the current one "
            "(`lloco finetune --group G`)"
        )
    conn.execute(update(g).where(g.c.id == row.group_id).values(active_adapter_id=int(adapter_id)))


def deactivate(conn: Connection, t: Tables, group: str, collection: str) -> int | None:
    """Leave the group without an active adapter (its adapters stay stored); returns the one that was active."""
    row = group_row(conn, t, group, collection, lock=True)
    conn.execute(update(t.groups).where(t.groups.c.id == int(row.id)).values(active_adapter_id=None))
    return None if row.active_adapter_id is None else int(row.active_adapter_id)


def remove(conn: Connection, t: Tables, adapter_id: int) -> None:
    """Delete an adapter; a group that had it active is left with none (never a pointer to a deleted row).

    The pointer is cleared explicitly before the DELETE (the foreign key's ON DELETE SET NULL would do the
    same); both run in the caller's transaction, with the adapter row locked.
    """
    a, g = t.adapters, t.groups
    found = conn.execute(
        select(a.c.id).where(a.c.id == int(adapter_id)).with_for_update()
    ).scalar_one_or_none()
    if found is None:
        raise NotFoundError(f"adapter {adapter_id} does not exist; list adapters with `lloco adapters list`")
    conn.execute(update(g).where(g.c.active_adapter_id == int(adapter_id)).values(active_adapter_id=None))
    conn.execute(delete(a).where(a.c.id == int(adapter_id)))
