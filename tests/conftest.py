"""Shared fixtures for every lloco test.

Environment (set at import, before any lloco module reads it):

- ``LLOCO_CACHE_DIR`` -> ``<repo>/.lloco-test/cache`` unless already set. It persists across runs (and is
  gitignored), so the default SmolLM2 GGUF is dequantised once per machine (~30 s), not once per run.
- ``LLOCO_HOME`` -> a fresh temporary directory per test session (embedded Postgres, artifacts).
- Hub access off (``HF_HUB_OFFLINE``, ``TRANSFORMERS_OFFLINE``): nothing is ever downloaded.
- Two torch threads (CI machines have 2 cores) with ``OMP_WAIT_POLICY=PASSIVE``: OpenMP's default busy-wait
  makes every op ~10x slower when other processes compete for the cores (measured: SmolLM2 prefill 12 s
  instead of 0.8 s on a shared 2-core machine); passive waiting costs nothing when the machine is idle.

Database: ``pg_url``, ONE embedded Postgres per session (own short-lived data dir), shared by the store,
LlamaIndex and LangChain suites; each test or module works in a schema of its own.

Models:

- ``default_host``: the real SmolLM2-135M-Instruct (``load_model()``), for behaviour that depends on it.
- ``tiny_host``: a tiny random Llama with the default model's tokenizer, saved as a Hugging Face folder and
  loaded back with ``load_model(folder)``. Shared by the session: tests must not inject adapters into it
  (use ``make_tiny_host`` for a private copy).
- ``tiny_lloco``: an ``LLoCO`` facade on a private tiny host with a small encoder (32 tokens -> 4 vectors).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("LLOCO_CACHE_DIR", str(REPO / ".lloco-test" / "cache"))
os.environ["LLOCO_HOME"] = tempfile.mkdtemp(prefix="lloco-test-home-")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read when torch loads its OpenMP runtime

import pytest
import torch

torch.set_num_threads(2)

# Tiny random decoder: small enough that a forward pass takes milliseconds.
# initializer_range 0.2 (not 0.02): with tied embeddings a near-identity random model keeps repeating its
# last token; larger weights make greedy output vary with the context, as the generation tests need.
TINY_CONFIG = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 128,
    "max_position_embeddings": 4096,
    "tie_word_embeddings": True,
    "initializer_range": 0.2,
}


@pytest.fixture(scope="session")
def pg_url():
    """URL of the session's embedded Postgres (its own data dir, removed at the end of the session)."""
    from lloco_runtime.store.server import start_embedded, stop_embedded

    root = Path(tempfile.mkdtemp(prefix="lloco-pg-"))  # short path: the Unix socket lives in it
    yield start_embedded(root / "data")
    stop_embedded(root / "data")
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def default_host():
    """The real default model (SmolLM2-135M-Instruct, dequantised into the test cache on first use)."""
    from lloco_runtime import load_model

    return load_model()


@pytest.fixture(scope="session")
def default_tokenizer():
    """The default model's tokenizer, without loading its weights (dequantises the GGUF once if needed)."""
    from transformers import AutoTokenizer

    from lloco_runtime.models import _CACHE_MARKER, _dequantise_gguf, default_gguf_path, gguf_cache_path

    gguf = default_gguf_path()
    target = gguf_cache_path(gguf)
    if not (target / _CACHE_MARKER).exists():
        _dequantise_gguf(gguf, target)
    return AutoTokenizer.from_pretrained(target, local_files_only=True)


def save_tiny_llama(directory: Path, tokenizer, *, seed: int = 0, **overrides) -> Path:
    """Write a seeded random tiny ``LlamaForCausalLM`` plus ``tokenizer`` as a Hugging Face folder."""
    from transformers import LlamaConfig, LlamaForCausalLM

    eos = tokenizer.eos_token_id
    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=eos,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos,
        **{**TINY_CONFIG, **overrides},
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_llama_factory(default_tokenizer):
    """``make(directory, seed=..., **config_overrides)`` writes another tiny Llama folder and returns it."""
    return lambda directory, **kw: save_tiny_llama(Path(directory), default_tokenizer, **kw)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, default_tokenizer) -> Path:
    """Folder of the session's tiny random Llama (seed 0)."""
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), default_tokenizer, seed=0)


@pytest.fixture(scope="session")
def tiny_host(tiny_model_dir):
    """Shared tiny host. Read-only by convention: do not inject adapters or encoder LoRAs into it."""
    from lloco_runtime import load_model

    return load_model(tiny_model_dir, device="cpu", dtype="float32")


@pytest.fixture
def make_tiny_host(tiny_model_dir):
    """Factory for private tiny hosts (same weights as ``tiny_host``) that a test may mutate freely."""
    from lloco_runtime import load_model

    def make(dtype: str = "float32"):
        return load_model(tiny_model_dir, device="cpu", dtype=dtype)

    return make


@pytest.fixture
def tiny_config():
    """A small encoder config: 32-token segments, 4 summary vectors (8x)."""
    from lloco_runtime import EncoderConfig

    return EncoderConfig(segment_length=32, summary_length=4)


@pytest.fixture(scope="session")
def tiny_encoder(tiny_host):
    """A fresh (untrained) small encoder on the shared tiny host: 32-token segments, 4 summary vectors."""
    from lloco_runtime import ContextEncoder, EncoderConfig

    return ContextEncoder(tiny_host, EncoderConfig(segment_length=32, summary_length=4))


@pytest.fixture
def tiny_lloco(make_tiny_host, tiny_config):
    """An ``LLoCO`` facade on a private tiny host (safe for adapter tests)."""
    from lloco_runtime import ContextEncoder, LLoCO

    host = make_tiny_host()
    return LLoCO(host, ContextEncoder(host, tiny_config))
