"""ibfe / ibfe-full (seed 000): FExM, FRM, FEnM and QECM on the variable-rate hyperprior."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import licstore
import licstore.models.ibfe  # noqa: F401  (registers ibfe, ibfe-full)
from licstore.models.ibfe import IBFE, QECM, IBFEFull, fourier_error
from licstore.models.mshp_vr import MeanScaleHyperpriorVR
from licstore.models.registry import model_class
from licstore.models.stats import measure

ROOT = Path(__file__).resolve().parents[1]
ARCHS = ("ibfe", "ibfe-full")


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("s", [2, 4])
def test_shapes(arch, s):
    torch.manual_seed(0)
    model = model_class(arch)(N=8, M=12, s=s).eval()
    for h, w in ((64, 192), (192, 64)):  # odd multiples of 64
        x = torch.rand(1, 3, h, w)
        y, refined = model.g_a.features(x)
        assert y.shape == (1, 12, h // 16, w // 16)
        assert refined.shape == (1, 8, h // s, w // s)
        x_hat, enhanced = model.g_s.features(y)
        assert x_hat.shape == x.shape and enhanced.shape == refined.shape
        out = model(x, torch.tensor([3.0]))
        assert out["x_hat"].shape == x.shape
        assert set(out["likelihoods"]) == {"y", "z"}
        assert out["fenm_loss"].ndim == 0
    # FExM's stacked features: s*s sub-images + the whole image along T
    stacked = model.g_a.fexm(torch.rand(2, 3, 64, 64))
    assert stacked.shape == (2, model.feat, s * s + 1, 64 // s, 64 // s)
    # MACs per transform still measurable, FExM/FRM counted in g_a and FEnM in g_s
    stats = measure(model, 64, 64)
    assert [t.name for t in stats.transforms] == ["g_a", "h_a", "h_s", "g_s"]
    assert all(t.macs > 0 for t in stats.transforms)


def test_sub_image_split_is_invertible():
    from licstore.models.ibfe import _merge, _split

    x = torch.rand(2, 3, 16, 24)
    sub = _split(x, 2)
    assert sub.shape == (8, 3, 8, 12)
    assert torch.equal(sub[1], x[0, :, 0::2, 1::2])  # sub-image (0, 1) of image 0
    assert torch.equal(_merge(sub, 2), x)


def test_bad_sub_image_factor_is_refused():
    with pytest.raises(ValueError, match="s must be"):
        model_class("ibfe")(N=8, M=8, s=3)


def test_fourier_series_approximates_the_rounding_error():
    y = torch.linspace(-3, 3, 60001, dtype=torch.float64)
    away = (y - y.floor() - 0.5).abs() > 0.1  # away from the jumps at half-integers
    exact = y - torch.round(y)
    errors = [float((fourier_error(y, k) - exact)[away].abs().max()) for k in (1, 2, 5, 20)]
    assert errors == sorted(errors, reverse=True) and errors[-1] < errors[0] / 4
    assert errors[2] < 0.1  # K = 5, the paper's choice
    # sign and scale: e(0.25) = +0.25, e(-0.2) = -0.2
    assert math.isclose(float(fourier_error(torch.tensor(0.25), 50)), 0.25, abs_tol=0.01)
    assert math.isclose(float(fourier_error(torch.tensor(-0.2), 50)), -0.2, abs_tol=0.01)


@pytest.mark.parametrize("K", [1, 5, 12])
def test_encoder_compensation_never_changes_the_coded_symbols(K):
    q = QECM(3, K)
    with torch.no_grad():
        q.enc_theta.copy_(torch.tensor([-20.0, 0.0, 20.0]))  # a = 0, 1/4, ~1/2
    u = torch.linspace(-4, 4, 40001)
    u = u[u - u.floor() != 0.5][None, None, :, None].expand(1, 3, -1, 1)  # ties: either way
    assert torch.equal(torch.round(q.compensate(u)), torch.round(u))


def test_decoder_noise_is_reproducible_and_off_by_default():
    assert QECM(4).draw_noise((1, 4, 3, 3), reproducible=True) is None
    q = QECM(4, noise=0.2)
    a = q.draw_noise((1, 4, 3, 3), reproducible=True)
    b = q.draw_noise((1, 4, 3, 3), reproducible=True)
    assert torch.equal(a, b) and a.abs().max() <= 0.5 and a.std() > 0


@pytest.mark.parametrize("arch", ARCHS)
def test_one_training_step(arch):
    torch.manual_seed(0)
    model = model_class(arch)(N=8, M=12, qecm_noise=0.1).train()
    x = torch.rand(2, 3, 64, 64)
    out = model(x, torch.tensor([1.0, 6.0]))
    mse = (out["x_hat"] - x).pow(2).mean()
    bpp = sum(-lk.log2().sum() for lk in out["likelihoods"].values()) / (2 * 64 * 64)
    loss = 0.01 * 255**2 * mse + bpp + out["fenm_loss"]
    assert torch.isfinite(loss)
    loss.backward()
    for prefix in ("g_a.fexm.", "g_a.frm.", "g_s.fenm.", "g_s.inv_fexm.", "qecm."):
        grads = [p.grad for n, p in model.named_parameters() if n.startswith(prefix)]
        assert grads and all(g is not None for g in grads), prefix
        assert sum(float(g.abs().sum()) for g in grads) > 0, prefix
    assert float(model.qecm.enc_theta.grad.abs().sum()) > 0
    assert float(model.qecm.dec_weight.grad.abs().sum()) > 0


@pytest.fixture(scope="module")
def tiny_ibfe(tmp_path_factory) -> str:
    """Registered tiny ibfe with QECM dither on and non-zero decoder weights (exercised)."""
    from conftest import make_tiny_weights

    path = tmp_path_factory.mktemp("w") / "ibfe.safetensors"
    kwargs = {"N": 8, "M": 12, "qecm_noise": 0.1}
    return licstore.models.register_weights(
        make_tiny_weights(path, "tiny-ibfe", architecture="ibfe", kwargs=kwargs)
    )


def test_codec_round_trip(tiny_ibfe, photo):
    data = licstore.encode(photo, quality=3, model=tiny_ibfe)
    assert licstore.info(data).model == tiny_ibfe
    back = np.asarray(licstore.decode(data))
    assert back.shape == photo.shape
    assert np.array_equal(np.asarray(licstore.decode(data)), back)
    batch = licstore.decode_batch([data, data])
    assert all(np.array_equal(np.asarray(im), back) for im in batch)
    # lossless layer: its prediction is a float64 synthesis of the compensated latents
    exact = licstore.encode(photo, quality=3, model=tiny_ibfe, lossless=True)
    assert np.array_equal(np.asarray(licstore.decode(exact)), photo)


def test_encoder_and_decoder_feed_g_s_the_same_latents(tiny_ibfe):
    net = licstore.models.load(tiny_ibfe)
    x = torch.rand(1, 3, 64, 128)
    a = net.analyze(x)
    rate = net.quality_to_rate(5)
    y_enc = net.reconstruct_latents(a, 0, rate)
    y_dec = net.decode_latents(net.encode_latents(a, 0, rate), 64, 128, rate)
    assert torch.equal(y_enc, y_dec)
    # the decoder block really acts: it differs from the backbone's exact y_hat
    plain = super(type(net), net).reconstruct_latents(a, 0, rate)
    assert not torch.equal(y_dec, plain)


def test_full_model_has_the_cascaded_blocks():
    from licstore.models.ibfe import CascadedRes3D, DenseBlock

    full = IBFEFull(N=8, M=12)
    tiny = model_class("ibfe")(N=8, M=12)
    assert any(isinstance(m, CascadedRes3D) for m in full.g_a.modules())
    assert not any(isinstance(m, CascadedRes3D) for m in tiny.g_a.modules())
    assert sum(isinstance(m, DenseBlock) for m in full.g_s.modules()) == 2
    assert sum(isinstance(m, DenseBlock) for m in tiny.g_s.modules()) == 1
    n_full = sum(p.numel() for p in full.parameters())
    assert n_full > sum(p.numel() for p in tiny.parameters())


def test_train_tool_runs_ibfe(tmp_path, load_tool):
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        img = rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)
        Image.fromarray(img).save(photos / f"p{i}.png")
    run = tmp_path / "run"
    load_tool("train").main([
        "--model", "ibfe", "--arch-kwargs", json.dumps({"N": 8, "M": 12}),
        "--data", str(photos), "--kodak", str(tmp_path / "no-kodak"), "--out", str(run),
        "--batch", "2", "--crop", "64", "--warmup", "2", "--threads", "1",
        "--hours", str(1.5 / 3600), "--fenm-weight", "1.0", "--fenm-fraction", "0.5",
    ])  # fmt: skip
    ck = torch.load(run / "last.pt", weights_only=True)
    assert ck["arch"] == "ibfe" and ck["step"] > 0
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())


def test_warm_start_from_the_backbone_keeps_its_transform_stages():
    """``--init-from`` mshp-vr weights: the backbone's middle stages land in g_a/g_s.rest."""
    from licstore.models.weights import warm_start

    backbone = MeanScaleHyperpriorVR(N=16, M=24)
    model = IBFE(N=16, M=24)
    loaded, total = warm_start(model, backbone.state_dict())
    state = model.state_dict()
    assert torch.equal(state["g_a.rest.1.weight"], backbone.g_a[2].weight)
    assert torch.equal(state["g_a.rest.5.weight"], backbone.g_a[6].weight)  # conv N -> M
    assert torch.equal(state["g_s.rest.0.weight"], backbone.g_s[0].weight)
    assert torch.equal(state["h_s.0.conv.weight"], backbone.h_s[0].conv.weight)
    # the first analysis / last synthesis layer have no place here: FExM and FEnM start new
    assert "g_a.0.weight" not in state and 0 < loaded < total
    assert model.backbone_key("g_s.6.weight") == "g_s.6.weight"


