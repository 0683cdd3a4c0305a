"""The paper's setup by command: `lloco encoder import` of AutoCompressor checkpoints and `--preset lloco-paper`.

Tiny random Llamas stand in for AutoCompressor-Llama-2-7b-6k, written in its real layout: a Llama config.json
with the AutoCompressor summary fields and weights that include ``embed_summary.weight``, as one safetensors
file, safetensors shards with an index, or a ``pytorch_model.bin`` written by ``torch.save`` of a state dict.
The CLI runs through ``lloco_runtime.cli.main``.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
import uuid
from pathlib import Path

import pytest
import torch
from lloco_test_support import HashingEmbedder
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer

from lloco_runtime import ContextEncoder, load_model
from lloco_runtime.cli import main
from lloco_runtime.encoder import CONFIG_FILE
from lloco_runtime.errors import ConfigError, FingerprintMismatchError
from lloco_runtime.presets import LLOCO_PAPER, PRESETS, get_preset
from lloco_runtime.prompt import PromptTemplate, llama2_chat_template

TEXT = (
    "The Vell Canal runs thirty-one miles between two market towns. Its trust was founded by the engineer "
    "Tomas Reed, who also built the Harrow Hill Tunnel. The harbour master counted forty boats before the "
    "storm, and the lighthouse keeper rang the bell at dusk so the fleet could find the channel."
)


def write_checkpoint(
    directory: Path,
    tiny_model_dir: Path,
    *,
    layout: str = "safetensors",
    summary_length: int = 4,
    config: dict | None = None,
    summary: bool = True,
    seed: int = 3,
) -> Path:
    """A tiny AutoCompressor-Llama checkpoint folder in ``layout``: safetensors, sharded or bin."""
    directory.mkdir(parents=True)
    cfg = json.loads((tiny_model_dir / "config.json").read_text())
    cfg.update(
        architectures=["LlamaAutoCompressorModel"],
        summary_length=summary_length,
        accumulate_summary=True,
        segment_lengths=[32, 32],
    )
    cfg.update(config or {})
    (directory / "config.json").write_text(json.dumps(cfg))
    weights = load_file(str(tiny_model_dir / "model.safetensors"))
    if summary:
        weights["embed_summary.weight"] = torch.randn(
            summary_length, cfg["hidden_size"], generator=torch.Generator().manual_seed(seed)
        )
    if layout == "safetensors":
        save_file(weights, str(directory / "model.safetensors"), metadata={"format": "pt"})
    elif layout == "sharded":  # embed_summary in the second shard, as in the released checkpoints' index
        names = sorted(weights)
        first = [n for n in names[: len(names) // 2] if n != "embed_summary.weight"]
        shards = {
            "model-00001-of-00002.safetensors": first,
            "model-00002-of-00002.safetensors": [n for n in names if n not in first],
        }
        for file, keys in shards.items():
            save_file({k: weights[k] for k in keys}, str(directory / file), metadata={"format": "pt"})
        index = {"metadata": {}, "weight_map": {k: f for f, keys in shards.items() for k in keys}}
        (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    elif layout == "bin":
        torch.save(weights, directory / "pytorch_model.bin")
    else:
        raise ValueError(layout)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(directory)
    return directory


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def cpu(*argv: str) -> tuple[str, ...]:
    return (*argv, "--device", "cpu", "--dtype", "float32")


# -- lloco encoder import ------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["safetensors", "sharded", "bin"])
def test_encoder_import_then_load_and_compress(layout, tiny_model_dir, tmp_path, capsys):
    ckpt = write_checkpoint(tmp_path / "ac", tiny_model_dir, layout=layout)
    out = tmp_path / "enc-ac"
    code, stdout, err = run(capsys, *cpu("encoder", "import", str(ckpt), "--out", str(out)))
    assert code == 0, err
    assert "4 summary vectors per 32-token segment" in stdout and "accumulation on" in stdout
    assert f"--model {ckpt} --encoder {out}" in stdout
    meta = json.loads((out / CONFIG_FILE).read_text())
    host = load_model(ckpt, device="cpu", dtype="float32")  # the checkpoint's own Llama is the decoder
    enc = ContextEncoder.load(out, host)
    assert (enc.config.segment_length, enc.config.summary_length, enc.config.accumulate) == (32, 4, True)
    assert enc.fingerprint == meta["fingerprint"] and meta["base_fingerprint"] == host.fingerprint
    if layout == "safetensors":
        src = load_file(str(ckpt / "model.safetensors"))["embed_summary.weight"]
    elif layout == "bin":
        src = torch.load(ckpt / "pytorch_model.bin", weights_only=True)["embed_summary.weight"]
    else:
        src = load_file(str(ckpt / "model-00002-of-00002.safetensors"))["embed_summary.weight"]
    assert torch.equal(enc.embed_summary.weight.detach(), src)
    sheets = enc.compress(TEXT)
    assert len(sheets.tensors) == len(enc.split(TEXT)) >= 2  # accumulation across several segments
    assert sheets.n_vectors == 4 * len(sheets.tensors) and sheets.fingerprint == enc.fingerprint
    # The same Llama weights in every layout: one base fingerprint, whatever the file format.
    assert host.fingerprint == load_model(tiny_model_dir, device="cpu", dtype="float32").fingerprint


def test_imported_encoder_refuses_another_decoder(tiny_model_dir, tiny_llama_factory, tmp_path, capsys):
    """The encoder runs on the checkpoint's Llama; another Llama (e.g. a chat model) is refused, not misused."""
    ckpt = write_checkpoint(tmp_path / "ac", tiny_model_dir)
    out = tmp_path / "enc-ac"
    assert run(capsys, *cpu("encoder", "import", str(ckpt), "--out", str(out)))[0] == 0
    other = load_model(tiny_llama_factory(tmp_path / "chat", seed=1), device="cpu", dtype="float32")
    with pytest.raises(FingerprintMismatchError, match="load the matching decoder"):
        ContextEncoder.load(out, other)


