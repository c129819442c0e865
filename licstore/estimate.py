"""What compressing a dataset would save, measured on a sample before committing a cluster.

``estimate(source, sample=32, bpp=0.3)`` draws ``sample`` images at random (``seed``: the same
sample every run) from an image folder, a Parquet dataset (file, folder or glob) or a
``datasets`` dataset (a ``Dataset``, or a ``save_to_disk`` folder) on any fsspec URL, encodes
each with ``licstore.encode`` in this process, and projects to the whole dataset:

- compressed size: the number of images times the sample's mean compressed size, with a
  confidence interval from the sample's standard error (Student t, finite-population
  corrected: a sample of the whole dataset has no error);
- the ratio to the current size: the image bytes as stored (file sizes of a folder; the image
  column's ``bytes`` chunks in the Parquet footers; the rows' byte lengths of a ``datasets``
  table) and, for Parquet, the whole files (other columns stay as they are);
- PSNR of the decoded sample against its source (mean, interval, minimum);
- encode time on this machine for the whole dataset, one process (divide by the workers of a
  cluster: ``licstore.dask`` runs one single-threaded encoder per core).

Only what it needs is read: listings or Parquet footers for the sizes, then the sampled
files or row groups. CLI: ``licstore estimate SOURCE [--bpp|--quality|--psnr] [--sample N]``.
"""

from __future__ import annotations

import io
import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .parquet import _LAZY_OPEN
from .storage import storage_errors, url_to_fs

__all__ = ["Estimate", "Interval", "estimate"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".ppm")
_ENCODE_OPTIONS = ("bpp", "quality", "psnr", "model", "residual", "lossless", "effort", "device")


@dataclass
class Interval:
    """A projection: ``value`` with its ``confidence`` interval ``[low, high]``."""

    value: float
    low: float
    high: float

    def scaled(self, factor: float, offset: float = 0.0) -> Interval:
        return Interval(
            self.value * factor + offset, self.low * factor + offset, self.high * factor + offset
        )


@dataclass
class Estimate:
    """The result of :func:`estimate`; ``str()`` is the report the CLI prints."""

    source: str
    kind: str  # "images", "parquet" or "datasets"
    images: int  # in the whole dataset
    sampled: int
    seed: int
    settings: dict
    confidence: float
    current_image_bytes: int
    current_total_bytes: int  # the files (Parquet: every column); = image bytes otherwise
    compressed_image_bytes: Interval
    projected_total_bytes: Interval
    psnr: Interval | None  # None when the layers are lossless (infinite PSNR)
    min_psnr: float | None
    encode_seconds: Interval  # whole dataset, this process
    seconds_per_image: float
    already_lic: int = 0  # sampled rows that already hold licstore bitstreams (kept as they are)
    sample_bytes: list[tuple[int, int]] = field(default_factory=list)  # (current, compressed)

    @property
    def ratio(self) -> Interval:
        """Projected total size / current total size."""
        return self.projected_total_bytes.scaled(1 / max(self.current_total_bytes, 1))

    def to_dict(self) -> dict:
        return {**asdict(self), "ratio": asdict(self.ratio)}

    def __str__(self) -> str:
        pct = round(100 * self.confidence)
        c, t, r = self.compressed_image_bytes, self.projected_total_bytes, self.ratio
        rate = ", ".join(f"{k}={v}" for k, v in self.settings.items() if v not in (None, False))
        lines = [
            f"source:    {self.source} ({self.kind}, {self.images:,} images)",
            f"sample:    {self.sampled} images (seed {self.seed}), {rate or 'quality=4'}",
            f"current:   {self.current_image_bytes:,} B of images"
            + (
                f" in {self.current_total_bytes:,} B of files"
                if self.current_total_bytes != self.current_image_bytes
                else ""
            ),
            f"projected: {c.value:,.0f} B of images ({pct}% CI {c.low:,.0f} .. {c.high:,.0f})",
            f"total:     {t.value:,.0f} B = {100 * r.value:.1f}% of the current size "
            f"({pct}% CI {100 * r.low:.1f}% .. {100 * r.high:.1f}%), "
            f"{1 / max(r.value, 1e-12):.1f}x smaller",
        ]
        if self.psnr is not None:
            p = self.psnr
            lines.append(
                f"PSNR:      {p.value:.2f} dB mean ({pct}% CI {p.low:.2f} .. {p.high:.2f}), "
                f"lowest sampled {self.min_psnr:.2f} dB"
            )
        else:
            lines.append("PSNR:      lossless (decoded images equal the sources)")
        e = self.encode_seconds
        lines.append(
            f"encode:    {_duration(e.value)} for the dataset on this machine, one process "
            f"({pct}% CI {_duration(e.low)} .. {_duration(e.high)}; "
            f"{self.seconds_per_image:.3f} s/image)"
        )
        if self.already_lic:
            lines.append(f"note:      {self.already_lic} sampled rows are licstore bitstreams")
        return "\n".join(lines)


