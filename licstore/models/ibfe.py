"""``ibfe`` / ``ibfe-full``: seed 000's plug-in modules on licstore's variable-rate hyperprior.

Seed 000 ("Interleaved Block-based Learned Image Compression with Feature Enhancement and
Quantization Error Compensation") adds four modules to a codec:

* **FExM** (front of ``g_a``): the image is pixel-unshuffled into ``s x s`` sub-images that
  look like the frames of a short video; one convolution stack, *shared* by all sub-images
  (they are near-copies of each other, and sharing keeps the size independent of ``s``),
  extracts a feature per sub-image, and a stride-``s`` convolution (stride 2 for the
  paper's ``s = 2``) one feature of the whole image, at the same resolution.
* **FRM** (in ``g_a``, after FExM): the ``s*s + 1`` features are stacked along a "temporal"
  axis, ``[B, C, T, H/s, W/s]``, and refined by an attention refinement block of 3D
  convolutions (3D residual blocks with PReLU, channel and spatial attention), so that
  correlation *between* sub-images is removed too; T is then folded into the channels and a
  1x1 convolution gives the *refined feature* (``N`` channels at ``1/s`` resolution). The
  rest of the backbone's analysis takes it from there down to ``y`` (``1/16``).
* **FEnM** (in ``g_s``): the decoder feature at the refined feature's place goes through
  dense blocks and a convolution with shortcuts; Eq. 16's loss pulls it towards the
  encoder's refined feature (``forward`` returns it as ``fenm_loss``). The inverse FExM
  maps it back to sub-images (pixel shuffle) plus a whole-image transposed convolution.
* **QECM** on the main latent ``y`` only, see ``QECM``. Never on ``z``: ``z_hat`` feeds the
  fixed-point ``h_s`` whose exactness makes bitstreams decode on every machine, and
  ``h_s`` must see exactly the decoded integers.

``h_a``, ``h_s``, the entropy models, the learned per-level steps, ``analyze``,
``encode_latents`` and the bitstream layout are ``mshp-vr``'s, unchanged. The FRM/FEnM width
``feat`` defaults to ``N // 4``: 3D convolutions at ``1/2`` resolution over 5 frames are
costly (the paper's Table IV: FExM + FRM nearly double the backbone's MACs).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from compressai.layers import GDN
from compressai.ops import quantize_ste

from .mshp_vr import LAMBDAS, AnalyzedBatch, MeanScaleHyperpriorVR, _conv, _deconv
from .registry import register_model

#: seed of the decoder-reproducible QECM dither (used only when ``qecm_noise > 0``)
QECM_NOISE_SEED = 0x1BFE


def fourier_error(v: torch.Tensor, K: int = 5) -> torch.Tensor:
    """K-term Fourier series of the rounding error ``v - round(v)`` (a period-1 sawtooth).

    ``sum_{k=1..K} (-1)**(k+1) / (k*pi) * sin(2*pi*k*v)``; smooth, so differentiable.
    """
    out = torch.zeros_like(v)
    for k in range(1, K + 1):
        out = out + ((-1) ** (k + 1) / (k * math.pi)) * torch.sin((2 * math.pi * k) * v)
    return out


def _laplace(
    shape: tuple[int, ...], scale: float, generator: torch.Generator | None
) -> torch.Tensor:
    """Laplace(0, scale) draws clipped to [-0.5, 0.5] (the paper's limited Laplacian noise)."""
    u = torch.rand(shape, generator=generator, dtype=torch.float64) - 0.5
    n = -scale * torch.sign(u) * torch.log1p(-2 * u.abs())
    return n.clamp_(-0.5, 0.5)


class QECM(nn.Module):
    """Quantization error compensation for ``y`` (paper Sec. III-E), in quantization-step units.

    The backbone codes ``q = round(u)`` with ``u = (y - mean) / step``, so the sawtooth error
    is ``e(u) = u - round(u)``, approximated by ``e_K = fourier_error(., K)``.

    * Encoder block (Eq. 10): ``u_c = u - a * e_K(u)``, ``a = sigmoid(theta) / 2`` per channel,
      a learned partial soft rounding. The rate proxy (``u_c`` + uniform noise) then sits
      nearer to the integer that is coded, which is the train/test mismatch the paper
      targets. Because ``0 <= e_K(u) <= 0.59`` on ``[0, 1/2]`` and it is odd (Fejer-Jackson-
      Gronwall, Gibbs bound), ``round(u_c) == round(u)`` for every ``a < 0.85`` (exact ties
      ``u = n + 1/2`` aside): at inference the block would leave the symbols unchanged, so it
      is not run there and ``analyze``/``encode_latents`` stay the backbone's.
    * Decoder block (Eqs. 12, 14): from the dequantized ``y_hat`` and the step only,
      ``y_c = y_hat + step * (n + sum_k w[c, k] * s_k(y_hat / step + n))`` with ``s_k`` the
      k-th Fourier term and learned per-channel weights ``w`` (0 at init: identity). As
      ``y_hat / step = q + mean / step``, without dither the terms only carry the phase of
      the predicted mean on the step grid (``g_s`` cannot tell mean from symbol). ``n`` is
      the paper's test-time Laplacian noise; it is *off by default* (``noise = 0``). When on,
      training draws it at random and inference from a CPU ``torch.Generator`` seeded with
      ``QECM_NOISE_SEED`` per image, so the encoder's rate-search reconstruction and every
      decoder get the same draws.

    Inference evaluates the decoder block in float64 on the CPU and rounds once to float32,
    so encoder and decoder see the same ``y_c`` (the float64 synthesis of lossless layers
    relies on that).
    """

    def __init__(self, M: int, K: int = 5, noise: float = 0.0):
        super().__init__()
        if K < 1 or noise < 0:
            raise ValueError("QECM needs K >= 1 and noise >= 0")
        self.K, self.noise = K, float(noise)
        self.enc_theta = nn.Parameter(torch.zeros(M))
        self.dec_weight = nn.Parameter(torch.zeros(M, K))

    def compensate(self, u: torch.Tensor) -> torch.Tensor:
        """Encoder block on step-normalized, mean-removed latents ``u`` [B, M, h, w]."""
        a = 0.5 * torch.sigmoid(self.enc_theta)[None, :, None, None]
        return u - a * fourier_error(u, self.K)

    def decompensate(
        self, y_hat: torch.Tensor, step: torch.Tensor, noise: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Decoder block: ``y_hat`` [B, M, h, w], ``step`` [B or 1, M, 1, 1], noise in steps."""
        v = y_hat / step
        corr = torch.zeros_like(v)
        if noise is not None:
            v = v + noise
            corr = corr + noise
        w = self.dec_weight.to(v.dtype)
        for k in range(1, self.K + 1):
            term = ((-1) ** (k + 1) / (k * math.pi)) * torch.sin((2 * math.pi * k) * v)
            corr = corr + w[:, k - 1][None, :, None, None] * term
        return y_hat + step * corr

    def draw_noise(self, shape: tuple[int, ...], reproducible: bool) -> torch.Tensor | None:
        """Dither for one image (``shape`` = [1, M, h, w]); ``None`` when noise is off."""
        if self.noise == 0:
            return None
        gen = torch.Generator(device="cpu").manual_seed(QECM_NOISE_SEED) if reproducible else None
        return _laplace(shape, self.noise, gen)


# -- FExM / FRM ---------------------------------------------------------------


def _conv3d(c: int) -> nn.Conv3d:
    return nn.Conv3d(c, c, 3, padding=1)


class Res3D(nn.Module):
    """3D residual block (Fig. 5a): conv3d, PReLU, conv3d, plus identity."""

    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(_conv3d(c), nn.PReLU(c), _conv3d(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class CascadedRes3D(nn.Module):
    """``levels`` 3D residual blocks with an extra outer shortcut (Fig. 5b for 2 levels)."""

    def __init__(self, c: int, levels: int = 2):
        super().__init__()
        self.blocks = nn.Sequential(*(Res3D(c) for _ in range(levels)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.blocks(x)


class ChannelAttention3D(nn.Module):
    """Squeeze-excitation over (T, H, W) with a global residual: ``x + x * w(x)``."""

    def __init__(self, c: int, reduction: int = 4):
        super().__init__()
        mid = max(c // reduction, 1)
        self.fc = nn.Sequential(
            nn.AdaptiveAvgPool3d(1),
            nn.Conv3d(c, mid, 1),
            nn.ReLU(inplace=True),
            nn.Conv3d(mid, c, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + x * self.fc(x)


class SpatialAttention3D(nn.Module):
    """Mean and max over channels -> 3D convolution -> sigmoid mask over (T, H, W)."""

    def __init__(self, kernel: tuple[int, int, int] = (3, 7, 7)):
        super().__init__()
        self.conv = nn.Conv3d(2, 1, kernel, padding=tuple(k // 2 for k in kernel))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1)
        return x * torch.sigmoid(self.conv(pooled))


class AttentionRefinementBlock(nn.Module):
    """ARB (Fig. 4): 3D convolutions with a shortcut, then the attention block.

    ``head_convs`` 3D convolutions (2 in the paper, 1 in Proposed-Tiny) with a shortcut;
    attention block = 3D Res (``cascade`` levels, 1 = plain block), channel attention,
    spatial attention, with an outer shortcut.
    """

    def __init__(self, c: int, head_convs: int = 2, cascade: int = 2):
        super().__init__()
        layers: list[nn.Module] = [_conv3d(c)]
        for _ in range(head_convs - 1):
            layers += [nn.PReLU(c), _conv3d(c)]
        self.head = nn.Sequential(*layers)
        res = Res3D(c) if cascade == 1 else CascadedRes3D(c, cascade)
        self.attention = nn.Sequential(res, ChannelAttention3D(c), SpatialAttention3D())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.head(x)
        return x + self.attention(x)


def _split(x: torch.Tensor, s: int) -> torch.Tensor:
    """[B, 3, H, W] -> [B * s*s, 3, H/s, W/s]: the interleaved sub-images as a batch."""
    b, c, h, w = x.shape
    sub = F.pixel_unshuffle(x, s).reshape(b, c, s * s, h // s, w // s)
    return sub.transpose(1, 2).reshape(b * s * s, c, h // s, w // s)


def _merge(sub: torch.Tensor, s: int) -> torch.Tensor:
    """Inverse of ``_split``."""
    bt, c, h, w = sub.shape
    b = bt // (s * s)
    x = sub.reshape(b, s * s, c, h, w).transpose(1, 2).reshape(b, c * s * s, h, w)
    return F.pixel_shuffle(x, s)


class FExM(nn.Module):
    """Sub-image features (weights shared across sub-images) + a whole-image feature."""

    def __init__(self, feat: int, s: int = 2, convs: int = 1):
        super().__init__()
        self.s = s
        layers: list[nn.Module] = [_conv(3, feat, 5, 1)]
        for _ in range(convs - 1):
            layers += [GDN(feat), _conv(feat, feat, 3, 1)]
        self.sub = nn.Sequential(*layers)
        self.whole = _conv(3, feat, 2 * s + 1, s)  # = the paper's 5x5 stride-2 for s = 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> stacked features [B, feat, s*s + 1, H/s, W/s]."""
        b, s = x.shape[0], self.s
        sub = self.sub(_split(x, s))
        sub = sub.reshape(b, s * s, *sub.shape[1:])
        frames = torch.cat([sub, self.whole(x)[:, None]], 1)  # [B, T, feat, h, w]
        return frames.transpose(1, 2)


class FRM(nn.Module):
    """Attention refinement over the stacked features, then T folded into channels + 1x1."""

    def __init__(self, feat: int, out: int, frames: int, head_convs: int, cascade: int):
        super().__init__()
        self.arb = AttentionRefinementBlock(feat, head_convs, cascade)
        self.fold = nn.Conv2d(feat * frames, out, 1)

    def forward(self, stacked: torch.Tensor) -> torch.Tensor:
        r = self.arb(stacked)
        b, c, t, h, w = r.shape
        return self.fold(r.reshape(b, c * t, h, w))


class IBFEAnalysis(nn.Module):
    """``g_a``: FExM -> FRM (refined feature) -> the backbone's remaining strided stages."""

    def __init__(
        self, N: int, M: int, s: int, feat: int, fexm_convs: int, head_convs: int, cascade: int
    ):
        super().__init__()
        self.fexm = FExM(feat, s, fexm_convs)
        self.frm = FRM(feat, N, s * s + 1, head_convs, cascade)
        stages = 4 - int(math.log2(s))
        layers: list[nn.Module] = []
        for i in range(stages):
            layers += [GDN(N), _conv(N, M if i == stages - 1 else N)]
        self.rest = nn.Sequential(*layers)

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(y, refined feature)``; the latter is Eq. 16's target."""
        refined = self.frm(self.fexm(x))
        return self.rest(refined), refined

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)[0]


# -- FEnM / inverse FExM --------------------------------------------------------


class DenseBlock(nn.Module):
    """DenseNet-style block: each 3x3 conv sees all earlier outputs; 1x1 fusion + shortcut."""

    def __init__(self, c: int, growth: int, layers: int = 3):
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c + i * growth, growth, 3, padding=1), nn.PReLU(growth))
            for i in range(layers)
        )
        self.fuse = nn.Conv2d(c + layers * growth, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [x]
        for conv in self.convs:
            feats.append(conv(torch.cat(feats, 1)))
        return x + self.fuse(torch.cat(feats, 1))


class FEnM(nn.Module):
    """Dense blocks and a 3x3 convolution with an outer shortcut (Sec. III-F)."""

    def __init__(self, c: int, blocks: int = 2, growth: int | None = None):
        super().__init__()
        g = growth or max(c // 4, 1)
        self.blocks = nn.Sequential(*(DenseBlock(c, g) for _ in range(blocks)))
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(self.blocks(x))


class InverseFExM(nn.Module):
    """Feature -> s*s sub-image frames (shared transposed convs, pixel shuffle) + whole frame."""

    def __init__(self, c: int, feat: int, s: int = 2, convs: int = 1):
        super().__init__()
        self.s, self.feat = s, feat
        self.unfold = nn.Conv2d(c, feat * (s * s + 1), 1)
        layers: list[nn.Module] = []
        for _ in range(convs - 1):
            layers += [nn.ConvTranspose2d(feat, feat, 3, padding=1), GDN(feat, inverse=True)]
        layers.append(nn.ConvTranspose2d(feat, 3, 5, padding=2))
        self.sub = nn.Sequential(*layers)
        self.whole = _deconv(feat, 3, 2 * s + 1, s)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        b, _, h, w = f.shape
        s, t = self.s, self.s * self.s + 1
        frames = self.unfold(f).reshape(b, self.feat, t, h, w)
        sub = frames[:, :, : s * s].transpose(1, 2).reshape(b * s * s, self.feat, h, w)
        return _merge(self.sub(sub), s) + self.whole(frames[:, :, s * s])


class IBFESynthesis(nn.Module):
    """``g_s``: the backbone's strided stages up to ``1/s`` -> FEnM -> inverse FExM."""

    def __init__(self, N: int, M: int, s: int, feat: int, fexm_convs: int, dense_blocks: int):
        """``dense_blocks = 0``: no FEnM (the ablation "backbone + FExM/FRM")."""
        super().__init__()
        stages = 4 - int(math.log2(s))
        layers: list[nn.Module] = []
        for i in range(stages):
            layers += [_deconv(M if i == 0 else N, N), GDN(N, inverse=True)]
        self.rest = nn.Sequential(*layers)
        self.fenm = FEnM(N, dense_blocks) if dense_blocks else nn.Identity()
        self.inv_fexm = InverseFExM(N, feat, s, fexm_convs)

    def features(self, y_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x_hat, FEnM output)``; the latter is compared with the refined feature."""
        enhanced = self.fenm(self.rest(y_hat))
        return self.inv_fexm(enhanced), enhanced

    def forward(self, y_hat: torch.Tensor) -> torch.Tensor:
        return self.features(y_hat)[0]


# -- the model ---------------------------------------------------------------------


@register_model("ibfe")
class IBFE(MeanScaleHyperpriorVR):
    """Seed 000 "Proposed-Tiny": 1-conv FExM, 1-conv ARB head, one 3D Res, one dense block."""

    FEXM_CONVS, HEAD_CONVS, CASCADE, DENSE_BLOCKS = 1, 1, 1, 1

    def __init__(
        self,
        N: int = 128,
        M: int = 192,
        levels: int = len(LAMBDAS),
        s: int = 2,
        feat: int | None = None,
        K: int = 5,
        qecm_noise: float = 0.0,
        fenm: bool = True,
        qecm: bool = True,
    ):
        """``fenm`` / ``qecm`` False drop those modules (seed 000's Table V ablation)."""
        if s not in (2, 4, 8):
            raise ValueError(f"sub-image factor s must be 2, 4 or 8, got {s}")
        super().__init__(N=N, M=M, levels=levels)
        self.s = s
        self.feat = feat = feat or max(N // 4, 1)
        self.g_a = IBFEAnalysis(N, M, s, feat, self.FEXM_CONVS, self.HEAD_CONVS, self.CASCADE)
        self.g_s = IBFESynthesis(N, M, s, feat, self.FEXM_CONVS, self.DENSE_BLOCKS * fenm)
        self.has_fenm = fenm
        self.qecm = QECM(M, K, qecm_noise) if qecm else None

    def backbone_key(self, name: str) -> str:
        """Where a ``mshp-vr`` tensor goes here (for ``weights.warm_start``).

        The backbone's strided analysis stages after its first convolution become
        ``g_a.rest`` and its synthesis stages before the last one ``g_s.rest``; for ``s = 2``
        they have the same shapes, so only FExM/FRM, FEnM/inverse FExM and QECM start new.
        """
        part, _, rest = name.partition(".")
        index, _, leaf = rest.partition(".")
        if part not in ("g_a", "g_s") or not index.isdigit():
            return name
        i = int(index) - (1 if part == "g_a" else 0)
        return f"{part}.rest.{i}.{leaf}" if 0 <= i < len(getattr(self, part).rest) else name

    def to(self, *args, **kwargs):
        """``channels_last`` (as ``tools/train.py`` asks) for 4D tensors only.

        ``nn.Module.to(memory_format=torch.channels_last)`` refuses the 5D Conv3d weights.
        """
        if kwargs.get("memory_format") is not torch.channels_last:
            return super().to(*args, **kwargs)
        kwargs.pop("memory_format")
        out = super().to(*args, **kwargs)
        for t in (*self.parameters(), *self.buffers()):
            if t.dim() == 4:
                t.data = t.data.contiguous(memory_format=torch.channels_last)
        return out

    # -- training forward -----------------------------------------------------
    def _noise(self, y_hat: torch.Tensor) -> torch.Tensor | None:
        """QECM dither in step units: random in training, the decoder's fixed draw in eval."""
        if self.qecm is None:
            return None
        n = self.qecm.draw_noise((1, *y_hat.shape[1:]), reproducible=not self.training)
        return None if n is None else n.to(y_hat.device, y_hat.dtype).expand_as(y_hat)

    def forward(self, x: torch.Tensor, r: torch.Tensor) -> dict:
        """The backbone's forward with QECM around quantization and Eq. 16's ``fenm_loss``."""
        y, refined = self.g_a.features(x)
        z = self.h_a(y)
        with torch.autocast(device_type=x.device.type, enabled=False):
            y, z = y.float(), z.float()
            z_tilde, z_likelihoods = self.entropy_bottleneck(z)
            medians = self.entropy_bottleneck._get_medians()
            z_hat = quantize_ste(z - medians) + medians  # z: no QECM (exact h_s)
        params = self.h_s(z_hat)
        with torch.autocast(device_type=x.device.type, enabled=False):
            scales, means = params.float().chunk(2, 1)
            step = self.steps(r)
            u = (y - means) / step
            u = u if self.qecm is None else self.qecm.compensate(u)
            u_q = u + torch.empty_like(u).uniform_(-0.5, 0.5) if self.training else torch.round(u)
            gc = self.gaussian_conditional
            y_likelihoods = gc.likelihood_lower_bound(gc._likelihood(u_q, scales / step))
            y_hat = quantize_ste(u) * step + means
            if self.qecm is not None:
                y_hat = self.qecm.decompensate(y_hat, step, self._noise(y_hat))
        x_hat, enhanced = self.g_s.features(y_hat)
        # Eq. 16; the target is detached so the loss trains the decoder to recover the
        # encoder's feature rather than shrinking that feature
        out = {"x_hat": x_hat, "likelihoods": {"y": y_likelihoods, "z": z_likelihoods}}
        if self.has_fenm:
            out["fenm_loss"] = F.mse_loss(enhanced.float(), refined.detach().float())
        return out

    # -- inference: QECM's decoder block on the exact y_hat -------------------
    @torch.no_grad()
    def _decompensate(self, y_hat: torch.Tensor, rate: int) -> torch.Tensor:
        """Float64 on the CPU, rounded once to float32: identical on encoder and decoder."""
        if self.qecm is None:
            return y_hat
        step = torch.from_numpy(np.asarray(self._steps(rate), dtype=np.float64))
        step = step[None, :, None, None]
        noise = self.qecm.draw_noise(tuple(y_hat.shape), reproducible=True)
        y_c = self.qecm.decompensate(y_hat.detach().cpu().double(), step, noise)
        return y_c.float()

    def reconstruct_latents(self, a: AnalyzedBatch, i: int, rate: int) -> torch.Tensor:
        """The compensated ``y_hat`` a decoder will feed ``g_s`` at ``rate``."""
        return self._decompensate(super().reconstruct_latents(a, i, rate), rate)

    @torch.no_grad()
    def decode_latents(self, payload: bytes, height: int, width: int, rate: int) -> torch.Tensor:
        """Base-layer payload -> QECM-compensated ``y_hat`` [1, M, h, w] (float32)."""
        return self._decompensate(super().decode_latents(payload, height, width, rate), rate)


@register_model("ibfe-full")
class IBFEFull(IBFE):
    """Seed 000 "Proposed": 2-conv FExM and ARB head, two-level cascaded 3D Res, two DBs."""

    FEXM_CONVS, HEAD_CONVS, CASCADE, DENSE_BLOCKS = 2, 2, 2, 2
