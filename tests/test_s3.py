"""licstore on a real S3 endpoint: moto's server on 127.0.0.1 (tools/local_s3.py, started and
stopped here), reached through s3fs with ``storage_options`` as a user would, requests counted.

The server checks AWS signatures (wrong keys are refused as S3 refuses them) and can go down
mid-read. Tiny images and the tiny random model keep the module quick."""

from __future__ import annotations

import io
import os
import signal
import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

s3fs = pytest.importorskip("s3fs", reason="s3fs is in the test extra: pip install -e '.[test]'")

import fsspec  # noqa: E402

import licstore  # noqa: E402
from licstore import atomic  # noqa: E402
from licstore.container import MAGIC  # noqa: E402
from licstore.errors import (  # noqa: E402
    LICError,
    StorageError,
    StorageNotFoundError,
    StoragePermissionError,
    UnsupportedImageError,
)
from licstore.parquet import read_images, write_table  # noqa: E402


@pytest.fixture(scope="module")
def s3(load_tool):
    """The local S3 server for the module; skipped only if it cannot start."""
    local_s3 = load_tool("local_s3")
    try:
        server = local_s3.LocalS3().start()
    except (ImportError, OSError) as e:
        pytest.skip(f"the local S3 server (moto[server], tools/local_s3.py) cannot start: {e}")
    server.make_bucket("lic")
    yield server
    server.stop()


@pytest.fixture
def so(s3) -> dict:
    return dict(s3.storage_options)


