"""Turn user input into the RGB planes the codec codes, and decoded planes back into an image.

The neural codec is lossy and only sees an ``H x W x 3`` uint8 array. Everything else an image
needs to come back in its original PIL mode travels in *side layers*: small byte strings the
container stores verbatim (lossless).

Mode policy (``prepare`` -> coded RGB planes + side layers; ``restore`` does the inverse):

=======  ============================  ==================  =====================================
mode     RGB planes                    side layers         restore
=======  ============================  ==================  =====================================
RGB      as is                         none                as is
L        gray replicated to 3 planes   none                rounded mean of the 3 planes
1        0/255 gray, replicated        none                mean >= 128 -> white, mode "1"
LA       gray replicated               alpha               mean plane + exact alpha
RGBA     RGB, *not* premultiplied      alpha               RGB + exact alpha
P        palette colours               palette (+ alpha)   nearest used palette entry, exact
                                                           palette and ``transparency`` info
PA       palette colours               palette, alpha      as P, plus exact alpha band
=======  ============================  ==================  =====================================

* The alpha side layer is a PNG of an ``L`` image, so alpha comes back bit-exactly. Pixels with
  alpha 0 keep their RGB values.
* A P image gets an alpha layer when a pixel uses a (partly) transparent palette entry
  (``info["transparency"]`` or an RGBA palette). Restoring matches alpha exactly first, then the
  nearest RGB colour among the palette entries the original image used, so transparency never
  flips and lossy colours never snap to unused entries. Palette entries with identical RGBA
  values cannot be told apart: the lowest index wins.
* Colour-key transparency on RGB/L/1 images (``info["transparency"]``) becomes an explicit alpha
  layer; such images come back as RGBA/LA, because a lossy codec cannot keep an exact key colour.
* EXIF orientation is applied before coding: the decoded image is upright and carries no
  orientation tag.
* Other modes (I;16, I, F, CMYK, YCbCr, LAB, HSV, ...) are refused with a hint how to convert.
* Sizes from 1x1 up to ``MAX_SIDE`` per side and ``MAX_PIXELS`` in total.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from licstore.errors import (
    CorruptBitstreamError,
    LICError,
    UnsupportedImageError,
)
from licstore.layer_headers import check_layer_image, pil_bomb_error

__all__ = [
    "MAX_PIXELS",
    "MAX_SIDE",
    "SideLayer",
    "PreparedImage",
    "check_mode_layers",
    "lossless_problem",
    "prepare",
    "restore",
    "to_numpy_rgb",
]

MAX_PIXELS: int = 4096 * 4096
"""Largest accepted width * height (16.8 MP). The transforms run on the whole image at once;
at this size encoding peaks at several GiB (see BENCHMARKS.md). Larger images must be resized
or split into tiles by the caller."""

MAX_SIDE: int = 65535
"""Largest accepted width or height."""

ALPHA = "alpha"
PALETTE = "palette"
MODES = ("RGB", "L", "LA", "RGBA", "P", "PA", "1")

_PALETTE_META_VERSION = 1
_PALETTE_MODES = ("RGB", "RGBA")
_NEAREST_CHUNK = 2048  # unique colours per distance block: bounds memory to a few MB
_ALPHA_WEIGHT = 1 << 18  # > 3 * 255**2, so an alpha mismatch outweighs any RGB distance

_SUPPORTED = "licstore codes 8-bit RGB, RGBA, L, LA, 1, P and PA images"
_TO_RGB = 'convert it first with image.convert("RGB")'
_HIGH_DEPTH = (
    "its samples have more than 8 bits, which a conversion would silently clip or truncate; "
    "keep such data in a lossless format (PNG/TIFF), or scale it to 8 bits yourself, e.g. "
    "Image.fromarray((np.asarray(image) >> 8).astype(np.uint8)) for 16-bit data"
)
_FLOAT_DEPTH = (
    "its samples are floats; scale them to 0..255 yourself, e.g. "
    "Image.fromarray(np.rint(np.clip(np.asarray(image), 0, 1) * 255).astype(np.uint8)), "
    "or keep such data in a lossless format"
)
_MODE_HINTS = {
    "CMYK": _TO_RGB + " (use PIL.ImageCms with the embedded ICC profile for exact colours)",
    "YCbCr": _TO_RGB,
    "LAB": _TO_RGB,
    "HSV": _TO_RGB,
    "RGBX": _TO_RGB,
    "RGBa": 'convert it first with image.convert("RGBA")',
    "La": 'convert it first with image.convert("LA")',
    "I": _HIGH_DEPTH,
    "I;16": _HIGH_DEPTH,
    "I;16L": _HIGH_DEPTH,
    "I;16B": _HIGH_DEPTH,
    "I;16N": _HIGH_DEPTH,
    "F": _FLOAT_DEPTH,
}
_INPUT_KINDS = (
    "pass a PIL image, a numpy array (HxW, HxWx1, HxWx3 or HxWx4; uint8, or float in [0, 1]), "
    "a torch tensor (CxHxW with C in 1, 3, 4), an image file path, or encoded image bytes"
)


@dataclass
class SideLayer:
    """Bytes the container stores verbatim next to the coded RGB planes."""

    kind: str  # "alpha" or "palette"
    data: bytes
    meta: bytes = b""


@dataclass
class PreparedImage:
    """What the codec codes (``rgb``) plus what ``restore`` needs to rebuild the original mode."""

    rgb: np.ndarray  # H x W x 3 uint8, C-contiguous
    mode: str  # one of MODES
    side_layers: list[SideLayer] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# prepare
# --------------------------------------------------------------------------------------------


def prepare(image: Any) -> PreparedImage:
    """Turn any supported input into RGB planes plus side layers; refuse everything else.

    Accepts a PIL image, a numpy array (HxW, HxWx1, HxWx3, HxWx4; uint8, or float in [0, 1]),
    a torch tensor (CxHxW with C in 1, 3, 4; uint8, or float in [0, 1]), a ``str`` or
    ``os.PathLike`` image file path, or ``bytes``/``bytearray`` holding an encoded image file.
    Floats are converted with ``round(x * 255)``. Raises ``UnsupportedImageError`` otherwise.
    An already prepared image is returned as is (callers that validate rows first).
    """
    if isinstance(image, PreparedImage):
        return image
    if isinstance(image, Image.Image):
        return _from_pil(image)
    if isinstance(image, np.ndarray):
        return _from_array(image, "numpy array")
    if isinstance(image, (bytes, bytearray, memoryview)):
        return _from_encoded(bytes(image))
    if isinstance(image, (str, os.PathLike)):
        return _from_path(image)
    if _is_torch_tensor(image):
        return _from_array(_tensor_to_array(image), "torch tensor")
    raise UnsupportedImageError(
        f"cannot read an image from a {type(image).__name__} object: {_INPUT_KINDS}"
    )


def to_numpy_rgb(image: Any) -> np.ndarray:
    """Convenience for callers that only want the coded planes: ``prepare(image).rgb``."""
    return prepare(image).rgb


def _check_size(width: int, height: int) -> None:
    """Refuse empty and oversized images before any pixel memory is allocated."""
    if width < 1 or height < 1:
        raise UnsupportedImageError(f"image is empty ({width}x{height}); it needs 1x1 or more")
    if width > MAX_SIDE or height > MAX_SIDE:
        raise UnsupportedImageError(
            f"image is {width}x{height}; licstore accepts at most {MAX_SIDE} pixels per side: "
            "resize it or split it into tiles"
        )
    if width * height > MAX_PIXELS:
        raise UnsupportedImageError(
            f"image is {width}x{height} = {width * height} pixels; licstore accepts at most "
            f"MAX_PIXELS = {MAX_PIXELS} pixels: resize it or split it into tiles"
        )


def _prepared(
    rgb: np.ndarray, mode: str, alpha: np.ndarray | None = None, palette: SideLayer | None = None
) -> PreparedImage:
    """Assemble the result with a fresh C-contiguous array the caller may keep or mutate."""
    layers = []
    if alpha is not None:
        layers.append(_alpha_layer(alpha))
    if palette is not None:
        layers.append(palette)
    return PreparedImage(np.array(rgb, dtype=np.uint8, order="C", copy=True), mode, layers)


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    """Gray goes into all three planes, so restore can average away some codec noise."""
    return np.repeat(gray[:, :, None], 3, axis=2)


# --- files and bytes ------------------------------------------------------------------------


def _from_path(path: str | os.PathLike) -> PreparedImage:
    """Open an image file; missing/unreadable files are input errors, not OSErrors."""
    name = os.fspath(path)
    try:
        opened = Image.open(name)
    except FileNotFoundError as exc:
        raise UnsupportedImageError(f"no such image file: {name!r}") from exc
    except Exception as exc:
        raise _open_failure(f"file {name!r}", "pass the path of an image file", exc) from exc
    with opened:
        return _from_pil(opened)


def _from_encoded(data: bytes) -> PreparedImage:
    """Decode an in-memory image file (PNG, JPEG, ...)."""
    try:
        opened = Image.open(io.BytesIO(data))
    except Exception as exc:
        hint = "pass encoded image bytes (PNG, JPEG, ...), or a file name as str"
        raise _open_failure(f"bytes starting with {data[:16]!r}", hint, exc) from exc
    with opened:
        return _from_pil(opened)


def _open_failure(source: str, hint: str, exc: Exception) -> UnsupportedImageError:
    """Say whether the input was too large for PIL's bomb guard or simply not an image."""
    if isinstance(exc, Image.DecompressionBombError):
        return UnsupportedImageError(
            f"{source} holds an image too large to decode safely ({exc}); licstore accepts "
            f"at most MAX_PIXELS = {MAX_PIXELS} pixels: resize it or split it into tiles"
        )
    return UnsupportedImageError(f"{source} is not a readable image file ({exc}); {hint}")


