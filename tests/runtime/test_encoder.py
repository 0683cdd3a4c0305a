"""Context encoder: segmentation, batched compression, accumulation, LoRA, persistence, AutoCompressor layout."""

from __future__ import annotations

import itertools
import json

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from lloco_runtime import (
    Chunk,
    ConfigError,
    ContextEncoder,
    EncoderConfig,
    FingerprintMismatchError,
    InputError,
    ModelLoadError,
    load_model,
)
from lloco_runtime.encoder import CONFIG_FILE, ENCODER_ADAPTER, WEIGHTS_FILE

TEXT = (
    "The lighthouse keeper climbed the spiral stairs every evening at dusk. "
    "He trimmed the wick, polished the great lens and wrote the weather in a leather log. "
    "Ships passing the reef at night steered by his light, and none was lost in forty years. "
    "When the lamp was finally automated, he kept climbing the stairs anyway, out of habit."
)


def ids_of(encoder, text):
    return encoder.tokenizer(text, add_special_tokens=False)["input_ids"]


def max_diff(a, b):
    return (a.float() - b.float()).abs().max().item()


# -- config -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"segment_length": 0},
        {"segment_length": -4},
        {"segment_length": 32.0},
        {"segment_length": "32"},
        {"segment_length": True, "summary_length": 1},
        {"accumulate": "yes"},
        {"summary_length": 0},
        {"summary_length": 2.5},
        {"segment_length": 8, "summary_length": 16},
        {"summary_layer": -1},
        {"summary_layer": "3"},
        {"lora_r": -1},
        {"lora_r": 4, "lora_alpha": 0},
        {"lora_r": 4, "lora_target_modules": ()},
        {"lora_r": 4, "lora_target_modules": ["q_proj", 3]},
    ],
)
def test_config_validation(kwargs):
    with pytest.raises(ConfigError):
        EncoderConfig(**kwargs)


def test_config_round_trip_and_ratio():
    cfg = EncoderConfig(
        segment_length=512,
        summary_length=16,
        accumulate=True,
        summary_layer=4,
        lora_r=8,
        lora_target_modules=["q_proj", "v_proj"],
    )
    assert cfg.ratio == 32
    assert cfg.lora_target_modules == ("q_proj", "v_proj")
    assert EncoderConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_single_target_module_string_is_not_split_into_letters():
    cfg = EncoderConfig(lora_r=4, lora_target_modules="q_proj")
    assert cfg.lora_target_modules == ("q_proj",)


def test_summary_layer_beyond_the_model(tiny_host):
    with pytest.raises(ConfigError, match="number of layers"):
        ContextEncoder(tiny_host, EncoderConfig(segment_length=32, summary_length=4, summary_layer=3))


def test_summary_embeddings_start_from_eos(tiny_encoder, tiny_host):
    eos = tiny_host.tokenizer.eos_token_id
    expected = tiny_host.model.get_input_embeddings().weight[eos]
    assert tiny_encoder.embed_summary.weight.shape == (4, 64)
    for row in tiny_encoder.embed_summary.weight:
        assert torch.equal(row, expected)


# -- segmentation ----------------------------------------------------------------------------------------


def check_split(encoder, text, chunks):
    n = encoder.config.segment_length
    assert chunks, "no chunks"
    assert "".join(c.text for c in chunks) == text
    all_ids = [i for c in chunks for i in c.token_ids]
    assert all_ids == ids_of(encoder, text), "tokens lost, duplicated or reordered"
    assert [c.ordinal for c in chunks] == list(range(len(chunks)))
    assert all(c.n_tokens == n for c in chunks[:-1])
    assert 1 <= chunks[-1].n_tokens <= n
    assert chunks[0].char_start == 0 and chunks[-1].char_end == len(text)
    for a, b in itertools.pairwise(chunks):
        assert a.char_end == b.char_start
    for c in chunks:
        assert text[c.char_start : c.char_end] == c.text


