"""Reading LIC-compressed images in PyTorch training loops.

Three pieces, all decoding where the data is consumed (DataLoader workers, or one device):

* ``LICDataset``: map-style dataset over ``LICImage`` Parquet shards (a path, glob, folder or
  list, on any fsspec URL) or a Hugging Face ``datasets.Dataset``. A global index maps to
  (file, row group, row) through the Parquet footers, read once in the main process; each
  worker keeps the most recently read row group, so sequential or nearby indices cost one
  read per row group.
* ``LICIterableDataset``: streams shards row group by row group through a seeded shuffle
  buffer, split across DataLoader workers and distributed ranks, and resumable mid-epoch
  (``state_dict`` / ``load_state_dict``; with workers, iterate it through
  ``ResumableDataLoader``).
* ``BatchDecoder``: decodes a batch of bitstreams, entropy decoding on the CPU (optionally in
  threads) and the synthesis transform batched on a device; usable as ``collate_fn``.

The iteration order and the resume state
----------------------------------------
The unit of reading is a row group (``split="row_groups"``) or a whole file
(``split="shards"``). Per epoch, the units are permuted with ``seed`` and ``epoch`` (when
``shuffle_buffer >= 1``) and dealt round robin to the ranks, then each rank's units round
robin to its ``W = max(num_workers, 1)`` *streams* (one per DataLoader worker), so a rank's
share does not depend on its number of workers. A stream's rows (its units' rows, in order)
pass through a shuffle buffer of ``shuffle_buffer`` rows driven by its own seeded generator
(seeded with ``seed``, ``epoch`` and the stream's global index). The
whole order is a function of the Parquet metadata, so it is computed without reading any
image: a worker reads each of its row groups once, when the first of its rows is due, and
keeps only rows still to come (at most about ``shuffle_buffer`` + one row group).

The state (``LICIterableDataset.state_dict()``, a JSON-able dict) is the position of the
*consumer*, not of the readers:

* ``epoch``, ``seed``, ``shuffle_buffer``, ``split``, ``rank``, ``world_size``, ``num_workers``
  and ``fingerprint`` (a hash of the shards' names and row-group sizes): what the order
  depends on; resuming with different values raises ``ValueError`` (a state that consumed
  nothing fits any ``num_workers``);
* ``rows``: per stream, how many of its rows the consumer has received this epoch;
* ``next_stream``: the stream whose batch the DataLoader hands over next.

With ``num_workers=0`` the dataset counts the rows it yields. With workers, the main
process cannot see the workers' dataset copies; ``ResumableDataLoader`` counts the batches
it delivers and derives the per-stream rows from the DataLoader's in-order round robin over
workers (worker ``k`` hands over every ``W``-th batch, exhausted workers drop out). On
resume, each stream recomputes its order and skips its consumed rows without reading them
(only the row groups that still hold rows to come are read), and worker ``k`` takes stream
``(k + next_stream) % W``, so the continuation is the uninterrupted run's, row for row and
batch for batch, given the same ``seed``, ``batch_size``, ``drop_last`` and ``num_workers``.
Each rank saves its own state. A rank's rows per epoch can differ from another rank's by up
to one unit (``num_rows``): for DDP, use equal-sized units or stop every rank's epoch after
the smallest rank's number of batches.
"""

from __future__ import annotations

import bisect
import collections
import hashlib
import json
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.utils.data as tud
from PIL import Image

from . import carried_weights, codec, container, limits, models
from . import precision as _precision
from .arrow import _bitstreams_of, _pixels
from .column_codec import is_bitstream
from .errors import CorruptBitstreamError, LICError, with_context

__all__ = [
    "BatchDecoder",
    "LICDataset",
    "LICIterableDataset",
    "ResumableDataLoader",
    "to_tensor",
]

Output = Literal["pil", "tensor"]
Split = Literal["row_groups", "shards"]

#: open Parquet files kept per process (a stream or a random-access pattern hops between few)
_MAX_OPEN_FILES = 4
_STATE_KIND = "licstore.LICIterableDataset/1"


def to_tensor(image: Image.Image) -> torch.Tensor:
    """A decoded image as a CHW uint8 tensor (L -> 1 channel, P -> RGB(A), as ``output="numpy"``
    elsewhere in licstore), without torchvision."""
    return torch.from_numpy(_pixels(image).transpose(2, 0, 1).copy())