def noise_png(width: int, height: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def smooth_png(width: int, height: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    img = np.stack([xx * 3.1, yy * 2.7, (xx + yy) * 1.3], -1) + rng.normal(0, 6, (height, width, 3))
    buf = io.BytesIO()
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def image_table(pngs: list[bytes]) -> pa.Table:
    return pa.table(
        {
            "image": pa.array([{"bytes": b, "path": None} for b in pngs]),
            "label": pa.array(range(len(pngs)), pa.int64()),
        }
    )


def keys(s3, prefix: str) -> list[str]:
    """Objects under ``prefix``, except the weights folder licstore writes beside datasets."""
    return sorted(k for k in s3.filesystem().find(prefix) if "/.licstore-weights/" not in k)


# -- Parquet, lic::, datasets ------------------------------------------------------------------


def test_write_table_and_read_rows_back(s3, so, tiny_model):
    pngs = [smooth_png(40 + 8 * (i % 2), 32, seed=i) for i in range(6)]
    url = "s3://lic/rt/train.parquet"
    s3.reset_log()
    write_table(
        image_table(pngs),
        url,
        {"image": licstore.LICImage(bpp=1.0, model=tiny_model)},
        row_group_size=2,
        storage_options=so,
    )
    # published by its own upload: no temporary object, no copy, no delete
    assert "lic/rt/train.parquet" in keys(s3, "lic/rt")
    assert not [k for k in keys(s3, "lic/rt") if k.rpartition("/")[2].startswith(".")]
    assert not s3.requests("DELETE")
    puts = {r.path for r in s3.requests("PUT") if r.path.startswith("/lic/rt/train")}
    assert puts == {"/lic/rt/train.parquet"}

    got = read_images(url, rows=[4, 1], storage_options=so)
    for image, i in zip(got, [4, 1]):
        source = Image.open(io.BytesIO(pngs[i]))
        assert image.size == source.size and image.mode == "RGB"
    table = pq.read_table(url, filesystem=s3.filesystem())
    assert table.column("label").to_pylist() == list(range(6))
    assert all(row["bytes"].startswith(MAGIC) for row in table.column("image").to_pylist())


def test_failed_write_publishes_nothing_and_keeps_the_old_object(s3, so, tiny_model):
    fs = s3.filesystem()
    fs.pipe("lic/fail/x.parquet", b"old object")
    pngs = [smooth_png(32, 32, 10), b"not an image at all", smooth_png(32, 32, 11)]
    with pytest.raises(UnsupportedImageError, match="row 1"):
        write_table(
            image_table(pngs),
            "s3://lic/fail/x.parquet",
            {"image": licstore.LICImage(bpp=1.0, model=tiny_model)},
            row_group_size=1,
            storage_options=so,
        )
    assert fs.cat("lic/fail/x.parquet") == b"old object"
    assert keys(s3, "lic/fail") == ["lic/fail/x.parquet"]
    assert not fs.list_multipart_uploads("lic")


def test_atomic_open_big_object_aborts_its_multipart_upload(s3):
    """Parts already uploaded (6 MiB, 5 MiB blocks) when the writer fails: nothing appears,
    and the upload is aborted."""
    fs = s3.filesystem()
    with pytest.raises(RuntimeError, match="writer failed"):
        with atomic.atomic_open(fs, "lic/mpu/big.bin", block_size=5 * 2**20) as f:
            f.write(os.urandom(6 * 2**20))
            f.flush()
            assert [u["Key"] for u in fs.list_multipart_uploads("lic")] == ["mpu/big.bin"]
            assert not fs.exists("lic/mpu/big.bin")  # parts uploaded, object not visible
            raise RuntimeError("writer failed")
    fs.invalidate_cache()
    assert not fs.exists("lic/mpu/big.bin")
    assert not fs.list_multipart_uploads("lic")
    with atomic.atomic_open(fs, "lic/mpu/big.bin", block_size=5 * 2**20) as f:
        f.write(b"x" * (6 * 2**20))
    fs.invalidate_cache()
    assert fs.size("lic/mpu/big.bin") == 6 * 2**20
    # a writer killed before its commit leaves an upload: abort_uploads removes it
    f = fs._open("lic/mpu/killed.bin", "wb", autocommit=False, block_size=5 * 2**20)
    f.write(b"y" * (6 * 2**20))
    f.flush()
    assert atomic.abort_uploads(fs, ["lic/mpu/killed.bin", "lic/mpu/other.bin"]) == 1
    assert not fs.list_multipart_uploads("lic")


def test_lic_protocol_write_and_read(s3, so, tiny_model):
    png = smooth_png(48, 40, 20)
    s3.reset_log()
    with fsspec.open(
        "lic::s3://lic/cats/cat.png", "wb", lic={"bpp": 1.0, "model": tiny_model}, s3=so
    ) as f:
        f.write(png)
    stored = s3.filesystem().cat("lic/cats/cat.png")
    assert stored.startswith(MAGIC) and len(stored) < len(png)
    assert [r.path for r in s3.requests("PUT")] == ["/lic/cats/cat.png"]  # one PUT, no rename
    assert not s3.requests("DELETE")
    with fsspec.open("lic::s3://lic/cats/cat.png", "rb", s3=so) as f:
        back = Image.open(io.BytesIO(f.read()))
        assert back.format == "PNG" and back.size == (48, 40)
    with pytest.raises(UnsupportedImageError, match="lic::s3://lic/cats/dog.png"):
        with fsspec.open("lic::s3://lic/cats/dog.png", "wb", s3=so) as f:
            f.write(b"not an image")
    assert keys(s3, "lic/cats") == ["lic/cats/cat.png"]


def test_load_dataset_from_s3_decodes_rows_lazily(s3, so, tiny_model, tmp_path):
    import datasets

    pngs = [smooth_png(32 + 8 * i, 24, 30 + i) for i in range(4)]
    url = "s3://lic/hf/train.parquet"
    write_table(
        image_table(pngs),
        url,
        {"image": licstore.LICImage(bpp=1.0, model=tiny_model)},
        storage_options=so,
    )
    ds = datasets.load_dataset(
        "parquet", data_files=url, storage_options=so, split="train", cache_dir=str(tmp_path / "hf")
    )
    assert isinstance(ds.features["image"], licstore.LICImage)
    stored = ds.data.table.column("image").to_pylist()  # still bitstreams: nothing decoded
    assert all(row["bytes"].startswith(MAGIC) for row in stored)
    assert ds[2]["image"].size == (48, 24)  # this row decodes on access
    assert (
        ds.cast_column("image", licstore.LICImage(decode=False))[2]["image"]["bytes"]
        == (stored[2]["bytes"])
    )
    streamed = datasets.load_dataset(
        "parquet", data_files=url, storage_options=so, split="train", streaming=True
    )
    assert [row["image"].size for row in streamed] == [(32 + 8 * i, 24) for i in range(4)]


# -- lazy over the network ---------------------------------------------------------------------


def test_one_row_read_fetches_the_footer_and_its_row_group_only(s3, so, tiny_model):
    """48 rows of 12 KB bitstreams in 24 row groups: reading row 31 fetches the footer (pyarrow
    asks for the last 64 KiB) and row group 15, nothing else."""
    rng = np.random.default_rng(7)
    datas = [
        licstore.encode(
            rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), model=tiny_model, lossless=True
        )
        for _ in range(4)
    ]
    rows = [{"bytes": datas[i % 4], "path": None} for i in range(48)]  # bitstreams pass through
    table = pa.table({"image": pa.array(rows), "label": pa.array(range(48), pa.int64())})
    url = "s3://lic/lazy/many-groups.parquet"
    write_table(
        table,
        url,
        {"image": licstore.LICImage(model=tiny_model, lossless=True)},
        row_group_size=2,
        storage_options=so,
    )
    fs = s3.filesystem()
    size = fs.size("lic/lazy/many-groups.parquet")
    md = pq.ParquetFile(fs.open("lic/lazy/many-groups.parquet")).metadata
    group = md.row_group(15)
    chunks = [group.column(j) for j in range(group.num_columns)]
    first = min(c.dictionary_page_offset or c.data_page_offset for c in chunks)
    last = max(
        (c.dictionary_page_offset or c.data_page_offset) + c.total_compressed_size for c in chunks
    )
    tail = max(64 * 1024, md.serialized_size + 8)

    s3.reset_log()
    (image,) = read_images(url, rows=[31], storage_options=so)
    assert np.array_equal(np.asarray(image), np.asarray(licstore.decode(datas[31 % 4])))
    gets = s3.requests("GET", "/lic/lazy/many-groups.parquet")
    fetched = s3.bytes_served("/lic/lazy/many-groups.parquet")
    for r in gets:
        start, _, end = r.range.removeprefix("bytes=").partition("-")
        start, end = int(start), int(end)
        assert start >= size - tail or (first <= start and end <= last), (r.range, first, last)
    assert len(gets) <= 3 and fetched <= tail + (last - first) + 1, (fetched, size, gets)
    assert size > 500_000 and fetched < 0.25 * size, (fetched, size)


# -- savings estimate ---------------------------------------------------------------------------


def test_estimate_on_an_s3_parquet_dataset(s3, so, tiny_model, capsys):
    import json

    from licstore import cli
    from licstore.estimate import estimate

    fs, pngs = s3.filesystem(), []
    for k in range(3):  # plain datasets-style Parquet: PNG bytes in an image struct
        part = [smooth_png(32 + 8 * i, 24 + 8 * k, 80 + 4 * k + i) for i in range(4)]
        pngs += part
        with fs.open(f"lic/est/train-{k}.parquet", "wb") as f:
            pq.write_table(image_table(part), f, row_group_size=2)
    size = sum(fs.size(f"lic/est/train-{k}.parquet") for k in range(3))
    opts = {"bpp": 1.0, "model": tiny_model}
    real = sum(len(licstore.encode(p, **opts)) for p in pngs)

    s3.reset_log()
    est = estimate("s3://lic/est/", sample=5, seed=1, storage_options=so, **opts)
    assert (est.kind, est.images, est.sampled) == ("parquet", 12, 5)
    assert est.current_total_bytes == size
    # the image column's chunks as stored (pyarrow adds min/max statistics of the values)
    assert sum(map(len, pngs)) <= est.current_image_bytes < est.current_total_bytes
    assert est.compressed_image_bytes.low <= real <= est.compressed_image_bytes.high
    assert est.projected_total_bytes.value < size
    # each footer once (these small files fit in pyarrow's 64 KiB footer read), then one
    # ranged GET per sampled row group
    assert len(s3.requests("GET", "/lic/est/")) <= 3 + 5

    args = ["estimate", "s3://lic/est/", "--storage-options", json.dumps(so), "--sample", "3"]
    assert cli.main([*args, "--seed", "1", "--bpp", "1.0", "--model", tiny_model]) == 0
    out = capsys.readouterr().out
    assert "s3://lic/est/ (parquet, 12 images)" in out and "PSNR:" in out


# -- bad input ---------------------------------------------------------------------------------


def test_wrong_credentials_name_the_url(s3, so, tiny_model):
    url = "s3://lic/creds/x.parquet"
    write_table(
        image_table([smooth_png(32, 32, 40)]),
        url,
        {"image": licstore.LICImage(bpp=1.0, model=tiny_model)},
        storage_options=so,
    )
    for bad in ({**so, "secret": "wrong-secret"}, {**so, "key": "no-such-key"}):
        with pytest.raises(StoragePermissionError, match="s3://lic/creds/x.parquet") as e:
            read_images(url, rows=[0], storage_options=bad)
        assert isinstance(e.value, PermissionError) and isinstance(e.value, LICError)
        with pytest.raises(StoragePermissionError, match="s3://lic/creds/y.parquet"):
            write_table(
                image_table([smooth_png(32, 32, 41)]),
                "s3://lic/creds/y.parquet",
                {"image": licstore.LICImage(bpp=1.0, model=tiny_model)},
                storage_options=bad,
            )
        with pytest.raises(StoragePermissionError, match="lic::s3://lic/creds/z.png"):
            with fsspec.open(
                "lic::s3://lic/creds/z.png", "wb", s3=bad, lic={"bpp": 1.0, "model": tiny_model}
            ) as f:
                f.write(smooth_png(32, 32, 42))
    assert keys(s3, "lic/creds") == ["lic/creds/x.parquet"]


def test_missing_bucket_names_the_url_and_is_not_created(s3, so, tiny_model):
    with pytest.raises(StorageNotFoundError, match="s3://no-such-bucket/x.parquet"):
        read_images("s3://no-such-bucket/x.parquet", rows=[0], storage_options=so)
    with pytest.raises(StorageNotFoundError, match="s3://no-such-bucket/d/x.parquet"):
        write_table(
            image_table([smooth_png(32, 32, 50)]),
            "s3://no-such-bucket/d/x.parquet",
            {"image": licstore.LICImage(bpp=1.0, model=tiny_model)},
            storage_options=so,
        )
    with pytest.raises(StorageNotFoundError, match="lic::s3://no-such-bucket/c.png"):
        with fsspec.open(
            "lic::s3://no-such-bucket/c.png", "wb", s3=so, lic={"bpp": 1.0, "model": tiny_model}
        ) as f:
            f.write(smooth_png(32, 32, 51))
    assert not s3.filesystem().exists("no-such-bucket")  # a misspelt bucket is never created


def test_server_going_down_mid_read(s3, so, tiny_model, load_tool):
    """A second endpoint on the same store stops after the footer: s3fs retries, then the
    read fails with a StorageError naming the URL."""
    rng = np.random.default_rng(8)
    datas = [
        licstore.encode(
            rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), model=tiny_model, lossless=True
        )
        for _ in range(2)
    ]
    rows = [{"bytes": datas[i % 2], "path": None} for i in range(8)]  # > pyarrow's footer read
    url = "s3://lic/down/x.parquet"
    write_table(
        pa.table({"image": pa.array(rows)}),
        url,
        {"image": licstore.LICImage(model=tiny_model, lossless=True)},
        row_group_size=1,
        storage_options=so,
    )
    second = load_tool("local_s3").LocalS3(key=s3.key, secret=s3.secret).start()
    try:
        options = {**second.storage_options, "config_kwargs": {"retries": {"max_attempts": 2}}}
        assert read_images(url, rows=[7], storage_options=options)[0].size == (64, 64)
        second.go_down(after=2)  # answers HEAD and the footer, then drops everything
        started = time.monotonic()
        with pytest.raises(StorageError, match="s3://lic/down/x.parquet"):
            read_images(url, rows=[0], storage_options=options)
        assert len(second.requests()) > 3  # retried before giving up
        assert time.monotonic() - started < 30
    finally:
        second.stop()


