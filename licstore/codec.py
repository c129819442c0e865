"""The public verbs: encode / decode / encode_batch / decode_batch / info.

Everything an integration needs goes through here; integrations never touch models.
"""

from __future__ import annotations

import copy
import inspect
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from . import container, imageio, layer_headers, limits, models
from . import residual as _res
from .errors import (
    CorruptBitstreamError,
    DecodeMemoryError,
    LICError,
    RateTargetError,
    UnsupportedImageError,
)
from .metrics import psnr as _psnr
from .precision import use_bf16
from .ratecontrol import (
    BPP_TOLERANCE,
    RateTarget,
    check_effort,
    check_enhancement,
    largest_rate_within,
    smallest_rate_reaching,
)
from .refine import refine, require_support

__all__ = [
    "BitstreamInfo",
    "decode",
    "decode_batch",
    "encode",
    "encode_batch",
    "info",
]


def _one_thread_after_fork() -> None:
    """A forked child (``map(num_proc=...)``, DataLoader workers) whose parent already ran
    torch deadlocks in its first OpenMP region (measured: GNU OpenMP's pool does not survive
    fork). One intra-op thread per child avoids the pool, and N children already fill the
    cores; a child that wants more can call ``torch.set_num_threads`` itself."""
    torch.set_num_threads(1)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_one_thread_after_fork)


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
    model: str | Sequence[str] | None = None,
    device: str | None = None,
    residual: str | None = None,
    lossless: bool = False,
    precision: str | None = None,
    effort: int = 0,
) -> bytes:
    """Compress one image into a self-describing licstore bitstream.

    ``image``: PIL image, HxW[x3|x4] uint8 array, CHW uint8/float tensor, path or file bytes.
    Give at most one rate target: ``bpp`` (per image; the result is within 3% above the
    target or below it), ``quality`` (1..8, CompressAI's zoo levels) or ``psnr`` (the
    smallest rate whose decoded PSNR meets it). With none, ``quality=4``.

    ``residual="hevc"`` adds an HEVC-coded enhancement layer where it pays: ``bpp`` searches
    the split between base and residual with the highest PSNR (base-only if that wins),
    ``psnr`` the smallest total size, ``quality`` adds the residual at
    ``RESIDUAL_HEVC_QUALITY``. ``lossless=True`` adds an exact residual: the decoded image
    equals the input bit for bit on any machine; the rate target then only picks the base
    layer (default ``quality=LOSSLESS_BASE_QUALITY``).

    ``model``: a registry name (default: the shipped default model), or several names to
    keep the best of their bitstreams for a ``bpp``/``psnr`` target (see ``encode_batch``).
    ``precision``: the analysis transform in "fp32", "bf16" or "auto" (default: bf16 where
    the hardware has it, ``LICSTORE_ENCODE_PRECISION``); any of them decodes everywhere.
    ``effort``: 0 (default) codes the analysis transform's latents; 1..``refine.MAX_EFFORT``
    refine them per image for the rate-distortion loss first (``licstore.refine``: slower
    encodes, fewer bytes at the same quality; decoding is unchanged). Models other than
    ``mshp-vr`` raise ``EffortError`` for effort > 0.
    """
    return encode_batch(
        [image],
        bpp=bpp,
        quality=quality,
        psnr=psnr,
        model=model,
        device=device,
        residual=residual,
        lossless=lossless,
        precision=precision,
        effort=effort,
    )[0]