def estimate(
    source: Any,
    *,
    sample: int = 32,
    seed: int = 0,
    column: str = "image",
    storage_options: dict | None = None,
    confidence: float = 0.95,
    **encode_options: Any,
) -> Estimate:
    """Project size, PSNR and encode time of compressing ``source`` from ``sample`` images.

    ``source``: an image folder, Parquet file/folder/glob or ``save_to_disk`` folder (any
    fsspec URL, reached with ``storage_options``), or a ``datasets.Dataset``. ``column``: the
    image column (Parquet, datasets). ``encode_options`` go to ``licstore.encode`` (``bpp``,
    ``quality``, ``psnr``, ``model``, ``residual``, ``lossless``, ...). The sample is drawn
    without replacement with ``numpy.random.default_rng(seed)``.
    """
    unknown = set(encode_options) - set(_ENCODE_OPTIONS)
    if unknown:
        raise TypeError(f"unknown options {sorted(unknown)}; encode options: {_ENCODE_OPTIONS}")
    if sample < 2:
        raise ValueError(f"sample must be >= 2 (an interval needs two images), got {sample}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    from .ratecontrol import RateTarget

    RateTarget.from_kwargs(
        encode_options.get("bpp"), encode_options.get("quality"), encode_options.get("psnr")
    )
    rng = np.random.default_rng(seed)
    if _is_dataset(source):
        name, kind, population = repr(source)[:60], "datasets", _DatasetSource(source, column)
    else:
        name = os.fspath(source)
        population, kind = _open_source(name, storage_options or {}, column)
    n = population.count
    if n == 0:
        raise ValueError(f"{name}: no images")
    picks = np.sort(rng.choice(n, size=min(sample, n), replace=False))
    with storage_errors(name):
        rows = population.read(picks.tolist())
    return _measure(name, kind, population, rows, seed, confidence, encode_options)


# -- sources --------------------------------------------------------------------------------


class _FolderSource:
    """Image files under a folder or glob: sizes from the listing."""

    def __init__(self, fs: Any, files: list[tuple[str, int]]) -> None:
        self.fs, self.files = fs, files
        self.count = len(files)
        self.image_bytes = self.total_bytes = sum(size for _, size in files)

    def read(self, picks: list[int]) -> list[bytes]:
        return [self.fs.cat_file(self.files[i][0]) for i in picks]


class _ParquetSource:
    """Rows of an image column across Parquet files: counts and sizes from the footers."""

    def __init__(self, fs: Any, files: list[tuple[str, int]], column: str) -> None:
        import pyarrow.parquet as pq

        self.fs, self.column = fs, column
        self.groups: list[tuple[str, int, int]] = []  # (path, row group, first global row)
        self.footers: dict[str, Any] = {}  # read once: sampling reads only row groups
        self.count = self.image_bytes = self.total_bytes = 0
        for path, size in files:
            with fs.open(path, "rb", **_LAZY_OPEN) as f:
                md = self.footers[path] = pq.ParquetFile(f).metadata
            names = [md.schema.column(j).path for j in range(md.num_columns)]
            leaves = [j for j, p in enumerate(names) if p in (column, f"{column}.bytes")]
            if not leaves:
                raise KeyError(f"{fs.unstrip_protocol(path)}: no image column {column!r}")
            for g in range(md.num_row_groups):
                rg = md.row_group(g)
                self.groups.append((path, g, self.count))
                self.count += rg.num_rows
                self.image_bytes += sum(rg.column(j).total_compressed_size for j in leaves)
            self.total_bytes += size

    def read(self, picks: list[int]) -> list[Any]:
        import bisect

        import pyarrow.parquet as pq

        from .features import _rows_of

        starts = [first for _, _, first in self.groups]
        wanted: dict[int, list[int]] = {}
        for row in picks:
            wanted.setdefault(bisect.bisect_right(starts, row) - 1, []).append(row)
        out: dict[int, Any] = {}
        for g, rows in wanted.items():
            path, group, first = self.groups[g]
            with self.fs.open(path, "rb", **_LAZY_OPEN) as f:
                pf = pq.ParquetFile(f, metadata=self.footers[path])
                array = pf.read_row_group(group, columns=[self.column]).column(0)
            values = _rows_of(array.combine_chunks())
            out.update({r: values[r - first] for r in rows})
        return [out[r] for r in picks]


class _DatasetSource:
    """A ``datasets.Dataset``: the image column read from its Arrow table."""

    def __init__(self, ds: Any, column: str) -> None:
        import pyarrow as pa
        import pyarrow.compute as pc

        if column not in ds.column_names:
            raise KeyError(f"no column {column!r}; columns: {ds.column_names}")
        self.table = ds.data.table
        self.column = column
        self.count = ds.num_rows
        array = self.table.column(column)
        if pa.types.is_struct(array.type):
            array = pc.struct_field(array, "bytes")
        lengths = pc.sum(pc.binary_length(array)).as_py() if len(array) else 0
        self.image_bytes = self.total_bytes = int(lengths or 0)

    def read(self, picks: list[int]) -> list[Any]:
        import pyarrow as pa

        from .features import _rows_of

        taken = self.table.column(self.column).take(pa.array(picks)).combine_chunks()
        return _rows_of(taken)


def _is_dataset(source: Any) -> bool:
    return type(source).__name__ == "Dataset" and hasattr(source, "data")


def _open_source(url: str, storage_options: dict, column: str) -> tuple[Any, str]:
    from fsspec.core import has_magic

    fs, path = url_to_fs(url, storage_options)
    with storage_errors(url):
        if not has_magic(path) and fs.isdir(path):
            base = path.rstrip("/")
            if fs.exists(f"{base}/state.json") or fs.exists(f"{base}/dataset_dict.json"):
                import datasets

                ds = datasets.load_from_disk(url, storage_options=storage_options or None)
                if isinstance(ds, datasets.DatasetDict):
                    ds = ds[next(iter(ds))]
                return _DatasetSource(ds, column), "datasets"
            infos = fs.find(base, detail=True)
        elif has_magic(path):
            infos = fs.glob(path, detail=True)
        else:
            infos = {path: fs.info(path)}
        files = sorted(
            (p, int(i.get("size") or 0))
            for p, i in infos.items()
            if i.get("type") != "directory"
            and not any(part.startswith((".", "_")) for part in p.split("/")[-1:])
        )
        parquet = [(p, s) for p, s in files if p.lower().endswith(".parquet")]
        if parquet:
            return _ParquetSource(fs, parquet, column), "parquet"
        images = [(p, s) for p, s in files if p.lower().endswith(IMAGE_SUFFIXES)]
        if not images:
            raise FileNotFoundError(f"no Parquet files or images under {url!r}")
        return _FolderSource(fs, images), "images"


# -- measuring ------------------------------------------------------------------------------


def _source_bytes(row: Any) -> bytes | None:
    if isinstance(row, dict):
        if row.get("bytes") is not None:
            return row["bytes"]
        if row.get("path"):
            from .column_codec import read_url

            return read_url(row["path"])
        return None
    return row


def _measure(
    name: str,
    kind: str,
    population: Any,
    rows: list[Any],
    seed: int,
    confidence: float,
    options: dict,
) -> Estimate:
    from PIL import Image, ImageOps

    from . import codec
    from .container import MAGIC
    from .metrics import psnr

    sizes, compressed, seconds, psnrs, lic = [], [], [], [], 0
    warm = False  # the first encode loads the model: encode one image once untimed
    for row in rows:
        data = _source_bytes(row)
        if data is None:
            continue
        if data[: len(MAGIC)] == MAGIC:  # already compressed: stays as it is
            lic += 1
            sizes.append(len(data))
            compressed.append(len(data))
            seconds.append(0.0)
            continue
        if not warm:
            codec.encode(data, **options)
            warm = True
        started = time.perf_counter()
        bitstream = codec.encode(data, **options)
        seconds.append(time.perf_counter() - started)
        sizes.append(len(data))
        compressed.append(len(bitstream))
        source = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
        decoded = codec.decode(bitstream).convert("RGB")
        psnrs.append(psnr(np.asarray(source), np.asarray(decoded)))
    if len(compressed) < 2:
        raise ValueError(f"{name}: fewer than two sampled rows hold images")
    n = population.count
    image_bytes = population.image_bytes
    if kind == "datasets" and image_bytes == 0:  # rows by path only: sizes from the sample
        image_bytes = population.total_bytes = round(n * float(np.mean(sizes)))
    c = _total(compressed, n, confidence)
    finite = [p for p in psnrs if math.isfinite(p)]
    return Estimate(
        source=name,
        kind=kind,
        images=n,
        sampled=len(compressed),
        seed=seed,
        settings={k: options.get(k) for k in _ENCODE_OPTIONS if k != "device"},
        confidence=confidence,
        current_image_bytes=int(image_bytes),
        current_total_bytes=int(population.total_bytes),
        compressed_image_bytes=c,
        projected_total_bytes=c.scaled(1, population.total_bytes - image_bytes),
        psnr=_mean(finite, n, confidence) if len(finite) >= 2 else None,
        min_psnr=min(finite) if finite else None,
        encode_seconds=_total(seconds, n, confidence),
        seconds_per_image=float(np.mean(seconds)),
        already_lic=lic,
        sample_bytes=list(zip(sizes, compressed)),
    )


def _mean(values: Sequence[float], population: int, confidence: float) -> Interval:
    """Sample mean with its t interval, finite-population corrected."""
    from scipy import stats

    x = np.asarray(values, dtype=np.float64)
    n = len(x)
    fpc = math.sqrt(max(population - n, 0) / max(population - 1, 1))
    half = stats.t.ppf(0.5 + confidence / 2, n - 1) * x.std(ddof=1) / math.sqrt(n) * fpc
    return Interval(float(x.mean()), float(x.mean() - half), float(x.mean() + half))


def _total(values: Sequence[float], population: int, confidence: float) -> Interval:
    m = _mean(values, population, confidence).scaled(population)
    return Interval(m.value, max(m.low, 0.0), m.high)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


# -- CLI ------------------------------------------------------------------------------------


def add_parser(sub: Any) -> None:
    """``licstore estimate``: the subcommand (added by ``licstore.cli``)."""
    p = sub.add_parser(
        "estimate", help="project the savings of compressing a dataset from a sample"
    )
    p.add_argument("source", help="image folder, Parquet file/folder/glob or save_to_disk folder")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--bpp", type=float, help="target bits per pixel")
    g.add_argument("--quality", type=int, help="quality level 1..8 (default 4)")
    g.add_argument("--psnr", type=float, help="target PSNR in dB")
    p.add_argument("--model", help="model name (see `licstore models`)")
    enh = p.add_mutually_exclusive_group()
    enh.add_argument("--residual", choices=["hevc"], help="add the HEVC residual layer")
    enh.add_argument("--lossless", action="store_true", help="add the exact residual layer")
    p.add_argument("--sample", type=int, default=32, help="images to encode (default 32)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--column", default="image", help="image column (default: image)")
    p.add_argument(
        "--storage-options",
        type=json.loads,
        default=None,
        help='fsspec options as JSON, e.g. \'{"endpoint_url": "http://127.0.0.1:9000"}\'',
    )
    p.add_argument("--json", action="store_true", help="print the estimate as JSON")
    p.set_defaults(func=_cmd)


def _cmd(args: Any) -> int:
    import sys

    from .errors import LICError

    options = {
        k: getattr(args, k)
        for k in ("bpp", "quality", "psnr", "model", "residual")
        if getattr(args, k) is not None
    }
    if args.lossless:
        options["lossless"] = True
    try:
        result = estimate(
            args.source,
            sample=args.sample,
            seed=args.seed,
            column=args.column,
            storage_options=args.storage_options,
            **options,
        )
    except (LICError, OSError, KeyError, ValueError) as e:
        print(f"failed: {e}", file=sys.stderr)
        return 1
    print(json.dumps(result.to_dict(), indent=1) if args.json else result)
    return 0
