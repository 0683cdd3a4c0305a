"""Serving sections of ``lloco bench``: end-to-end answer latency and memory.

End to end = what one request costs: retrieve (embed the question, search, fetch chunks and cheat sheets)
+ pin the group's adapter + prefill + 32 generated tokens. The baselines answer the same question with the
whole document as text (full context) and with the retrieved chunks' text (RAG-text). Decoding is forced to
exactly ``new_tokens`` tokens (EOS ignored) so every mode pays for the same number of tokens.
"""

from __future__ import annotations

import resource
import statistics
import sys
import time
from typing import Any

import torch
from sqlalchemy import func, select

from .bench_model import interleaved
from .generation import _output_cache
from .prompt import Prompt
from .runtime import LLoCO


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(rss / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


def generate_fixed(lloco: LLoCO, prompt: Prompt, n_tokens: int, adapter: str | None = None) -> int:
    """Prefill + ``n_tokens - 1`` cached greedy decode steps (EOS ignored), as :class:`Generator` runs them."""
    gen = lloco.generator
    embeds, _, _ = gen.embed(prompt)
    host = lloco.host
    with torch.inference_mode():
        with host.using(adapter) as model:
            out = model(inputs_embeds=embeds, use_cache=True, logits_to_keep=1)
        nxt = int(out.logits[0, -1].argmax())
        for _ in range(n_tokens - 1):
            with host.using(adapter) as model:
                out = model(
                    input_ids=torch.tensor([[nxt]], device=host.device),
                    use_cache=True,
                    logits_to_keep=1,
                    **{gen._cache_kw: _output_cache(out)},
                )
            nxt = int(out.logits[0, -1].argmax())
    return int(embeds.shape[1])


def bytes_per_chunk(store, group: str, collection: str) -> dict[str, Any]:
    """Stored bytes per chunk of a group: cheat sheet row + chunk row (text, retrieval key, tsvector, metadata).

    ``pg_column_size`` is the on-disk size of each value (after TOAST compression); page and index overhead
    are not included.
    """
    from .store.catalog import group_row

    t = store.tables
    c, cs = t.chunks, t.cheat_sheets
    row = (
        func.pg_column_size(c.c.text)
        + func.pg_column_size(c.c.embedding)
        + func.pg_column_size(c.c.tsv)
        + func.pg_column_size(c.c.meta)
        + 40
    )  # + fixed-width columns and tuple header
    with store.engine.begin() as conn:
        gid = int(group_row(conn, t, group, collection).id)
        r = conn.execute(
            select(
                func.count(),
                func.avg(row),
                func.avg(func.pg_column_size(cs.c.data) + 60),
                func.avg(cs.c.n_bytes),
                func.avg(func.octet_length(c.c.text)),
                func.avg(c.c.n_tokens),
            )
            .select_from(c.join(cs, cs.c.chunk_id == c.c.id))
            .where(c.c.group_id == gid)
        ).one()
    n, chunk_row, sheet_row, sheet_payload, text_bytes, tokens = r
    if not n:
        return {"chunks": 0}
    return {
        "bytes_per_chunk": round(float(chunk_row) + float(sheet_row)),
        "chunks": int(n),
        "chunk_row_bytes": round(float(chunk_row)),
        "cheat_sheet_row_bytes": round(float(sheet_row)),
        "cheat_sheet_payload_bytes": round(float(sheet_payload)),
        "text_bytes": round(float(text_bytes), 1),
        "tokens_per_chunk": round(float(tokens), 1),
    }


def bench_end_to_end(
    lloco: LLoCO,
    store,
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
    from .bench_model import random_adapter
    from .service import LLoCOService
    from .store.inputs import DocumentInput

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

    def lloco_request() -> None:
        res = service.retrieve(question, group=group, collection=collection, top_k=top_k, mode="hybrid")
        sheets = service._context(res)
        with lloco.adapters.acquire(str(res.adapter_id)) as name:
            sizes["lloco"] = generate_fixed(lloco, lloco.prompt(question, sheets), new_tokens, name)

    def rag_request() -> None:
        res = service.retrieve(
            question, group=group, collection=collection, top_k=top_k, mode="hybrid", load_cheat_sheets=False
        )
        text = "\n\n".join(c.text for c in sorted(res.chunks, key=lambda c: (c.doc_id, c.ordinal)))
        sizes["rag"] = generate_fixed(lloco, lloco.prompt(question, text), new_tokens)

    def full_request() -> None:
        sizes["full"] = generate_fixed(lloco, lloco.prompt(question, passage), new_tokens)

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
            "retrieval": "hybrid",
            "document_tokens": len(lloco.host.tokenizer(passage, add_special_tokens=False)["input_ids"]),
            "adapter_id": info.id,
            "reps": reps,
        },
        "ingest": with_compression,
        "serving_peak_rss_mb": serving_rss,
        "storage": bytes_per_chunk(store, group, collection),
    }


def _fresh_ingest(
    store, lloco: LLoCO, docs, group: str, collection: str, *, compress: bool, batch_size: int
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


def _tokens(lloco: LLoCO, docs) -> int:
    tok = lloco.host.tokenizer
    return sum(len(tok(d.text, add_special_tokens=False)["input_ids"]) for d in docs)