def test_split_long_text_is_segmented_not_truncated(tiny_encoder):
    text = TEXT * 3
    chunks = tiny_encoder.split(text)
    n_tokens = len(ids_of(tiny_encoder, text))
    assert n_tokens > 3 * 32
    assert len(chunks) == -(-n_tokens // 32)
    check_split(tiny_encoder, text, chunks)


@pytest.fixture(scope="module")
def splitter(tiny_host):
    """Very short segments, so random texts cross many boundaries."""
    return ContextEncoder(tiny_host, EncoderConfig(segment_length=5, summary_length=1))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(min_size=1, max_size=200))
def test_split_property_random_text(splitter, text):
    no_tokens = not splitter.tokenizer(text, add_special_tokens=False)["input_ids"]
    if not text.strip() or "\x00" in text or no_tokens:  # e.g. only control characters the tokenizer drops
        with pytest.raises(InputError):
            splitter.split(text)
        return
    check_split(splitter, text, splitter.split(text))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    words=st.lists(
        st.sampled_from(
            [
                "naïve",
                "café",
                "東京",
                "🎉",
                "👩‍🔬",
                " ",
                "\n\n",
                "word",
                "\t",
                "ß",
                "e\u0301",
                "  ",
                "x" * 30,
                "!!",
                "1234567",
            ]
        ),
        min_size=1,
        max_size=60,
    )
)
def test_split_property_multibyte_and_whitespace(splitter, words):
    text = "".join(words)
    assume(text.strip())
    check_split(splitter, text, splitter.split(text))


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "   ",
        "\n\t \n",
        b"",
        b"  ",
        b"\xff\xfe\x00\x01",
        b"caf\xe9",
        "text with a NUL\x00 byte",
        b"bin\x00ary",
        None,
        42,
        ["a list"],
    ],
)
def test_split_bad_input(tiny_encoder, bad):
    with pytest.raises(InputError):
        tiny_encoder.split(bad)


def test_split_accepts_utf8_bytes(tiny_encoder):
    text = "Zürich café " * 10
    from_bytes = tiny_encoder.split(text.encode("utf-8"))
    assert [c.token_ids for c in from_bytes] == [c.token_ids for c in tiny_encoder.split(text)]


def test_compress_empty_text_is_a_clear_error(tiny_encoder):
    with pytest.raises(InputError, match="empty"):
        tiny_encoder.compress("   \n ")


# -- compression ----------------------------------------------------------------------------------------


def test_compress_shapes_and_counts(tiny_encoder, tiny_host):
    text = TEXT * 2
    sheets = tiny_encoder.compress(text)
    chunks = tiny_encoder.split(text)
    assert len(sheets.tensors) == len(chunks) > 1
    assert all(
        t.shape == (4, 64) and t.dtype == torch.float32 and t.device.type == "cpu" for t in sheets.tensors
    )
    assert sheets.n_vectors == 4 * len(chunks)
    assert sheets.stacked().shape == (4 * len(chunks), 64)
    assert sheets.source_tokens == len(ids_of(tiny_encoder, text))
    assert sheets.fingerprint == tiny_encoder.fingerprint
    assert all(torch.isfinite(t).all() for t in sheets.tensors)
    # Different chunks give different cheat sheets (the summary reads its segment).
    assert max_diff(sheets.tensors[0], sheets.tensors[1]) > 1e-3


def test_cheat_sheet_is_the_same_alone_or_in_a_batch(tiny_encoder):
    texts = [TEXT, "Short one.", TEXT[50:], "Two words", TEXT[::-1], "x"]
    ids = [ids_of(tiny_encoder, t)[:32] for t in texts]
    assert len({len(i) for i in ids}) > 3, "need chunks of different lengths"
    alone = [tiny_encoder.compress_chunks([i])[0] for i in ids]
    together = tiny_encoder.compress_chunks(ids, batch_size=len(ids))
    in_pairs = tiny_encoder.compress_chunks(ids[::-1], batch_size=2)[::-1]
    for a, b, c in zip(alone, together, in_pairs):
        torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(c, a, atol=1e-4, rtol=1e-4)
    # ...and the sheets are not trivially equal to each other.
    assert max_diff(alone[0], alone[1]) > 1e-3


