"""LoRA adapters: the safetensors artifact, fingerprint checks, the LRU, and request-scoped choice under threads."""

from __future__ import annotations

import json
import threading

import pytest
import torch
from peft import LoraConfig

from lloco_runtime import (
    AdapterArtifact,
    AdapterError,
    AdapterManager,
    FingerprintMismatchError,
    GenerationConfig,
    Generator,
    NotFoundError,
    Prompt,
    load_model,
)
from lloco_runtime.adapters import CONTEXT_LORA_FIELDS, lora_config_from_dict, lora_config_to_dict

ENCODER_FP = "e" * 64
PROMPT = Prompt.from_text("The harbour master counted the boats that came in before the storm")
CFG = GenerationConfig(max_new_tokens=10)


@pytest.fixture(scope="module")
def scratch_host(tiny_model_dir):
    """A private host on which adapters are created (then removed again)."""
    return load_model(tiny_model_dir, device="cpu")


def make_artifact(
    host,
    seed: int,
    *,
    encoder_fp: str | None = ENCODER_FP,
    r: int = 4,
    targets=("q_proj", "v_proj"),
    scale: float = 0.5,
    info=None,
) -> AdapterArtifact:
    """A LoRA with random non-zero B (a fresh LoRA is the identity), captured as an artifact."""
    name = f"scratch_{seed}"
    host.add_adapter(name, LoraConfig(r=r, lora_alpha=2 * r, target_modules=list(targets), lora_dropout=0.0))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in host.model.named_parameters():
            if f"lora_B.{name}" in n or f"lora_A.{name}" in n:
                p.copy_(torch.randn(p.shape, generator=g) * scale)
    art = AdapterArtifact.from_model(
        host.model,
        name,
        base_fingerprint=host.fingerprint,
        encoder_fingerprint=encoder_fp,
        info=info or {"seed": seed},
    )
    host.delete_adapter(name)
    assert host.adapter_names() == []
    return art


@pytest.fixture(scope="module")
def artifacts(scratch_host):
    return {k: make_artifact(scratch_host, seed) for k, seed in (("a", 1), ("b", 2), ("c", 3))}


@pytest.fixture
def host(make_tiny_host):
    return make_tiny_host()


@pytest.fixture
def manager(host, artifacts):
    m = AdapterManager(host, encoder_fingerprint=ENCODER_FP, capacity=2)
    for k, art in artifacts.items():
        m.register(k, art.to_bytes())
    return m


def run(host, adapter=None, prompt=PROMPT, cfg=CFG):
    return Generator(host).generate(prompt, cfg, adapter=adapter).token_ids


def run_with(manager, adapter_id):
    with manager.acquire(adapter_id) as name:
        return run(manager.host, name)


# -- the artifact -------------------------------------------------------------------------------------------


def test_artifact_round_trip(artifacts):
    art = artifacts["a"]
    assert art.tensors and all("lora_" in k for k in art.tensors)
    assert art.lora_config["r"] == 4 and sorted(art.lora_config["target_modules"]) == ["q_proj", "v_proj"]
    back = AdapterArtifact.from_bytes(art.to_bytes())
    assert back.tensors.keys() == art.tensors.keys()
    assert all(torch.equal(back.tensors[k], art.tensors[k]) for k in art.tensors)
    assert back.lora_config == art.lora_config
    assert back.base_fingerprint == art.base_fingerprint
    assert back.encoder_fingerprint == ENCODER_FP
    assert back.info == {"seed": 1}
    assert back.digest == art.digest != artifacts["b"].digest
    assert AdapterArtifact.from_bytes(back.to_bytes()).digest == art.digest


def test_artifact_records_the_whole_lora_config(artifacts):
    """peft's ``LoraConfig.to_dict()`` as JSON, less where-it-is-used fields; rebuilding it gives it back."""
    cfg = artifacts["a"].lora_config
    assert set(cfg) == set(LoraConfig().to_dict()) - CONTEXT_LORA_FIELDS
    assert json.loads(json.dumps(cfg)) == cfg  # JSON values only: sets as sorted lists, enums as values
    assert cfg["target_modules"] == ["q_proj", "v_proj"] and cfg["use_dora"] is False
    rebuilt = lora_config_from_dict(cfg)
    assert isinstance(rebuilt, LoraConfig) and rebuilt.target_modules == {"q_proj", "v_proj"}
    assert lora_config_to_dict(rebuilt) == cfg


