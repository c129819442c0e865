"""Atomic writes: whole files only, never replacing what they must not, with the umask's
permissions (not mkstemp's 0600) in every writer that publishes local files."""

from __future__ import annotations

import io
import os
import stat

import fsspec
import pyarrow as pa
import pytest
from PIL import Image

from licstore import atomic


@pytest.fixture(params=[0o022, 0o077, 0o002])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_write_file_permissions_follow_the_umask(tmp_path, umask):
    path = tmp_path / "sub" / "a.bin"
    atomic.write_file(path, b"one")
    assert path.read_bytes() == b"one" and _mode(path) == 0o666 & ~umask
    path.chmod(0o600)
    atomic.write_file(path, b"two")  # a replaced file gets the umask's, as open() would
    assert path.read_bytes() == b"two" and _mode(path) == 0o666 & ~umask
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.bin"]


def test_write_file_without_replace_keeps_the_existing_file(tmp_path):
    path = tmp_path / "a.bin"
    atomic.write_file(path, b"new", replace=False)
    with pytest.raises(FileExistsError):
        atomic.write_file(path, b"other", replace=False)
    assert path.read_bytes() == b"new"
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "nowhere")  # a dangling link is not written through either
    with pytest.raises(FileExistsError):
        atomic.write_file(link, b"other", replace=False)
    assert not (tmp_path / "nowhere").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "link"]


def test_write_file_failure_leaves_nothing(tmp_path, monkeypatch):
    def fail(*a):
        raise OSError("disk full")

    monkeypatch.setattr(atomic.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        atomic.write_file(tmp_path / "a.bin", b"x")
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_on_local_fsspec_follows_the_umask(tmp_path, umask):
    fs = fsspec.filesystem("file")
    path = str(tmp_path / "shard.parquet")
    with atomic.atomic_write(fs, path) as tmp, fs.open(tmp, "wb") as f:
        f.write(b"data")
    assert _mode(path) == 0o666 & ~umask
    assert os.listdir(tmp_path) == ["shard.parquet"]


def test_parquet_and_fsspec_writers_follow_the_umask(tmp_path, umask, tiny_model, photo):
    import licstore
    from licstore import parquet

    buf = io.BytesIO()
    Image.fromarray(photo).save(buf, "PNG")
    table = pa.table({"image": [{"bytes": buf.getvalue(), "path": None}], "label": [1]})
    out = parquet.write_table(
        table, tmp_path / "t.parquet", {"image": licstore.LICImage(quality=2, model=tiny_model)}
    )
    with fsspec.open(f"lic::{tmp_path / 'cat.png'}", "wb", lic={"model": tiny_model}) as f:
        f.write(buf.getvalue())
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert {str(out), str(tmp_path / "cat.png")} <= {str(p) for p in written}
    for path in written:  # with the weights files parquet writes beside the data
        assert _mode(path) == 0o666 & ~umask, path
        assert "tmp" not in path.suffix, path


def test_saved_datasets_follow_the_umask(tmp_path, umask, tiny_model, photo):
    datasets = pytest.importorskip("datasets")
    import licstore

    buf = io.BytesIO()
    Image.fromarray(photo).save(buf, "PNG")
    ds = datasets.Dataset.from_dict({"image": [{"bytes": buf.getvalue(), "path": None}] * 2})
    ds = ds.cast_column("image", datasets.Image())
    out = licstore.compress_dataset(ds, "image", licstore.LICImage(quality=2, model=tiny_model))
    out.save_to_disk(str(tmp_path / "saved"))
    written = [p for p in (tmp_path / "saved").rglob("*") if p.is_file()]
    assert any(p.suffix == ".arrow" for p in written)
    for path in written:  # with the weights files the dataset carries, if any
        assert _mode(path) == 0o666 & ~umask, path
