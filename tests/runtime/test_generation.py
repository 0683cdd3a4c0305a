"""The decoding loop: cached == uncached greedy, streaming, stop strings, sampling, input checks."""

from __future__ import annotations

import pytest
import torch

from lloco_runtime import (
    AdapterError,
    CheatSheetError,
    ContextTooLongError,
    GenerationConfig,
    Generator,
    InputError,
    Prompt,
    PromptTemplate,
)
from lloco_runtime.generation import StreamStats, _partial_stop

PASSAGE = (
    "The old mill by the river ground wheat for the village until 1921, when a flood took the wheel. "
    "The miller's daughter rebuilt it as a bakery, and the bread is still sold there on Sundays."
)
QUESTIONS = ["When did the flood happen?", "What is sold on Sundays?", "Who rebuilt the mill?"]


@pytest.fixture(scope="module")
def gen(tiny_host):
    return Generator(tiny_host)


@pytest.fixture(scope="module")
def sheets(tiny_encoder):
    return tiny_encoder.compress(PASSAGE * 2).tensors


def sheet_prompt(tokenizer, sheets, question=QUESTIONS[0]):
    return PromptTemplate().build(tokenizer, question, sheets)


def greedy(n=24, **kw):
    return GenerationConfig(max_new_tokens=n, **kw)


# -- greedy: the KV cache changes nothing ------------------------------------------------------------------


@pytest.mark.parametrize("text", [PASSAGE, "Hello", "def f(x):\n    return"])
def test_greedy_cache_equals_no_cache_text(gen, text):
    prompt = Prompt.from_text(text)
    cached = gen.generate(prompt, greedy())
    uncached = gen.generate(prompt, greedy(use_cache=False))
    assert len(cached.token_ids) > 5
    assert cached.token_ids == uncached.token_ids
    assert cached.text == uncached.text


@pytest.mark.parametrize("question", QUESTIONS)
def test_greedy_cache_equals_no_cache_with_cheat_sheets(gen, tiny_host, sheets, question):
    prompt = sheet_prompt(tiny_host.tokenizer, sheets, question)
    cached = gen.generate(prompt, greedy())
    uncached = gen.generate(prompt, greedy(use_cache=False))
    assert len(cached.token_ids) > 5
    assert cached.token_ids == uncached.token_ids


def test_greedy_matches_transformers_generate(gen, tiny_host, sheets):
    """An independent reference: transformers' own greedy search over the same inputs_embeds."""
    prompt = sheet_prompt(tiny_host.tokenizer, sheets)
    ours = gen.generate(prompt, greedy(16))
    embeds, _, _ = gen.embed(prompt)
    with torch.inference_mode():
        ref = tiny_host.model.generate(
            inputs_embeds=embeds,
            attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long),
            max_new_tokens=16,
            do_sample=False,
        )
    ref_ids = [t for t in ref[0].tolist()]
    assert len(ours.token_ids) >= 8  # a reference that stops at once would compare nothing
    assert ours.token_ids == ref_ids[: len(ours.token_ids)]


def test_cheat_sheets_reach_the_decoder(gen, tiny_host, sheets, tiny_encoder):
    """Different cheat sheets give different logits; the same ones give the same output."""
    tok = tiny_host.tokenizer
    other = tiny_encoder.compress("Completely unrelated text about volcanoes and glaciers. " * 3).tensors
    a = gen.generate(sheet_prompt(tok, sheets), greedy(12))
    b = gen.generate(sheet_prompt(tok, other), greedy(12))
    assert a.token_ids != b.token_ids
    assert gen.generate(sheet_prompt(tok, sheets), greedy(12)).token_ids == a.token_ids


def test_result_counts(gen, tiny_host, sheets):
    tok = tiny_host.tokenizer
    prompt = sheet_prompt(tok, sheets)
    res = gen.generate(prompt, greedy(7))
    n_text = sum(
        len(tok(p, add_special_tokens=False)["input_ids"]) for p in prompt.pieces if isinstance(p, str)
    )
    assert res.context_vectors == sum(s.shape[0] for s in sheets) == prompt.context_vectors
    assert res.prompt_tokens == n_text + res.context_vectors
    assert res.finish_reason == "length" and len(res.token_ids) == 7
    assert res.text == tok.decode(res.token_ids, skip_special_tokens=True)
    assert 0 < res.prefill_s <= res.total_s
    assert gen.prefill_time(prompt) > 0


@pytest.mark.parametrize("n", [1, 2, 9])
def test_max_new_tokens_is_respected(gen, n):
    res = gen.generate(Prompt.from_text(PASSAGE), greedy(n))
    assert len(res.token_ids) == n and res.finish_reason == "length"


