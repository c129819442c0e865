"""The fast inference forms of g_a / g_s: blocked GDN and the views that combine rewrites."""

from __future__ import annotations

import pytest
import torch
from compressai.layers import GDN, GDN1
from torch import nn

from licstore.models import blocked_gdn
from licstore.models.blocked_gdn import BlockedGDN
from licstore.models.fast_transforms import fast_analysis, fast_synthesis
from licstore.models.subpixel_deconv import SubpixelDeconv


def _gdn(channels: int, seed: int, inverse: bool = True) -> GDN:
    torch.manual_seed(seed)
    g = GDN(channels, inverse=inverse)
    with torch.no_grad():  # a trained-looking gamma: positive, asymmetric couplings
        g.gamma.add_(0.05 * torch.rand_like(g.gamma))
        g.beta.mul_(1 + torch.rand_like(g.beta))
    return g.eval()


@pytest.mark.parametrize("inverse", [True, False])
@pytest.mark.parametrize("shape", [(1, 16, 37, 23), (2, 8, 5, 300), (1, 4, 1, 1)])
def test_blocked_gdn_matches_compressai(shape, inverse, monkeypatch):
    monkeypatch.setattr(blocked_gdn, "BLOCK_ELEMENTS", 7 * shape[1] * shape[3])  # many blocks
    g = _gdn(shape[1], 0, inverse)
    x = torch.randn(shape).contiguous(memory_format=torch.channels_last)
    fast = BlockedGDN(g)
    with torch.no_grad():
        out = fast(x)
        assert out.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(out, g(x), rtol=1e-5, atol=1e-6)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            xb = x.bfloat16()
            ref, out = g(xb), fast(xb)
        assert out.dtype == ref.dtype == torch.bfloat16
        # bf16: one unit of rounding at most (the matrix kernels may sum in another order)
        torch.testing.assert_close(out.float(), ref.float(), rtol=2**-7, atol=1e-3)


def test_blocked_gdn_falls_back_and_tracks_its_parameters():
    g = _gdn(6, 1)
    fast = BlockedGDN(g)
    x = torch.randn(1, 6, 9, 11)  # contiguous: CompressAI's layer itself
    with torch.no_grad():
        assert torch.equal(fast(x), g(x))
    x.requires_grad_(True)
    fast(x).sum().backward()  # training goes through the original (autograd intact)
    assert x.grad is not None and g.gamma.grad is not None
    xc = x.detach().contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        g.gamma.mul_(1.7)  # changed in place: the blocked form must see it
        torch.testing.assert_close(fast(xc), g(xc), rtol=1e-5, atol=1e-6)
    for other in (GDN1(4, inverse=True), nn.Conv2d(4, 4, 1)):
        assert not blocked_gdn.convertible(other)
        with pytest.raises(ValueError, match="not a GDN"):
            BlockedGDN(other)


def test_fast_views_rewrite_and_share_parameters():
    torch.manual_seed(3)
    g_s = nn.Sequential(
        nn.ConvTranspose2d(8, 8, 5, 2, 2, 1),  # wide: stays
        GDN(8, inverse=True),
        nn.Sequential(nn.ConvTranspose2d(8, 2, 5, 2, 2, 1)),  # narrow: rewritten
    ).eval()
    view = fast_synthesis(g_s)
    assert view[0] is g_s[0]
    assert isinstance(view[1], BlockedGDN) and view[1].gdn is g_s[1]
    assert isinstance(view[2][0], SubpixelDeconv) and isinstance(g_s[2][0], nn.ConvTranspose2d)
    x = torch.randn(1, 8, 6, 5).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        torch.testing.assert_close(view(x), g_s(x), rtol=1e-4, atol=1e-5)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fast, ref = view(x).float(), g_s(x).float()
        torch.testing.assert_close(fast, ref, rtol=0.02, atol=0.02)
    # the analysis keeps its convolutions (fp32 is its precision) and blocks its GDNs
    g_a = nn.Sequential(nn.Conv2d(3, 8, 5, 2, 2), GDN(8), nn.ConvTranspose2d(8, 2, 5, 2, 2, 1))
    view = fast_analysis(g_a)
    assert view[0] is g_a[0] and view[2] is g_a[2] and isinstance(view[1], BlockedGDN)
    x = torch.rand(1, 3, 16, 12).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        torch.testing.assert_close(view(x), g_a(x), rtol=1e-5, atol=1e-6)
    plain = nn.Sequential(nn.Conv2d(3, 3, 1))
    assert fast_synthesis(plain) is plain and fast_analysis(plain) is plain
