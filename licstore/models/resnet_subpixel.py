"""``resnet-subpixel``: the seed-001 main autoencoder on licstore's variable-rate hyperprior.

Seed 001 ("Enhanced Image Compression Through Advanced Residual Network Architectures")
replaces each 9x9 (here: 5x5) strided convolution of a hyperprior codec by a
ResNet-3x3(4) unit -- four 3x3 convolutions with shortcuts, GDN/IGDN once per unit where
the shape changes, Leaky ReLU elsewhere -- and upsamples in the decoder by sub-pixel
convolution (4x channels, depth to space) instead of transposed convolution. The encoder's
last layer is the "wide bottleneck" ``M`` (192 in the paper's best entry, 128 without).

Everything else is ``mshp-vr``'s: hyperprior, learned per-level quantization steps (one
network for every rate), the fixed-point hyper-synthesis that makes entropy parameters
exact on every machine, and the bitstream layout. ``upsample="tconv"`` is the paper's
transposed-convolution ablation.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from compressai.layers import (
    GDN,
    ResidualBlock,
    ResidualBlockWithStride,
    conv3x3,
    subpel_conv3x3,
)

from .mshp_vr import LAMBDAS, MeanScaleHyperpriorVR
from .registry import register_model

UPSAMPLERS = ("subpixel", "tconv")


class StridedPointwise(nn.Conv2d):
    """1x1 convolution with stride ``s``, computed as subsampling then a 1x1 convolution.

    Same parameters and result as ``nn.Conv2d(cin, cout, 1, stride=s)``; measured with torch
    2.14.1 on this AVX-512 CPU, the backward pass of that layer in channels_last fp32
    intermittently corrupts the heap (glibc: "corrupted size vs. prev_size").
    """

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__(cin, cout, 1)
        self.step = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x[..., :: self.step, :: self.step], self.weight, self.bias)


class StridedResidualBlock(ResidualBlockWithStride):
    """CompressAI's ``ResidualBlockWithStride`` with the shortcut as ``StridedPointwise``."""

    def __init__(self, cin: int, cout: int, stride: int = 2):
        super().__init__(cin, cout, stride=stride)
        self.skip = StridedPointwise(cin, cout, stride)


def _up(cin: int, cout: int, mode: str) -> nn.Module:
    """x2 upsampling by a 3x3 kernel: sub-pixel convolution or transposed convolution."""
    if mode == "subpixel":
        return subpel_conv3x3(cin, cout, 2)
    return nn.ConvTranspose2d(cin, cout, 3, stride=2, padding=1, output_padding=1)


class ResidualUnitUp(nn.Module):
    """Upsampling half of a decoder ResNet-3x3(4) unit: up, LeakyReLU, 3x3, IGDN, + up-shortcut."""

    def __init__(self, cin: int, cout: int, mode: str = "subpixel"):
        super().__init__()
        self.up = _up(cin, cout, mode)
        self.act = nn.LeakyReLU(inplace=True)
        self.conv = conv3x3(cout, cout)
        self.igdn = GDN(cout, inverse=True)
        self.shortcut = _up(cin, cout, mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.igdn(self.conv(self.act(self.up(x)))) + self.shortcut(x)


@register_model("resnet-subpixel")
class ResNetSubpixelVR(MeanScaleHyperpriorVR):
    """Variable-rate mean-scale hyperprior with ResNet-3x3(4) transforms (seed 001)."""

    def __init__(
        self, N: int = 128, M: int = 192, levels: int = len(LAMBDAS), upsample: str = "subpixel"
    ):
        if upsample not in UPSAMPLERS:
            raise ValueError(f"upsample must be one of {UPSAMPLERS}, got {upsample!r}")
        super().__init__(N=N, M=M, levels=levels)
        self.upsample = upsample
        # encoder: per stage, a strided residual block (3x3 s2 + LeakyReLU + 3x3 + GDN, with
        # a 1x1 s2 shortcut) then a plain residual block (two 3x3 + LeakyReLU): four 3x3
        # kernels, the receptive field of one 9x9; the fourth stage ends in the bottleneck M
        self.g_a = nn.Sequential(
            StridedResidualBlock(3, N),
            ResidualBlock(N, N),
            StridedResidualBlock(N, N),
            ResidualBlock(N, N),
            StridedResidualBlock(N, N),
            ResidualBlock(N, N),
            conv3x3(N, M, stride=2),
        )
        self.g_s = nn.Sequential(
            ResidualBlock(M, N),
            ResidualUnitUp(N, N, upsample),
            ResidualBlock(N, N),
            ResidualUnitUp(N, N, upsample),
            ResidualBlock(N, N),
            ResidualUnitUp(N, N, upsample),
            ResidualBlock(N, N),
            _up(N, 3, upsample),
        )
