"""Parameter and MAC counts per transform (``licstore models --stats``)."""

from __future__ import annotations

import torch.nn as nn

from licstore import cli
from licstore.models import stats
from licstore.models.resgdn_vr import ResGDNVR


class TwoConvs(nn.Module):
    """A codec whose counts are known by hand: one 3x3 conv each side, no hyperprior."""

    def __init__(self):
        super().__init__()
        self.g_a = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.g_s = nn.ConvTranspose2d(4, 3, 4, stride=2, padding=1)


def test_counts_match_hand_computation():
    s = stats.measure(TwoConvs(), height=16, width=32)
    g_a, g_s = s.transforms
    assert (g_a.name, g_s.name) == ("g_a", "g_s")
    assert g_a.params == 3 * 4 * 9 + 4
    assert g_a.macs == (8 * 16) * 4 * 3 * 9  # output pixels x cout x cin x k*k
    assert g_s.macs == (8 * 16) * 4 * 3 * 16  # each input pixel scatters cin x cout x k*k
    assert s.encode_macs == g_a.macs and s.decode_macs == g_s.macs
    assert s.params_total == g_a.params + g_s.params


def test_hyperprior_transforms_are_chained_and_split_by_side(tiny_model):
    import licstore

    model = licstore.models.load(tiny_model)
    s = stats.measure(model, height=64, width=64)
    names = [t.name for t in s.transforms]
    assert names == ["g_a", "h_a", "h_s", "g_s"]
    by = {t.name: t for t in s.transforms}
    assert s.decode_macs == by["h_s"].macs + by["g_s"].macs > 0
    assert s.encode_macs == by["g_a"].macs + by["h_a"].macs + by["h_s"].macs
    # MACs scale with the pixel count
    assert stats.measure(model, height=128, width=64).decode_macs == 2 * s.decode_macs


def test_resgdn_counts_scale_with_width():
    small = stats.measure(ResGDNVR(N=16, M=4), 64, 64)
    big = stats.measure(ResGDNVR(N=32, M=4), 64, 64)
    assert big.params_total > 3 * small.params_total
    assert big.decode_macs > 3 * small.decode_macs


def test_cli_models_stats(capsys, tmp_path):
    import licstore

    broken = tmp_path / "broken.safetensors"
    from conftest import make_tiny_weights

    make_tiny_weights(broken, "tiny-broken")
    licstore.models.register_weights(broken)
    broken.write_bytes(broken.read_bytes()[:-1] + b"!")  # damaged after registration
    assert cli.main(["models", "--stats", "--size", "64x64"]) == 0
    captured = capsys.readouterr()
    assert "| mshp-vr (mshp-vr) |" in captured.out and "resgdn-vr" in captured.out
    assert "skipped tiny-broken" in captured.err and "tiny-broken" not in captured.out
    assert cli.main(["models", "--stats", "--size", "big"]) == 2


def test_context_model_is_counted_on_both_sides():
    from licstore.models.mshp_ckbd import CheckerboardHyperpriorVR

    s = stats.measure(CheckerboardHyperpriorVR(N=8, M=12), height=64, width=64)
    by = {t.name: t for t in s.transforms}
    assert [t.name for t in s.transforms] == ["g_a", "h_a", "h_s", "context", "g_s"]
    # 4x4 latents: the 5x5 context conv (12 -> 12) once, three 1x1 layers twice
    ep = 36 * 24 + 24 * 24 + 24 * 24
    assert by["context"].macs == 16 * (12 * 12 * 25 + 2 * ep)
    assert by["context"].params == 12 * 12 * 25 + 12 + ep + 3 * 24
    assert s.decode_macs == by["h_s"].macs + by["context"].macs + by["g_s"].macs
    assert s.encode_macs == sum(by[n].macs for n in ("g_a", "h_a", "h_s", "context"))
