"""Model registry: architectures by name, shipped weights by name and hash.

``available()`` lists the models licstore can encode with; ``load(name)`` returns a
ready (frozen, eval-mode) network. A bitstream names its model *and* the first bytes
of its weights' SHA-256, so ``for_bitstream`` finds exactly the weights it was written
with, even after newer weights have become the default.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import torch.nn as nn

from ..errors import ModelNotFoundError, WeightsIntegrityError
from . import (  # noqa: F401  (the architecture modules register themselves)
    compressai_zoo,
    ibfe,
    mshp_ckbd,
    mshp_vr,
    resgdn_vr,
    resnet_subpixel,
)
from .registry import MODEL_CLASSES, model_class, register_model
from .weights import WEIGHTS_DIR, parse, read_manifest, read_verified, sha256_bytes

__all__ = [
    "DEFAULT_MODEL",
    "available",
    "architectures",
    "load",
    "for_bitstream",
    "register_model",
    "register_weights",
    "resolve",
]

DEFAULT_MODEL = "mshp-vr"

# name -> {hash prefix hex (16 chars) -> (path, full sha256)} ; plus name -> default prefix
_weights: dict[str, dict[str, tuple[Path, str]]] = {}
_default_version: dict[str, str] = {}
_cache: dict[tuple[str, str, str], nn.Module] = {}
_lock = threading.Lock()


def _load_manifest() -> None:
    for name, entry in read_manifest().get("models", {}).items():
        for v in entry["versions"]:
            _weights.setdefault(name, {})[v["sha256"][:16]] = (WEIGHTS_DIR / v["file"], v["sha256"])
        _default_version[name] = entry["default"][:16]


_load_manifest()


def _register_from_env() -> None:
    """Weights listed in ``LICSTORE_WEIGHTS`` (os.pathsep-separated files) are registered
    at import, so worker processes (DataLoader with spawn, ``map(num_proc=...)``, Dask)
    know the same custom models as the process that started them."""
    for entry in filter(None, os.environ.get("LICSTORE_WEIGHTS", "").split(os.pathsep)):
        register_weights(entry)


def available() -> list[str]:
    """Names accepted by ``load`` and ``licstore.encode(model=...)``.

    Shipped and registered models first; then CompressAI's zoo (``compressai:<arch>``),
    which downloads its weights unless a local checkpoint was registered.
    """
    zoo = [compressai_zoo.PREFIX + a for a in compressai_zoo.zoo_architectures()]
    return sorted(_weights) + zoo


def architectures() -> list[str]:
    return sorted(MODEL_CLASSES)


def register_weights(path: str | os.PathLike, name: str | None = None) -> str:
    """Make a weights file written by ``tools/export_weights.py`` loadable by name.

    Returns the model name (from the file's metadata unless ``name`` is given). Used for
    your own trained models, and by the tests for tiny ones.
    """
    data = read_verified(path, None)
    _, meta = parse(data)
    name = name or meta.get("name")
    if not name:
        raise WeightsIntegrityError(f"{path}: no model name in metadata; pass name=")
    digest = sha256_bytes(data)
    with _lock:
        _weights.setdefault(name, {})[digest[:16]] = (Path(path), digest)
        _default_version[name] = digest[:16]
    return name


def resolve(name: str | None = None) -> tuple[str, str]:
    """``(name, full weights SHA-256)`` that ``load(name)`` would use, without loading it."""
    name = name or DEFAULT_MODEL
    if name.startswith(compressai_zoo.PREFIX):
        return name, load(name).weights_sha256
    return name, _resolve(name, None)[1]


def _resolve(name: str, version: str | None) -> tuple[Path, str]:
    versions = _weights.get(name)
    if not versions:
        raise ModelNotFoundError(
            f"no model named {name!r}; available: {available()} "
            "(register your own weights with licstore.models.register_weights)"
        )
    key = version or _default_version[name]
    try:
        return versions[key]
    except KeyError:
        raise ModelNotFoundError(
            f"model {name!r} with weights {key} is not installed (installed: "
            f"{sorted(versions)}); the data was written with other weights: install the "
            "licstore version that wrote it, or register its weights file"
        ) from None


def load(name: str | None = None, *, version: str | None = None, device: str = "cpu") -> nn.Module:
    """A frozen, eval-mode model, loaded once per process (thread-safe)."""
    name = name or DEFAULT_MODEL
    if name.startswith(compressai_zoo.PREFIX):
        return _load_zoo(name, version, device)
    path, digest = _resolve(name, version)
    key = (name, digest, str(device))
    with _lock:
        if key in _cache:
            return _cache[key]
        tensors, meta = parse(read_verified(path, digest))
        try:
            cls = model_class(meta["architecture"])
            model = cls(**json.loads(meta.get("arch_kwargs", "{}")))
            exact = {k: v for k, v in tensors.items() if k.startswith("exact.")}
            floats = {
                k: v.float() if v.is_floating_point() else v
                for k, v in tensors.items()
                if not k.startswith("exact.")
            }
            model.load_state_dict(floats, strict=False)
            model.load_exact_state_dict(exact)
        except (KeyError, ValueError, RuntimeError, TypeError) as e:
            raise WeightsIntegrityError(f"weights {path} do not fit their architecture: {e}") from e
        model.eval().requires_grad_(False)
        model.to(device)
        model.name = name
        model.weights_sha256 = digest
        _cache[key] = model
        return model


def _load_zoo(name: str, version: str | None, device: str) -> nn.Module:
    model = compressai_zoo.CompressAIZooModel(name[len(compressai_zoo.PREFIX) :])
    key = (name, model.weights_sha256, str(device))
    with _lock:
        model = _cache.setdefault(key, model.to(device))
    if version is not None and not model.weights_sha256.startswith(version):
        raise ModelNotFoundError(
            f"{name}: the data was written with other weights ({version}) than the ones "
            f"configured here ({model.weights_sha256[:16]})"
        )
    return model


def for_bitstream(name: str, hash_prefix: bytes, device: str = "cpu") -> nn.Module:
    """The model that wrote a bitstream: same name and same weights."""
    return load(name, version=hash_prefix.hex()[:16], device=device)


_register_from_env()
