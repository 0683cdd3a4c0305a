"""End to end with the real default model (SmolLM2-135M-Instruct): answers, and a 32x compress -> answer trip."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lloco_runtime import (
    CheatSheetError,
    CheatSheets,
    ContextEncoder,
    EncoderConfig,
    FingerprintMismatchError,
    InputError,
    LLoCO,
)

pytestmark = pytest.mark.default_model

ESSAYS = Path(__file__).resolve().parents[3] / "shared" / "corpus" / "essays"


@pytest.fixture(scope="module")
def lloco(default_host):
    """The default decoder with a fresh 32x encoder (512 tokens -> 16 vectors)."""
    return LLoCO(
        default_host, ContextEncoder(default_host, EncoderConfig(segment_length=512, summary_length=16))
    )


@pytest.fixture(scope="module")
def long_text(default_host):
    """About 2,000 tokens of prose: a Paul Graham essay from the shared corpus, or generated text."""
    tok = default_host.tokenizer
    essay = ESSAYS / "gap.txt"
    if essay.exists():
        text = essay.read_text(encoding="utf-8")
    else:
        sentences = [
            f"In year {1800 + i}, the town of Aldmere built {i % 7 + 2} new bridges over the river, "
            f"and the council recorded {i * 13 % 97} complaints about the noise."
            for i in range(400)
        ]
        text = " ".join(sentences)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) >= 2000
    # Cut at a sentence end near 2,000 tokens.
    head = tok.decode(ids[:2000])
    return head[: head.rfind(".") + 1]


def test_extractive_answer_from_a_plain_text_passage(lloco):
    passage = "Marie Curie was born in Warsaw in 1867. She moved to Paris in 1891 to study physics."
    res = lloco.answer("In which year did Marie Curie move to Paris?", passage, max_new_tokens=24)
    assert "1891" in res.text, res.text
    assert res.context_vectors == 0
    assert res.finish_reason in ("eos", "length")


def test_round_trip_compress_then_answer(lloco, long_text, default_host):
    tok = default_host.tokenizer
    n_tokens = len(tok(long_text, add_special_tokens=False)["input_ids"])
    assert 1800 <= n_tokens <= 2000
    sheets = lloco.compress(long_text)
    n_chunks = -(-n_tokens // 512)
    assert len(sheets.tensors) == n_chunks == 4
    assert sheets.source_tokens == n_tokens, "text was truncated"
    assert sheets.n_vectors == 16 * n_chunks
    assert all(t.shape == (16, 576) and t.dtype == default_host.dtype for t in sheets.tensors)
    assert all(torch.isfinite(t).all() for t in sheets.tensors)

    res = lloco.answer("What is this essay about?", sheets, max_new_tokens=16)
    assert res.text.strip(), "empty answer"
    assert res.context_vectors == 16 * n_chunks
    assert res.prompt_tokens * 10 < n_tokens, "the prompt should be far shorter than the text"
    # The plain-text baseline goes through the same path and is ~20x longer.
    full = lloco.prompt("What is this essay about?", long_text)
    embeds, _n_text, _ = lloco.generator.embed(full)
    assert embeds.shape[1] > 10 * res.prompt_tokens


def test_segmentation_never_truncates(lloco, long_text):
    chunks = lloco.encoder.split(long_text)
    assert len(chunks) == 4
    assert "".join(c.text for c in chunks) == long_text
    assert [c.n_tokens for c in chunks[:-1]] == [512] * 3


def test_bad_inputs_with_the_default_model(lloco, default_host):
    with pytest.raises(InputError, match="empty"):
        lloco.compress("   ")
    with pytest.raises(CheatSheetError, match="hidden size 64"):
        lloco.answer("Q?", [torch.zeros(4, 64)], max_new_tokens=2)
    with pytest.raises(CheatSheetError, match="dtype"):
        lloco.answer("Q?", [torch.zeros(4, 576, dtype=torch.float16)], max_new_tokens=2)
    foreign = CheatSheets(tensors=[torch.zeros(16, 576)], fingerprint="0" * 64)
    with pytest.raises(FingerprintMismatchError):
        lloco.answer("Q?", foreign, max_new_tokens=2)


@pytest.mark.default_model
@pytest.mark.parametrize("folder", ["encoder-smollm2-135m", "encoder-summary-smollm2-135m"])
def test_shipped_encoders_load_with_their_fingerprints(folder):
    """The encoders shipped in the package stay loadable on the default model, with the saved identity: the
    default (pooled embeddings + literal tokens chosen by its learned selector, 4x, with its reader adapter) and
    the summary-token one (8x, AutoCompressor
    style), which stays a choice."""
    import json
    from pathlib import Path

    import lloco_runtime
    from lloco_runtime import ContextEncoder, LLoCO, load_model
    from lloco_runtime.runtime import shipped_encoder_dir

    d = Path(lloco_runtime.__file__).parent / "assets" / folder
    if not (d / "encoder_config.json").exists():
        pytest.skip("no encoder shipped in this build")
    host = load_model()  # private host: an encoder may inject its LoRA
    enc = ContextEncoder.load(d, host)
    assert enc.fingerprint == json.loads((d / "encoder_config.json").read_text())["fingerprint"]
    sheets = enc.compress("The lighthouse at Carrow Point was built in 1852. " * 20)
    assert sheets.tensors[0].shape == (
        enc.config.summary_length + enc.config.literal_tokens,
        host.hidden_size,
    )
    if folder == "encoder-smollm2-135m":
        assert shipped_encoder_dir() == d
        assert (
            enc.config.ratio >= 4 and enc.reader is not None
        )  # the default reads its sheets with its reader
        assert enc.config.literal_selector == "learned" and enc.config.strict_ratio
        # strict_ratio: the whole document, tail segment included, keeps at least the 4x ratio
        assert 4 * sum(t.shape[0] for t in sheets.tensors) <= sheets.source_tokens
        assert LLoCO(host, enc).reader_id is not None
    else:
        assert enc.config.pooling == "summary" and enc.reader is None