@pytest.mark.parametrize(("fenm", "qecm"), [(False, False), (True, False), (False, True)])
def test_ablation_variants_train_and_code(fenm, qecm, photo, tmp_path):
    """Table V's steps: backbone + FExM/FRM, + FEnM, + QECM are configurations of ``ibfe``."""
    from licstore.models.weights import export

    torch.manual_seed(0)
    kwargs = {"N": 8, "M": 12, "fenm": fenm, "qecm": qecm}
    model = model_class("ibfe")(**kwargs).train()
    names = [n for n, _ in model.named_parameters()]
    assert any(n.startswith("g_s.fenm.") for n in names) == fenm
    assert any(n.startswith("qecm.") for n in names) == qecm
    out = model(torch.rand(2, 3, 64, 64), torch.tensor([1.0, 5.0]))
    assert ("fenm_loss" in out) == fenm
    loss = out["x_hat"].pow(2).mean() - sum(lk.log2().mean() for lk in out["likelihoods"].values())
    loss.backward()
    model.eval().freeze()
    path = tmp_path / "variant.safetensors"
    name = f"tiny-ibfe-{int(fenm)}{int(qecm)}"
    export(model, path, {"name": name, "architecture": "ibfe", "arch_kwargs": json.dumps(kwargs)})
    name = licstore.models.register_weights(path)
    data = licstore.encode(photo, quality=4, model=name)
    assert np.asarray(licstore.decode(data)).shape == photo.shape
