"""``resgdn-vr``: variable-rate ResGDN autoencoder with a scalable B-bit quantizer (seed 002).

Akbari et al., "Learned Variable-Rate Image Compression with Residual Divisive Normalization"
(ICME 2020). One network serves every rate: the code map is quantized per channel between
that channel's min and max with ``B`` bits (Eq. 4; any B in 2..8 at test time), and the
integer code map is coded losslessly, channel by channel (JPEG XL lossless here, the
successor of the paper's FLIF; PNG when it is smaller). No entropy model takes part in
decoding, so the code map decodes identically everywhere. Higher rates come from the
residual enhancement layer (``residual="hevc"``), as in the paper.

Encoder (Fig. 2): 5 stages, 11 convolutions: conv+GDN | 3 x (conv+GDN, ResGDN) | conv.
Decoder mirrors it with IGDN, ResIGDN and transposed convolutions.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
from compressai.layers import GDN
from PIL import Image

from ..errors import CorruptBitstreamError
from ..layer_headers import check_layer_image, pil_bomb_error
from .registry import register_model

#: bits per code-map element the variable-rate loss trains at (Eq. 9)
TRAIN_BITS = (2, 5, 8)
MIN_BITS, MAX_BITS = 2, 8
#: a training crop decoded with an MSE above this (pixels in [0, 1]) has blown up
BLOWUP_MSE = 1.0
#: code-map coders: payload byte 1 says which one wrote the mosaic
CODERS = {0: "PNG", 1: "JXL"}


def _conv(cin: int, cout: int, k: int = 5, stride: int = 2) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2)


def _deconv(cin: int, cout: int, k: int = 5, stride: int = 2) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(
        cin, cout, k, stride=stride, padding=k // 2, output_padding=stride - 1
    )


class ResGDN(nn.Module):
    """x + GDN(conv(GDN(conv(x)))): the paper's residual block with GDN instead of ReLU/BN.
    ``act="relu"`` and ``identity=False`` give the ablations (ResReLU, no shortcut)."""

    def __init__(self, n: int, inverse: bool = False, act: str = "gdn", identity: bool = True):
        super().__init__()
        self.inverse, self.identity = inverse, identity

        def nl():
            return GDN(n, inverse=inverse) if act == "gdn" else nn.ReLU(inplace=False)

        self.conv1, self.conv2 = _conv(n, n, 3, 1), _conv(n, n, 3, 1)
        self.act1, self.act2 = nl(), nl()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.inverse:  # ResIGDN: IGDN -> conv, twice (Eq. 7)
            y = self.conv2(self.act2(self.conv1(self.act1(x))))
        else:  # ResGDN: conv -> GDN, twice (Eq. 3)
            y = self.act2(self.conv2(self.act1(self.conv1(x))))
        return x + y if self.identity else y


@register_model("resgdn-vr")
class ResGDNVR(nn.Module):
    """Variable-rate ResGDN codec; the rate parameter is the quantizer's bit depth B."""

    downsampling = 16

    def __init__(
        self,
        N: int = 128,
        M: int = 8,
        act: str = "gdn",
        residual_blocks: bool = True,
        train_bits: tuple[int, ...] | list[int] = TRAIN_BITS,
    ):
        super().__init__()
        self.N, self.M = N, M
        # one entry trains a fixed-rate model: the paper's baseline for the variable-rate claim
        if not train_bits or any(not MIN_BITS <= int(b) <= MAX_BITS for b in train_bits):
            raise ValueError(f"train_bits must be bit depths in {MIN_BITS}..{MAX_BITS}")
        self.train_bits = tuple(int(b) for b in train_bits)

        def nl(inverse=False):
            return GDN(N, inverse=inverse) if act == "gdn" else nn.ReLU()

        def res(inverse=False):
            if not residual_blocks:
                return nn.Identity()
            return ResGDN(N, inverse=inverse, act=act)

        layers_a: list[nn.Module] = [_conv(3, N), nl()]
        for _ in range(3):
            layers_a += [_conv(N, N), nl(), res()]
        layers_a += [_conv(N, M, 5, 1)]
        self.g_a = nn.Sequential(*layers_a)
        layers_s: list[nn.Module] = [_conv(M, N, 5, 1), nl(True)]
        for _ in range(3):
            layers_s += [res(True), _deconv(N, N), nl(True)]
        layers_s += [_deconv(N, 3)]
        self.g_s = nn.Sequential(*layers_s)

    # -- the scalable quantizer (Eq. 4) ------------------------------------------------------
    @staticmethod
    def quant_params(y: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel scale and integer zero-point from min/max over each image's channel."""
        lo = y.amin(dim=(2, 3), keepdim=True).clamp(max=0)
        hi = y.amax(dim=(2, 3), keepdim=True).clamp(min=0)
        scale = ((hi - lo) / (2**bits - 1)).clamp_min(1e-8)
        zero = torch.round(-lo / scale)
        return scale, zero

    def quantize_train(self, y: torch.Tensor, bits: int) -> torch.Tensor:
        """Stochastic rounding with a straight-through gradient, then dequantize."""
        scale, zero = self.quant_params(y.detach(), bits)
        v = y / scale + zero
        q = torch.floor(v + torch.rand_like(v)).clamp(0, 2**bits - 1)
        q = v + (q - v).detach()
        return (q - zero) * scale

    def forward(self, x: torch.Tensor, bits: int) -> torch.Tensor:
        return self.g_s(self.quantize_train(self.g_a(x), bits))

    def training_loss(self, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Eq. 9: MSE and MS-SSIM summed over several bit depths in one step."""
        from pytorch_msssim import ms_ssim

        y = self.g_a(x).float()  # the quantizer in fp32: bf16 cannot hold 2**8 levels
        loss = x.new_zeros(())
        psnrs = []
        # 4 scales and a 7-pixel window: pytorch-msssim needs sides > 16 * (window - 1)
        weights = [0.0448, 0.2856, 0.3001, 0.2363]
        weights = [w / sum(weights) for w in weights]
        blowups = 0
        for bits in self.train_bits:
            y_hat = self.quantize_train(y, bits)
            x_hat = self.g_s(y_hat).float()
            # Stochastic rounding at low B sends some code maps out of the domain the chain
            # of IGDNs has learned (each grows like x**2): a crop then decodes to 1e19-1e30
            # and its loss would drown the batch (or drop it whole). Such crops leave this
            # bit depth's term; the rest (same draw: g_s is per crop) are decoded again.
            bad = ~((x_hat - x).pow(2).flatten(1).mean(1) <= BLOWUP_MSE)  # NaN counts as bad
            if bad.any():
                blowups += int(bad.sum())
                if bad.all():
                    continue
                keep = ~bad
                x_hat = self.g_s(y_hat[keep]).float()
                x_ref = x[keep]
            else:
                x_ref = x
            # the metrics in fp32 even under bf16 autocast: in bf16, SSIM's stabilising
            # constants vanish and MS-SSIM turns infinite within a few steps
            with torch.autocast(x.device.type, enabled=False):
                mse = (x_hat - x_ref).pow(2).mean()
                msssim = ms_ssim(
                    x_hat.clamp(0, 1), x_ref.float(), data_range=1.0, weights=weights, win_size=7
                )
            loss = loss + 1000 * mse + (1 - msssim)
            psnrs.append(float(10 * torch.log10(1 / mse.detach().clamp_min(1e-10))))
        if not psnrs:  # every crop blew up at every bit depth: a non-finite loss, skipped
            return x.new_full((), float("nan")), {"psnr": 0.0, "blowups": blowups}
        return loss / len(psnrs), {"psnr": float(np.mean(psnrs)), "blowups": blowups}

    # -- inference ------------------------------------------------------------------------
    def freeze(self) -> None:
        """Nothing to tabulate: the decoder needs no entropy model."""

    def exact_state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    def load_exact_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if state:
            raise ValueError(f"unexpected exact tensors for resgdn-vr: {sorted(state)}")

    def rate_range(self) -> tuple[int, int]:
        """The stored rate parameter is the bit depth B."""
        return MIN_BITS, MAX_BITS

    def quality_to_rate(self, quality: int) -> int:
        """Quality 1..8 -> B = 2..8 (qualities 7 and 8 both use B = 8)."""
        return min(MAX_BITS, quality + 1)

    def latent_shape(self, height: int, width: int) -> tuple[int, int]:
        return -(-height // 16), -(-width // 16)

    @torch.no_grad()
    def analyze(self, x: torch.Tensor, bf16: bool = False) -> AnalyzedCodeMaps:
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            y = self.g_a(x.contiguous(memory_format=torch.channels_last))
        return AnalyzedCodeMaps(y.float().cpu())

    def _quantize(self, a: AnalyzedCodeMaps, i: int, bits: int):
        y = a.y[i : i + 1]
        lo = y.amin(dim=(2, 3)).clamp(max=0)[0].numpy().astype(np.float32)
        hi = y.amax(dim=(2, 3)).clamp(min=0)[0].numpy().astype(np.float32)
        scale, zero = _scale_zero(lo, hi, bits)
        v = y[0].numpy().astype(np.float32) / scale[:, None, None] + zero[:, None, None]
        q = np.clip(np.round(v), 0, 2**bits - 1).astype(np.uint8)
        return q, lo, hi

    def reconstruct_latents(self, a: AnalyzedCodeMaps, i: int, rate: int) -> torch.Tensor:
        q, lo, hi = self._quantize(a, i, rate)
        return _dequantize(q, lo, hi, rate)

    def estimate_bytes(self, a: AnalyzedCodeMaps, i: int, rate: int) -> float:
        """Zeroth-order entropy of each channel's symbols plus side info."""
        q, _, _ = self._quantize(a, i, rate)
        return order0_bytes(q) + 8 * self.M + 40

    def encode_latents(self, a: AnalyzedCodeMaps, i: int, rate: int) -> bytes:
        """Payload: M x (min, max) float32 LE | coder id (u8) | lossless mosaic of channels."""
        q, lo, hi = self._quantize(a, i, rate)
        side = b"".join(struct.pack("<ff", float(lo[c]), float(hi[c])) for c in range(self.M))
        mosaic = q.reshape(-1, q.shape[-1])  # channels stacked vertically
        best = None
        for code, fmt in CODERS.items():
            data = _lossless(mosaic, fmt)
            if best is None or len(data) < len(best[1]):
                best = (code, data)
        return side + bytes([best[0]]) + best[1]

    @torch.no_grad()
    def decode_latents(self, payload: bytes, height: int, width: int, rate: int) -> torch.Tensor:
        h, w = self.latent_shape(height, width)
        side = 8 * self.M
        if len(payload) < side + 2:
            raise CorruptBitstreamError("resgdn-vr base layer: payload too short")
        lohi = np.frombuffer(payload[:side], dtype="<f4").reshape(self.M, 2)
        lo, hi = lohi[:, 0].copy(), lohi[:, 1].copy()
        if not (np.all(np.isfinite(lohi)) and np.all(lo <= 0) and np.all(hi >= 0)):
            raise CorruptBitstreamError("resgdn-vr base layer: bad channel ranges")
        fmt = CODERS.get(payload[side])
        if fmt is None:
            raise CorruptBitstreamError(f"resgdn-vr base layer: unknown coder {payload[side]}")
        if fmt == "JXL":
            import pillow_jxl  # noqa: F401  (registers the JPEG XL plugin)
        # the code map's own header first: pillow-jxl decodes inside Image.open
        what = "resgdn-vr base layer: code map"
        check_layer_image(payload[side + 1 :], fmt, w, self.M * h, what)
        try:
            with Image.open(io.BytesIO(payload[side + 1 :]), formats=[fmt]) as im:
                if im.mode != "L" or im.size != (w, self.M * h):
                    raise CorruptBitstreamError(
                        f"resgdn-vr base layer: code map is {im.mode} {im.size}, "
                        f"expected L {(w, self.M * h)}"
                    )
                mosaic = np.asarray(im)
        except CorruptBitstreamError:
            raise
        except Image.DecompressionBombError as e:
            raise pil_bomb_error(what, e) from e
        except MemoryError:
            raise
        except Exception as e:
            raise CorruptBitstreamError(f"resgdn-vr base layer: code map: {e}") from e
        q = mosaic.reshape(self.M, h, w)
        if q.max(initial=0) > 2**rate - 1:
            raise CorruptBitstreamError("resgdn-vr base layer: symbol above 2**B - 1")
        return _dequantize(q, lo, hi, rate)

    @torch.no_grad()
    def synthesize(self, y_hat: torch.Tensor, bf16: bool = False) -> torch.Tensor:
        y_hat = y_hat.contiguous(memory_format=torch.channels_last)
        with torch.autocast(y_hat.device.type, dtype=torch.bfloat16, enabled=bf16):
            x = self.g_s(y_hat)
        return x.float().clamp_(0, 1)


def _scale_zero(lo: np.ndarray, hi: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Eq. 4 in float32 numpy, so encoder and decoder compute identical values."""
    scale = np.maximum((hi - lo) / np.float32(2**bits - 1), np.float32(1e-8)).astype(np.float32)
    zero = np.round(-lo / scale).astype(np.float32)
    return scale, zero


def _dequantize(q: np.ndarray, lo: np.ndarray, hi: np.ndarray, bits: int) -> torch.Tensor:
    scale, zero = _scale_zero(lo, hi, bits)
    y = (q.astype(np.float32) - zero[:, None, None]) * scale[:, None, None]
    return torch.from_numpy(np.ascontiguousarray(y))[None]


def order0_bytes(q: np.ndarray) -> float:
    """Zeroth-order entropy of each channel of a code map, summed, in bytes."""
    total = 0.0
    for channel in q:
        counts = np.bincount(channel.ravel()).astype(np.float64)
        counts = counts[counts > 0]
        total += -(counts * np.log2(counts / channel.size)).sum()
    return total / 8


def _lossless(mosaic: np.ndarray, fmt: str) -> bytes:
    if fmt == "JXL":
        import pillow_jxl  # noqa: F401  (registers the JPEG XL plugin)

        kwargs = {"lossless": True, "effort": 7}
    else:
        kwargs = {"optimize": True}
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(mosaic)).save(buf, format=fmt, **kwargs)
    return buf.getvalue()


@dataclass
class AnalyzedCodeMaps:
    y: torch.Tensor  # [B, M, h, w] float32, unquantized code maps
