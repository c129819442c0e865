"""Enhancement layers on top of the learned base layer (spec: formats/licstore-v1.md, 13-14).

* ``residual-hevc``: the residual ``x - base`` rescaled to 8 bits by its per-channel min/max
  and coded by HEVC intra (x265 through pillow-heif) in 4:4:4. Lossy: it buys PSNR where the
  base model runs out of rate, or where its rate is spent less well than HEVC's.
* ``residual-lossless``: ``(x - pred + 128) mod 256`` coded by the smallest of PNG, WebP
  lossless and JPEG XL lossless. ``pred`` is the base reconstruction computed in float64 and
  rounded *robustly*: samples whose value lies within ``TIE_EPS`` of a rounding boundary
  ``k + 0.5`` are listed in the layer and rounded down, all others to nearest. Any decoder
  whose float64 synthesis differs from the encoder's by less than ``TIE_EPS`` (measured
  differences between thread counts: 1e-13) therefore computes the same ``pred`` and the
  decoded image is bit-exact on every machine.

Pure numpy + Pillow plugins; the network parts (base reconstruction) live in ``codec``.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .errors import CorruptBitstreamError, LICError, UnsupportedBitstreamError
from .layer_headers import check_layer_image, pil_bomb_error

__all__ = [
    "HEVC_KIND",
    "LOSSLESS_CODECS",
    "LOSSLESS_KIND",
    "TIE_EPS",
    "LOSSLESS_CANDIDATES",
    "HevcResidual",
    "check_layer",
    "hevc_apply",
    "hevc_decode_planes",
    "hevc_reconstruct",
    "lossless_decode",
    "lossless_encode",
    "lossless_encoders",
    "lossless_planes",
    "predict",
    "tie_positions",
]

HEVC_KIND = "residual-hevc"
LOSSLESS_KIND = "residual-lossless"

# -- residual-hevc ---------------------------------------------------------------------------

_HEVC_VERSION = 1
_HEVC_META = struct.Struct("<BB3h3hI")  # version, quality, lo[R, G, B], hi[R, G, B], crc
#: x265 preset for the residual: on a Kodak residual (kodim01) "ultrafast" was ~4x faster than
#: libheif's default ("slow") at the same rate-PSNR within ~0.1 dB; the split search runs many
HEVC_PRESET = "ultrafast"
HEVC_QUALITIES = range(0, 101)


_HEIF_READY: list[bool] = []


def _heif() -> None:
    """Register pillow-heif's Pillow plugin once (imported lazily: only residual layers use it)."""
    if not _HEIF_READY:
        import pillow_heif

        pillow_heif.register_heif_opener()
        _HEIF_READY.append(True)


@dataclass(frozen=True)
class HevcResidual:
    """A residual rescaled to 8 bits (what HEVC codes) plus the range that undoes the scaling."""

    planes: np.ndarray  # H x W x 3 uint8
    lo: tuple[int, int, int]
    hi: tuple[int, int, int]

    @classmethod
    def of(cls, target: np.ndarray, base: np.ndarray) -> HevcResidual:
        """``target - base`` (uint8 H x W x 3 each) mapped to 0..255 per channel by min/max."""
        r = target.astype(np.int32) - base.astype(np.int32)
        lo = r.min(axis=(0, 1))
        hi = r.max(axis=(0, 1))
        span = np.maximum(hi - lo, 1)
        # round((r - lo) * 255 / span) in integers, half up: identical on every machine
        q = ((r - lo) * 510 + span) // (2 * span)
        q[:, :, hi == lo] = 0
        lo_t = tuple(int(v) for v in lo)
        hi_t = tuple(int(v) for v in hi)
        return cls(q.astype(np.uint8), lo_t, hi_t)  # type: ignore[arg-type]

    def encode(self, quality: int) -> bytes:
        """HEIF file of the planes: HEVC intra, 4:4:4, 8 bits, x265 at ``quality`` (0..100)."""
        _heif()
        buf = io.BytesIO()
        # a fresh enc_params dict per call: pillow-heif writes "chroma" into the one passed
        Image.fromarray(self.planes).save(
            buf, format="HEIF", quality=int(quality), chroma=444, enc_params={"preset": HEVC_PRESET}
        )
        return buf.getvalue()

    def meta(self, quality: int, data: bytes) -> bytes:
        """Layer meta for ``data`` (the HEIF file coded at ``quality``)."""
        return _HEVC_META.pack(_HEVC_VERSION, int(quality), *self.lo, *self.hi, zlib.crc32(data))


