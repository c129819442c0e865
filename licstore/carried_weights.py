"""Datasets carry their weights: the weights files a dataset's bitstreams need, beside the data.

A bitstream names its model and the first 8 bytes of its weights' SHA-256; licstore ships
only the current weights of each model (``formats/licstore-datasets-v1.md`` section 5). So
that a dataset written today decodes after its weights have left the package, every writer
(``licstore.parquet.write_table``, the Dask jobs, ``licstore.save_to_disk``) copies the
weights files its rows use into one folder per dataset::

    <dataset folder>/.licstore-weights/<model>-<full SHA-256 hex>.safetensors

(hidden, as ``.licstore-manifest.json``: ``datasets.load_dataset("parquet", data_dir=...)``
would otherwise try to read the weights files as data).

Each file is written once (a file of that name is its content's hash, so an existing one is
kept) and atomically, before the data that needs it is published. Parquet files also record
what they need in their footer (key ``licstore``: ``{"weights": [{"model", "sha256",
"file"}]}``, ``file`` relative to the Parquet file's folder). Readers register these files
without reading them (:func:`licstore.models.add_weights`); a file is read and checked
against its SHA-256 when its model is first loaded. Registration never changes which weights
new encodes use. CompressAI zoo models (``compressai:...``) are not carried.
"""

from __future__ import annotations

import json
import os
import posixpath
from collections.abc import Iterable
from typing import Any

import pyarrow as pa

from . import container, models
from .atomic import atomic_put, atomic_write, makedirs
from .errors import ModelNotFoundError, WeightsIntegrityError
from .models.weights import NAMED_FILE, RemoteFile, named_file, read_verified

__all__ = [
    "FOLDER",
    "FOOTER_KEY",
    "export",
    "footer",
    "keep",
    "register_folder",
    "register_footer",
    "used_in_storage",
    "used_weights",
    "write",
]

FOLDER = ".licstore-weights"
FOOTER_KEY = "licstore"


def used_weights(datas: Iterable[bytes | None]) -> set[tuple[str, str]]:
    """``(model, weights-hash prefix hex)`` of every bitstream in ``datas`` (None skipped)."""
    out = set()
    for data in datas:
        if data is not None:
            bs = container.unpack(data)
            out.add((bs.model, bs.weights_hash.hex()))
    return out


def used_in_storage(array: pa.Array | pa.ChunkedArray) -> set[tuple[str, str]]:
    """The weights used by a LICImage storage column (rows with a ``codec`` label: rows kept
    with their original bytes by ``on_error="copy"`` are no bitstreams)."""
    if isinstance(array, pa.ChunkedArray):
        chunks = array.chunks
    else:
        chunks = [array]
    out: set[tuple[str, str]] = set()
    for chunk in chunks:
        datas, codecs = chunk.field("bytes"), chunk.field("codec")
        valid = chunk.is_valid()
        out |= used_weights(
            d.as_py()
            for d, c, v in zip(datas, codecs, valid)
            if v.as_py() and c.is_valid and d.is_valid
        )
    return out


def write(fs: Any, folder: str, used: Iterable[tuple[str, str]]) -> list[dict]:
    """Copy the weights files of ``used`` into ``folder/.licstore-weights/`` on ``fs``.

    Returns the records (``model``, ``sha256``, ``file`` relative to ``folder``), sorted.
    Raises ``ModelNotFoundError`` when this process does not have weights the rows name
    (rows passed through from elsewhere: register their weights first).
    """
    records = []
    folder = folder.rstrip("/")
    for model, prefix in sorted(set(used)):
        if model.startswith(models.compressai_zoo.PREFIX):
            continue  # CompressAI's own checkpoints: not licstore weights files
        try:
            location, sha256 = models._resolve(model, prefix[:16])
        except ModelNotFoundError as e:
            raise ModelNotFoundError(
                f"cannot store the weights of {model}@{prefix[:16]} beside {folder!r}: {e}"
            ) from e
        name = named_file(model, sha256)
        target = f"{folder}/{FOLDER}/{name}"
        if not _present(fs, target, location):
            data = read_verified(location, sha256)
            makedirs(fs, f"{folder}/{FOLDER}")  # on an object store: no bucket is created
            atomic_put(fs, target, data)
        records.append({"model": model, "sha256": sha256, "file": f"{FOLDER}/{name}"})
    return records


def footer(records: list[dict], folder: str, parquet_path: str) -> dict[str, str]:
    """Parquet footer key-value metadata recording ``records`` (returned by :func:`write`
    for ``folder``), each ``file`` made relative to the folder of ``parquet_path``."""
    here = parquet_path.rstrip("/").rpartition("/")[0] or "."
    rel = [
        {**r, "file": posixpath.relpath(posixpath.join(folder.rstrip("/"), r["file"]), here)}
        for r in records
    ]
    return {FOOTER_KEY: json.dumps({"weights": rel}, sort_keys=True)}