# -- shards ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Shard:
    url: str
    group_rows: tuple[int, ...]

    @property
    def name(self) -> str:
        return self.url.rstrip("/").rsplit("/", 1)[-1]


def _expand(paths: Any, storage_options: dict | None) -> list[str]:
    """Files named by a path, glob, folder (its ``*.parquet``) or a list of them, as URLs."""
    from fsspec.core import url_to_fs

    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if not items:
        raise ValueError("no shards given")
    out: list[str] = []
    for item in items:
        item = os.fspath(item)
        fs, path = url_to_fs(item, **(storage_options or {}))
        if any(c in path for c in "*?["):
            found = sorted(fs.glob(path))
        elif fs.isdir(path):
            found = sorted(fs.glob(path.rstrip("/") + "/*.parquet"))
        else:
            found = [path]
        if not found:
            raise FileNotFoundError(f"no Parquet files match {item!r}")
        local = "file" in fs.protocol or "local" in fs.protocol
        out += [p if local else fs.unstrip_protocol(p) for p in found]
    return out


class _ShardFiles:
    """Open Parquet files of this process. Handles never cross a fork or a pickle: a worker
    opens its own, and an async filesystem gets a fresh event-loop lock in the child."""

    def __init__(self, storage_options: dict | None):
        self.storage_options = dict(storage_options or {})
        self._pid = os.getpid()
        self._open: collections.OrderedDict[str, tuple[Any, pq.ParquetFile]] = (
            collections.OrderedDict()
        )

    def __getstate__(self) -> dict:
        return {"storage_options": self.storage_options}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["storage_options"])

    def get(self, url: str) -> pq.ParquetFile:
        if os.getpid() != self._pid:  # forked: the parent's handles belong to the parent
            import fsspec.asyn

            fsspec.asyn.reset_lock()
            self._open = collections.OrderedDict()
            self._pid = os.getpid()
        if url in self._open:
            self._open.move_to_end(url)
            return self._open[url][1]
        from fsspec.core import url_to_fs

        fs, path = url_to_fs(url, **self.storage_options)
        f = fs.open(path, "rb")
        try:
            pf = pq.ParquetFile(f)
        except Exception:
            f.close()
            raise
        # the weights the shard's footer records (its dataset's .licstore-weights/ folder)
        carried_weights.register_footer(fs, path, pf.metadata.metadata)
        self._open[url] = (f, pf)
        while len(self._open) > _MAX_OPEN_FILES:
            self._open.popitem(last=False)[1][0].close()
        return pf


def _read_footers(
    urls: Sequence[str], storage_options: dict | None, needed: Sequence[str]
) -> list[_Shard]:
    """Row-group sizes of every shard, read once (in threads: remote footers are latency)."""
    from fsspec.core import url_to_fs

    def footer(url: str) -> _Shard:
        fs, path = url_to_fs(url, **(storage_options or {}))
        with fs.open(path, "rb") as f:
            pf = pq.ParquetFile(f)
            names = pf.schema_arrow.names
            missing = [c for c in needed if c not in names]
            if missing:
                raise KeyError(f"{url}: no column {missing[0]!r}; columns: {names}")
            md = pf.metadata
            carried_weights.register_footer(fs, path, md.metadata)  # for BatchDecoder here
            return _Shard(url, tuple(md.row_group(g).num_rows for g in range(md.num_row_groups)))

    if len(urls) < 4:
        return [footer(url) for url in urls]
    with ThreadPoolExecutor(min(16, len(urls))) as pool:
        return list(pool.map(footer, urls))


@dataclass
class _Group:
    """One row group's rows: bitstreams (None for a missing image) and the other columns."""

    datas: list[bytes | None]
    values: dict[str, list]
    first_row: int  # index in its file of the group's first row


def _read_group(
    files: _ShardFiles, shard: _Shard, group: int, image_column: str, columns: Sequence[str]
) -> _Group:
    first = sum(shard.group_rows[:group])
    table = files.get(shard.url).read_row_group(group, columns=[image_column, *columns])
    ids = range(first, first + table.num_rows)
    try:
        datas = _bitstreams_of(table.column(image_column).combine_chunks(), ids)
    except CorruptBitstreamError as e:
        raise CorruptBitstreamError(f"{shard.url}: {e}") from e
    values = {c: table.column(c).to_pylist() for c in columns}
    return _Group(datas, values, first)


