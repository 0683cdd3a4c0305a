"""``lloco ingest --ray``: the Ray Data pipeline stores what the local ingest stores, skips what is stored, and
survives its driver being SIGKILLed mid-run.

One local Ray (``num_cpus=2``) for the module, shut down at the end; the CLI runs in subprocesses that join it
by address. The tiny random Llama and a small encoder are saved to folders: the workers load them from paths.
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
import torch
from sqlalchemy import func, select, text
from store_helpers import DOCS, new_schema

pytestmark = pytest.mark.ray

ray = pytest.importorskip("ray")

EXTRA = {
    "volcano": "Mount Etna on Sicily is one of the most active volcanoes in the world. Its eruptions send lava "
    "down the slopes, and ash clouds close the airport of Catania several times a year.",
    "chess": "The opening moves decide the structure of the game: a player who controls the centre with pawns "
    "and develops knights and bishops early usually gets the better middlegame.",
    "rivers": "The Danube flows through ten countries from the Black Forest to the Black Sea. Vienna, Budapest "
    "and Belgrade lie on its banks, and barges carry grain and steel along it.",
}


@pytest.fixture(scope="module")
def ray_address():
    """A local Ray for the module (2 CPUs); its address for subprocess drivers."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory, tiny_model_dir) -> Path:
    """A small encoder (32-token segments, 4 summary vectors) on the tiny Llama, saved to a folder."""
    from lloco_runtime import ContextEncoder, EncoderConfig, load_model

    host = load_model(tiny_model_dir, device="cpu", dtype="float32")
    return ContextEncoder(host, EncoderConfig(segment_length=32, summary_length=4)).save(
        tmp_path_factory.mktemp("ray-encoder") / "encoder"
    )


@pytest.fixture(scope="module")
def spec(tiny_model_dir, encoder_dir):
    from lloco_runtime.ray_ingest import RuntimeSpec

    return RuntimeSpec.of(tiny_model_dir, encoder_dir, "cpu", "float32")


@pytest.fixture(scope="module")
def plain_store(pg_url):
    """A store with the plain MiniLM embedder (the Ray workers rebuild it from its folder)."""
    from lloco_runtime.embeddings import MiniLMEmbedder
    from lloco_runtime.store import CheatSheetStore

    s = CheatSheetStore(pg_url, schema=new_schema(), embedder=MiniLMEmbedder())
    yield s
    s.drop_schema()
    s.close()


def corpus():
    from lloco_runtime.store import DocumentInput

    return [
        DocumentInput(doc_id=k, text=v, metadata={"topic": k, "n": i})
        for i, (k, v) in enumerate({**DOCS, **EXTRA}.items())
    ]


def stored(store, group: str) -> dict[str, dict]:
    """doc_id -> its fingerprint, chunk count and [(ordinal, text, n_tokens, cheat sheet)] in ordinal order."""

    t = store.tables
    out: dict[str, dict] = {}
    with store.engine.connect() as conn:
        gid = conn.execute(select(t.groups.c.id).where(t.groups.c.name == group)).scalar_one()
        for d in conn.execute(select(t.documents).where(t.documents.c.group_id == gid)):
            rows = conn.execute(
                select(
                    t.chunks.c.ordinal,
                    t.chunks.c.text,
                    t.chunks.c.n_tokens,
                    t.chunks.c.embedding,
                    t.cheat_sheets.c.data,
                    t.cheat_sheets.c.encoder_fingerprint,
                )
                .join(t.cheat_sheets, t.cheat_sheets.c.chunk_id == t.chunks.c.id, isouter=True)
                .where(t.chunks.c.document_id == d.id)
                .order_by(t.chunks.c.ordinal)
            ).all()
            out[d.doc_id] = {
                "fingerprint": d.encoder_fingerprint,
                "n_chunks": d.n_chunks,
                "sha256": d.sha256,
                "metadata": d.meta,
                "rows": rows,
            }
    return out


