"""Ingest at scale on Ray Data: ``lloco ingest PATH --group G --ray [ADDRESS]``.

The same documents, chunks, retrieval vectors and cheat sheets as :meth:`CheatSheetStore.ingest`, computed by a
Ray Data pipeline instead of one process:

1. read: the driver reads and validates the inputs (``read_paths``) and skips the documents the group already
   holds unchanged (same content, same encoder fingerprint), exactly as the local ingest does;
2. split + compress: an actor pool (``concurrency=workers``, ``num_cpus=cpus_per_worker`` each) whose actors
   load the model and encoder ONCE, from paths (model, encoder folder, device, dtype; never live objects), and
   turn each document into its encoder chunks and their cheat sheets (the encoder's own ``split`` and
   ``compress_chunks``, one document at a time with the same batch size, so the tensors are those of a local
   ingest, bit for bit on CPU);
3. retrieval-embed: a second actor stage embeds each document's chunk texts (one embedder call per document);
4. write: the driver consumes the stream as documents finish and writes each one with the local ingest's
   :func:`write_document`, in its own transaction (nothing half-written is ever visible).

A run killed at any point loses nothing and duplicates nothing: only committed documents exist, and a rerun
skips them as unchanged. Between stages tensors travel as safetensors bytes and vectors as raw float32 bytes
(no pickle). The driver is the only process that talks to the database, so the store may be the embedded
server of the machine running the command even when the workers run on a remote Ray cluster.
"""

from __future__ import annotations

import functools
import json
import os
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import errors
from .embeddings import Embedder, MiniLMEmbedder
from .errors import ConfigError, InputError, LLoCOError, ModelLoadError
from .store import catalog
from .store.catalog import DEFAULT_COLLECTION
from .store.ingest import (
    PreparedDocument,
    compress_document,
    embed_chunks,
    is_unchanged,
    split_document,
    write_document,
)
from .store.inputs import DocumentInput, check_unique
from .store.names import validate_name
from .store.records import DocumentOutcome, IngestReport

if TYPE_CHECKING:
    from .store import CheatSheetStore

INSTALL_HINT = "pip install 'lloco[serve]'"
EMBED_CPUS = 0.5  # the embedding actor: MiniLM is ~6x cheaper per chunk than the encoder


def import_ray():
    """The ``ray`` module with Ray Data, or a ConfigError saying how to install it."""
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise ConfigError(
            f"`lloco ingest --ray` needs Ray Data, which is not installed ({exc.name or exc}); "
            f"install it with {INSTALL_HINT}"
        ) from None
    return ray


# -- what the workers rebuild -----------------------------------------------------------------------------


@dataclass(frozen=True)
class RuntimeSpec:
    """How a worker loads the encoder's runtime: paths and names, never live objects."""

    model: str | None = None
    encoder: str | None = None
    device: str | None = None
    dtype: str | None = None

    @classmethod
    def of(
        cls,
        model: str | os.PathLike | None = None,
        encoder: str | os.PathLike | None = None,
        device: str | None = None,
        dtype: str | None = None,
        *,
        check_paths: bool = True,
    ) -> RuntimeSpec:
        """Local paths made absolute (workers do not share the driver's working directory). ``check_paths``:
        refuse a path that does not exist here (a local Ray's workers read the same files); off for a remote
        cluster, whose nodes may hold files the driver does not."""

        def absolute(p: str | os.PathLike | None, what: str) -> str | None:
            if p is None or str(p) == "default":
                return None if p is None else str(p)
            path = Path(p).expanduser()
            if path.exists():
                return str(path.resolve())
            if check_paths:
                raise ModelLoadError(
                    f"{what} path {str(p)!r} does not exist; pass a local folder (with a remote "
                    "Ray cluster, a path that exists on its nodes)"
                )
            return str(p)

        return cls(absolute(model, "model"), absolute(encoder, "encoder"), device, dtype)

    def load(self):
        """The runtime, as ``lloco ingest`` loads it (the project default when nothing is named)."""
        from .runtime import LLoCO

        if not any((self.model, self.encoder, self.device, self.dtype)):
            return LLoCO.from_pretrained()
        return LLoCO.from_pretrained(self.model, encoder=self.encoder, device=self.device, dtype=self.dtype)

    @property
    def uses_gpu(self) -> bool:
        return bool(self.device) and str(self.device).startswith("cuda")


