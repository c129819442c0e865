"""Rate targets (bpp / quality / psnr) -> the model's rate parameter.

The default model's analysis does not depend on the rate, so every search here only
re-runs quantization: bit estimates (no entropy coding) for ``bpp``, latent
reconstruction + synthesis for ``psnr``. A final real encode checks the result.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import RateTargetError

DEFAULT_QUALITY = 4
#: enhancement layers ``residual=`` can add
RESIDUALS = ("hevc",)
#: a bpp result may exceed its target by at most this fraction
BPP_TOLERANCE = 0.03


@dataclass(frozen=True)
class RateTarget:
    """Exactly one of the three, validated."""

    bpp: float | None = None
    quality: int | None = None
    psnr: float | None = None

    @classmethod
    def from_kwargs(cls, bpp=None, quality=None, psnr=None) -> RateTarget:
        given = [
            k for k, v in (("bpp", bpp), ("quality", quality), ("psnr", psnr)) if v is not None
        ]
        if len(given) > 1:
            raise RateTargetError(f"give at most one rate target, got {', '.join(given)}")
        if not given:
            return cls(quality=DEFAULT_QUALITY)
        if bpp is not None:
            if isinstance(bpp, bool) or not isinstance(bpp, (int, float)) or not (0 < bpp < 48):
                raise RateTargetError(f"bpp must be a number in (0, 48), got {bpp!r}")
            return cls(bpp=float(bpp))
        if quality is not None:
            if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 8:
                raise RateTargetError(f"quality must be an integer 1..8, got {quality!r}")
            return cls(quality=quality)
        if isinstance(psnr, bool) or not isinstance(psnr, (int, float)) or not (0 < psnr < 100):
            raise RateTargetError(f"psnr must be a number of dB in (0, 100), got {psnr!r}")
        return cls(psnr=float(psnr))

    def describe(self) -> str:
        if self.bpp is not None:
            return f"bpp={self.bpp:g}"
        if self.psnr is not None:
            return f"psnr={self.psnr:g}"
        return f"quality={self.quality}"


def check_enhancement(residual: Any, lossless: Any) -> None:
    """Reject unknown residual values and contradictory combinations up front."""
    if residual is not None and residual not in RESIDUALS:
        raise RateTargetError(
            f"residual must be one of {RESIDUALS} or None, got {residual!r} "
            "(for an exact copy use lossless=True)"
        )
    if not isinstance(lossless, bool):
        raise RateTargetError(f"lossless must be True or False, got {lossless!r}")
    if lossless and residual is not None:
        raise RateTargetError(
            "lossless=True already stores the image exactly; drop residual="
            f"{residual!r} (or use residual without lossless for a lossy enhancement layer)"
        )


def smallest_rate_reaching(
    f: Callable[[int], float], target: float, lo: int, hi: int, resolution: int
) -> int | None:
    """Smallest integer rate in [lo, hi] (to ``resolution``) with increasing ``f(rate) >= target``.

    Returns None when even ``hi`` does not reach it.
    """
    if f(lo) >= target:
        return lo
    if f(hi) < target:
        return None
    while hi - lo > resolution:
        mid = (lo + hi) // 2
        if f(mid) >= target:
            hi = mid
        else:
            lo = mid
    return hi


def largest_rate_within(
    size: Callable[[int], float], budget: float, lo: int, hi: int, max_evals: int = 12
) -> tuple[int, bool]:
    """Largest rate whose increasing ``size(rate)`` is <= ``budget``.

    Regula falsi on log size (sizes grow roughly exponentially with the rate) in its
    Illinois form: when the same end of the bracket survives twice, its weight is halved, so
    the bracket closes from both sides instead of creeping in from one. It stops at the first
    size within a third of the tolerance below the budget. Returns (rate, ok); ok is False
    when even ``lo`` is over.
    """
    s_lo, s_hi = size(lo), size(hi)
    if s_hi <= budget:
        return hi, True
    if s_lo > budget:
        return lo, False
    log_b = math.log(budget)
    f_lo = math.log(max(s_lo, 1e-9)) - log_b  # <= 0
    f_hi = math.log(max(s_hi, 1e-9)) - log_b  # > 0
    evals, moved = 2, 0  # moved: which end the last step replaced (-1 lo, +1 hi)
    while hi - lo > 1 and evals < max_evals:
        guess = lo + (hi - lo) * -f_lo / (f_hi - f_lo) if f_hi > f_lo else (lo + hi) / 2
        mid = int(min(max(round(guess), lo + 1), hi - 1))
        s = size(mid)
        evals += 1
        f = math.log(max(s, 1e-9)) - log_b
        if s <= budget:
            lo, f_lo = mid, f
            if s >= budget * (1 - BPP_TOLERANCE / 3):
                break
            if moved == -1:
                f_hi /= 2
            moved = -1
        else:
            hi, f_hi = mid, f
            if moved == 1:
                f_lo /= 2
            moved = 1
    return lo, True
