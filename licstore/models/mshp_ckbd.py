"""``mshp-ckbd``: ``mshp-vr`` with a checkerboard context model, kept exact.

He et al. 2021 ("Checkerboard Context Model for Efficient Learned Image Compression"):
the latent ``y`` is split into *anchors* (``(i + j)`` even) and *non-anchors*. Anchors are
coded with the hyperprior alone; each non-anchor's entropy parameters also see its four
(and further odd-offset) anchor neighbours through a masked 5x5 convolution of the decoded
anchors. Two decoding passes instead of the serial raster scan of an autoregressive
context, so decoding stays parallel.

Bitstreams only decode if encoder and decoder derive identical parameters, so the context
convolution and the entropy-parameter network run in the same fixed point as ``h_s``
(``licstore.entropy``): the decoded anchors are exact float32 values, their fixed-point
copy is exact, and every layer is an integer convolution with ReLU. Anchor parameters do
not depend on the rate (the context of an anchor is zero), non-anchor parameters do (the
decoded anchors move with the quantization step).

The entropy-parameter network predicts a *correction* of the hyperprior's (scales, means),
zero at initialisation, so a model warm-started from ``mshp-vr`` begins exactly where
``mshp-vr`` is and training can only add what the context knows.

Payload: ``varint(len z) | z | varint(len anchors) | anchor string | non-anchor string``.
Everything else (transforms, learned per-level steps, ``z``) is ``mshp-vr``'s, so
``tools/train.py --init-from`` a ``mshp-vr`` weights file starts all but the two new
networks trained.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from compressai.ops import quantize_ste

from ..entropy import FixedPointHyperSynthesis, split_parameters, to_fixed
from ..errors import CorruptBitstreamError
from .mshp_vr import LAMBDAS, AnalyzedBatch, MeanScaleHyperpriorVR, _read_varint, _varint
from .registry import register_model


def anchor_mask(h: int, w: int) -> torch.Tensor:
    """Boolean [h, w]: True at anchors, ``(i + j)`` even."""
    i = torch.arange(h)[:, None]
    j = torch.arange(w)[None, :]
    return (i + j) % 2 == 0


class CheckerboardConv(nn.Conv2d):
    """'Same' convolution that reads only taps at odd offsets (a non-anchor's anchors)."""

    def __init__(self, cin: int, cout: int, k: int = 5):
        super().__init__(cin, cout, k, padding=k // 2)
        mask = ~anchor_mask(k, k)  # centre (k//2, k//2) is an anchor offset: excluded
        self.register_buffer("mask", mask.to(self.weight.dtype)[None, None], persistent=False)

    @property
    def masked_weight(self) -> torch.Tensor:
        return self.weight * self.mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(
            x, self.masked_weight.to(x.dtype), self.bias.to(x.dtype), padding=self.padding
        )


@register_model("mshp-ckbd")
class CheckerboardHyperpriorVR(MeanScaleHyperpriorVR):
    """Variable-rate mean-scale hyperprior with an exact checkerboard context model."""

    def __init__(self, N: int = 128, M: int = 192, levels: int = len(LAMBDAS)):
        super().__init__(N=N, M=M, levels=levels)
        self.context = CheckerboardConv(M, M)
        self.entropy_parameters = nn.Sequential(
            nn.Conv2d(3 * M, 2 * M, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(2 * M, 2 * M, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(2 * M, 2 * M, 1),
        )
        # the network predicts a correction of the hyperprior's (scales, means), zero at
        # init: warm-started from mshp-vr weights, the model starts as mshp-vr
        nn.init.zeros_(self.entropy_parameters[-1].weight)
        nn.init.zeros_(self.entropy_parameters[-1].bias)

    def context_modules(self) -> tuple[nn.Module, ...]:
        return (self.context, self.entropy_parameters)

    def context_transform(self, y_hat: torch.Tensor, hyper: torch.Tensor) -> torch.Tensor:
        """Both passes' entropy parameters from ``h_s`` output and ``y_hat`` (for MAC counts)."""
        anchors = self._params_from(hyper, torch.zeros_like(hyper[:, : self.M]))
        return torch.cat([*anchors, *self._params_from(hyper, self.context(y_hat))], 1)

    # -- training forward -----------------------------------------------------
    def _params_from(self, hyper: torch.Tensor, ctx: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(scales, means): the hyperprior's plus the entropy-parameter network's correction."""
        delta = self.entropy_parameters(torch.cat([hyper, ctx], 1))
        return (hyper.float() + delta.float()).chunk(2, 1)

    def forward(self, x: torch.Tensor, r: torch.Tensor) -> dict:
        """Two passes as at inference: anchors from the hyperprior, then their context."""
        y = self.g_a(x)
        z = self.h_a(y)
        dev = x.device.type
        with torch.autocast(device_type=dev, enabled=False):
            y, z = y.float(), z.float()
            z_tilde, z_likelihoods = self.entropy_bottleneck(z)
            medians = self.entropy_bottleneck._get_medians()
            z_hat = quantize_ste(z - medians) + medians
            step = self.steps(r)
        hyper = self.h_s(z_hat)
        anchors = anchor_mask(*y.shape[-2:]).to(y.device)
        scales_a, means_a = self._params_from(hyper, torch.zeros_like(hyper[:, : self.M]))
        with torch.autocast(device_type=dev, enabled=False):
            y_hat_a = (quantize_ste((y - means_a) / step) * step + means_a) * anchors
        scales_n, means_n = self._params_from(hyper, self.context(y_hat_a))
        with torch.autocast(device_type=dev, enabled=False):
            scales = torch.where(anchors, scales_a, scales_n)
            means = torch.where(anchors, means_a, means_n)
            y_hat, y_likelihoods = self._quantize_y(y, scales, means, step)
        x_hat = self.g_s(y_hat)
        return {"x_hat": x_hat, "likelihoods": {"y": y_likelihoods, "z": z_likelihoods}}

    # -- exact inference --------------------------------------------------------
    def freeze(self) -> None:
        super().freeze()
        self.exact_context = FixedPointHyperSynthesis.from_float(nn.Sequential(self.context))
        self.exact_parameters = FixedPointHyperSynthesis.from_float(self.entropy_parameters)

    def exact_state_dict(self) -> dict[str, torch.Tensor]:
        out = super().exact_state_dict()
        out.update(self.exact_context.state_dict("exact.context."))
        out.update(self.exact_parameters.state_dict("exact.entropy_parameters."))
        return out

    def load_exact_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        super().load_exact_state_dict(state)
        self.exact_context = FixedPointHyperSynthesis.from_state_dict(state, "exact.context.")
        self.exact_parameters = FixedPointHyperSynthesis.from_state_dict(
            state, "exact.entropy_parameters."
        )

    # Parameters, symbols and indexes of one pass are held *at its positions only*, as
    # [B, C, n, 1] in row-major order (``at``): each pass computes half the latent grid,
    # and the context convolution only its 12 non-zero taps (FixedPointConv skips zero
    # taps). The integers are those of the full-grid computation.
    def _anchor_parameters(self, hyper: torch.Tensor, anchors: torch.Tensor):
        """Exact (scales, means) of the anchors: the hyperprior and a zero context."""
        zeros = torch.zeros_like(hyper[:, : self.M])
        delta = self.exact_parameters.fixed(torch.cat([hyper, zeros], 1), anchors)
        return split_parameters(at(hyper, anchors) + delta)  # integer sum: exact

    def _non_anchor_parameters(self, hyper: torch.Tensor, y_hat_a: torch.Tensor, anchors):
        """Exact (scales, means) of the non-anchors, given the decoded anchors ``y_hat_a``."""
        grid = torch.zeros(hyper.shape[0], self.M, *anchors.shape)
        grid[..., anchors] = y_hat_a[..., 0]
        non = ~anchors
        ctx = self.exact_context.fixed(to_fixed(grid), non)
        delta = self.exact_parameters.fixed(torch.cat([at(hyper, non), ctx], 1))
        return split_parameters(at(hyper, non) + delta)

    @torch.no_grad()
    def analyze(self, x: torch.Tensor, bf16: bool = False) -> CheckerboardBatch:
        a = super().analyze(x, bf16)
        # ``super().analyze`` ran h_s to (scales, means); the context path needs the
        # fixed-point tensor itself, which is the same numbers times 2**F
        hyper = to_fixed_parameters(a.scales, a.means)
        scales_a, means_a = self._anchor_parameters(hyper, anchor_mask(*hyper.shape[-2:]))
        return CheckerboardBatch(a.y, a.z_strings, scales_a, means_a, hyper)

    def _passes(self, a: CheckerboardBatch, i: int, rate: int):
        """Symbols and table indexes of both passes, and the ``y_hat`` they decode to."""
        steps = self._steps(rate)
        y = a.y[i : i + 1]
        anchors = anchor_mask(*y.shape[-2:])
        means_a = a.means[i : i + 1]
        sym_a = self.y_coder.symbols(at(y, anchors), means_a, steps)
        y_hat_a = self.y_coder.dequantize(sym_a, means_a, steps)
        scales_n, means_n = self._non_anchor_parameters(a.hyper[i : i + 1], y_hat_a, anchors)
        sym_n = self.y_coder.symbols(at(y, ~anchors), means_n, steps)
        y_hat = torch.empty_like(y)
        y_hat[..., anchors] = y_hat_a[..., 0]
        y_hat[..., ~anchors] = self.y_coder.dequantize(sym_n, means_n, steps)[..., 0]
        return (
            (sym_a, self.y_coder.indexes(a.scales[i : i + 1], steps)),
            (sym_n, self.y_coder.indexes(scales_n, steps)),
            y_hat,
        )

    def reconstruct_latents(self, a: CheckerboardBatch, i: int, rate: int) -> torch.Tensor:
        return self._passes(a, i, rate)[2]

    def estimate_bytes(self, a: CheckerboardBatch, i: int, rate: int) -> float:
        (sa, ia), (sn, in_), _ = self._passes(a, i, rate)
        bits = self.y_coder.estimate_bits(sa, ia) + self.y_coder.estimate_bits(sn, in_)
        return bits / 8 + len(a.z_strings[i]) + 8

    def encode_latents(self, a: CheckerboardBatch, i: int, rate: int) -> bytes:
        (sa, ia), (sn, in_), _ = self._passes(a, i, rate)
        z = a.z_strings[i]
        anchors = self.y_coder.encode(sa, ia)
        return _varint(len(z)) + z + _varint(len(anchors)) + anchors + self.y_coder.encode(sn, in_)

    @torch.no_grad()
    def decode_latents(self, payload: bytes, height: int, width: int, rate: int) -> torch.Tensor:
        (hy, wy), (hz, wz) = self.latent_shapes(height, width)
        n, pos = _read_varint(payload)
        if pos + n > len(payload):
            raise CorruptBitstreamError("base layer: z string length past the end")
        z_sym = self.z_coder.decode(payload[pos : pos + n], (1, self.N, hz, wz))
        pos += n
        n, pos = _read_varint(payload, pos)
        if pos + n > len(payload):
            raise CorruptBitstreamError("base layer: anchor string length past the end")
        scales_h, means_h = self.exact_h_s(self.z_coder.dequantize(z_sym))
        hyper = to_fixed_parameters(scales_h, means_h)
        steps = self._steps(rate)
        anchors = anchor_mask(hy, wy)
        scales_a, means_a = self._anchor_parameters(hyper, anchors)
        sym_a = self.y_coder.decode(payload[pos : pos + n], self.y_coder.indexes(scales_a, steps))
        y_hat_a = self.y_coder.dequantize(sym_a, means_a, steps)
        scales_n, means_n = self._non_anchor_parameters(hyper, y_hat_a, anchors)
        sym_n = self.y_coder.decode(payload[pos + n :], self.y_coder.indexes(scales_n, steps))
        y_hat = torch.empty(1, self.M, hy, wy)
        y_hat[..., anchors] = y_hat_a[..., 0]
        y_hat[..., ~anchors] = self.y_coder.dequantize(sym_n, means_n, steps)[..., 0]
        return y_hat


def at(t: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """The values of [B, C, h, w] at ``positions`` (bool [h, w]), as [B, C, n, 1]."""
    return t[..., positions][..., None]


def to_fixed_parameters(scales: np.ndarray, means: np.ndarray) -> torch.Tensor:
    """(scales, means) of ``h_s`` back to its fixed-point output (exact: times 2**F)."""
    return to_fixed(torch.from_numpy(np.concatenate([scales, means], 1)))


@dataclass
class CheckerboardBatch(AnalyzedBatch):
    """``scales``/``means``: the anchors' only, [B, M, n, 1] (rate-independent); ``hyper``:
    ``h_s``'s output on the whole grid."""

    hyper: torch.Tensor  # fixed point, float64 [B, 2M, h, w]
