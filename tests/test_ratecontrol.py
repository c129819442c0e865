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


def test_largest_rate_within_reports_unreachable():
    r, ok = largest_rate_within(lambda r: 500 + r, 100, 0, 1000)
    assert (r, ok) == (0, False)


def test_default_target_and_validation():
    assert RateTarget.from_kwargs() == RateTarget(quality=4)
    with pytest.raises(RateTargetError, match="at most one"):
        RateTarget.from_kwargs(bpp=0.2, psnr=30)
