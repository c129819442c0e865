"""CompressAI's pretrained zoo as licstore models (``compressai:<architecture>``).

Each zoo architecture comes as eight fixed-rate networks; the adapter exposes them as
one licstore model whose rate parameter is ``quality - 1``. Their weights load only when
the user asks: a local checkpoint registered with ``register_checkpoint``, or a download from
CompressAI's model store that the user allowed for that architecture in this process
(``allow_download``, or ``licstore.models.load(name, allow_download=True)``). A bitstream
alone never starts a download: decoding one that names a zoo model without either raises
``ModelNotFoundError`` at once. Checkpoints, local or downloaded, are read with
``torch.load(weights_only=True)`` (no unpickling of arbitrary objects).

These networks compute their entropy parameters in float, so -- unlike licstore's own
models -- their bitstreams are only guaranteed to decode on the same kind of device
(CompressAI issue #309).
"""

from __future__ import annotations

import functools
import hashlib
import os
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from ..errors import CorruptBitstreamError, ModelNotFoundError, WeightsIntegrityError

PREFIX = "compressai:"
_checkpoints: dict[tuple[str, int], Path] = {}
_download_allowed: set[str] = set()


def zoo_architectures() -> list[str]:
    from compressai.zoo import image_models

    # the -vbr models take extra arguments in compress/decompress; not adapted
    return sorted(a for a in image_models if not a.endswith("-vbr"))


def register_checkpoint(architecture: str, quality: int, path: str | os.PathLike) -> str:
    """Use a local CompressAI checkpoint (``.pth.tar`` state dict) for one quality level."""
    if architecture not in zoo_architectures():
        raise ModelNotFoundError(f"{architecture!r} is not a CompressAI zoo architecture")
    _checkpoints[(architecture, quality)] = Path(path)
    return PREFIX + architecture


def allow_download(architecture: str) -> str:
    """Let this process fetch ``architecture``'s weights from CompressAI's model store.

    Downloads happen only for architectures allowed here (or through
    ``licstore.models.load(name, allow_download=True)``); returns the licstore model name.
    """
    if architecture not in zoo_architectures():
        raise ModelNotFoundError(f"{architecture!r} is not a CompressAI zoo architecture")
    _download_allowed.add(architecture)
    return PREFIX + architecture


def check_loadable(architecture: str) -> None:
    """Raise ``ModelNotFoundError`` unless the user made this architecture's weights
    available: a registered local checkpoint or an allowed download (both check the name).
    Touches neither the network nor CompressAI's package (whose import takes seconds), so a
    bitstream naming a zoo model fails here at once, before anything is fetched."""
    if architecture in _download_allowed or any(a == architecture for a, _ in _checkpoints):
        return
    raise ModelNotFoundError(
        f"{PREFIX}{architecture} is not available: CompressAI zoo weights load only when "
        "asked for (and only for its architectures, licstore.models.available()); register "
        "local checkpoints with licstore.models.compressai_zoo.register_checkpoint(...), or "
        f"allow the download with licstore.models.load({PREFIX + architecture!r}, "
        "allow_download=True)"
    )


def _download(architecture: str, quality: int) -> dict:
    """One quality level's state dict from CompressAI's model store (cached by torch.hub),
    read with ``weights_only=True``: CompressAI's own loader would unpickle it."""
    from compressai.zoo.image import model_urls

    url = model_urls[architecture]["mse"][quality]
    return torch.hub.load_state_dict_from_url(url, map_location="cpu", weights_only=True)


def _url_hash(architecture: str, quality: int) -> str:
    from compressai.zoo.image import model_urls

    try:
        url = model_urls[architecture]["mse"][quality]
    except KeyError:
        raise ModelNotFoundError(
            f"CompressAI publishes no mse weights for {architecture} quality {quality}"
        ) from None
    return re.search(r"-([0-9a-f]{8})\.pth", url).group(1)


@functools.lru_cache(maxsize=64)
def _sha256_cached(path: Path, mtime_ns: int, size: int) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _file_sha256(path: Path) -> str:
    """Hash of a checkpoint, read once per file version (``load`` runs on every encode)."""
    st = path.stat()
    return _sha256_cached(path, st.st_mtime_ns, st.st_size)


@dataclass
class ZooBatch:
    x: torch.Tensor
    cache: dict = field(default_factory=dict)