def test_ray_ingest_matches_local_ingest_and_skips_what_is_stored(ray_address, plain_store, spec):
    from lloco_runtime.ray_ingest import RaySettings, ray_ingest

    lloco = spec.load()
    docs = corpus()
    local = plain_store.ingest(docs, group="local", encoder=lloco.encoder)
    t0 = time.perf_counter()
    report = ray_ingest(
        plain_store,
        docs,
        group="ray",
        runtime=spec,
        settings=RaySettings(workers=2, cpus_per_worker=0.5),
        batch_size=3,
    )
    assert time.perf_counter() - t0 < 120
    assert [d.doc_id for d in report.documents] == [d.doc_id for d in docs]  # input order, like the local one
    assert report.count("added") == len(docs) and report.chunks_written == local.chunks_written > len(docs)

    a, b = stored(plain_store, "local"), stored(plain_store, "ray")
    assert sorted(a) == sorted(b) == sorted(d.doc_id for d in docs)
    for doc_id in a:
        x, y = a[doc_id], b[doc_id]
        assert x["fingerprint"] == y["fingerprint"] == lloco.encoder.fingerprint
        assert (x["n_chunks"], x["sha256"], x["metadata"]) == (y["n_chunks"], y["sha256"], y["metadata"])
        assert [r[:3] for r in x["rows"]] == [r[:3] for r in y["rows"]]  # ordinal, text, n_tokens
        assert [r.ordinal for r in y["rows"]] == list(range(y["n_chunks"]))
        for rx, ry in zip(x["rows"], y["rows"], strict=True):
            assert ry.encoder_fingerprint == lloco.encoder.fingerprint
            # halfvec storage: a worker's BLAS may round the last bit of a float32 sum the other way
            torch.testing.assert_close(
                torch.as_tensor(ry.embedding), torch.as_tensor(rx.embedding), atol=1e-4, rtol=1e-3
            )
            sx, sy = _sheet(rx.data), _sheet(ry.data)
            assert sy.dtype == torch.float16 and sx.shape == sy.shape == (4, lloco.encoder.hidden_size)
            assert torch.allclose(sx.float(), sy.float(), atol=1e-3)
            assert torch.equal(sx, sy)  # CPU fp32, the same batches: the same bits

    again = ray_ingest(plain_store, docs, group="ray", runtime=spec, settings=RaySettings(workers=1))
    assert again.count("unchanged") == len(docs) and again.chunks_written == 0
    # The local ingest's documents are skipped by the Ray path too (same content, same encoder).
    assert ray_ingest(plain_store, docs, group="local", runtime=spec).count("unchanged") == len(docs)


def _sheet(blob: bytes) -> torch.Tensor:
    from lloco_runtime.codec import decode_tensor

    return decode_tensor(blob)


def test_bad_settings_fail_before_anything_runs(ray_address, plain_store, spec):
    from lloco_runtime.errors import ConfigError, InputError, ModelLoadError
    from lloco_runtime.ray_ingest import RaySettings, RuntimeSpec, ray_ingest

    with pytest.raises(ConfigError, match="need 5 CPUs, but the Ray cluster has 2"):
        ray_ingest(
            plain_store,
            corpus(),
            group="wide",
            runtime=spec,
            settings=RaySettings(workers=3, cpus_per_worker=1.5),
        )
    with pytest.raises(ModelLoadError, match="encoder path '/nonexistent/encoder' does not exist"):
        RuntimeSpec.of(spec.model, "/nonexistent/encoder", "cpu", "float32")
    with pytest.raises(InputError, match="--ray-workers must be a positive integer"):
        ray_ingest(plain_store, corpus(), group="zero", runtime=spec, settings=RaySettings(workers=0))


def test_worker_failures_surface_as_the_lloco_error_behind_them():
    from lloco_runtime.errors import ModelLoadError, NotFoundError
    from lloco_runtime.ray_ingest import worker_failure

    died = RuntimeError(
        'The actor died because of an error raised in its creation task\n  File "x.py"\n'
        "lloco_runtime.errors.NotFoundError: encoder folder /e is missing; pass --encoder DIR\n"
    )
    err = worker_failure(died)
    assert isinstance(err, NotFoundError) and str(err) == "encoder folder /e is missing; pass --encoder DIR"
    err = worker_failure(RuntimeError("worker crashed\nMemoryError: out of memory"))
    assert isinstance(err, ModelLoadError)
    assert "MemoryError: out of memory" in str(err) and "run the same command again" in str(err)


