"""Mutation kinds ``header.*`` and ``layers.*``: the container's fields and layer table.

A mixin of ``mutations.Mutator`` (which sets ``parsed``, ``corpus``, ``models``, ``zoo``,
``by_kind`` and ``pick``), split from the payload kinds to keep each module readable.
"""

from __future__ import annotations

import dataclasses

from licstore import container

from .container_edits import INTERESTING_U16, Raw, byte_edit, repack, varint, with_layer
from .image_edits import _remake_layer


class HeaderLayerMutations:
    """Mutations of the header fields and the layer table (kinds ``header.*``, ``layers.*``)."""

    # header ------------------------------------------------------------------------------

    def header_dims(self, rng):
        i = self.pick(rng)
        bs = self.parsed[i]
        w, h = bs.width, bs.height
        small = [
            1,
            2,
            3,
            15,
            16,
            17,
            63,
            64,
            65,
            127,
            128,
            w - 1,
            w + 1,
            h - 1,
            h + 1,
            2 * w,
            2 * h,
        ]
        medium = [200, 300, 640, 1000]
        large = [2048, 4096, 4097, 8192, 16384, 30000, 65535, 65536]
        pool = rng.choices([small, medium, large], [0.8, 0.12, 0.08])[0]

        def value():
            return min(max(rng.choice(pool), 1), container.MAX_DIMENSION)

        which = rng.choice(["w", "h", "both", "swap"])
        if which == "swap":
            w2, h2 = h, w
        else:
            w2 = value() if which in ("w", "both") else w
            h2 = value() if which in ("h", "both") else h
        return i, f"{w}x{h} -> {w2}x{h2}", repack(bs, width=w2, height=h2)

    def header_dims_consistent(self, rng):
        """New dimensions with side layers re-made at that size (random content), so the
        image decoders, the residual arithmetic and the mode restore run at odd sizes."""
        i = self.pick(rng)
        bs = self.parsed[i]
        w2, h2 = rng.choice(
            [(1, 1), (1, 2), (2, 1), (1, 300), (300, 1), (1, 4096), (4096, 1), (3, 5), (17, 9)]
            + [(rng.randrange(1, 200), rng.randrange(1, 200)) for _ in range(6)]
        )
        layers = []
        for layer in bs.layers:
            try:
                data, meta = _remake_layer(rng, bs, layer, w2, h2)
            except (OSError, ValueError, RuntimeError):  # an encoder refused that size
                return None
            layers.append(container.Layer(layer.kind, data, meta))
        desc = f"{bs.width}x{bs.height} -> {w2}x{h2}, layers re-made"
        return i, desc, repack(bs, width=w2, height=h2, layers=tuple(layers))

    def header_dims_raw(self, rng):
        i = self.pick(rng)
        raw = Raw.of(self.parsed[i])
        bad = rng.choice(
            [
                b"\x00",
                varint(65537),
                varint((1 << 21) - 1),
                b"\x80\x00",  # non-minimal
                b"\x81\x80\x00",
                b"\xff\xff\xff\xff",  # over-long
                b"\x80\x80\x04",  # 65536
                b"\x80\x80\x80",
            ]
        )
        field = rng.choice(["width", "height"])
        setattr(raw, field, bad)
        return i, f"{field} varint {bad.hex()}", raw.pack()

    def header_rate(self, rng):
        i = self.pick(rng)
        bs = self.parsed[i]
        rate = rng.choice(
            INTERESTING_U16
            + [bs.rate + 1, bs.rate - 1, 4096 * 15, 4096 * 15 + 1, 4096 * 8, 4096 * 7, 2, 8, 9, 1]
            + [rng.randrange(65536)]
        )
        rate &= 0xFFFF
        return i, f"rate {bs.rate} -> {rate}", repack(bs, rate=rate)

    def header_mode(self, rng):
        i = self.pick(rng)
        bs = self.parsed[i]
        mode = rng.choice(sorted(container.MODE_CODES))
        return i, f"mode {bs.mode} -> {mode}", repack(bs, mode=mode)

    def header_mode_raw(self, rng):
        i = self.pick(rng)
        raw = Raw.of(self.parsed[i])
        raw.mode = rng.choice([7, 8, 0x7F, 0x80, 0xFF])
        return i, f"mode code {raw.mode}", raw.pack()

    def header_flags(self, rng):
        i = self.pick(rng)
        raw = Raw.of(self.parsed[i])
        raw.flags = rng.choice([1, 2, 0x80, 0xFF, rng.randrange(1, 256)])
        return i, f"flags 0x{raw.flags:02x}", raw.pack()

    def header_version(self, rng):
        i = self.pick(rng)
        raw = Raw.of(self.parsed[i])
        raw.version = rng.choice([0, 2, 3, 0x7F, 0xFF])
        return i, f"version {raw.version}", raw.pack()

    def header_model(self, rng):
        i = self.pick(rng)
        bs = self.parsed[i]
        model, whash = rng.choice(self.models)
        op = rng.choice(["both", "name", "name"])
        if op == "both":  # another model's name and weights: a different decoder reads the layers
            return (
                i,
                f"model {bs.model} -> {model}@{whash.hex()}",
                repack(bs, model=model, weights_hash=whash),
            )
        name = rng.choice(
            [model, model.upper(), model + "x", "a", "x" * 64, "mshp-vr.", "_hidden", "9", "..."]
        )
        if not container._MODEL_NAME_RE.fullmatch(name.encode()):
            name = "z" + name
        name = name[:64]
        return i, f"model name {bs.model} -> {name}", repack(bs, model=name)

    def header_model_compressai(self, rng):
        i = self.pick(rng)
        bs = self.parsed[i]
        arch = rng.choice(sorted(self.zoo) + ["unknown-arch", "mbt2018-mean-vbr", ""])
        name = "compressai:" + arch
        whash = rng.choice([bs.weights_hash, rng.randbytes(8), bytes(8)])
        if rng.random() < 0.6 and arch in self.zoo:
            whash = self.zoo[arch]  # the hash licstore's zoo adapter writes for these weights
        return i, f"model -> {name}@{whash.hex()}", repack(bs, model=name, weights_hash=whash)

    def header_model_raw(self, rng):
        i = self.pick(rng)
        raw = Raw.of(self.parsed[i])
        op = rng.choice(["len0", "len65", "badchar", "lenmismatch", "nonascii"])
        if op == "len0":
            raw.name, raw.name_len = b"", 0
        elif op == "len65":
            raw.name = b"m" * 65
        elif op == "badchar":
            raw.name = rng.choice([b"-mshp", b"mshp vr", b"a/b", b"\x00", b"a\nb", b":x"])
        elif op == "lenmismatch":
            raw.name_len = len(raw.name) + rng.choice([-1, 1, 5])
        else:
            raw.name = "mshp-vr\u00e9".encode()
        return i, f"model name raw {op}", raw.pack()

    def header_hash(self, rng):
        i = self.pick(rng)
        bs = self.parsed[i]
        same = [h for m, h in self.models if m == bs.model and h != bs.weights_hash]
        whash = rng.choice(same + [rng.randbytes(8), bytes(8)])
        return i, f"weights hash -> {whash.hex()}", repack(bs, weights_hash=whash)

    # layers ------------------------------------------------------------------------------

    def layers_drop(self, rng):
        i = self.pick(rng)
        bs = self.parsed[i]
        if len(bs.layers) == 1:
            if rng.random() < 0.8:
                return None
            raw = Raw.of(bs)
            raw.layers = []
            return i, "no layers", raw.pack()
        k = rng.randrange(len(bs.layers))
        layers = bs.layers[:k] + bs.layers[k + 1 :]
        return i, f"drop {bs.layers[k].kind}", repack(bs, layers=layers)

    def layers_add(self, rng):
        i = self.pick(rng)
        bs = self.parsed[i]
        missing = [k for k in container.LAYER_KINDS if bs.layer(k) is None]
        if not missing:
            return None
        kind = rng.choice(missing)
        donors = self.by_kind.get(kind, [])
        if donors and rng.random() < 0.7:
            layer = self.parsed[rng.choice(donors)].layer(kind)
        else:
            layer = container.Layer(
                kind,
                rng.randbytes(rng.choice([0, 1, 16, 300])),
                rng.randbytes(rng.choice([0, 7, 18])),
            )
        layers = list(bs.layers)
        layers.insert(rng.randrange(len(layers) + 1), layer)
        return i, f"add {kind} ({len(layer.data)} B)", repack(bs, layers=tuple(layers))

    def layers_kind(self, rng):
        i = self.pick(rng)
        bs = self.parsed[i]
        k = rng.randrange(len(bs.layers))
        free = [x for x in container.LAYER_KINDS if bs.layer(x) is None]
        if not free:
            return None
        kind = rng.choice(free)
        layers = list(bs.layers)
        layers[k] = container.Layer(kind, layers[k].data, layers[k].meta)
        return i, f"kind {bs.layers[k].kind} -> {kind}", repack(bs, layers=tuple(layers))

    def layers_reorder(self, rng):
        i = self.pick(rng)
        bs = self.parsed[i]
        if len(bs.layers) < 2:
            return None
        layers = list(bs.layers)
        rng.shuffle(layers)
        return i, "reorder " + ",".join(x.kind for x in layers), repack(bs, layers=tuple(layers))

    def layers_raw(self, rng):
        i = self.pick(rng)
        raw = Raw.of(self.parsed[i])
        op = rng.choice(["dup", "unknown", "count", "len", "len-nonminimal", "meta-len"])
        k = rng.randrange(len(raw.layers))
        if op == "dup":
            raw.layers.append(dataclasses.replace(raw.layers[k]))
        elif op == "unknown":
            raw.layers[k].code = rng.choice([5, 6, 0x7F, 0xFF])
        elif op == "count":
            raw.count = rng.choice([0, len(raw.layers) + 1, len(raw.layers) - 1, 255])
        elif op == "len":
            n = len(raw.layers[k].data)
            raw.layers[k].length = varint(
                rng.choice([0, n + 1, max(n - 1, 0), 2 * n, 0xFFFFFFFF, (1 << 35) - 1])
            )
        elif op == "len-nonminimal":
            raw.layers[k].length = varint(len(raw.layers[k].data))[:-1] + bytes(
                [varint(len(raw.layers[k].data))[-1] | 0x80, 0]
            )
        else:
            raw.layers[k].meta_len = len(raw.layers[k].meta) + rng.choice([-1, 1, 200])
        return i, f"layer table {op} (layer {k})", raw.pack()

    def layers_shift(self, rng):
        i = self.pick(rng)
        bs = self.parsed[i]
        if len(bs.layers) < 2:
            return None
        k = rng.randrange(len(bs.layers) - 1)
        a, b = bs.layers[k], bs.layers[k + 1]
        joined = a.data + b.data
        cut = min(max(len(a.data) + rng.choice([-16, -4, -1, 1, 4, 16]), 0), len(joined))
        layers = list(bs.layers)
        layers[k] = container.Layer(a.kind, joined[:cut], a.meta)
        layers[k + 1] = container.Layer(b.kind, joined[cut:], b.meta)
        return i, f"boundary {a.kind}|{b.kind} moved to {cut}", repack(bs, layers=tuple(layers))

    def layers_meta(self, rng):
        i = self.pick(rng)
        bs = self.parsed[i]
        k = rng.randrange(len(bs.layers))
        layer = bs.layers[k]
        meta = (
            byte_edit(rng, layer.meta)[:255]
            if layer.meta or rng.random() < 0.5
            else rng.randbytes(rng.choice([1, 7, 18, 255]))
        )
        return (
            i,
            f"{layer.kind} meta {len(layer.meta)} -> {len(meta)} B",
            with_layer(bs, layer.kind, layer.data, meta),
        )

    def layers_splice(self, rng):
        i = self.pick(rng)
        bs = self.parsed[i]
        k = rng.randrange(len(bs.layers))
        kind = bs.layers[k].kind
        j = self.pick(rng, kind)
        donor = self.parsed[j].layer(kind)
        return i, f"{kind} from {self.corpus[j][0]}", with_layer(bs, kind, donor.data, donor.meta)