def _same(obj: Any) -> Any:
    return obj


def embedder_factory(embedder: Embedder) -> Callable[[], Embedder]:
    """A picklable function that builds ``embedder`` again in a Ray worker.

    The default MiniLM embedder is rebuilt from its model folder; any other embedder is shipped as is (with
    Ray's own serialisation), and one that cannot be is refused with a ConfigError.
    """
    if type(embedder) is MiniLMEmbedder:
        return functools.partial(
            MiniLMEmbedder,
            embedder.model_dir,
            batch_size=embedder.batch_size,
            max_length=embedder.max_length,
            device=embedder.device,
        )
    from ray import cloudpickle

    try:
        cloudpickle.dumps(embedder)
    except Exception as exc:  # noqa: BLE001 - any serialisation failure means the same thing
        raise ConfigError(
            f"the store's retrieval embedder {getattr(embedder, 'name', embedder)!r} cannot be sent "
            f"to Ray workers ({type(exc).__name__}: {exc}); pass embedder_factory=, a function "
            "that builds the same embedder inside a worker"
        ) from None
    return functools.partial(_same, embedder)


# -- the pipeline's stages (run inside Ray actors) -----------------------------------------------------------


def _error_fields(exc: Exception) -> tuple[str, str]:
    return type(exc).__name__, str(exc)


def _sheets_to_bytes(sheets: Sequence[Any]) -> bytes:
    from safetensors.torch import save

    return save({str(i): s.contiguous() for i, s in enumerate(sheets)})


def _sheets_from_bytes(blob: bytes) -> list[Any]:
    from safetensors.torch import load

    tensors = load(blob)
    return [tensors[str(i)] for i in range(len(tensors))]


def _vectors_to_bytes(vectors: np.ndarray) -> bytes:
    from safetensors.numpy import save

    return save({"embeddings": np.ascontiguousarray(vectors, dtype=np.float32)})


def _vectors_from_bytes(blob: bytes) -> np.ndarray:
    from safetensors.numpy import load

    return load(blob)["embeddings"]


def _chunks_to_json(chunks: Sequence[Any]) -> str:
    return json.dumps(
        [
            [
                int(c.ordinal),
                c.text,
                [int(i) for i in c.token_ids],
                getattr(c, "char_start", None),
                getattr(c, "char_end", None),
            ]
            for c in chunks
        ],
        ensure_ascii=False,
    )


def _chunks_from_json(raw: str) -> list[Any]:
    from .encoder import Chunk

    return [
        Chunk(ordinal=o, text=t, token_ids=tuple(ids), char_start=a, char_end=b)
        for o, t, ids, a, b in json.loads(raw)
    ]


class CompressDocuments:
    """Actor of the compress stage: loads the runtime once, then splits and compresses documents."""

    def __init__(self, spec: RuntimeSpec, batch_size: int, threads: int) -> None:
        import torch

        torch.set_num_threads(max(1, threads))
        self.encoder = spec.load().encoder
        self.batch_size = batch_size

    def __call__(self, batch):
        import pyarrow as pa

        cols: dict[str, list] = {
            "idx": [],
            "chunks": [],
            "sheets": [],
            "fingerprint": [],
            "error_type": [],
            "error": [],
        }
        for idx, text, source in zip(
            batch.column("idx").to_pylist(),
            batch.column("text").to_pylist(),
            batch.column("source").to_pylist(),
            strict=True,
        ):
            chunks_json, blob, etype, err = None, None, None, None
            try:
                chunks = split_document(source, text, self.encoder)
                sheets = compress_document(source, chunks, self.encoder, batch_size=self.batch_size)
                chunks_json, blob = _chunks_to_json(chunks), _sheets_to_bytes(sheets)
            except LLoCOError as exc:  # reported with the document; the driver raises it in order
                etype, err = _error_fields(exc)
            cols["idx"].append(idx)
            cols["chunks"].append(chunks_json)
            cols["sheets"].append(blob)
            cols["fingerprint"].append(self.encoder.fingerprint)
            cols["error_type"].append(etype)
            cols["error"].append(err)
        return pa.table(
            {
                "idx": pa.array(cols["idx"], pa.int64()),
                "chunks": pa.array(cols["chunks"], pa.string()),
                "sheets": pa.array(cols["sheets"], pa.binary()),
                "fingerprint": pa.array(cols["fingerprint"], pa.string()),
                "error_type": pa.array(cols["error_type"], pa.string()),
                "error": pa.array(cols["error"], pa.string()),
            }
        )


