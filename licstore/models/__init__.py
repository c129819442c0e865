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
from .weights import (
    NAMED_FILE,
    WEIGHTS_DIR,
    RemoteFile,
    parse,
    read_manifest,
    read_verified,
    sha256_bytes,
)

__all__ = [
    "DEFAULT_MODEL",
    "available",
    "architectures",
    "load",
    "for_bitstream",
    "register_model",
    "register_weights",
    "resolve",
    "add_weights",
    "user_weights_dir",
]

DEFAULT_MODEL = "mshp-vr"

# name -> {hash prefix hex (16 chars) -> (path, full sha256)} ; plus name -> default prefix
_weights: dict[str, dict[str, tuple[Path, str]]] = {}
_default_version: dict[str, str] = {}
# versions the manifest lists whose files this installation does not ship (superseded ones
# leave the wheel): name -> {hash prefix -> file name}, for ModelNotFoundError's advice
_not_shipped: dict[str, dict[str, str]] = {}
_cache: dict[tuple[str, str, str], nn.Module] = {}
_lock = threading.Lock()


def _load_manifest() -> None:
    for name, entry in read_manifest().get("models", {}).items():
        for v in entry["versions"]:
            path = WEIGHTS_DIR / v["file"]
            if path.is_file():
                _weights.setdefault(name, {})[v["sha256"][:16]] = (path, v["sha256"])
            else:
                _not_shipped.setdefault(name, {})[v["sha256"][:16]] = v["file"]
        _default_version[name] = entry["default"][:16]


_load_manifest()


def _register_from_env() -> None:
    """Weights listed in ``LICSTORE_WEIGHTS`` (os.pathsep-separated files) are registered
    at import, so worker processes (DataLoader with spawn, ``map(num_proc=...)``, Dask)
    know the same custom models as the process that started them.

    The files listed there become their model's default (``default=True``), as the model
    cards use it to evaluate candidate weights; a later entry wins over an earlier one."""
    for entry in filter(None, os.environ.get("LICSTORE_WEIGHTS", "").split(os.pathsep)):
        register_weights(entry, default=True)


def available() -> list[str]:
    """Names accepted by ``load`` and ``licstore.encode(model=...)``.

    Shipped and registered models first; then CompressAI's zoo (``compressai:<arch>``),
    whose weights load only from a registered local checkpoint or, when asked with
    ``load(name, allow_download=True)``, from CompressAI's model store.
    """
    zoo = [compressai_zoo.PREFIX + a for a in compressai_zoo.zoo_architectures()]
    return sorted(_weights) + zoo


def architectures() -> list[str]:
    return sorted(MODEL_CLASSES)


def register_weights(
    path: str | os.PathLike, name: str | None = None, *, default: bool = False
) -> str:
    """Make a weights file written by ``tools/export_weights.py`` loadable by name.

    Returns the model name (from the file's metadata unless ``name`` is given). Used for
    your own trained models, by the tests for tiny ones, and to decode files written with
    weights this licstore no longer ships: bitstreams name their weights by hash, so
    registering is enough to decode them. New encodes with ``model=name`` keep using the
    name's current default weights unless ``default=True`` (a name seen for the first time
    gets these weights as its default, since it has no other).
    """
    data = read_verified(path, None)
    _, meta = parse(data)
    name = name or meta.get("name")
    if not name:
        raise WeightsIntegrityError(f"{path}: no model name in metadata; pass name=")
    digest = sha256_bytes(data)
    with _lock:
        _weights.setdefault(name, {})[digest[:16]] = (Path(path), digest)
        if default or name not in _default_version:
            _default_version[name] = digest[:16]
    return name


def add_weights(name: str, sha256: str, location: str | os.PathLike | RemoteFile) -> bool:
    """Make weights of known SHA-256 loadable without reading them now (a dataset's
    ``.licstore-weights/`` folder, the user folder): the file is read and checked against
    ``sha256`` when the model is first loaded (``WeightsIntegrityError`` if it differs).

    Never changes a name's default weights (a name seen for the first time gets these as its
    default, since it has no other) and never replaces an installed file of the same hash.
    Returns whether the version was new to this process.
    """
    if not isinstance(location, RemoteFile):
        location = Path(location)
    with _lock:
        versions = _weights.setdefault(name, {})
        if sha256[:16] in versions:
            return False
        versions[sha256[:16]] = (location, sha256)
        _default_version.setdefault(name, sha256[:16])
    return True


def user_weights_dir() -> Path:
    """Where ``licstore models register`` keeps weights files: ``LICSTORE_WEIGHTS_DIR``, else
    ``$XDG_DATA_HOME/licstore/weights`` (``~/.local/share/licstore/weights``)."""
    if os.environ.get("LICSTORE_WEIGHTS_DIR"):
        return Path(os.environ["LICSTORE_WEIGHTS_DIR"]).expanduser()
    data_home = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(data_home) / "licstore" / "weights"


def _register_user_folder() -> None:
    """Weights kept by ``licstore models register`` (named ``<model>-<sha256>.safetensors``):
    registered at import without reading them, so every process decodes their files."""
    try:
        files = sorted(user_weights_dir().glob("*.safetensors"))
    except OSError:
        return
    for f in files:
        m = NAMED_FILE.match(f.name)
        if m:
            add_weights(m["model"], m["sha256"], f)


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
        file = _not_shipped.get(name, {}).get(key)
        if file is not None:
            raise ModelNotFoundError(
                f"model {name!r} with weights {key} is a superseded version this licstore "
                f"no longer installs ({file}); to decode its files, get the file (licstore's "
                "source repository, licstore/weights/; or `licstore models export` where it "
                "is installed) and run `licstore models register FILE`; a dataset written "
                "with its weights: licstore.register_dataset_weights(DATASET_FOLDER)"
            ) from None
        raise ModelNotFoundError(
            f"model {name!r} with weights {key} is not installed (installed: "
            f"{sorted(versions)}); the data was written with other weights: install the "
            "licstore version that wrote it, or register its weights file"
        ) from None


def load(
    name: str | None = None,
    *,
    version: str | None = None,
    device: str = "cpu",
    allow_download: bool = False,
) -> nn.Module:
    """A frozen, eval-mode model, loaded once per process (thread-safe).

    ``allow_download=True`` (CompressAI zoo names only) lets this process fetch that zoo
    architecture's weights from CompressAI's model store, now and for later encodes and
    decodes; without it a zoo model loads only from registered local checkpoints, so a
    bitstream never starts a download.
    """
    name = name or DEFAULT_MODEL
    if name.startswith(compressai_zoo.PREFIX):
        return _load_zoo(name, version, device, allow_download)
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


def _load_zoo(name: str, version: str | None, device: str, allow_download: bool) -> nn.Module:
    architecture = name[len(compressai_zoo.PREFIX) :]
    if allow_download:
        compressai_zoo.allow_download(architecture)
    compressai_zoo.check_loadable(architecture)  # no network: fails before any fetch
    model = compressai_zoo.CompressAIZooModel(architecture)
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


_register_user_folder()
_register_from_env()
