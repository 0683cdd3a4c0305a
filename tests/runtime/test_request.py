"""The request layer's rules, without a model or a database: ids, reading order, one group and one adapter per
answer, the no-chunks error, adapter routing, retrieval options and the numbers of a run."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from lloco_runtime import (
    AdapterChoice,
    ChunkRef,
    GenerationResult,
    InputError,
    NotFoundError,
    RunStats,
    chunk_ids,
    generation_config,
    payload,
    reading_order,
    route_adapter,
)
from lloco_runtime.request import adapter_key, stored_adapter_id
from lloco_runtime.store import DEFAULT_MODE, RetrievalMode, RetrievalOptions


def test_chunk_ids_are_integers_or_their_digits():
    assert chunk_ids([3, "4", 0]) == [3, 4, 0]
    assert chunk_ids(None) == []
    for bad in (["abc"], [True], [-1], [1.0], ["4.0"], ["\u0663"], "12", b"12", 12):
        with pytest.raises(InputError, match="chunk ids"):
            chunk_ids(bad)


def test_reading_order_is_document_then_position():
    chunks = [SimpleNamespace(doc_id=d, ordinal=o) for d, o in [("b", 0), ("a", 2), ("a", 1)]]
    assert [(c.doc_id, c.ordinal) for c in reading_order(chunks)] == [("a", 1), ("a", 2), ("b", 0)]


def ref(cid, doc="d", ordinal=0, *, n=5, group="g", adapter=7):
    return ChunkRef(cid, doc, ordinal, n, group, "default", adapter)


def test_payload_orders_dedupes_and_keeps_the_groups_adapter():
    p = payload([ref(9, "b", 0), ref("3", "a", 1), ref(5, "a", 0), ref(9, "b", 0)])
    assert p.chunk_ids == [5, 3, 9] and p.adapter_id == 7 and p.group == "g" and p.collection == "default"
    assert p.raw_tokens == 15  # each chunk once


def test_payload_refuses_none_mixed_groups_and_mixed_adapters():
    with pytest.raises(InputError, match="no chunks matching.*no documents"):
        payload([])
    with pytest.raises(InputError, match="several groups"):
        payload([ref(1), ref(2, group="h")])
    with pytest.raises(InputError, match="different adapters"):
        payload([ref(1), ref(2, adapter=None)])


def test_adapter_routing():
    assert route_adapter(AdapterChoice.ACTIVE, 7) == 7
    assert route_adapter("active", None) is None
    assert route_adapter(AdapterChoice.NONE, 7) is None and route_adapter(None, 7) is None
    assert route_adapter(3, 7) == 3 and route_adapter("reader", 7) == "reader"  # an explicit id wins


def test_stored_adapter_ids_are_checked_in_the_store():
    class Store:
        def get_adapter(self, adapter_id):
            if adapter_id != 7:
                raise NotFoundError(
                    f"adapter {adapter_id} does not exist; list adapters with `lloco adapters list`"
                )

    assert adapter_key(7, Store()) == adapter_key("7", Store()) == "7"
    assert adapter_key(None, Store()) is None and adapter_key("mine", None) == "mine"
    with pytest.raises(NotFoundError, match="lloco adapters list"):
        adapter_key(8, Store())
    for bad in ("no-such-adapter", True, -1):
        with pytest.raises(NotFoundError, match="integer ids"):
            stored_adapter_id(bad)


def test_retrieval_options_have_one_default_mode_and_accept_strings():
    assert DEFAULT_MODE == RetrievalMode.HYBRID == "hybrid"
    assert RetrievalOptions().mode is RetrievalMode.HYBRID
    opts = RetrievalOptions(mode="dense", top_k=2)
    assert opts.mode is RetrievalMode.DENSE and opts.as_kwargs()["top_k"] == 2
    assert opts.replace(mode="fulltext").mode is RetrievalMode.FULLTEXT
    with pytest.raises(InputError, match="unknown retrieval mode 'sparse'"):
        RetrievalOptions(mode="sparse")


def test_generation_config_and_run_stats():
    cfg = generation_config({"max_new_tokens": 8, "stop": None}, {"stop": "\n", "temperature": 0.5, "x": 1})
    assert cfg.max_new_tokens == 8 and cfg.stop == ("\n",) and cfg.temperature == 0.5
    r = GenerationResult("hi", [1, 2], 20, 8, "eos", 0.1, 0.2)
    assert RunStats.of(r, cheat_sheets=2).to_dict() == {
        "finish_reason": "eos",
        "prompt_tokens": 20,
        "completion_tokens": 2,
        "context_vectors": 8,
        "cheat_sheets": 2,
        "prefill_s": 0.1,
        "total_s": 0.2,
    }
