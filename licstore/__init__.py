"""licstore: learned image compression as a storage format for ML data pipelines.

>>> import licstore
>>> data = licstore.encode(image, bpp=0.3)      # bytes, self-describing
>>> image = licstore.decode(data)               # PIL image, original size and mode
"""

from . import errors, models
from .codec import BitstreamInfo, decode, decode_batch, encode, encode_batch, info
from .errors import (
    CorruptBitstreamError,
    LICError,
    ModelNotFoundError,
    UnsupportedImageError,
    WeightsIntegrityError,
)

__version__ = "0.1.0"

__all__ = [
    "BitstreamInfo",
    "CorruptBitstreamError",
    "LICError",
    "ModelNotFoundError",
    "UnsupportedImageError",
    "WeightsIntegrityError",
    "decode",
    "decode_batch",
    "encode",
    "encode_batch",
    "errors",
    "info",
    "models",
]
