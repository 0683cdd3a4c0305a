"""The example scripts: the existing-Postgres app end to end, and the demo's data and shipped adapter."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    sys.path.insert(0, str(EXAMPLES))  # the demo imports its sibling build_demo_adapter
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(EXAMPLES))
    return module


@pytest.fixture(scope="module")
def app_db(pg_url):
    """A new database on the session's Postgres, standing in for the app's own."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from lloco_runtime.store.server import sqlalchemy_url

    admin = create_engine(sqlalchemy_url(pg_url), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "app_{os.getpid()}"'))  # test-made name
    admin.dispose()
    return (
        make_url(sqlalchemy_url(pg_url))
        .set(database=f"app_{os.getpid()}")
        .render_as_string(hide_password=False)
    )


@pytest.mark.default_model
def test_existing_postgres_app(app_db):
    from sqlalchemy import create_engine, inspect, text

    from lloco_runtime.store import CheatSheetStore

    env = {k: v for k, v in os.environ.items() if k not in ("LLOCO_DATABASE_URL", "LLOCO_SCHEMA")}
    proc = subprocess.run(
        [sys.executable, "examples/existing_postgres_app.py", "--url", app_db],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "The app's table kb_articles: 5 articles" in out
    assert out.count("sources joined back to kb_articles") == 2

    # The sources printed are the app's own rows (id, product, title as in its table).
    engine = create_engine(app_db)  # already a postgresql+psycopg URL
    with engine.connect() as conn:
        rows = {r.id: r for r in conn.execute(text("SELECT id, product, title FROM kb_articles"))}
    printed = re.findall(r"- article (\d+) \[(\w+)\] '([^']+)'", out)
    assert len(printed) == 4
    for aid, product, title in printed:
        assert (rows[int(aid)].product, rows[int(aid)].title) == (product, title)
    boiler_block = out.split("What should the boiler pressure be?")[1]
    assert {p for _, p, _ in re.findall(r"- article (\d+) \[(\w+)\] '([^']+)'", boiler_block)} == {"boiler"}

    # lloco stayed in its schema; the app's schema holds only the app's table.
    insp = inspect(engine)
    assert insp.get_table_names(schema="public") == ["kb_articles"]
    assert {"documents", "chunks", "cheat_sheets", "adapters"} <= set(insp.get_table_names(schema="lloco"))
    with CheatSheetStore(app_db, schema="lloco", create=False) as store:
        docs = store.list_documents("helpdesk")
    assert sorted(d.doc_id for d in docs) == [f"kb-{i}" for i in sorted(rows)]
    assert all(d.metadata["article_id"] == int(d.doc_id[3:]) for d in docs)

    # Running it again adds nothing: unchanged rows are not re-ingested.
    again = subprocess.run(
        [sys.executable, "examples/existing_postgres_app.py", "--url", app_db],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert "0 added, 0 replaced, 5 unchanged" in again.stdout
    engine.dispose()


def test_demo_questions_are_held_out_from_the_adapter_training_data():
    demo = load_example("demo")
    train = [
        json.loads(line) for line in (EXAMPLES / "demo" / "qa_train.jsonl").read_text().splitlines() if line
    ]
    questions = [json.loads(line) for line in demo.QUESTIONS.read_text().splitlines() if line]
    assert len(questions) >= 3
    docs = {p.stem for p in demo.DATA.glob("*.txt")}
    assert {q["doc_id"] for q in train} == docs and {q["doc_id"] for q in questions} <= docs
    train_text = " ".join(demo.normalise(q["question"] + " " + " ".join(q["answers"])) for q in train)
    for q in questions:
        assert demo.normalise(q["question"]) not in train_text
        for answer in q["answers"]:
            assert demo.normalise(answer) not in train_text, answer


def test_demo_answer_matching():
    demo = load_example("demo")
    assert demo.matches("It was Tom Rennie, her assistant.", ["Tom Rennie"])
    assert demo.matches("the French-burr stones", ["French burr stones"])
    assert not demo.matches("Elspeth Morrow.", ["Tom Rennie"])


@pytest.mark.default_model
def test_shipped_demo_adapter_fits_the_default_runtime():
    """If the default model or encoder changes, rebuild it: examples/build_demo_adapter.py."""
    from lloco_runtime import LLoCO
    from lloco_runtime.adapters import AdapterArtifact

    demo = load_example("demo")
    lloco = LLoCO.from_pretrained()  # a private host: loading the encoder injects its LoRA into the model
    data, why = demo.shipped_adapter_fits(lloco)
    assert data is not None, why
    art = AdapterArtifact.from_bytes(data)
    info = json.loads(demo.ADAPTER_INFO.read_text())
    assert info["encoder_fingerprint"] == lloco.encoder.fingerprint
    assert art.lora_config["r"] == info["lora"]["r"]
    if lloco.encoder.reader is not None:  # group adapters start from the encoder's reader
        assert info["init"] == "reader"
    assert info["val_answer_loss_with_adapter"] < info["val_answer_loss_without_adapter"]