# -- rows to items --------------------------------------------------------------------------


@dataclass
class _ItemFormat:
    """What a row becomes: the image (decoded, converted, transformed) or its raw bitstream,
    alone or with other columns in a dict."""

    image_column: str
    columns: tuple[str, ...]
    decode: bool
    output: Output
    mode: str | None
    transform: Callable[[Any], Any] | None

    def __post_init__(self) -> None:
        if self.output not in ("pil", "tensor"):
            raise ValueError(f"output must be 'pil' or 'tensor', got {self.output!r}")
        if not self.decode and (self.transform is not None or self.mode is not None):
            raise ValueError("transform and mode need decode=True (decode=False returns bytes)")
        if self.image_column in self.columns:
            raise ValueError(f"columns must not repeat the image column {self.image_column!r}")

    def item(self, data: bytes | None, values: Mapping[str, Any], where: str) -> Any:
        image: Any = data
        if data is not None and self.decode:
            try:
                image = codec.decode(bytes(data))
            except LICError as e:  # same class (a DecodeLimitError stays one), naming the row
                raise with_context(e, where) from e
            if self.mode is not None and image.mode != self.mode:
                image = image.convert(self.mode)
            if self.output == "tensor":
                image = to_tensor(image)
            if self.transform is not None:
                image = self.transform(image)
        if not self.columns:
            return image
        return {self.image_column: image, **{c: values[c] for c in self.columns}}


def _format(
    image_column: str,
    columns: Sequence[str] | None,
    decode: bool,
    output: Output,
    mode: str | None,
    transform: Callable | None,
) -> _ItemFormat:
    if isinstance(columns, str):
        columns = [columns]
    return _ItemFormat(image_column, tuple(columns or ()), decode, output, mode, transform)


def _hf_dataset(source: Any) -> bool:
    if "datasets" not in sys.modules:
        return False
    import datasets

    if isinstance(source, (datasets.IterableDataset, datasets.DatasetDict)):
        raise TypeError(
            "LICDataset needs a datasets.Dataset (random access); for streaming, write Parquet "
            "shards and use LICIterableDataset"
        )
    return isinstance(source, datasets.Dataset)


# -- map-style ------------------------------------------------------------------------------


class LICDataset(tud.Dataset):
    """Map-style dataset of a ``LICImage`` column, decoding each row where it is fetched.

    Args:
        source: Parquet shards (path, glob, folder, URL or a list of them) or a
            ``datasets.Dataset`` with a ``LICImage`` column.
        image_column: the ``LICImage`` column.
        columns: other columns returned with the image; items are then dicts
            ``{image_column: image, column: value, ...}`` (else the image alone).
        decode: False returns the stored bitstream (decode later with ``BatchDecoder``).
        output: ``"pil"`` or ``"tensor"`` (CHW uint8).
        mode: convert decoded images to this PIL mode first (e.g. ``"RGB"``).
        transform: applied to each decoded image (after ``mode`` and ``output``).
        storage_options: fsspec options for the shard URLs.

    ``stats["row_groups_read"]`` counts the row groups this process has read.
    """

    def __init__(
        self,
        source: Any,
        image_column: str = "image",
        *,
        columns: Sequence[str] | None = None,
        decode: bool = True,
        output: Output = "pil",
        mode: str | None = None,
        transform: Callable[[Any], Any] | None = None,
        storage_options: dict | None = None,
    ):
        self.format = _format(image_column, columns, decode, output, mode, transform)
        self.stats = {"row_groups_read": 0}
        self._cached: tuple[int, _Group] | None = None
        self._hf = None
        if _hf_dataset(source):
            missing = [
                c for c in (image_column, *self.format.columns) if c not in source.column_names
            ]
            if missing:
                raise KeyError(f"no column {missing[0]!r}; columns: {source.column_names}")
            self._hf = source.with_format("arrow", columns=[image_column, *self.format.columns])
            return
        self._files = _ShardFiles(storage_options)
        needed = [image_column, *self.format.columns]
        self.shards = _read_footers(_expand(source, storage_options), storage_options, needed)
        self._units = [(f, g) for f, s in enumerate(self.shards) for g in range(len(s.group_rows))]
        self._starts = [0]
        for f, g in self._units:
            self._starts.append(self._starts[-1] + self.shards[f].group_rows[g])

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_cached"] = None  # a worker starts with an empty cache
        return state

    def __len__(self) -> int:
        return len(self._hf) if self._hf is not None else self._starts[-1]

    def __getitem__(self, index: int) -> Any:
        n = len(self)
        index = int(index)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for a dataset of {n} rows")
        index %= n
        if self._hf is not None:
            table = self._hf[index]
            data = _bitstreams_of(table.column(self.format.image_column).combine_chunks(), [index])
            values = {c: table.column(c)[0].as_py() for c in self.format.columns}
            return self.format.item(data[0], values, f"row {index}")
        unit = bisect.bisect_right(self._starts, index) - 1
        if self._cached is None or self._cached[0] != unit:
            f, g = self._units[unit]
            group = _read_group(
                self._files, self.shards[f], g, self.format.image_column, self.format.columns
            )
            self.stats["row_groups_read"] += 1
            self._cached = (unit, group)
        group = self._cached[1]
        k = index - self._starts[unit]
        shard = self.shards[self._units[unit][0]]
        values = {c: v[k] for c, v in group.values.items()}
        return self.format.item(group.datas[k], values, f"{shard.url} row {group.first_row + k}")