def test_encoder_import_out_must_be_new(tiny_model_dir, tmp_path, capsys):
    ckpt = write_checkpoint(tmp_path / "ac", tiny_model_dir)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    code, _, err = run(capsys, *cpu("encoder", "import", str(ckpt), "--out", str(tmp_path / "busy")))
    assert code == 2 and "not an empty folder" in err
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"


def test_refuses_folder_without_config(tiny_model_dir, tmp_path, capsys):
    ckpt = write_checkpoint(tmp_path / "ac", tiny_model_dir)
    (ckpt / "config.json").unlink()
    code, _, err = run(capsys, *cpu("encoder", "import", str(ckpt), "--out", str(tmp_path / "enc")))
    assert code == 1
    assert "has no config.json" in err and "model.safetensors" in err  # names what it found instead
    assert not (tmp_path / "enc").exists()


def test_refuses_config_without_summary_fields(tiny_model_dir, tmp_path, capsys):
    ckpt = write_checkpoint(tmp_path / "ac", tiny_model_dir)
    cfg = json.loads((ckpt / "config.json").read_text())
    for k in ("summary_length", "accumulate_summary", "segment_lengths"):
        del cfg[k]
    (ckpt / "config.json").write_text(json.dumps(cfg))
    code, _, err = run(capsys, *cpu("encoder", "import", str(ckpt), "--out", str(tmp_path / "enc")))
    assert code == 1
    assert "none of the AutoCompressor summary fields (summary_length" in err
    assert "found keys:" in err and "hidden_size" in err and "(4, 64)" in err
    assert not (tmp_path / "enc").exists()


def test_refuses_a_plain_llama(tiny_model_dir, tmp_path, capsys):
    code, _, err = run(capsys, *cpu("encoder", "import", str(tiny_model_dir), "--out", str(tmp_path / "enc")))
    assert code == 1
    assert "no tensor 'embed_summary.weight'" in err and "model.safetensors" in err
    assert "plain Llama checkpoint, not an AutoCompressor" in err


def test_refuses_weights_without_embed_summary(tiny_model_dir, tmp_path, capsys):
    ckpt = write_checkpoint(tmp_path / "ac", tiny_model_dir, summary=False)  # summary fields, no tensor
    code, _, err = run(capsys, *cpu("encoder", "import", str(ckpt), "--out", str(tmp_path / "enc")))
    assert code == 1 and "no tensor 'embed_summary.weight' in the safetensors weights" in err
    assert "plain Llama" not in err  # its config does have the summary fields
    bin_ckpt = write_checkpoint(tmp_path / "ac-bin", tiny_model_dir, summary=False, layout="bin")
    code, _, err = run(capsys, *cpu("encoder", "import", str(bin_ckpt), "--out", str(tmp_path / "enc")))
    assert (
        code == 1
        and "no tensor 'embed_summary.weight' in the bin weights" in err
        and "pytorch_model.bin" in err
    )