# --- PIL images -----------------------------------------------------------------------------


def _from_pil(image: Image.Image) -> PreparedImage:
    """Validate cheaply (frames, mode, size) before decoding, then split by mode."""
    _check_single_frame(image)
    _check_mode(image.mode)
    _check_size(*image.size)
    try:
        upright = _load_upright(image)
        return _MODE_PREPARERS[upright.mode](upright)
    except LICError:
        raise
    except Exception as exc:  # any decoder failure: truncated data, bad EXIF, closed file
        raise UnsupportedImageError(f"cannot decode the image: {exc}") from exc


def _check_single_frame(image: Image.Image) -> None:
    """Refuse animations: silently keeping one frame would lose data the user expects stored.

    MPO files (phone cameras) are allowed: their first frame is the photo, the rest previews.
    """
    frames = getattr(image, "n_frames", 1)
    if frames > 1 and image.format != "MPO":
        raise UnsupportedImageError(
            f"image has {frames} frames; licstore stores single images: store each frame "
            "separately (image.seek(i); image.copy())"
        )


def _check_mode(mode: str) -> None:
    """Refuse modes the 8-bit RGB codec cannot represent, saying how to convert."""
    if mode not in MODES:
        hint = _MODE_HINTS.get(mode, 'convert it to "RGB", "RGBA" or "L" first')
        raise UnsupportedImageError(f"{_SUPPORTED}; mode {mode!r} is not supported: {hint}")


