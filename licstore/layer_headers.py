"""Image sizes read from encoded layer headers (PNG, WebP, JPEG XL) before any decoder runs.

Decoders allocate from these fields, and pillow-jxl even decodes inside ``Image.open``, so a
side layer (alpha, residual, code map) is checked against the container's size here first:
the container's size has passed the decode limit (``licstore.limits``), so a layer that
declares exactly that size is within the limit too.
"""

from __future__ import annotations

import struct

from .errors import CorruptBitstreamError, DecodeLimitError

__all__ = ["check_layer_image", "declared_size", "pil_bomb_error"]


def declared_size(data: bytes, fmt: str) -> tuple[int, int]:
    """(width, height) that a PNG, WebP or JPEG XL file declares, parsed from its header bytes.

    Decoders allocate from these fields, and pillow-jxl even decodes inside ``Image.open``, so
    layers are checked here first. Raises ``CorruptBitstreamError`` when the header is missing.
    """
    try:
        if fmt == "PNG":
            return _png_size(data)
        if fmt == "WEBP":
            return _webp_size(data)
        if fmt == "JXL":
            return _jxl_size(data)
    except (IndexError, struct.error):
        pass
    else:
        raise ValueError(f"no header reader for {fmt}")
    raise CorruptBitstreamError(f"truncated {fmt} header")


def check_layer_image(data: bytes, fmt: str, width: int, height: int, what: str) -> None:
    """Refuse a layer whose embedded image does not declare exactly ``width`` x ``height``.

    The container's size has passed the decode limit, so a layer that matches it is within the
    limit too. JPEG XL may store a transposed size (EXIF-style orientation): same pixel count.
    """
    try:
        size = declared_size(data, fmt)
    except CorruptBitstreamError as exc:
        raise CorruptBitstreamError(f"{what}: {exc}") from None
    if size != (width, height) and not (fmt == "JXL" and size == (height, width)):
        kind = DecodeLimitError if size[0] * size[1] > width * height else CorruptBitstreamError
        raise kind(
            f"{what} is a {fmt} image that declares {size[0]}x{size[1]} pixels; the bitstream "
            f"header says {width}x{height}, so it was refused before decoding"
        )


def pil_bomb_error(what: str, exc: Exception) -> DecodeLimitError:
    """Pillow's own guard (``Image.MAX_IMAGE_PIXELS``) refused a layer we had allowed."""
    return DecodeLimitError(
        f"{what}: Pillow refused to open it ({exc}); images this large also need "
        "PIL.Image.MAX_IMAGE_PIXELS raised (or set to None) in your process"
    )


def _png_size(data: bytes) -> tuple[int, int]:
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        raise CorruptBitstreamError("not a PNG file (no PNG signature and IHDR chunk)")
    return struct.unpack(">II", data[16:24])


def _webp_size(data: bytes) -> tuple[int, int]:
    if data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        raise CorruptBitstreamError("not a WebP file (no RIFF/WEBP header)")
    chunk, body = data[12:16], data[20:30]
    if chunk == b"VP8 " and body[3:6] == b"\x9d\x01\x2a":
        w, h = struct.unpack("<HH", body[6:10])
        return w & 0x3FFF, h & 0x3FFF
    if chunk == b"VP8L" and body[:1] == b"\x2f":
        bits = struct.unpack("<I", body[1:5])[0]
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":
        w, h = (int.from_bytes(body[i : i + 3], "little") + 1 for i in (4, 7))
        return w, h
    raise CorruptBitstreamError(f"WebP file with an unknown first chunk {chunk!r}")


class _LsbBits:
    """Bit reader of JPEG XL headers: least significant bit of each byte first."""

    def __init__(self, data: bytes, start: int) -> None:
        self.data, self.pos = data, start * 8

    def u(self, n: int) -> int:
        value = 0
        for i in range(n):
            value |= ((self.data[self.pos >> 3] >> (self.pos & 7)) & 1) << i
            self.pos += 1
        return value

    def u32(self, *dists: tuple[int, int]) -> int:
        """U32 of the JPEG XL spec: a 2-bit selector, then (bits, offset) of that distribution."""
        bits, offset = dists[self.u(2)]
        return self.u(bits) + offset


_JXL_RATIOS = {1: (1, 1), 2: (12, 10), 3: (4, 3), 4: (3, 2), 5: (16, 9), 6: (5, 4), 7: (2, 1)}
_JXL_SIZE = ((9, 1), (13, 1), (18, 1), (30, 1))
_JXL_PREVIEW_DIV8 = ((0, 16), (0, 32), (5, 1), (9, 33))
_JXL_PREVIEW = ((6, 1), (8, 65), (10, 321), (12, 1345))
_JXL_CONTAINER = b"\x00\x00\x00\x0cJXL \r\n\x87\n"


def _jxl_dims(bits: _LsbBits, div8_dist, dist) -> tuple[int, int]:
    """SizeHeader / PreviewHeader: height, then a ratio or the width; ``div8_dist`` None means
    the SizeHeader's plain 5-bit multiple of 8."""

    def side(div8: int) -> int:
        if not div8:
            return bits.u32(*dist)
        return 8 * (bits.u(5) + 1 if div8_dist is None else bits.u32(*div8_dist))

    div8 = bits.u(1)
    height = side(div8)
    ratio = bits.u(3)
    if ratio:
        num, den = _JXL_RATIOS[ratio]
        return height * num // den, height
    return side(div8), height


def _jxl_codestream(data: bytes) -> bytes:
    """The codestream of a bare JPEG XL file, or the first one of an ISOBMFF container."""
    if data[:2] == b"\xff\x0a":
        return data
    if data[:12] != _JXL_CONTAINER:
        raise CorruptBitstreamError("not a JPEG XL file (no codestream or container signature)")
    pos = 12
    while pos + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[pos : pos + 8])
        head = 8
        if size == 1:
            size, head = struct.unpack(">Q", data[pos + 8 : pos + 16])[0], 16
        end = len(data) if size == 0 else pos + size
        if end < pos + head:
            break
        if kind in (b"jxlc", b"jxlp"):
            return data[pos + head + (4 if kind == b"jxlp" else 0) : end]
        pos = end
    raise CorruptBitstreamError("JPEG XL container without a codestream box")


def _jxl_size(data: bytes) -> tuple[int, int]:
    """Image size from the SizeHeader; animated files are refused (the layers hold one image)."""
    cs = _jxl_codestream(data)
    if cs[:2] != b"\xff\x0a":
        raise CorruptBitstreamError("JPEG XL codestream without its signature")
    bits = _LsbBits(cs, 2)
    size = _jxl_read_size(bits)
    if not bits.u(1):  # ImageMetadata.all_default == false
        if bits.u(1):  # extra_fields
            bits.u(3)  # orientation
            if bits.u(1):  # have_intrinsic_size: a SizeHeader that changes nothing here
                _jxl_read_size(bits)
            if bits.u(1):  # have_preview
                _jxl_dims(bits, _JXL_PREVIEW_DIV8, _JXL_PREVIEW)
            if bits.u(1):  # have_animation
                raise CorruptBitstreamError("JPEG XL layer is an animation; it must be one image")
    return size


def _jxl_read_size(bits: _LsbBits) -> tuple[int, int]:
    """SizeHeader: small sizes as multiples of 8 (5 bits), others as U32 of 9..30 bits."""
    return _jxl_dims(bits, None, _JXL_SIZE)
