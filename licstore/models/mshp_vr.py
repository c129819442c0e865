"""Variable-rate mean-scale hyperprior: one network for every bit rate.

The rate knob is a continuous parameter ``r`` in ``[0, levels - 1]``. It selects a
per-channel quantization step for the latent ``y`` by linear interpolation between
learned per-level step vectors (the gain-unit idea, with an exactly computable
inverse). The analysis transform, the hyper-analysis and the hyperprior ``z`` do not
depend on ``r``, so rate control only re-runs quantization and entropy coding.

The hyper-synthesis ``h_s`` uses ReLU and sub-pixel upsampling only, so that it can
be evaluated exactly in integer arithmetic at inference (see ``licstore.entropy``).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from compressai.entropy_models import EntropyBottleneck, GaussianConditional
from compressai.layers import GDN
from compressai.ops import quantize_ste

from ..entropy import FactorizedCoder, FixedPointHyperSynthesis, GaussianCoder, interpolate_steps
from ..errors import CorruptBitstreamError
from ..light_compressai import scale_table
from .fast_transforms import fast_analysis, fast_synthesis
from .registry import register_model

#: lambdas of CompressAI's eight zoo qualities; level i of the model is trained at LAMBDAS[i]
LAMBDAS = (0.0018, 0.0035, 0.0067, 0.0130, 0.025, 0.0483, 0.0932, 0.18)


def _conv(cin: int, cout: int, k: int = 5, stride: int = 2) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2)


def _deconv(cin: int, cout: int, k: int = 5, stride: int = 2) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(
        cin, cout, k, stride=stride, output_padding=stride - 1, padding=k // 2
    )


class SubpelUp(nn.Module):
    """3x3 convolution to ``cout * 4`` channels followed by depth-to-space (x2)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout * 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(self.conv(x), 2)


