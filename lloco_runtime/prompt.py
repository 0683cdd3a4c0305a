"""The one prompt template shared by training and serving, with a slot for the context.

A :class:`Prompt` is a list of pieces: strings (tokenised) and tensors (cheat-sheet vectors spliced in as
input embeddings). The template renders the model's chat template around a sentinel, then cuts the text
at the sentinel: ``[prefix | context | suffix]``. Prepending is the special case of an empty prefix.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from .errors import ConfigError, InputError

_SLOT = "\u2063LLOCO_CONTEXT_SLOT\u2063"
LLAMA2_CHAT = "llama-2-chat"
#: chat formats a template can name instead of the tokenizer's own chat template
CHAT_FORMATS = (LLAMA2_CHAT,)

Piece = str | torch.Tensor


def _fields(name: str, template: object) -> list[str]:
    """The ``str.format`` placeholders of a template, in order; ConfigError if it is not a valid one."""
    if not isinstance(template, str):
        raise ConfigError(f"PromptTemplate.{name} must be a string, got {type(template).__name__}")
    try:
        parsed = [(f, spec, conv) for _, f, spec, conv in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        raise ConfigError(f"PromptTemplate.{name} is not a valid format string ({exc}); "
                          "write literal braces as {{ and }}") from None
    if any(spec or conv for _, spec, conv in parsed):
        raise ConfigError(f"PromptTemplate.{name}: placeholders take no conversion or format spec")
    return [f for f, _, _ in parsed]


@dataclass(frozen=True)
class Prompt:
    """Ordered prompt pieces. ``special_tokens``: add the tokenizer's BOS etc. to the first text piece
    (plain-text prompts); chat-templated prompts already carry their special tokens."""

    pieces: tuple[Piece, ...]
    special_tokens: bool = False

    @classmethod
    def from_text(cls, text: str) -> Prompt:
        """A plain-text prompt, tokenised as is (no template)."""
        if not isinstance(text, str) or not text.strip():
            raise InputError("prompt text is empty")
        return cls((text,), special_tokens=True)

    @property
    def context_vectors(self) -> int:
        """How many spliced embedding vectors the prompt carries."""
        return sum(int(p.shape[0]) for p in self.pieces if isinstance(p, torch.Tensor))


@dataclass(frozen=True)
class PromptTemplate:
    """System message and user message formats; ``{context}`` marks where the context goes."""

    system: str | None = field(default="Answer the question using the context. Answer briefly.")
    user: str = field(default="Context:\n{context}\n\nQuestion: {question}")
    user_no_context: str = field(default="Question: {question}")
    #: None: the tokenizer's chat template (plain text without one); "llama-2-chat": LLaMA-2-chat's
    #: ``<s>[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user} [/INST]`` whatever the tokenizer carries
    chat_format: str | None = None

    def __post_init__(self) -> None:
        if self.chat_format is not None and self.chat_format not in CHAT_FORMATS:
            raise ConfigError(f"unknown chat_format {self.chat_format!r}; use None (the tokenizer's chat template) "
                              f"or one of {', '.join(CHAT_FORMATS)}")
        user = _fields("user", self.user)
        if user.count("context") != 1 or "question" not in user or set(user) - {"context", "question"}:
            raise ConfigError("PromptTemplate.user needs exactly one {context} and a {question} placeholder and "
                              f"no others (found {user}); write literal braces as {{{{ and }}}}")
        plain = _fields("user_no_context", self.user_no_context)
        if "question" not in plain or set(plain) - {"question"}:
            raise ConfigError("PromptTemplate.user_no_context needs {question} and no other placeholder "
                              f"(found {plain}); write literal braces as {{{{ and }}}}")

    def _render(self, tokenizer, user_text: str) -> str:
        if self.chat_format == LLAMA2_CHAT:
            bos = getattr(tokenizer, "bos_token", None) or ""
            head = f"<<SYS>>\n{self.system}\n<</SYS>>\n\n" if self.system else ""
            return f"{bos}[INST] {(head + user_text).strip()} [/INST]"
        messages = ([{"role": "system", "content": self.system}] if self.system else [])
        messages.append({"role": "user", "content": user_text})
        if getattr(tokenizer, "chat_template", None):
            return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        head = f"{self.system}\n\n" if self.system else ""
        return f"{head}{user_text}\n\nAnswer:"

    def build(self, tokenizer, question: str,
              context: str | torch.Tensor | Sequence[torch.Tensor] | None = None) -> Prompt:
        """Render ``question`` with ``context``: text, one tensor ``[n, hidden]``, a list of tensors (one per
        chunk, concatenated in order), or ``None`` for the no-context variant."""
        if not isinstance(question, str) or not question.strip():
            raise InputError("question is empty")
        if context is None:
            return Prompt((self._render(tokenizer, self.user_no_context.format(question=question)),))
        question = question.replace(_SLOT, "")
        text = self._render(tokenizer, self.user.format(context=_SLOT, question=question))
        prefix, suffix = text.split(_SLOT)
        if isinstance(context, str):
            middle: tuple[Piece, ...] = (context,)
        elif isinstance(context, torch.Tensor):
            middle = (context,)
        else:
            middle = tuple(context)
            if not middle:
                raise InputError("context is an empty list of cheat sheets; pass None for no context")
        return Prompt(tuple(p for p in (prefix, *middle, suffix) if not (isinstance(p, str) and p == "")))


def llama2_chat_template() -> PromptTemplate:
    """The default system and user messages in LLaMA-2-chat's format (the LLoCO paper's decoder prompt)."""
    return PromptTemplate(chat_format=LLAMA2_CHAT)
