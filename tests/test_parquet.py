"""``licstore.parquet``: LIC image columns in Parquet files (local and memory://), tiny model."""

from __future__ import annotations

import io
import uuid

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from licstore import column_codec
from licstore.arrow import compress_column
from licstore.errors import CorruptBitstreamError, UnsupportedImageError
from licstore.features import STORAGE_TYPE, LICImage
from licstore.parquet import read_images, read_table, write_table

H, W = 32, 48
N = 8


@pytest.fixture(autouse=True)
def _no_disk_cache(monkeypatch):
    monkeypatch.setenv("LICSTORE_CACHE_MAX_BYTES", "0")


@pytest.fixture
def feature(tiny_model) -> LICImage:
    return LICImage(model=tiny_model, quality=3)


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def pngs() -> list[bytes]:
    rng = np.random.default_rng(2)
    return [png(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)) for _ in range(N)]


@pytest.fixture
def table(pngs) -> pa.Table:
    """Images (row 6 missing) next to columns of other types that must survive unchanged."""
    images = list(pngs)
    images[6] = None
    return pa.table(
        {
            "image": images,
            "label": pa.array(range(N), pa.int16()),
            "caption": [f"picture {i}" for i in range(N)],
            "scores": [[float(i), 0.5] for i in range(N)],
        }
    )


@pytest.fixture
def mem():
    """A fresh folder on the memory filesystem (removed afterwards)."""
    fs = fsspec.filesystem("memory")
    root = f"/lic-parquet-{uuid.uuid4().hex[:8]}"
    fs.mkdir(root)
    yield fs, root
    fs.rm(root, recursive=True)


def test_local_file_reads_back_with_plain_pyarrow(table, feature, tmp_path):
    import datasets

    where = tmp_path / "sub" / "data.parquet"
    written = write_table(table, where, {"image": feature}, row_group_size=3, batch_size=2)
    assert written == str(where) and sorted(p.name for p in where.parent.iterdir()) == [
        ".licstore-weights",  # the weights the rows use (formats/licstore-datasets-v1.md 5)
        "data.parquet",
    ]

    plain = pq.read_table(where)
    assert plain.schema.field("image").type == STORAGE_TYPE
    for name in ("label", "caption", "scores"):
        assert plain.column(name).equals(table.column(name))
    rows = plain.column("image").to_pylist()
    assert rows[6] is None and all(
        f"size={W}x{H}" in r["codec"] for i, r in enumerate(rows) if i != 6
    )
    assert pq.ParquetFile(where).metadata.num_row_groups == 3  # 3 + 3 + 2 rows

    # the schema metadata is exactly what datasets itself would attach for these features
    expected = datasets.Features.from_arrow_schema(table.schema)
    expected["image"] = feature
    assert plain.schema.metadata[b"huggingface"] == expected.arrow_schema.metadata[b"huggingface"]
    # the bitstreams are stored uncompressed (they do not compress), the rest snappy
    group = pq.ParquetFile(where).metadata.row_group(0)
    codecs = {
        group.column(i).path_in_schema: group.column(i).compression
        for i in range(group.num_columns)
    }
    assert codecs["image.bytes"] == "UNCOMPRESSED" and codecs["caption"] == "SNAPPY"

    images = read_images(where, rows=[0, 6, 7])
    assert images[1] is None and [im.size for im in (images[0], images[2])] == [(W, H)] * 2


def test_load_dataset_opens_a_licimage_column(table, feature, tmp_path):
    import datasets

    where = tmp_path / "train.parquet"
    write_table(table, str(where), {"image": feature}, row_group_size=4)
    ds = datasets.load_dataset(
        "parquet", data_files=str(where), split="train", cache_dir=str(tmp_path / "cache")
    )
    assert ds.features["image"] == feature
    assert ds.features["label"] == datasets.Value("int16")
    assert ds.column_names == ["image", "label", "caption", "scores"]
    row = ds[3]
    assert isinstance(row["image"], Image.Image) and row["image"].size == (W, H)
    assert row["label"] == 3 and row["caption"] == "picture 3" and ds[6]["image"] is None


def test_memory_url_round_trip_and_read_table(table, feature, mem):
    fs, root = mem
    url = f"memory://{root}/data.parquet"
    write_table(table, url, {"image": feature}, row_group_size=5)
    assert fs.ls(root, detail=False) == [f"{root}/.licstore-weights", f"{root}/data.parquet"]
    stored = read_table(url)
    assert stored.schema.field("image").type == STORAGE_TYPE and stored.num_rows == N
    assert read_table(url, columns=["label"]).column_names == ["label"]

    batch = read_images(url, rows=slice(0, 4), output="numpy")
    assert batch.shape == (4, H, W, 3) and batch.dtype == np.uint8
    with fs.open(f"{root}/data.parquet", "rb") as f:  # filesystem= instead of a URL
        assert f.read(4) == b"PAR1"
    same = read_images(f"{root}/data.parquet", rows=[3], filesystem=fs, output="numpy")
    np.testing.assert_array_equal(same[0], batch[3])


