"""Crash safety: a process SIGKILLed in the middle of an ingest or of an adapter registration leaves no half-
stored document or adapter, and running the same job again completes, storing everything exactly once.

The child processes run the real code paths (``lloco ingest`` through ``cli.main``; ``finetune_group``) against
the session's Postgres. To kill them at a known point rather than at a random time, the child installs a
SQLAlchemy ``before_cursor_execute`` hook that, on the N-th statement of a given kind, writes a marker file and
sleeps: the test waits for the marker, checks that earlier documents are already visible ("rows appearing"), and
sends SIGKILL while the child's transaction is open.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

HERE = Path(__file__).resolve().parent

PAUSE_HOOK = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    MARKER, NEEDLE, NTH = Path(os.environ["PAUSE_MARKER"]), os.environ["PAUSE_NEEDLE"], int(os.environ["PAUSE_NTH"])
    seen = 0

    @event.listens_for(Engine, "before_cursor_execute")
    def _pause(conn, cursor, statement, params, context, executemany):
        global seen
        if NEEDLE in statement:
            seen += 1
            if seen == NTH:
                MARKER.write_text(statement[:80])
                time.sleep(600)  # killed here, with the transaction open
""")

INGEST_CHILD = PAUSE_HOOK + textwrap.dedent("""
    from lloco_runtime.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def _env(marker: Path, needle: str, nth: int) -> dict[str, str]:
    return {
        **os.environ,
        "PAUSE_MARKER": str(marker),
        "PAUSE_NEEDLE": needle,
        "PAUSE_NTH": str(nth),
        "PYTHONPATH": os.pathsep.join([str(HERE), str(HERE.parent), os.environ.get("PYTHONPATH", "")]),
    }


def _run_until_marker(code: str, argv: list[str], env: dict[str, str], marker: Path, timeout: float = 240):
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *argv],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + timeout
    while not marker.exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"child exited ({proc.returncode}) before the pause point:\n{out}\n{err[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("child never reached the pause point")
        time.sleep(0.05)
    return proc


def _kill(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def _consistency(store) -> dict[str, int]:
    """Every document is whole: its chunk count equals its rows, and every chunk has its cheat sheet."""
    t = store.tables
    with store.engine.connect() as conn:
        docs = conn.execute(select(t.documents.c.id, t.documents.c.doc_id, t.documents.c.n_chunks)).all()
        for d in docs:
            n = conn.execute(
                select(func.count()).select_from(t.chunks).where(t.chunks.c.document_id == d.id)
            ).scalar_one()
            sheets = conn.execute(
                select(func.count())
                .select_from(t.cheat_sheets.join(t.chunks, t.cheat_sheets.c.chunk_id == t.chunks.c.id))
                .where(t.chunks.c.document_id == d.id)
            ).scalar_one()
            assert n == d.n_chunks == sheets, (
                f"document {d.doc_id} is half stored: {d.n_chunks} / {n} / {sheets}"
            )
        return {
            "documents": len(docs),
            "chunks": conn.execute(select(func.count()).select_from(t.chunks)).scalar_one(),
            "cheat_sheets": conn.execute(select(func.count()).select_from(t.cheat_sheets)).scalar_one(),
        }


@pytest.mark.slow
def test_sigkill_during_ingest_then_rerun_stores_each_document_once(pg_url, tiny_model_dir, tmp_path):
    from reliability_helpers import new_schema

    from lloco_runtime.embeddings import default_embedder
    from lloco_runtime.store import CheatSheetStore

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    n_docs = 8
    for i in range(n_docs):  # each several chunks long (512-token segments of the default config)
        (corpus / f"doc{i}.txt").write_text(
            f"Document {i}. " + " ".join(f"word{i}_{j}" for j in range(900)), encoding="utf-8"
        )
    schema = new_schema()
    argv = [
        "ingest",
        str(corpus),
        "--group",
        "g",
        "--model",
        str(tiny_model_dir),
        "--url",
        pg_url,
        "--schema",
        schema,
        "--no-progress",
        "--json",
    ]
    marker = tmp_path / "paused"
    # Pause inside the 4th document's transaction, after its document and chunk rows were inserted.
    proc = _run_until_marker(
        INGEST_CHILD, argv, _env(marker, f"INSERT INTO {schema}.cheat_sheets", 4), marker
    )
    store = CheatSheetStore(pg_url, schema=schema, embedder=default_embedder(), create=False)
    try:
        assert _consistency(store)["documents"] == 3, "rows of finished documents should be visible already"
        _kill(proc)
        after_kill = _consistency(store)
        assert after_kill["documents"] == 3  # the 4th, killed mid-transaction, left nothing behind
        assert {d.doc_id for d in store.list_documents("g")} == {"doc0", "doc1", "doc2"}

        done = subprocess.run(
            [sys.executable, "-m", "lloco_runtime.cli", *argv],
            check=False,
            capture_output=True,
            text=True,
            timeout=300,
            env=_env(tmp_path / "never", "never-matches", 1),
        )
        assert done.returncode == 0, done.stderr[-3000:]
        report = json.loads(done.stdout)
        statuses = {d["doc_id"]: d["status"] for d in report["documents"]}
        assert statuses == {f"doc{i}": "unchanged" if i < 3 else "added" for i in range(n_docs)}
        final = _consistency(store)
        assert final["documents"] == n_docs and final["chunks"] == final["cheat_sheets"] > n_docs
        assert sorted(d.doc_id for d in store.list_documents("g")) == [f"doc{i}" for i in range(n_docs)]
    finally:
        store.drop_schema()
        store.close()


FINETUNE_CHILD = PAUSE_HOOK + textwrap.dedent("""
    from reliability_helpers import open_store
    from lloco_runtime import ContextEncoder, EncoderConfig, LLoCO, load_model
    from lloco_runtime.service import LLoCOService
    from lloco_runtime.training.finetune import FinetuneConfig, finetune_group
    url, schema, model_dir = sys.argv[1:4]
    host = load_model(model_dir, device="cpu", dtype="float32")
    lloco = LLoCO(host, ContextEncoder(host, EncoderConfig(segment_length=32, summary_length=4)))
    service = LLoCOService(lloco, open_store(url, schema))
    cfg = FinetuneConfig(steps=2, batch_size=2, lr=5e-3, warmup=1, eval_every=2, val_pairs=2, checkpoint_every=2,
                         top_k=2)
    finetune_group(service, "g", cfg=cfg, progress=False)
    print("registered")
""")


@pytest.mark.slow
@pytest.mark.parametrize(
    "needle", ["INSERT INTO {schema}.adapters", "UPDATE {schema}.groups"], ids=["insert-adapter", "activate"]
)
def test_sigkill_while_registering_a_finetuned_adapter(pg_url, tiny_model_dir, tmp_path, needle):
    from reliability_helpers import docs, make_adapter_bytes, new_schema, open_store, snapshot

    from lloco_runtime import ContextEncoder, EncoderConfig, LLoCO, load_model
    from lloco_runtime.service import LLoCOService
    from lloco_runtime.training.finetune import FinetuneConfig, finetune_group

    host = load_model(tiny_model_dir, device="cpu", dtype="float32")
    lloco = LLoCO(host, ContextEncoder(host, EncoderConfig(segment_length=32, summary_length=4)))
    schema = new_schema()
    store = open_store(pg_url, schema)
    try:
        store.ingest(docs(), group="g", encoder=lloco.encoder)
        v1 = store.register_adapter(
            "g",
            make_adapter_bytes(host, lloco.encoder.fingerprint, seed=1),
            base_fingerprint=host.fingerprint,
            encoder_fingerprint=lloco.encoder.fingerprint,
            activate=True,
        )
        before = snapshot(store)
        marker = tmp_path / "paused"
        proc = _run_until_marker(
            FINETUNE_CHILD,
            [pg_url, schema, str(tiny_model_dir)],
            _env(marker, needle.format(schema=schema), 1),
            marker,
        )
        _kill(proc)
        assert snapshot(store) == before  # no adapter row, v1 still the active one
        assert [a.version for a in store.list_adapters("g")] == [1] and store.get_group(
            "g"
        ).active_adapter_id == v1.id

        cfg = FinetuneConfig(
            steps=2, batch_size=2, lr=5e-3, warmup=1, eval_every=2, val_pairs=2, checkpoint_every=2, top_k=2
        )
        hist = finetune_group(LLoCOService(lloco, store), "g", cfg=cfg, progress=False)
        adapters = store.list_adapters("g")
        assert [a.version for a in adapters] == [1, 2]
        assert store.get_group("g").active_adapter_id == hist["adapter_id"] == adapters[1].id
        LLoCOService(lloco, store).answer("When was the lighthouse built?", group="g", max_new_tokens=3)
    finally:
        store.drop_schema()
        store.close()
