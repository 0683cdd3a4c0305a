"""Retrieval queries: dense (HNSW cosine), full-text (tsvector) and hybrid (reciprocal-rank fusion).

Each function runs inside the caller's transaction, scoped to one group, with an optional compiled
metadata filter, to which :func:`restrict` adds document / chunk id restrictions (applied in SQL, before
the top-k cut, so a restricted query still gets k hits when k chunks qualify). Settings such as ``hnsw.ef_search`` are set with ``set_config(..., is_local => true)``
so they end with the transaction and never leak into a pooled connection.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from sqlalchemy import ColumnElement, Connection, Text, and_, cast, func, literal, select
from sqlalchemy.dialects.postgresql import REGCONFIG, TSQUERY

from ..codec import decode_tensor
from ..errors import CheatSheetError, ChunkNotFoundError, FingerprintMismatchError, InputError
from ..sheets import ChunkSheet
from .records import RetrievedChunk
from .schema import TEXT_SEARCH_CONFIG, Tables

MAX_TOP_K = 1000
RRF_K = 60
DEFAULT_EF_SEARCH = 40
MAX_IDS = 10_000  # doc_ids / chunk_ids one query may be restricted to


def check_top_k(top_k: object) -> int:
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= MAX_TOP_K:
        raise InputError(f"top_k must be an integer from 1 to {MAX_TOP_K}, got {top_k!r}")
    return top_k


def check_ef_search(ef_search: object | None, top_k: int) -> int:
    """HNSW candidate-list size; defaults to max(40, 2 * top_k), capped at pgvector's 1000."""
    if ef_search is None:
        return min(MAX_TOP_K, max(DEFAULT_EF_SEARCH, 2 * top_k))
    if isinstance(ef_search, bool) or not isinstance(ef_search, int) or not 1 <= ef_search <= 1000:
        raise InputError(f"ef_search must be an integer from 1 to 1000, got {ef_search!r}")
    return ef_search


def restrict(
    t: Tables,
    where: ColumnElement[bool] | None,
    *,
    doc_ids: Sequence[str] | None = None,
    chunk_ids: Sequence[int] | None = None,
) -> ColumnElement[bool] | None:
    """``where`` narrowed to chunks of the documents ``doc_ids`` and/or with ids ``chunk_ids`` (bound values;
    None: no restriction, an empty list: nothing qualifies). InputError for malformed ids."""
    parts = [] if where is None else [where]
    c, d = t.chunks, t.documents
    if doc_ids is not None:
        if isinstance(doc_ids, (str, bytes)) or not isinstance(doc_ids, Sequence):
            raise InputError(f"doc_ids must be a list of document ids, got {type(doc_ids).__name__}")
        if len(doc_ids) > MAX_IDS:
            raise InputError(f"at most {MAX_IDS} doc_ids per query; narrow with a metadata filter instead")
        bad = [x for x in doc_ids if not isinstance(x, str)]
        if bad:
            raise InputError(f"doc_ids must be strings (document ids), got {bad[0]!r}")
        parts.append(c.c.document_id.in_(select(d.c.id).where(d.c.doc_id.in_(list(doc_ids)))))
    if chunk_ids is not None:
        if isinstance(chunk_ids, (str, bytes)) or not isinstance(chunk_ids, Sequence):
            raise InputError(
                f"chunk_ids must be a list of chunk ids (integers), got {type(chunk_ids).__name__}"
            )
        if len(chunk_ids) > MAX_IDS:
            raise InputError(
                f"at most {MAX_IDS} chunk_ids per query; narrow with doc_ids or a metadata filter"
            )
        bad = [x for x in chunk_ids if isinstance(x, bool) or not isinstance(x, (int, np.integer))]
        if bad:
            raise InputError(f"chunk_ids must be integers (chunk ids), got {bad[0]!r}")
        parts.append(c.c.id.in_([int(x) for x in chunk_ids]))
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else and_(*parts)


def _set_local(conn: Connection, name: str, value: str) -> None:
    conn.execute(select(func.set_config(name, value, True)))


def dense_hits(
    conn: Connection,
    t: Tables,
    group_id: int,
    query_vector: np.ndarray,
    k: int,
    where: ColumnElement[bool] | None,
    ef_search: int,
) -> list[tuple[int, float]]:
    """``(chunk_id, cosine similarity)`` of the ``k`` nearest chunks of the group, best first."""
    _set_local(conn, "hnsw.ef_search", str(ef_search))
    # The group (and any filter) is applied after the index scan; iterative scans keep going until k
    # rows pass, so a small group in a large table still gets k hits.
    _set_local(conn, "hnsw.iterative_scan", "relaxed_order")
    c = t.chunks
    distance = c.c.embedding.cosine_distance(query_vector)
    stmt = select(c.c.id, distance.label("distance")).where(c.c.group_id == group_id)
    if where is not None:
        stmt = stmt.where(where)
    rows = conn.execute(stmt.order_by(distance).limit(k)).all()
    hits = [(int(r[0]), 1.0 - float(r[1])) for r in rows]
    return sorted(hits, key=lambda h: -h[1])  # relaxed_order may return near-ties slightly out of order


def any_words_tsquery(query: str) -> ColumnElement:
    """A tsquery matching ANY of the query's words (stemmed, stop words dropped).

    Questions rarely share every word with the passage that answers them, so the AND of
    ``plainto_tsquery`` is turned into an OR; ranking still favours chunks covering more words. The
    query is a bound value; the rewrite works on Postgres' own normalised output (quoted lexemes).
    """
    plain = func.plainto_tsquery(cast(literal(TEXT_SEARCH_CONFIG), REGCONFIG), query)
    return cast(func.replace(cast(plain, Text), " & ", " | "), TSQUERY)


