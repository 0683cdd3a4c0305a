"""Fixtures of the ``lloco serve`` suite: a store with 2 groups (tiny model + encoder saved to folders, the
default MiniLM retrieval embedder as the server uses), each group with its own active adapter, and the Serve
application running on a loopback port in a local Ray with 2 CPUs (session scope: started once for the
whole suite, shut down after)."""

from __future__ import annotations

import socket
import uuid

import pytest

GROUPS = ("alpha", "beta")
TEXTS = {
    "lighthouse": "The lighthouse at Carrow Point was built in 1852 after the schooner Margaret Ann was lost on "
    "the rocks. Its tower is forty-one metres tall and made from grey granite quarried on Skerra.",
    "pump": "To reset the pump, switch off the mains supply and wait thirty seconds. Press the red reset "
    "button until the green light flashes twice, then switch the supply back on.",
    "bread": "To bake sourdough bread, feed the starter with flour and water the night before. Knead the dough, "
    "let it rise slowly and bake it in a hot Dutch oven until the crust turns deep brown.",
}
QUESTIONS = [
    "When was the lighthouse built?",
    "How do I reset the pump?",
    "How is sourdough baked?",
    "What is the tower made of?",
]
MAX_NEW = 8


def pytest_configure(config):
    config.addinivalue_line("markers", "ray: starts a local Ray cluster and a Ray Serve application")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def served(pg_url, tiny_model_dir, tiny_llama_factory, tmp_path_factory):
    """``(base_url, service, store, info)``: the running server and an in-process ``LLoCOService`` over the same
    model, encoder and store (the reference answers). ``info``: adapter ids and the bad adapter's id."""
    import ray
    from lloco_test_support import make_adapter_bytes

    from lloco_runtime import ContextEncoder, EncoderConfig, LLoCO, load_model
    from lloco_runtime.serve import ServeOptions, start_server, stop_server
    from lloco_runtime.service import LLoCOService
    from lloco_runtime.store import CheatSheetStore, DocumentInput

    enc_dir = tmp_path_factory.mktemp("serve-encoder")
    host = load_model(tiny_model_dir, device="cpu", dtype="float32")
    ContextEncoder(host, EncoderConfig(segment_length=32, summary_length=4)).save(enc_dir)
    lloco = LLoCO.from_pretrained(tiny_model_dir, encoder=enc_dir, device="cpu", dtype="float32")
    schema = "serve_" + uuid.uuid4().hex[:8]
    store = CheatSheetStore(pg_url, schema=schema)
    adapters = {}
    for i, g in enumerate(GROUPS):
        store.ingest(
            [DocumentInput(f"{g}-{k}", v, {"topic": k}) for k, v in TEXTS.items()],
            group=g,
            encoder=lloco.encoder,
        )
        info = store.register_adapter(
            g,
            make_adapter_bytes(lloco.host, lloco.encoder.fingerprint, seed=100 + i),
            base_fingerprint=lloco.host.fingerprint,
            encoder_fingerprint=lloco.encoder.fingerprint,
            activate=True,
        )
        adapters[g] = info.id
    # An adapter made on another model (different weights): stored fine, but loading it on the server fails
    # with a FingerprintMismatchError (a 500 with lloco's message).
    other_dir = tmp_path_factory.mktemp("serve-other-llama")
    other = load_model(tiny_llama_factory(other_dir, seed=7), device="cpu", dtype="float32")
    bad = store.register_adapter(
        GROUPS[0],
        make_adapter_bytes(other, lloco.encoder.fingerprint, seed=5),
        base_fingerprint=other.fingerprint,
        encoder_fingerprint=lloco.encoder.fingerprint,
        activate=False,
    )
    service = LLoCOService(lloco, store)

    opts = ServeOptions(
        model=str(tiny_model_dir),
        encoder=str(enc_dir),
        url=pg_url,
        schema=schema,
        device="cpu",
        dtype="float32",
        replicas=2,
        max_batch_size=8,
        batch_wait_s=0.02,
        port=_free_port(),
        torch_threads=1,
        request_timeout_s=60,
    )
    url = start_server(opts, num_cpus=2)
    try:
        yield url, service, store, {"adapters": adapters, "bad_adapter": bad.id, "opts": opts}
    finally:
        stop_server()
        ray.shutdown()
        store.drop_schema()
        store.close()
