"""Bad input at every entry point: a specific LLoCOError (or CLI exit code) whose message names the fix, and
the database left exactly as it was (``snapshot`` compares every key row of every lloco table).

Entry points: the Python API (``CheatSheetStore``, ``LLoCOService``, ``LLoCO``), the ``lloco`` CLI (in process,
through ``main``), the LangChain classes and the LlamaIndex classes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from reliability_helpers import TEXTS, docs, make_adapter_bytes, snapshot

from lloco_runtime.cli import main
from lloco_runtime.errors import (
    AdapterError,
    CheatSheetError,
    ContextTooLongError,
    FingerprintMismatchError,
    InputError,
    LLoCOError,
    NotFoundError,
)
from lloco_runtime.store import DocumentInput

# -- files ----------------------------------------------------------------------------------------------------

BAD_FILES = {
    "empty.txt": (b"", "empty"),
    "blank.md": (b"  \n\t \r\n ", "empty or whitespace"),
    "bom_only.txt": (b"\xef\xbb\xbf", "empty"),
    "binary.txt": (bytes(range(256)) * 4, "binary"),
    "latin1.txt": ("café crème brûlée".encode("latin-1"), "not valid UTF-8"),
    "utf16.md": ("hello world".encode("utf-16"), "binary|UTF-8"),
    "image.png": (b"\x89PNG\r\n\x1a\n", "unsupported file type"),
    "empty.jsonl": (b"\n\n", "no documents"),
    "bad_json.jsonl": (
        b'{"id": "a", "text": "fine"}\n{"id": "b", "text": \n',
        r"bad_json.jsonl:2: invalid JSON",
    ),
    "not_object.jsonl": (b'["a", "b"]\n', "must be a JSON object"),
    "no_id.jsonl": (b'{"text": "no id here"}\n', "missing 'doc_id'"),
    "no_text.jsonl": (b'{"id": "x"}\n', "missing 'text'"),
    "text_number.jsonl": (b'{"id": "x", "text": 42}\n', "text must be a string"),
    "blank_text.jsonl": (b'{"id": "x", "text": "   "}\n', "empty or whitespace"),
    "nul_text.jsonl": (b'{"id": "x", "text": "a\\u0000b"}\n', "NUL"),
    "surrogate_text.jsonl": (b'{"id": "x", "text": "broken \\ud800 pair"}\n', "surrogate|Unicode"),
    "surrogate_meta.jsonl": (b'{"id": "x", "text": "fine", "tag": "\\udfff"}\n', "surrogate|Unicode"),
    "surrogate_id.jsonl": (b'{"id": "\\ud800", "text": "fine"}\n', "surrogate|Unicode"),
    "nan_meta.jsonl": (b'{"id": "x", "text": "fine", "score": NaN}\n', "finite"),
    "dup_ids.jsonl": (b'{"id": "x", "text": "one"}\n{"id": "x", "text": "two"}\n', "duplicate doc_id"),
    "bad_id.jsonl": (b'{"id": {"a": 1}, "text": "fine"}\n', "doc_id must be a string"),
    "long_id.jsonl": (('{"id": "' + "x" * 600 + '", "text": "fine"}\n').encode(), "doc_id must be 1-512"),
}


def write_bad(tmp_path: Path, name: str) -> Path:
    p = tmp_path / name
    p.write_bytes(BAD_FILES[name][0])
    return p


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_files_python_api(filled, tiny_encoder, tmp_path, name):
    before = snapshot(filled)
    path = write_bad(tmp_path, name)
    with pytest.raises(InputError, match=BAD_FILES[name][1]) as err:
        filled.ingest_paths([path], group="g", encoder=tiny_encoder)
    assert name in str(err.value), "the message must name the file"
    # The same file among good ones, and into a new group: still nothing written (not even the group).
    good = tmp_path / "good.txt"
    good.write_text("A perfectly good document about harbours.", encoding="utf-8")
    with pytest.raises(InputError):
        filled.ingest_paths([good, path], group="fresh", encoder=tiny_encoder)
    assert snapshot(filled) == before


@pytest.fixture(scope="module")
def cli_filled(pg_url, tiny_encoder):
    """A store with the default embedder (the one the CLI opens), the three texts in default/g. Read-only."""
    from reliability_helpers import new_schema

    from lloco_runtime.embeddings import default_embedder
    from lloco_runtime.store import CheatSheetStore

    s = CheatSheetStore(pg_url, schema=new_schema(), embedder=default_embedder())
    s.ingest(docs(), group="g", encoder=tiny_encoder)
    yield s
    s.drop_schema()
    s.close()


def _cli(argv, capsys) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    "name", ["empty.txt", "binary.txt", "latin1.txt", "bad_json.jsonl", "surrogate_text.jsonl", "image.png"]
)
def test_bad_files_cli(cli_filled, pg_url, tmp_path, capsys, name):
    filled = cli_filled
    before = snapshot(filled)
    path = write_bad(tmp_path, name)
    code, err = _cli(["ingest", path, "--group", "g", "--url", pg_url, "--schema", filled.schema], capsys)
    assert code == 2 and err.startswith("error: ") and name in err
    assert "Traceback" not in err
    assert snapshot(filled) == before


def test_missing_path_and_empty_folder(cli_filled, tiny_encoder, tmp_path, capsys, pg_url):
    filled = cli_filled
    before = snapshot(filled)
    (tmp_path / "empty_dir").mkdir()
    (tmp_path / "empty_dir" / "notes.pdf").write_bytes(b"%PDF")
    for target, match in ((tmp_path / "nope.txt", "no such file"), (tmp_path / "empty_dir", "no .txt")):
        with pytest.raises(InputError, match=match):
            filled.ingest_paths([target], group="g", encoder=tiny_encoder)
        code, err = _cli(
            ["ingest", target, "--group", "g", "--url", pg_url, "--schema", filled.schema], capsys
        )
        assert code == 2 and match in err
    assert snapshot(filled) == before


@pytest.mark.parametrize("bad", [b"bytes", None, 42, "", "  \n", "nul\x00byte", "lone \ud800 surrogate"])
def test_bad_document_objects(filled, tiny_encoder, bad):
    before = snapshot(filled)
    with pytest.raises(InputError):
        filled.ingest([DocumentInput("d", bad)], group="g", encoder=tiny_encoder)
    with pytest.raises(InputError):
        filled.ingest([{"doc_id": "d", "text": "x"}], group="g", encoder=tiny_encoder)
    assert snapshot(filled) == before


# -- a 50 MB document -----------------------------------------------------------------------------------------

RSS_SCRIPT = textwrap.dedent("""
    import json, resource, sys
    from lloco_runtime.errors import InputError
    from lloco_runtime.store.inputs import read_paths
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        read_paths([sys.argv[1]])
        outcome = "read"
    except InputError as exc:
        outcome = "InputError: " + str(exc)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"outcome": outcome, "peak_rss_kb": peak, "before_kb": before}))
