"""Compress Parquet datasets and image folders on a Dask cluster, resumably.

``compress_parquet(src, dst)`` turns the image column of every Parquet shard under ``src``
(a file, folder or glob on any fsspec URL) into ``LICImage`` storage, one Dask task per input
shard (big shards: one per range of row groups); ``compress_images(src_glob, dst)`` packs image
files into Parquet shards with columns ``image`` and ``path``. Both return a ``JobReport``.

Why it is built this way:

- Clusters: ``client=None`` starts a ``distributed.LocalCluster`` of one single-threaded worker
  process per core (torch threads pinned, so workers never oversubscribe the cores); a
  ``distributed.Client`` or a scheduler address runs on an existing cluster. GPUs: start a
  ``dask_cuda.LocalCUDACluster()`` (one worker per GPU) and pass ``Client(cluster)``;
  ``device="auto"`` then encodes on each worker's GPU, same-size images batched through the
  network (``batch_transforms``).
- The model never travels with tasks: a ``WorkerPlugin`` registers the ``LICSTORE_WEIGHTS``
  files and loads the model once per worker (``licstore.models.load`` caches per process), and
  re-runs on workers that join or restart.
- Every output shard is written to a hidden temporary name and renamed when complete; on
  object stores (``s3://``, ``gs://``, ``az://``), which have no rename, it is uploaded to its
  own key and committed when complete (``CompleteMultipartUpload`` or one ``PUT``,
  ``licstore.atomic.atomic_open``), so it is visible whole or not at all. Either way a
  killed worker leaves no partial shard (an uncommitted upload is invisible; the job aborts
  those it finds at the end, ``licstore.atomic.abort_uploads``); Dask reschedules a dead
  worker's tasks (``distributed.scheduler.allowed-failures``, default 3) and ``retries=``
  re-runs tasks that raised (a flaky object store). Re-running a task rewrites the same bytes.
  Storage failures raise ``licstore.errors.StorageError`` naming the URL.
- The manifest (``dst/.licstore-manifest.json``, hidden so ``load_dataset("parquet",
  data_dir=dst)`` ignores it; written atomically by the client) records each finished shard::

      {"format": "licstore-dask-manifest/1", "updated": "2026-11-23T19:00:00Z",
       "job": {"kind", "column", "encoder" (model@weights|rate|format), "batch_transforms",
               "on_error", "row_group_size", "rows_per_task"},
       "shards": {"<output path relative to dst>": {
           "sources": [input URLs], "source_signature": "size:mtime/ETag" (hash for images),
           "source_bytes", "row_groups": [start, stop] or null, "rows", "bytes", "sha256",
           "stats": {rows, encoded, passed, null, copied, image_bytes_in/out, bits, pixels,
                     psnr_sum, psnr_n},
           "failures": [{"shard", "row", "reason", "error", "source", "copied"}]}}}

  A rerun of the same job skips shards whose sources are unchanged and whose output still has
  the recorded size, SHA-256 and row count, and redoes the rest; a different job (other rate,
  model, column, ...) on the same ``dst`` is refused rather than mixed.
- A row that cannot be encoded is never dropped: ``on_error="raise"`` stops the job naming
  (shard, row, reason); ``on_error="copy"`` keeps its original bytes in the output struct
  with ``codec`` null and lists it in the report.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import logging
import os
import re
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

try:
    import dask
    import distributed
    from distributed.diagnostics.plugin import WorkerPlugin
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(
        "licstore.dask needs dask and distributed: pip install 'licstore[dask]'"
    ) from e

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from . import carried_weights, column_codec, container, errors
from .atomic import abort_uploads, atomic_open, atomic_put, makedirs, temporary_glob
from .errors import CorruptBitstreamError, LICError, UnsupportedImageError
from .features import STORAGE_TYPE, LICImage, _rows_of
from .parquet import DEFAULT_ROW_GROUP_SIZE, _column_options, _schema
from .storage import storage_errors, url_to_fs

__all__ = [
    "DEFAULT_MAX_BATCH_PIXELS",
    "JobReport",
    "LicstoreWorkerPlugin",
    "MANIFEST_NAME",
    "RowFailure",
    "WORKER_CONFIG",
    "compress_images",
    "compress_parquet",
]

OnError = Literal["raise", "copy"]

MANIFEST_NAME = ".licstore-manifest.json"
MANIFEST_FORMAT = "licstore-dask-manifest/1"
#: decoded pixels held per encoder batch (16 Kodak-sized images): bounds worker memory
DEFAULT_MAX_BATCH_PIXELS = 16 * 768 * 512
#: input files with more rows are split at row-group boundaries into tasks of about this many
#: rows, so a killed worker loses little work and one big file still uses every worker
DEFAULT_ROWS_PER_TASK = 1000
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".ppm")
#: Dask settings for clusters that encode. Dask's nanny sets ``MALLOC_TRIM_THRESHOLD_=65536``
#: in workers, which turns off glibc's adaptive mmap threshold: every large tensor buffer is
#: then a fresh mmap with page faults, and encoding ran 30-40% slower than in a plain process
#: (measured on Kodak, 1 thread). ``None`` unsets it (Dask's way to remove a variable); use
#: ``dask.config.set(WORKER_CONFIG)`` around your own ``LocalCluster``, or unset the variable
#: in the environment of ``dask worker``.
WORKER_CONFIG = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}
_MANIFEST_WRITE_INTERVAL = 2.0  # seconds between manifest rewrites while shards finish
_DRAIN_SECONDS = 60.0  # after a failure: how long the other shards get to stop (one piece each)
_ROW_PREFIX = re.compile(r"^row \d+: ")


class _Unpublished(Exception):
    """Raised inside a shard's write to publish nothing (a bad row, or the job stopping)."""


# -- results ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RowFailure:
    """A row that could not be encoded: where it is, why, and what happened to it."""

    shard: str  # output shard (path relative to dst)
    row: int  # row index in the source file (Parquet) or position in the shard (images)
    reason: str
    error: str = "UnsupportedImageError"  # licstore.errors class name
    source: str = ""  # the input file (Parquet shard or image file)
    copied: bool = False  # True: original bytes kept in the output, codec null


