"""The prompt template: one context slot inside the model's chat template, shared by training and serving."""

from __future__ import annotations

import pytest
import torch

from lloco_runtime import ChatMessage, ConfigError, InputError, Prompt, PromptTemplate
from lloco_runtime.prompt import _SLOT

SHEET = torch.zeros(3, 64)


def test_slot_splits_the_chat_template(default_tokenizer):
    t = PromptTemplate()
    p = t.build(default_tokenizer, "Who wrote it?", SHEET)
    assert len(p.pieces) == 3
    prefix, middle, suffix = p.pieces
    assert middle is SHEET
    assert p.context_vectors == 3
    # The pieces are exactly the rendered chat with the context where the slot was.
    full = t._render(default_tokenizer, t.user.format(context="CTX", question="Who wrote it?"))
    assert prefix + "CTX" + suffix == full
    assert prefix.startswith("<|im_start|>system\n" + t.system)
    assert prefix.endswith("<|im_start|>user\nContext:\n")
    assert suffix == "\n\nQuestion: Who wrote it?<|im_end|>\n<|im_start|>assistant\n"
    assert _SLOT not in prefix + suffix


def test_text_context_uses_the_same_pieces(default_tokenizer):
    t = PromptTemplate()
    as_text = t.build(default_tokenizer, "Q?", "some passage")
    as_sheet = t.build(default_tokenizer, "Q?", SHEET)
    assert as_text.pieces[0] == as_sheet.pieces[0] and as_text.pieces[2] == as_sheet.pieces[2]
    assert as_text.pieces[1] == "some passage"
    assert as_text.context_vectors == 0


def test_several_cheat_sheets_keep_their_order(default_tokenizer):
    a, b, c = torch.zeros(2, 8), torch.ones(4, 8), torch.full((1, 8), 2.0)
    p = PromptTemplate().build(default_tokenizer, "Q?", [a, b, c])
    assert [x for x in p.pieces if isinstance(x, torch.Tensor)] == [a, b, c]
    assert p.context_vectors == 7
    assert isinstance(p.pieces[0], str) and isinstance(p.pieces[-1], str)


def test_no_context_variant(default_tokenizer):
    p = PromptTemplate().build(default_tokenizer, "What is 2+2?", None)
    assert len(p.pieces) == 1 and isinstance(p.pieces[0], str)
    assert "Question: What is 2+2?" in p.pieces[0]
    assert "Context" not in p.pieces[0]
    assert p.pieces[0].endswith("<|im_start|>assistant\n")
    assert p.context_vectors == 0
    assert not p.special_tokens  # the chat template carries its own special tokens


@pytest.mark.parametrize(
    "question",
    [
        "What does {context} mean?",
        "Is {question} {0} {} {{x}} literal?",
        'JSON like {"a": 1}?',
        "unbalanced { brace",
        "} closing first",
    ],
)
def test_question_with_braces_is_kept_verbatim(default_tokenizer, question):
    t = PromptTemplate()
    p = t.build(default_tokenizer, question, SHEET)
    assert len(p.pieces) == 3
    assert f"Question: {question}<|im_end|>" in p.pieces[2]
    q = t.build(default_tokenizer, question, None)
    assert f"Question: {question}<|im_end|>" in q.pieces[0]


def test_question_cannot_inject_a_second_slot(default_tokenizer):
    p = PromptTemplate().build(default_tokenizer, f"evil {_SLOT} question", SHEET)
    assert len(p.pieces) == 3
    assert "evil  question" in p.pieces[2]


def test_slot_at_the_start_prepends(default_tokenizer):
    t = PromptTemplate(system=None, user="{context}{question}")
    p = t.build(default_tokenizer, "Q?", SHEET)
    assert p.pieces[1] is SHEET
    assert p.pieces[0].endswith("<|im_start|>user\n")


class _PlainTokenizer:
    chat_template = None


