"""Transposed convolutions run as ordinary convolutions followed by a pixel shuffle.

A stride-``s`` transposed convolution computes each of its ``s*s`` output phases with a small
kernel of its own over the input. Stacking those kernels gives one ordinary convolution with
``s*s`` times the output channels, and ``pixel_shuffle`` interleaves the phases: the same
function up to float rounding. It pays where the output is narrow: ``g_s``'s last layer (128
channels to 3) runs about 2x faster in bf16 this way (58.6 -> 25.2 ms on one core for a Kodak
image, ``tools/bench_synthesis.py``); 128-to-128 layers get slower (the rewrite does 4 * 9 / 25
= 1.44x the multiply-adds of a 5x5 stride-2 kernel), so they stay.
Like oneDNN's transposed convolution, the result does not depend on the thread count.

:func:`with_subpixel_deconvs` gives a view of a module tree with its narrow transposed
convolutions replaced; the view shares the parameters, so it never goes stale
(:mod:`.fast_transforms` combines it with the other rewrites of the fast path).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .module_view import view_with


def convertible(m: nn.Module) -> bool:
    """Whether ``m`` is a 2-D transposed convolution whose output is exactly ``s`` times its
    input (square stride, no dilation or groups), the case the rewrite covers."""
    if type(m) is not nn.ConvTranspose2d:
        return False
    (sy, sx), (ky, kx) = m.stride, m.kernel_size
    (py, px), (oy, ox) = m.padding, m.output_padding
    return (
        sy == sx > 1
        and m.groups == 1
        and m.dilation == (1, 1)
        and ky + oy - 2 * py == sy
        and kx + ox - 2 * px == sx
        and m.padding_mode == "zeros"
    )


def _phase_taps(stride: int, kernel: int, padding: int) -> tuple[int, int]:
    """Input offsets ``d`` (output ``s*i + a`` reads input ``i + d``) any phase uses."""
    lo = min(math.ceil((a + padding - kernel + 1) / stride) for a in range(stride))
    hi = max((a + padding) // stride for a in range(stride))
    return lo, hi


class SubpixelDeconv(nn.Module):
    """``deconv`` (see :func:`convertible`) as convolution + pixel shuffle; its weights are
    rearranged on first use and again only when the deconvolution's parameters change."""

    def __init__(self, deconv: nn.ConvTranspose2d) -> None:
        super().__init__()
        if not convertible(deconv):
            raise ValueError(f"not a convertible transposed convolution: {deconv}")
        self.deconv = deconv
        self.s = deconv.stride[0]
        self.y_taps = _phase_taps(self.s, deconv.kernel_size[0], deconv.padding[0])
        self.x_taps = _phase_taps(self.s, deconv.kernel_size[1], deconv.padding[1])
        self._cache: tuple[tuple, torch.Tensor, torch.Tensor | None] | None = None

    def _weights(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        w, b = self.deconv.weight, self.deconv.bias
        key = (w.data_ptr(), w._version, None if b is None else (b.data_ptr(), b._version))
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1], self._cache[2]
        s, (ky, kx), (py, px) = self.s, self.deconv.kernel_size, self.deconv.padding
        cin, cout = w.shape[:2]
        (ylo, yhi), (xlo, xhi) = self.y_taps, self.x_taps
        out = w.new_zeros(cout, s, s, cin, yhi - ylo + 1, xhi - xlo + 1)
        with torch.no_grad():
            for a in range(s):
                for dy in range(ylo, yhi + 1):
                    k = a + py - s * dy
                    if not 0 <= k < ky:
                        continue
                    for c in range(s):
                        for dx in range(xlo, xhi + 1):
                            j = c + px - s * dx
                            if 0 <= j < kx:
                                out[:, a, c, :, dy - ylo, dx - xlo] = w[:, :, k, j].t()
            weight = out.reshape(cout * s * s, cin, *out.shape[-2:])
            bias = None if b is None else b.detach().repeat_interleave(s * s)
        self._cache = (key, weight, bias)
        return weight, bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self._weights()
        (ylo, yhi), (xlo, xhi) = self.y_taps, self.x_taps
        if -ylo == yhi and -xlo == xhi:
            y = F.conv2d(x, weight, bias, padding=(yhi, xhi))
        else:
            y = F.conv2d(F.pad(x, (-xlo, xhi, -ylo, yhi)), weight, bias)
        return F.pixel_shuffle(y, self.s)


def narrow(m: nn.ConvTranspose2d) -> bool:
    """Output phases stacked are no wider than the input: where the rewrite is faster."""
    return m.out_channels * m.stride[0] * m.stride[1] <= m.in_channels


def with_subpixel_deconvs(module: nn.Module) -> nn.Module:
    """A view of ``module`` whose narrow convertible transposed convolutions run as
    :class:`SubpixelDeconv`; every other submodule (and every parameter) is shared."""
    return view_with(module, lambda m: SubpixelDeconv(m) if convertible(m) and narrow(m) else None)
