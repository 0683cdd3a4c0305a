"""Named settings, kept as data in one place: ``--preset NAME`` on the command line, :func:`get_preset` in Python.

A preset supplies defaults; an explicit flag always wins over it. ``lloco-paper`` is the LLoCO paper's setup
(Tan et al., 2024, and its reference code): the LLaMA-2-chat prompt, the AutoCompressor-Llama-2-7b-6k encoder
with 50 summary vectors per 1,536-token segment and summaries accumulated across a document's segments, and
per-group LoRA adapters with rank 8, alpha 16 on the attention projections q/k/v/o.
"""

from __future__ import annotations

from dataclasses import dataclass

from .encoder import EncoderConfig
from .errors import ConfigError
from .prompt import LLAMA2_CHAT, PromptTemplate


@dataclass(frozen=True)
class Preset:
    """What a preset sets (see :meth:`to_dict`); every field is a default that explicit flags override."""

    name: str
    description: str
    chat_format: str | None
    segment_length: int
    summary_length: int
    accumulate: bool
    lora_r: int
    lora_alpha: int
    lora_dropout: float
    lora_target_modules: tuple[str, ...]

    def template(self) -> PromptTemplate:
        """The decoder prompt: lloco's default messages in the preset's chat format."""
        return PromptTemplate(chat_format=self.chat_format)

    def encoder_config(self) -> EncoderConfig:
        """A fresh encoder's config (summary tokens, no encoder LoRA) with the preset's segmentation."""
        return EncoderConfig(
            segment_length=self.segment_length,
            summary_length=self.summary_length,
            accumulate=self.accumulate,
            lora_r=0,
        )

    def encoder_mismatches(self, config: EncoderConfig) -> list[str]:
        """How an encoder's config departs from the preset (``[]`` if it compresses as the preset says)."""
        wanted = {
            "segment_length": self.segment_length,
            "summary_length": self.summary_length,
            "accumulate": self.accumulate,
            "pooling": "summary",
        }
        return [
            f"{k} is {getattr(config, k)!r}, the preset says {v!r}"
            for k, v in wanted.items()
            if getattr(config, k) != v
        ]

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "description": self.description,
            "prompt_template": self.chat_format or "the tokenizer's chat template",
            "encoder": {
                "segment_length": self.segment_length,
                "summary_length": self.summary_length,
                "accumulate": self.accumulate,
                "pooling": "summary",
                "compression_ratio": self.segment_length / self.summary_length,
            },
            "adapter_lora": {
                "r": self.lora_r,
                "alpha": self.lora_alpha,
                "dropout": self.lora_dropout,
                "target_modules": list(self.lora_target_modules),
            },
        }


LLOCO_PAPER = Preset(
    name="lloco-paper",
    description="The LLoCO paper's setup: LLaMA-2-chat prompt, AutoCompressor-Llama-2-7b-6k encoder (50 summary "
    "vectors per 1,536-token segment, accumulated across a document's segments), group LoRA r8 "
    "alpha16 on q/k/v/o",
    chat_format=LLAMA2_CHAT,
    segment_length=1536,
    summary_length=50,
    accumulate=True,
    lora_r=8,
    lora_alpha=16,
    lora_dropout=0.05,
    lora_target_modules=("q_proj", "k_proj", "v_proj", "o_proj"),
)

PRESETS: dict[str, Preset] = {p.name: p for p in (LLOCO_PAPER,)}


def get_preset(name: str) -> Preset:
    """The preset called ``name``; ConfigError listing the known ones otherwise."""
    preset = PRESETS.get(name) if isinstance(name, str) else None
    if preset is None:
        raise ConfigError(f"unknown preset {name!r}; known presets: {', '.join(sorted(PRESETS))}")
    return preset
