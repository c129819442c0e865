"""mshp-ckbd: the checkerboard context model, exact in both passes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import licstore
from licstore.errors import CorruptBitstreamError
from licstore.models.mshp_ckbd import CheckerboardConv, CheckerboardHyperpriorVR, anchor_mask
from licstore.models.mshp_vr import MeanScaleHyperpriorVR


@pytest.fixture(scope="module")
def tiny_ckbd(tmp_path_factory) -> str:
    from licstore.models.weights import export

    torch.manual_seed(0)
    kwargs = {"N": 16, "M": 24}
    model = CheckerboardHyperpriorVR(**kwargs).eval()
    _wake(model)
    model.freeze()
    path = tmp_path_factory.mktemp("w") / "ckbd.safetensors"
    meta = {"name": "tiny-ckbd", "architecture": "mshp-ckbd", "arch_kwargs": json.dumps(kwargs)}
    export(model, path, meta)
    return licstore.models.register_weights(path)


def _wake(model: CheckerboardHyperpriorVR) -> None:
    """Non-zero context corrections (at init they are zero: the model is its backbone)."""
    with torch.no_grad():
        model.context.weight.mul_(20)
        model.entropy_parameters[-1].weight.normal_(0, 0.05)


def test_warm_started_model_starts_as_its_backbone():
    from licstore.models.weights import warm_start

    torch.manual_seed(0)
    backbone = MeanScaleHyperpriorVR(N=16, M=24).eval()
    model = CheckerboardHyperpriorVR(N=16, M=24).eval()
    warm_start(model, backbone.state_dict())
    x, r = torch.rand(1, 3, 64, 64), torch.tensor([2.0])
    a, b = backbone(x, r), model(x, r)
    assert torch.allclose(a["x_hat"], b["x_hat"], atol=1e-6)
    assert torch.allclose(a["likelihoods"]["y"], b["likelihoods"]["y"], atol=1e-6)


def test_non_anchor_context_reads_anchors_only():
    torch.manual_seed(0)
    conv = CheckerboardConv(3, 4)
    anchors = anchor_mask(9, 11)
    x = torch.rand(1, 3, 9, 11)
    poked = x.clone()
    poked[..., ~anchors] += torch.rand_like(poked[..., ~anchors])  # change non-anchors only
    with torch.no_grad():
        a, b = conv(x), conv(poked)
    assert torch.equal(a[..., ~anchors], b[..., ~anchors])
    assert not torch.equal(a[..., anchors], b[..., anchors])  # anchors' (unused) outputs do move


def test_training_forward_reaches_the_context_networks():
    torch.manual_seed(0)
    model = CheckerboardHyperpriorVR(N=16, M=24).train()
    _wake(model)
    x = torch.rand(2, 3, 64, 64)
    out = model(x, torch.tensor([0.5, 6.0]))
    assert out["x_hat"].shape == x.shape and set(out["likelihoods"]) == {"y", "z"}
    bpp = sum(-lk.log2().sum() for lk in out["likelihoods"].values()) / (2 * 64 * 64)
    (0.01 * 255**2 * (out["x_hat"] - x).pow(2).mean() + bpp).backward()
    for prefix in ("context.", "entropy_parameters.", "g_a."):
        grads = [p.grad for n, p in model.named_parameters() if n.startswith(prefix)]
        assert grads and all(g is not None and g.abs().sum() > 0 for g in grads), prefix


def test_round_trip_rates_and_exact_latents(tiny_ckbd, photo):
    net = licstore.models.load(tiny_ckbd)
    data = licstore.encode(photo, quality=4, model=tiny_ckbd)
    assert licstore.info(data).model == tiny_ckbd
    back = np.asarray(licstore.decode(data))
    assert back.shape == photo.shape
    batch = licstore.decode_batch([licstore.encode(photo, quality=1, model=tiny_ckbd), data])
    assert np.array_equal(np.asarray(batch[1]), back)
    sizes = [len(licstore.encode(photo, quality=q, model=tiny_ckbd)) for q in (1, 8)]
    assert sizes[0] < sizes[1]
    # the encoder's reconstruction is what every decoder gets, whatever the thread count
    x = torch.zeros(1, 3, 128, 128)
    x[..., :80, :96] = torch.from_numpy(photo).permute(2, 0, 1).float() / 255
    a = net.analyze(x)
    rate = net.quality_to_rate(4)
    payload = net.encode_latents(a, 0, rate)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        decoded = net.decode_latents(payload, 128, 128, rate)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(decoded, net.reconstruct_latents(a, 0, rate))
    assert abs(net.estimate_bytes(a, 0, rate) - len(payload)) <= 16


def test_context_changes_the_code(tiny_ckbd, photo):
    """Non-anchor parameters come from the decoded anchors, not from the hyperprior alone."""
    net = licstore.models.load(tiny_ckbd)
    x = torch.from_numpy(photo[:64, :64]).permute(2, 0, 1)[None].float() / 255
    a = net.analyze(x)
    rate = net.quality_to_rate(6)
    _, (_, idx_n), _ = net._passes(a, 0, rate)
    # the parameters the non-anchors would get with a zero context (as anchors do)
    scales, _ = net._anchor_parameters(a.hyper, ~anchor_mask(4, 4))
    no_context = net.y_coder.indexes(scales, net._steps(rate))
    assert idx_n.shape == no_context.shape and not np.array_equal(idx_n, no_context)


def test_bpp_target_and_corrupt_payloads(tiny_ckbd, photo):
    data = licstore.encode(photo, bpp=1.0, model=tiny_ckbd)
    assert len(data) * 8 / (photo.shape[0] * photo.shape[1]) <= 1.03
    for cut in (1, 3, len(data) // 2, len(data) - 1):
        with pytest.raises(CorruptBitstreamError):
            licstore.decode(data[:cut])


def test_warm_start_from_mshp_vr_leaves_only_the_context_new():
    from licstore.models.weights import warm_start

    loaded, total = warm_start(CheckerboardHyperpriorVR(N=16, M=24),
                               MeanScaleHyperpriorVR(N=16, M=24).state_dict())  # fmt: skip
    new = len(CheckerboardHyperpriorVR(N=16, M=24).context.state_dict()) + 6
    assert loaded == total - new