def test_eos_ends_generation(make_tiny_host):
    host = make_tiny_host()
    g = Generator(host)
    prompt = Prompt.from_text(PASSAGE)
    free = g.generate(prompt, greedy(10)).token_ids
    k = next(i for i in range(3, 10) if free[i] not in free[:i])
    host.model.generation_config.eos_token_id = free[k]
    res = g.generate(prompt, greedy(10))
    assert res.finish_reason == "eos"
    assert res.token_ids == free[:k]


def test_ignore_eos_decodes_exactly_max_new_tokens(make_tiny_host):
    """With ``ignore_eos`` an EOS token is decoded like any other: stream, generate and generate_batch all
    give exactly ``max_new_tokens`` tokens, the same ones as a run without that EOS."""
    host = make_tiny_host()
    g = Generator(host)
    prompt = Prompt.from_text(PASSAGE)
    free = g.generate(prompt, greedy(10)).token_ids
    k = next(i for i in range(3, 10) if free[i] not in free[:i])
    host.model.generation_config.eos_token_id = free[k]
    assert g.generate(prompt, greedy(10)).finish_reason == "eos"  # the EOS is hit without the option
    res = g.generate(prompt, greedy(10, ignore_eos=True))
    assert res.token_ids == free and len(res.token_ids) == 10 and res.finish_reason == "length"
    st = StreamStats()
    list(g.stream(prompt, greedy(10, ignore_eos=True), state=st))
    assert st.token_ids == free and st.finish_reason == "length"
    short = Prompt.from_text(PASSAGE[:60])
    batch = g.generate_batch([prompt, short], greedy(10, ignore_eos=True), [None, None])
    assert batch[0].token_ids == free
    assert [len(r.token_ids) for r in batch] == [10, 10] and {r.finish_reason for r in batch} == {"length"}
    assert batch[1].token_ids == g.generate(short, greedy(10, ignore_eos=True)).token_ids


# -- streaming and stop strings -----------------------------------------------------------------------------


def collect(gen, prompt, cfg):
    st = StreamStats()
    deltas = list(gen.stream(prompt, cfg, state=st))
    return deltas, st


@pytest.mark.parametrize("seed", range(2))
def test_stream_deltas_join_to_the_generated_text(gen, tiny_host, sheets, seed):
    cfg = GenerationConfig(max_new_tokens=30, temperature=1.5, seed=seed)  # random tokens, partial UTF-8
    for prompt in (Prompt.from_text(PASSAGE), sheet_prompt(tiny_host.tokenizer, sheets)):
        deltas, st = collect(gen, prompt, cfg)
        full = gen.generate(prompt, cfg)
        assert "".join(deltas) == full.text == st.text
        assert st.token_ids == full.token_ids
        assert all(deltas), "empty deltas were yielded"
        assert len(deltas) > 1


def test_stream_is_lazy(gen):
    it = gen.stream(Prompt.from_text(PASSAGE), greedy(50))
    first = next(it)
    assert first
    it.close()


def _token_pieces(tokenizer, ids):
    """Text of each token boundary: text[:ends[i]] is the decoded text of ids[:i+1]."""
    return [len(tokenizer.decode(ids[: i + 1], skip_special_tokens=True)) for i in range(len(ids))]


@pytest.fixture(scope="module")
def free_run(gen):
    prompt = Prompt.from_text(PASSAGE)
    res = gen.generate(prompt, greedy(40))
    assert len(res.text) > 20
    return prompt, res


def test_stop_string_cuts_output(gen, free_run):
    prompt, free = free_run
    stop = free.text[10:13]
    expected = free.text[: free.text.find(stop)]
    res = gen.generate(prompt, greedy(40, stop=(stop,)))
    assert res.finish_reason == "stop"
    assert res.text == expected
    assert stop not in res.text
    deltas, st = collect(gen, prompt, greedy(40, stop=(stop,)))
    assert "".join(deltas) == expected and st.finish_reason == "stop"


def test_stop_string_spanning_tokens(gen, tiny_host, free_run):
    prompt, free = free_run
    ends = _token_pieces(tiny_host.tokenizer, free.token_ids)
    # A token boundary with at least two characters on either side, well inside the text.
    b = next(e for prev, e, nxt in zip(ends, ends[1:], ends[2:]) if e - prev >= 2 and nxt - e >= 2 and e > 5)
    stop = free.text[b - 2 : b + 2]
    expected = free.text[: free.text.find(stop)]
    for cfg in (greedy(40, stop=(stop,)), greedy(40, stop=("never-occurs-zzz", stop))):
        deltas, st = collect(gen, prompt, cfg)
        assert st.finish_reason == "stop"
        assert st.text == expected == "".join(deltas)
        # Decoding stopped right after the token that completed the stop string.
        assert len(st.token_ids) == next(i + 1 for i, e in enumerate(ends) if e >= b + 2)