# -- iterable -------------------------------------------------------------------------------


class _StreamOrder:
    """Emission order of one stream's rows (positions ``0..n-1``) through a shuffle buffer.

    Classic buffer: fill ``size`` rows, then each step emits a random buffered row and
    puts the next input row in its place; at the end the rest drains in random order.
    Draws come in blocks of 1024 (fast, and still one fixed sequence per seed)."""

    def __init__(self, n: int, size: int, seed: Sequence[int]):
        self.n, self.size = n, size
        self.rng = np.random.default_rng(list(seed))
        self.buffer: list[int] = []
        self.buffered: set[int] = set()
        self.entered = 0  # input rows that have entered the buffer
        self._draws: list[int] = []

    def _draw(self) -> int:
        if not self._draws:
            self._draws = self.rng.integers(0, self.size, size=1024).tolist()[::-1]
        return self._draws.pop()

    def __iter__(self) -> Iterator[int]:
        return self

    def __next__(self) -> int:
        if self.size <= 1:
            if self.entered >= self.n:
                raise StopIteration
            self.entered += 1
            return self.entered - 1
        while len(self.buffer) < self.size and self.entered < self.n:
            self.buffer.append(self.entered)
            self.buffered.add(self.entered)
            self.entered += 1
        if not self.buffer:
            raise StopIteration
        if self.entered < self.n:
            j = self._draw()
            p, self.buffer[j] = self.buffer[j], self.entered
            self.buffered.add(self.entered)
            self.entered += 1
        else:
            j = int(self.rng.integers(len(self.buffer)))
            p = self.buffer[j]
            self.buffer[j] = self.buffer[-1]
            self.buffer.pop()
        self.buffered.discard(p)
        return p

    def pending(self, q: int) -> bool:
        """Whether input row ``q`` is still to be emitted."""
        return q >= self.entered or q in self.buffered


