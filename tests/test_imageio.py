"""licstore.imageio: input -> coded RGB planes + side layers, and back to the original mode."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from licstore import imageio
from licstore.errors import CorruptBitstreamError, UnsupportedImageError

ROOT = Path(__file__).resolve().parents[1]


# --- helpers ---------------------------------------------------------------------------------


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _random_rgba(height: int = 33, width: int = 65, seed: int = 0) -> Image.Image:
    return Image.fromarray(_rng(seed).integers(0, 256, (height, width, 4), dtype=np.uint8))


def _palette_image(indices: np.ndarray, palette: list[int], mode: str = "RGB") -> Image.Image:
    image = Image.frombytes("P", (indices.shape[1], indices.shape[0]), indices.tobytes())
    image.putpalette(bytes(palette), rawmode=mode)
    return image


# Near-duplicate colours on purpose: PIL's quantize cache would confuse 1,1,1 with 2,2,2.
TRICKY_PALETTE = [0, 0, 0, 1, 1, 1, 2, 2, 2, 200, 10, 10, 201, 10, 10, 9, 9, 9, 50, 60, 70]


def _tricky_p(seed: int = 0) -> Image.Image:
    indices = _rng(seed).integers(0, 7, (20, 30), dtype=np.uint8)
    return _palette_image(indices, TRICKY_PALETTE)


def _separated_palette() -> list[int]:
    """16 well separated used colours plus an unused near-twin of colour 0 (index 16)."""
    entries = [(i * 16, 255 - i * 16, (i * 40) % 256) for i in range(16)]
    entries.append((1, 254, 1))
    return [c for entry in entries for c in entry]


def _roundtrip(image: Image.Image) -> tuple[imageio.PreparedImage, Image.Image]:
    prepared = imageio.prepare(image)
    return prepared, imageio.restore(prepared.rgb, prepared.mode, prepared.side_layers)


def _encoded(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def _layer(prepared: imageio.PreparedImage, kind: str) -> imageio.SideLayer:
    return next(layer for layer in prepared.side_layers if layer.kind == kind)


def _check_rgb_array(rgb: np.ndarray, height: int, width: int) -> None:
    assert rgb.shape == (height, width, 3)
    assert rgb.dtype == np.uint8
    assert rgb.flags.c_contiguous


# --- modes: exact round trips ------------------------------------------------------------------


def test_rgb_as_is_and_exact_roundtrip():
    image = _random_rgba().convert("RGB")
    prepared, restored = _roundtrip(image)
    _check_rgb_array(prepared.rgb, 33, 65)
    assert prepared.mode == "RGB" and prepared.side_layers == []
    assert np.array_equal(prepared.rgb, np.asarray(image))
    assert restored.mode == "RGB"
    assert np.array_equal(np.asarray(restored), np.asarray(image))


def test_l_replicated_and_exact_roundtrip():
    image = _random_rgba().convert("L")
    prepared, restored = _roundtrip(image)
    gray = np.asarray(image)
    assert prepared.mode == "L" and prepared.side_layers == []
    for plane in range(3):
        assert np.array_equal(prepared.rgb[:, :, plane], gray)
    assert restored.mode == "L"
    assert np.array_equal(np.asarray(restored), gray)


def test_bilevel_coded_as_0_255_and_exact_roundtrip():
    image = _random_rgba().convert("L").point(lambda v: 255 if v > 127 else 0).convert("1")
    prepared, restored = _roundtrip(image)
    assert prepared.mode == "1" and prepared.side_layers == []
    assert set(np.unique(prepared.rgb)) <= {0, 255}
    assert restored.mode == "1"
    assert np.array_equal(np.asarray(restored), np.asarray(image))


@pytest.mark.parametrize("mode", ["LA", "RGBA"])
def test_alpha_modes_exact_roundtrip(mode):
    image = _random_rgba().convert(mode)
    prepared, restored = _roundtrip(image)
    assert prepared.mode == mode
    assert [layer.kind for layer in prepared.side_layers] == ["alpha"]
    assert restored.mode == mode
    assert np.array_equal(np.asarray(restored), np.asarray(image))


def test_alpha_is_bit_exact_and_rgb_not_premultiplied():
    rgba = _rng(1).integers(0, 256, (17, 23, 4), dtype=np.uint8)
    rgba[:5, :, 3] = 0  # invisible pixels with arbitrary colour
    prepared = imageio.prepare(Image.fromarray(rgba))
    assert np.array_equal(prepared.rgb, rgba[:, :, :3])  # colour kept where alpha == 0
    alpha_png = Image.open(io.BytesIO(_layer(prepared, "alpha").data))
    assert alpha_png.format == "PNG" and alpha_png.mode == "L"
    assert np.array_equal(np.asarray(alpha_png), rgba[:, :, 3])


def test_p_without_transparency_exact_roundtrip():
    image = _tricky_p()
    prepared, restored = _roundtrip(image)
    assert prepared.mode == "P"
    assert [layer.kind for layer in prepared.side_layers] == ["palette"]
    assert np.array_equal(prepared.rgb, np.asarray(image.convert("RGB")))
    assert restored.mode == "P"
    assert np.array_equal(np.asarray(restored), np.asarray(image))
    assert restored.getpalette() == image.getpalette()
    assert "transparency" not in restored.info


def test_p_with_transparency_index_exact_roundtrip():
    image = _tricky_p()
    image.info["transparency"] = 5
    prepared, restored = _roundtrip(image)
    assert prepared.mode == "P"
    assert sorted(layer.kind for layer in prepared.side_layers) == ["alpha", "palette"]
    rgba = np.asarray(image.convert("RGBA"))
    assert np.array_equal(prepared.rgb, rgba[:, :, :3])
    assert restored.mode == "P" and restored.info["transparency"] == 5
    assert np.array_equal(np.asarray(restored), np.asarray(image))
    assert restored.getpalette() == image.getpalette()
    assert np.array_equal(np.asarray(restored.convert("RGBA")), rgba)


def test_p_with_per_entry_transparency_from_png_file():
    indices = _rng(2).integers(0, 7, (12, 14), dtype=np.uint8)
    image = _palette_image(indices, TRICKY_PALETTE)
    alphas = bytes([255, 0, 128, 255, 255, 7, 255])
    data = _encoded(image, "PNG", transparency=alphas)
    original = Image.open(io.BytesIO(data))
    assert original.mode == "P" and isinstance(original.info["transparency"], bytes)
    prepared, restored = _roundtrip(original)
    assert restored.mode == "P"
    assert restored.info["transparency"] == original.info["transparency"]
    assert np.array_equal(np.asarray(restored), indices)
    assert np.array_equal(
        np.asarray(restored.convert("RGBA")), np.asarray(original.convert("RGBA"))
    )


def test_p_with_rgba_palette_roundtrip():
    image = _random_rgba(seed=3).quantize(8)  # quantizing RGBA gives an RGBA palette
    assert image.palette.mode == "RGBA"
    prepared, restored = _roundtrip(image)
    assert "alpha" in {layer.kind for layer in prepared.side_layers}
    assert restored.mode == "P" and restored.palette.mode == "RGBA"
    assert restored.getpalette(rawmode=None) == image.getpalette(rawmode=None)
    assert np.array_equal(np.asarray(restored.convert("RGBA")), np.asarray(image.convert("RGBA")))


def test_p_duplicate_palette_colours_render_identically():
    """Entries with identical colours cannot be told apart: the lowest used index wins."""
    palette = [10, 20, 30, 10, 20, 30, 99, 99, 99]
    indices = np.array([[0, 1, 2, 1]], dtype=np.uint8)
    image = _palette_image(indices, palette)
    _, restored = _roundtrip(image)
    assert np.array_equal(np.asarray(restored), [[0, 0, 2, 0]])
    assert np.array_equal(np.asarray(restored.convert("RGB")), np.asarray(image.convert("RGB")))


def test_pa_exact_roundtrip():
    indices = _rng(4).integers(0, 7, (9, 11), dtype=np.uint8)
    alpha = _rng(5).integers(0, 256, (9, 11), dtype=np.uint8)
    image = Image.merge("PA", [Image.fromarray(indices), Image.fromarray(alpha)])
    image.putpalette(bytes(TRICKY_PALETTE))
    prepared, restored = _roundtrip(image)
    assert prepared.mode == "PA"
    assert sorted(layer.kind for layer in prepared.side_layers) == ["alpha", "palette"]
    assert restored.mode == "PA"
    assert np.array_equal(np.asarray(restored), np.asarray(image))
    assert restored.getpalette() == image.getpalette()


def test_p_unusable_transparency_info_is_dropped():
    image = _tricky_p()
    image.info["transparency"] = 300  # PIL ignores an index outside the palette
    prepared, restored = _roundtrip(image)
    assert [layer.kind for layer in prepared.side_layers] == ["palette"]
    assert "transparency" not in restored.info
    assert np.array_equal(np.asarray(restored), np.asarray(image))


def test_gif_single_frame_is_p():
    data = _encoded(_tricky_p(), "GIF")
    prepared, restored = _roundtrip(Image.open(io.BytesIO(data)))
    assert prepared.mode == "P" and restored.mode == "P"
    assert np.array_equal(np.asarray(restored), np.asarray(Image.open(io.BytesIO(data))))


def test_rgb_colour_key_becomes_alpha():
    rgb = np.zeros((4, 5, 3), dtype=np.uint8)
    rgb[0, 0] = (1, 2, 3)
    image = Image.fromarray(rgb)
    image.info["transparency"] = (1, 2, 3)
    prepared, restored = _roundtrip(image)
    assert prepared.mode == "RGBA" and restored.mode == "RGBA"
    alpha = np.asarray(restored)[:, :, 3]
    assert alpha[0, 0] == 0 and (alpha.ravel()[1:] == 255).all()


def test_layers_are_deterministic():
    image = _random_rgba().convert("RGBA")
    assert imageio.prepare(image).side_layers == imageio.prepare(image).side_layers


# --- refused modes -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "hint"),
    [
        ("CMYK", 'image.convert("RGB")'),
        ("YCbCr", 'image.convert("RGB")'),
        ("I;16", "lossless"),
        ("I", "lossless"),
        ("F", "lossless"),
        ("RGBa", 'image.convert("RGBA")'),
    ],
)
def test_unsupported_modes_refused_with_hint(mode, hint):
    with pytest.raises(UnsupportedImageError) as info:
        imageio.prepare(Image.new(mode, (4, 3)))
    message = str(info.value)
    assert "8-bit" in message and repr(mode) in message and hint in message


def test_animation_refused_mpo_uses_first_frame():
    frames = [Image.new("RGB", (4, 4), (200, 0, 0)), Image.new("RGB", (4, 4), (0, 0, 200))]
    gif = _encoded(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert Image.open(io.BytesIO(gif)).n_frames == 2
    with pytest.raises(UnsupportedImageError, match="2 frames"):
        imageio.prepare(gif)
    mpo = _encoded(frames[0], "MPO", save_all=True, append_images=frames[1:])
    rgb = imageio.prepare(mpo).rgb
    assert rgb[..., 0].mean() > 150 and rgb[..., 2].mean() < 50


# --- EXIF orientation --------------------------------------------------------------------------


def test_exif_orientation_applied():
    pixels = np.zeros((8, 16, 3), dtype=np.uint8)
    pixels[:, :8] = 255  # left half white: easy to track through the rotation
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    data = _encoded(Image.fromarray(pixels), "JPEG", exif=exif, quality=95)
    stored = np.asarray(Image.open(io.BytesIO(data)))  # as decoded, not yet rotated
    prepared = imageio.prepare(data)
    assert prepared.rgb.shape == (16, 8, 3)
    assert np.array_equal(prepared.rgb, np.rot90(stored, k=-1))
    assert prepared.rgb[:4].mean() > 200 and prepared.rgb[-4:].mean() < 50  # white on top


# --- sizes ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("width", "height"), [(1, 1), (1, 5000), (5000, 3), (65, 33)])
@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P"])
def test_sizes(width, height, mode):
    image = _random_rgba(height, width).convert(mode)
    prepared, restored = _roundtrip(image)
    _check_rgb_array(prepared.rgb, height, width)
    assert restored.size == (width, height) and restored.mode == mode
    assert np.array_equal(np.asarray(restored), np.asarray(image))


def test_too_many_pixels_refused(monkeypatch):
    monkeypatch.setattr(imageio, "MAX_PIXELS", 100)
    imageio.prepare(np.zeros((10, 10), dtype=np.uint8))
    for too_big in (
        Image.new("RGB", (11, 10)),
        np.zeros((10, 11, 3), dtype=np.uint8),
        _encoded(Image.new("L", (11, 10)), "PNG"),
    ):
        with pytest.raises(UnsupportedImageError, match="100 pixels") as info:
            imageio.prepare(too_big)
        assert "tile" in str(info.value)


def test_too_long_side_refused():
    with pytest.raises(UnsupportedImageError, match="65535"):
        imageio.prepare(Image.new("L", (65536, 1)))
    with pytest.raises(UnsupportedImageError, match="65535"):
        imageio.prepare(np.zeros((65536, 1), dtype=np.uint8))


def test_decompression_bomb_refused(monkeypatch):
    data = _encoded(Image.new("L", (100, 100)), "PNG")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)
    with pytest.raises(UnsupportedImageError, match="too large") as info:
        imageio.prepare(data)
    assert isinstance(info.value.__cause__, Image.DecompressionBombError)


# --- numpy, torch, path, bytes inputs --------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "mode"), [((7, 9), "L"), ((7, 9, 1), "L"), ((7, 9, 3), "RGB"), ((7, 9, 4), "RGBA")]
)
def test_numpy_uint8_inputs(shape, mode):
    array = _rng().integers(0, 256, shape, dtype=np.uint8)
    prepared, restored = _roundtrip(array)
    _check_rgb_array(prepared.rgb, 7, 9)
    assert prepared.mode == mode and restored.mode == mode
    assert np.array_equal(np.asarray(restored), array.reshape(restored_shape(shape)))


def restored_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    return shape[:2] if len(shape) == 2 or shape[2] == 1 else shape


def test_numpy_input_is_copied_and_may_be_strided():
    array = _rng().integers(0, 256, (10, 12, 3), dtype=np.uint8)
    view = array[::2, ::-3]
    rgb = imageio.prepare(view).rgb
    assert rgb.flags.c_contiguous and np.array_equal(rgb, view)
    rgb[:] = 0
    assert array.any()  # prepare never aliases the caller's array


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_numpy_float_inputs_rounded(dtype):
    values = np.array([[0.0, 1.0, 0.5, 0.2, 1 / 255, 0.999]], dtype=dtype)
    expected = np.rint(values.astype(np.float64) * 255).astype(np.uint8)
    assert np.array_equal(imageio.to_numpy_rgb(values)[:, :, 0], expected)


@pytest.mark.parametrize(
    ("array", "match"),
    [
        (np.array([[0.5, np.nan]]), "NaN"),
        (np.array([[0.5, 1.5]]), r"\[0, 1\]"),
        (np.array([[-0.1, 0.5]]), r"\[0, 1\]"),
        (np.array([[0.5, np.inf]]), r"\[0, 1\]"),
        (np.zeros((4, 4), dtype=np.int64), "int64"),
        (np.zeros((4, 4), dtype=bool), "bool"),
        (np.zeros((4, 4), dtype=np.uint16), "uint16"),
        (np.zeros((0, 5), dtype=np.uint8), "empty"),
        (np.zeros((3, 8, 9), dtype=np.uint8), "transpose"),
        (np.zeros((2, 8, 9, 3), dtype=np.uint8), "batch"),
        (np.zeros(5, dtype=np.uint8), "shape"),
    ],
)
def test_bad_numpy_inputs_refused(array, match):
    with pytest.raises(UnsupportedImageError, match=match):
        imageio.prepare(array)


def test_torch_tensors():
    torch = pytest.importorskip("torch")
    hwc = _rng().integers(0, 256, (6, 5, 4), dtype=np.uint8)
    chw = torch.from_numpy(hwc).permute(2, 0, 1)
    for channels, mode in ((1, "L"), (3, "RGB"), (4, "RGBA")):
        prepared = imageio.prepare(chw[:channels])
        assert prepared.mode == mode
        _check_rgb_array(prepared.rgb, 6, 5)
        assert np.array_equal(prepared.rgb[:, :, 0], hwc[:, :, 0])
    as_float = (chw[:3].float() / 255).requires_grad_()
    assert np.array_equal(imageio.prepare(as_float).rgb, hwc[:, :, :3])
    assert np.array_equal(imageio.prepare(chw[:3].to(torch.bfloat16) / 255).rgb.shape, (6, 5, 3))


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda t: t.rand(3, 4, 4) * 2, r"\[0, 1\]"),
        (lambda t: t.full((3, 4, 4), float("nan")), "NaN"),
        (lambda t: t.zeros(5, 6, 3), "permute"),
        (lambda t: t.zeros(2, 3, 4, 4), "batch"),
        (lambda t: t.zeros(3, 4, 4, dtype=t.int64), "int64"),
    ],
)
def test_bad_torch_tensors_refused(make, match):
    torch = pytest.importorskip("torch")
    with pytest.raises(UnsupportedImageError, match=match):
        imageio.prepare(make(torch))


def test_imageio_does_not_import_torch():
    """Load imageio without running licstore/__init__ (which imports the models) or torch."""
    code = (
        "import sys, types\n"
        "sys.modules['torch'] = None\n"  # any 'import torch' now fails
        "pkg = types.ModuleType('licstore')\n"
        f"pkg.__path__ = [{str(ROOT / 'licstore')!r}]\n"
        "sys.modules['licstore'] = pkg\n"
        "import numpy as np\n"
        "import licstore.imageio as m\n"
        "assert m.prepare(np.zeros((2, 2), np.uint8)).mode == 'L'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_path_and_bytes_inputs(tmp_path):
    image = _random_rgba().convert("RGB")
    png = _encoded(image, "PNG")
    path = tmp_path / "image.png"
    path.write_bytes(png)
    for source in (str(path), path, png, bytearray(png)):
        prepared = imageio.prepare(source)
        assert prepared.mode == "RGB" and np.array_equal(prepared.rgb, np.asarray(image))
    jpeg = _encoded(image, "JPEG", quality=90)
    assert imageio.prepare(jpeg).rgb.shape == (33, 65, 3)


def test_non_images_refused(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello, not an image\n")
    for source, match in (
        (None, "NoneType"),
        (3, "int"),
        ([[0, 1]], "list"),
        (b"not an image", "not a readable image"),
        (b"", "not a readable image"),
        (str(text), "not a readable image"),
        (tmp_path / "missing.png", "no such image file"),
        (tmp_path, "not a readable image"),
    ):
        with pytest.raises(UnsupportedImageError, match=match):
            imageio.prepare(source)


def test_truncated_file_refused_with_cause():
    png = _encoded(_random_rgba().convert("RGB"), "PNG")
    with pytest.raises(UnsupportedImageError) as info:
        imageio.prepare(png[: len(png) // 2])
    assert info.value.__cause__ is not None


def test_to_numpy_rgb_matches_prepare():
    image = _random_rgba().convert("LA")
    assert np.array_equal(imageio.to_numpy_rgb(image), imageio.prepare(image).rgb)


# --- restore: lossy planes, layer forms, corruption ------------------------------------------


def _noisy(rgb: np.ndarray, amplitude: int = 3, seed: int = 7) -> np.ndarray:
    noise = _rng(seed).integers(-amplitude, amplitude + 1, rgb.shape)
    return np.clip(rgb.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def test_lossy_p_restores_mode_size_palette_and_indices():
    indices = _rng(8).integers(0, 16, (21, 19), dtype=np.uint8)
    image = _palette_image(indices, _separated_palette())
    image.info["transparency"] = 3
    prepared = imageio.prepare(image)
    restored = imageio.restore(_noisy(prepared.rgb), prepared.mode, prepared.side_layers)
    assert restored.mode == "P" and restored.size == (19, 21)
    assert restored.getpalette() == image.getpalette()
    assert restored.info["transparency"] == 3
    # well separated colours survive the noise; unused twin index 16 is never chosen
    assert np.array_equal(np.asarray(restored), indices)


def test_lossy_l_and_bilevel_restore():
    gray = _rng(9).integers(0, 256, (13, 17), dtype=np.uint8)
    prepared = imageio.prepare(Image.fromarray(gray))
    restored = imageio.restore(_noisy(prepared.rgb), "L", [])
    assert restored.mode == "L" and restored.size == (17, 13)
    assert np.abs(np.asarray(restored).astype(int) - gray).max() <= 3
    bits = Image.fromarray(gray > 127)
    prepared = imageio.prepare(bits)
    restored = imageio.restore(_noisy(prepared.rgb, amplitude=60), "1", [])
    assert restored.mode == "1" and np.array_equal(np.asarray(restored), np.asarray(bits))


def test_restore_accepts_dict_layers():
    image = _tricky_p()
    image.info["transparency"] = 2
    prepared = imageio.prepare(image)
    layers = {layer.kind: (layer.data, layer.meta) for layer in prepared.side_layers}
    restored = imageio.restore(prepared.rgb, "P", layers)
    assert np.array_equal(np.asarray(restored), np.asarray(image))


def _rgba_prepared() -> imageio.PreparedImage:
    return imageio.prepare(_random_rgba(9, 7))


@pytest.mark.parametrize(
    "alpha_data",
    [
        b"garbage",
        b"",
        lambda good: good[: len(good) // 2],
        lambda good: _encoded(Image.new("L", (8, 9)), "PNG"),  # wrong size
        lambda good: _encoded(Image.new("RGB", (7, 9)), "PNG"),  # wrong mode
        lambda good: _encoded(Image.new("L", (7, 9)), "JPEG"),  # not a PNG
    ],
)
def test_corrupt_alpha_layer(alpha_data):
    prepared = _rgba_prepared()
    good = _layer(prepared, "alpha").data
    data = alpha_data(good) if callable(alpha_data) else alpha_data
    with pytest.raises(CorruptBitstreamError, match="alpha"):
        imageio.restore(prepared.rgb, "RGBA", {"alpha": (data, b"")})


@pytest.mark.parametrize("mode", ["LA", "RGBA", "PA"])
def test_missing_alpha_layer(mode):
    image = _tricky_p().convert(mode)
    prepared = imageio.prepare(image)
    kept = [layer for layer in prepared.side_layers if layer.kind != "alpha"]
    with pytest.raises(CorruptBitstreamError, match="alpha"):
        imageio.restore(prepared.rgb, mode, kept)


def test_missing_alpha_layer_for_transparent_p():
    image = _tricky_p()
    image.info["transparency"] = 1
    prepared = imageio.prepare(image)
    with pytest.raises(CorruptBitstreamError, match="alpha"):
        imageio.restore(prepared.rgb, "P", [_layer(prepared, "palette")])


@pytest.mark.parametrize(
    ("data", "meta"),
    [
        (None, b"not json"),
        (None, b'{"v": 99, "mode": "RGB", "used": ""}'),
        (None, b'{"v": 1, "mode": "RGB", "used": "ff"}'),
        (None, b'{"v": 1, "mode": "RGB", "used": "' + b"f" * 64 + b'", "transparency": 300}'),
        (None, b'{"v": 1, "mode": "CMYK", "used": "' + b"f" * 64 + b'"}'),
        (b"\0\0\0\0", None),  # not a whole number of RGB entries
        (b"\0" * 771, None),  # more than 256 entries
    ],
)
def test_corrupt_palette_layer(data, meta):
    prepared = imageio.prepare(_tricky_p())
    good = _layer(prepared, "palette")
    layers = {"palette": (good.data if data is None else data, good.meta if meta is None else meta)}
    with pytest.raises(CorruptBitstreamError, match="palette"):
        imageio.restore(prepared.rgb, "P", layers)
    with pytest.raises(CorruptBitstreamError, match="palette"):
        imageio.restore(prepared.rgb, "P", {})


def test_restore_rejects_unknown_mode_duplicates_and_bad_rgb():
    rgb = np.zeros((2, 2, 3), np.uint8)
    with pytest.raises(CorruptBitstreamError, match="CMYK"):
        imageio.restore(rgb, "CMYK", [])
    layer = imageio.SideLayer("alpha", b"")
    with pytest.raises(CorruptBitstreamError, match="more than once"):
        imageio.restore(rgb, "RGBA", [layer, layer])
    for bad in (np.zeros((2, 2), np.uint8), np.zeros((2, 2, 4), np.uint8), rgb.astype(float)):
        with pytest.raises(UnsupportedImageError, match="HxWx3 uint8"):
            imageio.restore(bad, "RGB", [])


def test_restore_rejects_layers_the_mode_does_not_use():
    """formats/licstore-v1.md 3.8: a decoder MUST reject a layer its mode does not use."""
    prepared = _rgba_prepared()
    for mode in ("RGB", "L", "1"):
        with pytest.raises(CorruptBitstreamError, match=rf"\['alpha'\].*mode {mode} does not"):
            imageio.restore(prepared.rgb, mode, prepared.side_layers)
    palette = imageio.prepare(Image.new("P", (4, 3), 1)).side_layers
    assert [s.kind for s in palette] == ["palette"]
    for mode in ("RGBA", "LA"):
        with pytest.raises(CorruptBitstreamError, match="palette"):
            imageio.restore(prepared.rgb, mode, prepared.side_layers + palette)
    # the layers each mode does use still restore
    restored = imageio.restore(prepared.rgb, "RGBA", prepared.side_layers)
    assert restored.mode == "RGBA" and np.array_equal(np.asarray(restored)[:, :, :3], prepared.rgb)
