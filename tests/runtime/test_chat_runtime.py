"""Conversations through the runtime: ``answer_chat`` / ``stream_chat`` share the question path."""

from __future__ import annotations

import pytest

from lloco_runtime import InputError


def test_one_user_message_answers_like_answer(tiny_lloco):
    sheets = tiny_lloco.compress("The lighthouse keeper was Ada. " * 6)
    want = tiny_lloco.answer("Who kept the light?", sheets, max_new_tokens=8)
    got = tiny_lloco.answer_chat([("user", "Who kept the light?")], sheets, max_new_tokens=8)
    assert got.token_ids == want.token_ids


def test_history_changes_the_prompt_and_streams(tiny_lloco):
    sheets = tiny_lloco.compress("The lighthouse keeper was Ada. " * 6)
    msgs = [("user", "Where?"), ("assistant", "On the cape."), ("user", "Who kept the light?")]
    p1 = tiny_lloco.prompt_chat(msgs[-1:], sheets)
    p2 = tiny_lloco.prompt_chat(msgs, sheets)
    assert "On the cape." in p2.pieces[0] and "On the cape." not in p1.pieces[0]
    assert p2.context_vectors == p1.context_vectors > 0
    full = tiny_lloco.answer_chat(msgs, sheets, max_new_tokens=8)
    assert "".join(tiny_lloco.stream_chat(msgs, sheets, max_new_tokens=8)) == full.text


def test_bad_messages_fail_before_decoding(tiny_lloco):
    with pytest.raises(InputError, match="last message"):
        tiny_lloco.stream_chat([("assistant", "hi")])