@dataclass
class JobReport:
    """What a job did; totals cover the whole output, including shards skipped on resume."""

    src: str
    dst: str
    manifest: str
    on_error: str
    shards_total: int = 0
    shards_done: int = 0  # written by this run
    shards_skipped: int = 0  # already complete and verified (resumed)
    rows_in: int = 0
    rows_out: int = 0
    rows_encoded: int = 0
    rows_passed: int = 0  # already licstore bitstreams: kept as they are
    rows_null: int = 0
    rows_copied: int = 0  # on_error="copy": stored unencoded
    rows_skipped: int = 0  # in shards skipped on resume
    bytes_in: int = 0  # input files
    bytes_out: int = 0  # output files
    image_bytes_in: int = 0
    image_bytes_out: int = 0
    mean_bpp: float | None = None  # over encoded and passed-through rows, pixel-weighted
    mean_psnr: float | None = None  # sampled: a few rows per shard decoded and compared
    psnr_samples: int = 0
    failures: list[RowFailure] = field(default_factory=list)
    wall_seconds: float = 0.0
    outputs: list[str] = field(default_factory=list)
    other_shards: list[str] = field(default_factory=list)  # in the manifest, not in this input

    @property
    def images_per_second(self) -> float:
        """Rows processed by this run per second of wall time (resumed rows excluded)."""
        done = self.rows_out - self.rows_skipped
        return done / self.wall_seconds if self.wall_seconds > 0 else 0.0

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["images_per_second"] = self.images_per_second
        return d

    def __str__(self) -> str:
        lines = [
            f"licstore job: {self.src} -> {self.dst}",
            f"shards:  {self.shards_total} total, {self.shards_done} written, "
            f"{self.shards_skipped} skipped (already complete)",
            f"rows:    {self.rows_in} in, {self.rows_out} out ({self.rows_encoded} encoded, "
            f"{self.rows_passed} already licstore, {self.rows_null} null, "
            f"{self.rows_copied} copied unencoded)",
            f"bytes:   {self.bytes_in:,} in -> {self.bytes_out:,} out"
            + (f" ({self.bytes_out / self.bytes_in:.1%} of the input)" if self.bytes_in else ""),
            f"images:  {self.image_bytes_in:,} B -> {self.image_bytes_out:,} B",
            "quality: mean bpp "
            + ("n/a" if self.mean_bpp is None else f"{self.mean_bpp:.4f}")
            + ", mean PSNR "
            + ("n/a" if self.mean_psnr is None else f"{self.mean_psnr:.2f} dB")
            + f" (sampled: {self.psnr_samples} rows decoded)",
            f"time:    {self.wall_seconds:.1f} s, {self.images_per_second:.2f} images/s",
        ]
        if self.failures:
            how = "copied through unencoded, codec null" if self.on_error == "copy" else "failed"
            lines.append(f"failures: {len(self.failures)} rows ({how})")
            for f in self.failures[:20]:
                lines.append(f"  {f.shard} row {f.row}: {f.error}: {f.reason}")
            if len(self.failures) > 20:
                lines.append(f"  ... {len(self.failures) - 20} more (JobReport.failures)")
        if self.other_shards:
            lines.append(
                f"note:    the manifest also lists {len(self.other_shards)} shards that are not "
                "in this input (left as they are)"
            )
        lines.append(f"manifest: {self.manifest}")
        return "\n".join(lines)


# -- worker setup -------------------------------------------------------------------------


class LicstoreWorkerPlugin(WorkerPlugin):
    """Prepares each worker once, so tasks only carry row data and settings.

    Registers the weights files the client lists in ``LICSTORE_WEIGHTS`` (those that exist on
    the worker), pins torch's intra-op threads when asked (several worker processes on one
    machine must not each start one thread per core) and loads the model into the per-process
    cache of ``licstore.models.load``. Idempotent by name: registering it again for the same
    model and settings is a no-op, and workers that join or restart run it too.
    """

    idempotent = True

    def __init__(
        self,
        model: str,
        device: str = "auto",
        torch_threads: int | None = None,
        weights: Sequence[str] = (),
    ) -> None:
        self.model = model
        self.device = device
        self.torch_threads = torch_threads
        self.weights = tuple(weights)
        key = json.dumps([model, device, torch_threads, self.weights])
        self.name = f"licstore-{model}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"

    def setup(self, worker: Any = None) -> None:
        import torch

        from . import models

        if self.torch_threads:
            torch.set_num_threads(self.torch_threads)
        for path in self.weights:
            if os.path.exists(path):
                models.register_weights(path, default=True)  # as LICSTORE_WEIGHTS does
        models.load(self.model, device=_resolve_device(self.device))


