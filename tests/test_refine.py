"""Encoder-side latent refinement (``effort=``): it must lower the real RD loss, stay
reproducible, decode like any bitstream, and leave effort 0 exactly as before."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import licstore
from licstore import cli, codec, container, refine
from licstore.errors import EffortError
from licstore.metrics import psnr
from licstore.refine import Schedule

SAMPLES = licstore.__path__[0] + "/samples"
#: small enough for tests: the plumbing only needs refinement to run
TINY_SCHEDULES = (Schedule(3, 1), Schedule(4, 2))


@pytest.fixture
def crop() -> np.ndarray:
    """A real photo crop (128 x 128, no padding: the whole image enters the loss)."""
    img = np.asarray(Image.open(f"{SAMPLES}/astronaut.png").convert("RGB"))
    return np.ascontiguousarray(img[40:168, 64:192])


@pytest.fixture
def quick(monkeypatch):
    monkeypatch.setattr(refine, "SCHEDULES", TINY_SCHEDULES)


def _real_loss(net, data: bytes, img: np.ndarray) -> tuple[float, float, float]:
    """(lambda * 255^2 * MSE + bpp, bpp, PSNR) of a bitstream: its bytes, its decoded pixels."""
    rec = np.asarray(licstore.decode(data, precision="fp32")).astype(np.float64)
    mse = float(np.mean((rec - img) ** 2)) / 255**2
    bpp = len(data) * 8 / (img.shape[0] * img.shape[1])
    lam = refine.lagrangian(net, container.unpack(data).rate)
    return lam * 255**2 * mse + bpp, bpp, psnr(img, rec.astype(np.uint8))


def test_refinement_lowers_the_real_rd_loss(crop):
    net = licstore.models.load("mshp-vr")
    x = codec._to_tensor([crop], net.downsampling, torch.device("cpu"))
    a = net.analyze(x)
    rate = net.quality_to_rate(4)
    log: list = []
    better = refine.refine(net, x, a, 0, rate, Schedule(20, 5), log=log)
    assert len(log) == 25
    prep = licstore.imageio.prepare(crop)
    before = codec._bitstream(net, prep, rate, net.encode_latents(a, 0, rate))
    after = codec._bitstream(net, prep, rate, net.encode_latents(better, 0, rate))
    (l0, b0, p0), (l1, b1, p1) = _real_loss(net, before, crop), _real_loss(net, after, crop)
    assert l1 < 0.99 * l0, (
        f"loss {l0:.4f} -> {l1:.4f} ({b0:.3f}->{b1:.3f} bpp, {p0:.2f}->{p1:.2f} dB)"
    )


def test_effort_zero_is_the_plain_encoder(crop):
    net = licstore.models.load("mshp-vr")
    x = codec._to_tensor([crop], net.downsampling, torch.device("cpu"))
    a = net.analyze(x)
    rate = net.quality_to_rate(3)
    plain = codec._bitstream(
        net, licstore.imageio.prepare(crop), rate, net.encode_latents(a, 0, rate)
    )
    assert licstore.encode(crop, quality=3, effort=0, precision="fp32") == licstore.encode(
        crop, quality=3, precision="fp32"
    )
    assert licstore.encode(crop, quality=3, effort=0, precision="fp32") == plain


def test_refined_bytes_are_reproducible_and_differ_from_plain(crop, quick):
    a = licstore.encode(crop, quality=4, effort=2)
    b = licstore.encode(crop, quality=4, effort=2)
    batch = licstore.encode_batch([crop, crop[:64]], quality=4, effort=2)
    assert a == b == batch[0]
    assert a != licstore.encode(crop, quality=4)  # refinement changed the latents
    assert np.asarray(licstore.decode(a)).shape == crop.shape


@pytest.mark.parametrize("bpp", [0.4, 1.0])
def test_bpp_target_holds_with_refinement(crop, quick, bpp):
    data = licstore.encode(crop, bpp=bpp, effort=2)
    assert len(data) * 8 / crop[..., 0].size <= bpp * 1.03
    assert len(data) * 8 / crop[..., 0].size >= bpp * 0.8


def test_psnr_target_holds_with_refinement(crop, quick):
    data = licstore.encode(crop, psnr=30, effort=1)
    assert psnr(crop, np.asarray(licstore.decode(data))) >= 30 - 0.1  # decode precision


@pytest.mark.parametrize("effort", [-1, 3, 1.5, True, "1", None])
def test_effort_out_of_range_is_a_typed_error(crop, effort):
    with pytest.raises(EffortError):
        licstore.encode(crop, effort=effort)
    with pytest.raises(EffortError):
        licstore.LICImage(effort=effort)


def test_models_without_refinement_refuse_effort(crop):
    net = licstore.models.load("mshp-ckbd")
    assert refine.supports(licstore.models.load("mshp-vr")) and not refine.supports(net)
    with pytest.raises(EffortError, match="mshp-ckbd"):
        licstore.encode(crop, model="mshp-ckbd", effort=1)
    assert licstore.encode(crop, model="mshp-ckbd", effort=0)


def test_licimage_and_cli_pass_effort_through(tmp_path, crop, quick):
    feature = licstore.LICImage(quality=4, effort=2)
    stored = feature.encode_example(crop)
    assert stored["bytes"] == licstore.encode(crop, quality=4, effort=2)
    assert stored["bytes"] != licstore.encode(crop, quality=4)
    assert "effort=2" in feature.settings().cache_id()
    assert feature.settings().cache_id() != licstore.LICImage(quality=4).settings().cache_id()
    src = tmp_path / "a.png"
    Image.fromarray(crop).save(src)
    out = tmp_path / "a.lic"
    args = ["compress", str(src), "-o", str(out), "--quality", "4", "-q"]
    assert cli.main([*args, "--effort", "2"]) == 0
    assert out.read_bytes() == stored["bytes"]
    assert cli.main([*args, "--force", "--effort", "9"]) == 1  # EffortError, reported


def test_feature_serialises_effort_only_when_set():
    datasets = pytest.importorskip("datasets")
    plain = datasets.Features({"image": licstore.LICImage(bpp=0.3)}).to_dict()["image"]
    assert "effort" not in plain
    d = datasets.Features({"image": licstore.LICImage(bpp=0.3, effort=2)}).to_dict()["image"]
    assert d["effort"] == 2
    back = datasets.Features.from_dict(json.loads(json.dumps({"image": d})))
    assert back["image"] == licstore.LICImage(bpp=0.3, effort=2)


def test_refined_bitstreams_decode_the_same_across_processes_threads_and_precision():
    """As ``test_determinism``: encode (refined, shipped model) in one process, decode in two
    others (threads, batch neighbours, bf16 synthesis, float64 exact kernel)."""
    from test_determinism import DECODE, ENCODE, _run

    weights = str(licstore.models._resolve("mshp-vr", None)[0])
    encode = ENCODE.replace(
        "data = licstore.encode(img.astype(np.uint8), model=name, quality=6)",
        "from licstore import refine\n"
        "refine.SCHEDULES = (refine.Schedule(6, 2),) * 2\n"
        "data = licstore.encode(img.astype(np.uint8), model=name, quality=6, effort=1)\n"
        "assert data != licstore.encode(img.astype(np.uint8), model=name, quality=6)",
    )
    assert encode != ENCODE
    data = _run(encode, weights)
    assert data == _run(encode, weights)  # same machine, same bytes
    a = json.loads(_run(DECODE, weights, "1", "1", "fp32", stdin=data))
    b = json.loads(_run(DECODE, weights, "2", "2", "bf16", stdin=data, float64_kernel=True))
    assert a["latents"] == b["latents"]
    diff = np.array(a["pixels"], np.int16) - np.array(b["pixels"], np.int16)
    assert float(np.mean(diff.astype(np.float64) ** 2)) < 1.0
