"""Encoder-side latent refinement: spend encode time to buy bytes (``effort=``).

The analysis transform predicts latents in one pass (amortized inference); for any single
image, better latents exist for the frozen decoder and entropy model. The decoder only sees
symbols, so whatever ``y`` and ``z`` the encoder settles on is a valid bitstream: the format,
the decoder and old bitstreams stay as they are.

Method: stochastic Gumbel annealing (SGA; Yang, Bamler, Mandt, NeurIPS 2020). ``y`` (in
units of its quantization step at the target rate) and ``z`` are optimised with Adam for the
training loss ``lambda * 255^2 * MSE + bpp``, where rounding is replaced by a stochastic soft
rounding whose temperature anneals towards hard rounding; a short final phase optimises the
hard-rounded loss (straight-through), because the soft loss reads better than its rounding.
During optimisation the entropy parameters come from a float copy of the exact fixed-point
hyper-synthesis; the result is re-coded exactly as ``analyze`` does (``z`` symbols -> exact
``h_s`` -> scales and means), and kept only if its real (coded-size, decoded-MSE) loss beats
the amortized latents'.

Reproducible: the noise comes from a ``torch.Generator`` seeded per call, so the same image,
rate, effort and machine give the same bytes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .entropy import FRAC_BITS
from .errors import EffortError
from .models.mshp_vr import LAMBDAS, AnalyzedBatch, MeanScaleHyperpriorVR
from .ratecontrol import MAX_EFFORT, check_effort

__all__ = ["MAX_EFFORT", "SCHEDULES", "Schedule", "refine", "require_support", "supports"]


@dataclass(frozen=True)
class Schedule:
    """How hard one refinement works.

    ``iterations`` soft (SGA) steps with the temperature annealed exponentially from
    ``tau_start`` to ``tau_end``, then ``hard_iterations`` straight-through steps on the
    hard-rounded loss. ``lr``: Adam's step in units of the quantization step; it decays
    (cosine) to ``lr * lr_end`` over the whole run. ``refine_z``: optimise ``z`` too (through
    the float hyper-synthesis) or keep the amortized one.
    """

    iterations: int
    hard_iterations: int = 0
    lr: float = 0.02
    lr_end: float = 0.1
    tau_start: float = 0.5
    tau_end: float = 0.05
    refine_z: bool = True
    seed: int = 0


#: ``effort=k`` runs ``SCHEDULES[k - 1]``; effort 0 is the amortized encoder alone.
#: Chosen on Kodak crops (BENCHMARKS.md, "Encoder-side latent refinement"): Adam's lr 0.02
#: beat 0.01 and 0.05, refining z with y beat y alone (-6.2% vs -4.2% RD loss), and 120
#: steps kept twice the gain of 50.
SCHEDULES: tuple[Schedule, ...] = (
    Schedule(iterations=40, hard_iterations=10),
    Schedule(iterations=100, hard_iterations=20),
)
assert len(SCHEDULES) == MAX_EFFORT

#: the methods refinement relies on; a model that overrides any of them codes latents
#: differently (context models, latent post-processing) and is not supported
_CONTRACT = ("analyze", "_y_symbols", "reconstruct_latents", "decode_latents", "synthesize")


def supports(net) -> bool:
    """Whether ``net`` codes its latents exactly as ``mshp-vr`` does (what refinement needs)."""
    base = MeanScaleHyperpriorVR
    return isinstance(net, base) and all(
        getattr(type(net), name) is getattr(base, name) for name in _CONTRACT
    )


def require_support(net, effort: int) -> None:
    """``EffortError`` when ``effort`` > 0 and ``net`` cannot refine its latents."""
    if effort and not supports(net):
        raise EffortError(
            f"effort={effort}: model {getattr(net, 'name', type(net).__name__)} does not support "
            "latent refinement (mshp-vr does); use effort=0 with it"
        )


def lagrangian(net, rate: int) -> float:
    """``lambda`` of a stored rate: the model's interpolation of LAMBDAS, extrapolated
    geometrically below level 0 (where the step is extrapolated too)."""
    r = rate / net.RATE_ONE - net.RATE_OFFSET
    if r >= 0:
        return float(net.lambdas(torch.tensor([float(r)]))[0])
    return LAMBDAS[0] * (LAMBDAS[1] / LAMBDAS[0]) ** r


class _FloatHyperSynthesis:
    """Differentiable float copy of the exact fixed-point ``h_s`` (the shipped weights keep
    ``h_s`` only in fixed point): the entropy parameters ``z`` steers while it is optimised."""

    def __init__(self, exact, device: torch.device):
        one = float(1 << FRAC_BITS)
        self.layers = [
            (
                (c.weight / one).float().to(device),
                (c.bias / one).float().to(device),
                c.upsample,
                c.relu,
            )
            for c in exact.layers
        ]

    def __call__(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = z
        for w, b, up, relu in self.layers:
            x = F.conv2d(x, w, b, padding=w.shape[-1] // 2)
            if up > 1:
                x = F.pixel_shuffle(x, up)
            if relu:
                x = F.relu(x)
        scales, means = x.chunk(2, 1)
        return scales, means


def _soft_round(u: torch.Tensor, tau: float, gen: torch.Generator) -> torch.Tensor:
    """One SGA sample: ``floor(u)`` plus a relaxed Bernoulli choice of rounding up.

    The logit of rounding up is ``(atanh(frac) - atanh(1 - frac)) / tau``; a two-class
    Gumbel-softmax at temperature ``tau`` is a sigmoid of (logit + logistic noise) / tau.
    """
    floor = torch.floor(u)
    frac = (u - floor).clamp(1e-5, 1 - 1e-5)
    logit = (torch.atanh(frac) - torch.atanh(1 - frac)) / tau
    noise = torch.rand(u.shape, generator=gen).clamp_(1e-7, 1 - 1e-7).to(u.device)
    logistic = torch.log(noise) - torch.log1p(-noise)
    return floor + torch.sigmoid((logit + logistic) / tau)


def _hard_round(u: torch.Tensor) -> torch.Tensor:
    """Rounding with the identity gradient (straight-through)."""
    return u + (torch.round(u) - u).detach()


class _Objective:
    """``lambda * 255^2 * MSE + bpp`` of relaxed latents, on the image's own pixels."""

    def __init__(self, net, x: torch.Tensor, size: tuple[int, int], rate: int, bf16: bool):
        self.net, self.bf16 = net, bf16
        self.h, self.w = size
        self.x = x[:, :, : self.h, : self.w].float()
        self.lam = lagrangian(net, rate)
        dev = x.device
        self.step = torch.from_numpy(net._steps(rate)).float()[None, :, None, None].to(dev)
        self.h_s = _FloatHyperSynthesis(net.exact_h_s, dev)
        self.medians = net.z_coder.medians[None, :, None, None].to(dev)
        self.pixels = self.h * self.w

    def __call__(self, v, z, round_y, round_z) -> tuple[torch.Tensor, float, float]:
        net = self.net
        z_q = round_z(z - self.medians) + self.medians
        eb = net.entropy_bottleneck
        flat = z_q.permute(1, 0, 2, 3).reshape(z_q.shape[1], 1, -1)
        z_lik = eb.likelihood_lower_bound(eb._likelihood(flat)[0])
        scales, means = self.h_s(z_q)
        u_q = round_y(v - means / self.step)
        gc = net.gaussian_conditional
        y_lik = gc.likelihood_lower_bound(gc._likelihood(u_q, scales / self.step))
        bits = -(torch.log2(y_lik).sum() + torch.log2(z_lik).sum())
        y_q = (u_q * self.step + means).contiguous(memory_format=torch.channels_last)
        with torch.autocast(y_q.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            x_hat = net.g_s(y_q)
        mse = F.mse_loss(x_hat.float()[:, :, : self.h, : self.w], self.x)
        bpp = bits / self.pixels
        return self.lam * 255**2 * mse + bpp, mse.item(), bpp.item()


def coded_loss(net, a: AnalyzedBatch, i: int, x: torch.Tensor, size, rate: int) -> float:
    """The real loss of entry ``i`` at ``rate``: coded size (table bits) and decoded MSE."""
    h, w = size
    bpp = net.estimate_bytes(a, i, rate) * 8 / (h * w)
    with torch.no_grad():
        y_hat = net.reconstruct_latents(a, i, rate).to(x.device)
        x_hat = net.synthesize(y_hat)[:, :, :h, :w]
        x_hat = x_hat.mul(255).round().div(255)  # the decoder's uint8 pixels
        mse = float(F.mse_loss(x_hat, x[:, :, :h, :w].float()))
    return lagrangian(net, rate) * 255**2 * mse + bpp


def refine(
    net,
    x: torch.Tensor,
    a: AnalyzedBatch,
    i: int,
    rate: int,
    effort: int | Schedule,
    *,
    size: tuple[int, int] | None = None,
    bf16: bool = False,
    log: list | None = None,
) -> AnalyzedBatch:
    """Refined latents of image ``i`` of ``a`` for ``rate``: a one-image ``AnalyzedBatch``.

    ``x``: that image as analysed ([1, 3, H, W] in [0, 1], padded); ``size``: its real
    (height, width), the pixels the loss counts (default: all). ``effort``: 1..MAX_EFFORT
    or a ``Schedule``. ``bf16``: the synthesis under bf16 autocast (faster with AMX;
    the result is still coded exactly). ``log``: gets (iteration, loss, mse, bpp) tuples.
    The amortized latents come back unchanged when refinement does not lower the real loss.
    """
    require_support(net, 1)
    if not isinstance(effort, Schedule):
        if not check_effort(effort):
            raise EffortError("effort=0 means no refinement: code the amortized latents")
        effort = SCHEDULES[effort - 1]
    schedule = effort
    size = size or tuple(x.shape[-2:])
    x = x[i : i + 1] if x.shape[0] > 1 else x
    own = AnalyzedBatch(
        a.y[i : i + 1], a.z_strings[i : i + 1], a.scales[i : i + 1], a.means[i : i + 1]
    )
    obj = _Objective(net, x, size, rate, bf16)
    gen = torch.Generator().manual_seed(schedule.seed)
    with torch.enable_grad():
        y0 = own.y.float().to(x.device)
        v = (y0 / obj.step).clone().requires_grad_(True)
        with torch.no_grad():
            z0 = net.h_a(y0).float()
        z = z0.clone().requires_grad_(schedule.refine_z)
        params = [v, z] if schedule.refine_z else [v]
        opt = torch.optim.Adam(params, lr=schedule.lr)
        total = schedule.iterations + schedule.hard_iterations
        decay = math.log(schedule.tau_end / schedule.tau_start) / max(schedule.iterations - 1, 1)
        for t in range(total):
            for group in opt.param_groups:  # cosine decay to lr * lr_end
                c = 0.5 * (1 + math.cos(math.pi * t / max(total - 1, 1)))
                group["lr"] = schedule.lr * (schedule.lr_end + (1 - schedule.lr_end) * c)
            if t < schedule.iterations:
                tau = schedule.tau_start * math.exp(decay * t)

                def round_y(u, tau=tau):
                    return _soft_round(u, tau, gen)

                round_z = round_y if schedule.refine_z else torch.round
            else:
                round_y = round_z = _hard_round
            loss, mse, bpp = obj(v, z, round_y, round_z)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if log is not None:
                log.append((t, loss.item(), mse, bpp))
    refined = _recode(net, (v.detach() * obj.step).cpu(), z.detach().cpu())
    if coded_loss(net, refined, 0, x, size, rate) < coded_loss(net, own, 0, x, size, rate):
        return refined
    return own


def _recode(net, y: torch.Tensor, z: torch.Tensor) -> AnalyzedBatch:
    """Exact coding of refined latents, as ``analyze`` codes its own: ``z`` symbols, then
    the exact ``h_s`` for scales and means (what the decoder will compute)."""
    z_sym = net.z_coder.symbols(z)
    scales, means = net.exact_h_s(net.z_coder.dequantize(z_sym))
    return AnalyzedBatch(y.float(), [net.z_coder.encode(z_sym)], scales, means)
