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

import numpy as np

from .errors import EffortError, RateTargetError

DEFAULT_QUALITY = 4
#: enhancement layers ``residual=`` can add
RESIDUALS = ("hevc",)
#: a bpp result may exceed its target by at most this fraction
BPP_TOLERANCE = 0.03
#: ``effort=`` runs from 0 (the analysis transform's latents) to this (``licstore.refine``)
MAX_EFFORT = 2


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


def check_effort(effort: Any) -> int:
    """``effort`` as an int, or ``EffortError`` unless it is an integer 0..MAX_EFFORT."""
    if isinstance(effort, bool) or not isinstance(effort, (int, np.integer)):
        raise EffortError(f"effort must be an integer 0..{MAX_EFFORT}, got {effort!r}")
    if not 0 <= effort <= MAX_EFFORT:
        raise EffortError(f"effort must be an integer 0..{MAX_EFFORT}, got {effort}")
    return int(effort)


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
    size: Callable[[int], float],
    budget: float,
    lo: int,
    hi: int,
    max_evals: int = 12,
    slack: float = 0.0,
) -> tuple[int, bool]:
    """Largest rate whose increasing ``size(rate)`` is <= ``budget`` (to a tolerance).

    Sizes grow roughly exponentially with the rate, so the search works on log size. It
    starts in the middle and a sixteenth of the range beyond, then steps by secant until
    two rates bracket the budget (the extremes of the range are far from most budgets and
    make a poor first bracket), and closes the bracket by regula falsi in its Illinois form:
    when the same end survives twice, its weight is halved, so the bracket closes from both
    sides instead of creeping in from one. It stops at the first size within a third of
    ``BPP_TOLERANCE`` below the budget, or up to ``slack`` (a fraction) above it. Returns
    (rate, ok); ok is False when even ``lo`` is over.
    """
    log_b = math.log(budget)
    evals = 0

    def f(rate: int) -> float:
        nonlocal evals
        evals += 1
        return math.log(max(size(rate), 1e-9)) - log_b

    def good(v: float) -> bool:
        return math.log1p(-BPP_TOLERANCE / 3) <= v <= math.log1p(slack)

    # two starting points, then secant steps outward until the budget is bracketed
    r0 = (lo + hi) // 2
    f0 = f(r0)
    if good(f0):
        return r0, True
    step = max((hi - lo) // 16, 1)
    r1 = min(r0 + step, hi) if f0 <= 0 else max(r0 - step, lo)
    f1 = f(r1)
    while (f0 <= 0) == (f1 <= 0):  # same side of the budget
        if good(f1):
            return r1, True
        if f1 <= 0 and r1 == hi:
            return hi, True
        if f1 > 0 and r1 == lo:
            return lo, False
        slope = (f1 - f0) / (r1 - r0) if f1 != f0 else 0.0
        guess = r1 - 1.25 * f1 / slope if slope > 0 else r1 + (r1 - r0) * 2  # overshoot a bit
        r2 = int(min(max(round(guess), lo), hi))
        if r2 == r1:
            r2 = min(r1 + 1, hi) if f1 <= 0 else max(r1 - 1, lo)
        r0, f0, r1, f1 = r1, f1, r2, f(r2)
    if good(f1):
        return r1, True
    (lo, f_lo), (hi, f_hi) = sorted([(r0, f0), (r1, f1)])  # f_lo <= 0 < f_hi
    moved = 0  # which end the last step replaced (-1 lo, +1 hi)
    while hi - lo > 1 and evals < max_evals:
        guess = lo + (hi - lo) * -f_lo / (f_hi - f_lo) if f_hi > f_lo else (lo + hi) / 2
        mid = int(min(max(round(guess), lo + 1), hi - 1))
        v = f(mid)
        if good(v):
            return mid, True
        if v <= 0:
            lo, f_lo = mid, v
            if moved == -1:
                f_hi /= 2
            moved = -1
        else:
            hi, f_hi = mid, v
            if moved == 1:
                f_lo /= 2
            moved = 1
    return lo, True
