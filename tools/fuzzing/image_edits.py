"""Edits of the image files embedded in layers (PNG, WebP, HEIF, JPEG XL) and image bombs.

Side layers and the resgdn-vr code map carry whole image files; these helpers find them,
edit their headers format-aware, re-make layers at another size and build decompression bombs.
"""

from __future__ import annotations

import io
import random
import struct
import zlib

from .container_edits import bitflip, byte_edit, varint

PNG_SIG = b"\x89PNG\r\n\x1a\n"


def png_chunks(data: bytes) -> list[list] | None:
    if not data.startswith(PNG_SIG):
        return None
    chunks, pos = [], len(PNG_SIG)
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        ctype = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        chunks.append([ctype, body])
        pos += 12 + length
    return chunks


def png_build(chunks: list[list]) -> bytes:
    out = bytearray(PNG_SIG)
    for ctype, body in chunks:
        out += struct.pack(">I", len(body)) + ctype + body
        out += struct.pack(">I", zlib.crc32(ctype + body))
    return bytes(out)


def png_bomb(width: int, height: int, rows: int | None = None) -> bytes:
    """An 8-bit gray PNG of ``width x height`` zeros (only the first ``rows`` rows stored)."""
    rows = height if rows is None else rows
    raw = (b"\x00" + bytes(width)) * rows
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return png_build([[b"IHDR", ihdr], [b"IDAT", zlib.compress(raw, 9)], [b"IEND", b""]])


