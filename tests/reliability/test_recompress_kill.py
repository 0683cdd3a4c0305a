"""Crash safety of ``lloco recompress``: a process SIGKILLed in the middle of a recompress leaves every document
whole (all its chunks with sheets of the old encoder, or all with sheets of the new one), and running the same
command again finishes the group: every chunk then has exactly one cheat sheet, of the new encoder.

The child runs the real CLI (``lloco recompress --model TINY --encoder FOLDER``) against the session's Postgres
with the pause hook of test_crash_safety: on the 3rd INSERT of cheat sheets (the 3rd document's transaction,
after it deleted that document's old sheets) it writes a marker and sleeps until it is killed.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from sqlalchemy import func, select
from test_crash_safety import INGEST_CHILD, _env, _kill, _run_until_marker


def _sheets_by_chunk(store) -> dict[int, list[str]]:
    """chunk id -> fingerprints of its cheat sheets (a chunk without a sheet maps to [])."""
    t = store.tables
    c, cs = t.chunks, t.cheat_sheets
    out: dict[int, list[str]] = {}
    with store.engine.connect() as conn:
        for cid, fp in conn.execute(
            select(c.c.id, cs.c.encoder_fingerprint).select_from(c.outerjoin(cs, cs.c.chunk_id == c.c.id))
        ):
            out.setdefault(int(cid), [])
            if fp is not None:
                out[int(cid)].append(fp)
    return out


def _whole_documents(store) -> dict[str, str]:
    """doc_id -> the one encoder of all its chunks' sheets (fails on a document with sheets of two encoders,
    a chunk without a sheet, or a document row whose fingerprint disagrees with its sheets)."""
    t = store.tables
    d, c, cs = t.documents, t.chunks, t.cheat_sheets
    with store.engine.connect() as conn:
        rows = conn.execute(
            select(
                d.c.doc_id,
                d.c.encoder_fingerprint,
                d.c.n_chunks,
                func.count(c.c.id),
                func.count(cs.c.chunk_id),
                func.count(func.distinct(cs.c.encoder_fingerprint)),
                func.min(cs.c.encoder_fingerprint),
            )
            .select_from(d.join(c, c.c.document_id == d.c.id).outerjoin(cs, cs.c.chunk_id == c.c.id))
            .group_by(d.c.id)
        ).all()
    out = {}
    for doc_id, doc_fp, n_chunks, n, n_sheets, n_fps, fp in rows:
        assert n == n_chunks == n_sheets and n_fps == 1, f"document {doc_id} is half updated: {rows}"
        assert doc_fp == fp, f"document {doc_id} records encoder {doc_fp[:12]} but its sheets are {fp[:12]}"
        out[doc_id] = fp
    return out


@pytest.mark.slow
def test_sigkill_during_recompress_then_rerun_finishes_the_group(pg_url, tiny_model_dir, tmp_path):
    from reliability_helpers import new_schema

    from lloco_runtime import ContextEncoder, EncoderConfig, load_model
    from lloco_runtime.embeddings import default_embedder
    from lloco_runtime.store import CheatSheetStore, DocumentInput

    host = load_model(tiny_model_dir, device="cpu", dtype="float32")
    old = ContextEncoder(host, EncoderConfig(segment_length=32, summary_length=4))
    new_dir = ContextEncoder(host, EncoderConfig(segment_length=32, summary_length=2)).save(
        tmp_path / "enc-b"
    )
    n_docs = 6
    docs = [
        DocumentInput(
            f"doc{i}",
            f"Document {i} tells of harbour {i}. "
            + " ".join(f"Ship{i} sailed past beacon{j} at dawn." for j in range(12)),
            {"n": i},
        )
        for i in range(n_docs)
    ]
    schema = new_schema()
    store = CheatSheetStore(pg_url, schema=schema, embedder=default_embedder())
    try:
        store.ingest(docs, group="g", encoder=old)
        chunk_ids = sorted(_sheets_by_chunk(store))
        assert len(chunk_ids) > 2 * n_docs  # several chunks per document
        assert set(_whole_documents(store).values()) == {old.fingerprint}

        argv = [
            "recompress",
            "--group",
            "g",
            "--model",
            str(tiny_model_dir),
            "--encoder",
            str(new_dir),
            "--url",
            pg_url,
            "--schema",
            schema,
            "--no-progress",
            "--json",
        ]
        marker = tmp_path / "paused"
        proc = _run_until_marker(
            INGEST_CHILD, argv, _env(marker, f"INSERT INTO {schema}.cheat_sheets", 3), marker
        )
        done_before_kill = _whole_documents(store)
        assert sorted(d for d, fp in done_before_kill.items() if fp != old.fingerprint) == ["doc0", "doc1"]
        _kill(proc)

        after_kill = _whole_documents(store)  # doc2 was killed mid-transaction: still whole, still old
        new_fps = {fp for fp in after_kill.values() if fp != old.fingerprint}
        assert len(new_fps) == 1
        new_fp = new_fps.pop()
        assert after_kill == {f"doc{i}": new_fp if i < 2 else old.fingerprint for i in range(n_docs)}
        assert all(len(fps) == 1 for fps in _sheets_by_chunk(store).values())
        g = store.get_group("g")
        assert g.encoder_state.startswith("mixed (") and set(g.encoder_fingerprints) == {
            old.fingerprint,
            new_fp,
        }

        rerun = subprocess.run(
            [sys.executable, "-m", "lloco_runtime.cli", *argv],
            check=False,
            capture_output=True,
            text=True,
            timeout=300,
            env=_env(tmp_path / "never", "never-matches", 1),
        )
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        report = json.loads(rerun.stdout)
        assert report["encoder_fingerprint"] == new_fp and report["complete"]
        assert report["skipped"] == 2
        assert sorted(d["doc_id"] for d in report["documents"]) == [f"doc{i}" for i in range(2, n_docs)]
        assert {d["status"] for d in report["documents"]} == {"recompressed"}

        sheets = _sheets_by_chunk(store)
        assert sorted(sheets) == chunk_ids  # the same chunks: nothing re-split, nothing lost
        assert all(fps == [new_fp] for fps in sheets.values())  # exactly one sheet each, of the new encoder
        assert _whole_documents(store) == {f"doc{i}": new_fp for i in range(n_docs)}
        assert store.get_group("g").encoder_fingerprints == {new_fp: len(chunk_ids)}
    finally:
        store.drop_schema()
        store.close()
