"""LangChain + LLoCO: ingest a folder into a group, then stream answers from a retrieval chain.

Run: `.venv/bin/python examples/langchain_chain.py` (needs `pip install -e '.[langchain]'`).
Uses the embedded Postgres under LLOCO_HOME and the bundled SmolLM2-135M on CPU; nothing is downloaded.

The chain retrieves chunks of the group, and instead of pasting their text into the prompt, passes their
chunk ids and the group's adapter id to the LLM, which splices the stored cheat sheets into its prompt.
Until the group has a trained adapter (and the encoder is trained), expect fluent but unreliable answers:
the point here is the plumbing and the context-token saving.
"""

from __future__ import annotations

import sys
from pathlib import Path

from langchain_core.callbacks import BaseCallbackHandler

from lloco_langchain import LLoCOLLM, LLoCORetriever, create_lloco_chain
from lloco_runtime import LLoCOService

DATA = Path(__file__).resolve().parent / "data"
GROUP = "lighthouse"
QUESTIONS = ["Who was the keeper of the lighthouse?", "What year was the lighthouse built?"]


class Usage(BaseCallbackHandler):
    """Keeps what the LLM reports when it finishes: cheat-sheet vectors read, prompt size, timings."""

    def __init__(self) -> None:
        self.info: dict = {}

    def on_llm_end(self, response, **kwargs) -> None:
        self.info = response.generations[0][0].generation_info or {}


def main() -> None:
    print("Opening the store (embedded Postgres) and loading the default model ...", flush=True)
    service = LLoCOService.from_defaults()
    report = service.ingest([str(DATA)], group=GROUP, progress=True)
    print(report.summary(), "\n")

    retriever = LLoCORetriever(service=service, group=GROUP, k=3)
    llm = LLoCOLLM(service=service, max_new_tokens=48)
    chain = create_lloco_chain(retriever, llm)

    for question in QUESTIONS:
        usage = Usage()
        context = []
        print(f"Q: {question}\nA: ", end="", flush=True)
        for part in chain.stream({"input": question}, config={"callbacks": [usage]}):
            context = part.get("context", context)
            print(part.get("answer", ""), end="", flush=True)
        print()
        for doc in context:
            m = doc.metadata
            snippet = " ".join(doc.page_content.split())[:70]
            print(
                f"   source {m['doc_id']}#{m['ordinal']} (chunk {m['chunk_id']}, score {m['score']:.3f}): "
                f"{snippet}..."
            )
        raw = sum(d.metadata["n_tokens"] for d in context)
        vectors = usage.info.get("context_vectors", 0)
        if vectors:
            adapter = context[0].metadata["adapter_id"]
            print(
                f"   context: {vectors} cheat-sheet vectors instead of {raw} text tokens "
                f"({raw / vectors:.1f}x fewer); "
                f"{f'adapter {adapter}' if adapter is not None else 'no adapter (base decoder)'}; "
                f"prefill {usage.info['prefill_s']:.2f}s\n"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
