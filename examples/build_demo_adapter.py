"""Build the demo group's LoRA adapter that `make demo` ships: examples/demo/adapter.safetensors.

Run: `.venv/bin/python examples/build_demo_adapter.py` (about 15-25 min on a 2-core CPU; resumable).

It ingests examples/data into the group ``demo`` of a scratch store, fine-tunes one LoRA with
``lloco finetune``'s trainer (starting from the default encoder's reader adapter, with KL to the shipped
text teacher) on examples/demo/qa_train.jsonl (questions written for these documents; the
demo's own questions in examples/demo/questions.jsonl are held out), and writes the adapter artifact with
the base-model and encoder fingerprints it was trained against in its header. `make demo` registers it
into the user's store when those fingerprints match the runtime (else it fine-tunes a short one itself).
Rebuild it whenever the default encoder, the decoder or the documents change.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: much faster on busy machines

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
DEMO = HERE / "demo"
QA_TRAIN = DEMO / "qa_train.jsonl"
ADAPTER = DEMO / "adapter.safetensors"
ADAPTER_INFO = DEMO / "adapter.json"
GROUP = "demo"
TOP_K = 3  # chunks per question, in training and in the demo
STEPS = 60  # the adapter starts from the encoder's reader, which already reads cheat sheets


def finetune_config(steps: int = STEPS):
    """The adapter's training settings (the demo's fallback uses the same ones with fewer steps)."""
    from lloco_runtime import FinetuneConfig

    return FinetuneConfig(steps=steps, batch_size=4, lr=5e-4, top_k=TOP_K, eval_every=50, seed=0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=STEPS)
    ap.add_argument(
        "--work",
        default=None,
        help="scratch LLOCO_HOME (default: a new temporary folder); reuse it to resume an interrupted run",
    )
    args = ap.parse_args(argv)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="lloco-demo-adapter-"))
    os.environ["LLOCO_HOME"] = str(work)
    os.environ.pop("LLOCO_DATABASE_URL", None)

    from lloco_runtime import LLoCOService, finetune_group

    service = LLoCOService.from_defaults()
    print(service.ingest([str(DATA)], group=GROUP, progress=True).summary())
    cfg = finetune_config(args.steps)
    t0 = time.perf_counter()
    history = finetune_group(service, GROUP, qa_path=str(QA_TRAIN), cfg=cfg, out_dir=work / "finetune")
    wall = time.perf_counter() - t0
    data = service.store.adapter_weights(history["adapter_id"])
    ADAPTER.write_bytes(data)
    from lloco_runtime import AdapterArtifact

    lora = AdapterArtifact.from_bytes(data).lora_config
    v0, v1 = history["val"][0], history["val"][-1]
    info = {
        "what": "LoRA adapter for the demo group (examples/data), built by examples/build_demo_adapter.py",
        "base_fingerprint": service.lloco.host.fingerprint,
        "encoder_fingerprint": service.lloco.encoder.fingerprint,
        "device": str(service.lloco.host.device),
        "dtype": str(service.lloco.host.dtype),
        "config": history["config"],
        "init": history["init"],
        "teacher": None if history["teacher"] is None else Path(history["teacher"]).parent.name,
        "lora": {k: lora[k] for k in ("r", "lora_alpha", "target_modules") if k in lora},
        "train_pairs": history["n_train"],
        "val_pairs": history["n_val"],
        "val_answer_loss_without_adapter": round(v0["no_adapter"], 4),
        "val_answer_loss_with_adapter": round(v1["adapter"], 4),
        "training_seconds": round(history["seconds"], 1),
        "wall_seconds": round(wall, 1),
        "bytes": len(data),
    }
    ADAPTER_INFO.write_text(json.dumps(info, indent=1) + "\n")
    print(
        f"wrote {ADAPTER} ({len(data):,} bytes) and {ADAPTER_INFO}: validation answer loss "
        f"{v0['no_adapter']:.3f} without -> {v1['adapter']:.3f} with the adapter, {wall / 60:.1f} min"
    )
    service.store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