def test_tokenizer_without_chat_template():
    t = PromptTemplate(system="Be brief.")
    p = t.build(_PlainTokenizer(), "Q?", SHEET)
    assert p.pieces[0] == "Be brief.\n\nContext:\n"
    assert p.pieces[2] == "\n\nQuestion: Q?\n\nAnswer:"
    assert PromptTemplate(system=None).build(_PlainTokenizer(), "Q?").pieces == ("Question: Q?\n\nAnswer:",)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"user": "Question: {question}"},
        {"user": "{context} {context} {question}"},
        {"user": "Context: {context}"},
        {"user": "{context} {question} {other}"},
        {"user": "{context} {question} {"},
        {"user": "{context} {question} {0}"},
        {"user_no_context": "Just text"},
        {"user_no_context": "{context} {question}"},
        {"user_no_context": "{question} {missing}"},
        {"user": "{{context}} {question}"},
        {"user": "{context!r} {question}"},
        {"user": None},
    ],
)
def test_invalid_templates(kwargs):
    with pytest.raises(ConfigError):
        PromptTemplate(**kwargs)


def test_literal_braces_in_templates_are_allowed(default_tokenizer):
    t = PromptTemplate(user='Context: {context}\nAnswer as JSON {{"answer": ...}}\n{question}')
    p = t.build(default_tokenizer, "Q?", SHEET)
    assert '{"answer": ...}' in p.pieces[2]


@pytest.mark.parametrize("question", ["", "   ", None])
def test_empty_question(default_tokenizer, question):
    with pytest.raises(InputError):
        PromptTemplate().build(default_tokenizer, question, SHEET)


def test_empty_list_of_cheat_sheets(default_tokenizer):
    with pytest.raises(InputError, match="pass None"):
        PromptTemplate().build(default_tokenizer, "Q?", [])


def test_plain_text_prompt():
    p = Prompt.from_text("Once upon a time")
    assert p.pieces == ("Once upon a time",) and p.special_tokens
    with pytest.raises(InputError):
        Prompt.from_text("  ")


# -- conversations ---------------------------------------------------------------------------------------------


def test_one_user_message_is_the_question_prompt(default_tokenizer):
    t = PromptTemplate()
    sheets = [torch.zeros(3, 8), torch.ones(2, 8)]
    for ctx in (None, "some text", sheets):
        want = t.build(default_tokenizer, "Who?", ctx)
        got = t.build_chat(default_tokenizer, [{"role": "user", "content": "Who?"}], ctx)
        assert [str(p) if isinstance(p, str) else p.shape for p in got.pieces] == [
            str(p) if isinstance(p, str) else p.shape for p in want.pieces
        ]


def test_conversation_keeps_turns_and_puts_the_context_in_the_last_one(default_tokenizer):
    t = PromptTemplate()
    msgs = [
        ChatMessage("system", "Be terse."),
        ("user", "First question?"),
        ("assistant", "First answer."),
        {"role": "user", "content": "Second question?"},
    ]
    p = t.build_chat(default_tokenizer, msgs, torch.zeros(4, 8))
    prefix, sheet, suffix = p.pieces
    assert isinstance(sheet, torch.Tensor) and sheet.shape == (4, 8)
    assert "Be terse." in prefix and t.system not in prefix
    assert prefix.index("First question?") < prefix.index("First answer.")
    assert "Second question?" in suffix and "First" not in suffix


@pytest.mark.parametrize("fmt", [None, "llama-2-chat"])
def test_conversation_formats_without_the_tokenizers_template(fmt):
    class Plain:
        chat_template = None
        bos_token, eos_token = "<s>", "</s>"

    t = PromptTemplate(chat_format=fmt)
    text = t.build_chat(Plain(), [("user", "Q1?"), ("assistant", "A1"), ("user", "Q2?")]).pieces[0]
    assert text.index("Q1?") < text.index("A1") < text.index("Q2?")
    if fmt == "llama-2-chat":
        assert text.startswith("<s>[INST] <<SYS>>") and text.endswith("Question: Q2? [/INST]")
        assert " A1 </s><s>[INST] " in text
    else:
        assert text.endswith("Question: Q2?\n\nAnswer:")


@pytest.mark.parametrize(
    "messages, match",
    [
        ([], "non-empty list"),
        ("hello", "non-empty list"),
        ([("user", "Q?"), ("assistant", "A")], "last message must be a non-empty user"),
        ([("user", "  ")], "last message must be a non-empty user"),
        ([("robot", "Q?")], "role 'robot'"),
        ([("user", "Q?"), ("system", "late"), ("user", "Q?")], "system message after"),
        ([("user", 3)], "content must be a string"),
        ([42], "is a int"),
    ],
)
def test_bad_conversations(default_tokenizer, messages, match):
    with pytest.raises(InputError, match=match):
        PromptTemplate().build_chat(default_tokenizer, messages)
