"""Image-quality and rate-distortion comparison metrics.

Kept dependency-light (numpy; torch and ``pytorch_msssim`` only inside :func:`ms_ssim`, scipy
only for the pchip BD variant) so that importing it costs nothing for library users.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["MS_SSIM_MIN_SIDE", "bd_psnr", "bd_rate", "ms_ssim", "psnr"]

# pytorch_msssim with its default 11-tap window and 5 scales needs the smaller side to be
# strictly larger than (11 - 1) * 2**4 = 160 pixels.
MS_SSIM_MIN_SIDE = 161

_BD_METHODS = ("pchip", "cubic")


def _as_array(img: Any) -> np.ndarray:
    """PIL image or array -> ndarray with a channel axis (HxWxC), values unchanged."""
    arr = np.asarray(img)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3:
        raise ValueError(f"expected an HxW or HxWxC image, got shape {arr.shape}")
    return arr


def _pair(a: Any, b: Any) -> tuple[np.ndarray, np.ndarray]:
    x, y = _as_array(a), _as_array(b)
    if x.shape != y.shape:
        raise ValueError(f"image shapes differ: {x.shape} vs {y.shape}")
    return x, y


def psnr(a: Any, b: Any, max_val: float = 255) -> float:
    """PSNR in dB over all pixels and channels (one MSE, as RGB PSNR is usually reported).

    Accepts uint8 HxWxC arrays or PIL images; identical inputs give ``inf``.
    """
    x, y = _pair(a, b)
    mse = float(np.mean((x.astype(np.float64) - y.astype(np.float64)) ** 2))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(max_val**2 / mse)


def ms_ssim(a: Any, b: Any, max_val: float = 255) -> float:
    """MS-SSIM (pytorch_msssim, default 5 scales) of two images, in [0, 1].

    Returns ``nan`` for images whose smaller side is below :data:`MS_SSIM_MIN_SIDE`, where
    MS-SSIM is undefined, so that evaluation loops over mixed image sizes do not crash.
    """
    x, y = _pair(a, b)
    if min(x.shape[0], x.shape[1]) < MS_SSIM_MIN_SIDE:
        return float("nan")
    import torch
    from pytorch_msssim import ms_ssim as _ms_ssim

    tx = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).permute(2, 0, 1)[None]
    ty = torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32)).permute(2, 0, 1)[None]
    with torch.no_grad():
        return float(_ms_ssim(tx, ty, data_range=max_val, size_average=True))


def _check_curve(
    name: str, rate: Sequence[float], quality: Sequence[float], method: str
) -> tuple[np.ndarray, np.ndarray]:
    r = np.asarray(rate, dtype=np.float64).ravel()
    q = np.asarray(quality, dtype=np.float64).ravel()
    if r.shape != q.shape:
        raise ValueError(f"curve {name}: {r.size} rates but {q.size} quality values")
    if not (np.all(np.isfinite(r)) and np.all(np.isfinite(q))):
        raise ValueError(f"curve {name}: rates and quality values must be finite")
    if np.any(r <= 0):
        raise ValueError(f"curve {name}: rates must be positive (log rate is used)")
    need = 4 if method == "cubic" else 2
    if r.size < need:
        raise ValueError(
            f"curve {name}: the {method} BD method needs at least {need} points, got {r.size}"
        )
    return np.log(r), q


def _avg_integral(x: np.ndarray, y: np.ndarray, lo: float, hi: float, method: str, name: str):
    """Mean of y(x) over [lo, hi] with the chosen interpolation of the points (x, y)."""
    if method == "cubic":
        poly = np.polyint(np.polyfit(x, y, 3))
        return (np.polyval(poly, hi) - np.polyval(poly, lo)) / (hi - lo)
    from scipy.interpolate import PchipInterpolator

    order = np.argsort(x)
    xs, ys = x[order], y[order]
    if np.any(np.diff(xs) <= 0):
        raise ValueError(f"curve {name}: pchip BD needs distinct abscissa values, got {xs}")
    return float(PchipInterpolator(xs, ys).integrate(lo, hi)) / (hi - lo)


def _overlap(xa: np.ndarray, xb: np.ndarray, what: str) -> tuple[float, float]:
    lo = max(xa.min(), xb.min())
    hi = min(xa.max(), xb.max())
    if not hi > lo:
        raise ValueError(
            f"RD curves do not overlap in {what}: anchor spans [{xa.min():.4g}, {xa.max():.4g}],"
            f" test spans [{xb.min():.4g}, {xb.max():.4g}]"
        )
    return float(lo), float(hi)


def _check_method(method: str) -> None:
    if method not in _BD_METHODS:
        raise ValueError(f"unknown BD method {method!r}; use one of {_BD_METHODS}")


def bd_rate(
    rate_a: Sequence[float],
    psnr_a: Sequence[float],
    rate_b: Sequence[float],
    psnr_b: Sequence[float],
    method: str = "pchip",
) -> float:
    """Bjontegaard delta rate of curve b against anchor a, in percent.

    Negative means b needs fewer bits for the same quality. log(rate) is interpolated as a
    function of quality (PSNR, or any quality score in dB) and averaged over the quality
    interval both curves cover. ``method="pchip"`` (default, current VCEG/JVET practice) uses
    piecewise cubic Hermite interpolation, which cannot overshoot between points;
    ``method="cubic"`` is Bjontegaard's original cubic polynomial fit (needs >= 4 points).
    """
    _check_method(method)
    la, qa = _check_curve("a", rate_a, psnr_a, method)
    lb, qb = _check_curve("b", rate_b, psnr_b, method)
    lo, hi = _overlap(qa, qb, "quality (PSNR)")
    diff = _avg_integral(qb, lb, lo, hi, method, "b") - _avg_integral(qa, la, lo, hi, method, "a")
    return float((math.exp(diff) - 1.0) * 100.0)


def bd_psnr(
    rate_a: Sequence[float],
    psnr_a: Sequence[float],
    rate_b: Sequence[float],
    psnr_b: Sequence[float],
    method: str = "pchip",
) -> float:
    """Bjontegaard delta PSNR of curve b against anchor a, in dB (positive = b is better).

    Quality is interpolated as a function of log(rate) and averaged over the shared rate
    interval; ``method`` as in :func:`bd_rate`.
    """
    _check_method(method)
    la, qa = _check_curve("a", rate_a, psnr_a, method)
    lb, qb = _check_curve("b", rate_b, psnr_b, method)
    lo, hi = _overlap(la, lb, "log rate")
    mean_b = _avg_integral(lb, qb, lo, hi, method, "b")
    return float(mean_b - _avg_integral(la, qa, lo, hi, method, "a"))
