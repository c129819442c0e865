"""Parquet files with LIC-compressed image columns, readable with or without licstore.

``write_table`` stores image columns as ``struct<bytes: binary, path: string, codec: string>``
with the "huggingface" schema metadata ``datasets`` writes itself, so
``datasets.load_dataset("parquet", ...)`` opens them as ``LICImage`` (after ``import licstore``)
while any Parquet reader sees a plain struct (and, in ``codec``, model and rate). Files are
written row group by row group (bounded memory) to a temporary name and renamed when complete
(on object stores: uploaded to the key itself and committed when complete,
``licstore.atomic.atomic_open``): a failure leaves nothing at the destination. ``read_images``
decodes chosen rows, reading only the footer and the row groups that hold them (on an object
store: ranged GETs of those bytes). Storage failures raise ``licstore.errors.StorageError``
naming the URL.
"""

from __future__ import annotations

import bisect
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from . import carried_weights, column_codec
from .arrow import Output, _as_output, _bitstreams_of, _check_output, _compress, _decode_at
from .atomic import atomic_open, makedirs
from .features import STORAGE_TYPE, LICImage
from .storage import storage_errors, url_to_fs

__all__ = ["DEFAULT_ROW_GROUP_SIZE", "read_images", "read_table", "write_table"]

#: rows per row group: a few MB of bitstreams, so reading one row stays cheap
DEFAULT_ROW_GROUP_SIZE = 100
#: how ``read_images`` opens files: fsspec's default read-ahead block (5-50 MB) would fetch
#: much of the file from an object store. With a 1-byte block each read fetches what pyarrow
#: asks for (its footer read, then the chosen row groups' column chunks in one coalesced
#: ``pre_buffer`` read), and the last block stays cached: a file smaller than pyarrow's
#: 64 KiB footer read is fetched once. (A block of 0 would make http/hf files streams.)
_LAZY_OPEN = {"cache_type": "readahead", "block_size": 1}

_COLUMN_OPTIONS = ("compression", "use_dictionary", "column_encoding")


def write_table(
    table: pa.Table,
    where: str | os.PathLike,
    image_columns: Mapping[str, LICImage] | None = None,
    *,
    row_group_size: int = DEFAULT_ROW_GROUP_SIZE,
    batch_size: int = column_codec.DEFAULT_BATCH_SIZE,
    reencode: bool = False,
    device: str | None = None,
    filesystem: Any = None,
    storage_options: dict | None = None,
    **pq_kwargs: Any,
) -> str:
    """Compress ``image_columns`` (name -> ``LICImage``; default ``{"image": LICImage(bpp=0.3)}``)
    and write ``table`` as Parquet to ``where`` (a local path or any fsspec URL). Returns the
    path on the filesystem.

    Other columns keep their Arrow types. Image rows are encoded ``batch_size`` at a time,
    one row group (``row_group_size`` rows) after another; rows that already hold bitstreams
    pass through unless ``reencode``; ``.lic`` references are embedded so the file stands
    alone. ``filesystem`` (an fsspec filesystem) or ``storage_options`` say how to reach
    ``where``; other keyword arguments go to ``pyarrow.parquet.ParquetWriter``.
    Errors name the row (``UnsupportedImageError`` for a row that is not an image) and leave
    nothing at ``where`` (an existing file there is kept). The weights files the rows use
    are written to ``.licstore-weights/`` beside the file (once per folder) and recorded in
    its footer, so it decodes where licstore no longer ships them
    (``licstore.carried_weights``).
    """
    if not isinstance(table, pa.Table):
        raise TypeError(f"table must be a pyarrow.Table, got {type(table).__name__}")
    if image_columns is None:
        image_columns = {"image": LICImage(bpp=0.3)}
    for name, feature in image_columns.items():
        if name not in table.column_names:
            raise KeyError(f"no column {name!r}; columns: {table.column_names}")
        if not isinstance(feature, LICImage):
            raise TypeError(f"image_columns[{name!r}] must be a LICImage, got {feature!r}")
        feature.settings()  # an unknown model or bad rate fails before any file is opened
    if row_group_size < 1:
        raise ValueError(f"row_group_size must be >= 1, got {row_group_size}")
    schema = _schema(table.schema, image_columns)
    if not any(k in pq_kwargs for k in _COLUMN_OPTIONS):
        pq_kwargs.update(_column_options(schema, image_columns))

    fs, path = _filesystem(where, filesystem, storage_options)
    parent, _, name = path.rstrip("/").rpartition("/")
    if not name:
        raise ValueError(f"not a file path: {where!r}")
    with storage_errors(where):
        if parent and not fs.exists(parent):
            makedirs(fs, parent)
    used: set[tuple[str, str]] = set()  # (model, weights hash) of the rows written
    with storage_errors(where), atomic_open(fs, path) as f:
        with pq.ParquetWriter(f, schema, **pq_kwargs) as writer:
            for start in range(0, table.num_rows, row_group_size):
                piece = table.slice(start, row_group_size)
                for column, feature in image_columns.items():
                    array = _compress(
                        piece.column(column),
                        feature,
                        batch_size=batch_size,
                        reencode=reencode,
                        device=device,
                        first_row=start,
                        embed_references=True,
                    )
                    index = piece.schema.get_field_index(column)
                    piece = piece.set_column(index, schema.field(column), array)
                    used |= carried_weights.used_in_storage(array)
                writer.write_table(piece.cast(schema), row_group_size=row_group_size)
            # the weights go beside the file before it is published (rename or commit)
            records = carried_weights.write(fs, parent, used)
            writer.add_key_value_metadata(carried_weights.footer(records, parent, path))
    return path