def test_compress_chunks_accepts_chunks_and_id_lists(tiny_encoder):
    chunks = tiny_encoder.split(TEXT)
    a = tiny_encoder.compress_chunks(chunks)
    b = tiny_encoder.compress_chunks([list(c.token_ids) for c in chunks])
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert tiny_encoder.compress_chunks([]) == []


def test_compress_chunks_bad_input(tiny_encoder):
    with pytest.raises(InputError, match="segment_length"):
        tiny_encoder.compress_chunks([list(range(10, 43))])  # 33 tokens > 32
    with pytest.raises(InputError, match="empty"):
        tiny_encoder.compress_chunks([[1, 2], []])
    with pytest.raises(InputError):
        tiny_encoder.compress_chunks([[1, 2]], batch_size=0)


def test_accumulation_changes_later_segments_only(tiny_host, tiny_encoder):
    acc = ContextEncoder(tiny_host, EncoderConfig(segment_length=32, summary_length=4, accumulate=True))
    text = TEXT * 2
    plain = tiny_encoder.compress(text).tensors
    accumulated = acc.compress(text).tensors
    assert len(plain) == len(accumulated) >= 3
    torch.testing.assert_close(accumulated[0], plain[0], atol=1e-4, rtol=1e-4)
    for p, a in zip(plain[1:], accumulated[1:]):
        assert max_diff(p, a) > 1e-3
    assert acc.fingerprint != tiny_encoder.fingerprint
    # Segment i reads the summaries of segments 0..i-1 as a soft prompt, in order.
    chunks = acc.split(text)
    with torch.inference_mode():
        third = acc.summarize([chunks[2].token_ids], [torch.cat(accumulated[:2])])[0]
    torch.testing.assert_close(third, accumulated[2], atol=1e-4, rtol=1e-4)


def test_summary_layer(tiny_host, tiny_encoder):
    ids = [ids_of(tiny_encoder, TEXT)[:32]]
    final = tiny_encoder.compress_chunks(ids)[0]
    layer0 = ContextEncoder(tiny_host, EncoderConfig(segment_length=32, summary_length=4, summary_layer=0))
    layer1 = ContextEncoder(tiny_host, EncoderConfig(segment_length=32, summary_length=4, summary_layer=1))
    # Layer 0 is the input embeddings: the summary tokens' own embeddings come back unchanged.
    torch.testing.assert_close(layer0.compress_chunks(ids)[0], layer0.embed_summary.weight.detach())
    mid = layer1.compress_chunks(ids)[0]
    assert max_diff(mid, final) > 1e-3
    assert max_diff(mid, layer0.embed_summary.weight.detach()) > 1e-3
    assert len({tiny_encoder.fingerprint, layer0.fingerprint, layer1.fingerprint}) == 3


def test_compression_ignores_decoder_adapter_state(make_tiny_host, tiny_config):
    """Compression runs with adapters disabled even if a decoder LoRA is loaded and active."""
    from peft import LoraConfig

    host = make_tiny_host()
    enc = ContextEncoder(host, tiny_config)
    ids = [ids_of(enc, TEXT)[:32]]
    before = enc.compress_chunks(ids)[0]
    host.add_adapter("decoder", LoraConfig(r=4, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))
    with torch.no_grad():
        for name, p in host.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 1.0)
    with host.using("decoder"):
        pass  # the decoder adapter is now the active one
    torch.testing.assert_close(enc.compress_chunks(ids)[0], before)


# -- fingerprints and persistence --------------------------------------------------------------------------


def test_fingerprint_identity(tiny_host, tiny_encoder):
    same = ContextEncoder(tiny_host, EncoderConfig(segment_length=32, summary_length=4))
    assert same.fingerprint == tiny_encoder.fingerprint
    assert (
        ContextEncoder(tiny_host, EncoderConfig(segment_length=64, summary_length=4)).fingerprint
        != tiny_encoder.fingerprint
    )
    with torch.no_grad():
        same.embed_summary.weight[0, 0] += 1
    assert same.fingerprint == tiny_encoder.fingerprint  # cached until invalidated
    same.invalidate_fingerprint()
    assert same.fingerprint != tiny_encoder.fingerprint