def test_cli_without_ray_says_how_to_install(monkeypatch, capsys, tmp_path):
    from lloco_runtime.cli import main

    (tmp_path / "a.txt").write_text("Some text.", encoding="utf-8")
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails, as without the serve extra
    assert main(["ingest", str(tmp_path), "--group", "g", "--ray"]) == 1
    assert "pip install 'lloco[serve]'" in capsys.readouterr().err
    assert main(["ingest", str(tmp_path), "--group", "g", "--ray-workers", "2"]) == 2
    assert "only apply with --ray" in capsys.readouterr().err


# -- a driver SIGKILLed mid-run -------------------------------------------------------------------------------

PAUSING_CLI = textwrap.dedent("""
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
                time.sleep(600)  # killed here, inside the document's open transaction

    from lloco_runtime.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def _consistency(store) -> dict[str, int]:
    """Every stored document is whole: as many chunks as it says, each with its cheat sheet."""
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
        ids = [d.doc_id for d in docs]
        assert len(ids) == len(set(ids)), f"a document is stored twice: {sorted(ids)}"
        return {"documents": len(docs), "chunks": sum(d.n_chunks for d in docs)}


def test_sigkill_of_the_driver_mid_run_then_rerun_stores_each_document_once(
    ray_address, pg_url, tiny_model_dir, encoder_dir, tmp_path
):
    from lloco_runtime.embeddings import MiniLMEmbedder
    from lloco_runtime.store import CheatSheetStore

    folder = tmp_path / "corpus"
    folder.mkdir()
    n_docs = 6
    for i in range(n_docs):
        (folder / f"doc{i}.txt").write_text(
            f"Document {i}. " + " ".join(f"word{i}_{j}" for j in range(60)), encoding="utf-8"
        )
    schema = new_schema()
    argv = [
        "ingest",
        str(folder),
        "--group",
        "g",
        "--model",
        str(tiny_model_dir),
        "--encoder",
        str(encoder_dir),
        "--device",
        "cpu",
        "--dtype",
        "float32",
        "--url",
        pg_url,
        "--schema",
        schema,
        "--no-progress",
        "--json",
        "--ray",
        ray_address,
        "--ray-workers",
        "1",
    ]
    marker = tmp_path / "paused"
    env = {
        **os.environ,
        "PAUSE_MARKER": str(marker),
        "PAUSE_NEEDLE": f"INSERT INTO {schema}.cheat_sheets",
        "PAUSE_NTH": "3",
    }
    proc = subprocess.Popen(
        [sys.executable, "-c", PAUSING_CLI, *argv],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 180
    while not marker.exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the CLI exited ({proc.returncode}) before the pause point:\n{out}\n{err[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("the CLI never reached the pause point")
        time.sleep(0.05)
    store = CheatSheetStore(pg_url, schema=schema, embedder=MiniLMEmbedder(), create=False)
    try:
        # Two documents are committed and visible; the third is inside its open transaction.
        assert _consistency(store)["documents"] == 2
        with store.engine.connect() as conn:  # the paused transaction holds the group row
            assert (
                conn.execute(
                    text("SELECT count(*) FROM pg_stat_activity WHERE state = 'idle in transaction'")
                ).scalar_one()
                >= 1
            )
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        first = {d.doc_id for d in store.list_documents("g")}
        assert len(first) == 2 and _consistency(store)["documents"] == 2  # the killed one left nothing

        done = subprocess.run(
            [sys.executable, "-m", "lloco_runtime.cli", *argv],
            check=False,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        report = json.loads(done.stdout)
        statuses = {d["doc_id"]: d["status"] for d in report["documents"]}
        assert statuses == {f"doc{i}": "unchanged" if f"doc{i}" in first else "added" for i in range(n_docs)}
        final = _consistency(store)
        assert final["documents"] == n_docs
        assert sorted(d.doc_id for d in store.list_documents("g")) == [f"doc{i}" for i in range(n_docs)]
        expected = {d.doc_id: d.n_chunks for d in store.list_documents("g")}
        assert all(n >= 2 for n in expected.values())  # several 32-token chunks each
    finally:
        store.drop_schema()
        store.close()
