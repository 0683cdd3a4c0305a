"""Helpers shared by several test folders (importable by name: ``tests/`` is on ``sys.path`` through its
``conftest.py``). Not a ``conftest``: ``from conftest import ...`` resolves to whichever folder's was imported last.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np


class HashingEmbedder:
    """Bag of words hashed into 64 dims: deterministic, instant, and good enough to rank chunks.

    Words are encoded with ``errors="replace"``, so texts with lone surrogates still embed (the reliability
    suite feeds them to the code under test); other texts hash exactly as with a plain ``encode()``.
    """

    name = "test/hashing-64"
    dim = 64

    def embed(self, texts):
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, t in enumerate(texts):
            out[i, 0] = 1.0  # never a zero vector
            for w in t.lower().split():
                out[i, 1 + zlib.crc32(w.strip(".,?!").encode("utf-8", "replace")) % (self.dim - 1)] += 1.0
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def make_adapter_bytes(
    host,
    encoder_fingerprint: str | None,
    *,
    seed: int,
    r: int = 4,
    target_modules: Sequence[str] = ("q_proj", "v_proj", "o_proj"),
) -> bytes:
    """A random LoRA (non-zero lora_B, so it changes outputs) as lloco adapter bytes; the host is left clean."""
    import torch
    from peft import LoraConfig

    from lloco_runtime import AdapterArtifact

    name = f"tmp_adapter_{seed}"
    host.add_adapter(name, LoraConfig(r=r, lora_alpha=2 * r, target_modules=list(target_modules)))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for pname, p in host.model.named_parameters():
            if "lora_B" in pname and name in pname:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    art = AdapterArtifact.from_model(
        host.model, name, base_fingerprint=host.fingerprint, encoder_fingerprint=encoder_fingerprint
    )
    host.delete_adapter(name)
    return art.to_bytes()
