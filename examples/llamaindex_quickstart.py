"""LlamaIndex quickstart: a folder of documents -> ingestion pipeline -> LLoCO query engine -> streamed answer.

Run: `.venv/bin/python examples/llamaindex_quickstart.py [FOLDER]` (default: examples/data). Uses the bundled
SmolLM2-135M on CPU and the embedded Postgres under $LLOCO_HOME; nothing is downloaded. Running it again
is fast: unchanged documents are not compressed twice.

Answer quality depends on the encoder and the group's adapter: with an untrained encoder and no adapter
the small model answers from its own guesses, not from the cheat sheets (see DESIGN.md). The pipeline,
the payload flow and the token saving are the same either way.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from llama_index.core import SimpleDirectoryReader
from llama_index.core.ingestion import IngestionPipeline

from lloco_index import LLoCONodeParser, LLoCOQueryEngine
from lloco_runtime import LLoCO
from lloco_runtime.store import CheatSheetStore

HERE = Path(__file__).resolve().parent
GROUP = "quickstart"
QUESTIONS = ["Who was the keeper of the lighthouse?", "When was the lighthouse built?"]


def main(folder: Path) -> None:
    print("Loading the default decoder (SmolLM2-135M-Instruct) and encoder ...", flush=True)
    lloco = LLoCO.from_pretrained()
    store = CheatSheetStore()  # embedded Postgres (or LLOCO_DATABASE_URL), all-MiniLM-L6-v2 retrieval keys
    print(f"Store: {store.url} (schema {store.schema})\n")

    # 1. Offline: read the folder, cut it on encoder segments, compress each chunk into a cheat sheet.
    documents = SimpleDirectoryReader(
        str(folder), filename_as_id=True, required_exts=[".txt", ".md"]
    ).load_data()
    parser = LLoCONodeParser.from_components(lloco.encoder, store, group=GROUP)
    t0 = time.perf_counter()
    nodes = IngestionPipeline(transformations=[parser]).run(documents=documents, show_progress=True)
    print(
        f"Ingested {len(documents)} documents as {len(nodes)} compressed chunks into group {GROUP!r} "
        f"in {time.perf_counter() - t0:.1f}s\n"
    )

    # 2. Online: retrieve -> cheat sheets + the group's adapter -> streamed answer.
    engine = LLoCOQueryEngine.from_defaults(
        group=GROUP, lloco=lloco, store=store, top_k=3, streaming=True, max_new_tokens=48
    )
    for question in QUESTIONS:
        print(f"Q: {question}\nA: ", end="", flush=True)
        response = engine.query(question)
        for delta in response.response_gen:
            print(delta, end="", flush=True)
        meta = response.metadata
        print("\n  sources:")
        for n in response.source_nodes:
            text = " ".join(n.node.get_content().split())
            print(
                f"    [{n.score:.3f}] {n.node.metadata.get('file_name', n.node.ref_doc_id)}: {text[:70]}..."
            )
        saving = meta["raw_context_tokens"] / max(meta["context_vectors"], 1)
        print(
            f"  context: {meta['context_vectors']} cheat-sheet vectors instead of {meta['raw_context_tokens']} "
            f"raw tokens ({saving:.0f}x fewer); prompt {meta['prompt_tokens']} positions, "
            f"prefill {meta['prefill_s']:.2f}s, adapter {meta['adapter_id']}\n"
        )
    store.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "data")