def register_footer(fs: Any, path: str, metadata: dict | None) -> int:
    """Register the weights a Parquet file's footer (``ParquetFile.metadata.metadata``)
    records, resolved beside the file at ``path`` on ``fs``. Returns how many were new."""
    raw = (metadata or {}).get(FOOTER_KEY.encode())
    if raw is None:
        return 0
    try:
        records = json.loads(raw)["weights"]
    except (ValueError, KeyError, TypeError):
        return 0  # a footer licstore did not write: nothing to register
    base = path.rstrip("/").rpartition("/")[0]
    new = 0
    for r in records if isinstance(records, list) else []:
        if not isinstance(r, dict) or not all(isinstance(r.get(k), str) for k in _KEYS):
            continue
        m = NAMED_FILE.match(posixpath.basename(r["file"]))
        if m is None or (m["model"], m["sha256"]) != (r["model"], r["sha256"]):
            continue  # the file's name is the hash it is checked against: they must agree
        where = posixpath.normpath(posixpath.join(base, r["file"])) if base else r["file"]
        new += models.add_weights(r["model"], r["sha256"], _location(fs, where))
    return new


_KEYS = ("model", "sha256", "file")


def register_folder(
    folder: str | os.PathLike, *, storage_options: dict | None = None, filesystem: Any = None
) -> list[str]:
    """Register every weights file in ``folder/.licstore-weights/`` (any fsspec URL), e.g.
    a ``save_to_disk`` folder, a Dask job's destination or the folder of Parquet files.

    Files are read (and checked against the SHA-256 in their name) when their model is
    first loaded. Returns the ``model@sha256-prefix`` of each newly registered file.
    """
    if filesystem is None:
        from fsspec.core import url_to_fs

        filesystem, root = url_to_fs(os.fspath(folder), **(storage_options or {}))
    else:
        root = os.fspath(folder)
    try:
        listed = filesystem.ls(f"{root.rstrip('/')}/{FOLDER}", detail=False)
    except (FileNotFoundError, NotADirectoryError):
        return []
    out = []
    for p in sorted(listed):
        m = NAMED_FILE.match(posixpath.basename(p))
        if m and models.add_weights(m["model"], m["sha256"], _location(filesystem, p)):
            out.append(f"{m['model']}@{m['sha256'][:16]}")
    return out


def _location(fs: Any, path: str) -> os.PathLike | RemoteFile:
    protocol = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    if "file" in protocol or "local" in protocol:
        from pathlib import Path

        return Path(path)
    return RemoteFile(fs, path)


def _present(fs: Any, target: str, location: Any) -> bool:
    """Whether ``target`` already holds the file: its name is its hash, and files are
    written atomically, so a file of the right size is the right file."""
    try:
        if not fs.exists(target):
            return False
        size = location.fs.size(location.path) if isinstance(location, RemoteFile) else None
        if size is None:
            size = os.path.getsize(location)
        return fs.size(target) == size
    except (OSError, ValueError):
        return False


# -- weights files kept outside the package (``licstore models export`` / ``register``) -----


def export(spec: str, folder: str | os.PathLike) -> str:
    """Copy the weights ``spec`` (``model``: its default; ``model@HASH``: the installed or
    registered version whose SHA-256 starts with ``HASH``, at least 8 hex digits) to
    ``folder`` as ``<model>-<sha256>.safetensors``, checked against its SHA-256. Returns the
    written path. Keeps a version's file before an upgrade removes it from the package."""
    from fsspec.core import url_to_fs

    name, _, prefix = spec.partition("@")
    if name.startswith(models.compressai_zoo.PREFIX):
        raise ModelNotFoundError(f"{name}: CompressAI zoo weights are not licstore weights files")
    if not prefix:
        location, sha256 = models._resolve(name, None)
    else:
        prefix = prefix.lower()
        if len(prefix) < 8 or any(c not in "0123456789abcdef" for c in prefix):
            raise ValueError(f"{spec!r}: HASH must be at least 8 hex digits")
        versions = [v for v in models._weights.get(name, {}).values() if v[1].startswith(prefix)]
        if len(versions) != 1:
            found = "no installed or registered version" if not versions else "several versions"
            raise ModelNotFoundError(f"{spec}: {found} of {name!r} has a SHA-256 starting so")
        location, sha256 = versions[0]
    data = read_verified(location, sha256)
    fs, root = url_to_fs(os.fspath(folder))
    fs.makedirs(root, exist_ok=True)
    target = f"{root.rstrip('/')}/{named_file(name, sha256)}"
    with atomic_write(fs, target) as tmp:
        fs.pipe_file(tmp, data)
    return target


def keep(file: str | os.PathLike, name: str | None = None) -> tuple[str, str, str]:
    """Copy a weights file into the user folder (``licstore.models.user_weights_dir()``) and
    register it here; every later licstore process registers it at import, so files written
    with these weights decode without further steps. New encodes keep the model's default
    weights. Returns ``(model, sha256, kept path)``."""
    from fsspec.implementations.local import LocalFileSystem

    from .models.weights import parse, sha256_bytes

    data = read_verified(file, None)
    _, meta = parse(data)  # WeightsIntegrityError if it is no weights file
    name = name or meta.get("name")
    if not name:
        raise WeightsIntegrityError(f"{file}: no model name in its metadata; pass a name")
    if not isinstance(name, str) or "/" in name or os.sep in name:
        raise ValueError(f"not a model name: {name!r}")
    sha256 = sha256_bytes(data)
    folder = models.user_weights_dir()
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / named_file(name, sha256)
    if not target.is_file() or target.stat().st_size != len(data):
        fs = LocalFileSystem()
        with atomic_write(fs, str(target)) as tmp:
            fs.pipe_file(tmp, data)
    models.add_weights(name, sha256, target)
    return name, sha256, str(target)
