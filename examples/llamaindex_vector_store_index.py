"""LlamaIndex's everyday patterns over lloco: VectorStoreIndex.from_vector_store, as_retriever, as_query_engine.

Run: `.venv/bin/python examples/llamaindex_vector_store_index.py [FOLDER]` (default: examples/data). Uses the
bundled SmolLM2-135M on CPU, the embedded Postgres under $LLOCO_HOME and the bundled all-MiniLM-L6-v2
retrieval embedder; no OpenAI, no API key, nothing is downloaded, and LlamaIndex's ``Settings`` are untouched.

1. Offline: ``LLoCONodeParser`` writes chunks, cheat sheets and retrieval keys into Postgres.
2. ``VectorStoreIndex.from_vector_store(vs, embed_model=vs.embed_model)``: the index embeds queries with the
   store's own embedder (an ``LLoCOEmbedding``), so they match the stored keys. Without ``embed_model=`` (and
   with ``Settings.embed_model`` unset) LlamaIndex would build its default, OpenAI, and fail offline.
3. ``LLoCOQueryEngine(retriever=index.as_retriever(), llm=LLoCOLLM(...))`` answers from the cheat sheets with
   the group's adapter: the LLM reads a few vectors per chunk instead of its text.
4. ``index.as_query_engine(llm=LLoCOLLM(...))``, LlamaIndex's generic engine, also answers, but from the
   chunks' *text*: its response synthesizer puts node text into a prompt and cannot hand cheat sheets to the
   LLM. Use it where you need LlamaIndex's synthesizers; use ``LLoCOQueryEngine`` for lloco's saving.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from llama_index.core import SimpleDirectoryReader, VectorStoreIndex
from llama_index.core.schema import Document

from lloco_index import LLoCOLLM, LLoCONodeParser, LLoCOQueryEngine, LLoCOVectorStore
from lloco_runtime import LLoCO
from lloco_runtime.store import CheatSheetStore

HERE = Path(__file__).resolve().parent
GROUP = "everyday"
QUESTIONS = ["Who was the keeper of the lighthouse?", "When was the lighthouse built?"]


def run(
    lloco: LLoCO,
    store: CheatSheetStore,
    documents: list[Document],
    *,
    group: str = GROUP,
    questions: list[str] = QUESTIONS,
    top_k: int = 3,
    max_new_tokens: int = 48,
) -> list[dict[str, Any]]:
    """Ingest ``documents`` into ``group``, then answer each question both ways; prints and returns them."""
    LLoCONodeParser.from_components(lloco.encoder, store, group=group).get_nodes_from_documents(documents)

    vs = LLoCOVectorStore(store, group=group)
    index = VectorStoreIndex.from_vector_store(vs, embed_model=vs.embed_model)
    llm = LLoCOLLM(lloco, store=store, max_new_tokens=max_new_tokens, max_cheat_sheets=top_k)
    lloco_engine = LLoCOQueryEngine(retriever=index.as_retriever(similarity_top_k=top_k), llm=llm)
    text_engine = index.as_query_engine(llm=llm, similarity_top_k=top_k)

    results = []
    for question in questions:
        sheets = lloco_engine.query(question)
        text = text_engine.query(question)
        print(f"Q: {question}")
        print(f"  LLoCOQueryEngine (cheat sheets): {str(sheets).strip()!r}")
        print(
            f"    read {sheets.metadata['context_vectors']} cheat-sheet vectors instead of "
            f"{sheets.metadata['raw_context_tokens']} tokens of text, adapter {sheets.metadata['adapter_id']}"
        )
        print(f"  index.as_query_engine (text):    {str(text).strip()!r}")
        print("  sources:")
        for n in sheets.source_nodes:
            snippet = " ".join(n.node.get_content().split())[:60]
            print(f"    [{n.score:.3f}] {n.node.metadata['lloco_doc_id']}: {snippet}...")
        results.append({"question": question, "cheat_sheets": sheets, "text": text})
    return results


def main(folder: Path) -> None:
    print("Loading the default decoder (SmolLM2-135M-Instruct) and encoder ...", flush=True)
    lloco = LLoCO.from_pretrained()
    store = CheatSheetStore()  # embedded Postgres (or LLOCO_DATABASE_URL), all-MiniLM-L6-v2 retrieval keys
    documents = SimpleDirectoryReader(
        str(folder), filename_as_id=True, required_exts=[".txt", ".md"]
    ).load_data()
    run(lloco, store, documents)
    store.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "data")
