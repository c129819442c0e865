"""The exact entropy-parameter path and latent <-> string coding.

A learned codec only decodes if encoder and decoder derive *bit-identical* entropy
parameters (CompressAI issue #309: float hyper-decoders differ across devices, thread
counts and batch sizes). licstore therefore evaluates the hyper-synthesis in fixed
point: integer weights, integer activations, convolutions done as integer-valued
float64 matrix products whose every partial sum stays below 2**53, so the result is
exact whatever the BLAS, the summation order, the batch or the machine (Balle et al.
2019, "Integer networks for data compression"). Where the machine's int8 GEMM is exact
(checked once on worst cases) the same integer products are computed from balanced
base-256 digits with ``torch._int_mm`` instead, several times faster; both paths give the
same integers, so bitstreams do not depend on which one ran. Everything downstream of it (scale
indexes, means, quantization steps) uses only correctly rounded IEEE operations in
float64 on the CPU. The synthesis transform is outside this path and may run in bf16.

The rANS coder and the CDF tables are CompressAI's; the tables ship inside the weights
file, so no machine recomputes them.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from compressai.ans import RansDecoder, RansEncoder

from . import rans_checked
from .errors import CorruptBitstreamError, WeightsIntegrityError

#: fractional bits of fixed-point activations and weights
FRAC_BITS = 12
_ONE = float(1 << FRAC_BITS)
#: activations are clamped to +-ACT_LIMIT (fixed point) and weights must lie within
#: +-WEIGHT_LIMIT, so |partial sums| <= ACT_LIMIT * WEIGHT_LIMIT * fan_in < 2**53
ACT_LIMIT = float(1 << (FRAC_BITS + 10))
WEIGHT_LIMIT = float(1 << (FRAC_BITS + 4))
MAX_FAN_IN = 1 << 12
#: rows of a layer's im2col matrix (zero taps of masked kernels included): keeps the int8
#: path's int32 sums exact (128 * 128 * MAX_COLUMNS < 2**31)
MAX_COLUMNS = 1 << 13
#: decoded symbols beyond this magnitude only come from corrupt streams
SYMBOL_LIMIT = 1 << 15

#: layer calls of the exact convolutions per path: "int8" (int8 digit GEMM), "float64", and
#: "int8_refused" (this build's int8 GEMM refused a shape; the float64 path then ran). Both
#: paths give the same integers; the counts let tests and benchmarks see which one ran.
matmul_paths: Counter[str] = Counter()
#: ``_TableCoder.decode`` calls per route: "guarded" (CompressAI's decoder, escapes disabled)
#: and "checked" (``licstore.rans_checked``, for strings with escapes)
rans_routes: Counter[str] = Counter()


def _digits(t: torch.Tensor, bound: float) -> list[torch.Tensor]:
    """Balanced base-256 digits (int8) of the integer tensor ``t``, ``|t| <= bound``.

    ``t == sum(d_j * 256**j)`` with every ``d_j`` in ``[-128, 127]``: a product of two
    digit matrices then fits int32 exactly for any fan-in up to ``MAX_FAN_IN``.
    """
    n = 1
    while 127 * (256**n - 1) // 255 < bound:
        n += 1
    rest = t.to(torch.int32 if bound < 2**30 else torch.int64)  # int32: half the memory
    out = []
    for _ in range(n):
        d = ((rest + 128) & 255) - 128  # two's complement: the balanced remainder
        out.append(d.to(torch.int8))
        rest = (rest - d) >> 8  # exact: rest - d is a multiple of 256
    return out


def _int8_matmul(w_digits: list[torch.Tensor], x_digits: list[torch.Tensor]) -> torch.Tensor:
    """``W @ X`` exactly (int64) from digit matrices, as one int8 GEMM with int32 sums.

    Products of equal weight ``256**k`` are summed in int32 (at most 3 of them, each below
    ``2**27``), then Horner's rule in int64 puts the ``k`` together.
    """
    rows, cols = w_digits[0].shape[0], x_digits[0].shape[1]
    prod = torch._int_mm(torch.cat(w_digits), torch.cat(x_digits, 1))
    prod = prod.reshape(len(w_digits), rows, len(x_digits), cols)
    groups: list[torch.Tensor | None] = [None] * (len(w_digits) + len(x_digits) - 1)
    for i in range(len(w_digits)):
        for j in range(len(x_digits)):
            g = groups[i + j]
            groups[i + j] = prod[i, :, j] if g is None else g + prod[i, :, j]
    acc = groups[-1].to(torch.int64)
    for g in reversed(groups[:-1]):
        acc = (acc << 8).add_(g)
    return acc


@lru_cache(maxsize=1)
def int8_matmul_is_exact() -> bool:
    """Whether this machine's int8 GEMM gives exact int32 sums, checked on worst cases.

    Some int8 kernels (e.g. without AVX-512 VNNI) saturate 16-bit intermediate sums; an
    inexact product would change entropy parameters, so such machines (and torch builds
    without ``torch._int_mm``) use the float64 path. Both paths compute the same integers;
    ``LICSTORE_EXACT_MATMUL=float64`` forces the float64 one.
    """
    if os.environ.get("LICSTORE_EXACT_MATMUL") == "float64":  # forced, e.g. to compare paths
        return False
    k = MAX_COLUMNS
    cases = [(-128, -128), (127, -128), (-128, 127), (127, 127)]
    try:
        for a, b in cases:
            w = torch.full((24, k), a, dtype=torch.int8)
            x = torch.full((k, 40), b, dtype=torch.int8)
            if not bool((torch._int_mm(w, x).to(torch.int64) == a * b * k).all()):
                return False
        g = torch.Generator().manual_seed(0)
        w = torch.randint(-128, 128, (37, 1153), generator=g, dtype=torch.int8)
        x = torch.randint(-128, 128, (1153, 61), generator=g, dtype=torch.int8)
        exact = (w.double() @ x.double()).to(torch.int64)
        return bool(torch.equal(torch._int_mm(w, x).to(torch.int64), exact))
    except (RuntimeError, AttributeError, NotImplementedError):
        return False


def _patches(
    x: torch.Tensor, taps: torch.Tensor, positions: torch.Tensor | None = None
) -> torch.Tensor:
    """im2col of [B, C, h, w] (any dtype, 'same' zero padding) -> [C * T, B * n].

    Only the kernel taps set in ``taps`` (bool [k, k], T of them: a masked kernel's zero
    taps add nothing) and only the output ``positions`` (bool [h, w], n of them; None: all).
    """
    b, c, h, w = x.shape
    k = taps.shape[0]
    x = F.pad(x, (k // 2,) * 4)
    cols = torch.stack([x[:, :, i : i + h, j : j + w] for i, j in taps.nonzero().tolist()], 2)
    cols = cols.flatten(3) if positions is None else cols[..., positions]  # [B, C, T, n]
    return cols.permute(1, 2, 0, 3).reshape(-1, b * cols.shape[-1])


@dataclass
class FixedPointConv:
    """One 3x3 (or kxk) convolution layer of the integer hyper-synthesis."""

    weight: torch.Tensor  # float64, integer valued, [out, in, k, k], scale 2**FRAC_BITS
    bias: torch.Tensor  # float64, integer valued, [out], scale 2**FRAC_BITS
    upsample: int  # pixel-shuffle factor applied after the convolution (1 = none)
    relu: bool
    _w_digits: list[torch.Tensor] | None = field(default=None, repr=False, compare=False)
    _w_taps: tuple[torch.Tensor, torch.Tensor] | None = field(
        default=None, repr=False, compare=False
    )

    def _matrix(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(taps, matrix): the kernel taps with a non-zero weight for some channel (bool
        [k, k]) and the weights at those taps as [out, in * taps]."""
        if self._w_taps is None:
            taps = (self.weight != 0).flatten(0, 1).any(0)
            wmat = self.weight[:, :, taps].reshape(self.weight.shape[0], -1)
            self._w_taps = taps, wmat
        return self._w_taps

    def __call__(self, x: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """Integer-valued float64 activations in and out (``x`` [B, in, h, w]).

        With ``positions`` (bool [h, w]) only the outputs there are computed, as
        [B, out, n, 1] in row-major order: the same integers as at those places of the
        full output.
        """
        if positions is not None and self.upsample > 1:
            raise ValueError("outputs at positions of a sub-pixel layer")
        if positions is not None and self.weight.shape[-1] == 1:  # pointwise: select first
            x, positions = x[..., positions][..., None], None
        b, _, h, w = x.shape
        taps, wmat = self._matrix()
        acc = None
        if int8_matmul_is_exact():
            try:  # int64 sums; the arithmetic shift is the floor division by 2**F
                acc = (self._matmul_int8(wmat, x, taps, positions) >> FRAC_BITS).double()
                matmul_paths["int8"] += 1
            except RuntimeError:  # a shape this build's int8 GEMM refuses: same integers below
                matmul_paths["int8_refused"] += 1
                acc = None
        if acc is None:  # integer valued and < 2**53: exact in any summation order
            matmul_paths["float64"] += 1
            acc = torch.matmul(wmat, _patches(x, taps, positions))
            acc = torch.div(acc, _ONE, rounding_mode="floor")
        out = acc.reshape(acc.shape[0], b, -1).transpose(0, 1)  # [B, out, n]
        out = out.add_(self.bias[:, None])
        out = out.reshape(b, -1, h, w) if positions is None else out[..., None]
        if self.upsample > 1:
            out = F.pixel_shuffle(out, self.upsample)
        return out.clamp_(0.0 if self.relu else -ACT_LIMIT, ACT_LIMIT)

    def _matmul_int8(
        self, wmat: torch.Tensor, x: torch.Tensor, taps: torch.Tensor, positions
    ) -> torch.Tensor:
        """The same integer products as the float64 path (int64), from int8 digits."""
        if self._w_digits is None:
            self._w_digits = _digits(wmat, float(wmat.abs().max()))
        x_digits = [_patches(d, taps, positions) for d in _digits(x, float(x.abs().max()))]
        return _int8_matmul(self._w_digits, x_digits)


class FixedPointHyperSynthesis:
    """Bit-exact evaluation of a ReLU / sub-pixel hyper-synthesis network."""

    def __init__(self, layers: list[FixedPointConv]):
        self.layers = layers

    @classmethod
    def from_float(cls, seq: nn.Sequential) -> FixedPointHyperSynthesis:
        """Quantize a trained float ``h_s`` (convs, SubpelUp modules and ReLUs)."""
        layers: list[FixedPointConv] = []
        for mod in seq:
            if isinstance(mod, nn.ReLU):
                layers[-1].relu = True
                continue
            conv = getattr(mod, "conv", mod)
            if not isinstance(conv, nn.Conv2d) or conv.stride != (1, 1):
                raise TypeError(f"cannot convert {type(mod).__name__} to fixed point")
            upsample = 2 if conv is not mod else 1
            weight = getattr(conv, "masked_weight", conv.weight)  # e.g. a checkerboard mask
            w = torch.round(weight.detach().double() * _ONE)
            b = torch.round(conv.bias.detach().double() * _ONE)
            if not _in_exact_range(w):
                raise ValueError("fixed-point weights out of the exact range")
            layers.append(FixedPointConv(w, b, upsample, relu=False))
        return cls(layers)

    def state_dict(self, prefix: str = "exact.h_s.") -> dict[str, torch.Tensor]:
        out = {}
        for i, layer in enumerate(self.layers):
            # int16 when it fits (halves the file), int32 otherwise; readers accept both
            small = layer.weight.abs().max() < 2**15
            out[f"{prefix}{i}.weight"] = layer.weight.to(torch.int16 if small else torch.int32)
            out[f"{prefix}{i}.bias"] = layer.bias.to(torch.int32)
            out[f"{prefix}{i}.config"] = torch.tensor(
                [layer.upsample, int(layer.relu)], dtype=torch.int32
            )
        return out

    @classmethod
    def from_state_dict(
        cls, state: dict[str, torch.Tensor], prefix: str = "exact.h_s."
    ) -> FixedPointHyperSynthesis:
        layers = []
        i = 0
        while f"{prefix}{i}.weight" in state:
            w = state[f"{prefix}{i}.weight"].double()
            b = state[f"{prefix}{i}.bias"].double()
            up, relu = (int(v) for v in state[f"{prefix}{i}.config"])
            if not _in_exact_range(w):
                raise ValueError("fixed-point weights out of range")
            layers.append(FixedPointConv(w, b, up, bool(relu)))
            i += 1
        if not layers:
            raise KeyError(f"no fixed-point layers under {prefix!r}")
        return cls(layers)

    def fixed(self, x: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """Fixed-point (integer-valued float64) activations in and out.

        ``positions`` (bool [h, w]): outputs there only, [B, C, n, 1], for networks whose
        layers after the first are 1x1 (e.g. a context model's entropy parameters).
        """
        for i, layer in enumerate(self.layers):
            if positions is not None and i and layer.weight.shape[-1] != 1:
                raise ValueError("outputs at positions need 1x1 layers after the first")
            x = layer(x, positions if i == 0 else None)
        return x

    def __call__(self, z_hat: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """``z_hat`` (float32, exact values) -> (scales, means) as exact float64 arrays."""
        return split_parameters(self.fixed(to_fixed(z_hat)))


def to_fixed(t: torch.Tensor) -> torch.Tensor:
    """Exact float32 values -> fixed-point integers (float64), clamped to +-1024."""
    return torch.round(t.detach().cpu().double().clamp(-1024, 1024) * _ONE)


def split_parameters(x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Fixed-point [B, 2M, h, w] -> (scales, means), exact float64 arrays."""
    scales, means = (t.numpy() / _ONE for t in x.chunk(2, 1))
    return np.ascontiguousarray(scales), np.ascontiguousarray(means)


def _in_exact_range(w: torch.Tensor) -> bool:
    """Weights whose every partial sum stays exact: magnitude, non-zero fan-in, columns."""
    rows = w.reshape(w.shape[0], -1)
    fan_in = int((rows != 0).sum(1).max()) if rows.numel() else 0
    return (
        bool(rows.abs().max() <= WEIGHT_LIMIT)
        and fan_in <= MAX_FAN_IN
        and (rows.shape[1] <= MAX_COLUMNS)
    )


#: below the lowest trained level the step grows linearly: x(1 + EXTRAPOLATION * -r)
EXTRAPOLATION = 0.375


def interpolate_steps(step_table: np.ndarray, r: float) -> np.ndarray:
    """Per-channel quantization step at rate parameter ``r`` (exact float64 operations).

    Linear interpolation between the learned per-level steps for ``0 <= r <= levels - 1``;
    for ``r < 0`` (rates below the lowest trained level) the level-0 step scaled by
    ``1 + EXTRAPOLATION * (-r)``: x4 at r = -8.
    """
    if r < 0:
        return np.multiply(
            step_table[0], np.float64(1) + np.float64(EXTRAPOLATION) * np.float64(-r)
        )
    levels = step_table.shape[0]
    i = min(int(np.floor(r)), levels - 2)
    t = np.float64(r) - np.float64(i)
    lo, hi = step_table[i], step_table[i + 1]
    return np.add(np.multiply(lo, np.float64(1) - t), np.multiply(hi, t))


class _TableCoder:
    """rANS coding of integer symbols under indexed quantized CDF tables.

    Decoding never lets CompressAI's decoder read outside its buffer. That decoder
    (``rans_interface.cpp``, 1.2.8) reads two 32-bit words to start and at most one word per
    symbol (``Rans64DecAdvance``), except after the escape symbol (the last of a table):
    there the stream itself sets how many 4-bit bypass chunks follow, each of which may read a
    word, so a crafted string could make it read any distance past the end. ``decode``
    therefore runs it with tables whose escape symbol can never be taken (each table is
    lengthened by one entry, so ``max_value`` lies past every reachable symbol, and the
    decoded escape shows as its old index): 2 words + 1 per symbol at most. When no symbol came
    out as an escape, CompressAI's own decoder would have taken exactly the same steps, so the
    result is the same ("guarded"). When one did, the string is decoded by
    ``licstore.rans_checked``: the same algorithm, compiled, with every read checked
    ("checked"; about as fast as CompressAI's decoder, tools/bench_rans.py).
    """

    def __init__(self, quantized_cdf: torch.Tensor, cdf_length: torch.Tensor, offset: torch.Tensor):
        self.cdfs = quantized_cdf.to(torch.int32).tolist()
        self.cdf_length = cdf_length.reshape(-1).to(torch.int32).tolist()
        self.offset = offset.reshape(-1).to(torch.int32).tolist()
        self.n_tables = len(self.cdfs)
        for i, (cdf, n) in enumerate(zip(self.cdfs, self.cdf_length, strict=True)):
            row = cdf[:n]
            ok = 3 <= n <= len(cdf) and row[0] == 0 and row[-1] == 1 << 16
            if not (ok and all(a < b for a, b in zip(row, row[1:]))):
                raise WeightsIntegrityError(f"CDF table {i} is malformed (length {n})")
        # escape disabled: one more entry; symbols stop at the old last one (cdf 2**16)
        self._guarded_cdfs = [cdf[:n] + [1 << 16] for cdf, n in zip(self.cdfs, self.cdf_length)]
        self._guarded_length = [n + 1 for n in self.cdf_length]
        self._escape_value = np.asarray(self.cdf_length, dtype=np.int64) - 2
        self._offset_value = np.asarray(self.offset, dtype=np.int64)
        self._cdf_table: np.ndarray | None = None  # rows for the checked decoder, on first use

    def encode(self, symbols: np.ndarray, indexes: np.ndarray) -> bytes:
        return RansEncoder().encode_with_indexes(
            symbols.reshape(-1).astype(np.int32).tolist(),
            indexes.reshape(-1).astype(np.int32).tolist(),
            self.cdfs,
            self.cdf_length,
            self.offset,
        )

    def decode(self, data: bytes, indexes: np.ndarray) -> np.ndarray:
        flat = indexes.reshape(-1).astype(np.int32)
        n = flat.size
        if n and not (0 <= int(flat.min()) and int(flat.max()) < self.n_tables):
            raise ValueError("CDF indexes out of range")
        data = bytes(data) + bytes(-len(data) % 4)  # whole 32-bit words, as the decoder reads
        idx = flat.tolist()
        # escapes disabled, the decoder reads 2 words, then at most 1 per symbol
        padded = data + bytes(max(0, 4 * (2 + n) - len(data)))
        values = RansDecoder().decode_with_indexes(
            padded, idx, self._guarded_cdfs, self._guarded_length, self.offset
        )
        out = np.asarray(values, dtype=np.int64)
        if n and self._has_escape(out, flat):
            rans_routes["checked"] += 1
            out = self._decode_checked(data, flat)
        else:
            rans_routes["guarded"] += 1
        out = out.reshape(indexes.shape)
        if out.size and np.abs(out).max() > SYMBOL_LIMIT:
            raise CorruptBitstreamError("latent symbols out of range: corrupt base layer")
        return out

    def _has_escape(self, out: np.ndarray, flat: np.ndarray) -> bool:
        """Whether the guarded pass decoded an escape marker (the escape's old index)."""
        return bool(np.any(out - self._offset_value[flat] == self._escape_value[flat]))

    def _decode_checked(self, data: bytes, idx: np.ndarray | list[int]) -> np.ndarray:
        """CompressAI's ``decode_with_indexes``, step for step, with every read checked
        (``licstore.rans_checked``, compiled).

        A valid string is read exactly to its end (the decoder's reads mirror the encoder's
        writes), so a read past it, or more bypass chunks than a 32-bit value has, is corrupt.
        """
        if self._cdf_table is None:
            table = np.zeros((self.n_tables, max(self.cdf_length)), dtype=np.int64)
            for i, (cdf, n) in enumerate(zip(self.cdfs, self.cdf_length, strict=True)):
                table[i, :n] = cdf[:n]
            self._cdf_table = table
        words = np.frombuffer(data + bytes(-len(data) % 4), dtype="<u4")
        out, status = rans_checked.decode(
            words,
            np.asarray(idx, dtype=np.int64),
            self._cdf_table,
            np.asarray(self.cdf_length),
            np.asarray(self.offset),
            _MAX_BYPASS_CHUNKS,
        )
        if status == rans_checked.SHORT:
            raise CorruptBitstreamError("rANS string shorter than its 8-byte initial state")
        if status == rans_checked.PAST_END:
            raise CorruptBitstreamError("rANS string ends before its symbols: corrupt base layer")
        if status == rans_checked.BYPASS_TOO_LONG:
            raise CorruptBitstreamError(
                "escaped latent symbol longer than 32 bits: corrupt base layer"
            )
        return out


class FactorizedCoder(_TableCoder):
    """Codes the hyper-latent ``z`` with the factorized prior's tables (one per channel)."""

    def __init__(self, eb: nn.Module):
        super().__init__(eb._quantized_cdf, eb._cdf_length, eb._offset)
        self.medians = eb.quantiles.detach()[:, 0, 1].float().cpu()  # float32

    def _indexes(self, shape: tuple[int, ...]) -> np.ndarray:
        b, c, h, w = shape
        return np.broadcast_to(np.arange(c, dtype=np.int32)[None, :, None, None], shape)

    def symbols(self, z: torch.Tensor) -> np.ndarray:
        med = self.medians[None, :, None, None]
        return torch.round(z.detach().float().cpu() - med).to(torch.int64).numpy()

    def dequantize(self, symbols: np.ndarray) -> torch.Tensor:
        """Symbols -> z_hat in float32, identically on encoder and decoder."""
        return torch.from_numpy(symbols).float() + self.medians[None, :, None, None]

    def encode(self, symbols: np.ndarray) -> bytes:  # type: ignore[override]
        return super().encode(symbols, self._indexes(symbols.shape))

    def decode(self, data: bytes, shape: tuple[int, ...]) -> np.ndarray:  # type: ignore[override]
        return super().decode(data, np.ascontiguousarray(self._indexes(shape)))


class SortedThresholds:
    """``np.searchsorted(t, s, side="left")`` (how many thresholds lie below each ``s``),
    exactly, for the log-spaced scale tables of Gaussian conditionals, in a third of the time.

    A guess from the logarithm is within one place of the answer whenever every threshold
    lies within a quarter place of its log-uniform position (checked once); one exact float64
    comparison with each neighbour then settles it. Other tables, and non-finite values, go
    to ``np.searchsorted`` itself. The indexes decide how a bitstream is coded: the decoder
    must get them bit-identical, and it does, whatever the logarithm's last bits.
    """

    def __init__(self, t: np.ndarray):
        self.t = np.ascontiguousarray(t, dtype=np.float64)
        n = self.t.size
        self._lo = np.concatenate([[-np.inf], self.t])  # _lo[i] = t[i - 1]
        self._hi = np.concatenate([self.t, [np.inf]])  # _hi[i] = t[i]
        self._fast = n >= 2 and self.t[0] > 0 and bool(np.all(np.diff(self.t) > 0))
        if self._fast:
            log_t = np.log(self.t)
            self._log_t0 = np.float32(log_t[0])
            self._per_log = np.float32((n - 1) / (log_t[-1] - log_t[0]))
            places = (np.log(self.t.astype(np.float32)) - self._log_t0) * self._per_log
            self._fast = bool(np.all(np.abs(places - np.arange(n)) < 0.25))

    def count_below(self, s: np.ndarray) -> np.ndarray:
        if not self._fast or not np.isfinite(s).all():
            return np.searchsorted(self.t, s, side="left")
        with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
            # 0 -> -inf and beyond float32 -> inf are clipped; s < 0 -> nan -> place 0
            u = (np.log(s.astype(np.float32)) - self._log_t0) * self._per_log
        u = np.nan_to_num(u, copy=False, nan=0.0)
        guess = np.clip(np.ceil(u), 0, self.t.size).astype(np.intp)
        return guess + (self._hi[guess] < s) - (self._lo[guess] >= s)


class GaussianCoder(_TableCoder):
    """Codes ``y`` given exact scales/means/steps with the Gaussian conditional's tables."""

    def __init__(self, gc: nn.Module):
        super().__init__(gc._quantized_cdf, gc._cdf_length, gc._offset)
        self.scale_table = gc.scale_table.detach().double().cpu().numpy()
        self._thresholds = SortedThresholds(self.scale_table[:-1])
        self._bits: np.ndarray | None = None  # built on the first estimate
        self._max_value = self._offsets = np.zeros(0, dtype=np.int64)

    def indexes(self, scales: np.ndarray, steps: np.ndarray) -> np.ndarray:
        """Table index per element, as CompressAI's ``build_indexes`` on ``scales / steps``."""
        s = np.divide(scales, steps[None, :, None, None])
        return self._thresholds.count_below(s).astype(np.int32)

    @staticmethod
    def symbols(y: torch.Tensor, means: np.ndarray, steps: np.ndarray) -> np.ndarray:
        u = (y.detach().double().cpu().numpy() - means) / steps[None, :, None, None]
        return np.rint(u).astype(np.int64)

    @staticmethod
    def dequantize(symbols: np.ndarray, means: np.ndarray, steps: np.ndarray) -> torch.Tensor:
        y_hat = np.add(np.multiply(symbols.astype(np.float64), steps[None, :, None, None]), means)
        return torch.from_numpy(y_hat).float()

    def estimate_bits(self, symbols: np.ndarray, indexes: np.ndarray) -> float:
        """Code length of ``symbols`` under the coder's own quantized tables (for rate search).

        Table lookups instead of Gaussian CDFs: the rANS coder's exact cost per symbol,
        escapes included, without running the coder (only its few flush bytes are missing).
        """
        if self._bits is None:
            self._bits, self._max_value = _symbol_bits(self.cdfs, self.cdf_length)
            self._offsets = np.asarray(self.offset, dtype=np.int64)
        idx = indexes.reshape(-1)
        value = symbols.reshape(-1) - self._offsets[idx]
        max_value = self._max_value[idx]
        below, above = value < 0, value >= max_value
        flat = idx.astype(np.intp) * self._bits.shape[1] + np.clip(value, 0, max_value)
        bits = float(self._bits.ravel().take(flat).sum())  # 1-D take: faster than [idx, v]
        escaped = below | above
        if escaped.any():  # CompressAI's bypass: 4-bit chunks of the folded value, counted
            raw = np.where(below, -2 * value - 1, 2 * (value - max_value))[escaped]
            chunks = np.ceil(np.log2(raw.astype(np.float64) + 1) / BYPASS_BITS)
            bits += float((BYPASS_BITS * (chunks // BYPASS_MAX + 1) + BYPASS_BITS * chunks).sum())
        return bits


#: CompressAI's rANS bypass coding of escaped symbols: 4-bit chunks, counts in chunks of 15
BYPASS_BITS, BYPASS_MAX = 4, 15
#: an escaped value is an int32 in CompressAI's decoder: at most 8 chunks of 4 bits
_MAX_BYPASS_CHUNKS = 8


def _symbol_bits(cdfs: list[list[int]], lengths: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Bits per (table, symbol value) of 16-bit quantized CDFs; the last value is the escape."""
    table = np.zeros((len(cdfs), max(lengths) - 1))
    for i, (cdf, n) in enumerate(zip(cdfs, lengths, strict=True)):
        freq = np.diff(np.asarray(cdf[:n], dtype=np.float64))
        table[i, : n - 1] = -np.log2(np.maximum(freq, 1) / 2**16)
    return table, np.asarray(lengths, dtype=np.int64) - 2
