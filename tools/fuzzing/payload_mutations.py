"""Mutation kinds ``base.*``, ``side.*`` and ``raw.*``: layer payloads and raw bytes.

A mixin of ``mutations.Mutator`` (which sets ``parsed``, ``corpus``, ``bombs``, ``by_kind``
and ``pick``), split from the header kinds to keep each module readable.
"""

from __future__ import annotations

import json
import struct
import zlib

from licstore import container

from .container_edits import bitflip, byte_edit, read_varint, varint, with_layer
from .image_edits import _embedded_image_start, mutate_image_file


class PayloadMutations:
    """Mutations of the base layer, the side layers and the raw bytes."""

    # base layer --------------------------------------------------------------------------

    def base_payload(self, rng):
        i = self.pick(rng, "base")
        if i is None:
            return None
        bs = self.parsed[i]
        data = bs.layer("base").data
        if rng.random() < 0.5:
            out = bitflip(rng, data)
            desc = "bit flips"
        else:
            out = byte_edit(rng, data)
            desc = "byte edit"
        return i, f"base {desc} ({len(data)} -> {len(out)} B)", with_layer(bs, "base", out)

    def base_structure(self, rng):
        i = self.pick(rng, "base")
        if i is None:
            return None
        bs = self.parsed[i]
        data = bs.layer("base").data
        coded = _embedded_image_start(data)
        if coded is not None and bs.model.startswith("resgdn"):  # ranges | coder | code map
            side = coded - 1
            op = rng.choice(["range", "coder", "map", "map", "recode"])
            out = bytearray(data)
            if op == "range":
                c = rng.randrange(max(side // 4, 1))
                value = rng.choice(
                    [float("nan"), float("inf"), -float("inf"), 1e30, -1e30, 0.0, 1e-38, -1.0, 1.0]
                )
                out[4 * c : 4 * c + 4] = struct.pack("<f", value)
                desc = f"resgdn range[{c}] = {value}"
            elif op == "coder":
                out[side] = rng.choice([0, 1, 2, 0xFF])
                desc = f"resgdn coder {out[side]}"
            else:
                img, d = mutate_image_file(rng, bytes(data[coded:]))
                out = bytearray(data[:coded] + img)
                desc = f"resgdn code map {d}"
            return i, desc, with_layer(bs, "base", bytes(out))
        parsed = read_varint(data)
        if parsed is None:
            return None
        zlen, pos = parsed
        op = rng.choice(["zlen", "zlen", "z-only", "y-only", "swap-y", "y-zero", "y-ff", "y-long"])
        if op == "zlen":
            new = rng.choice([0, 1, zlen - 1, zlen + 1, len(data), len(data) * 4, (1 << 32) - 1])
            out = varint(max(new, 0)) + data[pos:]
            desc = f"z_len {zlen} -> {new}"
        elif op == "z-only":
            out = data[: pos + zlen]
            desc = "y string empty"
        elif op == "y-only":
            out = varint(0) + data[pos + zlen :]
            desc = "z string empty"
        elif op == "swap-y":
            j = self.pick(rng, "base")
            other = self.parsed[j].layer("base").data
            o = read_varint(other)
            y = other[o[1] + o[0] :] if o else other
            out = data[: pos + zlen] + y
            desc = f"y string from {self.corpus[j][0]}"
        elif op == "y-zero":
            out = data[: pos + zlen] + bytes(len(data) - pos - zlen)
            desc = "y string zeroed"
        elif op == "y-ff":
            out = data[: pos + zlen] + b"\xff" * (len(data) - pos - zlen)
            desc = "y string 0xff"
        else:
            out = data[: pos + zlen] + rng.randbytes(rng.choice([4, 4096, 65536]))
            desc = "y string random"
        return i, desc, with_layer(bs, "base", out)

    # side layers ------------------------------------------------------------------------

    def side_alpha(self, rng):
        i = self.pick(rng, "alpha")
        if i is None:
            return None
        bs = self.parsed[i]
        data, desc = mutate_image_file(rng, bs.layer("alpha").data)
        return i, desc, with_layer(bs, "alpha", data)

    def side_palette(self, rng):
        i = self.pick(rng, "palette")
        if i is None:
            return None
        bs = self.parsed[i]
        layer = bs.layer("palette")
        op = rng.choice(["data", "data", "json", "json", "json", "bytes"])
        if op == "data":
            data = rng.choice(
                [
                    b"",
                    layer.data[:-1],
                    layer.data + b"\0",
                    layer.data * 2,
                    bytes(768),
                    bytes(1024),
                    rng.randbytes(len(layer.data)),
                ]
            )
            return (
                i,
                f"palette data {len(layer.data)} -> {len(data)} B",
                with_layer(bs, "palette", data),
            )
        if op == "bytes":
            meta = byte_edit(rng, layer.meta)[:255]
            return i, "palette meta bytes", with_layer(bs, "palette", layer.data, meta)
        try:
            fields = json.loads(layer.meta)
        except ValueError:
            return None
        key = rng.choice(["v", "mode", "used", "transparency", "transparency_bytes", "extra"])
        value = rng.choice(
            [
                None,
                0,
                1,
                2,
                -1,
                255,
                256,
                1e300,
                "RGB",
                "RGBA",
                "L",
                "",
                "zz",
                [],
                {},
                "0" * 64,
                "f" * 64,
                "f" * 63,
                "f" * 66,
                "00" * 300,
                "ff" * 256,
                True,
            ]
        )
        if value is None:
            fields.pop(key, None)
        else:
            fields[key] = value
        meta = json.dumps(fields).encode()[:255]
        return i, f"palette meta {key}={value!r}", with_layer(bs, "palette", layer.data, meta)

    def _fix_hevc_crc(self, meta: bytes, data: bytes) -> bytes:
        if len(meta) != 18:
            return meta
        return meta[:14] + struct.pack("<I", zlib.crc32(data))

    def side_hevc_meta(self, rng):
        i = self.pick(rng, "residual-hevc")
        if i is None:
            return None
        bs = self.parsed[i]
        layer = bs.layer("residual-hevc")
        if len(layer.meta) != 18:  # multi: an earlier step changed it
            return None
        fields = list(struct.unpack("<BB3h3hI", layer.meta))
        k = rng.randrange(len(fields))
        choices = {0: [0, 2, 255], 1: [0, 100, 101, 255]}.get(
            k, [-32768, -256, -255, -1, 0, 1, 255, 256, 32767] if k < 8 else [0, 1, 0xFFFFFFFF]
        )
        fields[k] = rng.choice(choices)
        try:
            meta = struct.pack("<BB3h3hI", *fields)
        except struct.error:
            return None
        if k < 8 and rng.random() < 0.5:
            meta = meta[:14] + layer.meta[14:]
        return (
            i,
            f"hevc meta field {k} = {fields[k]}",
            with_layer(bs, "residual-hevc", layer.data, meta),
        )

    def side_hevc_file(self, rng):
        i = self.pick(rng, "residual-hevc")
        if i is None:
            return None
        bs = self.parsed[i]
        layer = bs.layer("residual-hevc")
        data, desc = mutate_image_file(rng, layer.data)
        meta = self._fix_hevc_crc(layer.meta, data)  # past the layer CRC: the HEVC decoder runs
        return i, desc + " (crc fixed)", with_layer(bs, "residual-hevc", data, meta)

    def side_lossless_meta(self, rng):
        i = self.pick(rng, "residual-lossless")
        if i is None:
            return None
        bs = self.parsed[i]
        layer = bs.layer("residual-lossless")
        if len(layer.meta) != 7:  # multi: an earlier step changed it
            return None
        meta = bytearray(layer.meta)
        k = rng.randrange(4)
        if k == 3:
            meta[3:7] = rng.randbytes(4)
        else:
            meta[k] = rng.choice([0, 1, 2, 3, 4, 0xFF])
        return (
            i,
            f"lossless meta byte {k} -> {meta[k]}",
            with_layer(bs, "residual-lossless", layer.data, bytes(meta)),
        )

    def side_lossless_ties(self, rng):
        i = self.pick(rng, "residual-lossless")
        if i is None:
            return None
        bs = self.parsed[i]
        data = bs.layer("residual-lossless").data
        parsed = read_varint(data)
        if parsed is None:
            return None
        n, pos = parsed
        gaps, p = [], pos
        for _ in range(n):
            g = read_varint(data, p)
            if g is None:
                return None
            gaps.append(g[0])
            p = g[1]
        image = data[p:]
        op = rng.choice(["count", "count", "gap", "many", "nonminimal", "long"])
        if op == "count":
            n2 = rng.choice([n + 1, max(n - 1, 0), 0, 1 << 20, (1 << 35) - 1, len(data)])
            out = varint(n2) + data[pos:]
        elif op == "gap" and gaps:
            gaps[rng.randrange(len(gaps))] = rng.choice([0, 1 << 30, bs.width * bs.height * 3])
            out = varint(n) + b"".join(varint(g) for g in gaps) + image
        elif op == "many":
            total = bs.width * bs.height * 3
            m = rng.choice([total, total + 1, 1000])
            out = varint(m) + b"\0" * m + image
        elif op == "nonminimal":
            out = b"\x80\x00" + data[pos:]
        else:
            out = b"\xff\xff\xff\xff\xff\x01" + data[pos:]
        return i, f"tie list {op}", with_layer(bs, "residual-lossless", out)

    def side_lossless_file(self, rng):
        i = self.pick(rng, "residual-lossless")
        if i is None:
            return None
        bs = self.parsed[i]
        data = bs.layer("residual-lossless").data
        start = _embedded_image_start(data)
        if start is None:
            return None
        img, desc = mutate_image_file(rng, data[start:])
        return i, desc, with_layer(bs, "residual-lossless", data[:start] + img)

    def side_bomb(self, rng):
        """A side layer (or the resgdn-vr code map) replaced by a huge or lying image."""
        target = rng.choice(["alpha", "residual-lossless", "residual-hevc", "base"])
        i = self.pick(rng, target)
        if i is None or not self.bombs:
            return None
        bs = self.parsed[i]
        name = rng.choice(sorted(self.bombs))
        bomb = self.bombs[name]
        layer = bs.layer(target)
        if target == "alpha":
            return i, f"alpha <- {name}", with_layer(bs, "alpha", bomb)
        if target == "residual-hevc":
            if not name.startswith("heif"):
                return None
            return (
                i,
                f"hevc <- {name}",
                with_layer(bs, target, bomb, self._fix_hevc_crc(layer.meta, bomb)),
            )
        start = _embedded_image_start(layer.data)
        if start is None:
            return None
        if target == "residual-lossless":
            codes = {"png": 0, "webp": 1, "jxl": 2}
            if len(layer.meta) < 2:
                return None
            meta = bytearray(layer.meta)
            fmt = name.split("-")[0]
            if fmt not in codes:
                return None
            meta[1] = codes[fmt]
            return (
                i,
                f"lossless <- {name}",
                with_layer(bs, target, layer.data[:start] + bomb, bytes(meta)),
            )
        if not bs.model.startswith("resgdn") or not name.startswith(("png", "jxl")):
            return None
        coder = 0 if name.startswith("png") else 1
        data = layer.data[: start - 1] + bytes([coder]) + bomb
        return i, f"resgdn code map <- {name}", with_layer(bs, "base", data)

    # raw -------------------------------------------------------------------------------

    def raw_bitflip(self, rng):
        i = self.pick(rng)
        return i, "bit flips, CRC not fixed", bitflip(rng, self.corpus[i][1])

    def raw_edit_crc(self, rng):
        i = self.pick(rng)
        data = self.corpus[i][1]
        body = data[:-4]
        op = rng.random()
        if op < 0.5:  # header region: where the fields are
            end = min(len(body), 48)
            body = bitflip(rng, body, 5, end) if end > 5 else body
            desc = "header bit flips"
        else:
            body = data[:5] + byte_edit(rng, body[5:])
            desc = "byte edit"
        return i, desc + ", CRC fixed", body + struct.pack("<I", zlib.crc32(body))

    def raw_truncate(self, rng):
        i = self.pick(rng)
        data = self.corpus[i][1]
        cut = rng.randrange(len(data))
        if rng.random() < 0.5:
            return i, f"truncated to {cut}", data[:cut]
        return (
            i,
            f"truncated to {cut}, CRC fixed",
            data[:cut] + struct.pack("<I", zlib.crc32(data[:cut])),
        )

    def raw_random(self, rng):
        i = self.pick(rng)
        n = rng.choice([0, 1, 3, 4, 5, 28, 29, 64, 1000])
        prefix = rng.choice(
            [b"", container.MAGIC, container.MAGIC + b"\x01", self.corpus[i][1][:32]]
        )
        body = prefix + rng.randbytes(n)
        if rng.random() < 0.5 and len(body) >= 5:
            body += struct.pack("<I", zlib.crc32(body))
        return i, f"random {len(body)} B (prefix {len(prefix)})", body