def _load_upright(image: Image.Image) -> Image.Image:
    """Decode pixels and apply EXIF orientation, so what is coded is what a viewer shows."""
    image.load()
    upright = ImageOps.exif_transpose(image)
    return image if upright is None else upright


def _prep_rgb(image: Image.Image) -> PreparedImage:
    """RGB as is; a colour key becomes an alpha layer (a lossy codec cannot keep the key)."""
    if "transparency" in image.info:
        return _prep_rgba(image.convert("RGBA"))
    return _prepared(np.asarray(image), "RGB")


def _prep_l(image: Image.Image) -> PreparedImage:
    """Gray replicated to three planes; a gray colour key becomes an alpha layer."""
    if "transparency" in image.info:
        return _prep_la(image.convert("LA"))
    return _prepared(_gray_to_rgb(np.asarray(image)), "L")


def _prep_bilevel(image: Image.Image) -> PreparedImage:
    """Bilevel as 0/255 gray: the largest possible margin for the threshold on restore."""
    gray = np.asarray(image.convert("L"))
    if "transparency" in image.info:
        # PIL keeps the raw 1-bit sample (0 or 1) as key; it does not apply it on convert.
        key = 255 if image.info["transparency"] else 0
        alpha = np.where(gray == key, 0, 255).astype(np.uint8)
        return _prepared(_gray_to_rgb(gray), "LA", alpha=alpha)
    return _prepared(_gray_to_rgb(gray), "1")


def _prep_la(image: Image.Image) -> PreparedImage:
    """Gray planes plus the exact alpha band."""
    la = np.asarray(image)
    return _prepared(_gray_to_rgb(la[:, :, 0]), "LA", alpha=la[:, :, 1])