def encode_batch(
    images: Iterable[Any],
    *,
    bpp: float | None = None,
    quality: int | None = None,
    psnr: float | None = None,
    model: str | Sequence[str] | None = None,
    device: str | None = None,
    batch_transforms: bool = False,
    residual: str | None = None,
    lossless: bool = False,
    precision: str | None = None,
    effort: int = 0,
) -> list[bytes]:
    """Compress many images; same-sized ones share network passes when allowed.

    With ``batch_transforms=False`` (default) each image runs the analysis transform
    alone, so the bytes are identical to ``encode`` one by one (float kernels differ
    between batch sizes). ``batch_transforms=True`` batches same-sized images through
    the network (faster, above all on GPU); its bitstreams decode the same everywhere
    but may differ from one-by-one bytes in a few latent symbols. ``residual``,
    ``lossless``, ``precision`` and ``effort`` as in ``encode`` (refinement runs per image:
    the bytes equal one-by-one ``encode``'s whenever the analysis does).

    ``model`` may name several models: each image is coded with each and the best
    bitstream kept (highest PSNR within a ``bpp`` budget, smallest for ``psnr`` or
    ``lossless``): seed 001's rate control by model switching (``licstore.model_switch``).
    """
    check_enhancement(residual, lossless)
    effort = check_effort(effort)
    if model is not None and not isinstance(model, str):
        from .model_switch import encode_batch_choosing

        return encode_batch_choosing(
            list(images),
            model,
            bpp=bpp,
            quality=quality,
            psnr=psnr,
            device=device,
            batch_transforms=batch_transforms,
            residual=residual,
            lossless=lossless,
            precision=precision,
            effort=effort,
        )
    if lossless and bpp is None and quality is None and psnr is None:
        quality = LOSSLESS_BASE_QUALITY
    target = RateTarget.from_kwargs(bpp, quality, psnr)
    dev = _device(device)
    bf16 = use_bf16(precision, dev, encode=True)
    net = models.load(model, device=str(dev))
    require_support(net, effort)
    prepared = [imageio.prepare(im) for im in images]
    if lossless:
        for p in prepared:
            problem = imageio.lossless_problem(p)
            if problem:
                raise UnsupportedImageError(problem)
    out: list[bytes | None] = [None] * len(prepared)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, p in enumerate(prepared):
        groups.setdefault(p.rgb.shape[:2], []).append(i)
    for idx in groups.values():
        chunks = [idx] if batch_transforms else [[i] for i in idx]
        for chunk in chunks:
            x = _to_tensor([prepared[i].rgb for i in chunk], net.downsampling, dev)
            analyzed = _analyze(net, x, bf16)
            for j, i in enumerate(chunk):
                a, k = analyzed, j
                if effort:
                    a, k = _refined(
                        net, analyzed, j, x[j : j + 1], prepared[i], target, effort, bf16
                    )
                if lossless:
                    out[i] = _ImageEncoder(net, a, k, prepared[i], dev).lossless(target)
                elif residual == "hevc":
                    out[i] = _ImageEncoder(net, a, k, prepared[i], dev).hevc(target)
                else:
                    out[i] = _encode_one(net, a, k, prepared[i], target, dev)
    return out  # type: ignore[return-value]


def _refined(
    net, analyzed, j: int, x: torch.Tensor, prep, target: RateTarget, effort: int, bf16: bool
):
    """(latents, index) to code image ``j`` from at ``effort``: refined at the rate the
    target picks on the amortized latents. The target's own search then runs again on the
    refined latents (``bpp=`` lands within its tolerance, ``psnr=`` finds its smaller rate)."""
    if target.quality is not None:
        rate = net.quality_to_rate(target.quality)
    else:
        lo, hi = net.rate_range()
        try:
            rate = container.unpack(_encode_one(net, analyzed, j, prep, target, x.device)).rate
        except RateTargetError:  # out of reach unrefined: refine at the end it missed
            rate = lo if target.bpp is not None else hi
    size = prep.rgb.shape[:2]
    return refine(net, x, analyzed, j, rate, effort, size=size, bf16=bf16), 0


def _analyze(net, x: torch.Tensor, bf16: bool):
    """``net.analyze``, in bf16 where asked and the model offers it (CompressAI's zoo
    models code through their own float path and do not)."""
    if bf16 and "bf16" in inspect.signature(net.analyze).parameters:
        return net.analyze(x, bf16=True)
    return net.analyze(x)


#: base quality of ``lossless=True`` without a rate target: the lowest level, because the
#: lossless residual barely shrinks as the base grows (Kodak, mshp-vr: total +1% at level 3,
#: +2% at level 6, +4% at level 8 over level 1; a 0.1 bpp base is 1-5% smaller still)
LOSSLESS_BASE_QUALITY = 1
#: HEVC quality (pillow-heif 0..100) of the residual for ``quality=`` targets
RESIDUAL_HEVC_QUALITY = 20
#: modes whose three coded planes are equal gray: their lossless residual is one plane
_GRAY_MODES = ("L", "LA", "1")


def _bitstream(
    net,
    prep: imageio.PreparedImage,
    rate: int,
    payload: bytes,
    extra: Sequence[container.Layer] = (),
) -> bytes:
    h, w = prep.rgb.shape[:2]
    layers = [container.Layer("base", payload), *extra]
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


