"""Compress a long text into cheat sheets and answer questions from them, next to the full-text baseline.

Run: `make demo` (or `.venv/bin/python examples/quickstart.py`). Uses the bundled SmolLM2-135M on CPU.
"""

from __future__ import annotations

import time
from pathlib import Path

from lloco_runtime import LLoCO

HERE = Path(__file__).resolve().parent
TEXT = (HERE / "data" / "lighthouse.txt").read_text()
QUESTIONS = ["Who was the keeper of the lighthouse?", "What year was the lighthouse built?"]


def main() -> None:
    print("Loading the default decoder (SmolLM2-135M-Instruct) and encoder ...", flush=True)
    lloco = LLoCO.from_pretrained()
    t0 = time.perf_counter()
    sheets = lloco.compress(TEXT, progress=True)
    print(f"Compressed {sheets.source_tokens} tokens into {sheets.n_vectors} vectors "
          f"({sheets.source_tokens / sheets.n_vectors:.0f}x) in {time.perf_counter() - t0:.1f}s\n")
    for q in QUESTIONS:
        full = lloco.answer(q, TEXT, max_new_tokens=32)
        cheat = lloco.answer(q, sheets, max_new_tokens=32)
        print(f"Q: {q}")
        print(f"  full text   ({full.prompt_tokens:5d} prompt positions, prefill {full.prefill_s:.2f}s): "
              f"{full.text.strip()}")
        print(f"  cheat sheet ({cheat.prompt_tokens:5d} prompt positions, prefill {cheat.prefill_s:.2f}s): "
              f"{cheat.text.strip()}")
        print(f"  prefill speedup: {full.prefill_s / max(cheat.prefill_s, 1e-9):.1f}x\n")


if __name__ == "__main__":
    main()