def _prep_rgba(image: Image.Image) -> PreparedImage:
    """RGB planes (not premultiplied, so invisible pixels keep their colour) plus alpha."""
    rgba = np.asarray(image)
    return _prepared(rgba[:, :, :3], "RGBA", alpha=rgba[:, :, 3])


def _prep_palette(image: Image.Image) -> PreparedImage:
    """Palette colours as RGB; palette and transparency info go verbatim into a side layer."""
    indices = np.asarray(image)
    info = _palette_info(image, indices)
    table = _palette_table(info)
    colours = table[indices]
    alpha = colours[:, :, 3]
    if not (alpha < 255).any():
        alpha = None  # nothing visible is transparent: the palette layer alone restores it
    return _prepared(colours[:, :, :3], "P", alpha=alpha, palette=_palette_layer(info))


def _prep_palette_alpha(image: Image.Image) -> PreparedImage:
    """PA: palette colours as RGB, the A band as an exact alpha layer."""
    bands = np.asarray(image)
    indices = bands[:, :, 0]
    info = _palette_info(image, indices)
    colours = _palette_table(info)[indices]
    return _prepared(colours[:, :, :3], "PA", alpha=bands[:, :, 1], palette=_palette_layer(info))


_MODE_PREPARERS: dict[str, Callable[[Image.Image], PreparedImage]] = {
    "RGB": _prep_rgb,
    "L": _prep_l,
    "1": _prep_bilevel,
    "LA": _prep_la,
    "RGBA": _prep_rgba,
    "P": _prep_palette,
    "PA": _prep_palette_alpha,
}


# --- numpy arrays and torch tensors -------------------------------------------------------


def _is_torch_tensor(obj: Any) -> bool:
    """Detect tensors without importing torch, so imageio works where torch is absent."""
    return type(obj).__module__.startswith("torch") and hasattr(obj, "detach")


def _tensor_to_array(tensor: Any) -> np.ndarray:
    """CxHxW tensor (any device) -> HxWxC numpy array; dtype is checked later like numpy's."""
    t = tensor.detach()
    if t.dim() == 3:
        if t.shape[0] not in (1, 3, 4):
            raise UnsupportedImageError(
                f"torch tensor of shape {tuple(t.shape)}: expected CxHxW with C in 1, 3, 4 "
                "(for an HxWxC tensor use tensor.permute(2, 0, 1))"
            )
        _check_size(int(t.shape[2]), int(t.shape[1]))
        t = t.permute(1, 2, 0)
    elif t.dim() == 2:
        _check_size(int(t.shape[1]), int(t.shape[0]))
    else:
        raise UnsupportedImageError(
            f"torch tensor of shape {tuple(t.shape)}: expected one image, CxHxW "
            "(for a batch, pass tensor[i] one at a time)"
        )
    dtype = str(t.dtype)
    if dtype == "torch.uint8" or dtype == "torch.float64":
        return t.cpu().numpy()
    if t.is_floating_point():
        return t.float().cpu().numpy()  # float16/bfloat16: numpy lacks bfloat16
    raise UnsupportedImageError(
        f"torch tensor of dtype {dtype}: expected uint8, or float with values in [0, 1] "
        "(e.g. tensor.to(torch.uint8) if the values are 0..255)"
    )


def _from_array(array: np.ndarray, what: str) -> PreparedImage:
    """HxW / HxWxC array -> planes; shape and size are checked before any conversion."""
    hwc = _as_hwc(array, what)
    _check_size(hwc.shape[1], hwc.shape[0])
    pixels = _as_uint8(hwc, what)
    channels = pixels.shape[2]
    if channels == 1:
        return _prepared(_gray_to_rgb(pixels[:, :, 0]), "L")
    if channels == 3:
        return _prepared(pixels, "RGB")
    return _prepared(pixels[:, :, :3], "RGBA", alpha=pixels[:, :, 3])


def _as_hwc(array: np.ndarray, what: str) -> np.ndarray:
    """Normalise to HxWxC with C in 1, 3, 4, explaining the likely mistake otherwise."""
    if array.ndim == 2:
        return array[:, :, None]
    if array.ndim == 3 and array.shape[2] in (1, 3, 4):
        return array
    hint = ""
    if array.ndim == 3 and array.shape[0] in (1, 3, 4):
        hint = " (it looks channels-first: use array.transpose(1, 2, 0))"
    elif array.ndim == 4:
        hint = " (for a batch, pass one image at a time)"
    raise UnsupportedImageError(
        f"{what} of shape {array.shape}: expected HxW, HxWx1, HxWx3 or HxWx4{hint}"
    )


