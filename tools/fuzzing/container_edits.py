"""Byte-level edits and a raw writer of the licstore v1 container, for the mutation kinds.

The raw writer packs any field values (invalid ones too) with a valid CRC, so mutations reach
past the CRC check; ``repack`` / ``with_layer`` go through ``container.pack`` where the fields
stay valid.
"""

from __future__ import annotations

import dataclasses
import random
import struct
import zlib

from licstore import container

#: unsigned LEB128, as the container writes it
varint = container._varint


def read_varint(data: bytes, pos: int = 0, limit: int = 5) -> tuple[int, int] | None:
    value = 0
    for i in range(limit):
        if pos >= len(data):
            return None
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << (7 * i)
        if byte < 0x80:
            return value, pos
    return None


INTERESTING_U8 = [0, 1, 2, 0x7F, 0x80, 0xFE, 0xFF]
INTERESTING_U16 = [0, 1, 0x7FFF, 0x8000, 0xFFFE, 0xFFFF]
INTERESTING_U32 = [0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 65536, 1 << 24]


def bitflip(rng: random.Random, data: bytes, lo: int = 0, hi: int | None = None) -> bytes:
    hi = len(data) if hi is None else hi
    if hi <= lo:
        return data
    out = bytearray(data)
    for _ in range(rng.choice([1, 1, 2, 4, 16])):
        i = rng.randrange(lo, hi)
        out[i] ^= 1 << rng.randrange(8)
    return bytes(out)


def byte_edit(rng: random.Random, data: bytes) -> bytes:
    """One generic edit: flips, interesting bytes, insert, delete, truncate, extend, zero run."""
    out = bytearray(data)
    op = rng.choice(["flip", "set", "insert", "delete", "truncate", "extend", "zero", "ff"])
    n = len(out)
    if op == "flip" or (n == 0 and op not in ("insert", "extend")):
        return bitflip(rng, data) if n else bytes([rng.randrange(256)])
    i = rng.randrange(n) if n else 0
    if op == "set":
        for _ in range(rng.choice([1, 1, 2, 8])):
            out[rng.randrange(n)] = rng.choice(INTERESTING_U8 + [rng.randrange(256)])
    elif op == "insert":
        out[i:i] = rng.randbytes(rng.choice([1, 4, 16, 256]))
    elif op == "delete":
        del out[i : i + rng.choice([1, 4, 16, 256])]
    elif op == "truncate":
        del out[i:]
    elif op == "extend":
        out += rng.choice(
            [bytes(rng.choice([1, 64, 4096])), rng.randbytes(rng.choice([1, 64, 4096]))]
        )
    elif op == "zero":
        j = min(n, i + rng.choice([4, 64, 1024]))
        out[i:j] = bytes(j - i)
    else:
        j = min(n, i + rng.choice([4, 64, 1024]))
        out[i:j] = b"\xff" * (j - i)
    return bytes(out)


# -- raw container writer (any field values, valid CRC) ---------------------------------------


@dataclasses.dataclass
class RawLayer:
    code: int
    meta: bytes
    data: bytes
    length: bytes | None = None  # encoded data_len; None: varint(len(data))
    meta_len: int | None = None  # None: len(meta)


@dataclasses.dataclass
class Raw:
    """The v1 layout with every field free, so invalid values can be written too."""

    name: bytes
    weights_hash: bytes
    width: bytes  # encoded varints
    height: bytes
    mode: int
    rate: int
    layers: list[RawLayer]
    version: int = 1
    flags: int = 0
    name_len: int | None = None
    count: int | None = None
    fix_crc: bool = True

    @classmethod
    def of(cls, bs: container.Bitstream) -> Raw:
        return cls(
            name=bs.model.encode("ascii"),
            weights_hash=bs.weights_hash,
            width=varint(bs.width),
            height=varint(bs.height),
            mode=container.MODE_CODES[bs.mode],
            rate=bs.rate,
            layers=[
                RawLayer(container.LAYER_KINDS[layer.kind], layer.meta, layer.data)
                for layer in bs.layers
            ],
            flags=bs.flags,
        )

    def pack(self) -> bytes:
        out = bytearray(container.MAGIC)
        out.append(self.version & 0xFF)
        out.append(self.flags & 0xFF)
        out.append((len(self.name) if self.name_len is None else self.name_len) & 0xFF)
        out += self.name + self.weights_hash + self.width + self.height
        out.append(self.mode & 0xFF)
        out += struct.pack("<H", self.rate & 0xFFFF)
        out.append((len(self.layers) if self.count is None else self.count) & 0xFF)
        for layer in self.layers:
            out.append(layer.code & 0xFF)
            out.append((len(layer.meta) if layer.meta_len is None else layer.meta_len) & 0xFF)
            out += layer.meta[:255]
            out += varint(len(layer.data)) if layer.length is None else layer.length
        for layer in self.layers:
            out += layer.data
        crc = zlib.crc32(out) if self.fix_crc else zlib.crc32(out) ^ 1
        return bytes(out + struct.pack("<I", crc))


def repack(bs: container.Bitstream, **changes) -> bytes:
    return container.pack(dataclasses.replace(bs, **changes))


def with_layer(bs: container.Bitstream, kind: str, data: bytes, meta: bytes | None = None) -> bytes:
    layers = tuple(
        container.Layer(kind, data, layer.meta if meta is None else meta)
        if layer.kind == kind
        else layer
        for layer in bs.layers
    )
    return repack(bs, layers=layers)
