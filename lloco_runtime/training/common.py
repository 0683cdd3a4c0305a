"""Pieces shared by the training loops: checkpoints of named tensors + optimizer state, loss plots."""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def save_optimizer(opt: torch.optim.Optimizer, names: list[str]) -> dict[str, torch.Tensor]:
    """AdamW state as named tensors (safetensors-friendly, no pickle)."""
    out: dict[str, torch.Tensor] = {}
    params = [p for g in opt.param_groups for p in g["params"]]
    for name, p in zip(names, params, strict=True):
        st = opt.state.get(p)
        if not st:
            continue
        for k, v in st.items():
            t = v if isinstance(v, torch.Tensor) else torch.tensor(float(v))
            out[f"{name}::{k}"] = t.detach().to("cpu").contiguous()
    return out


def load_optimizer(opt: torch.optim.Optimizer, names: list[str], tensors: dict[str, torch.Tensor]) -> None:
    params = [p for g in opt.param_groups for p in g["params"]]
    for name, p in zip(names, params, strict=True):
        st = {k.split("::", 1)[1]: v for k, v in tensors.items() if k.split("::", 1)[0] == name}
        if st:
            opt.state[p] = {k: (v.to(p.device) if v.ndim else v) for k, v in st.items()}


def write_checkpoint(
    directory: Path, *, params: dict[str, torch.Tensor], opt_state: dict[str, torch.Tensor], meta: dict
) -> None:
    """Write atomically: files go to ``.tmp`` names, then are renamed over the previous checkpoint."""
    directory.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.detach().to("cpu").contiguous() for k, v in params.items()},
        str(directory / "params.safetensors.tmp"),
    )
    save_file(opt_state, str(directory / "optimizer.safetensors.tmp")) if opt_state else None
    (directory / "state.json.tmp").write_text(json.dumps(meta, indent=1))
    for name in ("params.safetensors", "optimizer.safetensors", "state.json"):
        tmp = directory / f"{name}.tmp"
        if tmp.exists():
            os.replace(tmp, directory / name)


def read_checkpoint(directory: Path) -> tuple[dict, dict, dict] | None:
    """(params, optimizer tensors, meta) of the last complete checkpoint, or None."""
    if not (directory / "state.json").exists() or not (directory / "params.safetensors").exists():
        return None
    meta = json.loads((directory / "state.json").read_text())
    params = load_file(str(directory / "params.safetensors"))
    opt = (
        load_file(str(directory / "optimizer.safetensors"))
        if (directory / "optimizer.safetensors").exists()
        else {}
    )
    return params, opt, meta


def fit_steps(
    step: int,
    *,
    first: int,
    planned: int,
    max_steps: int,
    max_minutes: float | None,
    seconds_done: float,
    elapsed: float,
    since_last: float,
) -> int:
    """The step count a time budget allows: after 10 steps of this run (``step - first``), the measured pace
    (``elapsed`` seconds since ``first``, evaluations included) is projected over the minutes left
    (``seconds_done`` recorded plus ``since_last`` not yet recorded); at most ``max_steps``, at least one more.
    Without a budget, or before the pace is known, ``planned`` is kept."""
    if max_minutes is None or step - first < 10:
        return planned
    pace = elapsed / (step - first)
    left = max_minutes * 60 - (seconds_done + since_last)
    return min(max_steps, max(step + 1, step + int(left / pace)))


def lr_at(step: int, *, base: float, warmup: int, total: int) -> float:
    """Linear warm-up then cosine decay to 10% of ``base``."""
    if step < warmup:
        return base * (step + 1) / warmup
    frac = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


def plot_curves(
    path: Path, train: list[tuple[int, float]], val: dict[str, list[tuple[int, float]]], title: str
) -> None:
    """Loss-curve PNG: smoothed training loss and validation curves (skipped, with a log line, without
    matplotlib: training never fails for a missing plot)."""
    from ..plotting import INSTALL_HINT, available, pyplot

    if not available():
        logging.getLogger(__name__).info(
            "no loss plot %s: matplotlib is not installed (%s)", path, INSTALL_HINT
        )
        return
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        xs, ys = zip(*train, strict=True)
        ax.plot(xs, ys, alpha=0.25, color="C0")
        k = max(1, len(ys) // 50)
        sm = [sum(ys[max(0, i - k) : i + 1]) / len(ys[max(0, i - k) : i + 1]) for i in range(len(ys))]
        ax.plot(xs, sm, color="C0", label="train (smoothed)")
    for i, (name, pts) in enumerate(val.items()):
        if pts:
            xs, ys = zip(*pts, strict=True)
            ax.plot(xs, ys, marker="o", ms=3, color=f"C{i + 1}", label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def token_kl(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) per token position, averaged over positions: logits ``[..., vocab]``."""
    import torch.nn.functional as F

    v = student.shape[-1]
    return F.kl_div(
        F.log_softmax(student, -1).reshape(-1, v),
        F.log_softmax(teacher, -1).reshape(-1, v),
        log_target=True,
        reduction="batchmean",
    )
