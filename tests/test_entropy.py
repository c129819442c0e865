"""The exact hyper-synthesis: the int8 GEMM path and the float64 path give the same integers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from licstore import entropy
from licstore.entropy import ACT_LIMIT, WEIGHT_LIMIT, FixedPointConv, FixedPointHyperSynthesis
from licstore.errors import CorruptBitstreamError
from licstore.models.mshp_vr import SubpelUp


def _float64_path(monkeypatch):
    monkeypatch.setattr(entropy, "int8_matmul_is_exact", lambda: False)


def _int8_path():
    """Skip where the int8 GEMM is not exact: comparing float64 with itself proves nothing."""
    if not entropy.int8_matmul_is_exact():
        pytest.skip("no exact int8 GEMM here: only the float64 path runs")
    entropy.matmul_paths.clear()


def _ran(path: str, calls: int) -> None:
    """Exactly ``calls`` layer calls ran on ``path`` and none on any other path."""
    assert dict(entropy.matmul_paths) == {path: calls}
    entropy.matmul_paths.clear()


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
    _int8_path()
    fast = FixedPointConv(w.double(), b, 1, relu=False)(x.clone())
    _ran("int8", 1)
    _float64_path(monkeypatch)
    slow = FixedPointConv(w.double(), b, 1, relu=False)(x.clone())
    _ran("float64", 1)
    assert torch.equal(fast, slow)
    assert fast.abs().max() == ACT_LIMIT  # the clamp was reached: the extremes were exercised


def test_hyper_synthesis_is_the_same_on_both_paths(monkeypatch):
    torch.manual_seed(0)
    h_s = nn.Sequential(SubpelUp(16, 24), nn.ReLU(), SubpelUp(24, 36), nn.ReLU(),
                        nn.Conv2d(36, 48, 3, padding=1))  # fmt: skip
    exact = FixedPointHyperSynthesis.from_float(h_s)
    z = torch.randint(-40, 41, (3, 16, 5, 7)).float()
    _int8_path()
    fast = exact(z)
    _ran("int8", 3)
    _float64_path(monkeypatch)
    slow = FixedPointHyperSynthesis.from_float(h_s)(z)
    _ran("float64", 3)
    for a, b in zip(fast, slow, strict=True):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("int8", [True, False], ids=["int8", "float64"])
def test_outputs_at_positions_and_zero_taps_are_the_full_outputs(int8, monkeypatch):
    """Skipping zero kernel taps and computing only some positions changes no integer."""
    if int8:
        _int8_path()
    else:
        _float64_path(monkeypatch)
        entropy.matmul_paths.clear()
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
    assert set(entropy.matmul_paths) == {"int8" if int8 else "float64"}  # the path under test
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


# -- rANS decoding: reads stay inside the buffer ----------------------------------------------


def _compressai_reads(coder, data: bytes, idx: list[int], cdfs, lengths) -> int:
    """Words CompressAI 1.2.8's ``decode_with_indexes`` reads (rans_interface.cpp), past the
    end as zeros: a model of the C++ loop, counting instead of trusting the buffer."""
    words = np.frombuffer(data + bytes(-len(data) % 4), dtype="<u4").tolist()

    def word(p):
        return words[p] if p < len(words) else 0

    x, pos, low = word(0) | (word(1) << 32), 2, 1 << 31

    def get_bits():
        nonlocal x, pos
        val = x & 15
        x >>= 4
        if x < low:
            x, pos = (x << 32) | word(pos), pos + 1
        return val

    for t in idx:
        cdf, n = cdfs[t], lengths[t]
        cum = x & 0xFFFF
        s = max(i for i in range(n) if cdf[i] <= cum)
        x = (cdf[s + 1] - cdf[s]) * (x >> 16) + cum - cdf[s]
        if x < low:
            x, pos = (x << 32) | word(pos), pos + 1
        if s == n - 2:
            val = count = get_bits()
            while val == 15:
                val = get_bits()
                count += val
            for _ in range(count):
                get_bits()
    return pos


@pytest.fixture(scope="module")
def y_coder():
    from licstore import models

    return models.load("mshp-vr").y_coder


def _escape_run(coder, table: int, runs: int) -> bytes:
    """A string whose first symbol is the escape and whose bypass count is ``runs`` chunks of
    15 (one per word, the state emptied in between), then 0: 15 * ``runs`` bypass chunks follow,
    each reading a word past the end."""
    start = coder.cdfs[table][coder.cdf_length[table] - 2]  # the escape's interval
    words = [start, 0] + [15] * runs + [0]
    return np.asarray(words, dtype="<u4").tobytes()


def test_crafted_escape_runs_cannot_make_the_decoder_read_past_its_buffer(y_coder):
    table, runs = 40, 100
    data = _escape_run(y_coder, table, runs)
    idx = [table]
    reads = _compressai_reads(y_coder, data, idx, y_coder.cdfs, y_coder.cdf_length)
    old_buffer = len(data) + 8 * len(idx) + 64 + 8 * len(data)  # the former zero padding
    assert reads * 4 > old_buffer  # the former padding did not bound it: 15 words per word
    assert reads > 15 * runs
    # with the escape disabled, CompressAI's decoder reads 2 words + at most 1 per symbol
    guarded = _compressai_reads(y_coder, data, idx, y_coder._guarded_cdfs, y_coder._guarded_length)
    assert guarded <= 2 + len(idx)
    # the escape sends the string to the checked decoder, which refuses it at the first read
    # past the end (or at a count longer than a 32-bit value has)
    entropy.rans_routes.clear()
    with pytest.raises(CorruptBitstreamError, match="longer than 32 bits"):
        y_coder.decode(data, np.asarray(idx, dtype=np.int32))
    assert entropy.rans_routes == {"checked": 1}
    short = _escape_run(y_coder, table, 3)
    entropy.rans_routes.clear()
    with pytest.raises(CorruptBitstreamError):
        y_coder.decode(short, np.asarray(idx, dtype=np.int32))
    assert entropy.rans_routes == {"checked": 1}


def test_guarded_pass_reads_at_most_one_word_per_symbol_on_any_string(y_coder):
    rng = np.random.default_rng(3)
    for _ in range(40):
        idx = rng.integers(0, y_coder.n_tables, int(rng.integers(1, 60))).tolist()
        data = rng.bytes(int(rng.integers(0, 80)))
        cdfs, lengths = y_coder._guarded_cdfs, y_coder._guarded_length
        assert _compressai_reads(y_coder, data, idx, cdfs, lengths) <= 2 + len(idx)


def test_a_few_escapes_decode_on_the_checked_decoder_as_on_compressais(y_coder):
    from compressai.ans import RansDecoder

    rng = np.random.default_rng(2)
    n = 5000
    idx = np.full(n, y_coder.n_tables - 1, dtype=np.int32)  # the widest table: no escapes
    symbols = np.rint(rng.normal(0, 3, n)).astype(np.int64)
    symbols[[17, 2500, 4999]] = [20000, -12345, 30000]  # three escapes
    data = y_coder.encode(symbols, idx)
    entropy.rans_routes.clear()
    decoded = y_coder.decode(data, idx)
    assert entropy.rans_routes == {"checked": 1}
    assert np.array_equal(decoded, symbols)
    ref = RansDecoder().decode_with_indexes(
        data + bytes(1 << 16), idx.tolist(), y_coder.cdfs, y_coder.cdf_length, y_coder.offset
    )
    assert np.array_equal(decoded, ref)


def test_escapes_decode_exactly_as_compressai_does(y_coder):
    from compressai.ans import RansDecoder

    rng = np.random.default_rng(0)
    n = 3000
    idx = rng.integers(0, y_coder.n_tables, n).astype(np.int32)
    symbols = np.rint(rng.normal(0, 2, n)).astype(np.int64)
    symbols[rng.integers(0, n, 40)] = rng.integers(-30000, 30000, 40)  # escapes, long ones
    data = y_coder.encode(symbols, idx)
    entropy.rans_routes.clear()
    decoded = y_coder.decode(data, idx)
    assert entropy.rans_routes == {"checked": 1}
    assert np.array_equal(decoded, symbols)
    ref = RansDecoder().decode_with_indexes(
        data + bytes(1 << 16), idx.tolist(), y_coder.cdfs, y_coder.cdf_length, y_coder.offset
    )
    assert np.array_equal(decoded, ref)
    with pytest.raises(CorruptBitstreamError, match="ends before"):
        y_coder.decode(data[: len(data) // 2], idx)  # the checked decoder stops at the end
    small = np.zeros(n, dtype=np.int64)  # no escapes: the guarded pass alone
    entropy.rans_routes.clear()
    assert np.array_equal(y_coder.decode(y_coder.encode(small, idx), idx), small)
    assert entropy.rans_routes == {"guarded": 1}


def test_random_strings_decode_as_compressai_or_raise(y_coder):
    from compressai.ans import RansDecoder

    rng = np.random.default_rng(1)
    routes = set()
    for _ in range(200):
        idx = rng.integers(0, y_coder.n_tables, 300).astype(np.int32)
        data = rng.bytes(int(rng.integers(0, 300)))
        entropy.rans_routes.clear()
        try:
            out = y_coder.decode(data, idx)
        except CorruptBitstreamError:
            routes.add("raised")
            continue
        routes.update(entropy.rans_routes)
        ref = RansDecoder().decode_with_indexes(
            data + bytes(1 << 20), idx.tolist(), y_coder.cdfs, y_coder.cdf_length, y_coder.offset
        )
        assert np.array_equal(out, ref)
    assert {"guarded", "raised", "checked"} <= routes
