"""The public verbs: encode / decode / encode_batch / decode_batch / info.

Everything an integration needs goes through here; integrations never touch models.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from . import container, imageio, models
from .errors import CorruptBitstreamError, LICError, RateTargetError
from .metrics import psnr as _psnr
from .ratecontrol import BPP_TOLERANCE, RateTarget, largest_rate_within, smallest_rate_reaching

__all__ = ["BitstreamInfo", "decode", "decode_batch", "encode", "encode_batch", "info"]

#: precision of the synthesis transform when decoding: "fp32", "bf16" or "auto"
#: ("auto" = bf16 where the CPU has native bf16 support, e.g. AMX / AVX-512 BF16)
DECODE_PRECISION = os.environ.get("LICSTORE_PRECISION", "auto")


def _one_thread_after_fork() -> None:
    """A forked child (``map(num_proc=...)``, DataLoader workers) whose parent already ran
    torch deadlocks in its first OpenMP region (measured: GNU OpenMP's pool does not survive
    fork). One intra-op thread per child avoids the pool, and N children already fill the
    cores; a child that wants more can call ``torch.set_num_threads`` itself."""
    torch.set_num_threads(1)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_one_thread_after_fork)


def _use_bf16(precision: str, device: torch.device) -> bool:
    if precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"precision must be 'auto', 'fp32' or 'bf16', got {precision!r}")
    if precision == "auto":
        if device.type == "cuda":
            return torch.cuda.is_bf16_supported()
        return bool(
            torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
        )
    return precision == "bf16"


def _device(device: str | torch.device | None) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r}: no CUDA device here; use 'cpu' or 'auto'")
    return dev


def _pad_to(x: torch.Tensor, multiple: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if not (ph or pw):
        return x
    # replicate padding costs fewer bits than zeros; tiny sizes need repeated passes
    while ph or pw:
        sh, sw = min(ph, x.shape[-2] - 1 or 1), min(pw, x.shape[-1] - 1 or 1)
        if x.shape[-2] == 1 or x.shape[-1] == 1:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
            break
        x = F.pad(x, (0, sw, 0, sh), mode="reflect")
        ph, pw = ph - sh, pw - sw
    return x


def _to_tensor(rgbs: Sequence[np.ndarray], multiple: int, device: torch.device) -> torch.Tensor:
    x = torch.from_numpy(np.stack(rgbs)).permute(0, 3, 1, 2).float().div_(255)
    return _pad_to(x, multiple).to(device)


def _to_uint8(x: torch.Tensor, height: int, width: int) -> np.ndarray:
    x = x[:, :height, :width].mul(255).round_().clamp_(0, 255).to(torch.uint8)
    return x.permute(1, 2, 0).cpu().numpy()


# -- encoding ---------------------------------------------------------------------


def encode(
    image: Any,
    *,
    bpp: float | None = None,
    quality: int | None = None,
    psnr: float | None = None,
    model: str | None = None,
    device: str | None = None,
) -> bytes:
    """Compress one image into a self-describing licstore bitstream.

    ``image``: PIL image, HxW[x3|x4] uint8 array, CHW uint8/float tensor, path or file bytes.
    Give at most one rate target: ``bpp`` (per image; the result is within 3% above the
    target or below it), ``quality`` (1..8, CompressAI's zoo levels) or ``psnr`` (the
    smallest rate whose decoded PSNR meets it). With none, ``quality=4``.
    """
    return encode_batch([image], bpp=bpp, quality=quality, psnr=psnr, model=model, device=device)[0]


def encode_batch(
    images: Iterable[Any],
    *,
    bpp: float | None = None,
    quality: int | None = None,
    psnr: float | None = None,
    model: str | None = None,
    device: str | None = None,
    batch_transforms: bool = False,
) -> list[bytes]:
    """Compress many images; same-sized ones share network passes when allowed.

    With ``batch_transforms=False`` (default) each image runs the analysis transform
    alone, so the bytes are identical to ``encode`` one by one (float kernels differ
    between batch sizes). ``batch_transforms=True`` batches same-sized images through
    the network (faster, above all on GPU); its bitstreams decode the same everywhere
    but may differ from one-by-one bytes in a few latent symbols.
    """
    target = RateTarget.from_kwargs(bpp, quality, psnr)
    dev = _device(device)
    net = models.load(model, device=str(dev))
    prepared = [imageio.prepare(im) for im in images]
    out: list[bytes | None] = [None] * len(prepared)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, p in enumerate(prepared):
        groups.setdefault(p.rgb.shape[:2], []).append(i)
    for idx in groups.values():
        chunks = [idx] if batch_transforms else [[i] for i in idx]
        for chunk in chunks:
            x = _to_tensor([prepared[i].rgb for i in chunk], net.downsampling, dev)
            analyzed = net.analyze(x)
            for j, i in enumerate(chunk):
                out[i] = _encode_one(net, analyzed, j, prepared[i], target, dev)
    return out  # type: ignore[return-value]


def _bitstream(net, prep: imageio.PreparedImage, rate: int, payload: bytes) -> bytes:
    h, w = prep.rgb.shape[:2]
    layers = [container.Layer("base", payload)]
    layers += [container.Layer(s.kind, s.data, s.meta) for s in prep.side_layers]
    bs = container.Bitstream(
        model=net.name,
        weights_hash=bytes.fromhex(net.weights_sha256[:16]),
        width=w,
        height=h,
        mode=prep.mode,
        rate=rate,
        layers=tuple(layers),
    )
    return container.pack(bs)


def _encode_one(net, analyzed, j: int, prep, target: RateTarget, dev: torch.device) -> bytes:
    lo, hi = net.rate_range()
    if target.quality is not None:
        rate = net.quality_to_rate(target.quality)
        return _bitstream(net, prep, rate, net.encode_latents(analyzed, j, rate))
    h, w = prep.rgb.shape[:2]
    if target.psnr is not None:
        bf16 = _use_bf16(DECODE_PRECISION, dev)

        def quality_at(rate: int) -> float:
            y_hat = net.reconstruct_latents(analyzed, j, rate).to(dev)
            rec = _to_uint8(net.synthesize(y_hat, bf16=bf16)[0], h, w)
            return _psnr(prep.rgb, rec)

        rate = smallest_rate_reaching(quality_at, target.psnr, lo, hi, resolution=64)
        if rate is None:
            raise RateTargetError(
                f"psnr={target.psnr:g} dB is out of reach for model {net.name} on this image "
                f"(its highest rate gives {quality_at(hi):.2f} dB)"
            )
        return _bitstream(net, prep, rate, net.encode_latents(analyzed, j, rate))

    # bpp: search on bit estimates, then correct with real sizes
    budget = target.bpp * h * w / 8
    fixed = len(_bitstream(net, prep, 0, b""))  # container + side layers
    scale = 1.0
    best: bytes | None = None
    for _ in range(4):
        rate, ok = largest_rate_within(
            lambda r, s=scale: net.estimate_bytes(analyzed, j, r) * s + fixed, budget, lo, hi
        )
        data = _bitstream(net, prep, rate, net.encode_latents(analyzed, j, rate))
        if not ok and len(data) > budget * (1 + BPP_TOLERANCE):
            raise RateTargetError(
                f"bpp={target.bpp:g} is below the lowest rate model {net.name} reaches on this "
                f"image ({len(data) * 8 / (h * w):.3f} bpp)"
            )
        if len(data) <= budget * (1 + BPP_TOLERANCE) and (best is None or len(data) > len(best)):
            best = data
        if budget * (1 - BPP_TOLERANCE) <= len(data) <= budget * (1 + BPP_TOLERANCE):
            return data
        if rate == hi and len(data) <= budget:
            return data
        scale *= (len(data) - fixed) / max(net.estimate_bytes(analyzed, j, rate), 1.0)
    if best is None:  # estimates kept overshooting: walk down with real sizes
        rate = largest_rate_within(
            lambda r: len(net.encode_latents(analyzed, j, r)) + fixed, budget, lo, hi
        )[0]
        best = _bitstream(net, prep, rate, net.encode_latents(analyzed, j, rate))
    return best


# -- decoding ---------------------------------------------------------------------


def _parse(data: bytes) -> container.Bitstream:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise CorruptBitstreamError(f"expected bytes, got {type(data).__name__}")
    return container.unpack(data)


def decode(data: bytes, *, device: str | None = None, precision: str | None = None) -> Image.Image:
    """Decode a bitstream to a PIL image of the original size and mode."""
    return decode_batch([data], device=device, precision=precision)[0]


def decode_batch(
    datas: Iterable[bytes],
    *,
    device: str | None = None,
    precision: str | None = None,
    batch_transforms: bool = False,
) -> list[Image.Image]:
    """Decode many bitstreams; latents are decoded exactly, synthesis may be batched.

    ``precision``: synthesis in "fp32", "bf16" or "auto" (default: bf16 where the hardware
    has it). ``batch_transforms=True`` runs same-shaped images through the synthesis
    together (faster; pixels may differ from one-by-one decoding by rounding).
    """
    dev = _device(device)
    bf16 = _use_bf16(precision or DECODE_PRECISION, dev)
    parsed = [_parse(d) for d in datas]
    out: list[Image.Image | None] = [None] * len(parsed)
    groups: dict[tuple, list[int]] = {}
    for i, bs in enumerate(parsed):
        base = bs.layer("base")
        if base is None:
            raise CorruptBitstreamError("bitstream has no base layer")
        groups.setdefault((bs.model, bs.weights_hash, bs.height, bs.width), []).append(i)
    for (name, whash, h, w), idx in groups.items():
        net = models.for_bitstream(name, whash, device=str(dev))
        lo, hi = net.rate_range()
        latents = []
        for i in idx:
            bs = parsed[i]
            if not lo <= bs.rate <= hi:
                raise CorruptBitstreamError(f"rate parameter {bs.rate} outside [{lo}, {hi}]")
            try:
                latents.append(net.decode_latents(bs.layer("base").data, h, w, bs.rate))
            except LICError:
                raise
            except Exception as e:  # the rANS decoder's own complaints
                raise CorruptBitstreamError(f"base layer does not decode: {e}") from e
        chunks = [list(range(len(idx)))] if batch_transforms else [[k] for k in range(len(idx))]
        for chunk in chunks:
            y_hat = torch.cat([latents[k] for k in chunk]).to(dev)
            x = net.synthesize(y_hat, bf16=bf16)
            for k, xi in zip(chunk, x):
                bs = parsed[idx[k]]
                side = {
                    layer.kind: (layer.data, layer.meta)
                    for layer in bs.layers
                    if layer.kind != "base"
                }
                out[idx[k]] = imageio.restore(_to_uint8(xi, h, w), bs.mode, side)
    return out  # type: ignore[return-value]


# -- inspection -------------------------------------------------------------------


@dataclass(frozen=True)
class LayerInfo:
    kind: str
    bytes: int


@dataclass(frozen=True)
class BitstreamInfo:
    """What a bitstream says about itself; reading it runs no network."""

    format_version: int
    model: str
    weights_hash: str  # hex prefix of the weights' SHA-256
    width: int
    height: int
    mode: str
    rate: int  # the model's rate parameter (fixed point)
    layers: tuple[LayerInfo, ...]
    total_bytes: int
    overhead_bytes: int  # container bytes that are not layer payload

    @property
    def bpp(self) -> float:
        return self.total_bytes * 8 / (self.width * self.height)


def info(data: bytes) -> BitstreamInfo:
    bs = _parse(data)
    return BitstreamInfo(
        format_version=container.FORMAT_VERSION,
        model=bs.model,
        weights_hash=bs.weights_hash.hex(),
        width=bs.width,
        height=bs.height,
        mode=bs.mode,
        rate=bs.rate,
        layers=tuple(
            LayerInfo(layer.kind, len(layer.data) + len(layer.meta)) for layer in bs.layers
        ),
        total_bytes=len(data),
        overhead_bytes=container.overhead(bs),
    )
