"""Dataset-level operations on ``datasets.Dataset``: compress a column, and go back.

``compress_dataset`` is the scalable form of ``cast_column``: a batched ``map`` that writes
datasets' cache files (so nothing is re-encoded when the dataset is pickled to workers), runs
in ``num_proc`` processes and shows datasets' progress bar. ``to_image_column`` turns a
LICImage column back into a standard ``Image()`` column for readers without licstore.
``save_to_disk`` / ``load_from_disk`` are ``datasets``' own, plus the weights the dataset
carries (``licstore.carried_weights``): ``datasets`` offers no hook to write a folder beside
a saved dataset, so these wrap the two calls rather than patch ``datasets``.
"""

from __future__ import annotations

import io
import os
from typing import TYPE_CHECKING

import pyarrow as pa

from . import carried_weights, column_codec
from .features import STORAGE_TYPE, LICImage, _rows_of, _stored

if TYPE_CHECKING:
    import datasets


def compress_dataset(
    ds: datasets.Dataset,
    column: str,
    feature: LICImage | None = None,
    *,
    num_proc: int | None = None,
    batch_size: int = column_codec.DEFAULT_BATCH_SIZE,
    reencode: bool = False,
    device: str | None = None,
    **map_kwargs,
) -> datasets.Dataset:
    """``ds`` with ``column`` stored as ``feature`` (default ``LICImage()``).

    Rows are encoded ``batch_size`` at a time through ``encode_batch``; rows that already
    hold bitstreams pass through unless ``reencode=True`` (then they are decoded and encoded
    with ``feature``'s settings). Extra keyword arguments go to ``Dataset.map`` (e.g.
    ``cache_file_name``, ``writer_batch_size``, ``desc``).
    """
    feature = feature or LICImage()
    if column not in ds.column_names:
        raise KeyError(f"no column {column!r}; columns: {ds.column_names}")
    settings = feature.settings()  # resolves the model now: fail before any work
    features = ds.features.copy()
    features[column] = feature

    def encode_batch(table: pa.Table, indices: list[int]) -> pa.Table:
        storage = table.column(column).combine_chunks()
        if storage.type == STORAGE_TYPE and not reencode:
            return table
        rows = _rows_of(storage)
        datas = column_codec.encode_rows(
            rows,
            settings,
            batch_size=batch_size,
            first_row=indices[0] if indices else 0,
            device=device,
            reencode=reencode,
        )
        path = [r.get("path") if isinstance(r, dict) else None for r in rows]
        array = pa.array(
            [None if d is None else _stored(d, p) for d, p in zip(datas, path)], type=STORAGE_TYPE
        )
        return table.set_column(table.column_names.index(column), column, array)

    map_kwargs.setdefault("desc", f"LIC-encoding {column!r}")
    out = ds.with_format("arrow").map(
        encode_batch,
        batched=True,
        batch_size=batch_size,
        with_indices=True,
        features=features,
        num_proc=num_proc,
        **map_kwargs,
    )
    return out.with_format(**_format_of(ds))


