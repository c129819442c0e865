"""Rate searches on synthetic monotone curves (exact answers known)."""

import math

import pytest

from licstore.errors import RateTargetError
from licstore.ratecontrol import RateTarget, largest_rate_within, smallest_rate_reaching


def test_smallest_rate_reaching_finds_threshold():
    calls = []

    def f(r):
        calls.append(r)
        return 20 + r / 1000

    r = smallest_rate_reaching(f, 30.0, 0, 57344, resolution=64)
    assert 10000 <= r <= 10064
    assert len(calls) < 14
    assert smallest_rate_reaching(f, 10.0, 0, 57344, 64) == 0
    assert smallest_rate_reaching(f, 99.0, 0, 57344, 64) is None


@pytest.mark.parametrize("budget", [150.0, 1000.0, 20000.0, 99999.0])
def test_largest_rate_within_budget(budget):
    def size(r):  # sizes grow about exponentially with the rate parameter
        return 100 * math.exp(r / 8192)

    r, ok = largest_rate_within(size, budget, 0, 57344)
    assert ok and size(r) <= budget
    assert r == 57344 or size(r) >= budget * 0.97 or size(r + 64) > budget


@pytest.mark.parametrize("budget", [130.0, 700.0, 5000.0, 40000.0])
def test_largest_rate_within_brackets_near_the_answer(budget):
    """Sizes curved like a real model's (log size not linear in the rate): a local bracket
    takes few evaluations; ``slack`` also accepts a size just over the budget."""
    calls = []

    def size(r):
        calls.append(r)
        return 100 * math.exp(r / 8192 + (r / 57344) ** 2)

    r, ok = largest_rate_within(size, budget, 0, 57344)
    assert ok and budget * 0.99 <= size(r) <= budget
    assert len(calls) - 1 <= 6  # the extremes are never both evaluated
    calls.clear()
    r, ok = largest_rate_within(size, budget, 0, 57344, slack=0.01)
    assert ok and budget * 0.99 <= size(r) <= budget * 1.01 and len(calls) - 1 <= 5


def test_largest_rate_within_reports_unreachable():
    r, ok = largest_rate_within(lambda r: 500 + r, 100, 0, 1000)
    assert (r, ok) == (0, False)
    assert largest_rate_within(lambda r: 500 + r, 1e6, 0, 1000) == (1000, True)


def test_default_target_and_validation():
    assert RateTarget.from_kwargs() == RateTarget(quality=4)
    with pytest.raises(RateTargetError, match="at most one"):
        RateTarget.from_kwargs(bpp=0.2, psnr=30)


def test_size_estimates_match_the_coder(tiny_model, photo):
    """The rate search's size estimate is the rANS coder's own cost: within a few bytes of
    the real payload, escaped (out-of-table) symbols included."""
    import numpy as np
    import torch

    from licstore import models

    net = models.load(tiny_model)
    x = torch.zeros(1, 3, 128, 128)
    x[..., :80, :96] = torch.from_numpy(photo).permute(2, 0, 1).float() / 255
    x[..., 64:, 64:] = torch.rand(1, 3, 64, 64)  # noise: large symbols, some escaped
    analyzed = net.analyze(x)
    lo, hi = net.rate_range()
    for rate in np.linspace(lo, hi, 5).astype(int):
        real = len(net.encode_latents(analyzed, 0, int(rate)))
        assert abs(net.estimate_bytes(analyzed, 0, int(rate)) - real) <= 8, rate


def test_size_estimates_count_escaped_symbols():
    import numpy as np
    import torch

    from licstore.entropy import GaussianCoder

    class Conditional:  # two tiny tables: symbols -1..1 (value 3 is the escape)
        _quantized_cdf = torch.tensor([[0, 16384, 32768, 49152, 65536]] * 2)
        _cdf_length = torch.tensor([5, 5])
        _offset = torch.tensor([-1, -1])
        scale_table = torch.tensor([0.5, 1.0])

    coder = GaussianCoder(Conditional())
    idx = np.zeros((1, 1, 1, 3), dtype=np.int32)
    plain = coder.estimate_bits(np.array([[[[-1, 0, 1]]]]), idx)
    assert plain == 6.0  # three symbols of probability 1/4
    # 5 is folded to 2 * (6 - 3) = 6: one 4-bit chunk, its count (4 bits), the escape symbol
    assert coder.estimate_bits(np.array([[[[-1, 0, 5]]]]), idx) == 4 + 4 + 2 + 4
    encoded = coder.encode(np.array([[[[-1, 0, 5]]]]), idx)
    assert (coder.decode(encoded, idx) == [[[[-1, 0, 5]]]]).all()