# -- Dask: s3:// to s3://, a worker killed, the job resumed ---------------------------------------

_GATE = """
import os, time
import licstore.column_codec as cc
cc._ungated_read_url = getattr(cc, "_ungated_read_url", cc.read_url)
def read_url(path, _gate=GATE):
    while "GATED" in path and os.path.exists(_gate):
        time.sleep(0.02)
    return cc._ungated_read_url(path)
cc.read_url = read_url
"""


@pytest.fixture(scope="module")
def cluster_client(tiny_model):
    distributed = pytest.importorskip("distributed")
    import dask

    from licstore import dask as ldask

    with (
        dask.config.set({**ldask.WORKER_CONFIG, "distributed.scheduler.allowed-failures": 0}),
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",
            silence_logs=50,
        ) as cluster,
        distributed.Client(cluster) as c,
    ):
        yield c


def test_compress_parquet_s3_to_s3_worker_killed_then_resumed(
    s3, so, tiny_model, cluster_client, tmp_path
):
    """A worker dies inside shard s1 (allowed-failures=0, so the job fails): the other shards
    are published and recorded, s1 is nowhere (no object, no upload); the rerun redoes s1
    only, and the output holds every row once."""
    from licstore import dask as ldask

    client, fs = cluster_client, s3.filesystem()
    gated = tmp_path / "GATED.png"  # s1's second row: a file whose read blocks while gated
    gated.write_bytes(smooth_png(40, 32, 799))
    for k in range(4):
        pngs = [smooth_png(40, 32, 700 + 4 * k + i) for i in range(4)]
        rows = [{"bytes": b, "path": None} for b in pngs]
        if k == 1:
            rows[1] = {"bytes": None, "path": str(gated)}
        table = pa.table(
            {"image": pa.array(rows), "label": pa.array(range(4 * k, 4 * k + 4), pa.int64())}
        )
        with fs.open(f"lic/dsrc/s{k}.parquet", "wb") as f:
            pq.write_table(table, f)
    gate = tmp_path / "gate"
    gate.touch()
    client.run(exec, f"GATE = {str(gate)!r}\n{_GATE}", {})
    feature = licstore.LICImage(bpp=1.0, model=tiny_model)

    def run():
        return ldask.compress_parquet(
            "s3://lic/dsrc/",
            "s3://lic/ddst/",
            feature=feature,
            client=client,
            progress=False,
            storage_options=so,
        )

    result: dict = {}

    def first_run():
        try:
            run()
        except BaseException as e:  # noqa: BLE001 - the test inspects it
            result["error"] = e

    pids = client.run(os.getpid)
    job = threading.Thread(target=first_run)
    job.start()
    try:
        deadline, victim = time.monotonic() + 60, None
        while time.monotonic() < deadline:
            done = [k for k in keys(s3, "lic/ddst") if k.endswith(".parquet")]
            busy = [
                a
                for a, ks in client.processing().items()
                if any("licstore-s1.parquet" in str(k) for k in ks)
            ]
            if busy and len(done) == 3:  # the others are published; s1 blocks
                victim = busy[0]
                break
            time.sleep(0.05)
        assert victim is not None, "s1 never blocked while the other shards finished"
        assert "lic/ddst/s1.parquet" not in keys(s3, "lic/ddst")  # nothing partial
        os.kill(pids[victim], signal.SIGKILL)
        job.join(120)
    finally:
        gate.unlink()
    assert not job.is_alive()
    assert isinstance(result.get("error"), LICError), result
    assert "s1.parquet" in str(result["error"]) and "worker died" in str(result["error"])
    left = keys(s3, "lic/ddst")
    assert "lic/ddst/s1.parquet" not in left
    assert [k for k in left if k.endswith(".parquet")] == [
        f"lic/ddst/s{k}.parquet" for k in (0, 2, 3)
    ]
    assert not [k for k in left if k.rpartition("/")[2].startswith(".") and "manifest" not in k]
    assert not fs.list_multipart_uploads("lic")

    report = run()  # resumed: the finished shards are verified and skipped
    assert (report.shards_skipped, report.shards_done, report.rows_out) == (3, 1, 16)
    labels = []
    for k in range(4):
        with fs.open(f"lic/ddst/s{k}.parquet") as f:
            t = pq.read_table(f)
        labels += t.column("label").to_pylist()
        assert all(r["codec"] for r in t.column("image").to_pylist())
    assert sorted(labels) == list(range(16))  # every row exactly once

    with pytest.raises(StorageNotFoundError, match="s3://no-such-bucket/out"):
        ldask.compress_parquet(
            "s3://lic/dsrc/",
            "s3://no-such-bucket/out/",
            feature=feature,
            client=client,
            progress=False,
            storage_options=so,
        )