def to_image_column(
    ds: datasets.Dataset, column: str, format: str = "png", **map_kwargs
) -> datasets.Dataset:
    """``ds`` with a LICImage ``column`` decoded and stored as a standard ``Image()`` column
    (``format``: "png" (lossless copy of the decoded pixels), "webp" (lossless) or "jpeg" at
    quality 95), readable without licstore."""
    from datasets import Image

    if not isinstance(ds.features.get(column), LICImage):
        raise TypeError(f"column {column!r} is {ds.features.get(column)!r}, not LICImage")
    pil_format = {"png": "PNG", "webp": "WEBP", "jpeg": "JPEG", "jpg": "JPEG"}.get(format.lower())
    if pil_format is None:
        raise ValueError(f"format must be png, webp or jpeg, got {format!r}")
    save_kwargs = {"JPEG": {"quality": 95}, "WEBP": {"lossless": True}}.get(pil_format, {})
    features = ds.features.copy()
    features[column] = Image()

    def decode_batch(table: pa.Table, indices: list[int]) -> pa.Table:
        rows = table.column(column).to_pylist()
        datas = [
            None if r is None else (r["bytes"] or column_codec.read_url(r["path"])) for r in rows
        ]
        images = column_codec.decode_rows(datas, first_row=indices[0] if indices else 0)
        stored = []
        for image, row in zip(images, rows):
            if image is None:
                stored.append(None)
                continue
            if pil_format == "JPEG" and image.mode not in ("RGB", "L"):
                image = image.convert("RGB")
            buf = io.BytesIO()
            image.save(buf, format=pil_format, **save_kwargs)
            stored.append({"bytes": buf.getvalue(), "path": row.get("path")})
        array = pa.array(stored, type=pa.struct({"bytes": pa.binary(), "path": pa.string()}))
        return table.set_column(table.column_names.index(column), column, array)

    map_kwargs.setdefault("desc", f"decoding {column!r} to {format}")
    out = ds.with_format("arrow").map(
        decode_batch, batched=True, with_indices=True, features=features, **map_kwargs
    )
    return out.with_format(**_format_of(ds))


def save_to_disk(
    ds: datasets.Dataset | datasets.DatasetDict, dataset_path: str | os.PathLike, **kwargs
) -> None:
    """``ds.save_to_disk(dataset_path, **kwargs)``, carrying the weights its rows need.

    First the weights files that the bitstreams of its ``LICImage`` columns name are copied
    to ``dataset_path/.licstore-weights/`` (``licstore.carried_weights``), then the dataset
    is saved, so it decodes with :func:`load_from_disk` in a licstore that no longer ships
    those weights. ``datasets``' own ``save_to_disk`` saves the same data without the folder.
    """
    import datasets
    from fsspec.core import url_to_fs

    parts = ds.values() if isinstance(ds, datasets.DatasetDict) else [ds]
    used: set[tuple[str, str]] = set()
    for part in parts:
        for name, feature in part.features.items():
            if isinstance(feature, LICImage):
                used |= carried_weights.used_in_storage(part.data.column(name))
    fs, root = url_to_fs(os.fspath(dataset_path), **(kwargs.get("storage_options") or {}))
    fs.makedirs(root, exist_ok=True)
    carried_weights.write(fs, root, used)
    ds.save_to_disk(dataset_path, **kwargs)


def load_from_disk(
    dataset_path: str | os.PathLike, **kwargs
) -> datasets.Dataset | datasets.DatasetDict:
    """``datasets.load_from_disk(dataset_path, **kwargs)`` after registering the weights the
    dataset carries (its ``.licstore-weights/`` folder, or its parent's for one split of a
    saved ``DatasetDict``). Worker processes started with ``spawn`` register them again with
    ``licstore.register_dataset_weights(dataset_path)`` (e.g. in ``worker_init_fn``)."""
    import datasets

    storage_options = kwargs.get("storage_options")
    register_dataset_weights(dataset_path, storage_options=storage_options)
    return datasets.load_from_disk(dataset_path, **kwargs)


def register_dataset_weights(
    dataset_path: str | os.PathLike, *, storage_options: dict | None = None
) -> list[str]:
    """Register the weights a dataset folder carries (``.licstore-weights/`` in it, or in its
    parent when it has none: a split of a ``DatasetDict``); returns the newly registered
    ``model@hash`` versions. Files are checked against their SHA-256 when first loaded."""
    path = os.fspath(dataset_path).rstrip("/")
    found = carried_weights.register_folder(path, storage_options=storage_options)
    parent = path.rpartition("/")[0]
    if not found and parent:
        found = carried_weights.register_folder(parent, storage_options=storage_options)
    return found


def _format_of(ds: datasets.Dataset) -> dict:
    fmt = ds.format
    return {
        "type": fmt["type"],
        "columns": fmt["columns"],
        "output_all_columns": fmt["output_all_columns"],
        **fmt["format_kwargs"],
    }