def test_stop_string_that_never_occurs(gen, free_run):
    prompt, free = free_run
    res = gen.generate(prompt, greedy(40, stop=("\x07never\x07",)))
    assert res.text == free.text and res.finish_reason == "length"


def test_earliest_stop_string_wins(gen, free_run):
    prompt, free = free_run
    late, early = free.text[15:18], free.text[5:8]
    res = gen.generate(prompt, greedy(40, stop=(late, early)))
    assert res.text == free.text[: min(free.text.find(late), free.text.find(early))]


def scripted(host, token_ids):
    """A generator whose next-token choice follows a script (then EOS): exact control over the text."""
    g = Generator(host)
    script = iter(token_ids)
    g._pick = lambda logits, cfg, rng: next(script, host.tokenizer.eos_token_id)
    return g


SPACE_PARTIAL = b" \xe2"  # a vocabulary token: a space then the first byte of a 3-byte character


def _token_id(tokenizer, raw: bytes) -> int:
    table = {}
    for b in range(256):  # GPT-2 byte-to-unicode table
        printable = 33 <= b <= 126 or 161 <= b <= 172 or 174 <= b <= 255
        table[b] = chr(b) if printable else None
    extra = 0
    for b in range(256):
        if table[b] is None:
            table[b] = chr(256 + extra)
            extra += 1
    return tokenizer.convert_tokens_to_ids("".join(table[b] for b in raw))


def test_scripted_multibyte_character_is_never_split(tiny_host):
    tok = tiny_host.tokenizer
    ids = tok("x🎉y", add_special_tokens=False)["input_ids"]
    assert len(ids) >= 4, "the emoji should take several byte tokens"
    deltas, st = collect(scripted(tiny_host, ids), Prompt.from_text("hi"), greedy(20))
    assert "".join(deltas) == st.text == "x🎉y"
    assert not any("\ufffd" in d for d in deltas)
    assert st.finish_reason == "eos"


def test_scripted_stop_completed_while_a_character_is_pending(tiny_host):
    """The last token completes the stop string and starts a multibyte character."""
    tok = tiny_host.tokenizer
    partial = _token_id(tok, SPACE_PARTIAL)
    assert tok.decode([partial]) == " \ufffd"
    ids = tok("abc", add_special_tokens=False)["input_ids"] + [partial]
    cfg = greedy(len(ids), stop=("c ",))
    deltas, st = collect(scripted(tiny_host, ids), Prompt.from_text("hi"), cfg)
    assert st.finish_reason == "stop"
    assert st.text == "".join(deltas) == "ab"


def test_scripted_stop_string_across_tokens(tiny_host):
    tok = tiny_host.tokenizer
    ids = tok("The answer is 42.\nQuestion: next", add_special_tokens=False)["input_ids"]
    deltas, st = collect(scripted(tiny_host, ids), Prompt.from_text("hi"), greedy(30, stop=("\nQuestion:",)))
    assert st.text == "".join(deltas) == "The answer is 42."
    assert st.finish_reason == "stop"
    # Nothing after the stop string was decoded.
    assert tok.decode(st.token_ids).startswith("The answer is 42.\nQuestion")
    assert "next" not in tok.decode(st.token_ids)


def test_sampler_follows_the_distribution(gen):
    probs = torch.tensor([0.1, 0.0, 0.6, 0.3] + [0.0] * 60)
    logits = torch.log(probs)
    rng = torch.Generator().manual_seed(0)
    cfg = GenerationConfig(temperature=1.0)
    counts = torch.bincount(torch.tensor([gen._pick(logits, cfg, rng) for _ in range(4000)]), minlength=64)
    assert counts[1] == 0 and counts[4:].sum() == 0
    torch.testing.assert_close(counts[[0, 2, 3]] / 4000.0, torch.tensor([0.1, 0.6, 0.3]), atol=0.03, rtol=0)
    top2 = GenerationConfig(temperature=1.0, top_k=2)
    assert {gen._pick(logits, top2, rng) for _ in range(300)} == {2, 3}
    nucleus = GenerationConfig(temperature=1.0, top_p=0.65)
    assert {gen._pick(logits, nucleus, rng) for _ in range(300)} == {2, 3}


