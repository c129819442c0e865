"""resnet-subpixel (seed 001): ResNet-3x3(4) units, sub-pixel or transposed upsampling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from compressai.layers import GDN

import licstore
from licstore.models.resnet_subpixel import ResNetSubpixelVR


@pytest.fixture(scope="module")
def tiny_resnet(tmp_path_factory) -> str:
    from conftest import make_tiny_weights

    path = tmp_path_factory.mktemp("w") / "resnet-subpixel.safetensors"
    kwargs = {"N": 16, "M": 24}
    return licstore.models.register_weights(
        make_tiny_weights(
            path, "tiny-resnet-subpixel", architecture="resnet-subpixel", kwargs=kwargs
        )
    )


def _kernels(module: torch.nn.Module) -> list[tuple[int, ...]]:
    return [
        tuple(m.kernel_size)
        for m in module.modules()
        if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))
    ]


@pytest.mark.parametrize("upsample", ["subpixel", "tconv"])
def test_shapes_and_units(upsample):
    model = ResNetSubpixelVR(N=16, M=24, upsample=upsample)
    x = torch.rand(2, 3, 128, 64)
    y = model.g_a(x)
    assert y.shape == (2, 24, 8, 4)
    assert model.g_s(y).shape == x.shape
    # main-path kernels are 3x3 (1x1 only in shortcuts), GDN/IGDN once per shape change
    assert {k for k in _kernels(model.g_a) + _kernels(model.g_s)} <= {(3, 3), (1, 1)}
    assert sum(isinstance(m, GDN) for m in model.g_a.modules()) == 3
    assert sum(isinstance(m, GDN) and m.inverse for m in model.g_s.modules()) == 3
    transposed = [m for m in model.g_s.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert bool(transposed) == (upsample == "tconv")
    out = model(x, torch.tensor([0.0, 7.0]))
    assert out["x_hat"].shape == x.shape and set(out["likelihoods"]) == {"y", "z"}


def test_unknown_upsampler_is_refused():
    with pytest.raises(ValueError, match="upsample"):
        ResNetSubpixelVR(N=8, M=8, upsample="bicubic")


def test_codec_round_trip_and_rates(tiny_resnet, photo):
    data = licstore.encode(photo, quality=3, model=tiny_resnet)
    info = licstore.info(data)
    assert info.model == tiny_resnet
    back = np.asarray(licstore.decode(data))
    assert back.shape == photo.shape
    # variable rate: a higher quality never writes fewer bytes
    sizes = [len(licstore.encode(photo, quality=q, model=tiny_resnet)) for q in (1, 8)]
    assert sizes[0] < sizes[1]
    # the exact entropy path: decoding twice, or in a batch, gives identical pixels
    again = licstore.decode_batch([data, data])
    assert all(np.array_equal(np.asarray(im), back) for im in again)


def test_strided_pointwise_equals_a_strided_1x1_convolution():
    from licstore.models.resnet_subpixel import StridedPointwise

    torch.manual_seed(0)
    ours = StridedPointwise(3, 5, 2)
    ref = torch.nn.Conv2d(3, 5, 1, stride=2)
    ref.load_state_dict(ours.state_dict())
    for h, w in ((8, 8), (7, 9)):
        x = torch.rand(2, 3, h, w)
        assert torch.allclose(ours(x), ref(x), atol=1e-6)