""")


def test_50mb_document_is_refused_before_it_is_read(cli_filled, tiny_encoder, tmp_path, capsys, pg_url):
    """Bounded memory for any file size: a text file over the document limit (4 MiB by default) is refused
    from its size alone, so reading a 50 MB file costs no memory at all. Peak RSS is measured in a fresh
    process (``ru_maxrss`` after import vs. after the attempt)."""
    from lloco_runtime.textcheck import max_document_bytes

    big = tmp_path / "big.txt"
    line = b"The lighthouse keeper logged every storm in a green notebook; the ferry ran twice a day.\n"
    with big.open("wb") as f:
        for _ in range(50 * 1024 * 1024 // len(line) + 1):
            f.write(line)
    assert big.stat().st_size >= 50 * 1024 * 1024 > max_document_bytes()
    filled = cli_filled
    before = snapshot(filled)

    out = subprocess.run(
        [sys.executable, "-c", RSS_SCRIPT, str(big)], capture_output=True, text=True, timeout=120, check=True
    )
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["outcome"].startswith("InputError") and "big.txt" in res["outcome"]
    assert "split" in res["outcome"] and "LLOCO_MAX_DOCUMENT_MB" in res["outcome"]
    growth_mb = (res["peak_rss_kb"] - res["before_kb"]) / 1024
    print(
        f"\n50 MB file: peak RSS {res['peak_rss_kb'] / 1024:.0f} MB, growth while reading {growth_mb:.1f} MB"
    )
    assert growth_mb < 20, f"reading a refused 50 MB file grew RSS by {growth_mb:.0f} MB"

    with pytest.raises(InputError, match="over the limit"):
        filled.ingest_paths([big], group="g", encoder=tiny_encoder)
    code, err = _cli(["ingest", big, "--group", "g", "--url", pg_url, "--schema", filled.schema], capsys)
    assert code == 2 and "big.txt" in err
    # The same size arriving as a string (API, JSONL line, framework document): refused before tokenising.
    text = big.read_text(encoding="utf-8")
    with pytest.raises(InputError, match="over the limit"):
        DocumentInput("big", text)
    with pytest.raises(InputError, match="over the limit"):
        tiny_encoder.split(text)
    del text
    assert snapshot(filled) == before


def test_document_at_the_limit_is_chunked_with_bounded_memory(tmp_path, tiny_model_dir):
    """The largest document accepted (a file just under the limit) reads and chunks in a fresh process; its peak
    RSS growth is reported and must stay under a fixed budget."""
    from lloco_runtime.textcheck import max_document_bytes

    limit = max_document_bytes()
    doc = tmp_path / "at_limit.txt"
    line = "The lighthouse keeper logged every storm in a green notebook; the ferry ran twice a day.\n"
    doc.write_text(line * ((limit - 1) // len(line)), encoding="utf-8")
    script = textwrap.dedent("""
        import json, resource, sys
        from lloco_runtime import ContextEncoder, EncoderConfig, load_model
        from lloco_runtime.store.inputs import read_paths
        host = load_model(sys.argv[2], device="cpu", dtype="float32")
        enc = ContextEncoder(host, EncoderConfig(segment_length=512, summary_length=16))
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        (d,) = read_paths([sys.argv[1]])
        chunks = enc.split(d.text)
        ok = "".join(c.text for c in chunks) == d.text
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({"chunks": len(chunks), "tokens": sum(c.n_tokens for c in chunks), "ok": ok,
                          "growth_kb": peak - before, "peak_rss_kb": peak}))
    """)
    model_dir = str(tiny_model_dir)
    out = subprocess.run(
        [sys.executable, "-c", script, str(doc), model_dir],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    res = json.loads(out.stdout.strip().splitlines()[-1])
    growth_mb = res["growth_kb"] / 1024
    print(
        f"\ndocument of {doc.stat().st_size / 2**20:.1f} MiB: {res['tokens']} tokens in {res['chunks']} chunks, "
        f"peak RSS {res['peak_rss_kb'] / 1024:.0f} MB (growth {growth_mb:.0f} MB)"
    )
    assert res["ok"]
    assert growth_mb < 1024, f"chunking a document at the size limit grew RSS by {growth_mb:.0f} MB"


# -- unknown names --------------------------------------------------------------------------------------------


def test_unknown_collection_group_document_adapter_python_api(filled, tiny_lloco):
    from lloco_runtime.service import LLoCOService

    before = snapshot(filled)
    calls = [
        (lambda: filled.retrieve("q", group="nope"), "does not exist"),
        (lambda: filled.retrieve("q", group="g", collection="nope"), "does not exist"),
        (lambda: filled.get_group("nope"), "does not exist"),
        (lambda: filled.list_documents("nope"), "lloco ingest"),
        (lambda: filled.list_chunks("nope"), "lloco ingest"),
        (lambda: filled.get_document("nope", group="g"), "lloco docs list"),
        (lambda: filled.delete_document("nope", group="g"), "lloco docs list"),
        (lambda: filled.delete_document("lighthouse", group="g", collection="nope"), "does not exist"),
        (lambda: filled.delete_group("nope"), "does not exist"),
        (lambda: filled.clear_group("nope"), "does not exist"),
        (lambda: filled.delete_chunks("nope", chunk_ids=[1]), "does not exist"),
        (lambda: filled.delete_collection("nope"), "does not exist"),
        (lambda: filled.list_adapters("nope"), "does not exist"),
        (lambda: filled.get_adapter(987654), "lloco adapters list"),
        (lambda: filled.adapter_weights(987654), "lloco adapters list"),
        (lambda: filled.activate_adapter(987654), "lloco adapters list"),
        (lambda: filled.delete_adapter(987654), "lloco adapters list"),
        (lambda: filled.deactivate_adapter("nope"), "does not exist"),
        (lambda: filled.cheat_sheets([987654]), "does not exist"),
    ]
    service = LLoCOService(tiny_lloco, filled)
    calls += [
        (lambda: service.answer("q?", group="nope"), "does not exist"),
        (lambda: service.answer_chunks("q?", [987654]), "does not exist"),
        (lambda: service.answer_chunks("q?", [], adapter_id=987654), "lloco adapters list"),
        (lambda: tiny_lloco.answer("q?", adapter_id="not-registered"), "unknown adapter"),
    ]
    for call, hint in calls:
        with pytest.raises(NotFoundError, match=hint):
            call()
    assert snapshot(filled) == before


def test_unknown_names_cli(cli_filled, pg_url, capsys, tiny_model_dir):
    filled = cli_filled
    before = snapshot(filled)
    db = ["--url", pg_url, "--schema", filled.schema]
    for argv in (
        ["retrieve", "q", "--group", "nope", *db],
        ["retrieve", "q", "--group", "g", "--collection", "x", *db],
        ["docs", "list", "--group", "nope", *db],
        ["adapters", "list", "--group", "nope", *db],
        ["adapters", "activate", "987654", *db],
        ["delete", "--group", "g", "--doc", "nope", *db],
        ["delete", "--group", "nope", "--yes", *db],
        ["delete", "--collection", "nope", "--yes", *db],
        ["ask", "q?", "--group", "nope", "--model", tiny_model_dir, *db],
    ):
        code, err = _cli(argv, capsys)
        assert code == 1, argv
        assert "error: " in err and ("does not exist" in err or "lloco " in err), err
    code, err = _cli(["db", "status", "--url", pg_url, "--schema", "r_never_made"], capsys)
    assert code == 1 and "lloco db init" in err
    # the group is checked before any model loads: a model path that does not exist is never reached
    code, err = _cli(["ask", "q?", "--group", "nope", "--model", "/nonexistent/model", *db], capsys)
    assert code == 1 and "nope" in err and "/nonexistent/model" not in err, err
    assert snapshot(filled) == before


def test_unknown_names_integrations(filled, tiny_lloco):
    from lloco_index import LLoCOLLM as IndexLLM
    from lloco_index import LLoCORetriever as IndexRetriever
    from lloco_langchain import LLoCOLLM, LLoCORetriever
    from lloco_runtime.service import LLoCOService

    before = snapshot(filled)
    service = LLoCOService(tiny_lloco, filled)
    with pytest.raises(NotFoundError):
        LLoCORetriever(service=service, group="nope").invoke("lighthouse")
    with pytest.raises(NotFoundError):
        LLoCORetriever(service=service, group="g", collection="nope").invoke("lighthouse")
    with pytest.raises(NotFoundError):
        LLoCOLLM(service=service).invoke("q?", cheat_sheet_ids=[987654])
    with pytest.raises(NotFoundError):
        LLoCOLLM(service=service).invoke("q?", adapter_id=987654)
    with pytest.raises(NotFoundError):
        IndexRetriever(filled, group="nope").retrieve("lighthouse")
    with pytest.raises(NotFoundError):
        IndexLLM(tiny_lloco, store=filled).complete("q?", cheat_sheet_ids=[987654])
    with pytest.raises(NotFoundError):
        IndexLLM(tiny_lloco, store=filled).complete("q?", adapter_id=987654)
    assert snapshot(filled) == before


# -- fingerprints ---------------------------------------------------------------------------------------------


def test_fingerprints_that_do_not_match(
    filled, cli_filled, make_tiny_host, tiny_encoder, pg_url, capsys, tiny_model_dir
):
    from lloco_runtime import ContextEncoder, EncoderConfig, LLoCO
    from lloco_runtime.service import LLoCOService

    host = make_tiny_host()
    other = LLoCO(host, ContextEncoder(host, EncoderConfig(segment_length=16, summary_length=2)))
    assert other.encoder.fingerprint != tiny_encoder.fingerprint
    before = snapshot(filled)
    service = LLoCOService(other, filled)
    with pytest.raises(FingerprintMismatchError, match="lloco recompress --group"):
        service.answer("When was the lighthouse built?", group="g")
    ids = [c.chunk_id for c in filled.list_chunks("g")][:2]
    with pytest.raises(FingerprintMismatchError, match="lloco recompress --group"):
        service.answer_chunks("q?", ids)
    # Sheets made by one runtime's encoder, handed to another runtime.
    with pytest.raises(FingerprintMismatchError, match="re-compress"):
        other.answer("q?", tiny_encoder.compress(TEXTS["pump"]))
    # An adapter trained for another encoder: refused at activation, nothing changes.
    weights = make_adapter_bytes(host, other.encoder.fingerprint, seed=3)
    info = filled.register_adapter(
        "g", weights, base_fingerprint=host.fingerprint, encoder_fingerprint=other.encoder.fingerprint
    )
    mid = snapshot(filled)
    with pytest.raises(FingerprintMismatchError, match="re-ingest the group|train"):
        filled.activate_adapter(info.id)
    assert snapshot(filled) == mid
    filled.delete_adapter(info.id)
    # Declared fingerprints that contradict the artifact's own header are refused at registration.
    with pytest.raises(FingerprintMismatchError, match="header"):
        filled.register_adapter(
            "g", weights, base_fingerprint=host.fingerprint, encoder_fingerprint=tiny_encoder.fingerprint
        )
    with pytest.raises(FingerprintMismatchError, match="header"):
        filled.register_adapter(
            "g", weights, base_fingerprint="f" * 64, encoder_fingerprint=other.encoder.fingerprint
        )
    # The CLI with a decoder whose (fresh, default) encoder did not make the group's cheat sheets.
    cli_before = snapshot(cli_filled)
    code, err = _cli(
        [
            "ask",
            "When was the lighthouse built?",
            "--group",
            "g",
            "--model",
            tiny_model_dir,
            "--url",
            pg_url,
            "--schema",
            cli_filled.schema,
            "--max-new-tokens",
            "2",
        ],
        capsys,
    )
    assert code == 1 and "lloco recompress --group" in err
    assert snapshot(cli_filled) == cli_before
    assert snapshot(filled) == before


# -- top_k ----------------------------------------------------------------------------------------------------

BAD_TOP_K = [-1, 0, 1001, 10**12, -(10**12), True, 2.5, "3", None]


@pytest.mark.parametrize("top_k", BAD_TOP_K, ids=repr)
def test_bad_top_k_everywhere(filled, tiny_lloco, top_k):
    from lloco_index import LLoCORetriever as IndexRetriever
    from lloco_langchain import LLoCORetriever
    from lloco_runtime.service import LLoCOService

    before = snapshot(filled)
    service = LLoCOService(tiny_lloco, filled)
    for mode in ("dense", "fulltext", "hybrid"):
        with pytest.raises(InputError, match="top_k must be an integer from 1 to 1000"):
            filled.retrieve("lighthouse", group="g", top_k=top_k, mode=mode)
    with pytest.raises(InputError, match="top_k"):
        service.answer("lighthouse?", group="g", top_k=top_k)
    if not isinstance(top_k, (bool, str)):  # pydantic coerces True/"3" to ints by its own convention
        with pytest.raises((InputError, ValueError)):  # pydantic refuses some values at construction
            LLoCORetriever(service=service, group="g", k=top_k).invoke("lighthouse")
    with pytest.raises(InputError, match="top_k"):
        LLoCORetriever(service=service, group="g").invoke("lighthouse", k=top_k)
    with pytest.raises(InputError, match="top_k"):
        IndexRetriever(filled, group="g", top_k=top_k).retrieve("lighthouse")
    assert snapshot(filled) == before


@pytest.mark.parametrize("value", ["-1", "0", "100000000000", "2.5", "x"])
def test_bad_top_k_cli(cli_filled, pg_url, capsys, value):
    filled = cli_filled
    code, err = (
        _cli(
            [
                "retrieve",
                "lighthouse",
                "--group",
                "g",
                "--url",
                pg_url,
                "--schema",
                filled.schema,
                "--top-k",
                value,
            ],
            capsys,
        )
        if value.lstrip("-").isdigit()
        else (None, None)
    )
    if code is None:  # not an integer: argparse refuses it (exit 2, usage on stderr)
        with pytest.raises(SystemExit) as exc:
            main(["retrieve", "q", "--group", "g", "--top-k", value])
        assert exc.value.code == 2
        return
    assert code == 2 and "top_k must be an integer from 1 to 1000" in err


# -- queries and prompts --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    ["", "   \n", "nul\x00byte", "lone \ud800 surrogate", None, 42],
    ids=["empty", "blank", "nul", "surrogate", "none", "int"],
)
def test_bad_queries(filled, tiny_lloco, query):
    from lloco_langchain import LLoCORetriever
    from lloco_runtime.service import LLoCOService

    before = snapshot(filled)
    service = LLoCOService(tiny_lloco, filled)
    for mode in ("dense", "fulltext", "hybrid"):
        with pytest.raises(InputError):
            filled.retrieve(query, group="g", mode=mode)
    with pytest.raises(InputError):
        service.answer(query, group="g")
    if isinstance(query, str):
        with pytest.raises(InputError):
            LLoCORetriever(service=service, group="g").invoke(query)
    assert snapshot(filled) == before


@pytest.mark.parametrize(
    "filt",
    [
        '{"key": "topic"',
        '{"key": "a) OR 1=1", "op": "==", "value": 1}',
        '{"key": "topic", "op": "LIKE", "value": "x"}',
        "[1, 2]",
        '"topic"',
    ],
)
def test_malformed_filter_cli(cli_filled, pg_url, capsys, filt):
    filled = cli_filled
    code, err = _cli(
        [
            "retrieve",
            "lighthouse",
            "--group",
            "g",
            "--url",
            pg_url,
            "--schema",
            filled.schema,
            "--filter",
            filt,
        ],
        capsys,
    )
    assert code == 2 and err.startswith("error: ")


def test_prompts_longer_than_the_window(filled, cli_filled, tiny_lloco, capsys, pg_url, tiny_model_dir):
    from lloco_index import LLoCOLLM as IndexLLM
    from lloco_langchain import LLoCOLLM
    from lloco_runtime.service import LLoCOService

    before = snapshot(filled)
    window = tiny_lloco.host.context_window
    question = "Why is the lighthouse tower so tall and grey? " * (window // 8)
    assert len(tiny_lloco.host.tokenizer(question)["input_ids"]) > window
    service = LLoCOService(tiny_lloco, filled)
    for call in (
        lambda: service.answer(question, group="g", max_new_tokens=4),
        lambda: tiny_lloco.answer(question, max_new_tokens=4),
        lambda: tiny_lloco.answer("short?", TEXTS["pump"] + " more" * window, max_new_tokens=4),
        lambda: LLoCOLLM(service=service, max_new_tokens=4).invoke(question),
        lambda: IndexLLM(tiny_lloco, store=filled, max_new_tokens=4).complete(question),
    ):
        with pytest.raises(ContextTooLongError, match="window") as err:
            call()
        assert "shorten" in str(err.value) or "fewer" in str(err.value) or "lower" in str(err.value)
    # max_new_tokens alone can push a short prompt over the window.
    with pytest.raises(ContextTooLongError):
        tiny_lloco.answer("short?", max_new_tokens=window)
    code, err = _cli(
        [
            "ask",
            question[: 40 * window],
            "--group",
            "g",
            "--model",
            tiny_model_dir,
            "--url",
            pg_url,
            "--schema",
            cli_filled.schema,
            "--no-adapter",
        ],
        capsys,
    )
    assert (
        code in (1, 2) and "error: " in err
    )  # a fresh encoder: either the window or the fingerprint is named
    assert snapshot(filled) == before


def test_bad_integration_inputs(filled, tiny_lloco):
    from llama_index.core.schema import Document

    from lloco_index import LLoCONodeParser
    from lloco_langchain import LLoCOLLM, LLoCOVectorStore
    from lloco_runtime.service import LLoCOService

    before = snapshot(filled)
    service = LLoCOService(tiny_lloco, filled)
    parser = LLoCONodeParser.from_components(tiny_lloco.encoder, filled, group="g")
    for text in ("", "   ", "nul\x00"):
        with pytest.raises(InputError):
            parser.get_nodes_from_documents(
                [Document(id_="ok", text="Fine text."), Document(id_="bad", text=text)]
            )
    vs = LLoCOVectorStore(service, group="g")
    with pytest.raises(InputError):
        vs.add_texts(["Fine text.", ""])
    with pytest.raises(InputError):
        vs.add_texts(["a", "b"], metadatas=[{}])
    with pytest.raises(InputError):
        vs.add_texts(["Fine text."], metadatas=[{"x": float("nan")}])
    with pytest.raises(InputError):
        LLoCOLLM(service=service).invoke("q?", cheat_sheet_ids="12")
    with pytest.raises(InputError):
        LLoCOLLM(service=service).invoke("q?", unknown_kw=1)
    with pytest.raises(InputError):
        LLoCOLLM(service=service).invoke("")
    assert snapshot(filled) == before


def test_every_error_is_an_lloco_error():
    """The hierarchy: one root, specific leaves, and the built-in base a Python user expects."""
    import lloco_runtime.errors as E

    leaves = [
        E.ConfigError,
        E.InputError,
        E.ModelLoadError,
        E.FingerprintMismatchError,
        E.CheatSheetError,
        E.NotFoundError,
        E.AdapterError,
        E.StoreError,
        E.ContextTooLongError,
    ]
    for cls in leaves:
        assert issubclass(cls, LLoCOError)
    assert issubclass(E.NotFoundError, LookupError) and issubclass(E.InputError, ValueError)
    assert issubclass(E.ContextTooLongError, E.InputError)
    assert not issubclass(CheatSheetError, NotFoundError) and not issubclass(AdapterError, InputError)
