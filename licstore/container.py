"""The licstore bitstream container, format version 1 (normative spec: formats/licstore-v1.md).

Bitstreams are forever: everything written with ``FORMAT_VERSION = 1`` must decode with every
later licstore, so the codes below are frozen and the parser is strict. ``unpack`` treats its
input as hostile: any malformed data raises ``CorruptBitstreamError`` (never another exception,
never an allocation larger than the input, never a loop longer than the input).

Pure Python on purpose: inspecting or validating a file must not need torch.
"""

from __future__ import annotations

import re
import struct
import zlib
from dataclasses import dataclass

from .errors import CorruptBitstreamError, LICError, UnsupportedBitstreamError

__all__ = [
    "DEFINED_FLAGS",
    "FORMAT_VERSION",
    "LAYER_KINDS",
    "MAGIC",
    "MAX_DIMENSION",
    "MAX_LAYER_DATA",
    "MAX_META",
    "MAX_MODEL_NAME",
    "MIN_SIZE",
    "MODE_CODES",
    "WEIGHTS_HASH_SIZE",
    "Bitstream",
    "BitstreamFieldError",
    "Layer",
    "overhead",
    "pack",
    "unpack",
]

# \x89: not ASCII, so 7-bit channels and text decoders visibly break it (as in PNG).
# \n: an LF -> CRLF conversion turns the magic into b"\x89LC\r", caught before the CRC.
MAGIC = b"\x89LC\n"
FORMAT_VERSION = 1
MAX_DIMENSION = 1 << 16
MAX_MODEL_NAME = 64
WEIGHTS_HASH_SIZE = 8
MAX_META = 255
MAX_LAYER_DATA = 0xFFFFFFFF
# No flag bit is defined in v1; every set bit means "needs a newer decoder".
DEFINED_FLAGS = 0x00

# Frozen code tables: never renumber or reuse a code, only append.
MODE_CODES: dict[str, int] = {"RGB": 0, "L": 1, "LA": 2, "RGBA": 3, "P": 4, "PA": 5, "1": 6}
LAYER_KINDS: dict[str, int] = {
    "base": 0,
    "alpha": 1,
    "palette": 2,
    "residual-hevc": 3,
    "residual-lossless": 4,
}
_MODE_BY_CODE = {code: mode for mode, code in MODE_CODES.items()}
_KIND_BY_CODE = {code: kind for kind, code in LAYER_KINDS.items()}

_MODEL_NAME_RE = re.compile(rb"[A-Za-z0-9][A-Za-z0-9._+:-]*")
_DIM_VARINT_BYTES = 3  # 2**21 - 1 >= MAX_DIMENSION
_LEN_VARINT_BYTES = 5  # 2**35 - 1 >= MAX_LAYER_DATA
_CRC_SIZE = 4
# magic, version, flags, name length, hash, mode, rate, layer count, CRC
_FIXED_SIZE = 4 + 1 + 1 + 1 + WEIGHTS_HASH_SIZE + 1 + 2 + 1 + _CRC_SIZE
# Smallest valid stream: 1-char name, 1-byte dimensions, one empty layer (kind, meta len, len 0).
MIN_SIZE = _FIXED_SIZE + 1 + 1 + 1 + 3


class BitstreamFieldError(LICError, ValueError):
    """``pack`` was given a field value that format v1 cannot represent (a caller bug)."""


class _Truncated(CorruptBitstreamError):
    """Internal marker: the parser ran out of data (lets diagnostics say "truncated")."""


@dataclass(frozen=True)
class Layer:
    """One independently meaningful part of the bitstream; data and meta are opaque here."""

    kind: str
    data: bytes
    meta: bytes = b""

    def __post_init__(self) -> None:
        # Normalise bytes-likes so equality and hashing behave like plain bytes.
        for name in ("data", "meta"):
            value = getattr(self, name)
            if isinstance(value, (bytearray, memoryview)):
                object.__setattr__(self, name, bytes(value))


@dataclass(frozen=True)
class Bitstream:
    """Everything a decoder needs besides the weights: header fields plus the layers."""

    model: str
    weights_hash: bytes
    width: int
    height: int
    mode: str
    rate: int
    layers: tuple[Layer, ...]
    flags: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.weights_hash, (bytearray, memoryview)):
            object.__setattr__(self, "weights_hash", bytes(self.weights_hash))
        if isinstance(self.layers, list):
            object.__setattr__(self, "layers", tuple(self.layers))

    def layer(self, kind: str) -> Layer | None:
        """The layer of that kind, or None (kinds are unique within a bitstream)."""
        for layer in self.layers:
            if layer.kind == kind:
                return layer
        return None


