"""The one prompt template shared by training and serving, with a slot for the context.

A :class:`Prompt` is a list of pieces: strings (tokenised) and tensors (cheat-sheet vectors spliced in as
input embeddings). The template renders the model's chat template around a sentinel, then cuts the text
at the sentinel: ``[prefix | context | suffix]``. Prepending is the special case of an empty prefix.
"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from .errors import ConfigError, InputError

_SLOT = "\u2063LLOCO_CONTEXT_SLOT\u2063"
LLAMA2_CHAT = "llama-2-chat"
#: chat formats a template can name instead of the tokenizer's own chat template
CHAT_FORMATS = (LLAMA2_CHAT,)

Piece = str | torch.Tensor
#: roles a chat message may have
ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class ChatMessage:
    """One turn of a conversation: ``role`` is ``"system"``, ``"user"`` or ``"assistant"``."""

    role: str
    content: str


MessageLike = ChatMessage | Mapping[str, str] | tuple[str, str]


def chat_messages(messages: Sequence[MessageLike]) -> list[ChatMessage]:
    """Checked :class:`ChatMessage` objects from messages, ``{"role", "content"}`` dicts or ``(role, content)``
    pairs: system messages only first, then user and assistant turns, the last one a non-empty user turn."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence) or not messages:
        raise InputError("messages must be a non-empty list of chat messages (role and content)")
    out = []
    for i, m in enumerate(messages):
        if isinstance(m, ChatMessage):
            role, content = m.role, m.content
        elif isinstance(m, Mapping):
            role, content = m.get("role"), m.get("content")
        elif isinstance(m, tuple) and len(m) == 2:
            role, content = m
        else:
            raise InputError(
                f"message {i} is a {type(m).__name__}; use ChatMessage, a {{'role', 'content'}} "
                "dict or a (role, content) pair"
            )
        if role not in ROLES:
            raise InputError(f"message {i} has role {role!r}; use one of {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise InputError(f"message {i} content must be a string, got {type(content).__name__}")
        if role == "system" and any(o.role != "system" for o in out):
            raise InputError(
                f"message {i} is a system message after the conversation started; put system messages first"
            )
        out.append(ChatMessage(role, content.replace(_SLOT, "")))
    if out[-1].role != "user" or not out[-1].content.strip():
        raise InputError("the last message must be a non-empty user message (the question to answer)")
    return out


def _fields(name: str, template: object) -> list[str]:
    """The ``str.format`` placeholders of a template, in order; ConfigError if it is not a valid one."""
    if not isinstance(template, str):
        raise ConfigError(f"PromptTemplate.{name} must be a string, got {type(template).__name__}")
    try:
        parsed = [(f, spec, conv) for _, f, spec, conv in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        raise ConfigError(
            f"PromptTemplate.{name} is not a valid format string ({exc}); "
            "write literal braces as {{ and }}"
        ) from None
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
            raise ConfigError(
                f"unknown chat_format {self.chat_format!r}; use None (the tokenizer's chat template) "
                f"or one of {', '.join(CHAT_FORMATS)}"
            )
        user = _fields("user", self.user)
        if user.count("context") != 1 or "question" not in user or set(user) - {"context", "question"}:
            raise ConfigError(
                "PromptTemplate.user needs exactly one {context} and a {question} placeholder and "
                f"no others (found {user}); write literal braces as {{{{ and }}}}"
            )
        plain = _fields("user_no_context", self.user_no_context)
        if "question" not in plain or set(plain) - {"question"}:
            raise ConfigError(
                "PromptTemplate.user_no_context needs {question} and no other placeholder "
                f"(found {plain}); write literal braces as {{{{ and }}}}"
            )

    def _render(
        self, tokenizer, user_text: str, system: str | None = None, history: Sequence[ChatMessage] = ()
    ) -> str:
        """The decoder's text for earlier turns ``history`` (user/assistant, in order) and the last user turn
        ``user_text``, under ``system`` (the template's system message when None)."""
        system = self.system if system is None else (system or None)
        turns = [*history, ChatMessage("user", user_text)]
        if self.chat_format == LLAMA2_CHAT:
            bos = getattr(tokenizer, "bos_token", None) or ""
            eos = getattr(tokenizer, "eos_token", None) or ""
            head = f"<<SYS>>\n{system}\n<</SYS>>\n\n" if system else ""
            text, user = "", None
            for t in turns:
                if t.role == "user":
                    user = (head + t.content).strip() if not text and user is None else t.content.strip()
                    text += f"{bos}[INST] {user} [/INST]"
                else:
                    text += f" {t.content.strip()} {eos}"
            return text
        messages = [{"role": "system", "content": system}] if system else []
        messages += [{"role": t.role, "content": t.content} for t in turns]
        if getattr(tokenizer, "chat_template", None):
            return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        head = f"{system}\n\n" if system else ""
        past = "".join(
            f"{t.content}\n\n" if t.role == "user" else f"Answer: {t.content}\n\n" for t in history
        )
        return f"{head}{past}{user_text}\n\nAnswer:"

    def build(
        self, tokenizer, question: str, context: str | torch.Tensor | Sequence[torch.Tensor] | None = None
    ) -> Prompt:
        """Render ``question`` with ``context``: text, one tensor ``[n, hidden]``, a list of tensors (one per
        chunk, concatenated in order), or ``None`` for the no-context variant."""
        if not isinstance(question, str) or not question.strip():
            raise InputError("question is empty")
        return self._build(tokenizer, question, context)

    def build_chat(
        self,
        tokenizer,
        messages: Sequence[MessageLike],
        context: str | torch.Tensor | Sequence[torch.Tensor] | None = None,
    ) -> Prompt:
        """Render a conversation: the last user message is the question and takes the context exactly as
        :meth:`build` does; earlier user/assistant turns come before it verbatim, and a leading system
        message replaces the template's. One user message gives the same prompt as :meth:`build`."""
        msgs = chat_messages(messages)
        system = "\n\n".join(m.content for m in msgs if m.role == "system") or None
        turns = [m for m in msgs if m.role != "system"]
        return self._build(tokenizer, turns[-1].content, context, system=system, history=turns[:-1])

    def _build(
        self,
        tokenizer,
        question: str,
        context,
        *,
        system: str | None = None,
        history: Sequence[ChatMessage] = (),
    ) -> Prompt:
        if context is None:
            return Prompt(
                (self._render(tokenizer, self.user_no_context.format(question=question), system, history),)
            )
        question = question.replace(_SLOT, "")
        text = self._render(tokenizer, self.user.format(context=_SLOT, question=question), system, history)
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
