"""Serving sections of ``lloco bench``: end-to-end answer latency and memory.

End to end = what one request costs: retrieve (embed the question, search, fetch the chunks), fetch their
cheat sheets in reading order, pin the group's adapter, prefill + 32 generated tokens. The baselines answer
the same question with the whole document as text (full context) and with the retrieved chunks' text
(RAG-text). Decoding is forced to exactly ``new_tokens`` tokens (``GenerationConfig.ignore_eos``) so every
mode pays for the same number of tokens.
"""

from __future__ import annotations

import resource
import statistics
import sys
import time
from typing import Any

from ..generation import GenerationConfig
from ..request import reading_order
from ..runtime import LLoCO
from ..store import DEFAULT_MODE, CheatSheetStore, DocumentInput
from .model import interleaved


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(rss / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


def fixed_length(n_tokens: int) -> GenerationConfig:
    """Greedy decoding of exactly ``n_tokens`` tokens (EOS ignored)."""
    return GenerationConfig(max_new_tokens=n_tokens, ignore_eos=True)


def bytes_per_chunk(store: CheatSheetStore, group: str, collection: str) -> dict[str, Any]:
    """Stored bytes per chunk of a group: cheat sheet row + chunk row (text, retrieval key, tsvector, metadata).

    From :meth:`CheatSheetStore.storage_stats`: the on-disk size of each value (after TOAST compression);
    page and index overhead are not included.
    """
    s = store.storage_stats(group, collection)
    if not s.chunks:
        return {"chunks": 0}
    return {
        "bytes_per_chunk": round(s.bytes_per_chunk),
        "chunks": s.chunks,
        "chunk_row_bytes": round(s.chunk_row_bytes),
        "cheat_sheet_row_bytes": round(s.cheat_sheet_row_bytes),
        "cheat_sheet_payload_bytes": round(s.cheat_sheet_payload_bytes),
        "text_bytes": round(s.text_bytes, 1),
        "tokens_per_chunk": round(s.tokens_per_chunk, 1),
    }


def bench_end_to_end(
    lloco: LLoCO,
    store: CheatSheetStore,
    passage: str,
    *,
    question: str,
    reps: int = 3,
    top_k: int = 4,
    new_tokens: int = 32,
    group: str = "e2e",
    collection: str = "bench",
    batch_size: int = 8,
) -> dict[str, Any]:
    """Ingest ``passage`` as one document (compressed), then time LLoCO vs. full-context vs. RAG-text answers.

    Also returns the ingest rate of this real pipeline (split, embed, compress, write), the peak RSS once
    the first LLoCO request has been served (before any baseline runs) and the stored bytes per chunk.
    """
    from ..service import LLoCOService
    from .model import random_adapter

    with_compression = _fresh_ingest(
        store,
        lloco,
        [DocumentInput("e2e-doc", passage, {})],
        group,
        collection,
        compress=True,
        batch_size=batch_size,
    )
    art = random_adapter(lloco, seed=7)
    info = store.register_adapter(
        group,
        art.to_bytes(),
        base_fingerprint=art.base_fingerprint,
        encoder_fingerprint=lloco.encoder.fingerprint,
        collection=collection,
        activate=True,
    )
    service = LLoCOService(lloco, store)
    cfg = fixed_length(new_tokens)

    def retrieve():
        return service.retrieve(
            question,
            group=group,
            collection=collection,
            top_k=top_k,
            mode=DEFAULT_MODE,
            load_cheat_sheets=False,
        )

    def lloco_request() -> None:
        res = retrieve()
        ordered = reading_order(res.chunks)
        sheets = service.cheat_sheets([c.chunk_id for c in ordered])
        adapter = None if res.adapter_id is None else str(res.adapter_id)
        sizes["lloco"] = lloco.answer(question, sheets, adapter_id=adapter, config=cfg).prompt_tokens

    def rag_request() -> None:
        res = retrieve()
        text = "\n\n".join(c.text for c in reading_order(res.chunks))
        sizes["rag"] = lloco.answer(question, text, use_reader=False, config=cfg).prompt_tokens

    def full_request() -> None:
        sizes["full"] = lloco.answer(question, passage, use_reader=False, config=cfg).prompt_tokens

    sizes: dict[str, int] = {}
    lloco_request()  # warm-up; loads the adapter from the store into the LRU
    serving_rss = peak_rss_mb()
    times = interleaved({"lloco": lloco_request, "rag": rag_request, "full": full_request}, reps)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "end_to_end": {
            "lloco_s": round(med["lloco"], 4),
            "rag_text_s": round(med["rag"], 4),
            "full_context_s": round(med["full"], 4),
            "speedup_vs_full": round(med["full"] / med["lloco"], 2),
            "speedup_vs_rag": round(med["rag"] / med["lloco"], 3),
            "prompt_positions": sizes,
            "new_tokens": new_tokens,
            "top_k": top_k,
            "retrieval": str(DEFAULT_MODE),
            "document_tokens": len(lloco.host.tokenizer(passage, add_special_tokens=False)["input_ids"]),
            "adapter_id": info.id,
            "reps": reps,
        },
        "ingest": with_compression,
        "serving_peak_rss_mb": serving_rss,
        "storage": bytes_per_chunk(store, group, collection),
    }


def _fresh_ingest(
    store: CheatSheetStore,
    lloco: LLoCO,
    docs: list[DocumentInput],
    group: str,
    collection: str,
    *,
    compress: bool,
    batch_size: int,
) -> dict[str, Any]:
    try:
        store.delete_group(group, collection)
    except LookupError:
        pass
    store.embedder.embed(["warm-up"])  # load the retrieval model outside the timed run
    t0 = time.perf_counter()
    report = store.ingest(
        docs,
        group=group,
        collection=collection,
        encoder=lloco.encoder,
        compress=compress,
        batch_size=batch_size,
    )
    seconds = time.perf_counter() - t0
    return {
        "chunks": report.chunks_written,
        "seconds": round(seconds, 3),
        "chunks_per_s": round(report.chunks_written / seconds, 2),
        "tokens_per_s": round(_tokens(lloco, docs) / seconds, 1),
        "compress": compress,
    }


def _tokens(lloco: LLoCO, docs: list[DocumentInput]) -> int:
    tok = lloco.host.tokenizer
    return sum(len(tok(d.text, add_special_tokens=False)["input_ids"]) for d in docs)