def test_partial_stop_holdback():
    assert _partial_stop("hello wor", ("world",)) == 3
    assert _partial_stop("hello", ("world",)) == 0
    assert _partial_stop("ab", ("b", "abc")) == 2
    assert _partial_stop("x", ()) == 0


# -- sampling -------------------------------------------------------------------------------------------------


def test_sampling_is_reproducible_with_a_seed(gen, tiny_host, sheets):
    prompt = sheet_prompt(tiny_host.tokenizer, sheets)
    cfg = GenerationConfig(max_new_tokens=20, temperature=1.2, seed=123)
    a, b = gen.generate(prompt, cfg), gen.generate(prompt, cfg)
    assert a.token_ids == b.token_ids
    others = {
        tuple(gen.generate(prompt, GenerationConfig(max_new_tokens=20, temperature=1.2, seed=s)).token_ids)
        for s in (1, 2, 3)
    }
    assert len(others | {tuple(a.token_ids)}) > 1, "different seeds never changed the sample"
    assert a.token_ids != gen.generate(prompt, greedy(20)).token_ids or len(others) > 1


def test_top_k_1_and_tiny_top_p_are_greedy(gen, free_run):
    prompt, free = free_run
    for cfg in (
        GenerationConfig(max_new_tokens=40, temperature=2.0, top_k=1, seed=5),
        GenerationConfig(max_new_tokens=40, temperature=2.0, top_p=1e-6, seed=5),
    ):
        assert gen.generate(prompt, cfg).token_ids == free.token_ids


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_new_tokens": 0},
        {"max_new_tokens": -1},
        {"max_new_tokens": 2.5},
        {"temperature": -0.1},
        {"top_p": 0},
        {"top_p": 1.5},
        {"top_k": -1},
        {"ignore_eos": "yes"},
    ],
)
def test_generation_config_validation(kwargs):
    with pytest.raises(InputError):
        GenerationConfig(**kwargs)


def test_empty_stop_strings_are_ignored():
    assert GenerationConfig(stop=("", "x")).stop == ("x",)


# -- bad cheat sheets and long prompts -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad, match",
    [
        (torch.zeros(4, 32), "hidden size 32"),
        (torch.zeros(4, 64, dtype=torch.float16), "dtype"),
        (torch.zeros(4, 64, dtype=torch.bfloat16), "dtype"),
        (torch.full((4, 64), float("nan")), "NaN"),
        (torch.tensor([[float("inf")] * 64]), "infinite"),
        (torch.zeros(1, 4, 64), "shape"),
        (torch.zeros(0, 64), "shape"),
    ],
)
def test_bad_cheat_sheets(gen, tiny_host, bad, match):
    prompt = sheet_prompt(tiny_host.tokenizer, [bad])
    with pytest.raises(CheatSheetError, match=match):
        gen.generate(prompt, greedy(2))
    with pytest.raises(CheatSheetError):
        gen.check_cheat_sheet(bad)


def test_non_tensor_piece(gen):
    with pytest.raises(CheatSheetError):
        gen.generate(Prompt(("text", [[0.0] * 64])), greedy(2))  # type: ignore[arg-type]


def test_prompt_over_the_window(gen, tiny_host):
    window = tiny_host.context_window
    huge = torch.zeros(window, 64)
    with pytest.raises(ContextTooLongError, match="window of 4096"):
        gen.generate(sheet_prompt(tiny_host.tokenizer, [huge]), greedy(2))
    long_text = "word " * (window + 10)
    with pytest.raises(ContextTooLongError):
        gen.generate(Prompt.from_text(long_text), greedy(2))
    # A prompt that fits alone but not with max_new_tokens is refused too, naming the fix.
    fits = torch.zeros(window - 100, 64)
    with pytest.raises(ContextTooLongError, match="max_new_tokens"):
        gen.generate(Prompt((fits,)), greedy(200))


def test_empty_prompt(gen):
    with pytest.raises(InputError):
        gen.generate(Prompt(("",)), greedy(2))


def test_unknown_adapter(gen):
    with pytest.raises(AdapterError):
        gen.generate(Prompt.from_text("Hi"), greedy(2), adapter="nope")


def test_a_paused_stream_does_not_leak_grad_mode_into_the_caller(gen):
    """Between tokens the caller's code runs with its own autograd state (training code, callbacks)."""
    it = gen.stream(Prompt.from_text("Once upon a time"), GenerationConfig(max_new_tokens=6))
    next(it)
    assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
    x = torch.ones(2, requires_grad=True)
    (x * 2).sum().backward()  # would fail inside a leaked no_grad/inference_mode
    assert x.grad is not None
    it.close()