@register_model("mshp-vr")
class MeanScaleHyperpriorVR(nn.Module):
    """Mean-scale hyperprior (Minnen et al. 2018 without context) with a continuous rate."""

    downsampling = 64  # input sizes are padded to a multiple of this

    def __init__(self, N: int = 128, M: int = 192, levels: int = len(LAMBDAS)):
        super().__init__()
        self.N, self.M, self.levels = N, M, levels
        self.g_a = nn.Sequential(
            _conv(3, N), GDN(N), _conv(N, N), GDN(N), _conv(N, N), GDN(N), _conv(N, M)
        )
        self.g_s = nn.Sequential(
            _deconv(M, N),
            GDN(N, inverse=True),
            _deconv(N, N),
            GDN(N, inverse=True),
            _deconv(N, N),
            GDN(N, inverse=True),
            _deconv(N, 3),
        )
        self.h_a = nn.Sequential(
            _conv(M, N, 3, 1),
            nn.LeakyReLU(inplace=True),
            _conv(N, N),
            nn.LeakyReLU(inplace=True),
            _conv(N, N),
        )
        self.h_s = nn.Sequential(
            SubpelUp(N, M),
            nn.ReLU(inplace=True),
            SubpelUp(M, M * 3 // 2),
            nn.ReLU(inplace=True),
            nn.Conv2d(M * 3 // 2, M * 2, 3, padding=1),
        )
        self.entropy_bottleneck = EntropyBottleneck(N)
        self.gaussian_conditional = GaussianConditional(None)
        # log of the per-level, per-channel quantization step; level 0 = lowest rate
        init = torch.linspace(math.log(2.0), math.log(0.3), levels)
        self.log_step = nn.Parameter(init[:, None].repeat(1, M).contiguous())

    # -- rate parameter -------------------------------------------------------
    def steps(self, r: torch.Tensor) -> torch.Tensor:
        """Per-sample, per-channel step for rate parameters ``r`` (shape [B]) -> [B, M, 1, 1]."""
        r = r.clamp(0, self.levels - 1)
        i = r.floor().clamp(max=self.levels - 2).long()
        t = (r - i.to(r.dtype))[:, None]
        table = self.log_step.exp()
        step = table[i] * (1 - t) + table[i + 1] * t
        return step[:, :, None, None]

    @staticmethod
    def lambdas(r: torch.Tensor) -> torch.Tensor:
        """Lagrange multiplier for rate parameter ``r``: geometric interpolation of LAMBDAS."""
        lam = torch.tensor(LAMBDAS, dtype=torch.float32, device=r.device).log()
        r = r.clamp(0, len(LAMBDAS) - 1)
        i = r.floor().clamp(max=len(LAMBDAS) - 2).long()
        t = r - i.to(r.dtype)
        return (lam[i] * (1 - t) + lam[i + 1] * t).exp()

    # -- training forward -----------------------------------------------------
    def forward(self, x: torch.Tensor, r: torch.Tensor) -> dict:
        """Differentiable forward with additive-noise rate proxy and STE reconstruction."""
        y = self.g_a(x)
        z = self.h_a(y)
        with torch.autocast(device_type=x.device.type, enabled=False):
            y, z = y.float(), z.float()
            z_tilde, z_likelihoods = self.entropy_bottleneck(z)
            medians = self.entropy_bottleneck._get_medians()
            z_hat = quantize_ste(z - medians) + medians
        params = self.h_s(z_hat)
        with torch.autocast(device_type=x.device.type, enabled=False):
            scales, means = params.float().chunk(2, 1)
            y_hat, y_likelihoods = self._quantize_y(y, scales, means, self.steps(r))
        x_hat = self.g_s(y_hat)
        return {"x_hat": x_hat, "likelihoods": {"y": y_likelihoods, "z": z_likelihoods}}

    def _quantize_y(self, y, scales, means, step) -> tuple[torch.Tensor, torch.Tensor]:
        """Training-time ``(y_hat, likelihoods)`` of ``y`` on the step grid around ``means``.

        Rate proxy: likelihood of ``u`` + uniform noise (training) or of ``round(u)`` (eval);
        ``GaussianConditional.forward`` would round its input and cut the rate gradient.
        """
        u = (y - means) / step
        u_q = u + torch.empty_like(u).uniform_(-0.5, 0.5) if self.training else torch.round(u)
        gc = self.gaussian_conditional
        y_likelihoods = gc.likelihood_lower_bound(gc._likelihood(u_q, scales / step))
        return quantize_ste(u) * step + means, y_likelihoods

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Also accepts the entropy models' CDF tables, whatever their current sizes."""
        for key, value in state_dict.items():
            prefix, _, buf = key.rpartition(".")
            if buf in {"_quantized_cdf", "_offset", "_cdf_length", "scale_table"}:
                getattr(self, prefix).register_buffer(buf, torch.empty_like(value))
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def aux_loss(self) -> torch.Tensor:
        return self.entropy_bottleneck.loss()

    def update_entropy_tables(self) -> None:
        """(Re)build the CDF tables of both entropy models from the current parameters."""
        self.gaussian_conditional.update_scale_table(scale_table(), force=True)
        self.entropy_bottleneck.update(force=True)

    # -- inference (exact entropy path) ---------------------------------------
    #: the stored uint16 rate is ``RATE_ONE * (r + RATE_OFFSET)``: r in [-8, levels - 1]
    RATE_ONE = 4096
    RATE_OFFSET = 8

    def rate_range(self) -> tuple[int, int]:
        """Stored rates: below level 0 (r < 0) the step is extrapolated (lower bit rates)."""
        return 0, (self.levels - 1 + self.RATE_OFFSET) * self.RATE_ONE

    def quality_to_rate(self, quality: int) -> int:
        """Quality 1..8 (CompressAI zoo levels) -> rate parameter of the matching lambda."""
        return (quality - 1 + self.RATE_OFFSET) * self.RATE_ONE

    def _steps(self, rate: int) -> np.ndarray:
        return interpolate_steps(self.step_table, rate / self.RATE_ONE - self.RATE_OFFSET)

    def freeze(self) -> None:
        """Build the exact inference tables from the float parameters (after training)."""
        self.__dict__.pop("_g_s64", None)  # a float64 copy of g_s made from older parameters
        self.update_entropy_tables()
        self.exact_h_s = FixedPointHyperSynthesis.from_float(self.h_s)
        self.step_table = self.log_step.detach().float().exp().double().numpy()
        self._make_coders()

    def exact_state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors the decoder needs bit-exactly (stored unrounded in the weights file)."""
        out = self.exact_h_s.state_dict()
        out["exact.step_table"] = torch.from_numpy(self.step_table).float()
        return out

    def load_exact_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.exact_h_s = FixedPointHyperSynthesis.from_state_dict(state)
        self.step_table = state["exact.step_table"].double().numpy()
        if self.step_table.shape != (self.levels, self.M) or not np.all(self.step_table > 0):
            raise ValueError("bad step table in weights")
        self._make_coders()

    def _make_coders(self) -> None:
        self.z_coder = FactorizedCoder(self.entropy_bottleneck)
        self.y_coder = GaussianCoder(self.gaussian_conditional)

    def latent_shapes(self, height: int, width: int) -> tuple[tuple[int, int], tuple[int, int]]:
        hp, wp = -(-height // 64) * 64, -(-width // 64) * 64
        return (hp // 16, wp // 16), (hp // 64, wp // 64)

    @torch.no_grad()
    def analyze(self, x: torch.Tensor, bf16: bool = False) -> AnalyzedBatch:
        """Rate-independent part of encoding: transforms, ``z`` coding, exact entropy params.

        ``x``: [B, 3, H, W] float in [0, 1], H and W multiples of 64. ``bf16``: ``g_a`` under
        bf16 autocast (the fast path; ``h_a`` and everything after it stay fp32).
        """
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            y = self.analysis_module()(x.contiguous(memory_format=torch.channels_last))
        y = y.float()
        z = self.h_a(y)
        z_sym = self.z_coder.symbols(z)
        z_hat = self.z_coder.dequantize(z_sym)
        scales, means = self.exact_h_s(z_hat)
        z_strings = [self.z_coder.encode(z_sym[i : i + 1]) for i in range(len(z_sym))]
        return AnalyzedBatch(y.cpu(), z_strings, scales, means)

    def _y_symbols(self, a: AnalyzedBatch, i: int, rate: int):
        steps = self._steps(rate)
        sym = self.y_coder.symbols(a.y[i : i + 1], a.means[i : i + 1], steps)
        idx = self.y_coder.indexes(a.scales[i : i + 1], steps)
        return sym, idx

    def reconstruct_latents(self, a: AnalyzedBatch, i: int, rate: int) -> torch.Tensor:
        """The ``y_hat`` a decoder will get at ``rate``, without entropy coding."""
        steps = self._steps(rate)
        sym, _ = self._y_symbols(a, i, rate)
        return self.y_coder.dequantize(sym, a.means[i : i + 1], steps)

    def estimate_bytes(self, a: AnalyzedBatch, i: int, rate: int) -> float:
        """Estimated base-layer size of image ``i`` at ``rate`` (no entropy coding)."""
        sym, idx = self._y_symbols(a, i, rate)
        return self.y_coder.estimate_bits(sym, idx) / 8 + len(a.z_strings[i]) + 4

    def encode_latents(self, a: AnalyzedBatch, i: int, rate: int) -> bytes:
        """Base-layer payload of image ``i``: varint(len(z)) | z string | y string."""
        sym, idx = self._y_symbols(a, i, rate)
        z = a.z_strings[i]
        return _varint(len(z)) + z + self.y_coder.encode(sym, idx)

    @torch.no_grad()
    def decode_latents(self, payload: bytes, height: int, width: int, rate: int) -> torch.Tensor:
        """Base-layer payload -> exact ``y_hat`` [1, M, h, w] (float32)."""
        (hy, wy), (hz, wz) = self.latent_shapes(height, width)
        n, pos = _read_varint(payload)
        if pos + n > len(payload):
            raise CorruptBitstreamError("base layer: z string length past the end")
        z_sym = self.z_coder.decode(payload[pos : pos + n], (1, self.N, hz, wz))
        z_hat = self.z_coder.dequantize(z_sym)
        scales, means = self.exact_h_s(z_hat)
        steps = self._steps(rate)
        idx = self.y_coder.indexes(scales, steps)
        y_sym = self.y_coder.decode(payload[pos + n :], idx)
        return self.y_coder.dequantize(y_sym, means, steps)

    @torch.no_grad()
    def synthesize(
        self, y_hat: torch.Tensor, bf16: bool = False, float64: bool = False
    ) -> torch.Tensor:
        """Latents -> images in [0, 1]; bf16 autocast is the fast path (AMX).

        ``float64=True`` runs a float64 copy of ``g_s`` and returns float64: its output
        differs between machines and thread counts by ~1e-13, which the lossless residual
        layer's robust rounding tolerates (fp32 and bf16 differ by up to ~1e-3).
        """
        if float64:
            return self._g_s_float64()(y_hat.double()).clamp_(0, 1)
        y_hat = y_hat.contiguous(memory_format=torch.channels_last)
        g_s = self.synthesis_module(bf16)
        with torch.autocast(y_hat.device.type, dtype=torch.bfloat16, enabled=bf16):
            x = g_s(y_hat)
        return x.float().clamp_(0, 1)

    def analysis_module(self) -> nn.Module:
        """The form of ``g_a`` that :meth:`analyze` runs: :func:`.fast_transforms.fast_analysis`
        (GDNs in cache-sized blocks; shares the parameters, so it is made once)."""
        view = self.__dict__.get("_g_a_view")
        if view is None:
            view = self.__dict__["_g_a_view"] = fast_analysis(self.g_a)
        return view

    def synthesis_module(self, bf16: bool = False) -> nn.Module:
        """The form of ``g_s`` that :meth:`synthesize` runs (public for ``tools/bench_synthesis.py``).

        For bf16, the fast form of ``g_s`` (:mod:`.fast_transforms`: narrow transposed
        convolutions as convolution + pixel shuffle, inverse GDNs in cache-sized blocks); it
        shares the parameters, so it is made once.
        """
        if not bf16:
            return self.g_s
        view = self.__dict__.get("_g_s_view")
        if view is None:
            view = self.__dict__["_g_s_view"] = fast_synthesis(self.g_s)
        return view

    def _g_s_float64(self) -> nn.Module:
        """A float64 copy of ``g_s``, made once (kept out of the state dict and ``modules()``)."""
        twin = self.__dict__.get("_g_s64")
        if twin is None:
            twin = copy.deepcopy(self.g_s).double().eval().requires_grad_(False)
            self.__dict__["_g_s64"] = twin
        return twin


def float_h_s_from_exact(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Float ``h_s`` parameters recovered from the fixed-point copy (for ``--init-from``).

    Shipped weights store ``h_s`` only in fixed point (2**-12 resolution, finer than fp16).
    """
    names = ("h_s.0.conv", "h_s.2.conv", "h_s.4")
    out = {}
    for i, name in enumerate(names):
        if f"exact.h_s.{i}.weight" in state:
            out[f"{name}.weight"] = state[f"exact.h_s.{i}.weight"].double().div(4096).float()
            out[f"{name}.bias"] = state[f"exact.h_s.{i}.bias"].double().div(4096).float()
    return out


@dataclass
class AnalyzedBatch:
    """Everything about a batch that does not depend on the rate parameter."""

    y: torch.Tensor  # [B, M, h, w] float32
    z_strings: list[bytes]
    scales: np.ndarray  # exact, float64 [B, M, h, w]
    means: np.ndarray


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _read_varint(data: bytes, pos: int = 0) -> tuple[int, int]:
    n = shift = 0
    while True:
        if pos >= len(data) or shift > 28:
            raise CorruptBitstreamError("base layer: bad length field")
        b = data[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return n, pos