# -- writing --------------------------------------------------------------------------------


def _varint(value: int) -> bytes:
    """Unsigned LEB128, minimal length (the parser rejects padded encodings)."""
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _varint_size(value: int) -> int:
    return max(1, (value.bit_length() + 6) // 7)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_bytes(value: object) -> bool:
    return isinstance(value, (bytes, bytearray, memoryview))


def _validate(bs: Bitstream) -> None:
    """Reject anything ``unpack`` would reject, so ``pack`` never writes an unreadable file."""
    if not isinstance(bs, Bitstream):
        raise BitstreamFieldError(f"expected a Bitstream, got {type(bs).__name__}")
    if not isinstance(bs.model, str) or not bs.model.isascii():
        raise BitstreamFieldError(f"model name must be an ASCII str, got {bs.model!r}")
    if not 1 <= len(bs.model) <= MAX_MODEL_NAME or not _MODEL_NAME_RE.fullmatch(
        bs.model.encode("ascii")
    ):
        raise BitstreamFieldError(
            f"model name {bs.model!r} must be 1..{MAX_MODEL_NAME} characters of "
            "[A-Za-z0-9._+:-] starting with a letter or digit"
        )
    if not _is_bytes(bs.weights_hash) or len(bs.weights_hash) != WEIGHTS_HASH_SIZE:
        raise BitstreamFieldError(f"weights_hash must be {WEIGHTS_HASH_SIZE} bytes")
    for name in ("width", "height"):
        value = getattr(bs, name)
        if not _is_int(value) or not 1 <= value <= MAX_DIMENSION:
            raise BitstreamFieldError(f"{name} must be an int in 1..{MAX_DIMENSION}, got {value!r}")
    if bs.mode not in MODE_CODES:
        raise BitstreamFieldError(f"mode {bs.mode!r} not one of {sorted(MODE_CODES)}")
    if not _is_int(bs.rate) or not 0 <= bs.rate <= 0xFFFF:
        raise BitstreamFieldError(f"rate must be an int in 0..65535, got {bs.rate!r}")
    if not _is_int(bs.flags) or not 0 <= bs.flags <= 0xFF or bs.flags & ~DEFINED_FLAGS:
        raise BitstreamFieldError(f"flags {bs.flags!r}: reserved bits must be 0 in format v1")
    if not isinstance(bs.layers, tuple) or not 1 <= len(bs.layers) <= 255:
        raise BitstreamFieldError("layers must be a tuple of 1..255 Layer objects")
    seen: set[str] = set()
    for layer in bs.layers:
        if not isinstance(layer, Layer):
            raise BitstreamFieldError(f"expected a Layer, got {type(layer).__name__}")
        if layer.kind not in LAYER_KINDS:
            raise BitstreamFieldError(f"layer kind {layer.kind!r} not one of {sorted(LAYER_KINDS)}")
        if layer.kind in seen:
            raise BitstreamFieldError(f"duplicate layer kind {layer.kind!r}")
        seen.add(layer.kind)
        if not _is_bytes(layer.meta) or len(layer.meta) > MAX_META:
            raise BitstreamFieldError(f"layer {layer.kind!r}: meta must be <= {MAX_META} bytes")
        if not _is_bytes(layer.data) or len(layer.data) > MAX_LAYER_DATA:
            raise BitstreamFieldError(f"layer {layer.kind!r}: data must be bytes < 4 GiB")


def pack(bs: Bitstream) -> bytes:
    """Serialise a bitstream; raises ``BitstreamFieldError`` for unrepresentable fields."""
    _validate(bs)
    out = bytearray(MAGIC)
    out.append(FORMAT_VERSION)
    out.append(bs.flags)
    name = bs.model.encode("ascii")
    out.append(len(name))
    out += name
    out += bs.weights_hash
    out += _varint(bs.width)
    out += _varint(bs.height)
    out.append(MODE_CODES[bs.mode])
    out += struct.pack("<H", bs.rate)
    out.append(len(bs.layers))
    for layer in bs.layers:
        out.append(LAYER_KINDS[layer.kind])
        out.append(len(layer.meta))
        out += layer.meta
        out += _varint(len(layer.data))
    for layer in bs.layers:
        out += layer.data
    out += struct.pack("<I", zlib.crc32(out))
    return bytes(out)


def overhead(bs: Bitstream) -> int:
    """Container bytes of ``pack(bs)`` that are neither layer data nor layer meta."""
    _validate(bs)
    size = _FIXED_SIZE + len(bs.model) + _varint_size(bs.width) + _varint_size(bs.height)
    for layer in bs.layers:
        size += 1 + 1 + _varint_size(len(layer.data))
    return size


# -- reading --------------------------------------------------------------------------------


class _Reader:
    """Bounds-checked cursor: every read is checked against ``end`` before slicing."""

    __slots__ = ("buf", "end", "pos")

    def __init__(self, buf: memoryview, pos: int, end: int) -> None:
        self.buf = buf
        self.pos = pos
        self.end = end

    def take(self, n: int, what: str) -> bytes:
        if n > self.end - self.pos:
            raise _Truncated(f"truncated: data ends inside the {what} (byte {self.pos})")
        chunk = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        return chunk

    def u8(self, what: str) -> int:
        if self.pos >= self.end:
            raise _Truncated(f"truncated: data ends before the {what} (byte {self.pos})")
        value = self.buf[self.pos]
        self.pos += 1
        return value

    def u16(self, what: str) -> int:
        return int.from_bytes(self.take(2, what), "little")

    def varint(self, what: str, max_bytes: int) -> int:
        start = self.pos
        value = 0
        for i in range(max_bytes):
            byte = self.u8(what)
            value |= (byte & 0x7F) << (7 * i)
            if byte < 0x80:
                if byte == 0 and i > 0:
                    raise CorruptBitstreamError(f"{what}: non-minimal varint at byte {start}")
                return value
        raise CorruptBitstreamError(f"{what}: varint longer than {max_bytes} bytes at byte {start}")


@dataclass
class _Header:
    fields: dict[str, object]
    table: list[tuple[str, bytes, int]]  # (kind, meta, data length) in file order
    payload_start: int
    payload_end: int


def _parse_header(buf: memoryview, end: int) -> _Header:
    """Parse and validate everything between the version byte and the layer payloads."""
    r = _Reader(buf, len(MAGIC) + 1, end)
    flags = r.u8("flags")
    if flags & ~DEFINED_FLAGS:
        raise UnsupportedBitstreamError(
            f"flags 0x{flags:02x} use features unknown to this licstore; "
            "the file may need a newer licstore"
        )
    name_len = r.u8("model name length")
    if not 1 <= name_len <= MAX_MODEL_NAME:
        raise CorruptBitstreamError(f"model name length {name_len} not in 1..{MAX_MODEL_NAME}")
    name = r.take(name_len, "model name")
    if not _MODEL_NAME_RE.fullmatch(name):
        raise CorruptBitstreamError(f"invalid model name {name!r}")
    weights_hash = r.take(WEIGHTS_HASH_SIZE, "weights hash")
    dims = []
    for what in ("width", "height"):
        value = r.varint(what, _DIM_VARINT_BYTES)
        if not 1 <= value <= MAX_DIMENSION:
            raise CorruptBitstreamError(f"{what} {value} not in 1..{MAX_DIMENSION}")
        dims.append(value)
    mode_code = r.u8("mode")
    if mode_code not in _MODE_BY_CODE:
        raise UnsupportedBitstreamError(
            f"unknown image mode code {mode_code}; the file may need a newer licstore"
        )
    rate = r.u16("rate")
    count = r.u8("layer count")
    if count == 0:
        raise CorruptBitstreamError("bitstream has no layers")
    table: list[tuple[str, bytes, int]] = []
    seen: set[str] = set()
    for i in range(count):
        code = r.u8(f"layer {i} kind")
        kind = _KIND_BY_CODE.get(code)
        if kind is None:
            raise UnsupportedBitstreamError(
                f"unknown layer kind code {code} (layer {i}); the file may need a newer licstore"
            )
        if kind in seen:
            raise CorruptBitstreamError(f"duplicate layer kind {kind!r}")
        seen.add(kind)
        meta = r.take(r.u8(f"layer {i} meta length"), f"layer {i} meta")
        length = r.varint(f"layer {i} data length", _LEN_VARINT_BYTES)
        if length > MAX_LAYER_DATA:
            raise CorruptBitstreamError(f"layer {i} data length {length} exceeds 4 GiB")
        table.append((kind, meta, length))
    fields: dict[str, object] = {
        "model": name.decode("ascii"),
        "weights_hash": weights_hash,
        "width": dims[0],
        "height": dims[1],
        "mode": _MODE_BY_CODE[mode_code],
        "rate": rate,
        "flags": flags,
    }
    payload_end = r.pos + sum(length for _, _, length in table)
    return _Header(fields, table, r.pos, payload_end)


def _bad_magic_message(head: bytes) -> str:
    """Name the usual ways a binary file gets mangled, since users hit them in practice."""
    if head.startswith(MAGIC[:3] + b"\r\n"):
        return "not a licstore bitstream: LF was converted to CRLF (file written in text mode?)"
    if head[:4] == bytes([MAGIC[0] & 0x7F]) + MAGIC[1:]:
        return "not a licstore bitstream: the high bit was stripped (sent over a 7-bit channel?)"
    if head.startswith((b"\xef\xbf\xbd" + MAGIC[1:], b"\xc2\x89" + MAGIC[1:])):
        return "not a licstore bitstream: it was decoded as text and re-encoded"
    return f"not a licstore bitstream: starts with {head[:4]!r}, expected {MAGIC!r}"


def _crc_failure_message(buf: memoryview, stored: int, computed: int) -> str:
    """Say "truncated" or "trailing data" when the header makes that evident, else "CRC"."""
    n = len(buf)
    generic = f"CRC mismatch (stored 0x{stored:08x}, computed 0x{computed:08x}): data is corrupt"
    try:
        header = _parse_header(buf, n)
    except _Truncated as exc:
        return f"CRC mismatch; the data looks {exc} ({n} bytes in total)"
    except CorruptBitstreamError:
        return generic
    total = header.payload_end + _CRC_SIZE
    if total > n:
        return f"CRC mismatch; the data looks truncated: header declares {total} bytes, got {n}"
    if total < n:
        body = header.payload_end
        if zlib.crc32(buf[:body]) == int.from_bytes(buf[body:total], "little"):
            return f"{n - total} bytes of trailing data after the bitstream's end at byte {total}"
    return generic


def _unpack(buf: memoryview) -> Bitstream:
    n = len(buf)
    if n == 0:
        raise CorruptBitstreamError("empty input")
    head = bytes(buf[: len(MAGIC) + 2])
    if head[: len(MAGIC)] != MAGIC:
        if n < len(MAGIC) and MAGIC.startswith(head):
            raise CorruptBitstreamError(f"truncated: {n} bytes")
        raise CorruptBitstreamError(_bad_magic_message(head))
    if n == len(MAGIC):
        raise CorruptBitstreamError(f"truncated: {n} bytes")
    version = buf[len(MAGIC)]
    # Only magic + version are common to all versions, so check the version before the CRC.
    if version == 0:
        raise CorruptBitstreamError("invalid format version 0")
    if version > FORMAT_VERSION:
        raise UnsupportedBitstreamError(
            f"format version {version} is newer than this licstore supports "
            f"({FORMAT_VERSION}); the file may need a newer licstore (or the data is corrupt)"
        )
    if n < MIN_SIZE:
        raise CorruptBitstreamError(f"truncated: {n} bytes, a bitstream has at least {MIN_SIZE}")
    body_end = n - _CRC_SIZE
    stored = int.from_bytes(buf[body_end:], "little")
    computed = zlib.crc32(buf[:body_end])
    if computed != stored:
        raise CorruptBitstreamError(_crc_failure_message(buf, stored, computed))
    header = _parse_header(buf, body_end)
    if header.payload_end > body_end:
        raise CorruptBitstreamError(
            f"layer data lengths point past the end: payloads end at byte "
            f"{header.payload_end}, data ends at byte {body_end}"
        )
    if header.payload_end < body_end:
        raise CorruptBitstreamError(
            f"{body_end - header.payload_end} unaccounted bytes between the layer payloads "
            "and the CRC"
        )
    layers = []
    pos = header.payload_start
    for kind, meta, length in header.table:
        layers.append(Layer(kind, bytes(buf[pos : pos + length]), meta))
        pos += length
    return Bitstream(layers=tuple(layers), **header.fields)  # type: ignore[arg-type]


def unpack(data: bytes | bytearray | memoryview) -> Bitstream:
    """Parse and fully validate a bitstream; any problem raises ``CorruptBitstreamError``.

    ``UnsupportedBitstreamError`` (a subclass) means well-formed but too new for this licstore.
    """
    if isinstance(data, str):
        raise CorruptBitstreamError("expected bytes, got str (open the file in binary mode)")
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise CorruptBitstreamError(f"expected bytes, got {type(data).__name__}")
    # Views are released on exit so a caller's bytearray stays resizable even if we raise.
    with memoryview(data) as raw:
        try:
            buf = raw.cast("B")
        except (TypeError, ValueError) as exc:
            raise CorruptBitstreamError(f"expected contiguous bytes: {exc}") from None
        with buf:
            return _unpack(buf)
