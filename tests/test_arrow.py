"""``licstore.arrow``: whole Arrow columns to LICImage storage and back, with the tiny model."""

from __future__ import annotations

import io

import fsspec
import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

import licstore
from licstore.arrow import compress_column, decompress_column
from licstore.errors import CorruptBitstreamError, UnsupportedImageError
from licstore.features import STORAGE_TYPE, LICImage

H, W = 32, 48


@pytest.fixture(autouse=True)
def _no_disk_cache(monkeypatch):
    monkeypatch.setenv("LICSTORE_CACHE_MAX_BYTES", "0")


@pytest.fixture
def feature(tiny_model) -> LICImage:
    return LICImage(model=tiny_model, quality=3)


@pytest.fixture
def pixels() -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [rng.integers(0, 256, (H, W, 3), dtype=np.uint8) for _ in range(5)]


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "PNG")
    return buf.getvalue()


def corrupt(data: bytes) -> bytes:
    """Flip a byte near the end (payload): the container's CRC no longer matches."""
    data = bytearray(data)
    data[-3] ^= 0xFF
    return bytes(data)


def test_binary_column_round_trip_pil_and_numpy(feature, pixels):
    storage = compress_column(pa.array([png(p) for p in pixels]), feature=feature, batch_size=2)
    assert isinstance(storage, pa.StructArray) and storage.type == STORAGE_TYPE
    rows = storage.to_pylist()
    assert all(licstore.info(r["bytes"]).model == feature.model for r in rows)
    assert all(f"size={W}x{H} mode=RGB" in r["codec"] for r in rows)
    assert all(r["path"] is None for r in rows)

    images = decompress_column(storage, batch_size=2)
    assert [(im.size, im.mode) for im in images] == [((W, H), "RGB")] * len(pixels)
    batch = decompress_column(storage, output="numpy", batch_size=3)
    assert batch.dtype == np.uint8 and batch.shape == (len(pixels), H, W, 3)
    np.testing.assert_array_equal(batch[2], np.asarray(images[2]))


def test_none_rows_stay_none(feature, pixels):
    storage = compress_column(pa.array([None, png(pixels[0]), None]), feature=feature)
    assert storage.to_pylist()[0] is None and storage.null_count == 2
    images = decompress_column(storage)
    assert images[0] is None and images[2] is None and images[1].size == (W, H)
    with pytest.raises(ValueError, match=r"rows \[0, 2\] are None"):
        decompress_column(storage, output="numpy")


def test_string_column_of_paths_and_urls(feature, pixels, tmp_path):
    local = tmp_path / "a.png"
    local.write_bytes(png(pixels[0]))
    url = "memory://licstore-test-arrow/b.png"
    with fsspec.open(url, "wb") as f:
        f.write(png(pixels[1]))
    storage = compress_column(pa.array([str(local), url, None]), feature=feature)
    rows = storage.to_pylist()
    assert [r and r["path"] for r in rows] == [str(local), url, None]
    assert all(licstore.info(r["bytes"]).width == W for r in rows[:2])
    fsspec.filesystem("memory").rm("/licstore-test-arrow", recursive=True)


def test_image_struct_column(feature, pixels, tmp_path):
    (tmp_path / "c.png").write_bytes(png(pixels[2]))
    image_type = pa.struct({"bytes": pa.binary(), "path": pa.string()})
    array = pa.array(
        [
            {"bytes": png(pixels[0]), "path": "zero.png"},
            {"bytes": None, "path": str(tmp_path / "c.png")},
            None,
        ],
        type=image_type,
    )
    rows = compress_column(array, feature=feature).to_pylist()
    assert rows[0]["path"] == "zero.png" and rows[1]["path"].endswith("c.png") and rows[2] is None
    assert licstore.info(rows[1]["bytes"]).height == H


def test_list_of_pixels_and_large_and_dictionary_columns(feature, pixels):
    import datasets

    u8 = pa.list_(pa.list_(pa.list_(pa.uint8())))
    nested = pa.array([p.tolist() for p in pixels[:2]] + [None], type=u8)
    gray = pa.array([pixels[0][..., 0].tolist()], type=pa.list_(pa.list_(pa.uint8())))
    floats = pa.array([(pixels[0] / 255).tolist()], type=pa.list_(pa.list_(pa.list_(pa.float32()))))
    array3d = datasets.Dataset.from_dict(
        {"x": [pixels[0]]}, features=datasets.Features({"x": datasets.Array3D((H, W, 3), "uint8")})
    ).data.table.column("x")
    large = pa.array([png(pixels[0])], type=pa.large_binary())
    dictionary = pa.array([png(pixels[0]), png(pixels[0])]).dictionary_encode()
    cases = [
        (nested, ["RGB", "RGB", None]),
        (gray, ["L"]),
        (floats, ["RGB"]),
        (array3d, ["RGB"]),
        (large, ["RGB"]),
        (dictionary, ["RGB", "RGB"]),
    ]
    for array, modes in cases:
        storage = compress_column(array, feature=feature)
        assert storage.type == STORAGE_TYPE
        assert [r and licstore.info(r["bytes"]).mode for r in storage.to_pylist()] == modes
    gray_batch = decompress_column(compress_column(gray, feature=feature), output="numpy")
    assert gray_batch.shape == (1, H, W, 1)

    int64 = pa.array([pixels[0].tolist(), pixels[1].tolist()])  # what pa.array infers
    with pytest.raises(UnsupportedImageError, match="^row 0: .*int64"):
        compress_column(int64, feature=feature)
    ragged = pa.array([[[0, 0, 0]], [[0, 0, 0], [1, 1]]], type=pa.list_(pa.list_(pa.uint8())))
    with pytest.raises(UnsupportedImageError, match="^row 1: .*ragged"):
        compress_column(ragged, feature=feature)