def _as_uint8(array: np.ndarray, what: str) -> np.ndarray:
    """uint8 passes; floats in [0, 1] become round(x * 255); everything else is refused."""
    if array.dtype == np.uint8:
        return array
    if np.issubdtype(array.dtype, np.floating):
        return _float_to_uint8(array, what)
    raise UnsupportedImageError(
        f"{what} of dtype {array.dtype}: expected uint8, or float with values in [0, 1] "
        "(e.g. array.astype(np.uint8) if the values are 0..255)"
    )


def _float_to_uint8(array: np.ndarray, what: str) -> np.ndarray:
    """Refuse NaN and out-of-range values instead of clipping them into a plausible image."""
    work = array.astype(np.float64 if array.dtype.itemsize >= 8 else np.float32, copy=False)
    if np.isnan(work).any():
        raise UnsupportedImageError(
            f"{what} contains NaN values: replace them (e.g. np.nan_to_num) before storing"
        )
    low, high = float(work.min()), float(work.max())
    if low < 0.0 or high > 1.0:
        raise UnsupportedImageError(
            f"{what} has float values in [{low:g}, {high:g}]; float images must be in [0, 1]: "
            "undo any normalisation, or divide by 255 if the values are 0..255"
        )
    return np.rint(work * 255.0).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# side layers
# --------------------------------------------------------------------------------------------


def _alpha_layer(alpha: np.ndarray) -> SideLayer:
    """Alpha as a PNG of an L image: lossless, compact for typical masks, deterministic."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(alpha, dtype=np.uint8)).save(
        buffer, format="PNG", compress_level=9
    )
    return SideLayer(ALPHA, buffer.getvalue())


def _decode_alpha(data: bytes, width: int, height: int) -> np.ndarray:
    """Decode and validate the alpha layer; the size check runs before pixels are decoded."""
    check_layer_image(data, "PNG", width, height, "alpha side layer")
    try:
        with Image.open(io.BytesIO(data), formats=["PNG"]) as image:
            if image.mode != "L" or image.size != (width, height):
                raise CorruptBitstreamError(
                    f"alpha side layer is a {image.mode} image of size {image.size}; "
                    f"expected an L image of size {(width, height)}"
                )
            image.load()
            return np.array(image, dtype=np.uint8)
    except CorruptBitstreamError:
        raise
    except Image.DecompressionBombError as exc:
        raise pil_bomb_error("alpha side layer", exc) from exc
    except MemoryError:
        raise
    except Exception as exc:
        raise CorruptBitstreamError(f"alpha side layer is not a valid PNG: {exc}") from exc


@dataclass
class _PaletteInfo:
    """The palette facts restore needs: raw entries, their layout, transparency, used set."""

    mode: str  # raw palette layout: "RGB" or "RGBA"
    raw: bytes
    transparency: int | bytes | None
    used: np.ndarray  # 256 bools: which indices the image uses


def _palette_info(image: Image.Image, indices: np.ndarray) -> _PaletteInfo:
    """Collect palette, transparency and used indices from a P/PA image."""
    palette_mode = image.palette.mode if image.palette is not None else "RGB"
    if palette_mode not in _PALETTE_MODES:
        palette_mode = "RGB"
    raw = bytes(image.getpalette(rawmode=palette_mode) or [])
    transparency = image.info.get("transparency")
    if not (_is_index(transparency) or isinstance(transparency, bytes)):
        transparency = None  # PIL ignores anything else too; restore must see the same
    used = np.bincount(indices.ravel(), minlength=256)[:256] > 0
    return _PaletteInfo(palette_mode, raw, transparency, used)


def _is_index(value: Any) -> bool:
    """A usable transparency index: an int 0..255 (bool is an int, but never an index)."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 255


def _palette_table(info: _PaletteInfo) -> np.ndarray:
    """256 x RGBA colours of every index, computed by PIL itself from palette + transparency.

    prepare and restore both use this table, so coded colours match palette entries exactly.
    """
    ramp = Image.frombytes("P", (256, 1), bytes(range(256)))
    if info.raw:
        ramp.putpalette(info.raw, rawmode=info.mode)
    if info.transparency is not None:
        ramp.info["transparency"] = info.transparency
    return np.asarray(ramp.convert("RGBA"))[0]


