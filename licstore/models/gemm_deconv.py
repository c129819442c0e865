"""A transposed convolution with few output channels, as one GEMM and shifted adds.

A synthesis transform ends in a stride-2 transposed convolution to 3 channels. oneDNN runs
that layer far below its speed on the wide layers (3 output channels leave its kernels
mostly idle): on a 2-core AVX-512 CPU in bf16 it took longer than the 128-channel layer
before it. Written as a GEMM, every input pixel times all ``k * k * cout`` taps at once,
it is a tall, well-shaped product; the taps then land on the output by ``s * s`` phase
images, each a sum of shifted slices. Same function, different rounding (inference only,
bf16 fast path; the exact path of the latents is not involved).
"""

from __future__ import annotations

import torch
import torch.nn as nn


class GemmDeconv:
    """Inference copy of a ``ConvTranspose2d`` whose output is ``stride`` x its input."""

    def __init__(self, conv: nn.ConvTranspose2d, dtype: torch.dtype = torch.bfloat16):
        (k, kw), (s, sw) = conv.kernel_size, conv.stride
        (p, pw), (op, opw) = conv.padding, conv.output_padding
        if not (k == kw and s == sw and p == pw and op == opw):
            raise ValueError("GemmDeconv needs square kernels, strides and paddings")
        if conv.groups != 1 or conv.dilation != (1, 1) or k + op - 2 * p != s:
            raise ValueError("GemmDeconv needs groups=1, no dilation and output = stride x input")
        self.k, self.s, self.cout = k, s, conv.out_channels
        w = conv.weight.detach()  # [cin, cout, k, k]
        self.weight = w.permute(2, 3, 1, 0).reshape(k * k * self.cout, -1).to(dtype)
        bias = conv.bias.detach() if conv.bias is not None else w.new_zeros(self.cout)
        self.bias = bias.float()
        # output phase a (row o = s*m + a) gets tap t from input row m + d, d = (a + p - t) / s
        self.phase_taps = [
            [(t, (a + p - t) // s) for t in range(k) if (a + p - t) % s == 0] for a in range(s)
        ]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """[B, cin, H, W] -> float32 [B, cout, s*H, s*W]."""
        b, cin, h, w = x.shape
        k, s, cout = self.k, self.s, self.cout
        rows = x.permute(0, 2, 3, 1).reshape(b * h * w, cin).to(self.weight.dtype)
        taps = (self.weight @ rows.t()).view(k, k, cout, b, h, w).transpose(2, 3)
        out = x.new_empty((b, cout, h, s, w, s), dtype=torch.float32)
        for a, row_taps in enumerate(self.phase_taps):
            for c, col_taps in enumerate(self.phase_taps):
                acc = self.bias.view(1, cout, 1, 1).expand(b, cout, h, w).clone()
                for ti, di in row_taps:
                    m0, m1 = max(0, -di), min(h, h - di)
                    for tj, dj in col_taps:
                        n0, n1 = max(0, -dj), min(w, w - dj)
                        acc[..., m0:m1, n0:n1] += taps[
                            ti, tj, ..., m0 + di : m1 + di, n0 + dj : n1 + dj
                        ]
                out[:, :, :, a, :, c] = acc
        return out.view(b, cout, s * h, s * w)
