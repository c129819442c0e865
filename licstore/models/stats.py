"""Parameter and multiply-accumulate counts per transform (the seed papers' Tables 8-9).

Decoding cost is what a data pipeline pays every epoch, so architectures are compared by
what each side runs: the encoder ``g_a`` (+ ``h_a`` and ``h_s`` for hyperprior models,
which need the entropy parameters to code ``y``) and the decoder (``h_s`` + ``g_s``).
Counts come from torch's own ``FlopCounterMode`` on a forward pass at the given size;
GDN layers are convolutions and count as such.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from .registry import model_class

#: transforms in the order an image passes through them; "context" is a model's
#: ``context_transform(y, hyper)`` (e.g. mshp-ckbd's two passes), run by both sides
TRANSFORMS = ("g_a", "h_a", "h_s", "context", "g_s")


@dataclass(frozen=True)
class TransformStats:
    name: str
    params: int
    macs: int  # multiply-accumulates for one image of the measured size


@dataclass(frozen=True)
class ModelStats:
    architecture: str
    arch_kwargs: dict
    height: int
    width: int
    transforms: tuple[TransformStats, ...]
    params_total: int  # every parameter, entropy models included

    def _sum(self, names: tuple[str, ...], field: str) -> int:
        return sum(getattr(t, field) for t in self.transforms if t.name in names)

    @property
    def encode_macs(self) -> int:
        return self._sum(("g_a", "h_a", "h_s", "context"), "macs")

    @property
    def decode_macs(self) -> int:
        return self._sum(("h_s", "context", "g_s"), "macs")

    @property
    def decode_params(self) -> int:
        return self._sum(("h_s", "context", "g_s"), "params")

    def as_dict(self) -> dict:
        d = asdict(self)
        d.update(
            encode_macs=self.encode_macs,
            decode_macs=self.decode_macs,
            decode_params=self.decode_params,
        )
        return d


def _macs(fn, *args) -> tuple[int, torch.Tensor]:
    with FlopCounterMode(display=False) as counter:
        out = fn(*args)
    return counter.get_total_flops() // 2, out


@torch.no_grad()
def measure(
    model: nn.Module, height: int = 512, width: int = 768, arch_kwargs: dict | None = None
) -> ModelStats:
    """Counts for ``model`` on one ``height`` x ``width`` RGB image (Kodak's size by default)."""
    model = model.eval()
    x = torch.zeros(1, 3, height, width)
    rows: list[TransformStats] = []
    y = z = hyper = None
    for name in TRANSFORMS:
        if name == "context":
            fn = getattr(model, "context_transform", None)
            if fn is None or hyper is None:
                continue
            macs, _ = _macs(fn, y, hyper)
            params = sum(p.numel() for m in model.context_modules() for p in m.parameters())
            rows.append(TransformStats(name, params, macs))
            continue
        module = getattr(model, name, None)
        if not isinstance(module, nn.Module):
            continue
        arg = {"g_a": x, "h_a": y, "h_s": z, "g_s": y}[name]
        if arg is None:
            continue
        macs, out = _macs(module, arg)
        if name == "g_a":
            y = out
        elif name == "h_a":
            z = out
        elif name == "h_s":
            hyper = out
        rows.append(TransformStats(name, sum(p.numel() for p in module.parameters()), macs))
    return ModelStats(
        architecture=getattr(model, "architecture", type(model).__name__),
        arch_kwargs=dict(arch_kwargs or {}),
        height=height,
        width=width,
        transforms=tuple(rows),
        params_total=sum(p.numel() for p in model.parameters()),
    )


def measure_architecture(
    name: str, arch_kwargs: dict | None = None, height: int = 512, width: int = 768
) -> ModelStats:
    """Counts for a registered architecture, randomly initialised (no weights needed)."""
    kwargs = dict(arch_kwargs or {})
    return measure(model_class(name)(**kwargs), height, width, kwargs)


def table(stats: list[ModelStats]) -> str:
    """Markdown table: parameters in millions, MACs in G and per pixel."""
    lines = [
        "| architecture | kwargs | params (M) | decoder params (M) | encode GMAC | decode GMAC "
        "| decode kMAC/pixel | per transform: params M / GMAC |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for s in stats:
        per = ", ".join(f"{t.name} {t.params / 1e6:.2f} / {t.macs / 1e9:.2f}" for t in s.transforms)
        px = s.height * s.width
        lines.append(
            f"| {s.architecture} | `{json.dumps(s.arch_kwargs)}` | {s.params_total / 1e6:.2f} "
            f"| {s.decode_params / 1e6:.2f} | {s.encode_macs / 1e9:.2f} "
            f"| {s.decode_macs / 1e9:.2f} | {s.decode_macs / px / 1e3:.1f} | {per} |"
        )
    return "\n".join(lines)
