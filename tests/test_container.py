"""Tests of the v1 container: round trips, pack validation, and a hostile-input parser."""

from __future__ import annotations

import dataclasses
import struct
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from licstore.container import (
    FORMAT_VERSION,
    LAYER_KINDS,
    MAGIC,
    MAX_DIMENSION,
    MIN_SIZE,
    MODE_CODES,
    Bitstream,
    BitstreamFieldError,
    Layer,
    overhead,
    pack,
    unpack,
)
from licstore.errors import CorruptBitstreamError, LICError, UnsupportedBitstreamError

HASH = bytes.fromhex("0123456789abcdef")

# The worked example of formats/licstore-v1.md section 10; the spec and the code must agree.
SPEC_EXAMPLE_HEX = (
    "89 4c 43 0a 01 00 07 6d 73 68 70 2d 76 72 01 23 45 67 89 ab cd ef ac 02 02 03 02 01 02"
    " 00 00 04 01 01 07 01 de ad be ef 55 85 db 3e 05"
)
SPEC_EXAMPLE = Bitstream(
    "mshp-vr",
    HASH,
    300,
    2,
    "RGBA",
    0x0102,
    (Layer("base", b"\xde\xad\xbe\xef"), Layer("alpha", b"\x55", b"\x07")),
)

SMALL = Bitstream("m", HASH, 3, 2, "RGB", 7, (Layer("base", b"\xaa\xbb", b"\x01"),))


def seal(body: bytes) -> bytes:
    """Append a correct CRC, to get past the checksum and exercise field validation."""
    return body + struct.pack("<I", zlib.crc32(body))


def leb128(value: int) -> bytes:
    """Independent varint encoder (not the one under test)."""
    out = b""
    while True:
        low, value = value & 0x7F, value >> 7
        if value:
            out += bytes([low | 0x80])
        else:
            return out + bytes([low])


def raw(
    *,
    version: int = 1,
    flags: int = 0,
    name: bytes = b"mshp-vr",
    name_len: int | None = None,
    width: bytes = b"\x03",
    height: bytes = b"\x02",
    mode: int = 0,
    layers: list[tuple[int, bytes, bytes]] | None = None,
    count: int | None = None,
    payload: bytes = b"\xaa",
) -> bytes:
    """Hand-build a v1 body (no CRC) field by field, following the spec table."""
    if layers is None:
        layers = [(0, b"", b"\x01")]
    out = MAGIC + bytes([version, flags])
    out += bytes([len(name) if name_len is None else name_len]) + name + HASH
    out += width + height + bytes([mode]) + b"\x00\x01"
    out += bytes([len(layers) if count is None else count])
    for code, meta, length in layers:
        out += bytes([code, len(meta)]) + meta + length
    return out + payload


# -- round trips ------------------------------------------------------------------------------

ROUND_TRIP = [
    SMALL,
    SPEC_EXAMPLE,
    Bitstream("a", b"\0" * 8, 1, 1, "1", 0, (Layer("base", b""),)),
    Bitstream(
        "mshp-vr",
        HASH,
        MAX_DIMENSION,
        MAX_DIMENSION,
        "PA",
        0xFFFF,
        (
            Layer("palette", bytes(range(256)) * 3, b""),
            Layer("base", b"\x01" * 20000, bytes(255)),
            Layer("alpha", b"\x02" * 130, b"m"),
            Layer("residual-lossless", b"x"),
            Layer("residual-hevc", b"", b"\xff"),
        ),
    ),
    Bitstream("Model_v2.1+x-" + "z" * 51, HASH, 127, 128, "P", 300, (Layer("base", b"x"),)),
]


@pytest.mark.parametrize("bs", ROUND_TRIP)
def test_round_trip(bs: Bitstream) -> None:
    data = pack(bs)
    assert unpack(data) == bs
    assert unpack(bytearray(data)) == bs
    assert unpack(memoryview(data)) == bs
    payload = sum(len(layer.data) + len(layer.meta) for layer in bs.layers)
    assert overhead(bs) == len(data) - payload


def test_spec_example_is_exact() -> None:
    data = bytes.fromhex(SPEC_EXAMPLE_HEX)
    assert pack(SPEC_EXAMPLE) == data
    assert unpack(data) == SPEC_EXAMPLE
    assert overhead(SPEC_EXAMPLE) == 39