def test_lic_storage_passes_through_unless_reencode(feature, tiny_model, pixels):
    storage = compress_column(pa.array([png(p) for p in pixels[:2]]), feature=feature)
    assert compress_column(storage, feature=LICImage(model=tiny_model, quality=1)) is storage
    again = compress_column(storage, feature=LICImage(model=tiny_model, quality=1), reencode=True)
    before, after = storage.to_pylist(), again.to_pylist()
    assert all(
        licstore.info(a["bytes"]).rate != licstore.info(b["bytes"]).rate
        for a, b in zip(after, before)
    )
    assert all("mode=RGB" in a["codec"] and a["codec"] != b["codec"] for a, b in zip(after, before))
    # bitstreams in a plain binary column pass through too
    raw = compress_column(
        pa.array([r["bytes"] for r in before]), feature=LICImage(model=tiny_model, quality=1)
    )
    assert [r["bytes"] for r in raw.to_pylist()] == [r["bytes"] for r in before]


def test_lic_reference_rows_stay_references_and_decode(feature, pixels, tmp_path):
    data = licstore.encode(pixels[0], model=feature.model, quality=3)
    (tmp_path / "x.lic").write_bytes(data)
    storage = compress_column(pa.array([str(tmp_path / "x.lic")]), feature=feature)
    assert storage.to_pylist() == [{"bytes": None, "path": str(tmp_path / "x.lic"), "codec": None}]
    assert decompress_column(storage)[0].size == (W, H)
    missing = pa.array(
        [{"bytes": None, "path": str(tmp_path / "gone.lic"), "codec": None}], type=STORAGE_TYPE
    )
    with pytest.raises(CorruptBitstreamError, match="row 0: cannot read"):
        decompress_column(missing)


def test_chunked_array_keeps_chunks_and_names_rows_across_chunks(feature, pixels):
    chunked = pa.chunked_array(
        [[png(pixels[0]), png(pixels[1])], [png(pixels[2]), None, png(pixels[3])]]
    )
    storage = compress_column(chunked, feature=feature, batch_size=2)
    assert isinstance(storage, pa.ChunkedArray) and [len(c) for c in storage.chunks] == [2, 3]
    assert [im is None for im in decompress_column(storage)] == [False, False, False, True, False]

    bad = pa.chunked_array([[png(pixels[0]), png(pixels[1])], [png(pixels[2]), b"not an image"]])
    with pytest.raises(UnsupportedImageError, match=r"^row 3: "):
        compress_column(bad, feature=feature)
    with pytest.raises(UnsupportedImageError, match=r"^row 13: "):
        compress_column(bad, feature=feature, first_row=10)


def test_table_column_is_replaced_and_datasets_metadata_updated(feature, pixels):
    import datasets

    ds = datasets.Dataset.from_dict(
        {"image": [{"bytes": png(p), "path": None} for p in pixels[:3]], "label": [0, 1, 2]},
        features=datasets.Features(
            {"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b", "c"])}
        ),
    )
    table = ds.data.table
    out = compress_column(table, "image", feature)
    assert out.column_names == ["image", "label"] and out.schema.field("image").type == STORAGE_TYPE
    assert out.column("label").equals(table.column("label"))
    features = datasets.Features.from_arrow_schema(out.schema)
    assert features["image"] == feature and isinstance(features["label"], datasets.ClassLabel)
    assert len(decompress_column(out, "image")) == 3

    with pytest.raises(TypeError, match="column="):
        compress_column(table, feature=feature)
    with pytest.raises(KeyError, match="no column 'img'"):
        decompress_column(out, "img")


def test_numpy_output_needs_one_size_and_mode(feature, pixels):
    sizes = pa.array([png(pixels[0]), png(pixels[1][:16]), png(pixels[2])])
    with pytest.raises(ValueError, match=r"row 0 is 48x32 RGB, row 1 is 48x16 RGB"):
        decompress_column(compress_column(sizes, feature=feature), output="numpy")
    modes = pa.array([png(pixels[0]), png(pixels[1][..., 0])])
    with pytest.raises(ValueError, match=r"row 1 is 48x32 L"):
        decompress_column(compress_column(modes, feature=feature), output="numpy")
    with pytest.raises(ValueError, match="output must be"):
        decompress_column(sizes, output="torch")


def test_corrupt_bitstream_names_its_row_and_only_on_access(feature, pixels):
    rows = compress_column(pa.array([png(p) for p in pixels[:4]]), feature=feature).to_pylist()
    rows[2]["bytes"] = corrupt(rows[2]["bytes"])
    storage = pa.chunked_array([pa.array(rows[:1], STORAGE_TYPE), pa.array(rows[1:], STORAGE_TYPE)])
    with pytest.raises(CorruptBitstreamError, match=r"^row 2: "):
        decompress_column(storage)
    fine = decompress_column(pa.chunked_array([storage.chunk(0), storage.chunk(1).slice(2)]))
    assert [im.size for im in fine] == [(W, H), (W, H)]
    with pytest.raises(CorruptBitstreamError, match=r"^row 2: "):  # writing it again refuses too
        compress_column(storage, feature=feature, reencode=True)


def test_unsupported_column_type(feature):
    with pytest.raises(UnsupportedImageError, match="int64"):
        compress_column(pa.array([1, 2]), feature=feature)
    with pytest.raises(UnsupportedImageError, match="cannot decode"):
        decompress_column(pa.array([1, 2]))