def _palette_layer(info: _PaletteInfo) -> SideLayer:
    """Raw palette bytes as data; layout, transparency and used set as versioned JSON meta."""
    meta: dict[str, Any] = {
        "v": _PALETTE_META_VERSION,
        "mode": info.mode,
        "used": np.packbits(info.used).tobytes().hex(),
    }
    if isinstance(info.transparency, int):
        meta["transparency"] = info.transparency
    elif isinstance(info.transparency, bytes):
        meta["transparency_bytes"] = info.transparency.hex()
    encoded = json.dumps(meta, sort_keys=True, separators=(",", ":")).encode("ascii")
    return SideLayer(PALETTE, info.raw, encoded)


def _parse_palette_layer(data: bytes, meta: bytes) -> _PaletteInfo:
    """Validate the palette layer strictly: it comes from storage and may be damaged."""
    try:
        fields = json.loads(meta.decode("ascii"))
        if fields["v"] != _PALETTE_META_VERSION or fields["mode"] not in _PALETTE_MODES:
            raise ValueError(f"unsupported version or palette mode in {fields!r}")
        used = np.unpackbits(np.frombuffer(bytes.fromhex(fields["used"]), np.uint8))
        if used.size != 256:
            raise ValueError("used-index mask is not 256 bits")
        transparency: int | bytes | None = fields.get("transparency")
        if "transparency_bytes" in fields:
            transparency = bytes.fromhex(fields["transparency_bytes"])
        elif transparency is not None and not _is_index(transparency):
            raise ValueError(f"transparency {transparency!r} is not a palette index")
    except Exception as exc:
        raise CorruptBitstreamError(
            f"palette side layer has invalid meta ({type(exc).__name__}: {exc})"
        ) from exc
    channels = len(fields["mode"])
    if len(data) % channels or len(data) > 256 * channels:
        raise CorruptBitstreamError(
            f"palette side layer holds {len(data)} bytes, not a whole {fields['mode']} palette"
        )
    return _PaletteInfo(fields["mode"], bytes(data), transparency, used.astype(bool))


def lossless_problem(prepared: PreparedImage) -> str | None:
    """Why exact RGB planes would not restore ``prepared`` bit-exactly, or None if they would.

    Restore maps colours to palette indices; two used entries with the same colour (RGBA for
    P, RGB for PA, as restore matches them) cannot be told apart, so the index is lost.
    """
    palette = next((s for s in prepared.side_layers if s.kind == PALETTE), None)
    if palette is None:
        return None
    info = _parse_palette_layer(palette.data, palette.meta)
    used = _palette_table(info)[info.used]
    keys = used[:, :3] if prepared.mode == "PA" else used
    if len(np.unique(keys, axis=0)) < len(keys):
        return (
            f"this {prepared.mode} image uses palette entries with identical colours, so its "
            "palette indices cannot be stored losslessly; merge the duplicate entries "
            "(e.g. image.convert('RGB').quantize(...)) or store image.convert('RGBA')"
        )
    return None


# --------------------------------------------------------------------------------------------
# restore
# --------------------------------------------------------------------------------------------


def restore(
    rgb: np.ndarray,
    mode: str,
    side_layers: dict[str, tuple[bytes, bytes]] | list[SideLayer],
) -> Image.Image:
    """Rebuild a PIL image of ``mode`` from decoded (possibly lossy) RGB planes + side layers.

    ``side_layers`` is the list from ``prepare`` or a dict ``kind -> (data, meta)``. A missing,
    undecodable or unused layer (one the mode has no use for, e.g. alpha on RGB: the spec's
    section 3.8 MUST), or an unknown mode, raises ``CorruptBitstreamError``; an ``rgb`` that is
    not HxWx3 uint8 raises ``UnsupportedImageError``.
    """
    _check_decoded_rgb(rgb)
    layers = _layers_by_kind(side_layers)
    restorer = _MODE_RESTORERS.get(mode)
    if restorer is None:
        raise CorruptBitstreamError(f"unknown image mode {mode!r}; expected one of {MODES}")
    check_mode_layers(mode, layers)
    return restorer(rgb, layers)


