"""Decode limits: how large an image a decode may allocate for, checked from headers first.

A bitstream's header declares its size; a decoder that trusted it would let a 72-byte file
ask for a 60000 x 60000 synthesis. ``decode`` therefore checks the header's ``width *
height`` against ``max_pixels`` before it loads a model or allocates anything, and every side
layer (alpha PNG, residual HEIF / PNG / WebP / JPEG XL, the resgdn-vr code map) must declare,
in its own header, exactly the size the container says, checked before its decoder runs.

The limit is, in this order: the call's ``max_pixels=``, the environment variable
``LICSTORE_MAX_PIXELS``, ``DEFAULT_MAX_PIXELS`` (the encode limit, 4096 x 4096), as Pillow's
``Image.MAX_IMAGE_PIXELS``. Peak memory of one decode grows linearly with the padded pixel
count ``P`` (``tools/decode_memory.py``, BENCHMARKS.md "Decode memory and the decode limit";
mshp-vr, bf16 synthesis): about 0.8 GiB + 130 B x P, and 0.8 GiB + 1936 B x P for
``lossless=True`` files (their synthesis runs in float64). The pixel limit is what bounds it:
about 3.0 GiB at the default limit (measured), 31 GiB for a lossless file (fit); lower the
limit for untrusted lossless data on small machines. An allocation failure still raises
``DecodeMemoryError``.
"""

from __future__ import annotations

import os

from .errors import DecodeLimitError, LICError

__all__ = ["DEFAULT_MAX_PIXELS", "ENV_MAX_PIXELS", "check_pixels", "max_pixels"]

#: the encode limit (``imageio.MAX_PIXELS``): everything licstore encodes decodes by default
DEFAULT_MAX_PIXELS = 4096 * 4096
ENV_MAX_PIXELS = "LICSTORE_MAX_PIXELS"

_HOW_TO_RAISE = (
    f"if you trust the file, raise the limit with decode(..., max_pixels=N) or the "
    f"environment variable {ENV_MAX_PIXELS}=N"
)


def max_pixels(value: int | None = None) -> int:
    """The limit in force: ``value`` if given, else ``LICSTORE_MAX_PIXELS``, else the default."""
    source = "max_pixels"
    if value is None:
        env = os.environ.get(ENV_MAX_PIXELS)
        if env is None or env.strip() == "":
            return DEFAULT_MAX_PIXELS
        source = ENV_MAX_PIXELS
        try:
            value = int(env.strip().replace("_", ""))
        except ValueError:
            raise LICError(f"{ENV_MAX_PIXELS}={env!r} is not a whole number of pixels") from None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise LICError(f"{source} must be a positive int, got {value!r}")
    return value


def check_pixels(width: int, height: int, limit: int, what: str = "the bitstream") -> None:
    """Raise ``DecodeLimitError`` when ``width * height`` exceeds ``limit`` (from a header)."""
    if width * height > limit:
        raise DecodeLimitError(
            f"{what} declares a {width}x{height} image = {width * height} pixels, above the "
            f"decode limit max_pixels = {limit}; refused before decoding (a corrupt or hostile "
            f"file, or a legitimately large image): {_HOW_TO_RAISE}"
        )