# The LoraConfig subset lloco recorded before it kept the whole config (adapters stored then look like this).
OLD_PARTIAL_CONFIG = {
    "r": 4,
    "lora_alpha": 8,
    "lora_dropout": 0.0,
    "target_modules": ["q_proj", "v_proj"],
    "bias": "none",
    "use_rslora": False,
}


def test_artifact_stored_with_the_older_partial_config_still_loads(host, artifacts):
    full = artifacts["a"]
    cfg = lora_config_from_dict(OLD_PARTIAL_CONFIG)
    assert cfg.r == 4 and cfg.lora_alpha == 8 and cfg.target_modules == {"q_proj", "v_proj"}
    old = AdapterArtifact(
        tensors=full.tensors,
        lora_config=dict(OLD_PARTIAL_CONFIG),
        base_fingerprint=full.base_fingerprint,
        encoder_fingerprint=full.encoder_fingerprint,
        info=full.info,
    )
    back = AdapterArtifact.from_bytes(old.to_bytes())
    assert back.lora_config == OLD_PARTIAL_CONFIG and back.digest == old.digest
    m = AdapterManager(host, encoder_fingerprint=ENCODER_FP, capacity=2)
    m.register("old", old.to_bytes())
    m.register("full", full.to_bytes())
    assert run_with(m, "old") == run_with(m, "full") != run(host)


def test_lora_config_from_dict_skips_context_and_unknown_empty_keys_but_refuses_set_ones(artifacts):
    cfg = artifacts["a"].lora_config
    ok = lora_config_from_dict(
        {**cfg, "task_type": "CAUSAL_LM", "inference_mode": True, "option_of_a_newer_peft": None}
    )
    assert ok.inference_mode is False and ok.task_type is None and ok.r == 4
    with pytest.raises(AdapterError, match=r"\['option_of_a_newer_peft'\].*upgrade peft"):
        lora_config_from_dict({**cfg, "option_of_a_newer_peft": "on"})
    with pytest.raises(AdapterError, match="not valid"):
        lora_config_from_dict({**cfg, "layers_pattern": "layers"})  # needs layers_to_transform


def test_artifact_is_a_snapshot(scratch_host):
    """Training the adapter further after capture must not change the captured artifact."""
    scratch_host.add_adapter("live", LoraConfig(r=2, target_modules=["q_proj"], lora_dropout=0.0))
    try:
        art = AdapterArtifact.from_model(
            scratch_host.model, "live", base_fingerprint="x", encoder_fingerprint=None
        )
        before = {k: v.clone() for k, v in art.tensors.items()}
        with torch.no_grad():
            for n, p in scratch_host.model.named_parameters():
                if "live" in n:
                    p.add_(1.0)
        assert all(torch.equal(art.tensors[k], before[k]) for k in before)
    finally:
        scratch_host.delete_adapter("live")