def _synthesize_float64(net, y_hat: torch.Tensor) -> torch.Tensor:
    """Float64 synthesis: the model's own path, else a float64 copy of the whole model."""
    if "float64" in inspect.signature(net.synthesize).parameters:
        return net.synthesize(y_hat, float64=True)
    twin = net.__dict__.get("_licstore_float64_twin")
    if twin is None:
        try:
            twin = copy.deepcopy(net).double()
        except Exception as e:
            raise LICError(
                f"model {net.name} has no float64 synthesis, which lossless layers need: {e}"
            ) from e
        net.__dict__["_licstore_float64_twin"] = twin
    return twin.synthesize(y_hat.double())


def _float64_pixels(net, y_hat: torch.Tensor, height: int, width: int, planes: int) -> np.ndarray:
    """The lossless prediction input ``v``: 255 * synthesis in float64, H x W x planes."""
    x = _synthesize_float64(net, y_hat)[0, :, :height, :width].double().cpu()
    v = (x * 255.0).permute(1, 2, 0).numpy()
    if planes == 1:  # gray modes: (R + G + B) / 3, summed left to right
        v = (((v[:, :, 0] + v[:, :, 1]) + v[:, :, 2]) / 3.0)[:, :, None]
    return np.ascontiguousarray(v)


class _ImageEncoder:
    """One analysed image with an enhancement layer; caches per base rate and HEVC quality."""

    def __init__(self, net, analyzed, j: int, prep: imageio.PreparedImage, dev) -> None:
        self.net, self.analyzed, self.j, self.prep, self.dev = net, analyzed, j, prep, dev
        self.h, self.w = prep.rgb.shape[:2]
        self.bf16 = use_bf16(None, dev)
        self._base: dict[int, tuple[bytes, np.ndarray, _res.HevcResidual]] = {}
        self._heif: dict[tuple[int, int], bytes] = {}
        self._psnr: dict[tuple[int, int | None], float] = {}
        self._estimates: dict[int, float] = {}
        self._fixed = len(_bitstream(net, prep, 0, b""))  # container + side layers

    # -- lossless ---------------------------------------------------------------
    def lossless(self, target: RateTarget) -> bytes:
        """Base picked by the rate target as without ``lossless``, plus the exact residual."""
        plain = _encode_one(self.net, self.analyzed, self.j, self.prep, target, self.dev)
        bs = container.unpack(plain)
        planes = 1 if self.prep.mode in _GRAY_MODES else 3
        y_hat = self.net.reconstruct_latents(self.analyzed, self.j, bs.rate).to(self.dev)
        v = _float64_pixels(self.net, y_hat, self.h, self.w, planes)
        data, meta = _res.lossless_encode(self.prep.rgb[:, :, :planes], v)
        layer = container.Layer(_res.LOSSLESS_KIND, data, meta)
        return _bitstream(self.net, self.prep, bs.rate, bs.layer("base").data, [layer])

    # -- residual-hevc: building blocks -----------------------------------------
    def base(self, rate: int) -> tuple[bytes, np.ndarray, _res.HevcResidual]:
        """Base payload, its decoded planes and the rescaled residual, per base rate."""
        if rate not in self._base:
            payload = self.net.encode_latents(self.analyzed, self.j, rate)
            y_hat = self.net.reconstruct_latents(self.analyzed, self.j, rate).to(self.dev)
            rec = _to_uint8(self.net.synthesize(y_hat, bf16=self.bf16)[0], self.h, self.w)
            self._base[rate] = (payload, rec, _res.HevcResidual.of(self.prep.rgb, rec))
        return self._base[rate]

    def heif(self, rate: int, q: int) -> bytes:
        if (rate, q) not in self._heif:
            self._heif[rate, q] = self.base(rate)[2].encode(q)
        return self._heif[rate, q]

    def pack(self, rate: int, q: int | None) -> bytes:
        """The bitstream of a split: base at ``rate``, residual at HEVC quality ``q`` (or none)."""
        payload, _, res = self.base(rate)
        extra = []
        if q is not None:
            data = self.heif(rate, q)
            extra = [container.Layer(_res.HEVC_KIND, data, res.meta(q, data))]
        return _bitstream(self.net, self.prep, rate, payload, extra)

    def size(self, rate: int, q: int | None) -> int:
        return len(self.pack(rate, q))

    def psnr(self, rate: int, q: int | None) -> float:
        """PSNR of the RGB planes a decoder reconstructs from the split."""
        if (rate, q) not in self._psnr:
            _, rec, res = self.base(rate)
            if q is not None:
                rec = _res.hevc_reconstruct(rec, res, self.heif(rate, q))
            self._psnr[rate, q] = _psnr(self.prep.rgb, rec)
        return self._psnr[rate, q]

    def largest_quality_within(self, rate: int, cap: float) -> int | None:
        """Highest HEVC quality whose total size is <= cap (sizes grow with quality).

        Galloping up from quality 0 then bisecting: encodes at high qualities are slow
        (near-lossless HEVC of the whole image) and rarely fit, so they are rarely probed.
        """
        qs = _res.HEVC_QUALITIES
        if self.size(rate, qs[0]) > cap:
            return None
        lo, step = 0, 8
        hi = len(qs)  # first index known (or assumed past the end) not to fit
        while lo + step < hi:
            if self.size(rate, qs[lo + step]) <= cap:
                lo, step = lo + step, step * 2
            else:
                hi = lo + step
                break
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self.size(rate, qs[mid]) <= cap:
                lo = mid
            else:
                hi = mid
        return qs[lo]

    def smallest_quality_reaching(self, rate: int, target: float) -> int | None:
        """Lowest HEVC quality whose PSNR meets the target (PSNR grows with quality).

        Galloping up from quality 0 then bisecting, as in ``largest_quality_within``.
        """
        qs = _res.HEVC_QUALITIES
        lo, step = -1, 8  # lo: highest index known not to reach the target
        hi = None
        while hi is None:
            probe = min(lo + step, len(qs) - 1)
            if self.psnr(rate, qs[probe]) >= target:
                hi = probe
            elif probe == len(qs) - 1:
                return None
            else:
                lo, step = probe, step * 2
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self.psnr(rate, qs[mid]) >= target:
                hi = mid
            else:
                lo = mid
        return qs[hi]

    def base_rate_within(self, budget: float) -> int | None:
        """Largest base rate whose estimated base-only bitstream fits ``budget`` bytes."""
        lo, hi = self.net.rate_range()
        rate, ok = largest_rate_within(lambda r: self.estimate(r) + self._fixed, budget, lo, hi)
        return rate if ok else None

    def estimate(self, rate: int) -> float:
        """Estimated base payload bytes, memoised: the fractions' searches share probes."""
        if rate not in self._estimates:
            self._estimates[rate] = self.net.estimate_bytes(self.analyzed, self.j, rate)
        return self._estimates[rate]

    # -- residual-hevc: rate allocation -----------------------------------------
    def hevc(self, target: RateTarget) -> bytes:
        if target.quality is not None:
            return self.pack(self.net.quality_to_rate(target.quality), RESIDUAL_HEVC_QUALITY)
        if target.psnr is not None:
            return self.pack(*self.split_for_psnr(target.psnr))
        return self.pack(*self.split_for_bpp(target.bpp)[:2])

    def split_for_bpp(
        self, bpp: float, fractions: Sequence[float] | None = None
    ) -> tuple[int, int | None, float]:
        """(base rate, HEVC quality or None, PSNR) with the highest PSNR within the budget.

        The budget is ``bpp`` + 3%, the tolerance of plain ``bpp=``. Candidates: the plain
        base-only encode; base layers at fractions of the budget, each completed by the
        highest HEVC quality that fits (coarse grid); then finer fractions around the best.
        ``fractions`` replaces all of this by a fixed grid (``[0.7]``: a fixed split).
        """
        cap = bpp * self.h * self.w / 8 * (1 + BPP_TOLERANCE)
        found: dict[tuple[int, int | None], float] = {}
        tried: dict[float, int | None] = {}

        def consider(f: float) -> None:
            rate = tried[f] = self.base_rate_within(f * cap)
            if rate is not None:
                q = self.largest_quality_within(rate, cap)
                if q is not None:
                    found[rate, q] = self.psnr(rate, q)

        if fractions is not None:
            for f in fractions:
                consider(f)
        else:
            plain = _encode_one(
                self.net, self.analyzed, self.j, self.prep, RateTarget(bpp=bpp), self.dev
            )
            rate = container.unpack(plain).rate
            found[rate, None] = self.psnr(rate, None)
            for f in (0.3, 0.5, 0.7, 0.85):
                consider(f)
            for step in (0.1, 0.05):  # refine around the best fraction
                best = max(found, key=found.__getitem__)
                if best[1] is None:
                    break
                f_best = next(f for f, r in tried.items() if r == best[0])
                for f in (f_best - step, f_best + step):
                    if 0.1 <= f <= 0.95 and round(f, 3) not in tried:
                        consider(round(f, 3))
        if not found:
            raise RateTargetError(
                f"bpp={bpp:g} leaves no room for a residual layer next to the base layer"
            )
        rate, q = max(found, key=found.__getitem__)
        return rate, q, found[rate, q]

    def split_for_psnr(self, target: float) -> tuple[int, int | None]:
        """(base rate, HEVC quality or None) of the smallest bitstream reaching ``target`` dB.

        Base-only (the plain ``psnr=`` search) competes with each quality level's base rate
        completed by the lowest HEVC quality that reaches the target, then with base rates
        halfway to the neighbours of the best level.
        """
        lo, hi = self.net.rate_range()
        found: dict[tuple[int, int | None], int] = {}
        base_only = smallest_rate_reaching(
            lambda r: self.psnr(r, None), target, lo, hi, resolution=64
        )
        if base_only is not None:
            found[base_only, None] = self.size(base_only, None)
        grid = sorted({self.net.quality_to_rate(q) for q in range(1, 9)})
        grid = [r for r in grid if base_only is None or r < base_only]

        def consider(rate: int) -> None:
            q = self.smallest_quality_reaching(rate, target)
            if q is not None:
                found[rate, q] = self.size(rate, q)

        for rate in grid:
            consider(rate)
        best = min(found, key=found.__getitem__) if found else None
        if best is not None and best[1] is not None:
            i = grid.index(best[0])
            for other in grid[max(i - 1, 0) : i] + grid[i + 1 : i + 2]:
                consider((best[0] + other) // 2)
        if not found:
            raise RateTargetError(
                f"psnr={target:g} dB is out of reach for model {self.net.name} on this image, "
                f"even with an HEVC residual at quality {_res.HEVC_QUALITIES[-1]}"
            )
        return min(found, key=found.__getitem__)


def _encode_one(net, analyzed, j: int, prep, target: RateTarget, dev: torch.device) -> bytes:
    lo, hi = net.rate_range()
    if target.quality is not None:
        rate = net.quality_to_rate(target.quality)
        return _bitstream(net, prep, rate, net.encode_latents(analyzed, j, rate))
    h, w = prep.rgb.shape[:2]
    if target.psnr is not None:
        bf16 = use_bf16(None, dev)

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
            lambda r, s=scale: net.estimate_bytes(analyzed, j, r) * s + fixed,
            budget,
            lo,
            hi,
            slack=BPP_TOLERANCE / 3,  # a third of the tolerance over still lands within it
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


def decode(
    data: bytes,
    *,
    device: str | None = None,
    precision: str | None = None,
    max_pixels: int | None = None,
) -> Image.Image:
    """Decode a bitstream to a PIL image of the original size and mode.

    ``max_pixels``: refuse (``DecodeLimitError``, from the header, before anything is
    allocated) images of more pixels; default ``LICSTORE_MAX_PIXELS``, else 4096 * 4096.
    """
    return decode_batch([data], device=device, precision=precision, max_pixels=max_pixels)[0]


def decode_batch(
    datas: Iterable[bytes],
    *,
    device: str | None = None,
    precision: str | None = None,
    batch_transforms: bool = False,
    max_pixels: int | None = None,
) -> list[Image.Image]:
    """Decode many bitstreams; latents are decoded exactly, synthesis may be batched.

    ``precision``: synthesis in "fp32", "bf16" or "auto" (default: bf16 where the hardware
    has it). ``batch_transforms=True`` runs same-shaped images through the synthesis
    together (for GPUs; on CPUs measured slower than one at a time, see BENCHMARKS.md);
    pixels may then differ from one-by-one decoding by rounding. ``max_pixels`` as in
    ``decode``; every bitstream and its layers are checked before any model loads.
    Running out of memory raises ``DecodeMemoryError``.
    """
    limit = limits.max_pixels(max_pixels)
    dev = _device(device)
    bf16 = use_bf16(precision, dev)
    parsed = [_parse(d) for d in datas]
    for bs in parsed:
        _check_layers(bs, limit)
    try:
        return _decode_parsed(parsed, dev, bf16, batch_transforms)
    except LICError:
        raise
    except (MemoryError, RuntimeError) as e:
        if isinstance(e, RuntimeError) and not _is_out_of_memory(e):
            raise
        sizes = sorted({f"{bs.width}x{bs.height}" for bs in parsed})
        raise DecodeMemoryError(
            f"out of memory decoding {', '.join(sizes)} ({type(e).__name__}: {e}); peak memory "
            "grows with the pixel count (BENCHMARKS.md, Decode memory): free memory, decode "
            "fewer images at once, or lower max_pixels / LICSTORE_MAX_PIXELS to refuse such "
            "files up front"
        ) from e


def _is_out_of_memory(e: RuntimeError) -> bool:
    """torch's allocation failures: ``torch.OutOfMemoryError`` (CUDA) or the CPU allocator's."""
    text = str(e).lower()
    oom = getattr(torch, "OutOfMemoryError", None)
    if oom is not None and isinstance(e, oom):
        return True
    return "can't allocate memory" in text or "out of memory" in text


def _check_layers(bs: container.Bitstream, limit: int) -> None:
    """What the header and the layers' own headers allow to check, before any allocation."""
    limits.check_pixels(bs.width, bs.height, limit)
    if bs.layer("base") is None:
        raise CorruptBitstreamError("bitstream has no base layer")
    if bs.layer(_res.HEVC_KIND) and bs.layer(_res.LOSSLESS_KIND):
        raise CorruptBitstreamError("bitstream has both a lossy and a lossless residual layer")
    side = [layer.kind for layer in bs.layers if layer.kind not in _ENHANCEMENT_KINDS]
    imageio.check_mode_layers(bs.mode, side)
    for layer in bs.layers:
        if layer.kind in (_res.HEVC_KIND, _res.LOSSLESS_KIND):
            _res.check_layer(layer.kind, layer.data, layer.meta, bs.width, bs.height)
        elif layer.kind == imageio.ALPHA:
            what = "alpha side layer"
            layer_headers.check_layer_image(layer.data, "PNG", bs.width, bs.height, what)


def _decode_parsed(
    parsed: list[container.Bitstream], dev: torch.device, bf16: bool, batch_transforms: bool
) -> list[Image.Image]:
    out: list[Image.Image | None] = [None] * len(parsed)
    groups: dict[tuple, list[int]] = {}
    for i, bs in enumerate(parsed):
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
            except (LICError, MemoryError):
                raise
            except Exception as e:  # the rANS decoder's own complaints
                if isinstance(e, RuntimeError) and _is_out_of_memory(e):
                    raise
                raise CorruptBitstreamError(f"base layer does not decode: {e}") from e
        # lossless layers predict from a float64 synthesis of their own, one image at a time
        exact = [k for k in range(len(idx)) if parsed[idx[k]].layer(_res.LOSSLESS_KIND)]
        for k in exact:
            bs = parsed[idx[k]]
            out[idx[k]] = _restore(bs, _lossless_planes(net, latents[k].to(dev), bs))
        rest = [k for k in range(len(idx)) if k not in set(exact)]
        chunks = [rest] if batch_transforms and rest else [[k] for k in rest]
        for chunk in chunks:
            y_hat = torch.cat([latents[k] for k in chunk]).to(dev)
            x = net.synthesize(y_hat, bf16=bf16)
            for k, xi in zip(chunk, x):
                bs = parsed[idx[k]]
                rgb = _to_uint8(xi, h, w)
                hevc = bs.layer(_res.HEVC_KIND)
                if hevc is not None:
                    rgb = _res.hevc_apply(rgb, hevc.data, hevc.meta)
                out[idx[k]] = _restore(bs, rgb)
    return out  # type: ignore[return-value]


def _lossless_planes(net, y_hat: torch.Tensor, bs: container.Bitstream) -> np.ndarray:
    """Exact RGB planes: robustly rounded float64 prediction plus the lossless residual."""
    layer = bs.layer(_res.LOSSLESS_KIND)
    planes = _res.lossless_planes(layer.meta)
    v = _float64_pixels(net, y_hat, bs.height, bs.width, planes)
    exact = _res.lossless_decode(v, layer.data, layer.meta)
    return np.ascontiguousarray(np.repeat(exact, 3, axis=2)) if planes == 1 else exact


_ENHANCEMENT_KINDS = ("base", _res.HEVC_KIND, _res.LOSSLESS_KIND)


def _restore(bs: container.Bitstream, rgb: np.ndarray) -> Image.Image:
    """Original mode from the decoded planes plus the side layers (alpha, palette)."""
    side = {
        layer.kind: (layer.data, layer.meta)
        for layer in bs.layers
        if layer.kind not in _ENHANCEMENT_KINDS
    }
    return imageio.restore(rgb, bs.mode, side)


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