def mutate_png(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    chunks = png_chunks(data)
    if not chunks or chunks[0][0] != b"IHDR" or len(chunks[0][1]) != 13:
        return byte_edit(rng, data), "png:bytes"
    w, h, depth, ctype, comp, filt, inter = struct.unpack(">IIBBBBB", chunks[0][1])
    op = rng.choice(["dims", "dims", "depth", "ctype", "interlace", "idat", "idat", "drop", "crc"])
    if op == "dims":
        big = [0, 1, w + 1, h + 1, w * 64, 30000, 100000, 0x7FFFFFFF, 0xFFFFFFFF]
        w2, h2 = rng.choice([(rng.choice(big), h), (w, rng.choice(big)), (rng.choice(big),) * 2])
        chunks[0][1] = struct.pack(">IIBBBBB", w2, h2, depth, ctype, comp, filt, inter)
        return png_build(chunks), f"png:IHDR {w}x{h}->{w2}x{h2}"
    if op in ("depth", "ctype", "interlace"):
        depth2 = rng.choice([1, 2, 4, 8, 16, 3]) if op == "depth" else depth
        ctype2 = rng.choice([0, 2, 3, 4, 6, 1]) if op == "ctype" else ctype
        inter2 = 1 - inter if op == "interlace" else inter
        chunks[0][1] = struct.pack(">IIBBBBB", w, h, depth2, ctype2, comp, filt, inter2)
        return png_build(chunks), f"png:IHDR depth {depth2} ctype {ctype2} interlace {inter2}"
    idats = [i for i, c in enumerate(chunks) if c[0] == b"IDAT"]
    if op == "idat" and idats:
        i = rng.choice(idats)
        if rng.random() < 0.5:
            try:  # re-compress edited filtered rows: reaches the unfilter step
                raw = bytearray(zlib.decompress(b"".join(chunks[j][1] for j in idats)))
                raw = byte_edit(rng, bytes(raw))
                chunks = [c for c in chunks if c[0] != b"IDAT"]
                chunks.insert(idats[0], [b"IDAT", zlib.compress(raw)])
                return png_build(chunks), "png:IDAT raw rows edited"
            except zlib.error:
                pass
        chunks[i][1] = byte_edit(rng, chunks[i][1])
        return png_build(chunks), "png:IDAT bytes edited"
    if op == "drop" and len(chunks) > 1:
        i = rng.randrange(len(chunks))
        del chunks[i]
        return png_build(chunks), f"png:chunk {i} dropped"
    out = bytearray(png_build(chunks))
    out[len(PNG_SIG) + 8 + 13 + rng.randrange(4)] ^= 0xFF  # IHDR CRC
    return bytes(out), "png:IHDR crc broken"


def mutate_webp(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    pos = data.find(b"VP8L")
    if pos < 0 or len(data) < pos + 13 or rng.random() < 0.3:
        return byte_edit(rng, data), "webp:bytes"
    bits = int.from_bytes(data[pos + 9 : pos + 13], "little")
    w = rng.choice([1, 2, 16384, rng.randrange(1, 16385), (bits & 0x3FFF) + 2])
    h = rng.choice([1, 2, 16384, rng.randrange(1, 16385), ((bits >> 14) & 0x3FFF) + 2])
    bits = (bits & ~0xFFFFFFF) | (w - 1) | ((h - 1) << 14)
    out = bytearray(data)
    out[pos + 9 : pos + 13] = (bits & 0xFFFFFFFF).to_bytes(4, "little")
    return bytes(out), f"webp:VP8L size {w}x{h}"


def mutate_heif(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    pos = data.find(b"ispe")
    if pos < 0 or len(data) < pos + 16 or rng.random() < 0.4:
        return byte_edit(rng, data), "heif:bytes"
    w = rng.choice([0, 1, 2, 65536, 100000, 0xFFFFFFFF, rng.randrange(1, 5000)])
    h = rng.choice([0, 1, 2, 65536, 100000, 0xFFFFFFFF, rng.randrange(1, 5000)])
    out = bytearray(data)
    out[pos + 8 : pos + 16] = struct.pack(">II", w, h)
    return bytes(out), f"heif:ispe {w}x{h}"


def mutate_image_file(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    """Format-aware edit of an embedded PNG / WebP / HEIF / JPEG XL file."""
    if data.startswith(PNG_SIG):
        return mutate_png(rng, data)
    if data.startswith(b"RIFF"):
        return mutate_webp(rng, data)
    if data[4:8] == b"ftyp":
        return mutate_heif(rng, data)
    if rng.random() < 0.5 and len(data) > 2:  # JPEG XL: the size header is in the first bytes
        return bitflip(rng, data, 0, min(len(data), 12)), "image:header bits"
    return byte_edit(rng, data), "image:bytes"


def _image_bytes(array, fmt: str) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    image = Image.fromarray(array)
    if fmt == "PNG":
        image.save(buf, format="PNG")
    elif fmt == "WEBP":
        image.save(buf, format="WEBP", lossless=True, quality=0, method=0, exact=True)
    elif fmt == "JXL":
        import pillow_jxl  # noqa: F401

        image.save(buf, format="JXL", lossless=True, effort=1)
    else:
        raise ValueError(fmt)
    return buf.getvalue()


def _remake_layer(rng: random.Random, bs, layer, w: int, h: int) -> tuple[bytes, bytes]:
    """A layer of ``bs`` re-made for a ``w x h`` image (random content, valid framing)."""
    import numpy as np

    gen = np.random.default_rng(rng.randrange(1 << 32))
    if layer.kind == "alpha":
        return _image_bytes(gen.integers(0, 256, (h, w), dtype=np.uint8), "PNG"), layer.meta
    if layer.kind == "residual-lossless" and len(layer.meta) == 7:
        fmt = {0: "PNG", 1: "WEBP", 2: "JXL"}.get(layer.meta[1], "PNG")
        planes = layer.meta[2]
        shape = (h, w, 3) if planes == 3 or fmt == "WEBP" else (h, w)
        image = _image_bytes(gen.integers(0, 256, shape, dtype=np.uint8), fmt)
        ties = rng.choice([b"\x00", b"\x01\x00", varint(2) + varint(0) + varint(w * h - 2)])
        return ties + image, layer.meta
    if layer.kind == "residual-hevc" and len(layer.meta) == 18:
        from licstore import residual

        planes = gen.integers(0, 256, (h, w, 3), dtype=np.uint8)
        heif = residual.HevcResidual(planes, (-9, -9, -9), (9, 9, 9)).encode(rng.choice([10, 50]))
        return heif, layer.meta[:14] + struct.pack("<I", zlib.crc32(heif))
    coded = _embedded_image_start(layer.data)
    if layer.kind == "base" and bs.model.startswith("resgdn") and coded is not None:
        m = (coded - 1) // 8  # M channels of (lo, hi) float32, then the coder byte
        h16, w16 = -(-h // 16), -(-w // 16)
        top = (1 << max(1, min(bs.rate, 8))) - 1
        codes = gen.integers(0, top + 1, (m * h16, w16), dtype=np.uint8)
        fmt = "PNG" if layer.data[coded - 1] == 0 else "JXL"
        return layer.data[:coded] + _image_bytes(codes, fmt), layer.meta
    return layer.data, layer.meta  # rANS strings decode at any size (short ones run out)


def _embedded_image_start(data: bytes) -> int | None:
    """Offset of a PNG / WebP / HEIF / JPEG XL file inside a layer payload (after side info)."""
    hits = []
    for sig in (PNG_SIG, b"RIFF", b"\xff\x0a", b"\x00\x00\x00\x0cJXL "):
        pos = data.find(sig)
        if pos >= 0:
            hits.append(pos)
    ftyp = data.find(b"ftyp")
    if ftyp >= 4:
        hits.append(ftyp - 4)
    return min(hits) if hits else None


def build_bombs() -> dict[str, bytes]:
    """Small files that claim (or hold) far more pixels than any licstore image."""
    from PIL import Image

    bombs = {
        "png-8192x8192-zeros": png_bomb(8192, 8192),  # 64 MiB of pixels in ~65 KiB
        "png-60000x60000-truncated": png_bomb(60000, 60000, rows=4),
        "png-1x1000000": png_bomb(1, 1_000_000, rows=1000),
    }
    small = Image.new("L", (16, 16))
    buf = io.BytesIO()
    small.save(buf, format="WEBP", lossless=True)
    webp = buf.getvalue()
    pos = webp.find(b"VP8L")
    if pos >= 0:
        bits = int.from_bytes(webp[pos + 9 : pos + 13], "little")
        bits = (bits & ~0xFFFFFFF) | 16383 | (16383 << 14)
        bombs["webp-16384x16384-header"] = (
            webp[: pos + 9] + bits.to_bytes(4, "little") + webp[pos + 13 :]
        )
    big = Image.new("L", (4096, 4096))
    buf = io.BytesIO()
    big.save(buf, format="WEBP", lossless=True, quality=0, method=0)
    bombs["webp-4096x4096-zeros"] = buf.getvalue()
    try:
        import pillow_jxl  # noqa: F401

        buf = io.BytesIO()
        Image.new("L", (8192, 8192)).save(buf, format="JXL", lossless=True, effort=1)
        bombs["jxl-8192x8192-zeros"] = buf.getvalue()
    except ImportError:
        pass
    try:
        import pillow_heif

        pillow_heif.register_heif_opener()
        buf = io.BytesIO()
        Image.new("RGB", (64, 64)).save(buf, format="HEIF", quality=50)
        heif = buf.getvalue()
        pos = heif.find(b"ispe")
        if pos >= 0:
            bombs["heif-ispe-40000x40000"] = (
                heif[: pos + 8] + struct.pack(">II", 40000, 40000) + heif[pos + 16 :]
            )
    except ImportError:
        pass
    return bombs
