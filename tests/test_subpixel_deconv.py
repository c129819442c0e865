"""Transposed convolution as convolution + pixel shuffle: same function, shared parameters."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from licstore.models.subpixel_deconv import SubpixelDeconv, convertible, with_subpixel_deconvs


@pytest.mark.parametrize(
    "kernel,stride,padding,output_padding",
    [
        (5, 2, 2, 1),
        (3, 2, 1, 1),
        (4, 2, 1, 0),
        (6, 2, 2, 0),
        (3, 3, 0, 0),
        (7, 4, 2, 1),
        (4, 3, 1, 1),
    ],
)
# (4, 3, 1, 1) reads offsets 0..1 only: padded on one side
@pytest.mark.parametrize("size", [(1, 1), (5, 8), (7, 3)])
def test_same_function_as_the_transposed_convolution(kernel, stride, padding, output_padding, size):
    torch.manual_seed(kernel * 10 + stride)
    deconv = nn.ConvTranspose2d(6, 2, kernel, stride, padding, output_padding).double()
    assert convertible(deconv)
    x = torch.randn(2, 6, *size, dtype=torch.float64)
    want = deconv(x)
    got = SubpixelDeconv(deconv)(x)
    assert got.shape == want.shape == (2, 2, size[0] * stride, size[1] * stride)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_bf16_on_channels_last_within_rounding():
    torch.manual_seed(1)
    deconv = nn.ConvTranspose2d(32, 3, 5, 2, 2, 1)
    x = torch.randn(1, 32, 9, 13).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        want = deconv(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = SubpixelDeconv(deconv)(x).float()
    assert (got - want).abs().max() < 0.05 * want.abs().max()


@pytest.mark.parametrize(
    "module",
    [
        nn.ConvTranspose2d(4, 2, 5, 2, 2, 0),  # output 2H - 1, not 2H
        nn.ConvTranspose2d(4, 2, 3, 1, 1),  # stride 1: nothing to gain
        nn.ConvTranspose2d(4, 2, 5, (2, 1), 2, (1, 0)),
        nn.ConvTranspose2d(4, 2, 5, 2, 2, 1, groups=2),
        nn.ConvTranspose2d(4, 2, 5, 2, 4, 1, dilation=2),
        nn.Conv2d(4, 2, 3),
    ],
)
def test_other_layers_are_refused(module):
    assert not convertible(module)
    with pytest.raises(ValueError, match="not a convertible"):
        SubpixelDeconv(module)


def test_view_converts_only_narrow_layers_and_shares_parameters():
    torch.manual_seed(2)
    g_s = nn.Sequential(
        nn.ConvTranspose2d(8, 8, 5, 2, 2, 1),  # wide: stays (slower rewritten)
        nn.ReLU(),
        nn.Sequential(nn.ConvTranspose2d(8, 2, 5, 2, 2, 1)),  # narrow: rewritten
    ).double()
    view = with_subpixel_deconvs(g_s)
    assert view[0] is g_s[0] and view[1] is g_s[1]
    assert isinstance(view[2][0], SubpixelDeconv) and isinstance(g_s[2][0], nn.ConvTranspose2d)
    assert set(view.state_dict()) != set(g_s.state_dict())  # the original is left as it was
    x = torch.randn(1, 8, 4, 6, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(view(x), g_s(x), rtol=0, atol=1e-12)
        g_s.load_state_dict({k: v * 1.5 for k, v in g_s.state_dict().items()})  # in place
        torch.testing.assert_close(view(x), g_s(x), rtol=0, atol=1e-12)  # never stale
    plain = nn.Sequential(nn.Conv2d(3, 3, 1))
    assert with_subpixel_deconvs(plain) is plain
