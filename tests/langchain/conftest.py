"""Fixtures for the LangChain integration: a tiny runtime over the embedded Postgres with two groups.

- ``lc_service``: an ``LLoCOService`` on a private tiny Llama (untied embeddings, so greedy answers depend on
  the context and the adapter) with a small encoder, over a ``CheatSheetStore`` in its own schema of the
  session's embedded Postgres (``pg_url``) with a fast hashing embedder. Two groups, ``alpha`` and ``beta``,
  each with documents and its own active LoRA.
"""

from __future__ import annotations

import inspect

import pytest
import torch
from lloco_test_support import HashingEmbedder, make_adapter_bytes

LC_ADAPTER_MODULES = ("q_proj", "v_proj", "o_proj", "down_proj")

GROUP_TEXTS = {
    "alpha": {
        "lighthouse": (
            "The lighthouse at Carrow Point was built in 1852 after the schooner Margaret Ann was lost on the "
            "rocks. Its tower is forty-one metres tall and made from grey granite quarried on Skerra. The lamp "
            "was first lit in November and has shone every night since, except for two weeks in 1916. For most "
            "of its history the light was tended by a keeper and two assistants who lived in cottages below."
        ),
        "harbour": (
            "The harbour below the headland shelters a fleet of small fishing boats. Herring were landed there "
            "until the nineteen sixties, when the shoals moved north. Today the quay is used by a ferry to "
            "Skerra that runs twice a day in summer and once a day in winter, weather permitting."
        ),
    },
    "beta": {
        "pump": (
            "To reset the pump, switch off the mains supply and wait thirty seconds. Open the front panel and "
            "press the red reset button until the green light flashes twice. Close the panel and switch the "
            "supply back on. If the light stays amber, the filter is blocked and must be cleaned or replaced."
        ),
        "filter": (
            "The filter cartridge should be replaced every six months or after two thousand hours of running, "
            "whichever comes first. Use only cartridges of type F-20. Dispose of old cartridges as general "
            "waste; they contain no hazardous materials. Record each replacement in the service log."
        ),
    },
}


@pytest.hookimpl(hookwrapper=True, trylast=True)
def pytest_pycollect_makeitem(collector, name, obj):
    """Mark coroutine tests here (ours and langchain-tests' standard ones) for pytest-asyncio (strict mode).

    ``trylast`` makes this wrapper the inner one, so the mark exists before pytest-asyncio's wrapper looks.
    """
    outcome = yield
    result = outcome.get_result()
    for node in (result if isinstance(result, list) else [result]) if result else []:
        if isinstance(node, pytest.Function) and inspect.iscoroutinefunction(getattr(node, "obj", None)):
            node.add_marker(pytest.mark.asyncio)


@pytest.fixture(scope="session")
def lc_lloco(tmp_path_factory, default_tokenizer):
    """Tiny random Llama (seed 1) with *untied* embeddings: a tied one just repeats the prompt's last token."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from lloco_runtime import ContextEncoder, EncoderConfig, LLoCO, load_model

    tok = default_tokenizer
    cfg = LlamaConfig(
        vocab_size=len(tok),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.eos_token_id,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
    )
    torch.manual_seed(1)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        model.model.embed_tokens.weight.normal_(0.0, 1.0)
    folder = tmp_path_factory.mktemp("lc-tiny")
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    host = load_model(folder, device="cpu", dtype="float32")
    return LLoCO(host, ContextEncoder(host, EncoderConfig(segment_length=32, summary_length=4)))


@pytest.fixture(scope="session")
def lc_store(pg_url):
    from lloco_runtime.store import CheatSheetStore

    store = CheatSheetStore(pg_url, schema="lloco_langchain_test", embedder=HashingEmbedder())
    yield store
    store.drop_schema()
    store.close()


@pytest.fixture(scope="session")
def lc_service(lc_lloco, lc_store):
    from lloco_runtime.service import LLoCOService
    from lloco_runtime.store import DocumentInput

    for i, (group, docs) in enumerate(GROUP_TEXTS.items()):
        lc_store.ingest(
            [DocumentInput(doc_id, text, {"topic": group}) for doc_id, text in docs.items()],
            group=group,
            encoder=lc_lloco.encoder,
        )
        lc_store.register_adapter(
            group,
            make_adapter_bytes(
                lc_lloco.host, lc_lloco.encoder.fingerprint, seed=10 + i, target_modules=LC_ADAPTER_MODULES
            ),
            base_fingerprint=lc_lloco.host.fingerprint,
            encoder_fingerprint=lc_lloco.encoder.fingerprint,
            activate=True,
        )
    return LLoCOService(lc_lloco, lc_store)


@pytest.fixture(scope="session")
def lc_llm(lc_service):
    from lloco_langchain import LLoCOLLM

    return LLoCOLLM(service=lc_service, max_new_tokens=8)


@pytest.fixture(scope="session")
def make_chain(lc_service, lc_llm):
    """``make_chain(group, **retriever_kwargs)`` -> a LLoCO chain over that group."""
    from lloco_langchain import LLoCORetriever, create_lloco_chain

    def make(group: str = "alpha", **kw):
        kw.setdefault("k", 2)
        return create_lloco_chain(LLoCORetriever(service=lc_service, group=group, **kw), lc_llm)

    return make