def read_images(
    path: str | os.PathLike,
    column: str = "image",
    rows: Sequence[int] | slice | None = None,
    *,
    output: Output = "pil",
    batch_size: int = column_codec.DEFAULT_BATCH_SIZE,
    device: str | None = None,
    filesystem: Any = None,
    storage_options: dict | None = None,
) -> list[Image.Image | None] | np.ndarray:
    """Decode ``rows`` (indices, negative allowed, or a slice; None = all) of an image column,
    reading only the row groups that contain them.

    Returns the images in the order of ``rows`` (``output="pil"``: PIL images, None rows as
    None; ``output="numpy"``: one ``(N, H, W, C)`` uint8 array, see
    ``licstore.arrow.decompress_column``). A damaged row raises ``CorruptBitstreamError``
    naming its row index in the file, when it is requested.
    """
    _check_output(output)
    fs, fpath = _filesystem(path, filesystem, storage_options)
    with storage_errors(path), fs.open(fpath, "rb", **_LAZY_OPEN) as f:
        pf = pq.ParquetFile(f, pre_buffer=True)
        if column not in pf.schema_arrow.names:
            raise KeyError(f"no column {column!r}; columns: {pf.schema_arrow.names}")
        carried_weights.register_footer(fs, fpath, pf.metadata.metadata)
        wanted = _row_indices(rows, pf.metadata.num_rows)
        starts = [0]
        for i in range(pf.metadata.num_row_groups):
            starts.append(starts[-1] + pf.metadata.row_group(i).num_rows)
        by_group: dict[int, list[int]] = {}
        for row in sorted(set(wanted)):
            by_group.setdefault(bisect.bisect_right(starts, row) - 1, []).append(row)
        decoded: dict[int, Image.Image | None] = {}
        for group, group_rows in by_group.items():
            array = pf.read_row_group(group, columns=[column]).column(0)
            taken = array.take(pa.array([r - starts[group] for r in group_rows]))
            datas = _bitstreams_of(taken.combine_chunks(), group_rows)
            images = _decode_at(datas, group_rows, batch_size=batch_size, device=device)
            decoded.update(zip(group_rows, images))
    return _as_output([decoded[r] for r in wanted], wanted, output)


def read_table(
    path: str | os.PathLike,
    columns: Sequence[str] | None = None,
    *,
    filesystem: Any = None,
    storage_options: dict | None = None,
    **read_kwargs: Any,
) -> pa.Table:
    """The file as a pyarrow table, image columns left as stored bitstreams (decode later
    with ``licstore.arrow.decompress_column``); reaches any fsspec URL."""
    fs, fpath = _filesystem(path, filesystem, storage_options)
    with storage_errors(path), fs.open(fpath, "rb") as f:
        return pq.read_table(f, columns=columns, **read_kwargs)


# -- helpers ------------------------------------------------------------------------------


def _schema(schema: pa.Schema, image_columns: Mapping[str, LICImage]) -> pa.Schema:
    """The written schema: image columns as LIC storage, the rest as they are, and the
    "huggingface" metadata built the way ``datasets.Features.arrow_schema`` builds it."""
    from datasets import Features

    features = Features.from_arrow_schema(schema)  # reuses existing datasets metadata
    fields = []
    for field in schema:
        if field.name in image_columns:
            features[field.name] = image_columns[field.name]
            field = pa.field(field.name, STORAGE_TYPE)
        fields.append(field)
    metadata = dict(schema.metadata or {})
    metadata[b"huggingface"] = json.dumps({"info": {"features": features.to_dict()}}).encode()
    return pa.schema(fields, metadata=metadata)


def _column_options(schema: pa.Schema, image_columns: Mapping[str, LICImage]) -> dict:
    """Bitstreams do not compress: store them PLAIN and uncompressed, as ``datasets`` does for
    image bytes; everything else gets pyarrow's defaults (snappy, dictionary)."""
    compression, use_dictionary, column_encoding = {}, [], {}
    for field in schema:
        for leaf in _leaf_paths(field.name, field.type):
            if field.name in image_columns and leaf == f"{field.name}.bytes":
                compression[leaf] = "none"
                column_encoding[leaf] = "PLAIN"
            else:
                compression[leaf] = "snappy"
                use_dictionary.append(leaf)
    return {
        "compression": compression,
        "use_dictionary": use_dictionary,
        "column_encoding": column_encoding,
    }


def _leaf_paths(path: str, t: pa.DataType) -> list[str]:
    """Parquet leaf column paths under a field (what per-column writer options match)."""
    if isinstance(t, pa.ExtensionType):
        t = t.storage_type
    if pa.types.is_struct(t):
        return [leaf for f in t for leaf in _leaf_paths(f"{path}.{f.name}", f.type)]
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return _leaf_paths(f"{path}.list.element", t.value_type)
    if pa.types.is_map(t):
        return _leaf_paths(f"{path}.key_value.key", t.key_type) + _leaf_paths(
            f"{path}.key_value.value", t.item_type
        )
    return [path]


def _filesystem(where: str | os.PathLike, filesystem: Any, storage_options: dict | None):
    return url_to_fs(where, storage_options, filesystem)


def _row_indices(rows: Sequence[int] | slice | None, n: int) -> list[int]:
    if rows is None:
        return list(range(n))
    if isinstance(rows, slice):
        return list(range(*rows.indices(n)))
    if isinstance(rows, (int, np.integer)):
        raise TypeError("rows must be a list of indices or a slice; wrap one index as [i]")
    out = []
    for r in rows:
        r = int(r)
        if not -n <= r < n:
            raise IndexError(f"row {r} out of range for a file of {n} rows")
        out.append(r + n if r < 0 else r)
    return out