class LICIterableDataset(tud.IterableDataset):
    """Streams ``LICImage`` Parquet shards for training: shuffled, split, resumable.

    Args:
        shards: path, glob, folder, fsspec URL or a list of them.
        image_column, columns, decode, output, mode, transform: as ``LICDataset``.
        shuffle_buffer: rows in the shuffle buffer; 0 reads in file order, >= 1 also
            permutes the units (row groups or files) every epoch.
        seed: seeds the unit permutation and the buffers (with the epoch; see ``set_epoch``).
        split: ``"row_groups"`` or ``"shards"``: what is dealt to workers and ranks.
        rank, world_size: this process's share; default ``torch.distributed``'s when it is
            initialised (at construction), else the whole data.
        storage_options: fsspec options for the shard URLs.

    Iterate it directly, through a ``DataLoader``, or, for ``state_dict()`` to follow the
    batches with ``num_workers > 0``, through ``ResumableDataLoader``. The module docstring
    defines the order and the resume state.
    """

    def __init__(
        self,
        shards: Any,
        image_column: str = "image",
        *,
        columns: Sequence[str] | None = None,
        decode: bool = True,
        output: Output = "pil",
        mode: str | None = None,
        transform: Callable[[Any], Any] | None = None,
        shuffle_buffer: int = 0,
        seed: int = 0,
        split: Split = "row_groups",
        rank: int | None = None,
        world_size: int | None = None,
        storage_options: dict | None = None,
    ):
        self.format = _format(image_column, columns, decode, output, mode, transform)
        if split not in ("row_groups", "shards"):
            raise ValueError(f"split must be 'row_groups' or 'shards', got {split!r}")
        if shuffle_buffer < 0:
            raise ValueError(f"shuffle_buffer must be >= 0, got {shuffle_buffer}")
        self.shuffle_buffer, self.seed, self.split = int(shuffle_buffer), int(seed), split
        self.rank, self.world_size = _rank_and_world(rank, world_size)
        self._files = _ShardFiles(storage_options)
        needed = [image_column, *self.format.columns]
        self.shards = _read_footers(_expand(shards, storage_options), storage_options, needed)
        self.epoch = 0
        self._resume: dict | None = None  # state to start from, applied in its epoch
        self._progress: dict | None = None  # position of this process's consumer
        self.fingerprint = hashlib.sha256(
            json.dumps([[s.name, s.group_rows] for s in self.shards]).encode()
        ).hexdigest()[:16]

    # -- order --------------------------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's order (call before iterating; with persistent workers it would
        not reach them, which is why ``ResumableDataLoader`` refuses them)."""
        self.epoch = int(epoch)

    def _units(self, epoch: int) -> list[list[tuple[int, int]]]:
        """The epoch's units in order, each a list of (file, row group)."""
        if self.split == "shards":
            units = [[(f, g) for g in range(len(s.group_rows))] for f, s in enumerate(self.shards)]
        else:
            units = [[(f, g)] for f, s in enumerate(self.shards) for g in range(len(s.group_rows))]
        if self.shuffle_buffer >= 1:
            perm = np.random.default_rng([self.seed, epoch]).permutation(len(units))
            units = [units[i] for i in perm]
        return units

    def _stream_groups(self, epoch: int, num_workers: int, stream: int) -> list[tuple[int, int]]:
        """Row groups of one stream of this rank, in reading order."""
        units = self._units(epoch)[self.rank :: self.world_size][stream :: max(num_workers, 1)]
        return [group for unit in units for group in unit]

    def _stream_rows(self, epoch: int, num_workers: int) -> list[int]:
        return [
            sum(self.shards[f].group_rows[g] for f, g in self._stream_groups(epoch, num_workers, s))
            for s in range(max(num_workers, 1))
        ]

    @property
    def num_rows(self) -> int:
        """Rows this rank reads per epoch (all its workers together)."""
        return sum(self._stream_rows(self.epoch, 0))

    # -- state --------------------------------------------------------------------------

    def _fresh(self, epoch: int, num_workers: int) -> dict:
        return {
            "kind": _STATE_KIND,
            "fingerprint": self.fingerprint,
            "seed": self.seed,
            "shuffle_buffer": self.shuffle_buffer,
            "split": self.split,
            "rank": self.rank,
            "world_size": self.world_size,
            "epoch": epoch,
            "num_workers": num_workers,
            "rows": [0] * max(num_workers, 1),
            "next_stream": 0,
        }

    def state_dict(self) -> dict:
        """Where the consumer is: the next iteration of ``load_state_dict(state)``'s dataset
        continues right after it (see the module docstring)."""
        for state in (self._progress, self._resume):
            if state is not None and state["epoch"] == self.epoch:
                return json.loads(json.dumps(state))
        num_workers = self._progress["num_workers"] if self._progress else 0
        return self._fresh(self.epoch, num_workers)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume from ``state``: sets the epoch; the next iteration of that epoch skips
        the rows consumed before (reading only the row groups that still hold rows to come)."""
        state = json.loads(json.dumps(dict(state)))
        if state.get("kind") != _STATE_KIND:
            raise ValueError(f"not a LICIterableDataset state (kind={state.get('kind')!r})")
        mine = self._fresh(state["epoch"], state["num_workers"])
        for key in ("fingerprint", "seed", "shuffle_buffer", "split", "rank", "world_size"):
            if state[key] != mine[key]:
                raise ValueError(
                    f"the state was saved with {key}={state[key]!r} but this dataset has "
                    f"{key}={mine[key]!r}: its position means nothing here"
                )
        if len(state["rows"]) != max(state["num_workers"], 1):
            raise ValueError("malformed state: one 'rows' entry per stream expected")
        self.epoch = state["epoch"]
        self._resume = state
        self._progress = json.loads(json.dumps(state))

    def _start(self, num_workers: int) -> dict:
        """The state this epoch's iteration starts from: the loaded one or a fresh one."""
        state = self._resume
        if state is None or state["epoch"] != self.epoch:
            return self._fresh(self.epoch, num_workers)
        if state["num_workers"] != num_workers:
            if any(state["rows"]):
                raise ValueError(
                    f"the state was saved with num_workers={state['num_workers']}, this "
                    f"DataLoader has {num_workers}: resume with the same num_workers"
                )
            return self._fresh(self.epoch, num_workers)
        return json.loads(json.dumps(state))

    # -- iteration ----------------------------------------------------------------------

    def __iter__(self) -> Iterator[Any]:
        info = tud.get_worker_info()
        if info is None:  # in-process: this object is the consumer's, so it keeps count
            start = self._start(0)
            self._resume = None
            self._progress = start
            return self._iter_stream(self.epoch, 0, 0, start["rows"][0], start)
        start = self._start(info.num_workers)  # a worker: the copy of the dataset it got
        stream = (info.id + start["next_stream"]) % info.num_workers
        return self._iter_stream(self.epoch, info.num_workers, stream, start["rows"][stream], None)

    def _iter_stream(
        self, epoch: int, num_workers: int, stream: int, skip: int, progress: dict | None
    ) -> Iterator[Any]:
        groups = self._stream_groups(epoch, num_workers, stream)
        starts = [0]
        for f, g in groups:
            starts.append(starts[-1] + self.shards[f].group_rows[g])
        global_stream = self.rank * max(num_workers, 1) + stream
        order = _StreamOrder(starts[-1], self.shuffle_buffer, (self.seed, epoch, global_stream))
        for _ in range(skip):  # consumed before the checkpoint: no reading, no decoding
            next(order)
        return self._emit(order, groups, starts, stream, progress)

    def _emit(
        self,
        order: _StreamOrder,
        groups: list[tuple[int, int]],
        starts: list[int],
        stream: int,
        progress: dict | None,
    ) -> Iterator[Any]:
        held: dict[int, dict[int, tuple[Any, dict]]] = {}  # unit -> input position -> row
        fmt = self.format
        for p in order:
            k = bisect.bisect_right(starts, p) - 1
            if k not in held:
                f, g = groups[k]
                group = _read_group(self._files, self.shards[f], g, fmt.image_column, fmt.columns)
                held[k] = {
                    starts[k] + i: (
                        d,
                        {c: v[i] for c, v in group.values.items()},
                        group.first_row + i,
                    )
                    for i, d in enumerate(group.datas)
                    if starts[k] + i == p or order.pending(starts[k] + i)
                }
            data, values, row = held[k].pop(p)
            if not held[k]:
                del held[k]
            if progress is not None:
                progress["rows"][stream] += 1
            f = groups[k][0]
            yield fmt.item(data, values, f"{self.shards[f].url} row {row}")


