"""The shared encode cache authenticates its entries: a substituted file is a miss."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

import licstore
from licstore import encode_cache


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A fresh cache folder and secret; the in-process level emptied."""
    monkeypatch.setenv("LICSTORE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("LICSTORE_CACHE_SECRET_FILE", str(tmp_path / "config" / "secret"))
    monkeypatch.setattr(encode_cache, "_secrets", {})
    encode_cache.clear_memory()
    yield tmp_path / "cache"
    encode_cache.clear_memory()


@pytest.fixture
def two(tiny_model, photo):
    """Two keys with their (different) bitstreams."""
    a = licstore.encode(photo, model=tiny_model, quality=2)
    b = licstore.encode(photo[:, :48].copy(), model=tiny_model, quality=2)
    assert a != b
    return (encode_cache.key("a" * 64, "s"), a), (encode_cache.key("b" * 64, "s"), b)


def _from_disk(k):
    encode_cache.clear_memory()
    return encode_cache.get(k)


def test_entries_round_trip_through_the_folder(cache, two):
    (ka, a), _ = two
    encode_cache.put(ka, a)
    assert _from_disk(ka) == a
    path = encode_cache._path(cache, ka)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 & ~os.umask(os.umask(0))
    secret = encode_cache.secret_path()
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert not secret.is_relative_to(cache)
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temporary left


def test_substituted_entries_are_misses(cache, two):
    (ka, a), (kb, b) = two
    encode_cache.put(ka, a)
    encode_cache.put(kb, b)
    pa, pb = encode_cache._path(cache, ka), encode_cache._path(cache, kb)
    genuine_a = pa.read_bytes()

    pa.write_bytes(pb.read_bytes())  # another key's valid entry, copied over
    assert _from_disk(ka) is None
    pa.write_bytes(b)  # a bare, valid bitstream (what the cache stored before entries had MACs)
    assert _from_disk(ka) is None
    header = len(encode_cache.ENTRY_MAGIC) + 32
    forged = genuine_a[:header] + bytes(32) + b  # right key, made-up MAC
    pa.write_bytes(forged)
    assert _from_disk(ka) is None
    altered = bytearray(genuine_a)
    altered[-3] ^= 1
    pa.write_bytes(bytes(altered))
    assert _from_disk(ka) is None

    pa.write_bytes(genuine_a)
    assert _from_disk(ka) == a
    assert _from_disk(kb) == b


def test_another_users_secret_does_not_verify(cache, two, tmp_path, monkeypatch):
    (ka, a), _ = two
    encode_cache.put(ka, a)
    monkeypatch.setenv("LICSTORE_CACHE_SECRET_FILE", str(tmp_path / "other" / "secret"))
    assert _from_disk(ka) is None  # written under another secret: re-encoded, not trusted
    encode_cache.put(ka, a)
    assert _from_disk(ka) == a


def test_a_readable_secret_keeps_the_cache_in_memory(cache, two, tmp_path, monkeypatch):
    (ka, a), _ = two
    secret = tmp_path / "shared-secret"
    secret.write_bytes(os.urandom(32))
    secret.chmod(0o644)
    monkeypatch.setenv("LICSTORE_CACHE_SECRET_FILE", str(secret))
    with pytest.warns(RuntimeWarning, match="mode 0600"):
        encode_cache.put(ka, a)
    assert not cache.exists() or not list(cache.rglob("*.lic"))
    assert encode_cache.get(ka) == a  # the in-process level still works
    assert _from_disk(ka) is None


def test_dataset_cast_uses_only_verified_entries(cache, tiny_model, photo):
    """End to end: the row of an image whose entry was swapped is encoded, not copied."""
    datasets = pytest.importorskip("datasets")
    imgs = [photo, np.ascontiguousarray(photo[:, :48])]
    ds = datasets.Dataset.from_dict({"image": [{"bytes": _png(i), "path": None} for i in imgs]})
    feature = licstore.LICImage(quality=2, model=tiny_model)
    first = ds.cast_column("image", feature).with_format("arrow")["image"].to_pylist()
    entries = sorted(cache.rglob("*.lic"))
    assert len(entries) == 2
    data = [e.read_bytes() for e in entries]
    entries[0].write_bytes(data[1])  # swap the two entries
    entries[1].write_bytes(data[0])
    encode_cache.clear_memory()
    start = encode_cache.stats["encoded"]
    again = ds.cast_column("image", feature).with_format("arrow")["image"].to_pylist()
    assert encode_cache.stats["encoded"] - start == 2
    assert [r["bytes"] for r in again] == [r["bytes"] for r in first]


def _png(img) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "PNG")
    return buf.getvalue()


def test_oversized_entries_are_not_read(cache, two, monkeypatch):
    (ka, a), _ = two
    encode_cache.put(ka, a)
    size = encode_cache._path(cache, ka).stat().st_size
    monkeypatch.setattr(encode_cache, "MEMORY_MAX_BYTES", size - 1)
    assert _from_disk(ka) is None  # a file bigger than any entry is not loaded into memory
    monkeypatch.setattr(encode_cache, "MEMORY_MAX_BYTES", size)
    assert _from_disk(ka) == a
