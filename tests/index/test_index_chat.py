"""LLoCOLLM.chat / stream_chat: LlamaIndex messages through the core conversation API (LLoCO.prompt_chat)."""

from __future__ import annotations

import pytest
from llama_index.core.base.llms.types import ChatMessage, ImageBlock, MessageRole, TextBlock

from lloco_index import LLoCOLLM, LLoCORetriever, keys
from lloco_index.llm import to_core_messages
from lloco_runtime.errors import InputError
from lloco_runtime.prompt import ChatMessage as CoreMessage
from lloco_runtime.service import LLoCOService

GROUP = "lighthouses"
QUESTION = "Who was the first keeper of the lighthouse?"
HISTORY = [
    ChatMessage(role=MessageRole.SYSTEM, content="You answer in one word."),
    ChatMessage(role=MessageRole.USER, content="Which town is this about?"),
    ChatMessage(role=MessageRole.ASSISTANT, content="Gull Rock."),
    ChatMessage(role=MessageRole.USER, content=QUESTION),
]


@pytest.fixture(scope="module")
def llm(index_lloco, index_store) -> LLoCOLLM:
    return LLoCOLLM(index_lloco, store=index_store, max_new_tokens=8)


@pytest.fixture(scope="module")
def ids(index_store, ingested) -> list[int]:
    return [
        n.node.metadata[keys.CHUNK_ID]
        for n in LLoCORetriever(index_store, group=GROUP, top_k=2).retrieve(QUESTION)
    ]


def test_roles_map_to_the_core_messages():
    assert to_core_messages(HISTORY) == [
        CoreMessage("system", "You answer in one word."),
        CoreMessage("user", "Which town is this about?"),
        CoreMessage("assistant", "Gull Rock."),
        CoreMessage("user", QUESTION),
    ]


def test_chat_answers_as_the_core_conversation_api(llm, ids, index_lloco, index_store):
    out = llm.chat(HISTORY, cheat_sheet_ids=ids)
    sheets = LLoCOService(index_lloco, index_store).cheat_sheets(ids)  # in the decoder's dtype
    core = index_lloco.answer_chat(to_core_messages(HISTORY), sheets, max_new_tokens=8)
    assert out.message.role == MessageRole.ASSISTANT and out.message.content == core.text.strip()
    prompt = index_lloco.prompt_chat(to_core_messages(HISTORY), sheets)
    assert out.raw["prompt_tokens"] > 0 and out.raw["context_vectors"] == prompt.context_vectors == 8
    # the history is in the prompt, before the cheat sheets; the system message replaces the template's
    head = prompt.pieces[0]
    assert "Gull Rock." in head and "You answer in one word." in head
    assert index_lloco.template.system not in head
    streamed = list(llm.stream_chat(HISTORY, cheat_sheet_ids=ids))
    assert streamed[-1].message.content.strip() == out.message.content
    assert streamed[-1].message.content == "".join(r.delta for r in streamed)
    assert streamed[-1].raw["cheat_sheets"] == 2


def test_one_user_message_is_exactly_complete(llm, ids):
    chat = llm.chat([ChatMessage(role="user", content=QUESTION)], cheat_sheet_ids=ids)
    done = llm.complete(QUESTION, cheat_sheet_ids=ids)
    assert chat.message.content == done.text and chat.raw["prompt_tokens"] == done.raw["prompt_tokens"]
    no_ctx = llm.chat([ChatMessage(role="user", content=QUESTION)])
    assert no_ctx.raw["context_vectors"] == 0 and no_ctx.raw["cheat_sheets"] == 0


@pytest.mark.parametrize(
    "role",
    [MessageRole.TOOL, MessageRole.FUNCTION, MessageRole.DEVELOPER, MessageRole.CHATBOT, MessageRole.MODEL],
)
def test_other_roles_are_refused_with_the_fix(llm, role):
    with pytest.raises(InputError, match=rf"message 0 has role '{role.value}'.*system, user and assistant"):
        llm.chat([ChatMessage(role=role, content="x"), ChatMessage(role="user", content=QUESTION)])
    with pytest.raises(InputError, match="role"):
        llm.stream_chat([ChatMessage(role=role, content="x"), ChatMessage(role="user", content=QUESTION)])


def test_bad_conversations_are_refused(llm):
    with pytest.raises(InputError, match="last message must be a non-empty user message"):
        llm.chat(HISTORY[:3])
    with pytest.raises(InputError, match="system messages first"):
        llm.chat([HISTORY[1], HISTORY[0], HISTORY[3]])
    with pytest.raises(InputError, match="non-empty list"):
        llm.chat([])
    image = ChatMessage(
        role="user", blocks=[TextBlock(text=QUESTION), ImageBlock(url="https://example.com/a.png")]
    )
    with pytest.raises(InputError, match="ImageBlock.*text only"):
        llm.chat([image])
