"""GDN and inverse GDN computed in blocks of rows that stay in the CPU's cache.

``GDN`` is ``x / sqrt(beta + gamma @ x**2)`` per pixel (the inverse multiplies): a 1x1
convolution and three elementwise passes, each over the whole activation. The GDNs at the
full-width end of ``g_a`` and ``g_s`` (128 channels at a quarter of the image size) cost more
than the convolutions around them: their passes wait on memory. Done a few rows at a time,
each block is squared, multiplied, square-rooted and scaled while it is still in cache, with
the same operations in the same precision as CompressAI's layer, so the values agree (to a
unit of rounding where the matrix kernel sums in another order). Measured with
``tools/bench_synthesis.py`` and ``tools/bench.py``, BENCHMARKS.md.
"""

from __future__ import annotations

import torch
from compressai.layers import GDN
from torch import nn

#: elements of one block (1 MB in bf16, 2 MB in fp32): near-best on 1 and 2 cores
BLOCK_ELEMENTS = 1 << 19


def convertible(m: nn.Module) -> bool:
    """Whether ``m`` is CompressAI's GDN (either direction; not a subclass such as GDN1)."""
    return type(m) is GDN


class BlockedGDN(nn.Module):
    """``gdn`` (see :func:`convertible`) in row blocks, for inference on channels_last CPU
    input; other input (contiguous layout, another device, a tensor that needs gradients)
    goes to ``gdn`` itself."""

    def __init__(self, gdn: GDN) -> None:
        super().__init__()
        if not convertible(gdn):
            raise ValueError(f"not a GDN: {gdn}")
        self.gdn = gdn

    def _parameters_as(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(gamma transposed [C, C], beta [C]) reparametrized, in ``dtype``."""
        g = self.gdn
        with torch.no_grad():
            gamma = g.gamma_reparam(g.gamma)
            beta = g.beta_reparam(g.beta)
        return gamma.t().to(dtype), beta.to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            x.dim() != 4
            or x.device.type != "cpu"
            or not x.is_contiguous(memory_format=torch.channels_last)
            or (x.requires_grad and torch.is_grad_enabled())
        ):
            return self.gdn(x)
        dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
        if dtype not in (torch.float32, torch.bfloat16):
            return self.gdn(x)
        b, c, h, w = x.shape
        gamma_t, beta = self._parameters_as(dtype)
        pixels = x.to(dtype).permute(0, 2, 3, 1)  # [B, H, W, C], contiguous
        out = torch.empty_like(pixels)
        rows = max(1, BLOCK_ELEMENTS // (w * c))
        for i in range(b):
            for top in range(0, h, rows):
                xs = pixels[i, top : top + rows].reshape(-1, c)
                block = out[i, top : top + rows].view(-1, c)
                torch.addmm(beta, xs.square(), gamma_t, out=block)
                (block.sqrt_() if self.gdn.inverse else block.rsqrt_()).mul_(xs)
        return out.permute(0, 3, 1, 2)  # NCHW, channels_last in memory