def test_refuses_a_non_llama_architecture(tiny_model_dir, tmp_path, capsys):
    ckpt = write_checkpoint(
        tmp_path / "ac",
        tiny_model_dir,
        config={"model_type": "opt", "architectures": ["OPTAutoCompressorModel"]},
    )
    code, _, err = run(capsys, *cpu("encoder", "import", str(ckpt), "--out", str(tmp_path / "enc")))
    assert code == 1
    assert "model_type 'opt'" in err and "OPTAutoCompressorModel" in err and "Llama only" in err


def test_refuses_summary_length_that_disagrees_with_weights(tiny_model_dir, tmp_path, capsys):
    ckpt = write_checkpoint(tmp_path / "ac", tiny_model_dir, config={"summary_length": 6})
    code, _, err = run(capsys, *cpu("encoder", "import", str(ckpt), "--out", str(tmp_path / "enc")))
    assert code == 1 and "summary_length 6" in err and "4 rows" in err


class _Payload:
    """A pickle that creates ``marker`` when unpickled (as any unrestricted ``torch.load`` would)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",)


@pytest.mark.parametrize("layout", ["torch-save", "raw-pickle"])
def test_malicious_bin_is_refused_without_running(layout, tiny_model_dir, tmp_path, capsys):
    ckpt = write_checkpoint(tmp_path / "ac", tiny_model_dir, layout="bin")
    marker = tmp_path / "marker"
    state = torch.load(ckpt / "pytorch_model.bin", weights_only=True)
    if layout == "torch-save":
        torch.save({**state, "payload": _Payload(marker)}, ckpt / "pytorch_model.bin")
    else:
        (ckpt / "pytorch_model.bin").write_bytes(pickle.dumps({"embed_summary.weight": _Payload(marker)}))
    # The payload is live: unrestricted unpickling of the same kind of object does run it.
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(_Payload(probe)))  # the test's own payload
    assert probe.exists()
    code, _, err = run(capsys, *cpu("encoder", "import", str(ckpt), "--out", str(tmp_path / "enc")))
    assert code == 1
    assert "refused to load" in err and "weights_only=True" in err and "pytorch_model.bin" in err
    assert "never unpickles" in err and "safetensors" in err
    assert not marker.exists(), "the pickle's code ran"
    assert not (tmp_path / "enc").exists()


# -- presets --------------------------------------------------------------------------------------------------


def test_preset_lookup():
    p = get_preset("lloco-paper")
    assert p is LLOCO_PAPER and PRESETS["lloco-paper"] is p
    assert (p.segment_length, p.summary_length, p.accumulate) == (1536, 50, True)
    assert (p.lora_r, p.lora_alpha, p.lora_target_modules) == (
        8,
        16,
        ("q_proj", "k_proj", "v_proj", "o_proj"),
    )
    assert p.template() == llama2_chat_template() == PromptTemplate(chat_format="llama-2-chat")
    cfg = p.encoder_config()
    assert (cfg.segment_length, cfg.summary_length, cfg.accumulate, cfg.pooling) == (
        1536,
        50,
        True,
        "summary",
    )
    assert p.encoder_mismatches(cfg) == []
    with pytest.raises(dataclasses.FrozenInstanceError):  # a preset is data, not state
        p.lora_r = 16  # type: ignore[misc]


def test_unknown_preset_lists_the_known_ones(capsys):
    with pytest.raises(ConfigError, match=r"unknown preset 'paper'; known presets: lloco-paper"):
        get_preset("paper")
    code, _, err = run(capsys, "info", "--preset", "paper")
    assert code == 2 and "known presets: lloco-paper" in err


def test_llama2_chat_template(default_tokenizer):
    t = llama2_chat_template()
    sheet = torch.zeros(3, 64)
    prefix, middle, suffix = t.build(default_tokenizer, "Who founded the trust?", sheet).pieces
    assert middle is sheet
    bos = default_tokenizer.bos_token or ""
    assert prefix == f"{bos}[INST] <<SYS>>\n{t.system}\n<</SYS>>\n\nContext:\n"
    assert suffix == "\n\nQuestion: Who founded the trust? [/INST]"
    (plain,) = t.build(default_tokenizer, "Hi?").pieces
    assert plain == f"{bos}[INST] <<SYS>>\n{t.system}\n<</SYS>>\n\nQuestion: Hi? [/INST]"
    with pytest.raises(ConfigError, match="unknown chat_format"):
        PromptTemplate(chat_format="vicuna")


def test_info_shows_what_the_preset_sets(capsys):
    code, stdout, err = run(capsys, "info", "--preset", "lloco-paper")  # no model is loaded for this
    assert code == 0, err
    p = json.loads(stdout)["preset"]
    assert p["name"] == "lloco-paper" and p["prompt_template"] == "llama-2-chat"
    assert p["encoder"] == {
        "segment_length": 1536,
        "summary_length": 50,
        "accumulate": True,
        "pooling": "summary",
        "compression_ratio": 30.72,
    }
    assert p["adapter_lora"] == {
        "r": 8,
        "alpha": 16,
        "dropout": 0.05,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
    }


def test_info_with_an_encoder_shows_how_it_differs(tiny_model_dir, tmp_path, capsys):
    ckpt = write_checkpoint(tmp_path / "ac", tiny_model_dir)
    out = tmp_path / "enc-ac"
    assert run(capsys, *cpu("encoder", "import", str(ckpt), "--out", str(out)))[0] == 0
    code, stdout, err = run(
        capsys, *cpu("info", "--preset", "lloco-paper", "--model", str(ckpt), "--encoder", str(out))
    )
    assert code == 0, err
    info = json.loads(stdout)
    assert info["preset"]["name"] == "lloco-paper"
    assert info["encoder_differs_from_preset"] == [
        "segment_length is 32, the preset says 1536",
        "summary_length is 4, the preset says 50",
    ]
    # Without --encoder, a non-default model gets a fresh encoder with the preset's settings.
    code, stdout, err = run(capsys, *cpu("info", "--preset", "lloco-paper", "--model", str(ckpt)))
    assert code == 0, err
    info = json.loads(stdout)
    assert info["encoder"]["segment_length"] == 1536 and info["encoder"]["summary_length"] == 50
    assert info["encoder"]["accumulate"] is True and info["encoder_differs_from_preset"] == []


def test_encoder_import_with_the_preset_and_explicit_overrides(tiny_model_dir, tmp_path, capsys):
    ckpt = write_checkpoint(
        tmp_path / "ac", tiny_model_dir, summary_length=50, config={"accumulate_summary": False}
    )
    out = tmp_path / "enc"
    code, _, err = run(
        capsys, *cpu("encoder", "import", str(ckpt), "--out", str(out), "--preset", "lloco-paper")
    )
    assert code == 0, err
    cfg = json.loads((out / CONFIG_FILE).read_text())["config"]
    assert (cfg["segment_length"], cfg["summary_length"], cfg["accumulate"]) == (1536, 50, True)
    # Explicit flags win over the preset.
    out2 = tmp_path / "enc2"
    code, _, err = run(
        capsys,
        *cpu(
            "encoder",
            "import",
            str(ckpt),
            "--out",
            str(out2),
            "--preset",
            "lloco-paper",
            "--segment-length",
            "64",
            "--no-accumulate",
        ),
    )
    assert code == 0, err
    cfg = json.loads((out2 / CONFIG_FILE).read_text())["config"]
    assert (cfg["segment_length"], cfg["summary_length"], cfg["accumulate"]) == (64, 50, False)
    # A checkpoint with another number of summary vectors is not the paper's encoder.
    small = write_checkpoint(tmp_path / "ac4", tiny_model_dir, summary_length=4)
    code, _, err = run(
        capsys,
        *cpu("encoder", "import", str(small), "--out", str(tmp_path / "enc3"), "--preset", "lloco-paper"),
    )
    assert code == 1 and "4 summary vectors per segment, not the 50" in err


@pytest.fixture
def captured_finetune(monkeypatch, tmp_path):
    """Run `lloco finetune` up to the training call: the FinetuneConfig and runtime it would train with."""
    import lloco_runtime.store as store_pkg
    import lloco_runtime.training.finetune as ft

    seen: dict = {}

    class _Store:
        def __init__(self, *a, **kw) -> None:
            pass

    def fake_finetune(service, group, *, cfg, **kw):
        seen.update(cfg=cfg, lloco=service.lloco)
        return {
            "val": [{"no_adapter": 1.0, "adapter": 1.0}],
            "adapter_id": 1,
            "n_train": 0,
            "source": "qa",
            "seconds": 0.0,
            "init": "fresh",
            "teacher": None,
        }

    monkeypatch.setattr(store_pkg, "CheatSheetStore", _Store)
    monkeypatch.setattr(ft, "finetune_group", fake_finetune)
    return seen


def test_finetune_preset_and_explicit_flags(captured_finetune, tiny_model_dir, tmp_path, capsys):
    base = cpu("finetune", "--group", "g", "--model", str(tiny_model_dir), "--out", str(tmp_path / "run"))
    code, _, err = run(capsys, *base, "--preset", "lloco-paper")
    assert code == 0, err
    cfg = captured_finetune["cfg"]
    assert (cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout) == (8, 16, 0.05)
    assert cfg.target_modules == ("q_proj", "k_proj", "v_proj", "o_proj") and cfg.from_reader is False
    assert captured_finetune["lloco"].template.chat_format == "llama-2-chat"
    enc = captured_finetune["lloco"].encoder.config
    assert (enc.segment_length, enc.summary_length, enc.accumulate) == (1536, 50, True)
    # Explicit flags override the preset.
    code, _, err = run(
        capsys,
        *base,
        "--preset",
        "lloco-paper",
        "--lora-r",
        "4",
        "--lora-alpha",
        "12",
        "--target-modules",
        "q_proj,v_proj",
    )
    assert code == 0, err
    cfg = captured_finetune["cfg"]
    assert (cfg.lora_r, cfg.lora_alpha, cfg.target_modules) == (4, 12, ("q_proj", "v_proj"))
    assert captured_finetune["lloco"].template.chat_format == "llama-2-chat"
    # No preset: the former defaults and the tokenizer's chat template.
    code, _, err = run(capsys, *base)
    assert code == 0, err
    cfg = captured_finetune["cfg"]
    assert (cfg.lora_r, cfg.lora_alpha, cfg.target_modules) == (
        8,
        16,
        ("q_proj", "k_proj", "v_proj", "o_proj"),
    )
    assert captured_finetune["lloco"].template.chat_format is None and cfg.from_reader is True


# -- end to end: import -> ingest -> ask ---------------------------------------------------------------------


def test_import_ingest_ask_from_the_command_line(pg_url, tiny_model_dir, tmp_path, monkeypatch, capsys):
    import lloco_runtime.store.store as store_mod
    from lloco_runtime.store import CheatSheetStore

    embedder = HashingEmbedder()
    monkeypatch.setattr(store_mod, "default_embedder", lambda: embedder)
    ckpt = write_checkpoint(tmp_path / "ac", tiny_model_dir)
    enc = tmp_path / "enc-ac"
    assert run(capsys, *cpu("encoder", "import", str(ckpt), "--out", str(enc)))[0] == 0
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "canal.txt").write_text(TEXT)
    schema = "t_" + uuid.uuid4().hex[:10]
    db = ("--url", pg_url, "--schema", schema)
    try:
        code, stdout, err = run(
            capsys,
            *cpu(
                "ingest",
                str(tmp_path / "docs"),
                "--group",
                "paper",
                "--model",
                str(ckpt),
                "--encoder",
                str(enc),
                "--no-progress",
                *db,
            ),
        )
        assert code == 0, err
        code, stdout, err = run(
            capsys,
            *cpu(
                "ask",
                "Who founded the trust?",
                "--group",
                "paper",
                "--model",
                str(ckpt),
                "--encoder",
                str(enc),
                "--preset",
                "lloco-paper",
                "--max-new-tokens",
                "4",
                "--json",
                *db,
            ),
        )
        assert code == 0, err
        answer = json.loads(stdout)
        assert answer["context_tokens"] > 0 and answer["sources"]
    finally:
        with CheatSheetStore(pg_url, schema=schema, create=False, embedder=embedder) as store:
            store.drop_schema()