class EmbedChunks:
    """Actor of the retrieval-embedding stage: builds the embedder once, embeds each document's chunks."""

    def __init__(self, factory: Callable[[], Embedder], threads: int) -> None:
        import torch

        torch.set_num_threads(max(1, threads))
        self.embedder = factory()

    def __call__(self, batch):
        import pyarrow as pa

        out, etypes, errs = [], batch.column("error_type").to_pylist(), batch.column("error").to_pylist()
        for i, raw in enumerate(batch.column("chunks").to_pylist()):
            blob = None
            if raw is not None:
                try:
                    blob = _vectors_to_bytes(embed_chunks(_chunks_from_json(raw), self.embedder))
                except LLoCOError as exc:
                    etypes[i], errs[i] = _error_fields(exc)
            out.append(blob)
        return (
            batch.drop_columns(["error_type", "error"])
            .append_column("embeddings", pa.array(out, pa.binary()))
            .append_column("error_type", pa.array(etypes, pa.string()))
            .append_column("error", pa.array(errs, pa.string()))
        )


def _probe_fingerprint(spec: RuntimeSpec) -> str:
    return spec.load().encoder.fingerprint


def _raise_worker_error(etype: str, message: str) -> None:
    cls = getattr(errors, etype, None)
    if not (isinstance(cls, type) and issubclass(cls, LLoCOError)):
        cls = InputError
    raise cls(message)


_ERROR_LINE = re.compile(r"^([\w.]+(?:Error|Exception)): (.+)$")


def worker_failure(exc: BaseException) -> LLoCOError:
    """The lloco error behind a Ray failure (e.g. an actor whose runtime did not load), with its own type when
    it is a lloco one; else a ModelLoadError quoting the worker's last error line."""
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, LLoCOError):
        cause = getattr(cause, "cause", None) if getattr(cause, "cause", None) is not cause else None
    if isinstance(cause, LLoCOError):
        return cause
    found = [m for line in str(exc).splitlines() if (m := _ERROR_LINE.match(line.strip()))]
    if found:
        name, message = found[-1].group(1).rsplit(".", 1)[-1], found[-1].group(2)
        cls = getattr(errors, name, None)
        if isinstance(cls, type) and issubclass(cls, LLoCOError):
            return cls(message)
        detail = f"{name}: {message}"
    else:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return ModelLoadError(
        f"a Ray worker failed ({detail[:500]}); documents written so far are kept: fix the cause "
        "(model/encoder files on every node, memory) and run the same command again"
    )


# -- the driver ------------------------------------------------------------------------------------------------


@dataclass
class RaySettings:
    """Where and how wide the pipeline runs."""

    address: str | None = None  # None: a local Ray (or the one this process already joined)
    workers: int = 1  # compress actors
    cpus_per_worker: float = 1.0
    embed_cpus: float = EMBED_CPUS  # per embedding actor
    embed_workers: int = 1  # embedding actors (MiniLM is cheap next to the encoder: one keeps up with a few)

    def check(self) -> None:
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 1:
            raise InputError(f"--ray-workers must be a positive integer, got {self.workers!r}")
        if not (isinstance(self.cpus_per_worker, (int, float)) and self.cpus_per_worker > 0):
            raise InputError(f"--ray-cpus-per-worker must be a positive number, got {self.cpus_per_worker!r}")
        if (
            isinstance(self.embed_workers, bool)
            or not isinstance(self.embed_workers, int)
            or self.embed_workers < 1
        ):
            raise InputError(f"embed_workers must be a positive integer, got {self.embed_workers!r}")

    @property
    def cpus_needed(self) -> float:
        return self.workers * self.cpus_per_worker + self.embed_workers * self.embed_cpus