def test_frozen_constants() -> None:
    """Codes are part of the format: changing one breaks every stored file."""
    assert MAGIC == b"\x89LC\n"
    assert FORMAT_VERSION == 1
    assert MAX_DIMENSION == 65536
    assert MIN_SIZE == 29
    assert MODE_CODES == {"RGB": 0, "L": 1, "LA": 2, "RGBA": 3, "P": 4, "PA": 5, "1": 6}
    assert LAYER_KINDS == {
        "base": 0,
        "alpha": 1,
        "palette": 2,
        "residual-hevc": 3,
        "residual-lossless": 4,
    }


def test_typical_overhead() -> None:
    def base(n: int) -> Bitstream:
        return Bitstream("mshp-vr", HASH, 768, 512, "RGB", 100, (Layer("base", bytes(n)),))

    assert overhead(base(9830)) == 38  # 0.2 bpp
    assert overhead(base(20000)) == 39
    assert len(pack(base(9830))) == 9830 + 38
    assert len(pack(Bitstream("m", HASH, 1, 1, "L", 0, (Layer("base", b""),)))) == MIN_SIZE


def test_layer_lookup_and_normalisation() -> None:
    bs = Bitstream("m", bytearray(HASH), 1, 1, "LA", 0, [Layer("base", bytearray(b"ab"))])
    assert isinstance(bs.layers, tuple) and isinstance(bs.weights_hash, bytes)
    assert bs.layer("base") == Layer("base", b"ab")
    assert bs.layer("alpha") is None
    hash(bs)


def test_error_hierarchy() -> None:
    assert issubclass(UnsupportedBitstreamError, CorruptBitstreamError)
    assert issubclass(CorruptBitstreamError, LICError)
    assert issubclass(BitstreamFieldError, LICError)
    assert issubclass(BitstreamFieldError, ValueError)


names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._+:-]{0,63}", fullmatch=True)
layer_lists = st.lists(
    st.builds(
        Layer,
        st.sampled_from(sorted(LAYER_KINDS)),
        st.binary(max_size=300),
        st.binary(max_size=255),
    ),
    min_size=1,
    max_size=5,
    unique_by=lambda layer: layer.kind,
).map(tuple)
bitstreams = st.builds(
    Bitstream,
    names,
    st.binary(min_size=8, max_size=8),
    st.integers(1, MAX_DIMENSION),
    st.integers(1, MAX_DIMENSION),
    st.sampled_from(sorted(MODE_CODES)),
    st.integers(0, 0xFFFF),
    layer_lists,
)


@settings(max_examples=100, deadline=None)
@given(bitstreams)
def test_round_trip_property(bs: Bitstream) -> None:
    data = pack(bs)
    assert unpack(data) == bs
    assert overhead(bs) == len(data) - sum(len(ly.data) + len(ly.meta) for ly in bs.layers)


# -- pack validation --------------------------------------------------------------------------

BAD_FIELDS = [
    {"model": ""},
    {"model": "x" * 65},
    {"model": "-leading-dash"},
    {"model": "has space"},
    {"model": "caf\u00e9"},
    {"model": b"mshp"},
    {"weights_hash": b"\0" * 7},
    {"weights_hash": b"\0" * 32},
    {"weights_hash": "01234567"},
    {"width": 0},
    {"width": MAX_DIMENSION + 1},
    {"height": -1},
    {"width": 3.0},
    {"width": True},
    {"mode": "CMYK"},
    {"mode": "rgb"},
    {"rate": -1},
    {"rate": 0x10000},
    {"flags": 1},
    {"flags": 0x80},
    {"flags": 256},
    {"layers": ()},
    {"layers": (Layer("base", b""),) * 2},
    {"layers": (Layer("depth", b""),)},
    {"layers": (Layer("base", b"", bytes(256)),)},
    {"layers": (Layer("base", "text"),)},
    {"layers": ("base",)},
    {"layers": tuple(Layer("base", b"") for _ in range(256))},
]


@pytest.mark.parametrize("change", BAD_FIELDS, ids=lambda change: repr(change)[:50])
def test_pack_rejects_bad_fields(change: dict[str, object]) -> None:
    bs = dataclasses.replace(SMALL, **change)
    with pytest.raises(BitstreamFieldError):
        pack(bs)
    with pytest.raises(BitstreamFieldError):
        overhead(bs)


def test_pack_rejects_non_bitstream() -> None:
    with pytest.raises(BitstreamFieldError):
        pack(b"not a bitstream")  # type: ignore[arg-type]