def test_several_image_columns_and_passthrough(table, feature, tiny_model, mem):
    fs, root = mem
    other = LICImage(model=tiny_model, quality=1)
    precompressed = table.append_column(
        "thumb", compress_column(table.column("image"), feature=other)
    )
    write_table(precompressed, f"memory://{root}/two.parquet", {"image": feature, "thumb": other})
    stored = read_table(f"memory://{root}/two.parquet")
    assert stored.column("thumb").equals(precompressed.column("thumb"))  # bitstreams untouched
    import datasets

    features = datasets.Features.from_arrow_schema(stored.schema)
    assert features["image"] == feature and features["thumb"] == other


def test_failed_write_leaves_nothing(table, feature, tmp_path, mem):
    bad = table.set_column(
        0, "image", pa.array(table.column("image").to_pylist()[:5] + [b"no image", None, None])
    )
    where = tmp_path / "bad.parquet"
    with pytest.raises(UnsupportedImageError, match=r"^row 5: "):
        write_table(bad, where, {"image": feature}, row_group_size=3)  # fails in group 2
    assert list(tmp_path.iterdir()) == []

    fs, root = mem
    with pytest.raises(UnsupportedImageError, match=r"^row 5: "):
        write_table(bad, f"memory://{root}/bad.parquet", {"image": feature}, row_group_size=3)
    assert fs.ls(root, detail=False) == []

    # an existing file at the destination survives a failed overwrite
    write_table(table, where, {"image": feature})
    before = where.read_bytes()
    with pytest.raises(UnsupportedImageError):
        write_table(bad, where, {"image": feature}, row_group_size=3)
    assert where.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [".licstore-weights", "bad.parquet"]

    with pytest.raises(KeyError, match="no column 'img'"):
        write_table(table, tmp_path / "x.parquet", {"img": feature})
    assert not (tmp_path / "x.parquet").exists()


def test_encodes_row_group_by_row_group(table, feature, tmp_path, monkeypatch):
    calls = []
    original = column_codec.encode_rows

    def spy(rows, settings, **kwargs):
        calls.append((len(rows), kwargs["first_row"]))
        return original(rows, settings, **kwargs)

    monkeypatch.setattr(column_codec, "encode_rows", spy)
    write_table(table, tmp_path / "g.parquet", {"image": feature}, row_group_size=3)
    assert calls == [(3, 0), (3, 3), (2, 6)]


def test_read_images_reads_only_needed_row_groups(table, feature, mem, monkeypatch):
    fs, root = mem
    url = f"memory://{root}/data.parquet"
    write_table(table, url, {"image": feature}, row_group_size=3)  # groups: 0-2, 3-5, 6-7
    everything = read_images(url)
    assert len(everything) == N and everything[6] is None

    read = []
    original = pq.ParquetFile.read_row_group

    def spy(self, i, *args, **kwargs):
        read.append((i, tuple(kwargs.get("columns") or ())))
        return original(self, i, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "read_row_group", spy)
    images = read_images(url, rows=[7, 1, -1], output="numpy")
    assert sorted(read) == [(0, ("image",)), (2, ("image",))]
    expected = np.stack([np.asarray(everything[i]) for i in (7, 1, 7)])
    np.testing.assert_array_equal(images, expected)

    read.clear()
    assert len(read_images(url, rows=slice(3, 5))) == 2 and read == [(1, ("image",))]
    with pytest.raises(IndexError, match="row 8 out of range"):
        read_images(url, rows=[8])
    with pytest.raises(KeyError, match="no column"):
        read_images(url, column="picture")


def test_corrupt_row_raises_on_access_naming_its_global_index(table, feature, mem):
    fs, root = mem
    stored = compress_column(table, "image", feature)
    rows = stored.column("image").to_pylist()
    data = bytearray(rows[4]["bytes"])
    data[-3] ^= 0xFF
    rows[4]["bytes"] = bytes(data)
    broken = stored.set_column(0, pa.field("image", STORAGE_TYPE), pa.array(rows, STORAGE_TYPE))
    with fs.open(f"{root}/broken.parquet", "wb") as f:
        pq.write_table(broken, f, row_group_size=3)
    url = f"memory://{root}/broken.parquet"

    with pytest.raises(CorruptBitstreamError, match=r"^row 4: "):
        read_images(url, rows=[0, 4])
    images = read_images(url, rows=[0, 1, 2, 3, 5, 7])
    assert all(im.size == (W, H) for im in images)
    # the damage shows only when decoding: the file itself reads fine
    assert pq.read_table(f"{root}/broken.parquet", filesystem=fs).num_rows == N
