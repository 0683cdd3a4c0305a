"""Rank ways of reading cheat sheets on held-out *train* articles (never the eval sets): greedy token F1 with the
right sheets and with another paragraph's (the control), for several sheet layouts and adapters.

Held-out questions: squad_train split by article (``--val-articles`` whole articles, ``--seed``), then a random
sample of ``--n`` (``--sample-seed``). Layouts (``LAYOUT:ADAPTER``, comma-separated):

- ``stored``: the shipped encoder's sheets as stored (literal tokens chosen offline);
- ``focus``: the runtime's question-aware sheets (:meth:`ContextEncoder.focus_sheet`, what ``lloco`` serves);
- ``focusV`` (e.g. ``focus4``, ``focus1``): V pooled vectors per segment and the rest of its positions as
  question-aware literal tokens, ranked with the *learned* selector's scores as the prior (the variant the
  shipped rules prior was checked against);
- ``lit``: literal tokens only (no vectors), question-aware, the same number of positions;
- ``text`` and ``none``: the baselines (the teacher reading the paragraph; the plain decoder, no context).

Adapters: ``reader`` (the encoder's), ``teacher`` (the shipped text adapter), ``base``. Results accumulate in
the JSON file (a mode already there is skipped), one line per mode is printed::

    python scripts/reading_probe.py --n 200 --modes stored:reader,focus:reader,text,none --json probe.json
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch

from lloco_runtime import ContextEncoder, load_model
from lloco_runtime.adapters import AdapterArtifact, lora_config_from_dict
from lloco_runtime.encoder import _mean_groups
from lloco_runtime.evaluation import metrics as M
from lloco_runtime.focus import focus_positions
from lloco_runtime.generation import GenerationConfig, Generator
from lloco_runtime.prompt import PromptTemplate
from lloco_runtime.runtime import shipped_encoder_dir, shipped_teacher_adapter
from lloco_runtime.training.reading import control_partner, prepare_items
from lloco_runtime.training.squad import read_reading_items, split_by_article


def learned_focus(enc: ContextEncoder, ids, scores, question: str, budget: int) -> list[int]:
    """Question-aware positions (:func:`lloco_runtime.focus.focus_positions`) with the learned selector's mean
    word scores as the prior instead of the rules' salience."""
    pieces, words = enc._words(ids)
    texts = ["".join(pieces[p] for p in w) for w in words]
    prior = [sum(scores[p] for p in w) / len(w) for w in words]
    return focus_positions(words, texts, question, prior, budget, len(ids))


