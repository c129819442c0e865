"""licstore: learned image compression as a storage format for ML data pipelines.

>>> import licstore
>>> data = licstore.encode(image, bpp=0.3)      # bytes, self-describing
>>> image = licstore.decode(data)               # PIL image, original size and mode
"""

from . import arrow, errors, models, parquet
from .codec import BitstreamInfo, decode, decode_batch, encode, encode_batch, info
from .errors import (
    CorruptBitstreamError,
    LICError,
    ModelNotFoundError,
    UnsupportedImageError,
    WeightsIntegrityError,
)
from .features import LICImage
from .features import register as _register_feature
from .hf_datasets import compress_dataset, to_image_column

__version__ = "0.1.0"

__all__ = [
    "BitstreamInfo",
    "LICImage",
    "CorruptBitstreamError",
    "LICError",
    "ModelNotFoundError",
    "UnsupportedImageError",
    "WeightsIntegrityError",
    "decode",
    "decode_batch",
    "encode",
    "encode_batch",
    "arrow",
    "compress_dataset",
    "errors",
    "info",
    "models",
    "parquet",
    "to_image_column",
]

_register_feature()