def _parse_hevc_meta(meta: bytes, data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Range side info; the CRC catches a damaged payload (HEVC decoders often do not)."""
    if meta[:1] and meta[0] != _HEVC_VERSION:
        raise UnsupportedBitstreamError(
            f"residual-hevc layer version {meta[0]}; the file may need a newer licstore"
        )
    if len(meta) != _HEVC_META.size:
        raise CorruptBitstreamError(
            f"residual-hevc meta has {len(meta)} bytes, expected {_HEVC_META.size}"
        )
    _version, quality, *bounds, crc = _HEVC_META.unpack(meta)
    lo, hi = np.array(bounds[:3], np.int32), np.array(bounds[3:], np.int32)
    if quality > 100 or (lo < -255).any() or (hi > 255).any() or (lo > hi).any():
        raise CorruptBitstreamError(f"residual-hevc meta out of range: q={quality} {lo} {hi}")
    if zlib.crc32(data) != crc:
        raise CorruptBitstreamError("residual-hevc layer: CRC mismatch, the payload is damaged")
    return lo, hi


def hevc_decode_planes(data: bytes, width: int, height: int) -> np.ndarray:
    """The 8-bit RGB samples of the layer's HEIF file (size checked before decoding)."""
    _heif()
    try:
        with Image.open(io.BytesIO(data), formats=["HEIF"]) as image:
            if image.size != (width, height):
                raise CorruptBitstreamError(
                    f"residual-hevc image is {image.size}, expected {(width, height)}"
                )
            planes = np.asarray(image.convert("RGB"), dtype=np.uint8)
            # the HEVC stream's own picture size may disagree with the HEIF header's (ispe)
            if planes.shape != (height, width, 3):
                raise CorruptBitstreamError(
                    f"residual-hevc image decodes to {planes.shape[1::-1]}, its header says "
                    f"{(width, height)}"
                )
            return planes
    except CorruptBitstreamError:
        raise
    except Image.DecompressionBombError as exc:
        raise pil_bomb_error("residual-hevc layer", exc) from exc
    except MemoryError:
        raise
    except Exception as exc:
        raise CorruptBitstreamError(f"residual-hevc layer does not decode: {exc}") from exc


def check_layer(kind: str, data: bytes, meta: bytes, width: int, height: int) -> None:
    """Validate a residual layer's meta and its image header against the container's size,
    without decoding pixels: run before the model loads, so a bad layer fails fast."""
    if kind == HEVC_KIND:
        _parse_hevc_meta(meta, data)
        _heif()
        try:  # pillow-heif parses the HEIF boxes here and decodes only on load()
            with Image.open(io.BytesIO(data), formats=["HEIF"]) as image:
                size = image.size
        except Exception as exc:
            raise CorruptBitstreamError(f"residual-hevc layer does not decode: {exc}") from exc
        if size != (width, height):
            raise CorruptBitstreamError(
                f"residual-hevc image is {size}, expected {(width, height)}"
            )
    elif kind == LOSSLESS_KIND:
        code, planes, _check = _parse_lossless_meta(meta)
        _ties, pos = _unpack_ties(data, width * height * planes)
        fmt = LOSSLESS_CODECS[code][1]
        check_layer_image(data[pos:], fmt, width, height, "residual-lossless layer")


def hevc_apply(base: np.ndarray, data: bytes, meta: bytes) -> np.ndarray:
    """``clamp(base + round_half_up(lo + q * (hi - lo) / 255), 0, 255)``, in integers."""
    lo, hi = _parse_hevc_meta(meta, data)
    q = hevc_decode_planes(data, base.shape[1], base.shape[0]).astype(np.int32)
    return _add_scaled(base, q, lo, hi)


def _add_scaled(base: np.ndarray, q: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    num = lo * 255 + q * (hi - lo)  # 255 * residual
    out = base.astype(np.int32) + (2 * num + 255) // 510
    return np.clip(out, 0, 255).astype(np.uint8)


def hevc_reconstruct(base: np.ndarray, res: HevcResidual, data: bytes) -> np.ndarray:
    """What a decoder makes of ``data`` (encoder side: PSNR during the split search)."""
    q = hevc_decode_planes(data, base.shape[1], base.shape[0]).astype(np.int32)
    return _add_scaled(base, q, np.array(res.lo, np.int32), np.array(res.hi, np.int32))


# -- residual-lossless -----------------------------------------------------------------------

_LOSSLESS_VERSION = 1
_LOSSLESS_META = struct.Struct("<BBBI")  # version, codec, planes, CRC of the decoded planes
#: tie margin in 0..255 units: float64 synthesis differs between machines by ~1e-13
TIE_EPS = 1e-4


def _encode_png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _encode_webp(image: Image.Image) -> bytes:
    if max(image.size) > 16383:  # WebP's format limit
        raise ValueError("image too large for WebP")
    buf = io.BytesIO()
    # in lossless mode "quality" is effort; 50 is within 0.1% of 100 at 1/30 of the time
    image.save(buf, format="WEBP", lossless=True, quality=50, method=6, exact=True)
    return buf.getvalue()


def _jxl() -> None:
    import pillow_jxl  # noqa: F401  (registers the JXL plugin with Pillow)


def _encode_jxl(image: Image.Image) -> bytes:
    _jxl()
    buf = io.BytesIO()
    image.save(buf, format="JXL", lossless=True, effort=7)
    return buf.getvalue()


#: code (in the layer meta) -> (name, Pillow format, encoder); codes are frozen
LOSSLESS_CODECS: dict[int, tuple[str, str, Callable[[Image.Image], bytes]]] = {
    0: ("png", "PNG", _encode_png),
    1: ("webp", "WEBP", _encode_webp),
    2: ("jxl", "JXL", _encode_jxl),
}


#: codecs the lossless layer tries (the smallest file wins); None: all usable here
LOSSLESS_CANDIDATES: tuple[str, ...] | None = None


def lossless_encoders() -> dict[str, Callable[[Image.Image], bytes]]:
    """name -> encoder of the lossless codecs usable here (JPEG XL needs pillow-jxl-plugin)."""
    out = {}
    for name, _fmt, fn in LOSSLESS_CODECS.values():
        if name == "jxl":
            try:
                _jxl()
            except ImportError:
                continue
        out[name] = fn
    return out


def tie_positions(v: np.ndarray, eps: float = TIE_EPS) -> np.ndarray:
    """Flat indices (C order) of samples within ``eps`` of a rounding boundary ``k + 0.5``."""
    frac = v - np.floor(v)
    return np.flatnonzero(np.abs(frac - 0.5) < eps)


def predict(v: np.ndarray, ties: np.ndarray) -> np.ndarray:
    """``floor(v + 0.5)``, but ``floor(v)`` at the listed tie positions; uint8."""
    pred = np.floor(v + 0.5)
    flat = pred.reshape(-1)
    flat[ties] = np.floor(v.reshape(-1)[ties])
    return np.clip(pred, 0, 255).astype(np.uint8)


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = 0
    for i in range(5):
        if pos >= len(data):
            raise CorruptBitstreamError("residual-lossless layer: truncated tie list")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << (7 * i)
        if byte < 0x80:
            if byte == 0 and i > 0:
                raise CorruptBitstreamError("residual-lossless layer: non-minimal varint")
            return value, pos
    raise CorruptBitstreamError("residual-lossless layer: varint longer than 5 bytes")


def _pack_ties(ties: np.ndarray) -> bytes:
    out = bytearray(_varint(len(ties)))
    prev = -1
    for index in ties.tolist():
        out += _varint(index - prev - 1)
        prev = index
    return bytes(out)


def _unpack_ties(data: bytes, total: int) -> tuple[np.ndarray, int]:
    count, pos = _read_varint(data, 0)
    if count > min(total, len(data)):
        raise CorruptBitstreamError(f"residual-lossless layer: {count} tie positions")
    ties = np.empty(count, dtype=np.int64)
    index = -1
    for i in range(count):
        gap, pos = _read_varint(data, pos)
        index += gap + 1
        if index >= total:
            raise CorruptBitstreamError("residual-lossless layer: tie position past the image")
        ties[i] = index
    return ties, pos


def lossless_encode(
    target: np.ndarray, v: np.ndarray, codecs: Iterable[str] | None = None
) -> tuple[bytes, bytes]:
    """Layer (data, meta) that turns the float64 prediction ``v`` into ``target`` exactly.

    ``target``: H x W x P uint8 and ``v``: H x W x P float64 in 0..255, P in (1, 3).
    The residual image is coded by every codec in ``codecs`` (default: all usable here) and
    the smallest file is kept.
    """
    planes = target.shape[2]
    if planes not in (1, 3) or v.shape != target.shape:
        raise ValueError(f"bad shapes {target.shape} / {v.shape}")
    ties = tie_positions(v)
    pred = predict(v, ties)
    d = (target.astype(np.int16) - pred + 128).astype(np.uint8)  # mod 256
    image = Image.fromarray(d[:, :, 0] if planes == 1 else d)
    encoders = lossless_encoders()
    if codecs is None:
        codecs = LOSSLESS_CANDIDATES if LOSSLESS_CANDIDATES is not None else encoders
    wanted = list(codecs)
    best: tuple[int, bytes] | None = None
    for code, (name, _fmt, _fn) in LOSSLESS_CODECS.items():
        if name not in wanted or name not in encoders:
            continue
        try:
            coded = encoders[name](image)
        except (OSError, ValueError):  # e.g. WebP beyond 16383 pixels per side
            continue
        if best is None or len(coded) < len(best[1]):
            best = (code, coded)
    if best is None:
        raise LICError(f"no lossless codec of {wanted} could code the residual")
    check = zlib.crc32(np.ascontiguousarray(target, dtype=np.uint8).tobytes())
    meta = _LOSSLESS_META.pack(_LOSSLESS_VERSION, best[0], planes, check)
    return _pack_ties(ties) + best[1], meta


def lossless_planes(meta: bytes) -> int:
    """Number of residual planes (1: gray, replicated on decode; 3: RGB), validated."""
    return _parse_lossless_meta(meta)[1]


def _parse_lossless_meta(meta: bytes) -> tuple[int, int, int]:
    if meta[:1] and meta[0] != _LOSSLESS_VERSION:
        raise UnsupportedBitstreamError(
            f"residual-lossless layer version {meta[0]}; the file may need a newer licstore"
        )
    if len(meta) != _LOSSLESS_META.size:
        raise CorruptBitstreamError(
            f"residual-lossless meta has {len(meta)} bytes, expected {_LOSSLESS_META.size}"
        )
    _version, code, planes, check = _LOSSLESS_META.unpack(meta)
    if code not in LOSSLESS_CODECS:
        raise UnsupportedBitstreamError(
            f"residual-lossless layer uses codec code {code}; the file may need a newer licstore"
        )
    if planes not in (1, 3):
        raise CorruptBitstreamError(f"residual-lossless layer: {planes} planes")
    return code, planes, check


def lossless_decode(v: np.ndarray, data: bytes, meta: bytes) -> np.ndarray:
    """The exact H x W x P planes from the float64 prediction ``v`` (H x W x P) and the layer."""
    code, planes, check = _parse_lossless_meta(meta)
    height, width = v.shape[:2]
    if v.shape[2] != planes:
        raise ValueError(f"prediction has {v.shape[2]} planes, layer {planes}")
    ties, pos = _unpack_ties(data, v.size)
    name, fmt, _fn = LOSSLESS_CODECS[code]
    if name == "jxl":
        try:
            _jxl()
        except ImportError as exc:
            raise UnsupportedBitstreamError(
                "residual-lossless layer is JPEG XL: pip install pillow-jxl-plugin"
            ) from exc
    # read the embedded image's header first: pillow-jxl decodes inside Image.open
    check_layer_image(data[pos:], fmt, width, height, "residual-lossless layer")
    try:
        with Image.open(io.BytesIO(data[pos:]), formats=[fmt]) as image:
            if image.size != (width, height):
                raise CorruptBitstreamError(
                    f"residual-lossless image is {image.size}, expected {(width, height)}"
                )
            modes = ("RGB",) if planes == 3 else ("L", "RGB") if fmt == "WEBP" else ("L",)
            if image.mode not in modes:
                raise CorruptBitstreamError(
                    f"residual-lossless image has mode {image.mode}, expected {modes[0]}"
                )
            d = np.asarray(image, dtype=np.uint8)
    except CorruptBitstreamError:
        raise
    except Image.DecompressionBombError as exc:
        raise pil_bomb_error("residual-lossless layer", exc) from exc
    except MemoryError:
        raise
    except Exception as exc:
        raise CorruptBitstreamError(f"residual-lossless image does not decode: {exc}") from exc
    if d.ndim == 3 and planes == 1:
        d = d[:, :, 0]  # WebP has no gray images: the samples are in R
    if d.ndim == 2:
        d = d[:, :, None]
    if d.shape != v.shape:
        raise CorruptBitstreamError(f"residual-lossless image has shape {d.shape}, not {v.shape}")
    pred = predict(v, ties)
    exact = (pred.astype(np.int16) + d - 128).astype(np.uint8)  # mod 256
    if zlib.crc32(exact.tobytes()) != check:
        raise CorruptBitstreamError(
            "residual-lossless layer: the decoded planes fail their CRC (damaged layer, or a "
            f"float64 synthesis that differs from the encoder's by more than {TIE_EPS})"
        )
    return exact
