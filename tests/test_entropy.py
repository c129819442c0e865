"""The exact hyper-synthesis: the int8 GEMM path and the float64 path give the same integers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from licstore import entropy
from licstore.entropy import ACT_LIMIT, WEIGHT_LIMIT, FixedPointConv, FixedPointHyperSynthesis
from licstore.models.mshp_vr import SubpelUp


def _float64_path(monkeypatch):
    monkeypatch.setattr(entropy, "int8_matmul_is_exact", lambda: False)


@pytest.mark.parametrize(
    ("bound", "n"), [(1.0, 1), (127.0, 1), (128.0, 2), (32_639.0, 2), (32_640.0, 3), (2.0**40, 6)]
)
def test_digits_reconstruct_and_stay_int8(bound, n):
    g = torch.Generator().manual_seed(1)
    t = torch.randint(-int(bound), int(bound) + 1, (500,), generator=g, dtype=torch.int64)
    t[:2] = torch.tensor([-int(bound), int(bound)])
    digits = entropy._digits(t, bound)
    assert all(d.dtype == torch.int8 for d in digits)
    back = sum(d.to(torch.int64) * 256**j for j, d in enumerate(digits))
    assert torch.equal(back, t)
    assert len(digits) == n


def test_this_machine_has_the_exact_int8_gemm():
    """Not required for correctness (there is a fallback), but the fast path is expected here."""
    if not hasattr(torch, "_int_mm"):
        pytest.skip("this torch build has no torch._int_mm")
    assert entropy.int8_matmul_is_exact()


@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (8, 12)])
def test_int8_and_float64_paths_agree_at_the_limits(shape, monkeypatch):
    """Weights at +-WEIGHT_LIMIT, activations at +-ACT_LIMIT, the largest fan-in."""
    g = torch.Generator().manual_seed(0)
    cin, k = entropy.MAX_FAN_IN // 9, 3  # the largest dense fan-in
    w = torch.randint(-int(WEIGHT_LIMIT), int(WEIGHT_LIMIT) + 1, (6, cin, k, k), generator=g)
    w[0] = WEIGHT_LIMIT
    w[1] = -WEIGHT_LIMIT
    b = torch.randint(-(2**20), 2**20, (6,), generator=g).double()
    x = torch.randint(-int(ACT_LIMIT), int(ACT_LIMIT) + 1, (2, cin, *shape), generator=g).double()
    x[0] = ACT_LIMIT
    fast = FixedPointConv(w.double(), b, 1, relu=False)(x.clone())
    _float64_path(monkeypatch)
    slow = FixedPointConv(w.double(), b, 1, relu=False)(x.clone())
    assert torch.equal(fast, slow)
    assert fast.abs().max() == ACT_LIMIT  # the clamp was reached: the extremes were exercised


def test_hyper_synthesis_is_the_same_on_both_paths(monkeypatch):
    torch.manual_seed(0)
    h_s = nn.Sequential(SubpelUp(16, 24), nn.ReLU(), SubpelUp(24, 36), nn.ReLU(),
                        nn.Conv2d(36, 48, 3, padding=1))  # fmt: skip
    exact = FixedPointHyperSynthesis.from_float(h_s)
    z = torch.randint(-40, 41, (3, 16, 5, 7)).float()
    fast = exact(z)
    _float64_path(monkeypatch)
    slow = FixedPointHyperSynthesis.from_float(h_s)(z)
    for a, b in zip(fast, slow, strict=True):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("int8", [True, False], ids=["int8", "float64"])
def test_outputs_at_positions_and_zero_taps_are_the_full_outputs(int8, monkeypatch):
    """Skipping zero kernel taps and computing only some positions changes no integer."""
    if not int8:
        _float64_path(monkeypatch)
    g = torch.Generator().manual_seed(1)
    w = torch.randint(-3000, 3000, (5, 4, 5, 5), generator=g).double()
    w[:, :, ::2, ::2] = 0  # a masked kernel: these taps are zero for every channel
    b = torch.randint(-5000, 5000, (5,), generator=g).double()
    x = torch.randint(-(2**20), 2**20, (2, 4, 6, 7), generator=g).double()
    positions = torch.rand(6, 7, generator=g) < 0.5
    conv = FixedPointConv(w, b, 1, relu=True)
    dense = FixedPointConv(w.clone(), b, 1, relu=True)
    dense._w_taps = (torch.ones(5, 5, dtype=torch.bool), w.reshape(5, -1))  # all 25 taps
    full = dense(x)
    assert torch.equal(conv(x), full)
    assert torch.equal(conv(x, positions), full[..., positions][..., None])

    w1 = torch.randint(-3000, 3000, (5, 5, 1, 1), generator=g).double()
    pointwise = FixedPointHyperSynthesis(
        [FixedPointConv(w1, b, 1, relu=True), FixedPointConv(w1[:4], b[:4], 1, relu=False)]
    )
    y = torch.randint(0, 2**20, (2, 5, 6, 7), generator=g).double()
    assert torch.equal(pointwise.fixed(y, positions), pointwise.fixed(y)[..., positions][..., None])
    with pytest.raises(ValueError, match="1x1"):
        FixedPointHyperSynthesis([conv, conv]).fixed(x, positions)
    with pytest.raises(ValueError, match="sub-pixel"):
        FixedPointConv(w, b, 2, relu=False)(x, positions)


def test_sorted_thresholds_count_exactly_as_searchsorted():
    from compressai.models.base import get_scale_table

    from licstore.entropy import SortedThresholds

    rng = np.random.default_rng(7)
    log_spaced = get_scale_table().double().numpy()[:-1]
    tables = {
        "compressai": log_spaced,
        "float32 rounding": log_spaced.astype(np.float32).astype(np.float64),
        "uneven": np.sort(rng.uniform(0.1, 50, 40)),  # not log-spaced: searchsorted itself
        "one": np.array([1.0]),
    }
    for name, t in tables.items():
        st = SortedThresholds(t)
        assert st._fast == (name in ("compressai", "float32 rounding")), name
        edges = np.concatenate([t, np.nextafter(t, 0), np.nextafter(t, np.inf), t * (1 + 1e-12)])
        specials = [0.0, -0.0, -3.0, 5e-324, 1e-300, 1e38, 3.5e38, 1e300, np.inf, -np.inf]
        for s in (
            np.exp(rng.uniform(-12, 12, 100_000)),
            edges,
            np.array(specials),
            np.array([np.nan, 1.0, 0.2]),
            rng.uniform(-1, 300, (2, 3, 4, 5)),
        ):
            want = np.searchsorted(t, s, side="left")
            got = st.count_below(s)
            assert got.shape == s.shape and np.array_equal(got, want), name