def test_save_load_round_trip(tiny_host, tmp_path):
    enc = ContextEncoder(tiny_host, EncoderConfig(segment_length=32, summary_length=4, accumulate=True))
    with torch.no_grad():
        enc.embed_summary.weight.normal_(0, 1)
    enc.invalidate_fingerprint()
    sheets = enc.compress(TEXT)
    enc.save(tmp_path / "enc")
    assert (tmp_path / "enc" / CONFIG_FILE).exists() and (tmp_path / "enc" / WEIGHTS_FILE).exists()
    meta = json.loads((tmp_path / "enc" / CONFIG_FILE).read_text())
    assert meta["fingerprint"] == enc.fingerprint
    loaded = ContextEncoder.load(tmp_path / "enc", tiny_host)
    assert loaded.config == enc.config
    assert loaded.fingerprint == enc.fingerprint
    assert torch.equal(loaded.embed_summary.weight, enc.embed_summary.weight)
    again = loaded.compress(TEXT)
    for a, b in zip(sheets.tensors, again.tensors):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_load_onto_a_different_base_model(tiny_host, tiny_llama_factory, tmp_path):
    ContextEncoder(tiny_host, EncoderConfig(segment_length=32, summary_length=4)).save(tmp_path / "enc")
    other = load_model(tiny_llama_factory(tmp_path / "other", seed=7), device="cpu")
    with pytest.raises(FingerprintMismatchError, match="load the matching decoder"):
        ContextEncoder.load(tmp_path / "enc", other)


def test_load_from_a_non_encoder_folder(tiny_host, tmp_path):
    with pytest.raises(ModelLoadError, match=CONFIG_FILE):
        ContextEncoder.load(tmp_path, tiny_host)


def _randomise_encoder_lora(host, scale=0.5):
    with torch.no_grad():
        n = 0
        for name, p in host.model.named_parameters():
            if "lora_B" in name and ENCODER_ADAPTER in name:
                p.normal_(0, scale)
                n += 1
    assert n > 0


def test_encoder_lora(make_tiny_host, tmp_path):
    host = make_tiny_host()
    plain = ContextEncoder(host, EncoderConfig(segment_length=32, summary_length=4))
    ids = [ids_of(plain, TEXT)[:32], ids_of(plain, TEXT)[5:20]]
    base = plain.compress_chunks(ids)
    enc = ContextEncoder(host, EncoderConfig(segment_length=32, summary_length=4, lora_r=4))
    assert ENCODER_ADAPTER in host.adapter_names()
    assert enc.lora_state(), "no LoRA weights captured"
    # Fresh LoRA (B = 0) is the identity...
    for a, b in zip(enc.compress_chunks(ids), base):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    # ...non-zero LoRA weights change the cheat sheets.
    _randomise_encoder_lora(host)
    enc.invalidate_fingerprint()
    tuned = enc.compress_chunks(ids)
    assert all(max_diff(a, b) > 1e-3 for a, b in zip(tuned, base))
    # The encoder's LoRA must not leak into compression without it (plain encoder on the same host).
    for a, b in zip(plain.compress_chunks(ids), base):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    enc.save(tmp_path / "enc")
    fresh = make_tiny_host()
    loaded = ContextEncoder.load(tmp_path / "enc", fresh)
    assert loaded.has_lora and loaded.fingerprint == enc.fingerprint
    for a, b in zip(loaded.compress_chunks(ids), tuned):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_encoder_lora_is_off_during_decoding(make_tiny_host, tiny_host):
    """A host carrying a (non-trivial) encoder LoRA decodes exactly like the bare base model."""
    from lloco_runtime import GenerationConfig, Generator, Prompt

    host = make_tiny_host()
    ContextEncoder(host, EncoderConfig(segment_length=32, summary_length=4, lora_r=4))
    _randomise_encoder_lora(host, scale=2.0)
    prompt = Prompt.from_text(TEXT[:80])
    cfg = GenerationConfig(max_new_tokens=8)
    assert (
        Generator(host).generate(prompt, cfg).token_ids
        == Generator(tiny_host).generate(prompt, cfg).token_ids
    )


