"""Plot the held-out curves of the GPU encoder runs in this folder: python docs/encoder-training/plot.py"""

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).resolve().parent
RUNS = {  # run -> (label, steps done before it started: stage 2 continues c1)
    "c1-ship-cr": ("c1: shipped CPU encoder + cont+recon", 0),
    "c5-ship-cr-stage2": ("c5: c1 continued (shipped)", 1026),
    "c2-ship-crq": ("c2: shipped CPU encoder + cont+recon+QA", 0),
    "c3-mlp-crq": ("c3: fresh, LoRA on attention+MLP, cont+recon+QA", 0),
    "c4-mlp-crqd": ("c4: c3 + distillation", 0),
}
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
for name, (label, offset) in RUNS.items():
    h = json.loads((HERE / f"{name}.history.json").read_text())
    batch = h["config"]["batch_size"]
    x = [(r["step"] + offset) * batch / 1000 for r in h["val"]]
    line, = ax1.plot(x, [r["cheat_sheet"] for r in h["val"]], label=label)
    ax1.plot(x, [r["wrong_cheat_sheet"] for r in h["val"]], ls=":", color=line.get_color())
    ax2.plot(x, [r["wrong_cheat_sheet"] - r["cheat_sheet"] for r in h["val"]], label=label, color=line.get_color())
h = json.loads((HERE / "c1-ship-cr.history.json").read_text())
ax1.axhline(h["val"][0]["no_context"], color="grey", ls="--", label="no context")
ax1.axhline(h["val"][0]["text_context"], color="black", ls="--", label="previous segment as text")
ax1.set(xlabel="thousand training pairs", ylabel="held-out loss on the next 128 tokens (nats/token)",
        title="right sheet (solid) vs a wrong sheet (dotted)")
ax2.set(xlabel="thousand training pairs", ylabel="wrong-sheet minus right-sheet loss (nats/token)",
        title="content carried by the cheat sheet")
for ax in (ax1, ax2):
    ax.grid(alpha=0.3)
ax1.legend(fontsize=7)
fig.tight_layout()
fig.savefig(HERE / "curves.png", dpi=110)
