"""Fast tests of the quality metrics, BD computations and a tiny RD-evaluation smoke test."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from licstore import rd
from licstore.metrics import bd_psnr, bd_rate, ms_ssim, psnr

RATES = [0.12, 0.25, 0.5, 1.0, 2.0]
PSNRS = [27.0, 30.1, 33.4, 36.9, 40.2]
METHODS = ["pchip", "cubic"]


def _img(h: int = 64, w: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_psnr_identical_is_inf() -> None:
    a = _img()
    assert psnr(a, a.copy()) == math.inf
    assert psnr(Image.fromarray(a), Image.fromarray(a)) == math.inf


def test_psnr_constant_offset() -> None:
    a = np.full((16, 16, 3), 100, dtype=np.uint8)
    b = a + 1  # MSE = 1 -> 10 log10(255^2) = 48.13 dB; uint8 arithmetic must not wrap
    assert psnr(a, b) == pytest.approx(48.1308, abs=1e-3)
    assert psnr(b, a) == pytest.approx(48.1308, abs=1e-3)
    assert psnr(Image.fromarray(a), Image.fromarray(b)) == pytest.approx(48.1308, abs=1e-3)


def test_psnr_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="shapes"):
        psnr(_img(8, 8), _img(8, 9))


def test_ms_ssim_small_image_is_nan() -> None:
    a = _img(64, 64)
    assert math.isnan(ms_ssim(a, a))


def test_ms_ssim_identical_is_one() -> None:
    a = _img(176, 176)
    assert ms_ssim(a, a) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_bd_same_curve_is_zero(method: str) -> None:
    assert bd_rate(RATES, PSNRS, RATES, PSNRS, method=method) == pytest.approx(0.0, abs=1e-9)
    assert bd_psnr(RATES, PSNRS, RATES, PSNRS, method=method) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("method", METHODS)
def test_bd_rate_halved(method: str) -> None:
    half = [r / 2 for r in RATES]
    assert bd_rate(RATES, PSNRS, half, PSNRS, method=method) == pytest.approx(-50.0, abs=1e-6)
    assert bd_rate(half, PSNRS, RATES, PSNRS, method=method) == pytest.approx(100.0, abs=1e-6)
    # Half the rate for the same quality is a gain in quality at equal rate.
    assert bd_psnr(RATES, PSNRS, half, PSNRS, method=method) > 0


@pytest.mark.parametrize("method", METHODS)
def test_bd_psnr_constant_shift(method: str) -> None:
    better = [p + 0.5 for p in PSNRS]
    assert bd_psnr(RATES, PSNRS, RATES, better, method=method) == pytest.approx(0.5, abs=1e-9)


def test_bd_point_order_does_not_matter() -> None:
    order = [3, 0, 4, 1, 2]
    r = [RATES[i] / 1.5 for i in order]
    p = [PSNRS[i] for i in order]
    assert bd_rate(RATES, PSNRS, r, p) == pytest.approx(100 / 1.5 - 100, abs=1e-6)


@pytest.mark.parametrize("method", METHODS)
def test_bd_no_overlap_raises(method: str) -> None:
    high = [p + 20 for p in PSNRS]
    with pytest.raises(ValueError, match="do not overlap"):
        bd_rate(RATES, PSNRS, RATES, high, method=method)
    far = [r * 1000 for r in RATES]
    with pytest.raises(ValueError, match="do not overlap"):
        bd_psnr(RATES, PSNRS, far, PSNRS, method=method)


def test_bd_too_few_points() -> None:
    with pytest.raises(ValueError, match="at least 4"):
        bd_rate(RATES[:3], PSNRS[:3], RATES, PSNRS, method="cubic")
    with pytest.raises(ValueError, match="at least 2"):
        bd_rate(RATES[:1], PSNRS[:1], RATES, PSNRS, method="pchip")
    # pchip works with 2 points (a straight segment) as long as the curves overlap.
    assert bd_rate(RATES[1:3], PSNRS[1:3], RATES, PSNRS) == pytest.approx(0.0, abs=2.0)


def test_bd_bad_input() -> None:
    with pytest.raises(ValueError, match="unknown BD method"):
        bd_rate(RATES, PSNRS, RATES, PSNRS, method="spline")
    with pytest.raises(ValueError, match="positive"):
        bd_rate([0.0, *RATES[1:]], PSNRS, RATES, PSNRS)


def test_evaluate_smoke(tmp_path) -> None:
    # Smooth synthetic image: compressible, so quality visibly changes rate.
    y, x = np.mgrid[0:64, 0:64]
    arr = np.stack([x * 4, y * 4, (x + y) * 2], axis=-1).astype(np.uint8)
    qualities = {"jpeg": [20, 80], "webp": [20, 80]}
    result = rd.evaluate(
        [("synthetic", Image.fromarray(arr))], ["jpeg", "webp"], qualities, log=None
    )
    assert result["images"] == ["synthetic"]
    assert set(result["codecs"]) == {"jpeg", "webp"}
    for entry in result["codecs"].values():
        pts = entry["points"]
        assert [p["quality"] for p in pts] == [20, 80]
        assert pts[0]["bpp"] < pts[1]["bpp"]
        assert pts[0]["psnr"] < pts[1]["psnr"]
        for p in pts:
            assert math.isnan(p["ms_ssim"])  # 64x64 is below the MS-SSIM minimum
            assert p["enc_s"] >= 0 and p["dec_s"] >= 0
            assert p["per_image"][0]["bytes"] * 8 / 64**2 == pytest.approx(p["bpp"])
    table = rd.format_bd_markdown(result, anchors=("webp",))
    assert "| jpeg |" in table and "anchor" in table
    path = rd.save_results(result, tmp_path / "rd.json")
    back = rd.load_results(path)
    for name, entry in result["codecs"].items():
        for p, q in zip(entry["points"], back["codecs"][name]["points"], strict=True):
            assert q["bpp"] == pytest.approx(p["bpp"])
            assert math.isnan(q["ms_ssim"])  # stored as null, read back as NaN


def test_evaluate_skips_unavailable_licstore_model() -> None:
    msgs: list[str] = []
    img = Image.fromarray(_img(32, 32))
    result = rd.evaluate([img], ["licstore:no-such-model"], log=msgs.append)
    assert result["codecs"] == {}
    assert "licstore:no-such-model" in result["skipped"]
    assert any("not available, skipping" in m for m in msgs)


def test_unknown_codec() -> None:
    with pytest.raises(ValueError, match="unknown codec"):
        rd.get_codec("jpeg2000")
