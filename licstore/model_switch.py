"""Rate control by model choice: encode with several models, keep the best bitstream.

Seed 001's rate control: two networks trained at different lambdas; for a target bit rate
the encoder codes with each and keeps the one that meets the target with the best
quality, writing which one it used in the bitstream (the paper's 1-bit flag; here the
container's model field, so decoding needs nothing new). It works for any models,
fixed- or variable-rate, e.g. to pick per image between two architectures.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from . import imageio
from .errors import RateTargetError
from .metrics import psnr as _psnr
from .ratecontrol import BPP_TOLERANCE


def _quality_of(image: Any, data: bytes) -> float:
    """PSNR of the decoded RGB against the (prepared) input RGB."""
    from .codec import decode

    ref = imageio.prepare(image).rgb
    rec = np.asarray(decode(data).convert("RGB"))
    if ref.ndim == 2 or ref.shape[-1] == 1:
        rec = rec[..., 0].reshape(ref.shape)
    return _psnr(ref, rec)


def encode_batch_choosing(
    images: Sequence[Any],
    models: Sequence[str],
    *,
    bpp: float | None,
    quality: int | None,
    psnr: float | None,
    **kwargs: Any,
) -> list[bytes]:
    """Per image, the best of ``models``' bitstreams for the target.

    ``bpp``: the highest decoded PSNR among the bitstreams within the budget (+3%);
    ``psnr``: the smallest bitstream that reaches the target; ``lossless=True``: the
    smallest. ``quality`` levels of different models are not comparable: refused.
    """
    from .codec import encode_batch

    names = list(models)
    if len(names) < 2 or not all(isinstance(n, str) for n in names):
        raise ValueError(f"model= takes a name or a sequence of two or more names, got {models!r}")
    lossless = bool(kwargs.get("lossless"))
    if quality is not None and not lossless:
        raise ValueError(
            "quality= with several models is ambiguous (their levels differ); "
            "give bpp= or psnr= to choose between models"
        )
    if bpp is None and psnr is None and not lossless:
        raise ValueError("choosing between models needs a bpp= or psnr= target")
    images = list(images)
    candidates: list[list[bytes | None]] = []
    failures: list[str] = []
    for name in names:
        try:
            got = encode_batch(images, bpp=bpp, quality=quality, psnr=psnr, model=name, **kwargs)
        except RateTargetError as e:
            # some image is out of this model's reach: code one by one, keep the others
            failures.append(f"{name}: {e}")
            got = []
            for im in images:
                try:
                    got.append(
                        encode_batch(
                            [im], bpp=bpp, quality=quality, psnr=psnr, model=name, **kwargs
                        )[0]
                    )
                except RateTargetError:
                    got.append(None)
        candidates.append(got)
    out: list[bytes] = []
    for i, image in enumerate(images):
        options = [c[i] for c in candidates if c[i] is not None]
        if not options:
            raise RateTargetError(f"image {i}: no model reaches the target ({'; '.join(failures)})")
        if lossless or bpp is None:  # lossless or psnr=: all meet the target, the smallest wins
            out.append(min(options, key=len))
            continue
        pixels = imageio.prepare(image).rgb.shape[:2]
        budget = bpp * pixels[0] * pixels[1] / 8 * (1 + BPP_TOLERANCE)
        within = [d for d in options if len(d) <= budget] or [min(options, key=len)]
        out.append(max(within, key=lambda d: _quality_of(image, d)))
    return out
