"""An app with its own tables adds LLoCO to its own Postgres, and joins answers back to its own rows.

Run: `.venv/bin/python examples/existing_postgres_app.py --url postgresql://user:pass@host:5432/appdb`
(or set LLOCO_DATABASE_URL). Without a URL it starts a scratch embedded Postgres to stand in for yours.

The "app" is a small help desk: its table ``kb_articles`` (id, product, title, body) lives in its own schema
(``public`` by default). LLoCO goes into the same database under the schema ``lloco`` and touches nothing
else. Each article is ingested as a document whose ``doc_id`` is ``kb-<id>`` and whose metadata carries the
row's ``article_id`` and ``product``; an answer's sources carry that metadata, so the app joins them back to
its rows with an ordinary query on its own table. A metadata filter restricts retrieval to one product.
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: much faster on busy machines
os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")

from sqlalchemy import Column, Integer, MetaData, Table, Text, create_engine, func, insert, inspect, select

GROUP = "helpdesk"
ARTICLES = [
    (
        "pump",
        "Resetting the P-200 pump after a power cut",
        (
            "If the P-200 pump stops after a power cut, the red fault lamp on its front panel stays lit. Wait until "
            "the power has been back for two minutes, then hold the RESET button for five seconds until the lamp "
            "turns green. If the lamp blinks amber instead, the pressure sensor needs recalibrating: call the "
            "service line on 0800 555 0142."
        ),
    ),
    (
        "pump",
        "Cleaning the P-200 intake filter",
        (
            "Clean the intake filter of the P-200 every three months. Switch the pump off at the isolator, unscrew "
            "the clear bowl under the inlet by hand, rinse the mesh cartridge under a cold tap and refit it with the "
            "arrow pointing towards the pump. Never run the pump without the cartridge in place."
        ),
    ),
    (
        "boiler",
        "Boiler pressure too low on the H-40",
        (
            "The pressure gauge of the H-40 boiler should read between 1.0 and 1.5 bar when the heating is cold. "
            "Below 0.8 bar the boiler locks out and shows error E119. Top it up with the silver filling loop under "
            "the boiler: open both taps slowly until the gauge reads 1.2 bar, then close them again."
        ),
    ),
    (
        "boiler",
        "Annual service of the H-40",
        (
            "The H-40 boiler needs a service by a registered engineer once a year to keep its ten-year warranty. "
            "The engineer checks the flue gas, cleans the heat exchanger and replaces the ignition electrode every "
            "second year. Keep the service record in the pocket inside the boiler door."
        ),
    ),
    (
        "thermostat",
        "Pairing the T-5 wireless thermostat",
        (
            "To pair a T-5 thermostat with its receiver, press and hold the receiver's pair button until its light "
            "flashes blue, then hold the thermostat's menu and down buttons together for three seconds. The two are "
            "paired when the receiver light stays blue. A receiver remembers up to four thermostats."
        ),
    ),
]
QUESTIONS = [
    ("How do I reset the pump after a power cut?", None),
    ("What should the boiler pressure be?", {"key": "product", "op": "==", "value": "boiler"}),
]


def scratch_server() -> str:
    """A throwaway embedded Postgres standing in for the app's own database."""
    from lloco_runtime.store import start_embedded, stop_embedded

    root = Path(tempfile.mkdtemp(prefix="app-pg-"))
    print(f"No --url or LLOCO_DATABASE_URL: starting a scratch Postgres in {root} to stand in for yours.")
    atexit.register(shutil.rmtree, root, ignore_errors=True)  # runs last: after the server has stopped
    atexit.register(stop_embedded, root / "data")
    return start_embedded(root / "data")


def app_tables(schema: str | None) -> tuple[MetaData, Table]:
    """The app's own table (its schema, its names): nothing lloco knows about."""
    md = MetaData(schema=schema)
    articles = Table(
        "kb_articles",
        md,
        Column("id", Integer, primary_key=True),
        Column("product", Text, nullable=False),
        Column("title", Text, nullable=False),
        Column("body", Text, nullable=False),
    )
    return md, articles


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--url",
        default=os.environ.get("LLOCO_DATABASE_URL"),
        help="the app's Postgres (default: LLOCO_DATABASE_URL; none: a scratch embedded server)",
    )
    ap.add_argument("--app-schema", default=None, help="schema of the app's own table (default: public)")
    ap.add_argument(
        "--model", default=None, help="decoder folder or .gguf (default: the bundled SmolLM2-135M)"
    )
    args = ap.parse_args(argv)
    url = args.url or scratch_server()

    # 1. The app's own data, in its own table (created and filled here so the example stands alone).
    from lloco_runtime.store import sqlalchemy_url

    engine = create_engine(sqlalchemy_url(url))
    md, articles = app_tables(args.app_schema)
    md.create_all(engine)
    with engine.begin() as conn:
        if conn.execute(select(func.count()).select_from(articles)).scalar_one() == 0:
            conn.execute(insert(articles), [{"product": p, "title": t, "body": b} for p, t, b in ARTICLES])
        rows = conn.execute(
            select(articles.c.id, articles.c.product, articles.c.title, articles.c.body).order_by(
                articles.c.id
            )
        ).all()
    print(f"The app's table {articles.fullname}: {len(rows)} articles")

    # 2. LLoCO in the same database, schema `lloco`: ingest the rows with their ids as metadata.
    from lloco_runtime import LLoCO, LLoCOService
    from lloco_runtime.store import CheatSheetStore, DocumentInput

    store = CheatSheetStore(url, schema="lloco")
    service = LLoCOService(LLoCO.from_pretrained(args.model), store)
    docs = [
        DocumentInput(
            doc_id=f"kb-{r.id}",
            text=f"{r.title}\n\n{r.body}",
            metadata={"article_id": r.id, "product": r.product},
        )
        for r in rows
    ]
    report = store.ingest(docs, group=GROUP, encoder=service.lloco.encoder)
    print(f"LLoCO ingest into schema {store.schema!r}: {report.summary()}")

    # 3. Answer, then join the sources back to the app's rows by their ids.
    for question, filters in QUESTIONS:
        ans = service.answer(question, group=GROUP, top_k=2, filters=filters, max_new_tokens=40)
        ids = [int(s.metadata["article_id"]) for s in ans.sources]
        with engine.connect() as conn:
            joined = {
                r.id: r
                for r in conn.execute(
                    select(articles.c.id, articles.c.product, articles.c.title).where(articles.c.id.in_(ids))
                )
            }
        print(f"\nQ: {question}" + (f"   (filter: product == {filters['value']!r})" if filters else ""))
        print(f"A: {' '.join(ans.answer.split())}")
        print(
            f"   {ans.context_tokens} cheat-sheet vectors instead of {ans.raw_context_tokens} text tokens; "
            f"sources joined back to {articles.name}:"
        )
        for s in ans.sources:
            row = joined[int(s.metadata["article_id"])]
            print(f"   - article {row.id} [{row.product}] {row.title!r} (score {s.score:.3f})")

    # 4. What is where: the app's schema holds only its table; lloco's tables are all in `lloco`.
    insp = inspect(engine)
    print(
        f"\nTables in the app's schema ({args.app_schema or 'public'}): "
        f"{sorted(insp.get_table_names(schema=args.app_schema))}"
    )
    print(f"Tables in schema lloco: {sorted(insp.get_table_names(schema='lloco'))}")
    store.close()
    engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
