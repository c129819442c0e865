"""Decode limits (issue 21): sizes are checked from headers before anything is allocated."""

from __future__ import annotations

import dataclasses
import io
import struct
import subprocess
import sys
import textwrap
import zlib

import numpy as np
import pytest
from PIL import Image

import licstore
from licstore import codec, container, imageio, layer_headers, limits, models, residual
from licstore.errors import (
    CorruptBitstreamError,
    DecodeLimitError,
    DecodeMemoryError,
    LICError,
)

BOMB_SIDE = 60000


def _photo(h: int, w: int, channels: int = 3) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    planes = [(xx * 3 + yy * c) % 256 for c in range(1, channels + 1)]
    return np.stack(planes, 2).astype(np.uint8)


@pytest.fixture(scope="module")
def small() -> bytes:
    return licstore.encode(_photo(64, 64), quality=1)


def _resized(data: bytes, width: int, height: int, **changes) -> bytes:
    """The same layers under other header fields, CRC recomputed (``container.pack``)."""
    bs = container.unpack(data)
    return container.pack(dataclasses.replace(bs, width=width, height=height, **changes))


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if a decode gets as far as loading a model."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded: the check came too late")

    monkeypatch.setattr(models, "for_bitstream", refuse)


@pytest.fixture(scope="module")
def bomb() -> bytes:
    """The issue's bomb: a valid 64x64 file (flat gray) whose header says 60000x60000."""
    flat = licstore.encode(np.full((64, 64, 3), 128, np.uint8), quality=1)
    return _resized(flat, BOMB_SIDE, BOMB_SIDE)


def test_the_72_byte_bomb_fails_from_its_header(small, bomb, no_model):
    assert len(bomb) <= 80 and container.unpack(bomb).width == BOMB_SIDE
    with pytest.raises(DecodeLimitError) as info:
        licstore.decode(bomb)
    message = str(info.value)
    assert f"{BOMB_SIDE}x{BOMB_SIDE}" in message
    assert f"max_pixels = {limits.DEFAULT_MAX_PIXELS}" in message
    assert "max_pixels=N" in message and "LICSTORE_MAX_PIXELS" in message  # how to raise it
    assert isinstance(info.value, CorruptBitstreamError)  # skipped as a bad row by readers
    with pytest.raises(DecodeLimitError):
        licstore.decode_batch([small, bomb])  # the whole batch is checked before any work


