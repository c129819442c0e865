"""Weights files: safetensors on disk, SHA-256 checked before use.

A shipped weights file holds the float parameters (fp16 for the transforms) and the
exact inference tables (fixed-point hyper-synthesis, step table, CDF tables) at full
precision. Its SHA-256 is recorded in ``licstore/weights/manifest.json``; the first
8 bytes of it go into every bitstream, so a decoder can pick the exact weights a
file was written with.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from ..errors import WeightsIntegrityError

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"
MANIFEST = WEIGHTS_DIR / "manifest.json"
#: parameters of these submodules are stored in fp16 (they never enter the exact path)
FP16_PREFIXES = ("g_a.", "g_s.", "h_a.", "context.", "entropy_parameters.")
#: float parameters not stored at all: the exact (fixed-point) copy replaces them
EXACT_ONLY_PREFIXES = ("h_s.",)


#: ``<model>-<full SHA-256 hex>.safetensors``: the name of a weights file outside the package
#: (a dataset's ``.licstore-weights/`` folder, the user folder of ``licstore models register``):
#: a folder listing says which model and version each file holds, and the name is the hash
#: its content is checked against before use
NAMED_FILE = re.compile(r"^(?P<model>[^/\\]+)-(?P<sha256>[0-9a-f]{64})\.safetensors$")


def named_file(model: str, sha256: str) -> str:
    """The file name of ``model``'s weights of SHA-256 ``sha256`` (see :data:`NAMED_FILE`)."""
    return f"{model}-{sha256}.safetensors"


@dataclass(frozen=True)
class RemoteFile:
    """A weights file on an fsspec filesystem (``s3://``, ``memory://``, ...), read when the
    model is first loaded."""

    fs: Any
    path: str

    def read_bytes(self) -> bytes:
        with self.fs.open(self.path, "rb") as f:
            return f.read()

    def __str__(self) -> str:
        return self.fs.unstrip_protocol(self.path)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_verified(path: str | os.PathLike | RemoteFile, sha256: str | None) -> bytes:
    """Read a weights file (a local path or a :class:`RemoteFile`) and check its SHA-256
    (when one is expected)."""
    try:
        data = (path if isinstance(path, RemoteFile) else Path(path)).read_bytes()
    except (OSError, ValueError) as e:
        raise WeightsIntegrityError(f"cannot read weights {path}: {e}") from e
    if sha256 is not None and sha256_bytes(data) != sha256:
        raise WeightsIntegrityError(
            f"weights file {path} has SHA-256 {sha256_bytes(data)}, expected {sha256}: "
            "the file is damaged or was replaced (a shipped file: reinstall licstore)"
        )
    return data


def parse(data: bytes) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """safetensors bytes -> (tensors, metadata); never unpickles anything."""
    try:
        tensors = st_load(data)
        header_len = int.from_bytes(data[:8], "little")
        meta = json.loads(data[8 : 8 + header_len]).get("__metadata__", {}) or {}
    except (SafetensorError, ValueError, json.JSONDecodeError) as e:
        raise WeightsIntegrityError(f"malformed weights file: {e}") from e
    return tensors, meta


def export(model: torch.nn.Module, path: str | os.PathLike, metadata: dict[str, str]) -> str:
    """Write ``model`` (frozen) as a weights file atomically; returns its SHA-256."""
    state = {}
    for k, v in model.state_dict().items():
        if k.startswith(EXACT_ONLY_PREFIXES):
            continue
        v = v.detach().cpu().contiguous()
        if k.startswith(FP16_PREFIXES) and v.is_floating_point():
            v = v.half()
        state[k] = v
    state.update({k: v.contiguous() for k, v in model.exact_state_dict().items()})
    data = _canonical_header(st_save(state, metadata={k: str(v) for k, v in metadata.items()}))
    from ..atomic import write_file

    write_file(path, data)  # the umask's permissions, as any file the user writes
    return sha256_bytes(data)


def _canonical_header(data: bytes) -> bytes:
    """The same file with its JSON header keys sorted: safetensors writes the metadata map in
    a random order, so without this one checkpoint exports to files of different SHA-256."""
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data stays 8-byte aligned, as safetensors writes it
    return len(text).to_bytes(8, "little") + text + data[8 + n :]


def load_float_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Float parameters of a weights file or training checkpoint, for ``--init-from``."""
    path = Path(path)
    if path.suffix == ".safetensors":
        tensors, _ = parse(read_verified(path, None))
        from .mshp_vr import float_h_s_from_exact

        tensors.update(float_h_s_from_exact(tensors))
    else:
        tensors = torch.load(path, map_location="cpu", weights_only=True)["model"]
    return {
        k: v.float() if v.is_floating_point() else v
        for k, v in tensors.items()
        if not k.startswith("exact.")
    }


def warm_start(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> tuple[int, int]:
    """Load the tensors of ``state`` that fit ``model`` (same name and shape); the rest stay.

    A model built on another's backbone (e.g. ``ibfe`` on ``mshp-vr``) names where the
    backbone's tensors go with a ``backbone_key(name) -> name`` method. Returns
    ``(loaded, total)`` tensor counts of the model, so a training log can say how much of
    the network started trained.
    """
    rename = getattr(model, "backbone_key", lambda k: k)
    own = model.state_dict()
    fitting = {}
    for k, v in state.items():
        k = rename(k)
        if k in own and own[k].shape == v.shape:
            fitting[k] = v
    model.load_state_dict(fitting, strict=False)
    return len(fitting), len(own)


def read_manifest() -> dict:
    if not MANIFEST.exists():
        return {"models": {}}
    return json.loads(MANIFEST.read_text())