# -- AutoCompressor checkpoints ----------------------------------------------------------------------------


def write_autocompressor(directory, tiny_model_dir, summary):
    """A tiny checkpoint in the AutoCompressor-Llama-2 layout: Llama config + weights + embed_summary."""
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    directory.mkdir()
    cfg = json.loads((tiny_model_dir / "config.json").read_text())
    cfg.update(
        architectures=["LlamaAutoCompressorModel"], summary_length=summary.shape[0], accumulate_summary=True
    )
    (directory / "config.json").write_text(json.dumps(cfg))
    weights = load_file(str(tiny_model_dir / "model.safetensors"))
    weights["embed_summary.weight"] = summary
    save_file(weights, str(directory / "model.safetensors"), metadata={"format": "pt"})
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(directory)
    return directory


def test_from_autocompressor(tiny_model_dir, tiny_host, tmp_path):
    summary = torch.randn(4, 64, generator=torch.Generator().manual_seed(3))
    ckpt = write_autocompressor(tmp_path / "ac", tiny_model_dir, summary)
    enc = ContextEncoder.from_autocompressor(ckpt, segment_length=32, device="cpu", dtype="float32")
    assert enc.config == EncoderConfig(segment_length=32, summary_length=4, accumulate=True)
    assert torch.equal(enc.embed_summary.weight.detach(), summary)
    assert enc.host.fingerprint == tiny_host.fingerprint  # same Llama weights, extra tensor ignored
    sheets = enc.compress(TEXT)
    assert sheets.n_vectors == 4 * len(enc.split(TEXT))
    # Same weights and summary embeddings on the tiny host: identical cheat sheets.
    ref = ContextEncoder(tiny_host, enc.config, summary_weight=summary).compress(TEXT)
    for a, b in zip(sheets.tensors, ref.tensors):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_from_autocompressor_segment_length_defaults(tiny_model_dir, tmp_path):
    ckpt = write_autocompressor(tmp_path / "ac", tiny_model_dir, torch.zeros(4, 64))
    assert ContextEncoder.from_autocompressor(ckpt).config.segment_length == 1536
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["segment_lengths"] = [48, 48]
    (ckpt / "config.json").write_text(json.dumps(cfg))
    assert ContextEncoder.from_autocompressor(ckpt).config.segment_length == 48


def test_from_autocompressor_bad_folders(tiny_model_dir, tmp_path):
    with pytest.raises(ModelLoadError, match="config.json"):
        ContextEncoder.from_autocompressor(tmp_path)
    with pytest.raises(ModelLoadError, match="embed_summary"):
        ContextEncoder.from_autocompressor(tiny_model_dir)
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(ModelLoadError, match="safetensors"):
        ContextEncoder.from_autocompressor(tmp_path)


def test_chunk_is_a_value():
    c = Chunk(ordinal=0, text="ab", token_ids=(1, 2), char_start=0, char_end=2)
    assert c.n_tokens == 2
    assert c == Chunk(0, "ab", (1, 2), 0, 2)


def test_load_refuses_weights_that_do_not_match_the_saved_fingerprint(tiny_host, tiny_encoder, tmp_path):
    from safetensors.torch import load_file, save_file

    from lloco_runtime import FingerprintMismatchError

    d = tiny_encoder.save(tmp_path / "enc")
    tensors = load_file(str(d / "encoder.safetensors"))
    tensors["embed_summary.weight"] = tensors["embed_summary.weight"] + 0.5
    save_file(tensors, str(d / "encoder.safetensors"))
    with pytest.raises(FingerprintMismatchError, match="do not match the fingerprint"):
        ContextEncoder.load(d, tiny_host)
