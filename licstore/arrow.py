"""Compress and decompress whole Arrow columns of images, without ``datasets``.

``compress_column`` turns an image column (image file bytes, paths/URLs, ``Image``-like
``struct<bytes, path>``, nested lists of pixels) into the ``LICImage`` storage
``struct<bytes: binary, path: string, codec: string>``; ``decompress_column`` goes back to PIL
images or one uint8 batch. Both work a window of rows at a time (bounded memory: a window's
Python objects, never the whole column's) and batch the network through
``column_codec``; errors name the row's index in the whole input, across chunks.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import pyarrow as pa
from PIL import Image

from . import column_codec
from .errors import CorruptBitstreamError, UnsupportedImageError
from .features import STORAGE_TYPE, LICImage, _is_lic_reference, _path_of, _rows_of, _stored

__all__ = ["compress_column", "decompress_column"]

Output = Literal["pil", "numpy"]

# rows converted to Python objects at a time, in units of batch_size
_WINDOW_BATCHES = 4


def compress_column(
    table_or_array: pa.Table | pa.Array | pa.ChunkedArray,
    column: str | None = None,
    feature: LICImage | None = None,
    *,
    batch_size: int = column_codec.DEFAULT_BATCH_SIZE,
    reencode: bool = False,
    device: str | None = None,
    first_row: int = 0,
) -> pa.Table | pa.StructArray | pa.ChunkedArray:
    """An image column as ``LICImage`` storage, so it can be written anywhere Arrow goes.

    Given a table, ``column`` names the image column and the table comes back with that
    column replaced (its "huggingface" schema metadata, if any, updated to ``feature``);
    given an array or chunked array, the storage array comes back (same chunking).
    ``feature`` (default ``LICImage()``) says how new rows are encoded. Rows that already
    hold licstore bitstreams pass through unless ``reencode``; None rows stay None; rows
    referring to a ``.lic`` file stay references (as ``LICImage.cast_storage`` keeps them).
    ``first_row``: index of the input's first row in a larger whole, for error messages.

    Raises ``UnsupportedImageError`` (a row that is not an image, or an unsupported column
    type) and ``CorruptBitstreamError`` (a damaged stored bitstream), naming the row.
    """
    feature = feature if feature is not None else LICImage()
    if isinstance(table_or_array, pa.Table):
        name = _require_column(table_or_array, column)
        array = _compress(
            table_or_array.column(name),
            feature,
            batch_size=batch_size,
            reencode=reencode,
            device=device,
            first_row=first_row,
        )
        return _replace_column(table_or_array, name, array, feature)
    if column is not None:
        raise TypeError("column is only meaningful for a pyarrow.Table")
    return _compress(
        table_or_array,
        feature,
        batch_size=batch_size,
        reencode=reencode,
        device=device,
        first_row=first_row,
    )


def decompress_column(
    array_or_table: pa.Table | pa.Array | pa.ChunkedArray,
    column: str | None = None,
    *,
    output: Output = "pil",
    batch_size: int = column_codec.DEFAULT_BATCH_SIZE,
    device: str | None = None,
) -> list[Image.Image | None] | np.ndarray:
    """Decode a ``LICImage`` storage column (or a binary column of bitstreams).

    ``output="pil"``: a list of PIL images in their original size and mode, None rows as
    None. ``output="numpy"``: one uint8 array ``(N, H, W, C)``, which needs every row present
    and of one size and mode (else ``ValueError``); palette images become RGB(A), "1" becomes
    "L" (0/255). A damaged row raises ``CorruptBitstreamError`` naming its index.
    """
    _check_output(output)
    if isinstance(array_or_table, pa.Table):
        array_or_table = array_or_table.column(_require_column(array_or_table, column))
    elif column is not None:
        raise TypeError("column is only meaningful for a pyarrow.Table")
    images: list[Image.Image | None] = []
    window = max(1, batch_size) * _WINDOW_BATCHES
    for chunk, offset in _chunks(array_or_table):
        for start in range(0, len(chunk), window):
            part = chunk.slice(start, window)
            first = offset + start
            ids = range(first, first + len(part))
            datas = _bitstreams_of(part, ids)
            images.extend(_decode_at(datas, ids, batch_size=batch_size, device=device))
    return _as_output(images, range(len(images)), output)


# -- compression --------------------------------------------------------------------------


def _compress(
    array: pa.Array | pa.ChunkedArray,
    feature: LICImage,
    *,
    batch_size: int,
    reencode: bool,
    device: str | None,
    first_row: int,
    embed_references: bool = False,
) -> pa.Array | pa.ChunkedArray:
    """Storage for ``array`` keeping its chunking; ``embed_references`` reads ``.lic`` rows
    into the column (for files that must stand alone, like Parquet)."""
    if not isinstance(array, (pa.Array, pa.ChunkedArray)):
        raise TypeError(
            f"expected a pyarrow Table, Array or ChunkedArray, got {type(array).__name__}"
        )
    if array.type == STORAGE_TYPE and not (reencode or embed_references):
        return array  # already LIC: untouched
    settings = feature.settings()  # resolves the model: fail before any work
    chunks = []
    window = max(1, batch_size) * _WINDOW_BATCHES
    for chunk, offset in _chunks(array):
        chunk = _plain(chunk)
        parts = [
            _compress_part(
                chunk.slice(start, window),
                settings,
                batch_size=batch_size,
                reencode=reencode,
                device=device,
                first_row=first_row + offset + start,
                embed_references=embed_references,
            )
            for start in range(0, len(chunk), window)
        ]
        chunks.append(pa.concat_arrays(parts) if parts else pa.array([], type=STORAGE_TYPE))
    if isinstance(array, pa.ChunkedArray):
        return pa.chunked_array(chunks, type=STORAGE_TYPE)
    return chunks[0]


def _compress_part(
    part: pa.Array,
    settings: column_codec.EncoderSettings,
    *,
    batch_size: int,
    reencode: bool,
    device: str | None,
    first_row: int,
    embed_references: bool,
) -> pa.StructArray:
    if part.type == STORAGE_TYPE and not (reencode or embed_references):
        return part
    rows = _pixel_rows(part, first_row) if _is_list(part.type) else _rows_of(part)
    keep_reference = [not (reencode or embed_references) and _is_lic_reference(r) for r in rows]
    inputs = []
    for i, (row, keep) in enumerate(zip(rows, keep_reference)):
        if keep:
            inputs.append(None)
        elif _is_lic_reference(row):  # read here, so a missing file names its row
            inputs.append(_read_reference(_path_of(row), first_row + i))
        else:
            inputs.append(row)
    datas = column_codec.encode_rows(
        inputs,
        settings,
        batch_size=batch_size,
        first_row=first_row,
        device=device,
        reencode=reencode,
    )
    stored = []
    for row, keep, data in zip(rows, keep_reference, datas):
        if keep:
            stored.append({"bytes": None, "path": _path_of(row), "codec": None})
        else:
            stored.append(None if data is None else _stored(data, _path_of(row)))
    return pa.array(stored, type=STORAGE_TYPE)


def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def _pixel_rows(part: pa.Array, first_row: int) -> list[np.ndarray | None]:
    """Nested lists of pixels as arrays of the Arrow value type (uint8 stays uint8, where
    ``to_pylist`` would give int64, which the encoder rightly refuses)."""
    rows: list[np.ndarray | None] = []
    for i in range(len(part)):
        if not part[i].is_valid:
            rows.append(None)
            continue
        try:
            rows.append(_nested_to_numpy(part.slice(i, 1))[0])
        except (pa.ArrowException, ValueError) as e:
            raise UnsupportedImageError(
                f"row {first_row + i}: nested lists are not an image array ({e})"
            ) from e
    return rows


def _nested_to_numpy(array: pa.Array) -> np.ndarray:
    """An ``(len(array), ...)`` array from equal-length nested lists (ragged: ValueError)."""
    if not _is_list(array.type):
        if array.null_count:
            raise ValueError("null pixel values")
        return array.to_numpy(zero_copy_only=False)
    if array.null_count:
        raise ValueError("null rows of pixels")
    if pa.types.is_fixed_size_list(array.type):
        length = array.type.list_size
    else:
        lengths = array.value_lengths().to_numpy(zero_copy_only=False)
        if len(lengths) and (lengths != lengths[0]).any():
            raise ValueError("ragged rows of pixels")
        length = int(lengths[0]) if len(lengths) else 0
    inner = _nested_to_numpy(array.flatten())
    return inner.reshape(len(array), length, *inner.shape[1:])


def _plain(array: pa.Array) -> pa.Array:
    """Arrays ``_rows_of`` understands: extension types unwrapped (``datasets``' ArrayND),
    dictionaries decoded, large types narrowed."""
    if isinstance(array, pa.ExtensionArray):
        array = array.storage
    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    if pa.types.is_large_string(array.type):
        array = array.cast(pa.string())
    elif pa.types.is_large_binary(array.type) or pa.types.is_binary_view(array.type):
        array = array.cast(pa.binary())
    elif pa.types.is_string_view(array.type):
        array = array.cast(pa.string())
    return array


def _replace_column(table: pa.Table, name: str, array: Any, feature: LICImage) -> pa.Table:
    out = table.set_column(table.schema.get_field_index(name), pa.field(name, STORAGE_TYPE), array)
    metadata = table.schema.metadata or {}
    if b"huggingface" not in metadata:
        return out
    # keep datasets' view of the table true: this column is now a LICImage
    from datasets import Features

    features = Features.from_arrow_schema(table.schema)
    features[name] = feature
    hf = json.loads(metadata[b"huggingface"])
    hf.setdefault("info", {})["features"] = features.to_dict()
    return out.replace_schema_metadata({**metadata, b"huggingface": json.dumps(hf).encode()})


# -- decompression ------------------------------------------------------------------------


def _bitstreams_of(part: pa.Array, ids: Sequence[int]) -> list[bytes | None]:
    """The bitstream of each row (a referenced ``.lic`` file is read); None stays None."""
    part = _plain(part)
    t = part.type
    if pa.types.is_struct(t):
        if t.get_field_index("bytes") < 0 and t.get_field_index("path") < 0:
            raise UnsupportedImageError(f"cannot decode a {t} column: expected LICImage storage")
    elif not (pa.types.is_binary(t) or pa.types.is_string(t)):
        raise UnsupportedImageError(f"cannot decode a {t} column: expected LICImage storage")
    out: list[bytes | None] = []
    for row, row_id in zip(part.to_pylist(), ids):
        if isinstance(row, dict):
            data, path = row.get("bytes"), row.get("path")
            if data is None and path is not None:
                data = _read_reference(path, row_id)
            elif data is None:
                raise CorruptBitstreamError(f"row {row_id}: stored row has neither bytes nor path")
            row = data
        elif isinstance(row, str):
            row = _read_reference(row, row_id)
        out.append(row)
    return out


def _read_reference(path: str, row_id: int) -> bytes:
    try:
        return column_codec.read_url(path)
    except (OSError, ValueError) as e:
        raise CorruptBitstreamError(f"row {row_id}: cannot read {path!r}: {e}") from e


def _decode_at(
    datas: Sequence[bytes | None],
    ids: Sequence[int],
    *,
    batch_size: int = column_codec.DEFAULT_BATCH_SIZE,
    device: str | None = None,
) -> list[Image.Image | None]:
    """``column_codec.decode_rows`` for rows whose indices need not be contiguous (``ids``)."""
    out: list[Image.Image | None] = [None] * len(datas)
    present = [k for k, d in enumerate(datas) if d is not None]
    step = max(1, batch_size)
    for start in range(0, len(present), step):
        window = present[start : start + step]
        try:
            images = column_codec.decode_rows(
                [datas[k] for k in window], batch_size=step, device=device
            )
        except CorruptBitstreamError:
            images = []
            for k in window:  # one at a time, to name the row in the caller's numbering
                try:
                    images.extend(column_codec.decode_rows([datas[k]], device=device))
                except CorruptBitstreamError as e:
                    cause = e.__cause__ if isinstance(e.__cause__, CorruptBitstreamError) else e
                    raise type(cause)(f"row {ids[k]}: {cause}") from cause
        for k, image in zip(window, images):
            out[k] = image
    return out


def _check_output(output: str) -> None:
    if output not in ("pil", "numpy"):
        raise ValueError(f"output must be 'pil' or 'numpy', got {output!r}")


_NUMPY_MODE = {"1": "L", "PA": "RGBA"}


def _as_output(
    images: list[Image.Image | None], ids: Sequence[int], output: Output
) -> list[Image.Image | None] | np.ndarray:
    """The list itself, or one ``(N, H, W, C)`` uint8 batch when every image agrees."""
    if output == "pil":
        return images
    if not images:
        return np.zeros((0, 0, 0, 0), dtype=np.uint8)
    missing = [ids[k] for k, im in enumerate(images) if im is None]
    if missing:
        raise ValueError(
            f"output='numpy' needs every row present; rows {missing[:10]} are None "
            "(use output='pil', or select other rows)"
        )
    size, mode = images[0].size, images[0].mode
    for k, image in enumerate(images):
        if image.size != size or image.mode != mode:
            raise ValueError(
                f"output='numpy' needs one size and mode: row {ids[0]} is {size[0]}x{size[1]} "
                f"{mode}, row {ids[k]} is {image.size[0]}x{image.size[1]} {image.mode} "
                "(use output='pil')"
            )
    arrays = [_pixels(image) for image in images]
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:  # palette images with and without transparency
        raise ValueError(f"output='numpy': rows decode to different shapes {sorted(shapes)}")
    return np.stack(arrays)


def _pixels(image: Image.Image) -> np.ndarray:
    mode = _NUMPY_MODE.get(image.mode)
    if image.mode == "P":
        mode = "RGBA" if "transparency" in image.info else "RGB"
    if mode is not None:
        image = image.convert(mode)
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise ValueError(f"output='numpy' supports 8-bit images, got mode {image.mode}")
    return array[..., None] if array.ndim == 2 else array


# -- shared -------------------------------------------------------------------------------


def _require_column(table: pa.Table, column: str | None) -> str:
    if column is None:
        raise TypeError(f"pass column=... to pick the image column of {table.column_names}")
    if column not in table.column_names:
        raise KeyError(f"no column {column!r}; columns: {table.column_names}")
    return column


def _chunks(array: pa.Array | pa.ChunkedArray):
    """``(chunk, index of its first row)`` for an array or each chunk of a chunked array."""
    if isinstance(array, pa.ChunkedArray):
        offset = 0
        for chunk in array.chunks:
            yield chunk, offset
            offset += len(chunk)
    elif isinstance(array, pa.Array):
        yield array, 0
    else:
        raise TypeError(
            f"expected a pyarrow Table, Array or ChunkedArray, got {type(array).__name__}"
        )
