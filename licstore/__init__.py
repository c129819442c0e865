"""licstore: learned image compression as a storage format for ML data pipelines.

>>> import licstore
>>> data = licstore.encode(image, bpp=0.3)      # bytes, self-describing
>>> image = licstore.decode(data)               # PIL image, original size and mode

The integrations (``arrow``, ``parquet``, ``LICImage``, ``compress_dataset``) import pyarrow and
``datasets`` (and through it pandas), so they load on first use: a process that only decodes
stays small. ``LICImage`` is registered with ``datasets`` as soon as both are imported, in
whichever order.
"""

import importlib
import importlib.util
import sys
from importlib.abc import MetaPathFinder

from . import light_compressai

light_compressai.install()

from . import errors, models  # noqa: E402
from .codec import BitstreamInfo, decode, decode_batch, encode, encode_batch, info  # noqa: E402
from .errors import (  # noqa: E402
    CorruptBitstreamError,
    EffortError,
    LICError,
    ModelNotFoundError,
    UnsupportedImageError,
    WeightsIntegrityError,
)

__version__ = "0.1.0"

#: public names that import their module on first use: name -> (module, attribute or None)
_LAZY = {
    "arrow": ("licstore.arrow", None),
    "parquet": ("licstore.parquet", None),
    "LICImage": ("licstore.features", "LICImage"),
    "compress_dataset": ("licstore.hf_datasets", "compress_dataset"),
    "to_image_column": ("licstore.hf_datasets", "to_image_column"),
    "save_to_disk": ("licstore.hf_datasets", "save_to_disk"),
    "load_from_disk": ("licstore.hf_datasets", "load_from_disk"),
    "register_dataset_weights": ("licstore.hf_datasets", "register_dataset_weights"),
}

__all__ = [
    "BitstreamInfo",
    "LICImage",
    "CorruptBitstreamError",
    "EffortError",
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
    "save_to_disk",
    "load_from_disk",
    "register_dataset_weights",
]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'licstore' has no attribute {name!r}")
    module_name, attribute = _LAZY[name]
    module = importlib.import_module(module_name)
    value = module if attribute is None else getattr(module, attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


def _register_feature() -> None:
    from .features import register

    register()


class _RegisterWhenDatasetsLoads(MetaPathFinder):
    """Registers ``LICImage`` right after the ``datasets`` package finishes importing."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "datasets":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec("datasets")
        if spec is None or spec.loader is None:
            return None
        exec_module = spec.loader.exec_module

        def exec_then_register(module):
            exec_module(module)
            _register_feature()

        spec.loader.exec_module = exec_then_register
        return spec


if "datasets" in sys.modules:
    _register_feature()
elif not any(isinstance(f, _RegisterWhenDatasetsLoads) for f in sys.meta_path):
    sys.meta_path.insert(0, _RegisterWhenDatasetsLoads())