def _rank_and_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if (rank is None) != (world_size is None):
        raise ValueError("give both rank and world_size, or neither")
    if rank is None:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    return int(rank), int(world_size)


class ResumableDataLoader(tud.DataLoader):
    """A ``torch.utils.data.DataLoader`` over a ``LICIterableDataset`` that knows the
    position of the batches it has handed over, with any ``num_workers``.

    ``state_dict()`` / ``load_state_dict()`` are the dataset's: save the state with your
    checkpoint and load it into a fresh loader (same ``batch_size``, ``drop_last``,
    ``num_workers``, seed) to continue exactly where training stopped. Persistent workers
    and ``in_order=False`` are refused: they would not see the epoch, or scramble the order.
    """

    def __init__(self, dataset: LICIterableDataset, *args: Any, **kwargs: Any):
        if not isinstance(dataset, LICIterableDataset):
            raise TypeError(f"ResumableDataLoader needs a LICIterableDataset, got {dataset!r}")
        if kwargs.get("persistent_workers"):
            raise ValueError("persistent_workers would keep an old epoch and position")
        if kwargs.get("in_order") is False:
            raise ValueError("in_order=False makes the order, hence the position, random")
        super().__init__(dataset, *args, **kwargs)

    def state_dict(self) -> dict:
        return self.dataset.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("num_workers") != self.num_workers and any(state.get("rows", ())):
            raise ValueError(
                f"the state was saved with num_workers={state.get('num_workers')}, this "
                f"loader has {self.num_workers}: resume with the same num_workers"
            )
        self.dataset.load_state_dict(state)

    def __iter__(self) -> Iterator[Any]:
        ds: LICIterableDataset = self.dataset
        if self.num_workers == 0:
            return super().__iter__()  # the dataset, iterated here, counts its rows
        start = ds._start(self.num_workers)
        ds._progress = start
        it = super().__iter__()  # workers start here, with copies holding the resume state
        ds._resume = None
        batch = self.batch_size or 1
        rows = ds._stream_rows(ds.epoch, self.num_workers)
        return _CountingIterator(it, start, rows, batch, bool(self.drop_last and self.batch_size))