# -- corruption of a valid stream ------------------------------------------------------------


def test_every_truncation_is_rejected() -> None:
    data = pack(SPEC_EXAMPLE)
    for n in range(len(data)):
        with pytest.raises(CorruptBitstreamError, match="truncated|empty"):
            unpack(data[:n])


def test_every_bit_flip_is_rejected() -> None:
    for data in (pack(SMALL), pack(SPEC_EXAMPLE)):
        for i in range(len(data) * 8):
            flipped = bytearray(data)
            flipped[i // 8] ^= 1 << (i % 8)
            with pytest.raises(CorruptBitstreamError):
                unpack(flipped)


def test_crc_mismatch_message() -> None:
    data = bytearray(pack(SPEC_EXAMPLE))
    data[-6] ^= 0x10  # inside the payload
    with pytest.raises(CorruptBitstreamError, match="CRC mismatch"):
        unpack(data)


@pytest.mark.parametrize("extra", [b"\0", b"junk", b"\n"])
def test_trailing_garbage(extra: bytes) -> None:
    with pytest.raises(CorruptBitstreamError, match="trailing data"):
        unpack(pack(SMALL) + extra)


def test_concatenated_streams() -> None:
    with pytest.raises(CorruptBitstreamError, match="trailing data"):
        unpack(pack(SMALL) + pack(SPEC_EXAMPLE))


def test_text_mode_mangling_is_named() -> None:
    data = pack(SPEC_EXAMPLE)
    with pytest.raises(CorruptBitstreamError, match="CRLF"):
        unpack(data.replace(b"\n", b"\r\n"))
    with pytest.raises(CorruptBitstreamError, match="high bit"):
        unpack(bytes(b & 0x7F for b in data))
    with pytest.raises(CorruptBitstreamError, match="decoded as text"):
        unpack(data.decode("utf-8", errors="replace").encode())
    with pytest.raises(CorruptBitstreamError, match="decoded as text"):
        unpack(data.decode("latin-1").encode())
    with pytest.raises(CorruptBitstreamError, match="binary mode"):
        unpack(data.decode("latin-1"))  # type: ignore[arg-type]


# -- well-formed CRC, bad fields --------------------------------------------------------------


def test_raw_builder_matches_pack() -> None:
    """The hand builder is only useful if its default is a valid stream."""
    bs = unpack(seal(raw()))
    assert (bs.model, bs.width, bs.height, bs.mode, bs.rate) == ("mshp-vr", 3, 2, "RGB", 256)
    assert bs.layers == (Layer("base", b"\xaa"),)


CRAFTED = [
    ("length past end", raw(layers=[(0, b"", b"\x05")]), "past the end"),
    ("length far past end", raw(layers=[(0, b"", leb128(2**32 - 1))]), "past the end"),
    ("length over 4 GiB", raw(layers=[(0, b"", leb128(2**32))]), "exceeds"),
    ("varint too long", raw(layers=[(0, b"", b"\x81\x80\x80\x80\x80\x00")]), "longer"),
    ("unaccounted bytes", raw(payload=b"\xaa\xbb"), "unaccounted"),
    ("width 0", raw(width=b"\x00"), "width 0"),
    ("height 0", raw(height=b"\x00"), "height 0"),
    ("width too big", raw(width=leb128(MAX_DIMENSION + 1)), "width 65537"),
    ("height 3-byte max", raw(height=b"\xff\xff\x7f"), "height"),
    ("width 4-byte varint", raw(width=b"\x80\x80\x80\x01"), "longer"),
    ("non-minimal varint", raw(width=b"\x83\x00"), "non-minimal"),
    ("zero layers", raw(layers=[], payload=b""), "no layers"),
    ("duplicate kinds", raw(layers=[(0, b"", b"\x01"), (0, b"", b"\x00")]), "duplicate"),
    ("name length 0", raw(name=b"", name_len=0), "name length 0"),
    ("name length 65", raw(name=b"x" * 65), "name length 65"),
    ("name with space", raw(name=b"a b"), "invalid model name"),
    ("name non-ascii", raw(name=b"caf\xc3\xa9"), "invalid model name"),
    ("name with NUL", raw(name=b"ab\x00"), "invalid model name"),
    ("layer count past end", raw(count=255, payload=b""), "truncated"),
    ("meta past end", raw(layers=[], count=1, payload=b"\x00\xc8abc"), "layer 0 meta"),
    ("version 0", raw(version=0), "version 0"),
]


@pytest.mark.parametrize(("label", "body", "message"), CRAFTED, ids=[c[0] for c in CRAFTED])
def test_crafted_invalid_fields(label: str, body: bytes, message: str) -> None:
    with pytest.raises(CorruptBitstreamError, match=message) as info:
        unpack(seal(body))
    assert not isinstance(info.value, UnsupportedBitstreamError), label


TOO_NEW = [
    ("version 2", raw(version=2)),
    ("version 255", raw(version=255)),
    ("reserved flag", raw(flags=0x01)),
    ("high flag", raw(flags=0x80)),
    ("unknown mode code", raw(mode=7)),
    ("mode code 255", raw(mode=255)),
    ("unknown layer kind", raw(layers=[(5, b"", b"\x01")])),
    ("unknown second layer", raw(layers=[(0, b"", b"\x01"), (200, b"", b"\x00")])),
]


@pytest.mark.parametrize(("label", "body"), TOO_NEW, ids=[c[0] for c in TOO_NEW])
def test_too_new_is_unsupported(label: str, body: bytes) -> None:
    with pytest.raises(UnsupportedBitstreamError, match="newer licstore"):
        unpack(seal(body))


def test_newer_version_is_reported_without_crc() -> None:
    """A v2 layout is unknown to v1, so the version must be checked before the CRC."""
    with pytest.raises(UnsupportedBitstreamError, match="version 2"):
        unpack(MAGIC + b"\x02" + b"\xff" * 100)


# -- input types ------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [None, 0, 1.5, [1, 2], "", "\x89LC\n", object(), b"".join])
def test_non_bytes_input(value: object) -> None:
    with pytest.raises(CorruptBitstreamError, match="expected bytes"):
        unpack(value)  # type: ignore[arg-type]


def test_empty_and_short_inputs() -> None:
    with pytest.raises(CorruptBitstreamError, match="empty"):
        unpack(b"")
    for n in range(1, 5):
        with pytest.raises(CorruptBitstreamError, match="truncated"):
            unpack(MAGIC[:n])
    with pytest.raises(CorruptBitstreamError, match="not a licstore"):
        unpack(b"\x89PNG\r\n\x1a\n" + bytes(40))
    with pytest.raises(CorruptBitstreamError, match="not a licstore"):
        unpack(b"x")


def test_non_contiguous_memoryview() -> None:
    data = pack(SMALL) * 2
    with pytest.raises(CorruptBitstreamError, match="contiguous"):
        unpack(memoryview(data)[::2])


def test_failed_unpack_releases_the_buffer() -> None:
    """The caller's bytearray must stay resizable after an error (views are released)."""
    buf = bytearray(pack(SMALL))
    buf[-1] ^= 1
    with pytest.raises(CorruptBitstreamError):
        unpack(buf)
    buf.extend(b"ok")  # BufferError if a view were still exported
    del buf[-2:]
    buf[-1] ^= 1
    assert unpack(buf) == SMALL


# -- fuzzing ----------------------------------------------------------------------------------


def check_hostile(data: bytes) -> None:
    """Only CorruptBitstreamError may escape; a success must be the canonical encoding."""
    try:
        bs = unpack(data)
    except CorruptBitstreamError:
        return
    assert pack(bs) == data


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_arbitrary_bytes(data: bytes) -> None:
    check_hostile(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_valid_prefix_and_crc(tail: bytes) -> None:
    check_hostile(seal(MAGIC + bytes([FORMAT_VERSION]) + tail))


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from([pack(SMALL)[:-4], pack(SPEC_EXAMPLE)[:-4]]),
    st.lists(st.tuples(st.integers(5, 44), st.integers(0, 255)), min_size=1, max_size=4),
    st.integers(-3, 3),
)
def test_fuzz_mutated_fields_with_valid_crc(
    body: bytes, edits: list[tuple[int, int]], resize: int
) -> None:
    """Mutate header bytes of a valid stream and fix the CRC, to reach every field check."""
    mutated = bytearray(body)
    for index, value in edits:
        if index < len(mutated):
            mutated[index] = value
    if resize > 0:
        mutated += bytes(resize)
    elif resize < 0:
        del mutated[resize:]
    check_hostile(seal(bytes(mutated)))