def check_mode_layers(mode: str, kinds: Any) -> None:
    """Refuse side layers that ``mode`` does not use (spec 3.8: a decoder MUST reject them)."""
    unused = sorted(set(kinds) - set(_MODE_LAYERS.get(mode, ())))
    if unused:
        raise CorruptBitstreamError(
            f"side layer(s) {unused} present, but mode {mode} does not use them (a decoder must "
            "reject them: dropping a layer could silently change the image)"
        )


#: side layers each mode may carry (P: alpha when a used palette entry is transparent)
_MODE_LAYERS: dict[str, tuple[str, ...]] = {
    "RGB": (),
    "L": (),
    "1": (),
    "LA": (ALPHA,),
    "RGBA": (ALPHA,),
    "P": (PALETTE, ALPHA),
    "PA": (PALETTE, ALPHA),
}


def _check_decoded_rgb(rgb: Any) -> None:
    """The decoder must hand over HxWx3 uint8; anything else is a caller bug worth naming."""
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3:
        raise UnsupportedImageError(
            f"restore needs an HxWx3 uint8 numpy array, got {type(rgb).__name__} "
            f"{getattr(rgb, 'shape', '')} {getattr(rgb, 'dtype', '')}".rstrip()
        )
    if rgb.shape[2] != 3 or rgb.shape[0] < 1 or rgb.shape[1] < 1:
        raise UnsupportedImageError(f"restore needs an HxWx3 uint8 array, got shape {rgb.shape}")


def _layers_by_kind(
    side_layers: dict[str, tuple[bytes, bytes]] | list[SideLayer],
) -> dict[str, tuple[bytes, bytes]]:
    """Accept both layer forms; two layers of one kind are ambiguous, hence corrupt."""
    if isinstance(side_layers, dict):
        items = [
            (kind, value.data, value.meta)
            if isinstance(value, SideLayer)
            else (kind, value[0], value[1])
            for kind, value in side_layers.items()
        ]
    else:
        items = [(layer.kind, layer.data, layer.meta) for layer in side_layers]
    layers: dict[str, tuple[bytes, bytes]] = {}
    for kind, data, meta in items:
        if kind in layers:
            raise CorruptBitstreamError(f"side layer {kind!r} appears more than once")
        layers[kind] = (bytes(data), bytes(meta))
    return layers


def _need_layer(
    layers: dict[str, tuple[bytes, bytes]], kind: str, mode: str
) -> tuple[bytes, bytes]:
    """Fetch a layer the mode cannot be restored without."""
    if kind not in layers:
        raise CorruptBitstreamError(f"side layer {kind!r} is missing; mode {mode} needs it")
    return layers[kind]


def _alpha_for(rgb: np.ndarray, layers: dict[str, tuple[bytes, bytes]], mode: str) -> np.ndarray:
    """Decode the required alpha layer at the size of the decoded planes."""
    data, _meta = _need_layer(layers, ALPHA, mode)
    return _decode_alpha(data, rgb.shape[1], rgb.shape[0])


