"""GemmDeconv: a transposed convolution as one GEMM and shifted adds (the bf16 fast path)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from licstore.models.gemm_deconv import GemmDeconv

CASES = [  # cin, cout, kernel, stride, padding, output_padding, batch, height, width
    (16, 3, 5, 2, 2, 1, 2, 7, 5),  # the synthesis transforms' last layer
    (8, 4, 3, 2, 1, 1, 1, 6, 9),
    (8, 2, 4, 2, 1, 0, 3, 5, 5),
    (6, 3, 6, 3, 2, 1, 1, 4, 3),  # stride 3
    (5, 1, 5, 2, 2, 1, 1, 1, 1),  # a single input pixel: every tap falls off the edge but one
]


@pytest.mark.parametrize("case", CASES, ids=[str(c) for c in CASES])
def test_same_function_as_conv_transpose(case):
    cin, cout, k, s, p, op, b, h, w = case
    torch.manual_seed(0)
    conv = nn.ConvTranspose2d(cin, cout, k, s, p, op).eval()
    x = torch.randn(b, cin, h, w)
    with torch.no_grad():
        ref = conv(x)
        got = GemmDeconv(conv, torch.float32)(x)
        fast = GemmDeconv(conv)(x.contiguous(memory_format=torch.channels_last))
    assert got.shape == ref.shape == (b, cout, s * h, s * w) and got.dtype == torch.float32
    assert torch.allclose(got, ref, atol=1e-5, rtol=1e-5)
    assert torch.allclose(fast, ref, atol=0.05 * float(ref.abs().max()))  # bf16 rounding


def test_layers_it_cannot_replace_are_refused():
    for conv in (
        nn.ConvTranspose2d(4, 3, 5, 2, 2, 0),  # output 2H - 1: not stride x input
        nn.ConvTranspose2d(4, 3, 5, 2, 2, 1, groups=1, dilation=2),
        nn.ConvTranspose2d(4, 3, (5, 3), 2, (2, 1), 1),
    ):
        with pytest.raises(ValueError, match="GemmDeconv"):
            GemmDeconv(conv)


def test_synthesis_uses_it_in_bf16_and_stays_near_fp32(tiny_model):
    import licstore

    net = licstore.models.load(tiny_model)
    y = torch.randn(1, net.M, 4, 6)
    fast = net.synthesize(y, bf16=True)
    assert isinstance(net._last_layer_bf16(), GemmDeconv)
    net.__dict__["_g_s_last"] = None  # the plain autocast path
    plain = net.synthesize(y, bf16=True)
    exact = net.synthesize(y, bf16=False)
    assert fast.shape == exact.shape == plain.shape
    # no further from fp32 than bf16 autocast itself is (its last layer rounds to bf16)
    assert (fast - exact).abs().max() <= (plain - exact).abs().max() + 2 / 255


def test_freeze_drops_the_copy_made_from_old_parameters():
    from licstore.models.mshp_vr import MeanScaleHyperpriorVR

    net = MeanScaleHyperpriorVR(N=8, M=12).eval()
    net.freeze()
    net.synthesize(torch.randn(1, 12, 2, 2), bf16=True)
    assert isinstance(net.__dict__["_g_s_last"], GemmDeconv)
    net.freeze()  # e.g. after more training: the copy is made again when next needed
    assert "_g_s_last" not in net.__dict__