def interleave(enc: ContextEncoder, ids, keep, vectors: int) -> torch.Tensor:
    """``vectors`` pooled vectors (the encoder's connector), each followed by its group's kept tokens."""
    t = enc.host.model.get_input_embeddings()(torch.as_tensor(list(ids), dtype=torch.long))
    if vectors == 0:
        return t[keep]
    n = len(ids)
    groups = min(vectors, n)
    pooled = enc.connector(_mean_groups(t, groups))
    bounds = [(g * n) // groups for g in range(groups + 1)]
    rows, k = [], 0
    for g in range(groups):
        rows.append(pooled[g : g + 1])
        start = k
        while k < len(keep) and keep[k] < bounds[g + 1]:
            k += 1
        if k > start:
            rows.append(t[keep[start:k]].to(pooled.dtype))
    return torch.cat(rows, 0)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=200, help="held-out questions (default 200)")
    p.add_argument("--modes", required=True, help="comma-separated LAYOUT:ADAPTER, text, none")
    p.add_argument("--json", type=Path, required=True, help="results file (accumulates)")
    p.add_argument("--corpus", default="../shared/corpus/squad_train")
    p.add_argument("--val-articles", type=int, default=8)
    p.add_argument("--seed", type=int, default=1, help="article split seed (as --reading-val uses)")
    p.add_argument("--sample-seed", type=int, default=7)
    p.add_argument("--reader", type=Path, default=None, help="reader adapter file (default: the encoder's)")
    p.add_argument("--encoder", type=Path, default=None, help="encoder folder (default: the shipped one)")
    args = p.parse_args()
    torch.manual_seed(0)
    host = load_model()
    enc = ContextEncoder.load(args.encoder or shipped_encoder_dir(), host)
    reader = args.reader.read_bytes() if args.reader else enc.reader
    from peft import set_peft_model_state_dict

    for name, data in (("teacher", shipped_teacher_adapter().read_bytes()), ("reader", reader)):
        art = AdapterArtifact.from_bytes(data)
        host.add_adapter(name, lora_config_from_dict(art.lora_config))
        set_peft_model_state_dict(host.model, art.tensors, adapter_name=name)
    host.resync()
    _, held = split_by_article(
        read_reading_items(args.corpus), val_articles=args.val_articles, seed=args.seed
    )
    held = random.Random(args.sample_seed).sample(held, min(args.n, len(held)))
    prep = prepare_items(enc, held, max_context_tokens=384, max_answer_tokens=32)
    gen, cfg, template = Generator(host), GenerationConfig(max_new_tokens=24), PromptTemplate()
    results = json.loads(args.json.read_text()) if args.json.exists() else {}
    scores: dict[tuple[int, ...], list[float]] = {}

    def selector(s):
        if s not in scores:
            scores[s] = enc.literal_scores([s])[0].tolist()
        return scores[s]

    def sheet(layout: str, it, question: str) -> torch.Tensor:
        if layout == "stored":
            return torch.cat(enc.compress_chunks(list(it.segments)), 0)
        if layout == "focus":
            return torch.cat([enc.focus_sheet(s, question) for s in it.segments], 0)
        parts = []
        for s in it.segments:
            positions = len(s) * enc.config.positions // enc.config.segment_length
            v = 0 if layout == "lit" else min(int(layout.removeprefix("focus")), len(s))
            keep = learned_focus(enc, s, selector(s), question, positions - v)
            parts.append(interleave(enc, s, keep, v))
        return torch.cat(parts, 0)

    for mode in args.modes.split(","):
        if mode in results:
            continue
        t0 = time.time()
        layout, _, adapter = mode.partition(":")
        adapter = None if adapter in ("", "base") else adapter
        rows = []
        with torch.inference_mode():
            for i, it in enumerate(prep):
                q = it.item.question

                def ans(ctx, ad, q=q):
                    return gen.generate(template.build(host.tokenizer, q, ctx), cfg, adapter=ad).text.strip()

                def f1(pred, it=it):
                    return M.max_over_golds(M.token_f1, pred, list(it.item.answers))

                if layout == "text":
                    rows.append({"right": f1(ans(it.item.context, "teacher"))})
                elif layout == "none":
                    rows.append({"right": f1(ans(None, None))})
                else:
                    r = sheet(layout, it, q).to(host.dtype)
                    w = sheet(layout, control_partner(prep, i), q).to(host.dtype)
                    rows.append(
                        {"right": f1(ans([r], adapter)), "wrong": f1(ans([w], adapter)), "pos": r.shape[0]}
                        | {"tok": len(it.text)}
                    )
        right = 100 * sum(x["right"] for x in rows) / len(rows)
        wrong = 100 * sum(x.get("wrong", 0) for x in rows) / len(rows)
        results[mode] = {"right": right, "wrong": wrong, "rows": rows, "s": time.time() - t0}
        if "pos" in rows[0]:
            results[mode]["ratio"] = sum(x["tok"] for x in rows) / sum(x["pos"] for x in rows)
        args.json.write_text(json.dumps(results))
        print(
            f"{mode:20s} right {right:5.1f} wrong {wrong:5.1f} ratio {results[mode].get('ratio', 0):.2f} "
            f"({time.time() - t0:.0f} s)",
            flush=True,
        )
    text, none = results.get("text", {}).get("right"), results.get("none", {}).get("right")
    if text is not None and none is not None and text > none:
        for mode, r in results.items():
            if "ratio" in r:
                print(f"U {mode:20s} {(r['right'] - r['wrong']) / (text - none):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
