"""Encode and decode whole columns of images: the engine under ``LICImage``, ``licstore.arrow``,
``licstore.parquet`` and ``compress_dataset``.

A column is a list of rows; each row is None, a bitstream, an image (PIL, array, tensor),
encoded image bytes, a path/URL or an ``{"bytes", "path"}`` dict. Rows that already hold
licstore bitstreams pass through untouched; the rest go through ``encode_batch`` a window of
``batch_size`` rows at a time (bounded memory), with the content cache in front of it so a
replayed cast costs a hash per row. Failures name the row (``first_row`` + position).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from . import container, encode_cache, imageio
from .errors import CorruptBitstreamError, LICError, UnsupportedImageError
from .ratecontrol import RateTarget, check_effort, check_enhancement

DEFAULT_BATCH_SIZE = 16


def is_bitstream(data: Any) -> bool:
    """Whether ``data`` looks like a licstore bitstream (magic only; ``unpack`` checks the rest)."""
    return isinstance(data, (bytes, bytearray, memoryview)) and bytes(data[:4]) == container.MAGIC


@dataclass(frozen=True)
class EncoderSettings:
    """Everything that decides the bytes an encoder writes, resolved to exact weights."""

    model: str
    weights_sha256: str
    target: RateTarget
    residual: str | None = None  # enhancement layer, as ``licstore.encode(residual=...)``
    lossless: bool = False
    effort: int = 0  # latent refinement, as ``licstore.encode(effort=...)``

    @classmethod
    def resolve(
        cls,
        *,
        bpp=None,
        quality=None,
        psnr=None,
        model=None,
        residual=None,
        lossless=False,
        effort=0,
    ) -> EncoderSettings:
        from . import models
        from .refine import require_support

        target = RateTarget.from_kwargs(bpp, quality, psnr)
        check_enhancement(residual, lossless)
        effort = check_effort(effort)
        name, digest = models.resolve(model)
        if effort:
            require_support(models.load(name), effort)  # a model that cannot refine fails now
        return cls(name, digest, target, residual, bool(lossless), effort)

    def cache_id(self) -> str:
        layers = (f"|residual={self.residual}" if self.residual else "") + (
            "|lossless" if self.lossless else ""
        )
        layers += f"|effort={self.effort}" if self.effort else ""  # effort 0: ids as before
        return (
            f"{self.model}@{self.weights_sha256}|{self.target.describe()}{layers}"
            f"|format{container.FORMAT_VERSION}"
        )

    def encode_kwargs(self) -> dict:
        t = self.target
        return {
            "bpp": t.bpp, "quality": t.quality, "psnr": t.psnr,
            "residual": self.residual, "lossless": self.lossless, "effort": self.effort,
        }  # fmt: skip


def read_url(path: str) -> bytes:
    """Bytes of a local path or any fsspec URL (``s3://``, ``hf://``, ``lic::...``)."""
    import fsspec

    with fsspec.open(path, "rb") as f:
        return f.read()


def _source_digest(row: Any) -> tuple[str, Any]:
    """``(digest, encoder input)`` for one row; reads paths so their content is the key."""
    if isinstance(row, dict):
        row = row.get("bytes") if row.get("bytes") is not None else row.get("path")
        if row is None:
            raise UnsupportedImageError("the row has neither 'bytes' nor 'path'")
    if isinstance(row, (str,)) or hasattr(row, "__fspath__"):
        try:
            row = read_url(str(row))
        except (OSError, ValueError) as e:
            raise UnsupportedImageError(f"cannot read image file {str(row)!r}: {e}") from e
    if isinstance(row, (bytes, bytearray, memoryview)):
        row = bytes(row)
        return "file:" + hashlib.sha256(row).hexdigest(), row
    if isinstance(row, Image.Image):
        h = hashlib.sha256(f"{row.mode}{row.size}".encode())
        h.update(row.tobytes())
        return "pil:" + h.hexdigest(), row
    if isinstance(row, list):
        row = np.asarray(row)
    if imageio._is_torch_tensor(row):
        row = row.detach().cpu().numpy()
    if isinstance(row, np.ndarray):
        row = np.ascontiguousarray(row)
        h = hashlib.sha256(f"{row.dtype.str}{row.shape}".encode())
        h.update(row.tobytes())
        return "array:" + h.hexdigest(), row
    raise UnsupportedImageError(
        f"cannot read an image from a {type(row).__name__} object: {imageio._INPUT_KINDS}"
    )


def encode_rows(
    rows: Sequence[Any],
    settings: EncoderSettings,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    first_row: int = 0,
    device: str | None = None,
    reencode: bool = False,
) -> list[bytes | None]:
    """Bitstreams for ``rows`` (None stays None). Existing bitstreams pass through unless
    ``reencode``; then they are decoded and encoded again with ``settings``."""
    from .codec import decode, encode_batch

    out: list[bytes | None] = [None] * len(rows)
    pending: list[tuple[int, str, Any]] = []  # (position, cache key, encoder input)
    for i, row in enumerate(rows):
        if row is None:
            continue
        try:
            lic = _existing_bitstream(row)
            if lic is not None and not reencode:
                container.unpack(lic)
                out[i] = lic
                continue
            if lic is not None:
                row = decode(lic)
            digest, source = _source_digest(row)
        except LICError as e:
            raise type(e)(f"row {first_row + i}: {e}") from e
        k = encode_cache.key(digest, settings.cache_id())
        cached = encode_cache.get(k)
        if cached is not None:
            out[i] = cached
        else:
            pending.append((i, k, source))

    for start in range(0, len(pending), max(1, batch_size)):
        window = pending[start : start + batch_size]
        prepared = []
        for i, _, source in window:
            try:
                prepared.append(imageio.prepare(source))
            except LICError as e:
                raise type(e)(f"row {first_row + i}: {e}") from e
        datas = encode_batch(
            prepared, model=settings.model, device=device, **settings.encode_kwargs()
        )
        encode_cache.stats["encoded"] += len(datas)
        for (i, k, _), data in zip(window, datas):
            encode_cache.put(k, data)
            out[i] = data
    return out


def _existing_bitstream(row: Any) -> bytes | None:
    """The bitstream a row already holds (bytes, dict bytes, or a ``.lic`` path), else None."""
    if isinstance(row, dict):
        if row.get("bytes") is not None:
            row = row["bytes"]
        elif row.get("path") is not None and str(row["path"]).endswith(".lic"):
            return read_url(str(row["path"]))
        else:
            return None
    elif isinstance(row, str) and row.endswith(".lic"):
        return read_url(row)
    if is_bitstream(row):
        return bytes(row)
    return None


def decode_rows(
    datas: Sequence[bytes | None],
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    first_row: int = 0,
    device: str | None = None,
) -> list[Image.Image | None]:
    """PIL images for bitstreams (None stays None); a bad one raises naming its row."""
    from .codec import decode_batch

    out: list[Image.Image | None] = [None] * len(datas)
    present = [i for i, d in enumerate(datas) if d is not None]
    for i in present:
        try:
            container.unpack(bytes(datas[i]))
        except CorruptBitstreamError as e:
            raise CorruptBitstreamError(f"row {first_row + i}: {e}") from e
    for start in range(0, len(present), max(1, batch_size)):
        window = present[start : start + batch_size]
        try:
            images = decode_batch([bytes(datas[i]) for i in window], device=device)
        except CorruptBitstreamError:
            images = []
            for i in window:  # find the row to blame
                try:
                    images.extend(decode_batch([bytes(datas[i])], device=device))
                except CorruptBitstreamError as e:
                    raise CorruptBitstreamError(f"row {first_row + i}: {e}") from e
        for i, image in zip(window, images):
            out[i] = image
    return out


def codec_label(data: bytes) -> str:
    """The storage's ``codec`` string: what any Parquet reader can learn without decoding.

    ``lic1 model=mshp-vr@ff752653 rate=16384 size=768x512 mode=RGB bpp=0.2973``
    (format version, model and weights-hash prefix, the model's rate parameter, size,
    original mode, bits per pixel). Frozen in ``formats/licstore-datasets-v1.md``.
    """
    bs = container.unpack(data)
    bpp = len(data) * 8 / (bs.width * bs.height)
    return (
        f"lic{container.FORMAT_VERSION} model={bs.model}@{bs.weights_hash.hex()[:8]} "
        f"rate={bs.rate} size={bs.width}x{bs.height} mode={bs.mode} bpp={bpp:.4f}"
    )
