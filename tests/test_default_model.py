"""The shipped default model, where compression quality is the point."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import licstore
from licstore.metrics import psnr

SAMPLES = sorted((Path(licstore.__file__).parent / "samples").glob("*.png"))


@pytest.fixture(scope="module")
def samples() -> list[Image.Image]:
    assert SAMPLES, "bundled sample photos are missing"
    return [Image.open(p).convert("RGB") for p in SAMPLES]


def jpeg_psnr_at_or_above(img: Image.Image, n_bytes: int) -> float:
    """PSNR of the smallest-quality JPEG that is at least ``n_bytes`` long (JPEG's best try)."""
    ref = np.asarray(img)
    for q in range(5, 96):
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=q)
        if buf.tell() >= n_bytes:
            return psnr(ref, np.asarray(Image.open(buf).convert("RGB")))
    return float("inf")


def test_default_model_is_shipped():
    assert licstore.models.DEFAULT_MODEL in licstore.models.available()
    net = licstore.models.load()
    assert net.weights_sha256 and net.name == licstore.models.DEFAULT_MODEL


@pytest.mark.parametrize("bpp", [0.5, 1.0])
def test_beats_jpeg_at_equal_size(samples, bpp):
    """At the same number of bytes (JPEG given at least as many), licstore has higher PSNR."""
    for img in samples:
        data = licstore.encode(img, bpp=bpp)
        assert len(data) * 8 / (img.width * img.height) <= bpp * 1.03
        ours = psnr(np.asarray(img), np.asarray(licstore.decode(data)))
        assert ours > jpeg_psnr_at_or_above(img, len(data))


def test_psnr_target_met(samples):
    img = samples[0]
    data = licstore.encode(img, psnr=30.0)
    assert psnr(np.asarray(img), np.asarray(licstore.decode(data))) >= 30.0


def test_quality_levels_increase_rate_and_psnr(samples):
    img = samples[1]
    sizes, psnrs = [], []
    for q in (1, 4, 8):
        data = licstore.encode(img, quality=q)
        sizes.append(len(data))
        psnrs.append(psnr(np.asarray(img), np.asarray(licstore.decode(data))))
    assert sizes == sorted(sizes) and psnrs == sorted(psnrs)