class CompressAIZooModel(nn.Module):
    """Adapter with the same inference interface as licstore's own models."""

    downsampling = 64

    def __init__(self, architecture: str):
        super().__init__()
        if architecture not in zoo_architectures():
            raise ModelNotFoundError(f"{architecture!r} is not a CompressAI zoo architecture")
        self.architecture = architecture
        self.name = PREFIX + architecture
        self.nets: dict[int, nn.Module] = {}
        self.device = torch.device("cpu")
        parts = []
        for q in range(1, 9):
            local = _checkpoints.get((architecture, q))
            parts.append(_file_sha256(local) if local else _url_hash(architecture, q))
        self.weights_sha256 = hashlib.sha256("|".join(parts).encode()).hexdigest()
        self.qualities = list(range(1, 9))

    def to(self, device):  # nets are loaded lazily; remember where they go
        self.device = torch.device(device)
        return self

    def net(self, quality: int) -> nn.Module:
        if quality not in self.nets:
            from compressai.zoo.image import model_architectures
            from compressai.zoo.pretrained import load_pretrained

            local = _checkpoints.get((self.architecture, quality))
            if local is None and self.architecture not in _download_allowed:
                raise ModelNotFoundError(
                    f"{self.name}: no local checkpoint for quality {quality} (register one "
                    "with licstore.models.compressai_zoo.register_checkpoint, or allow the "
                    f"download with licstore.models.load({self.name!r}, allow_download=True))"
                )
            source = local or f"CompressAI's model store ({self.name} quality {quality})"
            try:
                if local is not None:
                    state = torch.load(local, map_location="cpu", weights_only=True)
                else:  # the user allowed this architecture's download
                    state = _download(self.architecture, quality)
                state = load_pretrained(state.get("state_dict", state))
                net = model_architectures[self.architecture].from_state_dict(state)
            except (OSError, RuntimeError, KeyError, ValueError, AttributeError, EOFError,
                    pickle.UnpicklingError) as e:  # fmt: skip
                raise WeightsIntegrityError(f"cannot load checkpoint {source}: {e}") from e
            net.update(force=True)
            self.nets[quality] = net.eval().requires_grad_(False).to(self.device)
        return self.nets[quality]

    # -- the licstore model interface ------------------------------------------
    def rate_range(self) -> tuple[int, int]:
        return 0, 7

    def quality_to_rate(self, quality: int) -> int:
        return quality - 1

    def analyze(self, x: torch.Tensor) -> ZooBatch:
        return ZooBatch(x)

    def _strings(self, a: ZooBatch, i: int, rate: int) -> list[bytes]:
        key = (i, rate)
        if key not in a.cache:
            with torch.no_grad():
                out = self.net(rate + 1).compress(a.x[i : i + 1])
            a.cache[key] = [s[0] for s in out["strings"]]
        return a.cache[key]

    def encode_latents(self, a: ZooBatch, i: int, rate: int) -> bytes:
        strings = self._strings(a, i, rate)
        out = bytearray([len(strings)])
        for s in strings:
            out += len(s).to_bytes(4, "little") + s
        return bytes(out)

    def estimate_bytes(self, a: ZooBatch, i: int, rate: int) -> float:
        return float(len(self.encode_latents(a, i, rate)))

    def reconstruct_latents(self, a: ZooBatch, i: int, rate: int) -> torch.Tensor:
        h, w = a.x.shape[-2:]
        return self.decode_latents(self.encode_latents(a, i, rate), h, w, rate)

    def decode_latents(self, payload: bytes, height: int, width: int, rate: int) -> torch.Tensor:
        """For zoo models the 'latents' are already the decoded (padded) image."""
        if not payload:
            raise CorruptBitstreamError("empty base layer")
        n, pos, strings = payload[0], 1, []
        for _ in range(n):
            if pos + 4 > len(payload):
                raise CorruptBitstreamError("base layer: truncated string table")
            k = int.from_bytes(payload[pos : pos + 4], "little")
            pos += 4
            if pos + k > len(payload):
                raise CorruptBitstreamError("base layer: string past the end")
            strings.append([payload[pos : pos + k]])
            pos += k
        hp, wp = -(-height // 64) * 64, -(-width // 64) * 64
        net = self.net(rate + 1)
        # factorized-prior models send y only (shape at 1/16), hyperprior models y and z (1/64)
        if len(strings) not in (1, 2):
            raise CorruptBitstreamError("base layer: expected one or two strings")
        shape = (hp // 16, wp // 16) if len(strings) == 1 else (hp // 64, wp // 64)
        with torch.no_grad():
            return net.decompress(strings, shape)["x_hat"]

    def synthesize(
        self, y_hat: torch.Tensor, bf16: bool = False, float64: bool = False
    ) -> torch.Tensor:
        return (y_hat.double() if float64 else y_hat.float()).clamp(0, 1)