def start_ray(settings: RaySettings) -> bool:
    """Join the cluster at ``settings.address``, or start a local Ray wide enough for the pipeline.
    True when this call started (or joined) Ray, so the caller shuts it down; False if it was running."""
    ray = import_ray()
    if ray.is_initialized():
        return False
    quiet = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    if settings.address:
        try:
            ray.init(address=settings.address, **quiet)
        except ConnectionError as exc:
            raise ConfigError(
                f"cannot reach a Ray cluster at {settings.address!r} ({exc}); start one with "
                "`ray start --head` or pass --ray without an address for a local Ray"
            ) from None
    else:
        ray.init(num_cpus=max(os.cpu_count() or 1, int(np.ceil(settings.cpus_needed))), **quiet)
    return True


def check_resources(settings: RaySettings) -> None:
    """Refuse a pipeline the cluster can never schedule (it would wait forever)."""
    import ray

    total = float(ray.cluster_resources().get("CPU", 0))
    if settings.cpus_needed > total + 1e-9:
        raise ConfigError(
            f"{settings.workers} Ray workers x {settings.cpus_per_worker:g} CPUs + "
            f"{settings.embed_workers * settings.embed_cpus:g} for retrieval embedding need "
            f"{settings.cpus_needed:g} CPUs, but the Ray cluster has {total:g}; use fewer --ray-workers "
            "or a smaller --ray-cpus-per-worker"
        )


def stored_states(store: CheatSheetStore, gid: int) -> dict[str, tuple[str, str | None]]:
    """``doc_id -> (sha256, encoder_fingerprint)`` of the group's stored documents, in one query."""
    from sqlalchemy import select

    d = store.tables.documents
    with store.engine.connect() as conn:
        rows = conn.execute(
            select(d.c.doc_id, d.c.sha256, d.c.encoder_fingerprint).where(d.c.group_id == gid)
        )
        return {r.doc_id: (r.sha256, r.encoder_fingerprint) for r in rows}


def ray_ingest(
    store: CheatSheetStore,
    documents: Iterable[DocumentInput],
    *,
    group: str,
    collection: str = DEFAULT_COLLECTION,
    runtime: RuntimeSpec | None = None,
    settings: RaySettings | None = None,
    batch_size: int = 8,
    progress: bool = False,
    embedder_factory_fn: Callable[[], Embedder] | None = None,
) -> IngestReport:
    """Ingest ``documents`` into ``collection/group`` of ``store`` with a Ray Data pipeline (see the module doc).

    Same rows as :meth:`CheatSheetStore.ingest` with the runtime ``runtime`` describes; one transaction per
    document, unchanged documents skipped. Ray is started (and stopped at the end) unless this process already
    joined one.
    """
    validate_name(group, "group")
    validate_name(collection, "collection")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(
            f"batch_size must be a positive integer (chunks per encoder batch), got {batch_size!r}"
        )
    runtime = runtime or RuntimeSpec()
    settings = settings or RaySettings()
    settings.check()
    docs = list(documents)
    for d in docs:
        if not isinstance(d, DocumentInput):
            raise InputError(f"ray_ingest() takes DocumentInput objects, got {type(d).__name__}")
    check_unique(docs)
    factory = embedder_factory_fn or embedder_factory(store.embedder)
    report = IngestReport(group=group, collection=collection)
    start = time.perf_counter()
    with store.engine.begin() as conn:
        gid = int(catalog.group_row(conn, store.tables, group, collection, create=True).id)
    states = stored_states(store, gid)
    started = start_ray(settings)
    try:
        import ray

        check_resources(settings)
        # Skip unchanged documents before anything is compressed. Their fingerprint check needs the encoder's
        # fingerprint: asked of one worker only when some stored document has the same content.
        fingerprint = None
        if any(states.get(d.doc_id, ("",))[0] == d.sha256 for d in docs):
            probe = ray.remote(num_cpus=settings.cpus_per_worker, num_gpus=1 if runtime.uses_gpu else 0)
            try:
                fingerprint = ray.get(probe(_probe_fingerprint).remote(runtime))
            except ray.exceptions.RayError as exc:
                raise worker_failure(exc) from exc
        outcomes: dict[int, DocumentOutcome] = {}
        pending = []
        for i, d in enumerate(docs):
            if fingerprint is not None and is_unchanged(states.get(d.doc_id), d, fingerprint):
                outcomes[i] = DocumentOutcome(d.doc_id, "unchanged", 0)
            else:
                pending.append(i)
        if pending:
            _run_pipeline(
                store,
                docs,
                pending,
                outcomes,
                group,
                collection,
                runtime,
                settings,
                batch_size,
                factory,
                fingerprint,
                progress,
            )
        report.documents = [outcomes[i] for i in range(len(docs))]
    finally:
        if started:
            ray.shutdown()
        report.seconds = time.perf_counter() - start
    return report


