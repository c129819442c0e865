"""The public verbs: round trips (shipped model: PSNR bounds), batches, targets, errors (tiny model)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import licstore
from licstore import codec, container
from licstore.errors import (
    CorruptBitstreamError,
    ModelNotFoundError,
    RateTargetError,
    UnsupportedImageError,
    WeightsIntegrityError,
)
from licstore.metrics import psnr

# The round trips below use the shipped default model: the tiny model's random synthesis
# gives noise (about 6 dB), so only real weights make a PSNR bound say anything. Bounds are
# about 3 dB under what mshp-vr@e11ec77a gives (in parentheses).


def test_round_trip_restores_size_mode_and_pixels(photo):
    data = licstore.encode(photo, quality=5)
    assert isinstance(data, bytes)
    img = licstore.decode(data)
    assert img.size == (96, 80) and img.mode == "RGB"
    assert psnr(photo, np.asarray(img)) >= 29.0  # (32.4)


#: PSNR bound (dB) per mode, on the RGB rendering of source and decoded image; "1" is
#: bilevel (dithered): the fraction of agreeing pixels instead
MODE_BOUNDS = {"RGB": 29.0, "L": 33.0, "LA": 33.0, "RGBA": 29.0, "P": 17.5, "1": 0.75}


@pytest.mark.parametrize("mode", sorted(MODE_BOUNDS))
def test_modes_round_trip(photo, mode):
    src = Image.fromarray(photo).convert(mode)
    out = licstore.decode(licstore.encode(src))
    assert out.mode == mode and out.size == src.size
    if "A" in mode:  # alpha is coded losslessly
        assert np.array_equal(np.asarray(out.getchannel("A")), np.asarray(src.getchannel("A")))
    a, b = np.asarray(src.convert("RGB")), np.asarray(out.convert("RGB"))
    if mode == "1":
        assert (a == b).all(axis=-1).mean() >= MODE_BOUNDS[mode]  # (0.80)
    else:
        assert psnr(a, b) >= MODE_BOUNDS[mode]  # (RGB 32.1, L 36.1, P 20.5)


#: size -> PSNR bound: the photo resized (1x1: 28.6 dB, 300x2: 20.2, others 34-37)
SIZE_BOUNDS = {(1, 1): 24.0, (1, 200): 30.0, (300, 2): 17.0, (65, 33): 30.0, (64, 64): 30.0}


@pytest.mark.parametrize("size", sorted(SIZE_BOUNDS))
def test_odd_sizes(photo, size):
    img = np.asarray(Image.fromarray(photo).resize(size))
    out = licstore.decode(licstore.encode(img))
    assert out.size == size
    assert psnr(img, np.asarray(out)) >= SIZE_BOUNDS[size]


def test_input_types_agree(tiny_model, photo):
    """ndarray, PIL and uint8/float tensors of the same pixels give the same bitstream."""
    t = torch.from_numpy(photo).permute(2, 0, 1)
    variants = [photo, Image.fromarray(photo), t, t.float() / 255]
    datas = {licstore.encode(v, model=tiny_model, quality=4) for v in variants}
    assert len(datas) == 1


def test_non_images_are_refused(tiny_model):
    for bad in [None, 3, "no/such/file.png", b"not an image", np.zeros((4, 4, 3), np.int64)]:
        with pytest.raises(UnsupportedImageError):
            licstore.encode(bad, model=tiny_model)


def test_batch_equals_one_by_one(tiny_model, photo):
    rng = np.random.default_rng(2)
    imgs = [photo, photo[::-1].copy(), rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)]
    batch = licstore.encode_batch(imgs, model=tiny_model, quality=6)
    assert batch == [licstore.encode(im, model=tiny_model, quality=6) for im in imgs]
    dec = licstore.decode_batch(batch)
    for d, b in zip(dec, batch):
        assert np.array_equal(np.asarray(d), np.asarray(licstore.decode(b)))


def test_batched_transforms_decode_consistently(tiny_model, photo):
    imgs = [photo, photo[:, ::-1].copy()]
    batch = licstore.encode_batch(imgs, model=tiny_model, batch_transforms=True)
    dec = licstore.decode_batch(batch, batch_transforms=True)
    for d, b in zip(dec, batch):
        diff = np.abs(np.asarray(d, np.int16) - np.asarray(licstore.decode(b), np.int16))
        assert diff.max() <= 1


def test_quality_levels_are_ordered(tiny_model, photo):
    """Every level: its rate parameter in the header, sizes never shrinking as the level
    rises and growing over the range (the tiny model codes its low levels alike)."""
    net = licstore.models.load(tiny_model)
    datas = [licstore.encode(photo, model=tiny_model, quality=q) for q in range(1, 9)]
    assert [licstore.info(d).rate for d in datas] == [net.quality_to_rate(q) for q in range(1, 9)]
    sizes = [len(d) for d in datas]
    assert sizes == sorted(sizes) and sizes[-1] > sizes[0], sizes


def test_quality_levels_raise_psnr_with_the_shipped_model(photo):
    datas = [licstore.encode(photo, quality=q) for q in (1, 4, 8)]
    sizes = [len(d) for d in datas]
    psnrs = [psnr(photo, np.asarray(licstore.decode(d))) for d in datas]
    assert sizes[0] < sizes[1] < sizes[2], sizes
    assert psnrs[0] + 1 < psnrs[1] and psnrs[1] + 1 < psnrs[2], psnrs


def test_bpp_target_within_tolerance_or_below(tiny_model):
    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)
    lo = len(licstore.encode(img, model=tiny_model, quality=1)) * 8 / 128**2
    hi = len(licstore.encode(img, model=tiny_model, quality=8)) * 8 / 128**2
    assert hi > lo * 1.5, "tiny model should span a range of rates"
    for target in np.linspace(lo * 1.1, hi * 0.95, 4):
        got = len(licstore.encode(img, model=tiny_model, bpp=float(target))) * 8 / 128**2
        assert got <= target * 1.03
    # a target above the top rate gives the top rate (below the target); below the floor is refused
    assert len(licstore.encode(img, model=tiny_model, bpp=hi * 3)) * 8 / 128**2 <= hi * 3
    with pytest.raises(RateTargetError):
        licstore.encode(img, model=tiny_model, bpp=lo / 4)


def test_psnr_target_is_met_with_smallest_rate(tiny_model, photo):
    from licstore.metrics import psnr

    p1 = psnr(
        photo, np.asarray(licstore.decode(licstore.encode(photo, model=tiny_model, quality=1)))
    )
    p8 = psnr(
        photo, np.asarray(licstore.decode(licstore.encode(photo, model=tiny_model, quality=8)))
    )
    target = (p1 + p8) / 2 if p8 > p1 + 0.2 else p1
    data = licstore.encode(photo, model=tiny_model, psnr=target)
    assert psnr(photo, np.asarray(licstore.decode(data))) >= target
    # the smallest rate: one search step (64) below the chosen rate misses the target
    net = licstore.models.load(tiny_model)
    prep = licstore.imageio.prepare(photo)
    x = codec._to_tensor([prep.rgb], net.downsampling, codec._device("cpu"))
    enc = codec._ImageEncoder(net, net.analyze(x), 0, prep, codec._device("cpu"))
    rate = licstore.info(data).rate
    assert enc.psnr(rate, None) >= target
    if rate - 64 >= net.rate_range()[0]:
        assert enc.psnr(rate - 64, None) < target
    with pytest.raises(RateTargetError):
        licstore.encode(photo, model=tiny_model, psnr=99.0)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(bpp=0.3, quality=2),
        dict(quality=0),
        dict(quality=9),
        dict(quality=2.5),
        dict(bpp=-1),
        dict(psnr=0),
        dict(bpp="0.3"),
    ],
)
def test_bad_rate_targets(tiny_model, photo, kwargs):
    with pytest.raises(RateTargetError):
        licstore.encode(photo, model=tiny_model, **kwargs)


def test_info_runs_no_network(tiny_model, photo, monkeypatch):
    data = licstore.encode(photo, model=tiny_model)
    monkeypatch.setattr(licstore.models, "load", None)  # any model use would fail
    i = licstore.info(data)
    assert (i.width, i.height, i.mode, i.model) == (96, 80, "RGB", tiny_model)
    assert i.total_bytes == len(data)
    assert sum(layer.bytes for layer in i.layers) + i.overhead_bytes == len(data)
    assert i.overhead_bytes < 48


def test_unknown_model(photo):
    with pytest.raises(ModelNotFoundError):
        licstore.encode(photo, model="no-such-model")


def test_bitstream_of_other_weights_is_refused(tiny_model, photo):
    bs = container.unpack(licstore.encode(photo, model=tiny_model))
    other = container.Bitstream(
        bs.model, b"\x00" * 8, bs.width, bs.height, bs.mode, bs.rate, bs.layers
    )
    with pytest.raises(ModelNotFoundError, match="weights"):
        licstore.decode(container.pack(other))


def test_tampered_weights_file_is_refused(tmp_path):
    from conftest import make_tiny_weights

    path = make_tiny_weights(tmp_path / "w.safetensors", name="tampered-test")
    name = licstore.models.register_weights(path)
    raw = bytearray(path.read_bytes())
    raw[-10] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(WeightsIntegrityError):
        licstore.models.load(name)


def test_truncated_and_flipped_streams(tiny_model, photo):
    data = licstore.encode(photo, model=tiny_model)
    for n in (0, 5, len(data) // 2, len(data) - 1):
        with pytest.raises(CorruptBitstreamError):
            licstore.decode(data[:n])
    for bit in range(0, len(data) * 8, 37):
        flipped = bytearray(data)
        flipped[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(CorruptBitstreamError):
            licstore.decode(bytes(flipped))
    for bad in ("text", None, 12):
        with pytest.raises(CorruptBitstreamError):
            licstore.decode(bad)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(payload=st.binary(max_size=300), rate_frac=st.floats(0, 1))
def test_fuzz_base_layer_with_valid_container(tiny_model, photo, payload, rate_frac):
    """Garbage inside a well-formed container: CorruptBitstreamError or some image, nothing else."""
    bs = container.unpack(licstore.encode(photo, model=tiny_model))
    rate = int(rate_frac * licstore.models.load(tiny_model).rate_range()[1])
    crafted = container.Bitstream(
        bs.model,
        bs.weights_hash,
        bs.width,
        bs.height,
        bs.mode,
        rate,
        (container.Layer("base", payload),),
    )
    try:
        img = licstore.decode(container.pack(crafted))
    except CorruptBitstreamError:
        return
    assert img.size == (96, 80)


def test_missing_side_layer_is_corrupt(tiny_model, photo):
    rgba = Image.fromarray(photo).convert("RGBA")
    bs = container.unpack(licstore.encode(rgba, model=tiny_model))
    no_alpha = container.Bitstream(
        bs.model, bs.weights_hash, bs.width, bs.height, bs.mode, bs.rate, (bs.layer("base"),)
    )
    with pytest.raises(CorruptBitstreamError):
        licstore.decode(container.pack(no_alpha))


def test_synthesis_copies_follow_new_parameters():
    """The float64 copy of g_s (lossless layer) and the bf16 sub-pixel view never run stale
    parameters: freeze (after training) drops the copy; the view shares the parameters."""
    from licstore.models.registry import model_class

    torch.manual_seed(3)
    net = model_class("mshp-vr")(N=8, M=12).eval()
    y = torch.randn(1, 12, 3, 4)
    before = net.synthesize(y, float64=True)
    net.synthesize(y, bf16=True)
    with torch.no_grad():
        for p in net.g_s.parameters():
            p.mul_(1.1)
    net.freeze()
    want = net.synthesize(y)  # fp32: the plain g_s
    assert not torch.allclose(net.synthesize(y, float64=True), before)
    torch.testing.assert_close(net.synthesize(y, float64=True).float(), want, atol=1e-5, rtol=0)
    torch.testing.assert_close(net.synthesize(y, bf16=True), want, atol=0.03, rtol=0)


def test_encode_precision_runs_the_analysis_in_bf16_or_fp32(tiny_model, photo, monkeypatch):
    from licstore import precision

    net = licstore.models.load(tiny_model)
    seen = []
    hook = net.g_a[0].register_forward_hook(
        lambda m, i, o: seen.append((torch.is_autocast_enabled("cpu"), o.dtype))
    )
    try:
        fp32 = licstore.encode(photo, quality=5, model=tiny_model, precision="fp32")
        bf16 = licstore.encode(photo, quality=5, model=tiny_model, precision="bf16")
        monkeypatch.setattr(precision, "ENCODE_PRECISION", "fp32")  # the default follows it
        default = licstore.encode(photo, quality=5, model=tiny_model)
    finally:
        hook.remove()
    assert seen == [(False, torch.float32), (True, torch.bfloat16), (False, torch.float32)]
    assert default == fp32
    from licstore.metrics import psnr

    quality = [psnr(photo, np.asarray(licstore.decode(d))) for d in (fp32, bf16)]
    assert abs(quality[0] - quality[1]) < 0.5  # the same to rounding; both decode anywhere
    with pytest.raises(ValueError, match="precision"):
        licstore.encode(photo, model=tiny_model, precision="fp16")
