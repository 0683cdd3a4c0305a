"""The whole LLoCO loop on the embedded defaults: ingest -> retrieve cheat sheets -> answer, next to the
full-text baseline. Run: `.venv/bin/python examples/quickstart.py` (`make demo` is the longer tour).

Uses the bundled SmolLM2-135M on CPU and the embedded Postgres under $LLOCO_HOME; nothing is downloaded.
Answer quality needs a trained encoder and a group adapter (`lloco finetune`); this shows the data flow,
the context-token saving and the prefill speedup.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: much faster on busy machines

from lloco_runtime import LLoCOService

DATA = Path(__file__).resolve().parent / "data"
GROUP = "demo"
QUESTIONS = ["Who was the keeper of the lighthouse?", "What year was the lighthouse built?"]


def main() -> None:
    print(
        "Loading the default decoder (SmolLM2-135M-Instruct), encoder and embedded Postgres ...", flush=True
    )
    service = LLoCOService.from_defaults()
    lloco = service.lloco
    print(f"  store: {service.store.url} (schema {service.store.schema})")
    report = service.ingest([str(DATA)], group=GROUP, progress=True)
    print(f"  {report.summary()}\n")
    full_text = "\n\n".join(p.read_text() for p in sorted(DATA.glob("*.txt")))

    for q in QUESTIONS:
        t0 = time.perf_counter()
        ans = service.answer(q, group=GROUP, top_k=4, max_new_tokens=32)
        total = time.perf_counter() - t0
        full = lloco.answer(q, full_text, max_new_tokens=32)
        print(f"Q: {q}")
        print(f"  LLoCO     : {ans.answer}")
        print(
            f"              {ans.context_tokens} cheat-sheet vectors instead of {ans.raw_context_tokens} text "
            f"tokens; prefill {ans.prefill_s:.2f}s, total {total:.2f}s incl. retrieval; adapter: "
            f"{ans.adapter_id if ans.adapter_id is not None else 'none'}"
        )
        for s in ans.sources:
            print(
                f"              source {s.doc_id} #{s.ordinal} (score {s.score:.3f}): "
                f"{' '.join(s.text.split())[:60]}..."
            )
        print(f"  full text : {full.text.strip()}")
        print(
            f"              {full.prompt_tokens} prompt tokens; prefill {full.prefill_s:.2f}s "
            f"-> LLoCO prefill is {full.prefill_s / max(ans.prefill_s, 1e-9):.1f}x faster\n"
        )
    service.store.close()


if __name__ == "__main__":
    main()