def _run_pipeline(
    store: CheatSheetStore,
    docs: list[DocumentInput],
    pending: list[int],
    outcomes: dict[int, DocumentOutcome],
    group: str,
    collection: str,
    runtime: RuntimeSpec,
    settings: RaySettings,
    batch_size: int,
    factory: Callable[[], Embedder],
    fingerprint: str | None,
    progress: bool,
) -> None:
    import logging

    import ray.data
    from tqdm.auto import tqdm

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = progress
    ctx.print_on_execution_start = False
    if not progress:
        logging.getLogger("ray.data").setLevel(logging.WARNING)
    items = [{"idx": i, "text": docs[i].text, "source": docs[i].source} for i in pending]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    ds = ds.map_batches(
        CompressDocuments,
        batch_size=1,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=settings.workers),
        num_cpus=settings.cpus_per_worker,
        num_gpus=1 if runtime.uses_gpu else None,
        fn_constructor_kwargs={
            "spec": runtime,
            "batch_size": batch_size,
            "threads": int(settings.cpus_per_worker),
        },
    )
    ds = ds.map_batches(
        EmbedChunks,
        batch_size=1,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=settings.embed_workers),
        num_cpus=settings.embed_cpus,
        fn_constructor_kwargs={"factory": factory, "threads": 1},
    )
    bar = tqdm(
        total=len(pending), desc=f"ingest {collection}/{group} (ray)", unit="doc", disable=not progress
    )
    written = 0
    try:
        for row in _rows(ds):
            if row["error"] is not None:
                _raise_worker_error(row["error_type"], row["error"])
            doc = docs[int(row["idx"])]
            if fingerprint is None:
                fingerprint = row["fingerprint"]
            elif row["fingerprint"] != fingerprint:
                raise ConfigError(
                    f"Ray workers loaded different encoders ({fingerprint[:12]} and "
                    f"{row['fingerprint'][:12]}); give every node the same model and encoder files"
                )
            prep = PreparedDocument(
                doc,
                _chunks_from_json(row["chunks"]),
                _vectors_from_bytes(row["embeddings"]),
                _sheets_from_bytes(row["sheets"]),
                fingerprint,
            )
            outcome = write_document(
                store.engine, store.tables, group, collection, prep, sheet_dtype=store.cheat_sheet_dtype
            )
            outcomes[int(row["idx"])] = outcome
            written += outcome.n_chunks
            bar.update(1)
            bar.set_postfix(chunks=written)
    finally:
        bar.close()


def _rows(ds) -> Iterable[dict[str, Any]]:
    """The pipeline's output rows; a Ray failure surfaces as the lloco error behind it."""
    from ray.exceptions import RayError

    it = iter(ds.iter_rows())
    while True:
        try:
            row = next(it)
        except StopIteration:
            return
        except RayError as exc:
            raise worker_failure(exc) from exc
        yield row
