"""resgdn-vr (seed 002): architecture, scalable quantizer, lossless code map, codec round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import licstore
from licstore import container
from licstore.errors import CorruptBitstreamError
from licstore.models.resgdn_vr import ResGDN, ResGDNVR


@pytest.fixture(scope="module")
def tiny_resgdn(tmp_path_factory) -> str:
    from licstore.models.weights import export

    torch.manual_seed(0)
    model = ResGDNVR(N=16, M=4).eval()
    path = tmp_path_factory.mktemp("w") / "resgdn.safetensors"
    meta = {"name": "tiny-resgdn", "architecture": "resgdn-vr", "arch_kwargs": '{"N": 16, "M": 4}'}
    export(model, path, meta)
    return licstore.models.register_weights(path)


def test_architecture_counts_eleven_convolutions_per_side():
    model = ResGDNVR()
    for side in (model.g_a, model.g_s):
        convs = [
            m for m in side.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))
        ]
        assert len(convs) == 11
    assert sum(isinstance(m, ResGDN) for m in model.g_a.modules()) == 3
    x = torch.rand(1, 3, 64, 96)
    assert model.g_a(x).shape == (1, 8, 4, 6)
    assert model(x, 4).shape == x.shape


def test_quantizer_is_exact_for_zero_and_uses_b_bits():
    y = torch.tensor([[[[-1.0, 0.0, 0.5, 2.0]]]])
    for bits in range(2, 9):
        scale, zero = ResGDNVR.quant_params(y, bits)
        q = torch.round(y / scale + zero).clamp(0, 2**bits - 1)
        assert q.max() <= 2**bits - 1 and q.min() >= 0
        assert float((q[0, 0, 0, 1] - zero) * scale) == 0.0  # zero quantized without error
    model = ResGDNVR(N=8, M=1)
    y = torch.randn(1, 1, 8, 8, requires_grad=True)
    model.quantize_train(y, 3).sum().backward()
    assert torch.allclose(y.grad, torch.ones_like(y))  # straight-through gradient


def test_training_loss_sums_over_bit_depths():
    model = ResGDNVR(N=8, M=2)
    loss, stats = model.training_loss(torch.rand(2, 3, 128, 128))
    loss.backward()
    assert torch.isfinite(loss) and stats["psnr"] > 0
    assert all(p.grad is not None for p in model.g_a.parameters())


@pytest.mark.parametrize("bits", [(8,), (2, 4, 6, 8)])
def test_train_bits_choose_the_rates_of_the_loss(bits):
    """One bit depth trains the fixed-rate baseline of the paper's variable-rate claim."""
    model = ResGDNVR(N=8, M=2, train_bits=list(bits))
    seen = []
    model.quantize_train = lambda y, b: (seen.append(b), y)[1]
    model.training_loss(torch.rand(1, 3, 128, 128))
    assert tuple(seen) == bits


@pytest.mark.parametrize("bits", [(), (1,), (2, 9)])
def test_train_bits_outside_the_quantizer_range_are_refused(bits):
    with pytest.raises(ValueError, match="train_bits"):
        ResGDNVR(N=8, M=2, train_bits=bits)


def test_codec_round_trip_every_bit_depth(tiny_resgdn, photo):
    sizes = []
    for quality in range(1, 8):
        data = licstore.encode(photo, quality=quality, model=tiny_resgdn)
        info = licstore.info(data)
        assert info.model == tiny_resgdn and info.rate == quality + 1
        out = np.asarray(licstore.decode(data))
        assert out.shape == photo.shape
        sizes.append(len(data))
    assert sizes == sorted(sizes)  # more bits, more bytes
    assert (
        licstore.encode_batch([photo, photo], quality=3, model=tiny_resgdn)
        == [licstore.encode(photo, quality=3, model=tiny_resgdn)] * 2
    )


def test_bpp_target_and_cross_precision_decode(tiny_resgdn, photo):
    data = licstore.encode(photo, bpp=0.5, model=tiny_resgdn)
    assert len(data) * 8 / (photo.shape[0] * photo.shape[1]) <= 0.5 * 1.03
    a = np.asarray(licstore.decode(data, precision="fp32")).astype(int)
    b = np.asarray(licstore.decode(data, precision="bf16")).astype(int)
    assert np.abs(a - b).mean() < 3  # code map is exact; only synthesis rounding differs


def test_corrupt_code_map(tiny_resgdn, photo):
    data = licstore.encode(photo, quality=4, model=tiny_resgdn)
    bs = container.unpack(data)
    base = bs.layer("base")
    for bad in (base.data[:10], base.data[:-7], base.data[:32] + bytes([7]) + base.data[33:]):
        layers = [container.Layer("base", bad, base.meta)] + [
            layer for layer in bs.layers if layer.kind != "base"
        ]
        forged = container.pack(
            container.Bitstream(
                bs.model, bs.weights_hash, bs.width, bs.height, bs.mode, bs.rate, layers, bs.flags
            )
        )
        with pytest.raises(CorruptBitstreamError):
            licstore.decode(forged)


def test_codemap_coder_comparison_tool(tiny_resgdn, photo, tmp_path, load_tool):
    from PIL import Image

    module = load_tool("eval_codemap_coders")
    (tmp_path / "img").mkdir()
    Image.fromarray(photo).save(tmp_path / "img" / "a.png")
    out = tmp_path / "table.md"
    assert module.main(["--images", str(tmp_path / "img"), "--model", tiny_resgdn,
                        "--out", str(out)]) == 0  # fmt: skip
    rows = [
        line for line in out.read_text().splitlines() if line[:3] in {f"| {b}" for b in "2345678"}
    ]
    assert len(rows) == 7  # B = 2..8
    for line in rows:
        png, jxl, kept = (float(c.replace(",", "")) for c in line.split("|")[2:5])
        assert kept == min(png, jxl) > 0
