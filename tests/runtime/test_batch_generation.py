"""Batched decoding: one left-padded batch (mixed adapters, cheat sheets and text, per-row configs) gives
token for token what one-at-a-time decoding gives."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig

from lloco_runtime import (
    AdapterArtifact,
    AdapterError,
    ContextEncoder,
    GenerationConfig,
    Generator,
    InputError,
    LLoCO,
    Prompt,
    PromptTemplate,
)

PASSAGE = (
    "The old mill by the river ground wheat for the village until 1921, when a flood took the wheel. "
    "The miller's daughter rebuilt it as a bakery, and the bread is still sold there on Sundays."
)
A, B = "lora_a", "lora_b"


def add_random_lora(host, name: str, seed: int, *, targets=("q_proj", "v_proj"), scale: float = 0.5) -> None:
    """Inject a LoRA with random non-zero weights (a fresh LoRA is the identity)."""
    host.add_adapter(name, LoraConfig(r=4, lora_alpha=8, target_modules=list(targets), lora_dropout=0.0))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in host.model.named_parameters():
            if f"lora_B.{name}" in n or f"lora_A.{name}" in n:
                p.copy_(torch.randn(p.shape, generator=g) * scale)


@pytest.fixture(scope="module")
def host(tiny_model_dir):
    """A private tiny host with two random LoRAs (q/v and k/o projections)."""
    from lloco_runtime import load_model

    h = load_model(tiny_model_dir, device="cpu", dtype="float32")
    add_random_lora(h, A, 1)
    add_random_lora(h, B, 2, targets=("k_proj", "o_proj", "gate_proj"))
    return h


@pytest.fixture(scope="module", params=[True, False], ids=["prefill-alone", "prefill-batched"])
def gen(host, request):
    """Both prefill paths: each prompt alone with the caches merged (the CPU default) and one padded batch."""
    g = Generator(host)
    g.prefill_alone = request.param
    return g


@pytest.fixture(scope="module")
def sheets(host):
    from lloco_runtime import EncoderConfig

    enc = ContextEncoder(host, EncoderConfig(segment_length=32, summary_length=4))
    return enc.compress(PASSAGE * 2).tensors


def cfg(n=16, **kw):
    return GenerationConfig(max_new_tokens=n, **kw)


def one_at_a_time(gen, prompts, cfgs, adapters):
    return [gen.generate(p, c, adapter=a) for p, c, a in zip(prompts, cfgs, adapters, strict=True)]


def assert_same(batched, single):
    assert len(batched) == len(single)
    for i, (b, s) in enumerate(zip(batched, single, strict=True)):
        assert b.token_ids == s.token_ids, f"row {i}"
        assert b.text == s.text, f"row {i}"
        assert b.finish_reason == s.finish_reason, f"row {i}"
        assert (b.prompt_tokens, b.context_vectors) == (s.prompt_tokens, s.context_vectors), f"row {i}"


def mixed_batch(host, sheets):
    """Prompts of different lengths: cheat sheets, text context, no context, plain text."""
    tok = host.tokenizer
    t = PromptTemplate()
    return [
        t.build(tok, "When did the flood happen?", sheets),
        Prompt.from_text(PASSAGE),
        t.build(tok, "Who rebuilt the mill?", PASSAGE),
        Prompt.from_text("Hi"),
        t.build(tok, "What is sold on Sundays?", None),
        t.build(tok, "What is sold on Sundays?", sheets[:1]),
        Prompt.from_text("def f(x):\n    return"),
    ]


def test_outputs_differ_by_adapter(gen, host):
    """The adapters matter (else the mixed-batch test would prove little)."""
    p = Prompt.from_text(PASSAGE)
    outs = [gen.generate(p, cfg(12), adapter=a).token_ids for a in (None, A, B)]
    assert outs[0] != outs[1] and outs[0] != outs[2] and outs[1] != outs[2]


def test_greedy_batch_equals_one_at_a_time(gen, host, sheets):
    prompts = mixed_batch(host, sheets)
    adapters = [A, None, B, A, None, B, A]
    lengths = [20, 7, 16, 24, 1, 12, 18]
    free = one_at_a_time(gen, prompts, [cfg(n) for n in lengths], adapters)
    assert all(len(r.text) > 3 for r, n in zip(free, lengths, strict=True) if n > 4)
    # Stop strings taken from each row's free run, so they fire mid-generation (and one never does).
    cfgs = [cfg(n) for n in lengths]
    cfgs[0] = cfg(lengths[0], stop=(free[0].text[6:9],))
    cfgs[2] = cfg(lengths[2], stop=("never-zz", free[2].text[4:6]))
    cfgs[3] = cfg(lengths[3], stop=("\x07never\x07",))
    single = one_at_a_time(gen, prompts, cfgs, adapters)
    assert {r.finish_reason for r in single} == {"stop", "length"}
    assert len({len(r.token_ids) for r in single}) >= 4  # rows finish at different steps
    assert len({gen.embed(p)[0].shape[1] for p in prompts}) == len(prompts)  # all padded differently
    batched = gen.generate_batch(prompts, cfgs, adapters)
    assert_same(batched, single)
    # The model's routing is back to normal afterwards: single requests still give the same tokens.
    assert_same(one_at_a_time(gen, prompts[:3], cfgs[:3], adapters[:3]), single[:3])


def test_one_forward_per_step_for_the_whole_batch(gen, host, sheets):
    prompts = mixed_batch(host, sheets)
    adapters = [A, B, None, A, B, None, None]
    cfgs = [cfg(n) for n in (5, 9, 3, 9, 2, 6, 4)]
    calls = []
    handle = host.model.register_forward_pre_hook(lambda m, a, k: calls.append(1), with_kwargs=True)
    try:
        res = gen.generate_batch(prompts, cfgs, adapters)
    finally:
        handle.remove()
    steps = max(len(r.token_ids) + (r.finish_reason == "eos") for r in res)
    # one prefill per row when prompts are prefilled alone, else one for the batch; then one per step
    assert len(calls) == (len(prompts) if gen.prefill_alone else 1) + steps - 1
    assert_same(res, one_at_a_time(gen, prompts, cfgs, adapters))


def test_grouped_by_adapter_when_adapters_cannot_mix(gen, host, sheets, monkeypatch):
    prompts = mixed_batch(host, sheets)[:5]
    adapters = [A, B, None, B, A]
    cfgs = [cfg(10)] * 5
    single = one_at_a_time(gen, prompts, cfgs, adapters)
    monkeypatch.setattr(host, "can_mix", lambda names: False)
    assert_same(gen.generate_batch(prompts, cfgs, adapters), single)


def test_prefill_alone_when_padding_dominates_and_fallback_when_caches_cannot_merge(
    host, sheets, monkeypatch
):
    from lloco_runtime import generation

    g = Generator(host)
    assert g.prefill_alone is None and generation.PADDING_LIMIT == 0.5
    assert not g.prefills_alone([100, 90, 95]) and not g.prefills_alone([100])  # little padding: one pass
    assert g.prefills_alone([100, 10, 12])  # mostly padding: each alone (CPU)
    g.prefill_alone = True
    assert g.prefills_alone([100, 100]) and not g.prefills_alone([100])
    prompts = mixed_batch(host, sheets)[:4]
    cfgs, adapters = [cfg(9)] * 4, [A, None, B, A]
    single = one_at_a_time(g, prompts, cfgs, adapters)

    def refuse(cache, n, *, first):
        raise generation._CacheNotMergeable()

    monkeypatch.setattr(generation, "_check_mergeable", refuse)
    calls = []
    handle = host.model.register_forward_pre_hook(lambda m, a, k: calls.append(1), with_kwargs=True)
    try:
        res = g.generate_batch(prompts, cfgs, adapters)
    finally:
        handle.remove()
    assert_same(res, single)
    assert g._merge_ok is False  # remembered: the next batches prefill together at once
    assert len(calls) == 1 + 1 + max(len(r.token_ids) for r in res) - 1  # the probe row + one batch prefill


def test_eos_ends_a_row_early(tiny_model_dir, sheets):
    from lloco_runtime import load_model

    h = load_model(tiny_model_dir, device="cpu", dtype="float32")
    add_random_lora(h, A, 1)
    g = Generator(h)
    prompts = [Prompt.from_text(PASSAGE), Prompt.from_text("Hi there"), Prompt.from_text("def f(x):")]
    adapters = [None, A, None]
    free = g.generate(prompts[0], cfg(12)).token_ids
    k = next(i for i in range(3, 12) if free[i] not in free[:i])
    h.model.generation_config.eos_token_id = free[k]
    single = one_at_a_time(g, prompts, [cfg(12)] * 3, adapters)
    assert single[0].finish_reason == "eos" and single[0].token_ids == free[:k]
    assert_same(g.generate_batch(prompts, cfg(12), adapters), single)


def test_sampling_with_seeds_matches_one_at_a_time(gen, host, sheets):
    prompts = mixed_batch(host, sheets)[:4]
    cfgs = [GenerationConfig(max_new_tokens=12, temperature=0.8, top_p=0.95, seed=s) for s in range(3)] + [
        cfg(12)
    ]
    adapters = [None, A, B, A]
    assert_same(gen.generate_batch(prompts, cfgs, adapters), one_at_a_time(gen, prompts, cfgs, adapters))


def test_uncached_rows_and_batch_of_one(gen, host, sheets):
    prompts = mixed_batch(host, sheets)[:3]
    cfgs = [cfg(8), cfg(8, use_cache=False), cfg(8)]
    adapters = [A, B, None]
    assert_same(gen.generate_batch(prompts, cfgs, adapters), one_at_a_time(gen, prompts, cfgs, adapters))
    assert_same(gen.generate_batch(prompts[:1], cfgs[0], [B]), one_at_a_time(gen, prompts[:1], cfgs[:1], [B]))
    assert gen.generate_batch([], cfg(4), []) == []


def test_batch_input_errors(gen):
    with pytest.raises(InputError, match="2 prompts"):
        gen.generate_batch([Prompt.from_text("a"), Prompt.from_text("b")], cfg(2), [None])
    with pytest.raises(AdapterError, match="not loaded"):
        gen.generate_batch([Prompt.from_text("a")], cfg(2), ["nope"])


# -- LLoCO.generate_batch / answer_batch --------------------------------------------------------------------


def artifact(lloco: LLoCO, seed: int) -> AdapterArtifact:
    host = lloco.host
    name = f"tmp_{seed}"
    add_random_lora(host, name, seed)
    art = AdapterArtifact.from_model(
        host.model, name, base_fingerprint=host.fingerprint, encoder_fingerprint=lloco.encoder.fingerprint
    )
    host.delete_adapter(name)
    return art


def test_answer_batch_equals_answer(make_tiny_host, tiny_config):
    host = make_tiny_host()
    lloco = LLoCO(host, ContextEncoder(host, tiny_config), adapter_capacity=1)
    for seed, aid in ((5, "g1"), (6, "g2")):
        lloco.adapters.register(aid, artifact(lloco, seed))
    sheets = lloco.compress(PASSAGE * 2)
    questions = ["When did the flood happen?", "Who rebuilt the mill?", "What is sold on Sundays?", "Why?"]
    contexts = [sheets, PASSAGE, None, sheets]
    ids = ["g1", "g2", None, "g1"]
    single = [
        lloco.answer(q, c, adapter_id=a, max_new_tokens=10)
        for q, c, a in zip(questions, contexts, ids, strict=True)
    ]
    loads = []
    original = lloco.adapters._load
    lloco.adapters._load = lambda aid: loads.append(aid) or original(aid)
    batched = lloco.answer_batch(questions, contexts, adapter_ids=ids, max_new_tokens=10)
    assert_same(batched, single)
    # Both adapters were pinned together (capacity 1), each loaded at most once; the LRU shrinks afterwards.
    assert len(loads) == len(set(loads)) <= 2
    assert lloco.adapters.loaded() in (["g1"], ["g2"])
    # Per-row configs.
    cfgs = [GenerationConfig(max_new_tokens=n) for n in (3, 6, 2, 5)]
    res = lloco.answer_batch(questions, contexts, adapter_ids=ids, configs=cfgs)
    assert [len(r.token_ids) <= c.max_new_tokens for r, c in zip(res, cfgs, strict=True)] == [True] * 4
    assert_same(
        res,
        [
            lloco.answer(q, c, adapter_id=a, config=k)
            for q, c, a, k in zip(questions, contexts, ids, cfgs, strict=True)
        ],
    )
    with pytest.raises(InputError):
        lloco.answer_batch(questions, contexts, adapter_ids=ids, configs=cfgs[:2])
    assert lloco.generate_batch([]) == []


def test_stream_batch_deltas_add_up_to_the_one_at_a_time_answers(gen, host, sheets):
    """stream_batch: one (text, finished) per row after every forward pass; the texts of each row join to its
    one-at-a-time text, each row is finished from its last text on, and states hold its numbers."""
    from lloco_runtime import StreamStats

    prompts = mixed_batch(host, sheets)[:5]
    lengths = [14, 3, 9, 1, 11]
    adapters = [A, None, B, A, None]
    free = one_at_a_time(gen, prompts, [cfg(n) for n in lengths], adapters)
    cfgs = [cfg(n) for n in lengths]
    cfgs[0] = cfg(lengths[0], stop=(free[0].text[5:8],))  # a stop string mid-stream
    single = one_at_a_time(gen, prompts, cfgs, adapters)
    states = [StreamStats() for _ in prompts]
    steps = list(gen.stream_batch(prompts, cfgs, adapters, states=states))
    assert all(len(step) == len(prompts) for step in steps)
    for i, want in enumerate(single):
        texts = [step[i][0] for step in steps]
        flags = [step[i][1] for step in steps]
        assert "".join(texts) == want.text, f"row {i}"
        first_done = flags.index(True)
        assert all(flags[first_done:]) and not any(texts[first_done + 1 :]), f"row {i}"
        st = states[i]
        assert (st.text, st.token_ids, st.finish_reason) == (want.text, want.token_ids, want.finish_reason)
        assert 0 < st.prefill_s <= st.total_s
    assert steps[-1] == [("", True)] * len(prompts) or all(done for _, done in steps[-1])
    # one item per forward pass: rows prefilled alone count as one pass here
    assert len(steps) == max(len(r.token_ids) + (r.finish_reason == "eos") for r in single)


def test_stream_batch_refuses_uncached_rows_and_mismatched_states(gen):
    from lloco_runtime import StreamStats

    with pytest.raises(InputError, match="use_cache"):
        list(gen.stream_batch([Prompt.from_text("a")], cfg(2, use_cache=False), [None]))
    with pytest.raises(InputError, match="states"):
        list(gen.stream_batch([Prompt.from_text("a")], cfg(2), [None], states=[StreamStats(), StreamStats()]))
