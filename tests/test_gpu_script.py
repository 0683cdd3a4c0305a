"""The GPU script's recipes (scripts/gpu/train.sh) parse and keep the ratios their names claim.

A GPU minute is rare here: a typo in a variant's options must fail on CPU, not on the lent machine.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from lloco_runtime.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = (ROOT / "scripts" / "gpu" / "train.sh").read_text()
TABLE = (ROOT / "docs" / "encoder-training" / "reading.md").read_text()
SHELL_VALUES = {
    "DATA": "/data",
    "TEACHER": "/teacher.safetensors",
    "DEVICE": "cuda",
    "T_VARIANT": "4.5",
    "HALF": "2.25",
    "BATCH": "32",
    "VAL": "128",
    "EXTRA_VARIANT": "",
    "WORK": "/work",
}


def _expand(text: str) -> list[str]:
    text = text.replace("\\\n", " ")
    text = re.sub(r"\$\{?([A-Z_]+)\}?", lambda m: SHELL_VALUES[m.group(1)], text)
    return shlex.split(text)


def _assignment(name: str) -> list[str]:
    m = re.search(rf'^{name}="(.*?)"$', SCRIPT, re.MULTILINE | re.DOTALL)
    assert m, f"{name}= not found in train.sh"
    return _expand(m.group(1))


def _variants() -> dict[str, list[str]]:
    block = re.search(r"^VARIANTS=\((.*?)^\)", SCRIPT, re.MULTILINE | re.DOTALL)
    assert block, "VARIANTS=( ... ) not found in train.sh"
    out = {}
    for entry in re.findall(r'^\s*"([^"|]+)\|([^"]*)"', block.group(1), re.MULTILINE):
        name, opts = entry
        assert name not in out, f"variant {name} twice"
        out[name] = _expand(opts)
    return out


def _curriculum() -> list[tuple[str, list[str]]]:
    """The two train-encoder calls of the 8x -> 4x curriculum, (out folder, options) each."""
    calls = re.findall(r"\$LLOCO train-encoder \$COMMON \$EMB (.*?)>", SCRIPT, re.DOTALL)
    assert len(calls) == 2, "the curriculum is two train-encoder calls"
    emb = _assignment("EMB")
    out = []
    for call in calls:
        args = _expand(call)
        out.append((args[args.index("--out") + 1], emb + args))
    return out


def _parse(opts: list[str]):
    common = _assignment("COMMON")
    return build_parser().parse_args(["train-encoder", *common, *opts, "--out", "/tmp/x"])


def _ratio(ns) -> float:
    return ns.segment_length / (ns.summary_length + ns.literal_tokens)


VARIANTS = _variants()


def test_the_script_has_the_recipes_the_table_reports():
    assert {"emb4x-mlp", "emb8x-mlp", "mean4x-mlp", "summary4x-mlp", "lit8x16-mlp"} <= set(VARIANTS)
    for name in [*VARIANTS, "emb8to4x-mlp"]:
        assert f"`{name}`" in TABLE, f"{name} has no row in docs/encoder-training/reading.md"


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_each_variant_parses_and_keeps_its_named_ratio(name):
    ns = _parse(VARIANTS[name])
    assert ns.reading and ns.teacher and ns.reader_lora_r == 16
    if ns.encoder:  # goes on from a shipped encoder: its ratio is the shipped one
        return
    m = re.search(r"(\d+)x(\d*)", name)  # emb4x: 4x; lit8x16: vectors at 8x plus 16 literal tokens
    assert m, f"{name}: the name says no ratio"
    shown = f"{name}: {ns.segment_length} tokens -> {ns.summary_length} vectors + {ns.literal_tokens} literal"
    assert ns.segment_length / ns.summary_length == int(m.group(1)), shown
    assert ns.literal_tokens == int(m.group(2) or 0), shown
    assert _ratio(ns) >= 4, shown  # the floor: at least 4x fewer positions


def test_the_curriculum_goes_from_8x_to_4x_carrying_connector_and_reader():
    (first_out, first), (second_out, second) = _curriculum()
    a, b = _parse(first), _parse(second)
    assert _ratio(a) == 8 and _ratio(b) == 4
    assert b.connector_init == f"{first_out}/encoder"
    assert b.reader_init == f"{first_out}/encoder/reader.safetensors"
    assert a.minutes == b.minutes == 2.25  # half the other variants' budget each
    assert second_out.endswith("/runs/emb8to4x-mlp") and "/runs/" not in first_out  # one ranked row