class _CountingIterator:
    """Counts delivered batches into the dataset's progress: the DataLoader takes batches
    from workers in turn, skipping exhausted ones, and each worker's batches are full
    except its last (dropped under ``drop_last``)."""

    def __init__(self, it: Any, progress: dict, rows: list[int], batch: int, drop_last: bool):
        self._it, self._progress, self._rows = it, progress, rows
        self._batch, self._drop_last = batch, drop_last

    def __iter__(self) -> _CountingIterator:
        return self

    def __len__(self) -> int:
        return len(self._it)

    def __next__(self) -> Any:
        out = next(self._it)
        p, w = self._progress, len(self._rows)
        for k in range(w):
            s = (p["next_stream"] + k) % w
            left = self._rows[s] - p["rows"][s]
            if left >= self._batch or (left > 0 and not self._drop_last):
                p["rows"][s] += min(left, self._batch)
                p["next_stream"] = (s + 1) % w
                return out
        raise AssertionError("the DataLoader delivered more batches than the shards hold")


# -- batched decoding -----------------------------------------------------------------------


class BatchDecoder:
    """Decode many bitstreams at once: entropy decoding on the CPU (exact; ``threads`` > 0
    runs it in a thread pool), synthesis in batches of same-shaped images on ``device``.

    Returns CHW uint8 tensors on ``device`` (after ``transform``, if any), stacked into one
    tensor when ``stack`` and all shapes agree, else a list. ``batch_transforms=False``
    synthesizes one image at a time: pixels then equal ``licstore.decode``'s at the same
    precision; batched, they may differ by rounding (as ``decode_batch(batch_transforms=True)``).
    The default (None) batches on CUDA only: on CPUs a batched synthesis is slower than one
    image at a time (``tools/bench.py``, BENCHMARKS.md).

    As a DataLoader ``collate_fn`` (rows of a dataset built with ``decode=False``) it decodes
    the bitstreams and collates the other fields with ``default_collate``; rows may be bytes,
    dicts or tuples. For a GPU, decode in the main process: ``collate_fn=None`` (the default
    collate keeps bytes as lists) in the loader, then ``decoder(batch)``.
    """

    def __init__(
        self,
        device: str | torch.device = "cpu",
        precision: str | None = None,
        transform: Callable[[torch.Tensor], Any] | None = None,
        *,
        batch_size: int = 16,
        threads: int = 0,
        batch_transforms: bool | None = None,
        stack: bool = True,
    ):
        self.device = codec._device(device)  # ValueError when CUDA is asked for and absent
        self.precision = precision or _precision.DECODE_PRECISION
        self.bf16 = _precision.use_bf16(self.precision, self.device)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.transform, self.batch_size, self.threads = transform, batch_size, threads
        if batch_transforms is None:
            batch_transforms = self.device.type == "cuda"
        self.batch_transforms, self.stack = batch_transforms, stack
        self._pool: ThreadPoolExecutor | None = None
        self._pid = os.getpid()

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_pool"] = None
        return state

    def _map(self, fn: Callable, items: Sequence[Any]) -> list[Any]:
        if self.threads <= 0 or len(items) < 2:
            return [fn(x) for x in items]
        if self._pool is None or self._pid != os.getpid():  # a pool's threads do not fork
            self._pool, self._pid = ThreadPoolExecutor(self.threads), os.getpid()
        return list(self._pool.map(fn, items))

    def decode(self, datas: Sequence[bytes]) -> torch.Tensor | list[torch.Tensor]:
        """Tensors for ``datas`` in order; a damaged one raises ``CorruptBitstreamError``
        naming its position in the batch."""
        parsed = []
        for i, data in enumerate(datas):
            try:
                if not isinstance(data, (bytes, bytearray, memoryview)):
                    raise CorruptBitstreamError(f"expected bytes, got {type(data).__name__}")
                parsed.append(container.unpack(bytes(data)))
                limit = limits.max_pixels()  # LICSTORE_MAX_PIXELS, as codec.decode
                limits.check_pixels(parsed[-1].width, parsed[-1].height, limit)
            except LICError as e:
                raise with_context(e, f"item {i}") from e
        out: list[Any] = [None] * len(parsed)
        groups: dict[tuple, list[int]] = {}
        other: list[int] = []
        for i, bs in enumerate(parsed):
            if bs.mode == "RGB" and [layer.kind for layer in bs.layers] == ["base"]:
                groups.setdefault((bs.model, bs.weights_hash, bs.height, bs.width), []).append(i)
            else:
                other.append(i)
        for (name, whash, h, w), idx in groups.items():
            net = models.for_bitstream(name, whash, device=str(self.device))
            latents = self._map(lambda i, net=net: self._latents(net, i, parsed[i]), idx)
            step = self.batch_size if self.batch_transforms else 1
            for start in range(0, len(idx), step):
                chunk = range(start, min(start + step, len(idx)))
                y_hat = torch.cat([latents[k] for k in chunk]).to(self.device)
                x = net.synthesize(y_hat, bf16=self.bf16)
                pixels = x[:, :, :h, :w].mul(255).round_().clamp_(0, 255).to(torch.uint8)
                for k, image in zip(chunk, pixels):
                    out[idx[k]] = image
        for i, image in zip(other, self._decode_other([datas[i] for i in other], other)):
            out[i] = to_tensor(image).to(self.device)
        if self.transform is not None:
            out = [self.transform(t) for t in out]
        if (
            self.stack
            and out
            and all(isinstance(t, torch.Tensor) and t.shape == out[0].shape for t in out)
        ):
            return torch.stack(out)
        return out

    @staticmethod
    def _latents(net: Any, i: int, bs: container.Bitstream) -> torch.Tensor:
        """Exact latents of a base-only RGB bitstream (the CPU part; thread-safe)."""
        lo, hi = net.rate_range()
        try:
            if not lo <= bs.rate <= hi:
                raise CorruptBitstreamError(f"rate parameter {bs.rate} outside [{lo}, {hi}]")
            try:
                return net.decode_latents(bs.layer("base").data, bs.height, bs.width, bs.rate)
            except LICError:
                raise
            except Exception as e:  # the rANS decoder's own complaints
                raise CorruptBitstreamError(f"base layer does not decode: {e}") from e
        except LICError as e:
            raise with_context(e, f"item {i}") from e

    def _decode_other(self, datas: list[bytes], ids: list[int]) -> list[Image.Image]:
        """Other modes and layered bitstreams (alpha, palette, residual layers) go through
        ``licstore.decode_batch``, which owns their semantics; pixels come back via the CPU."""
        kwargs = {"device": str(self.device), "precision": self.precision}
        try:
            return codec.decode_batch(datas, batch_transforms=self.batch_transforms, **kwargs)
        except CorruptBitstreamError:
            for data, i in zip(datas, ids):  # find the item to blame
                try:
                    codec.decode_batch([data], **kwargs)
                except CorruptBitstreamError as e:
                    raise with_context(e, f"item {i}") from e
            raise

    def __call__(self, batch: Any) -> Any:
        """Collate rows (or decode a batch the default collate made): bitstream fields are
        decoded, the others go through ``default_collate``."""
        if isinstance(batch, Mapping):  # already collated: {key: list of values}
            return {k: self._field(list(v)) for k, v in batch.items()}
        batch = list(batch)
        if not batch:
            return []
        first = batch[0]
        if isinstance(first, Mapping):
            return {k: self._field([row[k] for row in batch]) for k in first}
        if isinstance(first, tuple | list) and not _is_raw(first):
            return type(first)(self._field(list(values)) for values in zip(*batch))
        return self._field(batch)

    def _field(self, values: list[Any]) -> Any:
        if values and all(_is_raw(v) and is_bitstream(v) for v in values):
            return self.decode(values)
        return tud.default_collate(values)


def _is_raw(value: Any) -> bool:
    return isinstance(value, (bytes, bytearray, memoryview))