def _mean_plane(rgb: np.ndarray) -> np.ndarray:
    """Rounded mean of the planes: averaging cancels part of the codec's per-plane noise."""
    total = rgb.astype(np.uint16).sum(axis=2)
    return ((total + 1) // 3).astype(np.uint8)


def _restore_rgb(rgb: np.ndarray, layers: dict[str, tuple[bytes, bytes]]) -> Image.Image:
    """RGB needs nothing but the planes."""
    return Image.fromarray(np.ascontiguousarray(rgb))


def _restore_l(rgb: np.ndarray, layers: dict[str, tuple[bytes, bytes]]) -> Image.Image:
    """Gray from the mean of the three replicated planes."""
    return Image.fromarray(_mean_plane(rgb))


def _restore_bilevel(rgb: np.ndarray, layers: dict[str, tuple[bytes, bytes]]) -> Image.Image:
    """Threshold at 128, the midpoint of the 0/255 levels prepare coded."""
    return Image.fromarray(_mean_plane(rgb) >= 128)


def _restore_la(rgb: np.ndarray, layers: dict[str, tuple[bytes, bytes]]) -> Image.Image:
    """Mean gray plus exact alpha."""
    alpha = _alpha_for(rgb, layers, "LA")
    return Image.fromarray(np.stack([_mean_plane(rgb), alpha], axis=2))


def _restore_rgba(rgb: np.ndarray, layers: dict[str, tuple[bytes, bytes]]) -> Image.Image:
    """RGB planes plus exact alpha."""
    alpha = _alpha_for(rgb, layers, "RGBA")
    return Image.fromarray(np.concatenate([rgb, alpha[:, :, None]], axis=2))


def _restore_palette(rgb: np.ndarray, layers: dict[str, tuple[bytes, bytes]]) -> Image.Image:
    """Map colours back to used palette entries; alpha (if coded) must match exactly first."""
    info = _parse_palette_layer(*_need_layer(layers, PALETTE, "P"))
    table = _palette_table(info)
    alpha = None
    if ALPHA in layers or (table[info.used, 3] < 255).any():
        alpha = _alpha_for(rgb, layers, "P")
    indices = _nearest_indices(rgb, alpha, table, info.used)
    image = Image.frombytes("P", (rgb.shape[1], rgb.shape[0]), indices.tobytes())
    return _with_palette(image, info)


def _restore_palette_alpha(rgb: np.ndarray, layers: dict[str, tuple[bytes, bytes]]) -> Image.Image:
    """As P (matching RGB only), plus the exact A band."""
    info = _parse_palette_layer(*_need_layer(layers, PALETTE, "PA"))
    alpha = _alpha_for(rgb, layers, "PA")
    indices = _nearest_indices(rgb, None, _palette_table(info), info.used)
    image = Image.merge("PA", [Image.fromarray(indices), Image.fromarray(alpha)])
    return _with_palette(image, info)


def _with_palette(image: Image.Image, info: _PaletteInfo) -> Image.Image:
    """Attach the original palette bytes and transparency info unchanged."""
    if info.raw:
        image.putpalette(info.raw, rawmode=info.mode)
    if info.transparency is not None:
        image.info["transparency"] = info.transparency
    return image


def _nearest_indices(
    rgb: np.ndarray, alpha: np.ndarray | None, table: np.ndarray, used: np.ndarray
) -> np.ndarray:
    """Exact nearest used palette entry per pixel (squared RGB distance, alpha dominant).

    PIL's quantize uses a coarse colour cache and can pick a neighbouring entry even for exact
    palette colours, so the search is done here, once per distinct colour.
    """
    candidates = np.flatnonzero(used)
    if candidates.size == 0:
        raise CorruptBitstreamError("palette side layer marks no palette index as used")
    entries = table[candidates].astype(np.int64)
    keys = _pack_colours(rgb, alpha)
    unique, inverse = np.unique(keys.ravel(), return_inverse=True)
    colours = _unpack_colours(unique)
    best = np.empty(unique.size, dtype=np.uint8)
    for start in range(0, unique.size, _NEAREST_CHUNK):
        block = colours[start : start + _NEAREST_CHUNK]
        diff = block[:, None, :3] - entries[None, :, :3]
        distance = (diff * diff).sum(axis=2)
        if alpha is not None:
            alpha_diff = block[:, None, 3] - entries[None, :, 3]
            distance += alpha_diff * alpha_diff * _ALPHA_WEIGHT
        best[start : start + block.shape[0]] = candidates[distance.argmin(axis=1)]
    return best[inverse].reshape(rgb.shape[:2])


def _pack_colours(rgb: np.ndarray, alpha: np.ndarray | None) -> np.ndarray:
    """One uint32 key per pixel so distinct colours can be found with np.unique."""
    planes = rgb.astype(np.uint32)
    keys = (planes[:, :, 0] << 16) | (planes[:, :, 1] << 8) | planes[:, :, 2]
    if alpha is not None:
        keys |= alpha.astype(np.uint32) << 24
    return keys


def _unpack_colours(keys: np.ndarray) -> np.ndarray:
    """Inverse of _pack_colours: N x 4 int64 (R, G, B, A); A is 0 when none was packed."""
    shifts = np.array([16, 8, 0, 24], dtype=np.uint32)
    return ((keys[:, None] >> shifts) & 0xFF).astype(np.int64)


_MODE_RESTORERS: dict[str, Callable[[np.ndarray, dict[str, tuple[bytes, bytes]]], Image.Image]] = {
    "RGB": _restore_rgb,
    "L": _restore_l,
    "1": _restore_bilevel,
    "LA": _restore_la,
    "RGBA": _restore_rgba,
    "P": _restore_palette,
    "PA": _restore_palette_alpha,
}