def _corruptions(blob: bytes):
    header_len = int.from_bytes(blob[:8], "little")
    yield "empty", b""
    yield "short", blob[:5]
    yield "truncated", blob[:-7]
    yield "half", blob[: len(blob) // 2]
    yield "garbage", b"\x00" * 64
    yield "not json", blob[:8] + b"[" * header_len + blob[8 + header_len :]
    yield "huge header length", (2**40).to_bytes(8, "little") + blob[8:]
    yield "payload byte", blob[:-3] + bytes([blob[-3] ^ 0x40]) + blob[-2:]
    yield (
        "first payload byte",
        blob[: 8 + header_len] + bytes([blob[8 + header_len] ^ 0x01]) + blob[9 + header_len :],
    )
    yield "extra bytes", blob + b"\x00\x01"


@pytest.mark.parametrize(
    "case",
    [
        "empty",
        "short",
        "truncated",
        "half",
        "garbage",
        "not json",
        "huge header length",
        "payload byte",
        "first payload byte",
        "extra bytes",
    ],
)
def test_corrupted_artifact_bytes(artifacts, case):
    bad = dict(_corruptions(artifacts["a"].to_bytes()))[case]
    with pytest.raises(AdapterError):
        AdapterArtifact.from_bytes(bad)


def test_plain_safetensors_is_not_an_adapter():
    from safetensors.torch import save

    with pytest.raises(AdapterError, match="not a lloco adapter"):
        AdapterArtifact.from_bytes(save({"w": torch.zeros(2)}))


# -- fingerprints ---------------------------------------------------------------------------------------------


def test_base_model_mismatch(host, scratch_host, tiny_llama_factory, tmp_path):
    other = load_model(tiny_llama_factory(tmp_path / "other", seed=9), device="cpu")
    art = make_artifact(other, 5)
    m = AdapterManager(host, encoder_fingerprint=ENCODER_FP)
    with pytest.raises(FingerprintMismatchError, match="base model"):
        m.register("x", art)
    with pytest.raises(FingerprintMismatchError):
        m.register("x", art.to_bytes())
    assert "x" not in m._registered


def test_encoder_mismatch(host, scratch_host):
    art = make_artifact(scratch_host, 6, encoder_fp="f" * 64)
    m = AdapterManager(host, encoder_fingerprint=ENCODER_FP)
    with pytest.raises(FingerprintMismatchError, match="encoder"):
        m.register("x", art)


def test_adapter_checked_again_when_loaded_from_a_source(host, scratch_host):
    wrong = make_artifact(scratch_host, 7, encoder_fp="f" * 64).to_bytes()
    m = AdapterManager(host, encoder_fingerprint=ENCODER_FP, source=lambda aid: wrong)
    with pytest.raises(FingerprintMismatchError), m.acquire("from-store"):
        pass
    assert host.adapter_names() == []


# -- effect on generation --------------------------------------------------------------------------------------


def test_adapter_changes_output_and_base_is_restored(manager, host):
    base = run(host)
    with_a = run_with(manager, "a")
    with_b = run_with(manager, "b")
    assert with_a != base and with_b != base and with_a != with_b
    assert run(host) == base, "base output changed while adapters are loaded"
    assert run_with(manager, None) == base
    assert run_with(manager, "a") == with_a
    # Same output on a fresh host with only adapter a: loading order and neighbours do not matter.
    assert manager.loaded() == ["b", "a"]


def test_eviction_and_reload_give_the_same_output(manager, host, artifacts):
    first = run_with(manager, "a")
    run_with(manager, "b")
    run_with(manager, "c")  # capacity 2: evicts a
    assert manager.loaded() == ["b", "c"]
    assert AdapterManager.peft_name("a") not in host.adapter_names()
    assert run_with(manager, "a") == first


def test_lru_order_and_capacity(manager, host):
    for k in ("a", "b"):
        run_with(manager, k)
    run_with(manager, "a")  # a is now the most recently used
    run_with(manager, "c")
    assert manager.loaded() == ["a", "c"], "the least recently used adapter (b) should have been evicted"
    assert sorted(host.adapter_names()) == sorted(AdapterManager.peft_name(k) for k in ("a", "c"))


def test_pinned_adapter_is_not_evicted(manager, host):
    base = run(host)
    with manager.acquire("a") as name_a:
        with_a = run(host, name_a)
        with manager.acquire("b"):
            pass
        with manager.acquire("c"):
            pass
        assert "a" in manager.loaded(), "a pinned adapter was evicted"
        assert len(manager.loaded()) == 2
        assert run(host, name_a) == with_a
    assert run(host) == base


def test_over_capacity_while_all_are_pinned(host, artifacts):
    m = AdapterManager(host, encoder_fingerprint=ENCODER_FP, capacity=1)
    for k, art in artifacts.items():
        m.register(k, art)
    with m.acquire("a") as na, m.acquire("b") as nb:
        assert len(m.loaded()) == 2  # both in use: nothing can go
        assert run(host, na) != run(host, nb)
    assert len(m.loaded()) == 1


def test_reregistering_replaces_the_weights(manager, scratch_host):
    old = run_with(manager, "a")
    manager.register("a", make_artifact(scratch_host, 11))
    new = run_with(manager, "a")
    assert new != old


def test_adapter_trained_with_dropout_serves_deterministically(host, scratch_host):
    """`lloco finetune` trains with lora_dropout 0.05; serving must not apply it (same answer every call)."""
    art = make_artifact(scratch_host, 9)
    art = AdapterArtifact(
        tensors=art.tensors,
        lora_config=dict(art.lora_config, lora_dropout=0.5),
        base_fingerprint=art.base_fingerprint,
        encoder_fingerprint=ENCODER_FP,
    )
    m = AdapterManager(host, encoder_fingerprint=ENCODER_FP)
    m.register("dropout", art.to_bytes())
    assert len({tuple(run_with(m, "dropout")) for _ in range(4)}) == 1
    with m.acquire("dropout"):
        assert not [
            n
            for n, mod in host.model.named_modules()
            if isinstance(mod, torch.nn.Dropout) and mod.p > 0 and mod.training
        ]


def test_unknown_adapter(manager, host):
    with pytest.raises(NotFoundError, match="unknown adapter"), manager.acquire("nope"):
        pass
    m = AdapterManager(host, encoder_fingerprint=ENCODER_FP, source=lambda aid: None)
    with pytest.raises(NotFoundError), m.acquire("nope"):
        pass
    assert host.adapter_names() == []


def test_adapter_from_a_source(host, artifacts):
    calls = []

    def source(aid):
        calls.append(aid)
        return artifacts[aid].to_bytes()

    m = AdapterManager(host, encoder_fingerprint=ENCODER_FP, source=source, capacity=1)
    out = run_with(m, "a")
    assert run_with(m, "a") == out
    assert calls == ["a"], "a loaded adapter was fetched again"


def test_adapter_that_does_not_fit(host, scratch_host):
    art = make_artifact(scratch_host, 12)
    bad_shape = AdapterArtifact(
        tensors={k: torch.zeros(v.shape[0] + 1, *v.shape[1:]) for k, v in art.tensors.items()},
        lora_config=art.lora_config,
        base_fingerprint=art.base_fingerprint,
        encoder_fingerprint=ENCODER_FP,
    )
    bad_target = AdapterArtifact(
        tensors=art.tensors,
        lora_config={**art.lora_config, "target_modules": ["nope"]},
        base_fingerprint=art.base_fingerprint,
        encoder_fingerprint=ENCODER_FP,
    )
    m = AdapterManager(host, encoder_fingerprint=ENCODER_FP)
    for i, bad in enumerate((bad_shape, bad_target)):
        m.register(f"bad{i}", bad)
        with pytest.raises(AdapterError), m.acquire(f"bad{i}"):
            pass
        assert host.adapter_names() == [], "a failed load left an adapter behind"
    assert m.loaded() == []


def test_capacity_must_be_positive(host):
    with pytest.raises(AdapterError):
        AdapterManager(host, encoder_fingerprint=None, capacity=0)


def test_decoder_adapter_does_not_touch_compression(tiny_lloco, artifacts):
    lloco = tiny_lloco
    base = lloco.compress("Some text to compress, long enough for two segments? " * 4)
    m = AdapterManager(lloco.host, encoder_fingerprint=None)
    m.register("a", artifacts["a"])
    with m.acquire("a") as name:
        with lloco.host.using(name):
            pass  # make it the active adapter
        again = lloco.compress("Some text to compress, long enough for two segments? " * 4)
    assert all(torch.equal(x, y) for x, y in zip(base.tensors, again.tensors))


def test_facade_answers_with_an_adapter(tiny_lloco, artifacts):
    lloco = tiny_lloco
    lloco.adapters.encoder_fingerprint = None  # artifacts were made for a stand-in encoder fingerprint
    lloco.adapters.register("a", artifacts["a"])
    sheets = lloco.compress("The harbour closed at noon because of the storm. " * 3)
    plain = lloco.answer("When did it close?", sheets, max_new_tokens=8)
    tuned = lloco.answer("When did it close?", sheets, adapter_id="a", max_new_tokens=8)
    assert tuned.token_ids != plain.token_ids
    assert lloco.answer("When did it close?", sheets, max_new_tokens=8).token_ids == plain.token_ids


# -- concurrency ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("capacity", [2, 1])
def test_concurrent_requests_see_only_their_own_adapter(host, artifacts, capacity):
    """Threads with adapters a, b and none interleave decoding steps; each gets its single-threaded output.

    With capacity 1 adapters are also loaded and evicted while other requests are mid-generation.
    """
    m = AdapterManager(host, encoder_fingerprint=ENCODER_FP, capacity=capacity)
    for k in ("a", "b"):
        m.register(k, artifacts[k])
    prompts = [PROMPT, Prompt.from_text("A different prompt about lighthouses and ships")]
    cfg = GenerationConfig(max_new_tokens=12)
    expected = {}
    for aid in ("a", "b", None):
        for i, p in enumerate(prompts):
            with m.acquire(aid) as name:
                expected[aid, i] = run(host, name, p, cfg)
    assert len({tuple(v) for v in expected.values()}) == len(expected), "adapters must change the output"

    rounds = 3
    results: dict = {}
    errors: list = []
    barrier = threading.Barrier(3)

    def worker(aid):
        try:
            for r in range(rounds):
                barrier.wait(timeout=60)
                for i, p in enumerate(prompts):
                    with m.acquire(aid) as name:
                        results[aid, r, i] = run(host, name, p, cfg)
        except Exception as exc:  # noqa: BLE001 - reported below, with the thread's adapter
            errors.append((aid, exc))
            barrier.abort()

    threads = [threading.Thread(target=worker, args=(aid,)) for aid in ("a", "b", None)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    assert len(results) == 3 * rounds * len(prompts)
    for (aid, r, i), ids in results.items():
        assert ids == expected[aid, i], (
            f"adapter {aid!r}, round {r}, prompt {i}: output leaked across requests"
        )


def test_concurrent_streams_interleave(host, artifacts):
    """Two streaming requests advanced alternately, token by token, in one thread: still isolated."""
    m = AdapterManager(host, encoder_fingerprint=ENCODER_FP, capacity=2)
    m.register("a", artifacts["a"])
    g = Generator(host)
    expected_a = run_with(m, "a")
    expected_base = run(host)
    from lloco_runtime.generation import StreamStats

    with m.acquire("a") as name:
        sa, sb = StreamStats(), StreamStats()
        ia, ib = g.stream(PROMPT, CFG, adapter=name, state=sa), g.stream(PROMPT, CFG, adapter=None, state=sb)
        live = [ia, ib]
        while live:
            for it in list(live):
                if next(it, None) is None:
                    live.remove(it)
    assert sa.token_ids == expected_a
    assert sb.token_ids == expected_base


def test_bf16_host_with_encoder_and_adapter(make_tiny_host, artifacts):
    """The GPU default dtype: bf16 cheat sheets, an fp32-trained adapter loaded into a bf16 decoder."""
    from lloco_runtime import CheatSheetError, ContextEncoder, EncoderConfig, PromptTemplate

    host = make_tiny_host("bfloat16")
    enc = ContextEncoder(host, EncoderConfig(segment_length=32, summary_length=4))
    sheets = enc.compress("The harbour closed at noon because of the storm. " * 3).tensors
    assert all(t.dtype == torch.bfloat16 for t in sheets)
    prompt = PromptTemplate().build(host.tokenizer, "When?", sheets)
    m = AdapterManager(host, encoder_fingerprint=ENCODER_FP)
    m.register("a", artifacts["a"])
    base = run(host, None, prompt)
    with m.acquire("a") as name:
        tuned = run(host, name, prompt)
    assert base != tuned
    with pytest.raises(CheatSheetError, match="dtype"):
        run(host, None, PromptTemplate().build(host.tokenizer, "When?", [t.float() for t in sheets]))