def _resolve_device(device: str | None) -> str:
    """``auto``: this worker's GPU when it has one (dask-cuda pins one per worker)."""
    import torch

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _local_cluster_size(workers: int | None) -> tuple[int, int]:
    """(worker processes, torch threads each): one process per core by default."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    n = max(1, workers or cores)
    return n, max(1, cores // n)


@contextlib.contextmanager
def _connect(
    client: distributed.Client | str | None, workers: int | None
) -> Iterator[tuple[distributed.Client, int | None]]:
    """(client, torch threads per worker or None to leave them) for the job; closes only
    what it opened."""
    if isinstance(client, distributed.Client):
        if workers is not None:
            raise ValueError("workers= sizes the embedded cluster; not with client=")
        yield client, None
    elif isinstance(client, str):
        if workers is not None:
            raise ValueError("workers= sizes the embedded cluster; not with a scheduler address")
        with distributed.Client(client) as c:
            yield c, None
    elif client is None:
        n, threads = _local_cluster_size(workers)
        with (
            dask.config.set(WORKER_CONFIG),
            distributed.LocalCluster(
                n_workers=n,
                threads_per_worker=1,
                processes=True,
                dashboard_address=":0",
                silence_logs=logging.ERROR,
            ) as cluster,
            distributed.Client(cluster) as c,
        ):
            yield c, threads
    else:
        raise TypeError(
            f"client must be a distributed.Client, a scheduler address or None, got {client!r}"
        )


# -- plans --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Shard:
    """One task: its output name and what it reads."""

    name: str  # output path relative to dst
    kind: str  # "parquet" or "images"
    sources: tuple[str, ...]  # one Parquet file, or image files
    rows: int
    source_bytes: int
    signature: str  # of the sources: a changed input invalidates the finished shard
    row_groups: tuple[int, int] | None = None  # [start, stop) of a Parquet file
    first_row: int = 0  # index of the first row in the source file


@dataclass(frozen=True)
class _Job:
    """Settings every task of a job shares (small: shipped with each task)."""

    dst: str
    column: str
    feature: LICImage
    settings: column_codec.EncoderSettings
    batch_size: int
    max_batch_pixels: int
    device: str
    batch_transforms: bool | None
    on_error: str
    row_group_size: int
    psnr_samples: int
    storage_options: dict

    def fingerprint(self, kind: str, rows_per_task: int | None) -> dict:
        """What decides the output bytes: a manifest from another job must not be reused."""
        return {
            "kind": kind,
            "column": self.column,
            "encoder": self.settings.cache_id(),
            "batch_transforms": self.batch_transforms,
            "on_error": self.on_error,
            "row_group_size": self.row_group_size,
            "rows_per_task": rows_per_task,
        }


def _fs(url: str, storage_options: dict):
    return url_to_fs(url, storage_options)  # s3:// with retries; errors name the URL


def _signature(info: dict) -> str:
    """Size and modification stamp of a file, as its filesystem reports them."""
    stamp = next(
        (info[k] for k in ("ETag", "etag", "mtime", "LastModified", "last_modified") if k in info),
        "",
    )
    return f"{info.get('size')}:{stamp}"


def _is_hidden(path: str, root: str) -> bool:
    rel = path[len(root) :].lstrip("/") if path.startswith(root) else path
    return any(part.startswith((".", "_")) for part in rel.split("/"))


def _list_files(
    src: str, storage_options: dict, suffixes: Sequence[str]
) -> tuple[Any, str, list[tuple[str, dict]]]:
    """(filesystem, root for relative names, [(path, info)]) of a file, folder or glob;
    hidden files (``.``/``_``, as ``datasets`` skips them) and other suffixes are left out."""
    fs, path = _fs(src, storage_options)
    with storage_errors(src):
        return _list_files_on(fs, path, src, suffixes)


def _list_files_on(
    fs: Any, path: str, src: str, suffixes: Sequence[str]
) -> tuple[Any, str, list[tuple[str, dict]]]:
    from fsspec.core import has_magic

    if has_magic(path):
        infos = fs.glob(path, detail=True)
        magic = min(i for i, c in enumerate(path) if c in "*?[")
        root = path[:magic].rpartition("/")[0]
    elif fs.isdir(path):
        infos = fs.find(path, detail=True)
        root = path.rstrip("/")
    elif fs.exists(path):
        return fs, path.rpartition("/")[0], [(path, fs.info(path))]
    else:
        raise FileNotFoundError(f"no such file, folder or glob match: {src!r}")
    files = [
        (p, info)
        for p, info in sorted(infos.items())
        if info.get("type") != "directory"
        and p.lower().endswith(tuple(suffixes))
        and not _is_hidden(p, root)
    ]
    if not files:
        raise FileNotFoundError(f"no {'/'.join(suffixes)} files under {src!r}")
    return fs, root, files


def _inspect_parquet(url: str, storage_options: dict, column: str) -> dict:
    """Row-group sizes of one file (read from its footer, on a worker)."""
    fs, path = _fs(url, storage_options)
    with fs.open(path, "rb") as f:
        pf = pq.ParquetFile(f)
        if column not in pf.schema_arrow.names:
            raise KeyError(f"{url}: no column {column!r}; columns: {pf.schema_arrow.names}")
        md = pf.metadata
        groups = []
        for i in range(md.num_row_groups):
            rg = md.row_group(i)
            compressed = sum(rg.column(j).total_compressed_size for j in range(rg.num_columns))
            groups.append((rg.num_rows, compressed))
    return {"groups": groups}


def _plan_parquet(
    client: distributed.Client,
    src: str,
    dst: str,
    storage_options: dict,
    column: str,
    rows_per_task: int | None,
) -> list[_Shard]:
    fs, root, files = _list_files(src, storage_options, (".parquet",))
    out_fs, out_root = _fs(dst, storage_options)
    inside = out_fs.unstrip_protocol(out_root).rstrip("/") + "/"
    files = [(p, i) for p, i in files if not fs.unstrip_protocol(p).startswith(inside)]
    if not files:  # a rerun with dst inside src must not compress its own output
        raise FileNotFoundError(f"no Parquet files under {src!r} outside {dst!r}")
    urls = [fs.unstrip_protocol(p) for p, _ in files]
    futures = client.map(
        _inspect_parquet, urls, storage_options=storage_options, column=column, pure=False
    )
    shards = []
    for (path, info), url, meta in zip(files, urls, client.gather(futures)):
        rel = path[len(root) :].lstrip("/") if root else path
        ranges = _split_row_groups([n for n, _ in meta["groups"]], rows_per_task)
        signature = _signature(info)
        if len(ranges) <= 1:
            rows = sum(n for n, _ in meta["groups"])
            shards.append(_Shard(rel, "parquet", (url,), rows, int(info["size"]), signature))
            continue
        stem = rel[: -len(".parquet")]
        first = 0
        for k, (start, stop) in enumerate(ranges):
            rows = sum(n for n, _ in meta["groups"][start:stop])
            size = sum(b for _, b in meta["groups"][start:stop])
            name = f"{stem}.part{k:04d}.parquet"
            shards.append(
                _Shard(name, "parquet", (url,), rows, size, signature, (start, stop), first)
            )
            first += rows
    return shards


def _split_row_groups(sizes: Sequence[int], rows_per_task: int | None) -> list[tuple[int, int]]:
    """Consecutive row-group ranges of about ``rows_per_task`` rows (a group is never split)."""
    if not rows_per_task or sum(sizes) <= rows_per_task:
        return [(0, len(sizes))]
    ranges, start, rows = [], 0, 0
    for i, n in enumerate(sizes):
        if rows and rows + n > rows_per_task:
            ranges.append((start, i))
            start, rows = i, 0
        rows += n
    ranges.append((start, len(sizes)))
    return ranges


def _plan_images(src: str, storage_options: dict, shard_rows: int) -> list[_Shard]:
    fs, _, files = _list_files(src, storage_options, IMAGE_SUFFIXES)
    shards = []
    n = (len(files) + shard_rows - 1) // shard_rows
    for k in range(n):
        part = files[k * shard_rows : (k + 1) * shard_rows]
        urls = tuple(fs.unstrip_protocol(p) for p, _ in part)
        signature = hashlib.sha256(
            json.dumps([[u, _signature(i)] for u, (_, i) in zip(urls, part)]).encode()
        ).hexdigest()
        size = sum(int(i.get("size") or 0) for _, i in part)
        shards.append(_Shard(f"part-{k:05d}.parquet", "images", urls, len(part), size, signature))
    return shards


# -- the task -----------------------------------------------------------------------------


@dataclass
class _Row:
    """One input row, normalised: what to encode, what to copy if that fails."""

    index: int  # in the source (reported)
    kind: str  # "null", "lic" (already a bitstream), "encode", "bad"
    data: Any = None  # bitstream, image file bytes or pixel array
    path: str | None = None
    size: tuple[int, int] | None = None  # (width, height) from the header: the batch bucket
    error: LICError | None = None


def _normalise(row: Any, index: int) -> _Row:
    """Read what a row refers to (paths, ``.lic`` references), without decoding pixels."""
    if row is None:
        return _Row(index, "null")
    if isinstance(row, np.ndarray):
        size = (row.shape[1], row.shape[0]) if row.ndim >= 2 else None
        return _Row(index, "encode", row, None, size)
    path = row.get("path") if isinstance(row, dict) else row if isinstance(row, str) else None
    data = row.get("bytes") if isinstance(row, dict) else None if isinstance(row, str) else row
    if data is None:
        if path is None:
            return _Row(index, "bad", error=UnsupportedImageError("row has neither bytes nor path"))
        try:
            data = column_codec.read_url(path)
        except (OSError, ValueError) as e:
            return _Row(index, "bad", None, path, error=UnsupportedImageError(f"{path!r}: {e}"))
    if not isinstance(data, (bytes, bytearray, memoryview)):
        error = UnsupportedImageError(f"cannot read an image from a {type(data).__name__}")
        return _Row(index, "bad", None, path, error=error)
    data = bytes(data)
    if column_codec.is_bitstream(data):
        try:
            container.unpack(data)
        except CorruptBitstreamError as e:
            return _Row(index, "bad", data, path, error=e)
        return _Row(index, "lic", data, path)
    return _Row(index, "encode", data, path, _header_size(data))


def _header_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from the file header (no pixel decoding); None if unreadable."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.size
    except Exception:
        return None  # the encoder says why, in its own words


def _batches(rows: list[_Row], batch_size: int, max_pixels: int) -> Iterator[list[_Row]]:
    """Same-size rows together, at most ``batch_size`` rows and ``max_pixels`` pixels each;
    rows of unknown size alone."""
    buckets: dict[tuple[int, int] | None, list[_Row]] = {}
    for r in rows:
        buckets.setdefault(r.size, []).append(r)
    for size, bucket in buckets.items():
        if size is None:
            yield from ([r] for r in bucket)
            continue
        step = max(1, min(batch_size, max_pixels // max(1, size[0] * size[1])))
        for start in range(0, len(bucket), step):
            yield bucket[start : start + step]


def _encoder(job: _Job) -> Callable[[list[_Row]], list[bytes]]:
    """Encode a batch of rows. CPU: through ``column_codec.encode_rows`` (bytes equal to
    ``licstore.encode``; its content cache spares a task rerun on the same machine); with
    ``batch_transforms`` (default on CUDA) same-size images share network passes."""
    device = _resolve_device(job.device)
    batched = job.batch_transforms
    if batched is None:
        batched = device.startswith("cuda")
    if not batched:

        def encode(rows: list[_Row]) -> list[bytes]:
            return column_codec.encode_rows(
                [r.data for r in rows], job.settings, batch_size=len(rows), device=device
            )

        return encode

    from . import imageio
    from .codec import encode_batch

    def encode_batched(rows: list[_Row]) -> list[bytes]:
        prepared = [imageio.prepare(r.data) for r in rows]
        return encode_batch(
            prepared,
            model=job.settings.model,
            device=device,
            batch_transforms=True,
            **job.settings.encode_kwargs(),
        )

    return encode_batched


@dataclass
class _Stats:
    rows: int = 0
    encoded: int = 0
    passed: int = 0
    null: int = 0
    copied: int = 0
    image_bytes_in: int = 0
    image_bytes_out: int = 0
    bits: int = 0
    pixels: int = 0
    psnr_sum: float = 0.0
    psnr_n: int = 0

    def add(self, other: dict) -> None:
        for k, v in other.items():
            setattr(self, k, getattr(self, k) + v)


def _encode_piece(
    rows: list[_Row],
    job: _Job,
    encode: Callable[[list[_Row]], list[bytes]],
    stats: _Stats,
    failures: list[dict],
    shard: str,
    source: Callable[[_Row], str],
) -> list[dict | None]:
    """LICImage storage rows for one row group; failures appended (the caller decides)."""
    out: dict[int, dict | None] = {}
    datas: dict[int, bytes] = {}
    for r in rows:
        stats.rows += 1
        if r.kind == "null":
            out[r.index] = None
            stats.null += 1
        elif r.kind == "lic":
            datas[r.index] = r.data
            stats.passed += 1
        if isinstance(r.data, (bytes, np.ndarray)) and r.kind != "null":
            stats.image_bytes_in += len(r.data) if isinstance(r.data, bytes) else r.data.nbytes
    todo = [r for r in rows if r.kind == "encode"]
    for batch in _batches(todo, job.batch_size, job.max_batch_pixels):
        try:
            results = list(zip(batch, encode(batch)))
        except LICError:
            results = []
            for r in batch:  # one at a time, to blame the right rows
                try:
                    results.extend(zip([r], encode([r])))
                except LICError as e:
                    r.kind, r.error = "bad", e
        for r, data in results:
            datas[r.index] = data
            stats.encoded += 1
    for r in rows:
        if r.kind != "bad":
            continue
        error = r.error or UnsupportedImageError("cannot encode")
        keep = not isinstance(r.data, np.ndarray)
        reason = _ROW_PREFIX.sub("", str(error))
        if job.on_error == "copy" and not keep:
            reason += " (a row of pixels has no bytes to copy: stored as null)"
        failures.append(
            {
                "shard": shard,
                "row": r.index,
                "reason": reason,
                "error": type(error).__name__,
                "source": source(r),
                "copied": job.on_error == "copy",
            }
        )
        if job.on_error == "copy":
            # the original bytes (pixel arrays have none: the row is stored null, reported)
            out[r.index] = {"bytes": r.data if keep else None, "path": r.path, "codec": None}
            stats.copied += 1
    for r in rows:
        if r.index in datas:
            data = datas[r.index]
            out[r.index] = {"bytes": data, "path": r.path, "codec": column_codec.codec_label(data)}
            bs = container.unpack(data)
            stats.image_bytes_out += len(data)
            stats.bits += len(data) * 8
            stats.pixels += bs.width * bs.height
    _sample_psnr(rows, datas, job, stats)
    return [out.get(r.index) for r in rows]


def _sample_psnr(rows: list[_Row], datas: dict[int, bytes], job: _Job, stats: _Stats) -> None:
    """Decode the first encoded rows of the shard (``psnr_samples`` in all) against the source."""
    from PIL import Image

    from .codec import decode
    from .metrics import psnr

    for r in rows:
        if stats.psnr_n >= job.psnr_samples:
            return
        if r.kind != "encode" or r.index not in datas:
            continue
        if isinstance(r.data, np.ndarray):
            original = Image.fromarray(r.data)
        else:
            original = Image.open(io.BytesIO(r.data))
        try:  # a quality sample must never fail the job: a source PIL cannot compare is skipped
            decoded = decode(datas[r.index], device=_resolve_device(job.device))
            a = np.asarray(original.convert("RGB"))
            b = np.asarray(decoded.convert("RGB"))
        except (LICError, OSError, ValueError):
            continue
        if a.shape == b.shape:  # EXIF-rotated sources: compare only what lines up
            stats.psnr_sum += min(psnr(a, b), 100.0)
            stats.psnr_n += 1


def _pieces_parquet(shard: _Shard, job: _Job) -> tuple[pa.Schema, Iterator[tuple[pa.Table, int]]]:
    """The output schema and (table, index of its first row in the file) pieces of a shard."""
    fs, path = _fs(shard.sources[0], job.storage_options)
    f = fs.open(path, "rb")
    pf = pq.ParquetFile(f)
    carried_weights.register_footer(fs, path, pf.metadata.metadata)  # for rows passed through
    schema = _schema(pf.schema_arrow, {job.column: job.feature})
    groups = range(*shard.row_groups) if shard.row_groups else range(pf.metadata.num_row_groups)

    def pieces() -> Iterator[tuple[pa.Table, int]]:
        first = shard.first_row
        with f:
            if not len(groups):
                return
            for batch in pf.iter_batches(batch_size=job.row_group_size, row_groups=list(groups)):
                yield pa.Table.from_batches([batch]), first
                first += batch.num_rows

    return schema, pieces()


def _pieces_images(shard: _Shard, job: _Job) -> tuple[pa.Schema, Iterator[tuple[pa.Table, int]]]:
    schema = _schema(
        pa.schema([("image", pa.binary()), ("path", pa.string())]), {"image": job.feature}
    )

    def pieces() -> Iterator[tuple[pa.Table, int]]:
        n = job.row_group_size
        for start in range(0, len(shard.sources), n):
            urls = list(shard.sources[start : start + n])
            # the rows are paths: _normalise reads them, so an unreadable file is a row failure
            images = pa.array([{"bytes": None, "path": u} for u in urls])
            yield pa.table({"image": images, "path": pa.array(urls, pa.string())}), start

    return schema, pieces()


def _image_rows(array: pa.ChunkedArray | pa.Array, first_row: int) -> list[Any]:
    """Python rows of an image column of any type LICImage accepts."""
    from .arrow import _is_list, _pixel_rows, _plain

    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    array = _plain(array)
    if _is_list(array.type):
        return _pixel_rows(array, first_row)
    return _rows_of(array)


def _run_shard(shard: _Shard, job: _Job, abort: str | None = None) -> dict:
    """Compress one shard to ``dst/<shard.name>`` (temporary name, renamed when complete).

    Returns rows, size, SHA-256, stats and row failures. With ``on_error="raise"`` a bad row
    stops the shard without output and is returned (not raised: Dask would retry a
    deterministic failure), so the client can cancel the job and name the row. ``abort``
    names a Dask event the client sets when the job fails: the shard then stops between
    pieces and removes its temporary file (a cancelled task would run on and leave it)."""
    stop = distributed.Event(abort) if abort else None
    if stop is not None and stop.is_set():
        return {"name": shard.name, "aborted": True}
    name, version = job.settings.model, job.settings.weights_sha256
    from . import models

    if models.resolve(name)[1] != version:
        raise errors.ModelNotFoundError(
            f"worker has other weights for {name!r} ({models.resolve(name)[1][:16]}) than the "
            f"client ({version[:16]}): install the same licstore and LICSTORE_WEIGHTS everywhere"
        )
    encode = _encoder(job)
    if shard.kind == "parquet":
        schema, pieces = _pieces_parquet(shard, job)
        column = job.column
    else:
        schema, pieces = _pieces_images(shard, job)
        column = "image"
    pq_kwargs = _column_options(schema, {column: job.feature})
    stats, failures = _Stats(), []

    def source(r: _Row) -> str:
        if shard.kind == "images":
            return r.path or ""
        return shard.sources[0]

    fs, root = _fs(job.dst, job.storage_options)
    path = f"{root.rstrip('/')}/{shard.name}"
    url = fs.unstrip_protocol(path)
    with storage_errors(url):
        makedirs(fs, path.rpartition("/")[0])
    used: set[tuple[str, str]] = set()  # (model, weights hash) of the rows written
    try:  # temporary name + rename, or on object stores one upload committed at the end
        with storage_errors(url), atomic_open(fs, path) as f:
            with pq.ParquetWriter(f, schema, **pq_kwargs) as writer:
                for table, first in pieces:
                    if stop is not None and stop.is_set():
                        break
                    raw = _image_rows(table.column(column), first)
                    rows = [_normalise(row, first + i) for i, row in enumerate(raw)]
                    stored = _encode_piece(rows, job, encode, stats, failures, shard.name, source)
                    if failures and job.on_error == "raise":
                        break
                    index = table.schema.get_field_index(column)
                    array = pa.array(stored, type=STORAGE_TYPE)
                    used |= carried_weights.used_in_storage(array)
                    table = table.set_column(index, schema.field(column), array)
                    writer.write_table(table.cast(schema), row_group_size=job.row_group_size)
                if (not failures or job.on_error != "raise") and not (stop and stop.is_set()):
                    # the dataset's weights folder (once per dataset: a file named by its hash is
                    # kept), written before the shard that needs it is published
                    records = carried_weights.write(fs, root.rstrip("/"), used)
                    writer.add_key_value_metadata(carried_weights.footer(records, root, path))
            if (failures and job.on_error == "raise") or (stop is not None and stop.is_set()):
                raise _Unpublished  # nothing is published: the shard stays unwritten for a rerun
    except _Unpublished:
        if failures and job.on_error == "raise":
            return {"name": shard.name, "failures": failures, "stats": dataclasses.asdict(stats)}
        return {"name": shard.name, "aborted": True}
    with storage_errors(url):
        digest, size = _sha256(fs, path)  # a rerun of the task writes the same bytes
    return {
        "name": shard.name,
        "rows": stats.rows,
        "bytes": size,
        "sha256": digest,
        "stats": dataclasses.asdict(stats),
        "failures": failures,
    }


def _sha256(fs: Any, path: str) -> tuple[str, int]:
    h, size = hashlib.sha256(), 0
    with fs.open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def _verify_output(dst: str, storage_options: dict, name: str, entry: dict) -> bool:
    """Whether a finished shard is still there, intact: size, SHA-256, row count."""
    fs, root = _fs(dst, storage_options)
    path = f"{root.rstrip('/')}/{name}"
    try:
        if fs.size(path) != entry["bytes"] or _sha256(fs, path)[0] != entry["sha256"]:
            return False
        with fs.open(path, "rb") as f:
            return pq.ParquetFile(f).metadata.num_rows == entry["rows"]
    except (OSError, ValueError, KeyError, pa.ArrowException):
        return False


# -- the manifest -------------------------------------------------------------------------


class _Manifest:
    """``dst/.licstore-manifest.json``, rewritten atomically (rename, or one PUT)."""

    def __init__(self, dst: str, storage_options: dict, job: dict) -> None:
        self.fs, root = _fs(dst, storage_options)
        self.path = f"{root.rstrip('/')}/{MANIFEST_NAME}"
        self.url = self.fs.unstrip_protocol(self.path)
        self.job = job
        self.shards: dict[str, dict] = {}
        self._written = 0.0
        with storage_errors(self.url):
            old = json.loads(self.fs.cat_file(self.path)) if self.fs.exists(self.path) else None
        if old is not None:
            if old.get("format") != MANIFEST_FORMAT:
                raise LICError(f"{self.url}: not a licstore manifest ({old.get('format')!r})")
            if old.get("job") != job:
                raise LICError(
                    f"{dst} holds the output of another job (manifest {self.url}: "
                    f"{old.get('job')}, this job: {job}); use another destination, or delete "
                    "the manifest to start over"
                )
            self.shards = old.get("shards", {})

    def finished(self, shard: _Shard) -> dict | None:
        """The entry of a shard finished from the same sources, if any."""
        entry = self.shards.get(shard.name)
        if entry and entry.get("sources") == list(shard.sources):
            if entry.get("source_signature") == shard.signature:
                if entry.get("row_groups") == (list(shard.row_groups or []) or None):
                    return entry
        return None

    def record(self, shard: _Shard, result: dict) -> None:
        self.shards[shard.name] = {
            "sources": list(shard.sources),
            "source_signature": shard.signature,
            "source_bytes": shard.source_bytes,
            "row_groups": list(shard.row_groups) if shard.row_groups else None,
            "rows": result["rows"],
            "bytes": result["bytes"],
            "sha256": result["sha256"],
            "stats": result["stats"],
            "failures": result["failures"],
        }
        if time.monotonic() - self._written > _MANIFEST_WRITE_INTERVAL:
            self.write()

    def write(self) -> None:
        data = {
            "format": MANIFEST_FORMAT,
            "job": self.job,
            "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "shards": dict(sorted(self.shards.items())),
        }
        with storage_errors(self.url):
            makedirs(self.fs, self.path.rpartition("/")[0])
            atomic_put(self.fs, self.path, json.dumps(data, indent=1).encode())
        self._written = time.monotonic()


# -- the job ------------------------------------------------------------------------------


def compress_parquet(
    src: str,
    dst: str,
    *,
    column: str = "image",
    feature: LICImage | None = None,
    client: distributed.Client | str | None = None,
    workers: int | None = None,
    batch_size: int = column_codec.DEFAULT_BATCH_SIZE,
    max_batch_pixels: int = DEFAULT_MAX_BATCH_PIXELS,
    device: str = "auto",
    batch_transforms: bool | None = None,
    on_error: OnError = "raise",
    row_group_size: int | None = None,
    rows_per_task: int | None = DEFAULT_ROWS_PER_TASK,
    retries: int = 2,
    psnr_samples: int = 2,
    storage_options: dict | None = None,
    progress: bool = True,
) -> JobReport:
    """Compress the image column of a Parquet dataset into a copy at ``dst``, on Dask.

    ``src``: a Parquet file, folder (searched recursively) or glob, on any fsspec URL;
    ``dst``: a folder URL. Each input shard becomes ``dst/<same relative path>`` with the same
    schema and other columns unchanged, ``column`` as ``feature`` (default
    ``LICImage(bpp=0.3)``) storage with the "huggingface" metadata, so
    ``datasets.load_dataset("parquet", data_dir=dst)`` reads it (after ``import licstore``).
    Files with more than ``rows_per_task`` rows are split at row-group boundaries into
    ``<name>.partNNNN.parquet`` (None: one task per file).

    ``client``: None starts a local cluster of ``workers`` processes (default one per core);
    or a ``distributed.Client`` / scheduler address (``memory://`` URLs are per process: use
    them only with in-process workers). Rows go to the encoder ``batch_size`` at a time,
    same-size images together, at most ``max_batch_pixels`` decoded pixels per batch;
    ``device="auto"`` encodes on each worker's GPU when it has one. ``batch_transforms``
    (None: on CUDA only) batches the network too. ``row_group_size``: rows per output row
    group (None: ``licstore.parquet.DEFAULT_ROW_GROUP_SIZE``). ``retries``: re-runs of a task
    that raised (dead workers are handled by the scheduler's ``allowed-failures``).

    ``on_error="raise"`` stops at the first row that cannot be encoded
    (``UnsupportedImageError``/``CorruptBitstreamError`` naming shard and row; finished shards
    stay recorded for a rerun); ``"copy"`` stores it unencoded (original bytes, ``codec``
    null) and lists it in ``JobReport.failures``. Rerunning the same job skips verified
    finished shards (``JobReport.shards_skipped``).
    """
    feature = feature if feature is not None else LICImage(bpp=0.3)
    job = _make_job(
        dst=dst,
        column=column,
        feature=feature,
        batch_size=batch_size,
        max_batch_pixels=max_batch_pixels,
        device=device,
        batch_transforms=batch_transforms,
        on_error=on_error,
        row_group_size=row_group_size,
        psnr_samples=psnr_samples,
        storage_options=storage_options,
    )
    fingerprint = job.fingerprint("compress_parquet", rows_per_task)
    with _connect(client, workers) as (c, threads):
        started = time.perf_counter()  # cluster start-up excluded, planning included
        _setup_workers(c, job, threads)
        shards = _plan_parquet(c, src, dst, job.storage_options, column, rows_per_task)
        return _run(c, src, shards, job, fingerprint, retries, progress, started)


def compress_images(
    src_glob: str,
    dst: str,
    *,
    shard_rows: int = 1000,
    feature: LICImage | None = None,
    client: distributed.Client | str | None = None,
    workers: int | None = None,
    batch_size: int = column_codec.DEFAULT_BATCH_SIZE,
    max_batch_pixels: int = DEFAULT_MAX_BATCH_PIXELS,
    device: str = "auto",
    batch_transforms: bool | None = None,
    on_error: OnError = "raise",
    row_group_size: int | None = None,
    retries: int = 2,
    psnr_samples: int = 2,
    storage_options: dict | None = None,
    progress: bool = True,
) -> JobReport:
    """Pack image files (a folder, searched recursively, or a glob, on any fsspec URL) into
    Parquet shards ``dst/part-NNNNN.parquet`` of ``shard_rows`` images (sorted by path), with
    columns ``image`` (``feature``, default ``LICImage(bpp=0.3)``) and ``path`` (the source
    URL). Readable with ``datasets.load_dataset("parquet", data_dir=dst)``. Cluster, batching,
    errors and resume as in ``compress_parquet``; an unreadable file is a failed row.
    """
    if shard_rows < 1:
        raise ValueError(f"shard_rows must be >= 1, got {shard_rows}")
    feature = feature if feature is not None else LICImage(bpp=0.3)
    job = _make_job(
        dst=dst,
        column="image",
        feature=feature,
        batch_size=batch_size,
        max_batch_pixels=max_batch_pixels,
        device=device,
        batch_transforms=batch_transforms,
        on_error=on_error,
        row_group_size=row_group_size,
        psnr_samples=psnr_samples,
        storage_options=storage_options,
    )
    fingerprint = job.fingerprint("compress_images", shard_rows)
    t = time.perf_counter()
    shards = _plan_images(src_glob, job.storage_options, shard_rows)
    listing = time.perf_counter() - t
    with _connect(client, workers) as (c, threads):
        started = time.perf_counter() - listing  # cluster start-up excluded, listing included
        _setup_workers(c, job, threads)
        return _run(c, src_glob, shards, job, fingerprint, retries, progress, started)


def _make_job(
    *,
    dst: str,
    column: str,
    feature: LICImage,
    batch_size: int,
    max_batch_pixels: int,
    device: str,
    batch_transforms: bool | None,
    on_error: str,
    row_group_size: int | None,
    psnr_samples: int,
    storage_options: dict | None,
) -> _Job:
    if on_error not in ("raise", "copy"):
        raise ValueError(f"on_error must be 'raise' or 'copy', got {on_error!r}")
    if not isinstance(feature, LICImage):
        raise TypeError(f"feature must be a licstore.LICImage, got {feature!r}")
    row_group_size = row_group_size or DEFAULT_ROW_GROUP_SIZE
    if row_group_size < 1 or batch_size < 1 or max_batch_pixels < 1:
        raise ValueError("row_group_size, batch_size and max_batch_pixels must be >= 1")
    return _Job(
        dst=dst,
        column=column,
        feature=feature,
        settings=feature.settings(),  # an unknown model or bad rate fails before any work
        batch_size=batch_size,
        max_batch_pixels=max_batch_pixels,
        device=device,
        batch_transforms=batch_transforms,
        on_error=on_error,
        row_group_size=row_group_size,
        psnr_samples=max(0, psnr_samples),
        storage_options=dict(storage_options or {}),
    )


def _setup_workers(client: distributed.Client, job: _Job, threads: int | None) -> None:
    weights = [p for p in os.environ.get("LICSTORE_WEIGHTS", "").split(os.pathsep) if p]
    plugin = LicstoreWorkerPlugin(job.settings.model, job.device, threads, weights)
    client.register_plugin(plugin)


def _run(
    client: distributed.Client,
    src: str,
    shards: list[_Shard],
    job: _Job,
    fingerprint: dict,
    retries: int,
    progress: bool,
    started: float,
) -> JobReport:
    from tqdm import tqdm

    names = [s.name for s in shards]
    if len(set(names)) != len(names):
        raise ValueError(f"input files map to the same output names: {sorted(names)}")
    manifest = _Manifest(job.dst, job.storage_options, fingerprint)
    manifest.write()  # before any task: a destination that cannot be written fails now
    report = JobReport(src=src, dst=job.dst, manifest=manifest.url, on_error=job.on_error)
    report.shards_total = len(shards)

    # finished shards: verified where the data is (on the workers), in parallel
    candidates = [(s, e) for s in shards if (e := manifest.finished(s)) is not None]
    checks = client.map(
        _verify_output,
        [job.dst] * len(candidates),
        [job.storage_options] * len(candidates),
        [s.name for s, _ in candidates],
        [e for _, e in candidates],
        pure=False,
    )
    verified = {s.name for (s, _), ok in zip(candidates, client.gather(checks)) if ok}
    todo = [s for s in shards if s.name not in verified]
    # entries of shards outside this input (an earlier run on another glob) stay as they are
    report.other_shards = sorted(set(manifest.shards) - set(names))
    for s in shards:
        if s.name in verified:
            report.shards_skipped += 1
            report.rows_skipped += manifest.shards[s.name]["rows"]

    total_rows = sum(s.rows for s in shards)
    bar = tqdm(
        total=total_rows,
        initial=report.rows_skipped,
        unit="img",
        desc="licstore",
        disable=not progress,
        dynamic_ncols=True,
    )
    abort = distributed.Event(f"licstore-abort-{uuid.uuid4().hex}", client=client)
    futures = {
        client.submit(
            _run_shard,
            s,
            job,
            abort.name,
            key=f"licstore-{s.name}-{uuid.uuid4().hex[:8]}",
            retries=retries,
            pure=False,
        ): s
        for s in todo
    }
    failed: list[dict] = []
    stragglers = 0
    try:
        for future in distributed.as_completed(futures):
            shard = futures[future]
            try:
                result = future.result()  # a task that kept failing raises here
            except distributed.KilledWorker as e:
                raise LICError(
                    f"shard {shard.name}: its worker died {_allowed_failures() + 1} times "
                    "(out of memory?); finished shards are kept and a rerun skips them "
                    "(Dask setting distributed.scheduler.allowed-failures)"
                ) from e
            if "sha256" not in result:  # on_error="raise": a bad row
                failed = result["failures"]
                break
            manifest.record(shard, result)
            bar.update(result["rows"])
    finally:
        bar.close()
        try:
            stragglers = _drain(client, abort, futures, manifest)
        finally:
            manifest.write()
    if failed:
        if not stragglers:  # a straggler removes its own temporary file when it stops
            _cleanup_temporaries(job, names)
        first = failed[0]
        cls = getattr(errors, first["error"], None)
        cls = cls if isinstance(cls, type) and issubclass(cls, LICError) else LICError
        raise cls(
            f"shard {first['shard']} ({first['source']}), row {first['row']}: {first['reason']} "
            "(on_error='copy' stores such rows unencoded; finished shards are kept and a rerun "
            "skips them)"
        )
    _cleanup_temporaries(job, names)
    _fill_report(report, shards, manifest, job)
    report.shards_done = len(todo)
    report.wall_seconds = time.perf_counter() - started
    return report


def _drain(client: distributed.Client, abort: Any, futures: dict, manifest: _Manifest) -> int:
    """After a failure, stop the other shards and wait for them, so that no task still writes
    when the error reaches the caller. Shards that finished meanwhile are kept (recorded).
    Returns how many tasks still ran after ``_DRAIN_SECONDS`` (stragglers: the abort event
    stays set for them, and the temporary files are theirs to remove, not the sweep's).
    Never raises: the error that stopped the job is the one the caller must see."""
    pending = [f for f in futures if not f.done()]
    stragglers = pending
    if not pending:
        return 0
    try:
        with contextlib.suppress(Exception):
            abort.set()
            distributed.wait(pending, timeout=_DRAIN_SECONDS)
    finally:  # also on a second Ctrl-C while waiting
        with contextlib.suppress(Exception):
            for future in pending:
                if future.status == "finished" and "sha256" in (result := future.result()):
                    manifest.record(futures[future], result)
        with contextlib.suppress(Exception):
            stragglers = [f for f in pending if not f.done()]
            client.cancel(stragglers)
            if not stragglers:  # a straggler still running must go on seeing the abort
                abort.clear()  # frees the scheduler's record of the event
    return len(stragglers)


def _cleanup_temporaries(job: _Job, names: Sequence[str]) -> None:
    """Temporary files a killed worker left behind (every task of the job has finished)."""
    fs, root = _fs(job.dst, job.storage_options)
    for name in names:
        with contextlib.suppress(OSError):
            for stale in fs.glob(temporary_glob(f"{root.rstrip('/')}/{name}")):
                fs.rm(stale)
    with contextlib.suppress(OSError):  # object stores: uploads that were never committed
        abort_uploads(fs, [f"{root.rstrip('/')}/{name}" for name in names])


def _fill_report(report: JobReport, shards: list[_Shard], manifest: _Manifest, job: _Job) -> None:
    stats = _Stats()
    fs, root = _fs(job.dst, job.storage_options)
    for s in shards:
        entry = manifest.shards[s.name]
        stats.add(entry["stats"])
        report.bytes_in += entry.get("source_bytes", s.source_bytes)
        report.bytes_out += entry["bytes"]
        report.failures.extend(RowFailure(**f) for f in entry["failures"])
        report.outputs.append(fs.unstrip_protocol(f"{root.rstrip('/')}/{s.name}"))
    report.rows_in = stats.rows
    report.rows_out = sum(manifest.shards[s.name]["rows"] for s in shards)
    report.rows_encoded = stats.encoded
    report.rows_passed = stats.passed
    report.rows_null = stats.null
    report.rows_copied = stats.copied
    report.image_bytes_in = stats.image_bytes_in
    report.image_bytes_out = stats.image_bytes_out
    report.mean_bpp = stats.bits / stats.pixels if stats.pixels else None
    report.mean_psnr = stats.psnr_sum / stats.psnr_n if stats.psnr_n else None
    report.psnr_samples = stats.psnr_n


def _allowed_failures() -> int:
    """How often the scheduler reschedules a task whose worker died (Dask configuration)."""
    return int(dask.config.get("distributed.scheduler.allowed-failures"))