def fulltext_hits(
    conn: Connection, t: Tables, group_id: int, query: str, k: int, where: ColumnElement[bool] | None
) -> list[tuple[int, float]]:
    """``(chunk_id, ts_rank_cd)`` of the best ``k`` chunks containing any query word, best first."""
    c = t.chunks
    tsq = any_words_tsquery(query)
    rank = func.ts_rank_cd(c.c.tsv, tsq)
    stmt = select(c.c.id, rank.label("rank")).where(c.c.group_id == group_id, c.c.tsv.op("@@")(tsq))
    if where is not None:
        stmt = stmt.where(where)
    rows = conn.execute(stmt.order_by(rank.desc(), c.c.id).limit(k)).all()
    return [(int(r[0]), float(r[1])) for r in rows]


def reciprocal_rank_fusion(
    rankings: Sequence[Sequence[tuple[int, float]]], k: int = RRF_K
) -> list[tuple[int, float]]:
    """Fuse ranked lists: score(id) = sum over lists of 1 / (k + rank), rank starting at 1."""
    scores: dict[int, float] = {}
    for ranking in rankings:
        for rank, (chunk_id, _) in enumerate(ranking, start=1):
            scores[chunk_id] = scores.get(chunk_id, 0.0) + 1.0 / (k + rank)
    return sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))


def fetch_chunks(conn: Connection, t: Tables, hits: Sequence[tuple[int, float]]) -> list[RetrievedChunk]:
    """Chunk rows (text, doc id, metadata) for ``hits``, in hit order; rows deleted meanwhile are skipped."""
    if not hits:
        return []
    c, d = t.chunks, t.documents
    ids = [h[0] for h in hits]
    stmt = (
        select(c.c.id, d.c.doc_id, c.c.ordinal, c.c.text, c.c.n_tokens, c.c.meta)
        .select_from(c.join(d, c.c.document_id == d.c.id))
        .where(c.c.id.in_(ids))
    )
    rows = {int(r.id): r for r in conn.execute(stmt)}
    return [
        RetrievedChunk(
            chunk_id=i,
            doc_id=rows[i].doc_id,
            ordinal=int(rows[i].ordinal),
            text=rows[i].text,
            n_tokens=int(rows[i].n_tokens),
            score=score,
            metadata=dict(rows[i].meta),
        )
        for i, score in hits
        if i in rows
    ]


def fetch_cheat_sheets(
    conn: Connection,
    t: Tables,
    chunk_ids: Sequence[int],
    encoder_fingerprint: str | None = None,
    *,
    with_text: bool = False,
) -> list[torch.Tensor] | list[ChunkSheet]:
    """Decoded cheat sheets for ``chunk_ids``, in order.

    Raises NotFound-style CheatSheetError for chunks without a sheet, CheatSheetError for corrupted bytes,
    and FingerprintMismatchError when a sheet was made by another encoder than ``encoder_fingerprint``
    (or, with no fingerprint given, when the sheets come from more than one encoder). ``with_text``: each as
    a :class:`~lloco_runtime.store.ChunkSheet` with its chunk's text (what question-aware literal tokens
    read).
    """
    if not chunk_ids:
        return []
    cs, c, d = t.cheat_sheets, t.chunks, t.documents
    stmt = (
        select(
            c.c.id,
            d.c.doc_id,
            c.c.ordinal,
            c.c.text,
            cs.c.encoder_fingerprint,
            cs.c.dtype,
            cs.c.shape,
            cs.c.data,
        )
        .select_from(c.join(d, c.c.document_id == d.c.id).outerjoin(cs, cs.c.chunk_id == c.c.id))
        .where(c.c.id.in_(list(chunk_ids)))
    )
    rows = {int(r.id): r for r in conn.execute(stmt)}
    out = []
    seen_fingerprints: set[str] = set()
    for cid in chunk_ids:
        r = rows.get(int(cid))
        if r is None:
            raise ChunkNotFoundError(
                f"chunk {cid} does not exist (deleted or never ingested); retrieve again "
                "for current chunk ids"
            )
        where = f"chunk {cid} (document {r.doc_id!r}, part {r.ordinal})"
        if r.data is None:
            raise CheatSheetError(
                f"{where} has no cheat sheet: it was ingested without compression; "
                "re-ingest it with an encoder"
            )
        if encoder_fingerprint is not None and r.encoder_fingerprint != encoder_fingerprint:
            raise FingerprintMismatchError(
                f"{where} was compressed by encoder {r.encoder_fingerprint[:12]}, but the current encoder is "
                f"{encoder_fingerprint[:12]}; re-compress the group from its stored text with `lloco recompress "
                "--group GROUP` (no files needed), or load the encoder that made them"
            )
        seen_fingerprints.add(r.encoder_fingerprint)
        try:
            tensor = decode_tensor(r.data)
        except CheatSheetError as exc:
            raise CheatSheetError(f"{where}: {exc}") from exc
        if list(tensor.shape) != list(r.shape) or r.dtype != str(tensor.dtype).removeprefix("torch."):
            raise CheatSheetError(
                f"{where}: stored shape/dtype {r.dtype}{list(r.shape)} disagree with its "
                f"bytes ({tensor.dtype}{list(tensor.shape)}); re-ingest the document"
            )
        out.append(ChunkSheet(tensor, r.text) if with_text else tensor)
    if len(seen_fingerprints) > 1:
        raise FingerprintMismatchError(
            f"the requested cheat sheets come from {len(seen_fingerprints)} different encoders (a re-compression "
            "was interrupted?); finish it with `lloco recompress --group GROUP`"
        )
    return out