def test_the_bomb_fails_fast_under_a_tight_address_space_limit(small, bomb, tmp_path):
    """In a fresh process whose address space may grow by only 256 MiB past its start-up
    (the 60000 x 60000 decode would need tens of GiB): a DecodeLimitError, not a MemoryError.
    Raised above the bomb's size, the same limit turns the attempt into a DecodeMemoryError."""
    path = tmp_path / "bomb.lic"
    path.write_bytes(bomb)
    (tmp_path / "small.lic").write_bytes(small)
    script = textwrap.dedent(
        f"""
        import resource, time
        import licstore
        from licstore.errors import DecodeLimitError, DecodeMemoryError
        licstore.decode(open({str(tmp_path / "small.lic")!r}, "rb").read())  # model loaded
        size = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
        resource.setrlimit(resource.RLIMIT_AS, (size + (256 << 20), resource.RLIM_INFINITY))
        bomb = open({str(path)!r}, "rb").read()
        start = time.perf_counter()
        try:
            licstore.decode(bomb)
        except DecodeLimitError:
            print("limit", time.perf_counter() - start)
        try:
            licstore.decode(bomb, max_pixels={BOMB_SIDE**2})
        except DecodeMemoryError as e:
            print("memory", isinstance(e, MemoryError))
        """
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    lines = run.stdout.split("\n")
    seconds = float(lines[0].split()[1])
    assert lines[0].startswith("limit") and seconds < 0.5
    assert lines[1] == "memory True"


def test_limit_from_the_call_the_environment_and_the_default(small, monkeypatch):
    monkeypatch.delenv(limits.ENV_MAX_PIXELS, raising=False)
    assert limits.max_pixels() == limits.DEFAULT_MAX_PIXELS == imageio.MAX_PIXELS
    monkeypatch.setenv(limits.ENV_MAX_PIXELS, "4095")
    assert limits.max_pixels() == 4095
    with pytest.raises(DecodeLimitError, match=r"64x64 image = 4096 pixels.*max_pixels = 4095"):
        licstore.decode(small)
    image = licstore.decode(small, max_pixels=4096)  # the call wins over the environment
    assert image.size == (64, 64)
    assert codec.decode_batch([small], max_pixels=64 * 64)[0].size == (64, 64)
    with pytest.raises(DecodeLimitError):
        codec.decode_batch([small], max_pixels=64 * 64 - 1)
    monkeypatch.setenv(limits.ENV_MAX_PIXELS, "lots")
    with pytest.raises(LICError, match="LICSTORE_MAX_PIXELS='lots'"):
        licstore.decode(small)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(LICError, match="positive int"):
            licstore.decode(small, max_pixels=bad)


def test_a_file_at_the_encode_limit_passes_the_default_check():
    limits.check_pixels(4096, 4096, limits.DEFAULT_MAX_PIXELS)
    limits.check_pixels(65536, 256, 4096 * 4096)
    with pytest.raises(DecodeLimitError):
        limits.check_pixels(65536, 257, 4096 * 4096)


# -- side layers: their own headers are read before their decoders run ------------------------


def _png_header(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    crc = struct.pack(">I", zlib.crc32(chunk))
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + chunk + crc


def _jxl_header(width: int, height: int) -> bytes:
    """A JPEG XL codestream start: signature, SizeHeader with 30-bit U32 sizes, no image."""
    bits = [0]  # div8 = 0
    for value, ratio in ((height, True), (width, False)):
        bits += [1, 1]  # U32 selector 3: Bits(30) + 1
        bits += [(value - 1) >> i & 1 for i in range(30)]
        if ratio:
            bits += [0, 0, 0]  # ratio 0: the width follows
    bits += [1]  # ImageMetadata.all_default
    out = bytearray(b"\xff\x0a")
    for i in range(0, len(bits), 8):
        out.append(sum(b << k for k, b in enumerate(bits[i : i + 8])))
    return bytes(out) + bytes(16)


def test_header_readers_give_the_declared_size():
    assert layer_headers.declared_size(_png_header(70000, 3), "PNG") == (70000, 3)
    assert layer_headers.declared_size(_jxl_header(BOMB_SIDE, 5), "JXL") == (BOMB_SIDE, 5)
    import pillow_jxl  # noqa: F401

    for w, h in ((1, 1), (1920, 1080), (1200, 1000), (800, 600), (17, 900), (16, 8)):
        im = Image.fromarray(_photo(h, w))
        for fmt, kwargs in (("PNG", {}), ("WEBP", {"lossless": True}), ("JXL", {"lossless": True})):
            buf = io.BytesIO()
            im.save(buf, format=fmt, **kwargs)
            assert layer_headers.declared_size(buf.getvalue(), fmt) == (w, h), fmt
    for fmt in ("PNG", "WEBP", "JXL"):
        with pytest.raises(CorruptBitstreamError):
            layer_headers.declared_size(b"garbage", fmt)


def test_alpha_layer_declaring_a_huge_image_is_refused_before_decoding(no_model):
    rgba = licstore.encode(_photo(32, 32, 4), quality=1)
    bs = container.unpack(rgba)
    layers = [
        container.Layer("alpha", _png_header(BOMB_SIDE, BOMB_SIDE)) if la.kind == "alpha" else la
        for la in bs.layers
    ]
    bomb = container.pack(dataclasses.replace(bs, layers=tuple(layers)))
    with pytest.raises(DecodeLimitError, match=f"alpha side layer.*{BOMB_SIDE}x{BOMB_SIDE}"):
        licstore.decode(bomb)


def test_jpeg_xl_residual_declaring_a_huge_image_never_reaches_the_jxl_decoder(
    small, no_model, monkeypatch
):
    from pillow_jxl import JpegXLImagePlugin

    def refuse(*args, **kwargs):
        raise AssertionError("pillow-jxl ran: it decodes inside Image.open")

    monkeypatch.setattr(JpegXLImagePlugin, "Decoder", refuse)
    meta = struct.pack("<BBBI", 1, 2, 3, 0)  # version, codec 2 (JXL), 3 planes, CRC
    layer = container.Layer(residual.LOSSLESS_KIND, b"\x00" + _jxl_header(BOMB_SIDE, 64), meta)
    bs = container.unpack(small)
    bomb = container.pack(dataclasses.replace(bs, layers=(*bs.layers, layer)))
    with pytest.raises(DecodeLimitError, match="residual-lossless layer.*JXL"):
        licstore.decode(bomb)
    v = np.zeros((64, 64, 3))
    with pytest.raises(DecodeLimitError):  # the decoder's own check, after the model
        residual.lossless_decode(v, layer.data, layer.meta)


def test_hevc_residual_of_another_size_is_refused_before_the_model(small, no_model):
    res = residual.HevcResidual.of(_photo(32, 48), _photo(32, 48) // 2)
    heif = res.encode(10)
    meta = res.meta(10, heif)
    bs = container.unpack(small)
    layer = container.Layer(residual.HEVC_KIND, heif, meta)
    bad = container.pack(dataclasses.replace(bs, layers=(*bs.layers, layer)))
    with pytest.raises(CorruptBitstreamError, match=r"residual-hevc image is \(48, 32\)"):
        licstore.decode(bad)


def test_resgdn_code_map_declaring_a_huge_image_never_reaches_the_jxl_decoder(monkeypatch):
    from pillow_jxl import JpegXLImagePlugin

    net = models.load("resgdn-vr")

    def refuse(*args, **kwargs):
        raise AssertionError("pillow-jxl ran: it decodes inside Image.open")

    monkeypatch.setattr(JpegXLImagePlugin, "Decoder", refuse)
    payload = bytes(8 * net.M) + b"\x01" + _jxl_header(BOMB_SIDE, BOMB_SIDE)
    with pytest.raises(DecodeLimitError, match="code map"):
        net.decode_latents(payload, 64, 64, 4)


def test_a_layer_the_mode_does_not_use_is_refused_before_the_model(small, no_model):
    """Spec 3.8: a decoder MUST reject a layer its mode does not use."""
    alpha = imageio.prepare(Image.new("LA", (64, 64))).side_layers[0]
    bs = container.unpack(small)
    extra = container.Layer("alpha", alpha.data)
    bad = container.pack(dataclasses.replace(bs, layers=(*bs.layers, extra)))
    with pytest.raises(CorruptBitstreamError, match=r"\['alpha'\].*mode RGB does not use"):
        licstore.decode(bad)


# -- out of memory ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [
        MemoryError(),
        RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 9 bytes"),
    ],
    ids=["MemoryError", "torch-cpu"],
)
@pytest.mark.parametrize("stage", ["synthesize", "decode_latents"])
def test_out_of_memory_while_decoding_is_a_typed_error(small, monkeypatch, error, stage):
    net = models.for_bitstream(*_model_key(small))

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(net, stage, fail)
    with pytest.raises(DecodeMemoryError, match="out of memory decoding 64x64") as info:
        licstore.decode(small)
    assert isinstance(info.value, MemoryError) and isinstance(info.value, LICError)
    assert info.value.__cause__ is error


def test_other_runtime_errors_are_not_reported_as_out_of_memory(small, monkeypatch):
    net = models.for_bitstream(*_model_key(small))

    def fail(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(net, "synthesize", fail)
    with pytest.raises(RuntimeError, match="a bug") as info:
        licstore.decode(small)
    assert not isinstance(info.value, LICError)


def _model_key(data: bytes) -> tuple[str, bytes]:
    bs = container.unpack(data)
    return bs.model, bs.weights_hash


# -- readers of many images name the one that failed, keeping the error's class ---------------


def test_readers_name_the_row_or_path_and_keep_the_class(small, bomb, tmp_path):
    import fsspec
    import pyarrow as pa
    import pyarrow.parquet as pq

    from licstore import arrow, features, parquet
    from licstore.torch import BatchDecoder

    stored = [features._stored(d, None) for d in (small, bomb)]
    table = pa.table({"image": pa.array(stored, type=features.STORAGE_TYPE)})
    with pytest.raises(DecodeLimitError, match=r"^row 1: the bitstream declares a 60000x60000"):
        arrow.decompress_column(table, "image")
    path = tmp_path / "rows.parquet"
    pq.write_table(table, path)
    with pytest.raises(DecodeLimitError, match=r"^row 1: the bitstream declares"):
        parquet.read_images(str(path), "image", rows=[0, 1])
    assert parquet.read_images(str(path), "image", rows=[0])[0].size == (64, 64)
    with pytest.raises(DecodeLimitError, match=r"^stored image \(\d+ bytes\): the bitstream"):
        features.LICImage().decode_example({"bytes": bomb, "path": None})
    with pytest.raises(DecodeLimitError, match=r"^item 1: the bitstream declares"):
        BatchDecoder()([small, bomb])
    fs = fsspec.filesystem("memory")
    fs.pipe_file("/limits-test/bomb.png", bomb)
    try:
        with pytest.raises(DecodeLimitError, match=r"^lic::memory://.*bomb.png: the bitstream"):
            fsspec.open("lic::memory:///limits-test/bomb.png").open().read()
    finally:
        fs.rm("/limits-test", recursive=True)
