"""licstore.dask on a real LocalCluster: 2 worker processes, the tiny model (LICSTORE_WEIGHTS is
inherited by the workers), one cluster for the module."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

distributed = pytest.importorskip("distributed")

import licstore  # noqa: E402
from licstore import dask as ldask  # noqa: E402
from licstore.errors import LICError, UnsupportedImageError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def client(tiny_model):
    """One cluster for the module: two single-threaded worker processes (spawned after the
    tiny model's LICSTORE_WEIGHTS is in the environment)."""
    import dask

    with (
        dask.config.set(ldask.WORKER_CONFIG),  # as the embedded cluster of client=None
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


@pytest.fixture
def feature(tiny_model) -> licstore.LICImage:
    return licstore.LICImage(bpp=1.0, model=tiny_model)


def png(width: int, height: int, seed: int) -> bytes:
    """A smooth 'photo' as PNG bytes; seeds differ per test so the encode cache never hits."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    img = np.stack([xx * 2.1, yy * 2.7, (xx + yy) * 1.3], -1) + rng.normal(0, 6, (height, width, 3))
    buf = io.BytesIO()
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def write_shard(
    path: Path,
    labels: list[int],
    seed: int,
    bad: dict[int, bytes] | None = None,
    row_group_size: int | None = None,
) -> None:
    """A ``datasets``-style shard: Image() column (sizes alternate), label, name."""
    import datasets

    images = []
    for i, label in enumerate(labels):
        data = (bad or {}).get(i) or png(48 + 16 * (label % 2), 40, seed * 1000 + label)
        images.append({"bytes": data, "path": f"img{label}.png"})
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "label": datasets.Value("int64"),
            "name": datasets.Value("string"),
        }
    )
    table = datasets.Dataset.from_dict(
        {"image": images, "label": labels, "name": [f"n{x}" for x in labels]}, features=features
    ).data.table
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=row_group_size or len(labels))


def make_dataset(root: Path, seed: int) -> Path:
    """Two input files; the second has three row groups of 2 rows (split by rows_per_task=4)."""
    write_shard(root / "train-00000-of-00002.parquet", list(range(5)), seed)
    write_shard(root / "train-00001-of-00002.parquet", list(range(5, 11)), seed, row_group_size=2)
    return root


def load(dst: Path):
    import datasets

    return datasets.load_dataset("parquet", data_dir=str(dst), split="train")


def run(src, dst, client, feature, **kw) -> ldask.JobReport:
    return ldask.compress_parquet(
        str(src), str(dst), feature=feature, client=client, progress=False, **kw
    )


def test_compress_parquet_output(client, feature, tiny_model, tmp_path):
    src = make_dataset(tmp_path / "src", seed=1)
    report = run(src, tmp_path / "dst", client, feature, rows_per_task=4)

    names = sorted(p.name for p in (tmp_path / "dst").glob("*.parquet"))
    assert names == [
        "train-00000-of-00002.parquet",
        "train-00001-of-00002.part0000.parquet",
        "train-00001-of-00002.part0001.parquet",
    ]
    assert (report.shards_total, report.shards_done, report.shards_skipped) == (3, 3, 0)
    assert report.rows_in == report.rows_out == report.rows_encoded == 11
    assert report.failures == [] and len(report.outputs) == 3
    assert report.bytes_in > report.bytes_out > 0
    assert report.image_bytes_in > report.image_bytes_out > 0
    assert 0 < report.mean_bpp < 2 and report.psnr_samples >= 3
    assert report.mean_psnr is not None and report.images_per_second > 0
    assert "11 in, 11 out" in str(report)

    # datasets reads it as LICImage; other columns and order unchanged
    ds = load(tmp_path / "dst")
    assert type(ds.features["image"]).__name__ == "LICImage"
    assert ds.features["image"].model == tiny_model
    assert ds["label"] == list(range(11)) and ds["name"] == [f"n{i}" for i in range(11)]
    assert [ds[i]["image"].size for i in (0, 1)] == [(48, 40), (64, 40)]
    original = pq.read_table(src / "train-00001-of-00002.parquet")
    part = pq.read_table(tmp_path / "dst" / "train-00001-of-00002.part0001.parquet")
    assert part.column("label").to_pylist() == [9, 10]
    assert part.column("image").type == licstore.features.STORAGE_TYPE
    assert part.column("image")[0]["path"].as_py() == "img9.png"
    assert part.schema.field("name") == original.schema.field("name")

    # manifest: every shard with rows and the checksum of the file as written
    manifest = json.loads((tmp_path / "dst" / ldask.MANIFEST_NAME).read_text())
    assert manifest["format"] == "licstore-dask-manifest/1"
    for name, entry in manifest["shards"].items():
        data = (tmp_path / "dst" / name).read_bytes()
        assert entry["sha256"] == hashlib.sha256(data).hexdigest() and entry["bytes"] == len(data)
    assert sum(e["rows"] for e in manifest["shards"].values()) == 11
    assert not list((tmp_path / "dst").glob(".*.tmp"))

    # each worker holds the model (loaded once by the plugin) and runs one torch thread
    def worker_state(name=tiny_model):
        import torch

        import licstore.models as m

        trim = os.environ.get("MALLOC_TRIM_THRESHOLD_")  # unset: glibc's adaptive mmap
        return torch.get_num_threads(), any(k[0] == name for k in m._cache), trim

    assert set(client.run(worker_state).values()) == {(1, True, None)}


def test_resume_skips_finished_and_redoes_damaged(client, feature, tmp_path):
    src = make_dataset(tmp_path / "src", seed=2)
    dst = tmp_path / "dst"
    run(src, dst, client, feature, rows_per_task=4)
    files = sorted(dst.glob("*.parquet"))
    stamps = {p: p.stat().st_mtime_ns for p in files}

    again = run(src, dst, client, feature, rows_per_task=4)
    assert (again.shards_skipped, again.shards_done, again.rows_skipped) == (3, 0, 11)
    assert again.rows_out == 11 and again.mean_bpp is not None  # totals from the manifest
    assert {p: p.stat().st_mtime_ns for p in files} == stamps

    damaged, missing, kept = files
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, other checksum
    damaged.write_bytes(bytes(data))
    missing.unlink()
    third = run(src, dst, client, feature, rows_per_task=4)
    assert (third.shards_skipped, third.shards_done) == (1, 2)
    assert kept.stat().st_mtime_ns == stamps[kept]
    assert load(dst)["label"] == list(range(11))

    with pytest.raises(LICError, match="another job"):  # other rate: refused, not mixed
        run(src, dst, client, licstore.LICImage(bpp=0.5, model=feature.model), rows_per_task=4)


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
_UNGATE = """
import licstore.column_codec as cc
cc.read_url = getattr(cc, "_ungated_read_url", cc.read_url)
"""


def test_worker_killed_mid_job(client, feature, tmp_path):
    """A worker dies while it is inside a task: the scheduler reruns the task elsewhere and
    the output holds every input row exactly once."""
    src = tmp_path / "src"
    for k in range(4):
        write_shard(src / f"s{k}.parquet", list(range(4 * k, 4 * k + 4)), seed=3)
    # s1's second row is a file whose read blocks while the gate exists: the task is
    # provably running when its worker is killed
    gated = tmp_path / "GATED.png"
    gated.write_bytes(png(48, 40, 3_999))
    table = pq.read_table(src / "s1.parquet")
    rows = table.column("image").to_pylist()
    rows[1] = {"bytes": None, "path": str(gated)}
    table = table.set_column(0, "image", pa.array(rows, type=table.schema.field("image").type))
    pq.write_table(table, src / "s1.parquet")
    gate = tmp_path / "gate"
    gate.touch()
    client.run(exec, f"GATE = {str(gate)!r}\n{_GATE}", {})

    result: dict = {}
    job = threading.Thread(
        target=lambda: result.update(report=run(src, tmp_path / "dst", client, feature))
    )
    pids = client.run(os.getpid)
    job.start()
    try:
        deadline = time.monotonic() + 60
        victim = None
        while victim is None and time.monotonic() < deadline:
            for address, keys in client.processing().items():
                if any("licstore-s1.parquet" in str(k) for k in keys):
                    victim = address
            time.sleep(0.05)
        assert victim is not None, "the gated task never started"
        time.sleep(0.3)  # inside the blocked read
        assert job.is_alive()
        os.kill(pids[victim], signal.SIGKILL)
    finally:
        gate.unlink()
        job.join(120)
    assert not job.is_alive()
    report = result["report"]
    assert report.rows_out == 16 and report.shards_done == 4
    labels = load(tmp_path / "dst")["label"]
    assert sorted(labels) == list(range(16)) and len(labels) == 16  # each row exactly once
    assert not list((tmp_path / "dst").glob(".*.tmp"))
    client.wait_for_workers(2, timeout=180)  # a restarted worker re-imports torch
    client.run(exec, _UNGATE, {})


def test_bad_row_raises_naming_shard_and_row(client, feature, tmp_path):
    src = tmp_path / "src"
    write_shard(src / "a.parquet", [0, 1, 2], seed=4)
    write_shard(src / "b.parquet", [3, 4, 5, 6], seed=4, bad={2: b"not an image at all"})
    with pytest.raises(UnsupportedImageError, match=r"shard b\.parquet .*row 2:"):
        run(src / "*.parquet", tmp_path / "dst", client, feature)  # a glob
    assert not (tmp_path / "dst" / "b.parquet").exists()
    assert not list((tmp_path / "dst").glob(".*.tmp"))


def test_bad_row_stops_the_other_shards_before_raising(client, feature, tmp_path):
    """When the error reaches the caller no task still writes: no temporary file appears
    later, and a shard that finished meanwhile is in the manifest (a rerun skips it)."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    write_shard(src / "a.parquet", list(range(40)), seed=14, row_group_size=2)  # 20 pieces
    write_shard(src / "b.parquet", [40, 41], seed=14, bad={0: b"not an image at all"})
    with pytest.raises(UnsupportedImageError, match=r"shard b\.parquet .*row 0:"):
        run(src / "*.parquet", dst, client, feature)
    listing = sorted(p.name for p in dst.iterdir())
    time.sleep(2.0)  # a task left running would publish or leave a temporary file by now
    assert sorted(p.name for p in dst.iterdir()) == listing
    assert not list(dst.glob(".*.tmp"))
    assert "b.parquet" not in listing
    manifest = json.loads((dst / ldask.MANIFEST_NAME).read_text())
    assert ("a.parquet" in listing) == ("a.parquet" in manifest["shards"])


_ROW_GATE = """
import os, pathlib, time
import licstore.column_codec as cc
cc._ungated_read_url = getattr(cc, "_ungated_read_url", cc.read_url)
def read_url(path):
    gate = pathlib.Path(str(path) + ".gate")  # the read of path waits while path.gate exists
    if gate.exists():
        pathlib.Path(str(path) + ".waiting").touch()
        while gate.exists():
            time.sleep(0.02)
    return cc._ungated_read_url(path)
cc.read_url = read_url
"""


def _row_from_path(shard: Path, row: int, image: Path, row_group_size: int | None = None) -> None:
    """Make ``row`` of ``shard`` a reference to ``image`` (read by the worker, so gated)."""
    table = pq.read_table(shard)
    rows = table.column("image").to_pylist()
    rows[row] = {"bytes": None, "path": str(image)}
    table = table.set_column(0, "image", pa.array(rows, type=table.schema.field("image").type))
    pq.write_table(table, shard, row_group_size=row_group_size)


def _wait_for(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)
    return condition()


def test_straggler_after_the_drain_timeout_cleans_up_itself(client, feature, tmp_path, monkeypatch):
    """A shard still running when the drain gives up keeps seeing the abort, stops at its
    next piece and removes its own temporary file; the sweep leaves that file to it.

    Made to happen every run: shard a waits inside its second piece (a gated read) while
    shard b, gated too until then, fails; a is released only after the job has raised."""
    monkeypatch.setattr(ldask, "_DRAIN_SECONDS", 0.0)
    src, dst = tmp_path / "src", tmp_path / "dst"
    write_shard(src / "a.parquet", list(range(40)), seed=15, row_group_size=2)  # 20 pieces
    write_shard(src / "b.parquet", [40, 41], seed=15, bad={1: b"not an image at all"})
    held_a, held_b = tmp_path / "held-a.png", tmp_path / "held-b.png"
    held_a.write_bytes(png(48, 40, 15_998))
    held_b.write_bytes(png(48, 40, 15_999))
    _row_from_path(src / "a.parquet", 2, held_a, row_group_size=2)  # a's second piece
    _row_from_path(src / "b.parquet", 0, held_b)
    gate_a, gate_b = Path(f"{held_a}.gate"), Path(f"{held_b}.gate")
    gate_a.touch()
    gate_b.touch()
    client.run(exec, _ROW_GATE, {})
    swept = []
    monkeypatch.setattr(ldask, "_cleanup_temporaries", lambda job, names: swept.append(names))
    raised: list[Exception] = []

    def job():
        try:
            run(src / "*.parquet", dst, client, feature)
        except Exception as e:  # reported by the test thread
            raised.append(e)

    thread = threading.Thread(target=job)
    thread.start()
    try:
        both_waiting = _wait_for(
            lambda: Path(f"{held_a}.waiting").exists() and Path(f"{held_b}.waiting").exists(), 120
        )
        assert both_waiting, "the two shards did not both start"
        temporary = list(dst.glob(".a.parquet.*.tmp"))
        assert len(temporary) == 1  # a is inside its second piece, writing
        gate_b.unlink()  # b reads its row 0, fails on row 1
        thread.join(120)
        assert not thread.is_alive()
        assert len(raised) == 1 and isinstance(raised[0], UnsupportedImageError)
        assert re.search(r"shard b\.parquet .*row 1:", str(raised[0]))
        assert swept == []  # a straggler ran: its temporary file is not swept from under it
        assert list(dst.glob(".a.parquet.*.tmp")) == temporary
    finally:
        gate_a.unlink(missing_ok=True)
        gate_b.unlink(missing_ok=True)
        thread.join(120)
    assert _wait_for(lambda: not list(dst.glob(".*.tmp")), 60)  # a stopped, cleaned up
    assert not (dst / "a.parquet").exists()
    manifest = json.loads((dst / ldask.MANIFEST_NAME).read_text())
    assert "a.parquet" not in manifest["shards"]
    client.run(exec, _UNGATE, {})


def test_bad_row_copied_and_reported(client, feature, tmp_path):
    src = tmp_path / "src"
    write_shard(src / "a.parquet", [0, 1, 2], seed=5)
    write_shard(src / "b.parquet", [3, 4, 5, 6], seed=5, bad={2: b"not an image at all"})
    report = run(src, tmp_path / "dst", client, feature, on_error="copy")
    assert [(f.shard, f.row, f.error, f.copied) for f in report.failures] == [
        ("b.parquet", 2, "UnsupportedImageError", True)
    ]
    assert "not a readable image" in report.failures[0].reason
    assert report.rows_copied == 1 and report.rows_encoded == 6 and report.rows_out == 7
    assert "copied through unencoded" in str(report)
    stored = pq.read_table(tmp_path / "dst" / "b.parquet").column("image").to_pylist()
    assert stored[2] == {"bytes": b"not an image at all", "path": "img5.png", "codec": None}
    assert all(r["codec"].startswith("lic1 ") for i, r in enumerate(stored) if i != 2)
    # resumed: the failures are still reported (from the manifest)
    again = run(src, tmp_path / "dst", client, feature, on_error="copy")
    assert again.shards_skipped == 2 and len(again.failures) == 1


def test_compress_images(client, feature, tmp_path):
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    for i in range(4):
        (folder / f"p{i}.png").write_bytes(png(40, 32, 6_000 + i))
    Image.open(io.BytesIO(png(40, 32, 6_100))).save(folder / "sub" / "q.jpg", quality=90)
    (folder / "broken.png").write_bytes(b"\x89PNG truncated")
    (folder / "notes.txt").write_text("not an image: not listed")
    report = ldask.compress_images(
        str(folder),
        str(tmp_path / "dst"),
        shard_rows=3,
        feature=feature,
        client=client,
        on_error="copy",
        progress=False,
    )
    assert report.shards_total == 2 and report.rows_out == 6 and report.rows_encoded == 5
    assert [(f.shard, f.row) for f in report.failures] == [("part-00000.parquet", 0)]
    assert report.failures[0].source.endswith("broken.png")
    ds = load(tmp_path / "dst")
    assert type(ds.features["image"]).__name__ == "LICImage"
    assert [Path(p).name for p in ds["path"]] == [
        "broken.png",
        "p0.png",
        "p1.png",
        "p2.png",
        "p3.png",
        "q.jpg",
    ]
    assert ds[5]["image"].size == (40, 32)


def test_memory_filesystem_with_in_process_workers(feature, tmp_path):
    """Any fsspec URL: memory:// works when the workers share the client's process."""
    import fsspec

    fs = fsspec.filesystem("memory")
    local = tmp_path / "src"
    write_shard(local / "m.parquet", [0, 1], seed=7)
    fs.pipe("/lic-test-src/sub/m.parquet", (local / "m.parquet").read_bytes())
    with (
        distributed.LocalCluster(
            n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster) as c,
    ):
        # batch_transforms: what CUDA workers do by default (same-size images share passes)
        report = run("memory://lic-test-src", "memory://lic-test-dst", c, feature,
                     batch_transforms=True)  # fmt: skip
    assert (
        report.rows_out == 2
        and report.rows_encoded == 2
        and fs.exists("/lic-test-dst/" + ldask.MANIFEST_NAME)
    )
    with fs.open("/lic-test-dst/sub/m.parquet", "rb") as f:  # relative paths kept
        assert pq.read_table(f).column("label").to_pylist() == [0, 1]
    fs.rm("/lic-test-src", recursive=True)
    fs.rm("/lic-test-dst", recursive=True)


def test_batches_bucket_by_size_under_a_pixel_cap():
    rows = [ldask._Row(i, "encode", size=(10, 10) if i % 2 else (20, 10)) for i in range(9)]
    rows.append(ldask._Row(9, "encode", size=None))  # unreadable header: alone
    batches = list(ldask._batches(rows, batch_size=3, max_pixels=450))
    assert [[r.index for r in b] for b in batches] == [
        [0, 2], [4, 6], [8], [1, 3, 5], [7], [9],
    ]  # fmt: skip


def test_local_cluster_fills_the_cores_without_oversubscribing():
    cores = len(os.sched_getaffinity(0))
    assert ldask._local_cluster_size(None) == (cores, 1)  # a process per core, 1 thread each
    assert ldask._local_cluster_size(1) == (1, cores)  # one process: torch gets every core


def test_cli_compress_parquet(client, tiny_model, tmp_path, capsys):
    from licstore import cli

    src = make_dataset(tmp_path / "src", seed=8)
    address = client.scheduler.address
    args = ["--bpp", "1.0", "--model", tiny_model, "--scheduler", address, "-q"]
    assert cli.main(["compress-parquet", str(src), str(tmp_path / "dst"), *args]) == 0
    out = capsys.readouterr().out
    assert "rows:    11 in, 11 out" in out and "manifest:" in out
    assert load(tmp_path / "dst")["label"] == list(range(11))

    # a row copied unencoded: the copy is complete, the exit code says a row failed
    write_shard(tmp_path / "bad" / "b.parquet", [0, 1], seed=8, bad={1: b"no image"})
    code = cli.main(
        ["compress-parquet", str(tmp_path / "bad"), str(tmp_path / "dst2"), *args,
         "--on-error", "copy"]
    )  # fmt: skip
    assert code == 1
    assert "failed: b.parquet row 1" in capsys.readouterr().err
    assert cli.main(["compress-parquet", str(tmp_path / "bad"), str(tmp_path / "dst3"), *args]) == 1
    assert "row 1:" in capsys.readouterr().err
    assert not (tmp_path / "dst3" / "b.parquet").exists()

    # the enhancement layers reach the workers: --lossless stores every row exactly
    exact = ["--model", tiny_model, "--scheduler", address, "-q", "--lossless"]
    assert cli.main(["compress-parquet", str(src), str(tmp_path / "dst4"), *exact]) == 0
    from licstore import container, residual

    for shard in sorted((tmp_path / "dst4").rglob("*.parquet")):
        for row in pq.read_table(shard).column("image").to_pylist():
            kinds = [layer.kind for layer in container.unpack(row["bytes"]).layers]
            assert residual.LOSSLESS_KIND in kinds


def test_recipe_compress_parquet_with_dask(tiny_model, tmp_path, capsys):
    """The recipe on its own embedded cluster (client=None: one spawned worker process)."""
    import runpy

    main = runpy.run_path(str(ROOT / "recipes" / "compress_parquet_with_dask.py"))["main"]
    args = ["--limit", "2", "--workers", "1", "--model", tiny_model, "--bpp", "1.0"]
    assert main([*args, "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    lines = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    assert int(lines["rows reloaded"]) == 2
    before = int(lines["bytes before"].replace(",", ""))
    after = int(lines["bytes after"].replace(",", "").split()[0])
    assert before > 50_000 and 0 < after < before  # the photos' PNG bytes are in "before"
