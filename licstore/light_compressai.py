"""Import CompressAI's layers, entropy models and rANS coder without its package ``__init__``.

``import compressai`` imports every part of the package, point-cloud datasets included, and so
``torch_geometric``, ``pandas`` and ``torch._dynamo``: a reader process grows by about 300 MiB
and seconds of start-up for code it never runs. licstore needs only ``compressai.layers``,
``compressai.ops``, ``compressai.entropy_models`` and ``compressai.ans``, which do not depend on
the rest. :func:`install` puts a lazy stand-in for the package into ``sys.modules``: submodules
import as usual (it has the real ``__path__``), and the first access to anything else on the
package (``compressai.zoo``, ``compressai.set_entropy_coder``, ...) runs the real ``__init__``
in place, so code that wants the whole package still gets it.
"""

from __future__ import annotations

import importlib.util
import sys
import types

#: the entropy coder that CompressAI's package selects by default (``compressai._entropy_coder``)
_DEFAULT_CODER = "ans"


class _LazyCompressAI(types.ModuleType):
    """The ``compressai`` package, its ``__init__`` run on the first attribute it lacks."""

    def __getattr__(self, name: str):
        if name.startswith("__") or self.__dict__.get("_licstore_initialized"):
            raise AttributeError(f"module 'compressai' has no attribute {name!r}")
        self.__dict__["_licstore_initialized"] = True
        # the real functions replace the two light ones below
        self.__spec__.loader.exec_module(self)
        return getattr(self, name)


def _get_entropy_coder() -> str:
    return _DEFAULT_CODER


def _available_entropy_coders() -> list[str]:
    return [_DEFAULT_CODER]


def install() -> bool:
    """Put the lazy package in ``sys.modules`` unless CompressAI is imported already.

    Returns whether it did. The two functions CompressAI's entropy models ask the package for
    at construction (``get_entropy_coder``, ``available_entropy_coders``) answer as the real
    package does before anyone calls ``set_entropy_coder``.
    """
    if "compressai" in sys.modules:
        return False
    spec = importlib.util.find_spec("compressai")
    if spec is None or spec.submodule_search_locations is None:
        return False
    module = _LazyCompressAI("compressai")
    module.__spec__ = spec
    module.__loader__ = spec.loader
    module.__file__ = spec.origin
    module.__path__ = list(spec.submodule_search_locations)
    module.__package__ = "compressai"
    module.get_entropy_coder = _get_entropy_coder
    module.available_entropy_coders = _available_entropy_coders
    sys.modules["compressai"] = module
    return True


def scale_table(low: float = 0.11, high: float = 256.0, levels: int = 64):
    """CompressAI's default Gaussian scale table (``compressai.models.base.get_scale_table``).

    Defined here because importing ``compressai.models`` imports every model of the zoo; the
    bitstream depends on these values, so ``tests/test_light_compressai.py`` checks that they
    equal CompressAI's.
    """
    import math

    import torch

    return torch.exp(torch.linspace(math.log(low), math.log(high), levels))
