"""``LICImage``: a Hugging Face ``datasets`` feature storing images as licstore bitstreams.

Used like ``datasets.Image``: ``ds.cast_column("image", LICImage(bpp=0.3))`` compresses the
column (from an ``Image()`` column, bytes, paths or arrays) and ``ds[i]["image"]`` decodes one
row to a PIL image. The Arrow storage is ``struct<bytes: binary, path: string, codec: string>``
(frozen in ``formats/licstore-datasets-v1.md``); the extra ``codec`` field makes it differ from
``Image``'s ``struct<bytes, path>``, so a cast really converts instead of relabelling, and
lets any Parquet tool see model and rate without decoding. Decoding trusts the bitstream,
never the feature's parameters, which only say how *new* rows get encoded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pyarrow as pa

from . import column_codec
from .errors import CorruptBitstreamError, LICError, UnsupportedImageError, with_context
from .ratecontrol import RateTarget, check_effort, check_enhancement

STORAGE_TYPE = pa.struct({"bytes": pa.binary(), "path": pa.string(), "codec": pa.string()})

# a later release may change these defaults; old datasets must keep their meaning
_ALWAYS_SERIALISED = {"include_in_asdict_even_if_is_default": True}


@dataclass
class LICImage:
    """Image feature whose storage is a licstore bitstream.

    Args:
        bpp, quality, psnr: rate target for rows encoded through this feature (at most one;
            none means ``quality=4``), as in ``licstore.encode``.
        model: registry name of the encoding model; None means licstore's default.
        residual: ``"hevc"`` adds the HEVC enhancement layer, ``lossless=True`` stores the
            images exactly, as in ``licstore.encode`` (serialised only when set, so features
            without them read as before).
        effort: encoder-side latent refinement, 0 (default: the analysis transform's latents)
            to ``licstore.refine.MAX_EFFORT``, as in ``licstore.encode`` (serialised only
            when set); ``compress_dataset`` and the Dask jobs take it from here.
        mode: convert decoded images to this PIL mode (as ``datasets.Image(mode=...)``).
        decode: False returns the stored ``{"bytes", "path", "codec"}`` dict.
        batch_size: images per ``encode_batch`` call during casts (not serialised).
    """

    bpp: float | None = field(default=None, metadata=_ALWAYS_SERIALISED)
    quality: int | None = field(default=None, metadata=_ALWAYS_SERIALISED)
    psnr: float | None = field(default=None, metadata=_ALWAYS_SERIALISED)
    model: str | None = field(default=None, metadata=_ALWAYS_SERIALISED)
    residual: str | None = None
    lossless: bool = False
    effort: int = 0
    mode: str | None = None
    decode: bool = True
    id: str | None = field(default=None, repr=False)
    # Automatically constructed
    dtype: ClassVar[str] = "PIL.Image.Image"
    pa_type: ClassVar[Any] = STORAGE_TYPE
    _type: str = field(default="LICImage", init=False, repr=False)

    def __post_init__(self) -> None:
        RateTarget.from_kwargs(self.bpp, self.quality, self.psnr)  # RateTargetError if invalid
        check_enhancement(self.residual, self.lossless)  # RateTargetError naming the problem
        check_effort(self.effort)  # EffortError
        if self.model is not None and not isinstance(self.model, str):
            raise TypeError(f"model must be a registry name (str), got {self.model!r}")

    def __call__(self) -> pa.DataType:
        return self.pa_type

    # -- encoding --------------------------------------------------------------------------

    def settings(self) -> column_codec.EncoderSettings:
        """The exact encoder (model, weights, rate target) new rows get."""
        return column_codec.EncoderSettings.resolve(
            bpp=self.bpp, quality=self.quality, psnr=self.psnr, model=self.model,
            residual=self.residual, lossless=self.lossless, effort=self.effort,
        )  # fmt: skip

    def encode_example(self, value: Any) -> dict | None:
        """One row to storage: a bitstream or ``.lic`` path passes through, anything else
        (PIL, array, tensor, image bytes, image path, ``{"bytes", "path"}``) is encoded."""
        if value is None:
            return None
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        if _is_lic_reference(value):
            return {"bytes": None, "path": _path_of(value), "codec": None}
        data = column_codec.encode_rows([value], self.settings())[0]
        return _stored(data, _path_of(value))

    def cast_storage(self, storage: pa.Array) -> pa.StructArray:
        """Convert an Arrow array (``Image`` struct, binary, string paths, nested lists of
        pixels, or this feature's own struct) to the LICImage storage, encoding in batches."""
        if pa.types.is_large_string(storage.type) or pa.types.is_large_binary(storage.type):
            storage = storage.cast(
                pa.string() if pa.types.is_large_string(storage.type) else pa.binary()
            )
        if pa.types.is_struct(storage.type) and storage.type.get_field_index("codec") >= 0:
            if storage.type == STORAGE_TYPE:
                return storage  # already LIC: untouched (re-encoding is compress_dataset's job)
        rows = _rows_of(storage)
        references = [_is_lic_reference(r) for r in rows]
        encoded = column_codec.encode_rows(
            [None if ref else r for r, ref in zip(rows, references)], self.settings()
        )
        stored = [
            {"bytes": None, "path": _path_of(r), "codec": None}
            if ref
            else (None if data is None else _stored(data, _path_of(r)))
            for r, ref, data in zip(rows, references, encoded)
        ]
        return pa.array(stored, type=STORAGE_TYPE)

    def embed_storage(
        self, storage: pa.StructArray, token_per_repo_id=None, local_files=True, remote_files=True
    ) -> pa.StructArray:
        """Replace ``.lic`` path references by their bytes (``save_to_disk``, ``push_to_hub``)."""
        from datasets.utils.file_utils import is_local_path, is_remote_url

        out = []
        for row in storage.to_pylist():
            if row is None:
                out.append(None)
                continue
            path = row.get("path")
            if row.get("bytes") is None and path is not None:
                if (local_files and is_local_path(path)) or (remote_files and is_remote_url(path)):
                    data = _read_reference(path, token_per_repo_id)
                    row = _stored(data, os.path.basename(path))
            elif row.get("bytes") is not None and row.get("codec") is None:
                row = _stored(row["bytes"], path)
            out.append(row)
        return pa.array(out, type=STORAGE_TYPE)

    # -- decoding --------------------------------------------------------------------------

    def decode_example(self, value: Any, token_per_repo_id=None):
        """Stored row -> PIL image (original size and mode, or ``self.mode``)."""
        if not self.decode:
            raise RuntimeError("decoding is disabled for this feature: use LICImage(decode=True)")
        if not isinstance(value, (dict, str)):
            return value  # already decoded
        if isinstance(value, str):
            value = {"bytes": None, "path": value}
        data, path = value.get("bytes"), value.get("path")
        where = f"image at {path!r}" if path else "stored image"
        if data is None:
            if path is None:
                raise CorruptBitstreamError("stored row has neither bytes nor path")
            data = _read_reference(path, token_per_repo_id)
        from .codec import decode

        try:
            image = decode(bytes(data))
        except LICError as e:  # same class (a DecodeLimitError stays one), naming the image
            raise with_context(e, f"{where} ({len(data)} bytes)") from e
        if self.mode and self.mode != image.mode:
            image = image.convert(self.mode)
        return image

    def flatten(self):
        """Itself while decodable, else the raw struct fields (as ``datasets.Image``)."""
        from datasets import Value

        if self.decode:
            return self
        return {"bytes": Value("binary"), "path": Value("string"), "codec": Value("string")}


def _rows_of(storage: pa.Array) -> list[Any]:
    """Python rows of any accepted input array; struct rows keep their ``bytes``/``path``."""
    t = storage.type
    if pa.types.is_string(t) or pa.types.is_binary(t):
        return storage.to_pylist()
    if pa.types.is_struct(t):
        names = {t.field(i).name for i in range(t.num_fields)}
        if not names & {"bytes", "path"}:
            raise UnsupportedImageError(
                f"cannot cast struct<{', '.join(sorted(names))}> to LICImage: "
                "expected fields 'bytes' and/or 'path'"
            )
        return storage.to_pylist()
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        import numpy as np

        inner = t
        while (
            pa.types.is_list(inner)
            or pa.types.is_large_list(inner)
            or pa.types.is_fixed_size_list(inner)
        ):
            inner = inner.value_type
        dtype = inner.to_pandas_dtype()  # keep uint8 pixels uint8 (to_pylist gives ints)
        return [None if r is None else np.asarray(r, dtype=dtype) for r in storage.to_pylist()]
    raise UnsupportedImageError(f"cannot cast an Arrow {t} column to LICImage")


def _path_of(value: Any) -> str | None:
    if isinstance(value, dict):
        return value.get("path")
    if isinstance(value, str):
        return value
    return None


def _is_lic_reference(value: Any) -> bool:
    """A row that points at a ``.lic`` file without holding bytes: kept as a reference."""
    if isinstance(value, str):
        return value.endswith(".lic")
    if isinstance(value, dict):
        return value.get("bytes") is None and str(value.get("path") or "").endswith(".lic")
    return False


def _stored(data: bytes, path: str | None) -> dict:
    return {"bytes": data, "path": path, "codec": column_codec.codec_label(data)}


def _read_reference(path: str, token_per_repo_id=None) -> bytes:
    """Bytes of a referenced file, through ``datasets``' opener (hub tokens, chained URLs)."""
    from datasets.download.download_config import DownloadConfig
    from datasets.utils.file_utils import xopen

    try:
        with xopen(path, "rb", download_config=DownloadConfig()) as f:
            return f.read()
    except OSError as e:
        raise CorruptBitstreamError(f"cannot read {path!r}: {e}") from e


def register() -> bool:
    """Make ``datasets`` know ``LICImage`` (for ``load_from_disk``, ``load_dataset``, ...).

    Called on ``import licstore``; returns False when ``datasets`` is not installed."""
    try:
        import warnings

        from datasets.features.features import register_feature
    except ImportError:
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # register_feature is flagged experimental
        register_feature(LICImage, "LICImage")
    return True
