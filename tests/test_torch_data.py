"""licstore.torch: datasets for training loops, exact resume, batched decoding, the recipe.

Shards are made here with the tiny model (22 rows of 32x32 images in 3 files, 3 rows per row
group); 2-worker DataLoaders use the default fork context.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torch.utils.data import DataLoader

import licstore
import licstore.torch as lt
from licstore.errors import CorruptBitstreamError
from licstore.features import STORAGE_TYPE

ROOT = Path(__file__).resolve().parents[1]
SIZES = (10, 7, 5)  # rows per shard; ids are 100 * shard + row
ALL_IDS = sorted(100 * k + i for k, n in enumerate(SIZES) for i in range(n))


def _image(rng: np.random.Generator, size: int = 32) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    base = np.stack([xx * 6, yy * 6, (xx + yy) * 3], -1) + rng.integers(0, 60, 3)
    return np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread: tiny tensors gain nothing from two, and on a loaded machine
    OpenMP threads waiting for each other cost more than the work."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def shards(tmp_path_factory, tiny_model) -> Path:
    out = tmp_path_factory.mktemp("shards")
    rng = np.random.default_rng(0)
    feature = licstore.LICImage(quality=4, model=tiny_model)
    for k, n in enumerate(SIZES):
        table = pa.table(
            {
                "image": licstore.encode_batch(
                    [_image(rng) for _ in range(n)], quality=4, model=tiny_model
                ),
                "id": [100 * k + i for i in range(n)],
                "label": [i % 2 for i in range(n)],
            }
        )
        licstore.parquet.write_table(
            table, out / f"part-{k}.parquet", {"image": feature}, row_group_size=3
        )
    return out


@pytest.fixture(scope="module")
def bitstreams(shards) -> dict[int, bytes]:
    table = pq.read_table(sorted(shards.glob("*.parquet")))
    return {i: row["bytes"] for i, row in zip(table["id"].to_pylist(), table["image"].to_pylist())}


def _ids(batches) -> list[int]:
    out: list[int] = []
    for batch in batches:
        ids = batch["id"] if isinstance(batch, dict) else batch
        out += ids.tolist() if isinstance(ids, torch.Tensor) else [ids]
    return out


# -- map-style ------------------------------------------------------------------------------


def test_map_dataset_rows_columns_outputs(shards, bitstreams):
    ds = lt.LICDataset(shards, columns=["id", "label"])
    assert len(ds) == 22
    assert [ds[i]["id"] for i in range(len(ds))] == ALL_IDS
    assert ds.stats["row_groups_read"] == 9  # sequential access: one read per row group
    item = ds[-1]
    assert item["id"] == 204 and item["label"] == 0
    assert np.array_equal(np.asarray(item["image"]), np.asarray(licstore.decode(bitstreams[204])))

    tensors = lt.LICDataset(str(shards / "*.parquet"), output="tensor")
    t = tensors[3]
    assert t.dtype == torch.uint8 and t.shape == (3, 32, 32)
    assert torch.equal(t, lt.to_tensor(licstore.decode(bitstreams[3])))

    flipped = lt.LICDataset(shards, output="tensor", transform=lambda x: x.flip(-1))
    assert torch.equal(flipped[3], t.flip(-1))
    gray = lt.LICDataset(shards, mode="L", output="tensor")
    assert gray[0].shape == (1, 32, 32)
    raw = lt.LICDataset([shards / "part-1.parquet"], decode=False)
    assert raw[2] == bitstreams[102]
    with pytest.raises(IndexError):
        ds[22]
    with pytest.raises(KeyError, match="nope"):
        lt.LICDataset(shards, columns=["nope"])


@pytest.mark.parametrize("workers", [0, 2])
def test_map_dataset_in_dataloader(shards, bitstreams, workers):
    ds = lt.LICDataset(shards, columns=["id"], output="tensor")
    loader = DataLoader(ds, batch_size=4, shuffle=True, num_workers=workers)
    seen = {}
    for batch in loader:
        for i, image in zip(batch["id"].tolist(), batch["image"]):
            seen[i] = image
    assert sorted(seen) == ALL_IDS
    for i in (0, 105, 204):
        assert torch.equal(seen[i], lt.to_tensor(licstore.decode(bitstreams[i])))


def test_map_dataset_over_hf_dataset(shards, bitstreams, tmp_path):
    import datasets

    ds = datasets.Dataset.from_parquet(str(shards / "*.parquet"), cache_dir=str(tmp_path))
    assert type(ds.features["image"]).__name__ == "LICImage"
    picked = ds.select([5, 12, 0])
    lic = lt.LICDataset(picked, columns=["id"], output="tensor")
    assert len(lic) == 3 and [lic[i]["id"] for i in range(3)] == [5, 102, 0]
    assert torch.equal(lic[1]["image"], lt.to_tensor(licstore.decode(bitstreams[102])))
    assert lt.LICDataset(picked, decode=False)[2] == bitstreams[0]


def test_datasets_read_fsspec_urls(shards):
    import fsspec

    fs = fsspec.filesystem("memory")
    for f in sorted(shards.glob("*.parquet")):
        fs.pipe(f"/torch-data/{f.name}", f.read_bytes())
    try:
        ds = lt.LICDataset("memory://torch-data/*.parquet", columns=["id"], decode=False)
        assert [ds[i]["id"] for i in range(len(ds))] == ALL_IDS
        assert ds.shards[0].url == "memory:///torch-data/part-0.parquet"
        stream = lt.LICIterableDataset(
            ["memory://torch-data/part-1.parquet", "memory://torch-data/part-2.parquet"],
            columns=["id"], decode=False, shuffle_buffer=3,
        )  # fmt: skip
        got = _ids(DataLoader(stream, batch_size=None, num_workers=2))  # forked: same memory
        assert sorted(got) == [i for i in ALL_IDS if i >= 100]
    finally:
        fs.rm("/torch-data", recursive=True)


# -- iterable -------------------------------------------------------------------------------


@pytest.mark.parametrize("split", ["row_groups", "shards"])
def test_iterable_each_row_once_across_workers_and_ranks(shards, split):
    for workers in (0, 2):
        for world in (1, 2):
            ids = []
            for rank in range(world):
                ds = lt.LICIterableDataset(
                    shards, columns=["id"], decode=False, shuffle_buffer=5, seed=3,
                    split=split, rank=rank, world_size=world,
                )  # fmt: skip
                got = _ids(DataLoader(ds, batch_size=None, num_workers=workers))
                assert len(got) == ds.num_rows
                ids += got
            assert sorted(ids) == ALL_IDS, (workers, world)


def test_shuffle_is_seeded_per_epoch(shards):
    def order(seed=0, epoch=0, buffer=6):
        ds = lt.LICIterableDataset(
            shards, columns=["id"], decode=False, shuffle_buffer=buffer, seed=seed
        )
        ds.set_epoch(epoch)
        return _ids(ds)

    assert order(buffer=0) == ALL_IDS  # no shuffling: file order
    first = order()
    assert sorted(first) == ALL_IDS and first != ALL_IDS
    assert order() == first
    assert order(epoch=1) != first and sorted(order(epoch=1)) == ALL_IDS
    assert order(seed=1) != first


def test_iterable_reads_each_row_group_once(shards, monkeypatch):
    reads = []
    real = lt._read_group
    monkeypatch.setattr(lt, "_read_group", lambda *a: reads.append((a[1].name, a[2])) or real(*a))
    ds = lt.LICIterableDataset(shards, columns=["id"], decode=False, shuffle_buffer=8, seed=1)
    it = iter(ds)
    head = [next(it)["id"] for _ in range(15)]
    assert len(reads) == len(set(reads)) and len(reads) <= 9
    state = ds.state_dict()
    assert state["rows"] == [15]

    reads.clear()
    again = lt.LICIterableDataset(shards, columns=["id"], decode=False, shuffle_buffer=8, seed=1)
    again.load_state_dict(json.loads(json.dumps(state)))
    rest = _ids(again)
    assert sorted(head + rest) == ALL_IDS
    assert len(reads) == len(set(reads)) and len(reads) < 9  # finished groups are not re-read


@pytest.mark.parametrize(
    ("workers", "batch_size", "drop_last"), [(0, 2, False), (2, 2, False), (2, 3, True)]
)
def test_resume_mid_epoch_is_exact(shards, workers, batch_size, drop_last):
    def make():
        ds = lt.LICIterableDataset(shards, columns=["id"], decode=False, shuffle_buffer=5, seed=7)
        loader = lt.ResumableDataLoader(
            ds, batch_size=batch_size, num_workers=workers, drop_last=drop_last
        )
        return ds, loader

    ds, loader = make()
    epoch0 = [b["id"].tolist() for b in loader]
    ds.set_epoch(1)
    epoch1 = [b["id"].tolist() for b in loader]
    assert sum(map(len, epoch0)) == (22 if not drop_last else sum(map(len, epoch0)))
    assert len({i for b in epoch0 for i in b}) == sum(map(len, epoch0))
    for stop in (2, len(epoch0) - 2):  # early, and once a worker may be exhausted
        ds, loader = make()
        before = []
        for batch in loader:
            before.append(batch["id"].tolist())
            if len(before) == stop:
                state = json.loads(json.dumps(loader.state_dict()))
                break
        assert state["epoch"] == 0 and state["num_workers"] == workers
        ds2, loader2 = make()
        loader2.load_state_dict(state)
        after = [b["id"].tolist() for b in loader2]
        assert before + after == epoch0, stop
        ds2.set_epoch(1)
        assert [b["id"].tolist() for b in loader2] == epoch1
        assert ds2.state_dict()["epoch"] == 1


def test_resume_refuses_a_different_setup(shards):
    ds = lt.LICIterableDataset(shards, decode=False, shuffle_buffer=4, seed=1)
    it = iter(ds)
    next(it)
    state = ds.state_dict()
    with pytest.raises(ValueError, match="seed"):
        lt.LICIterableDataset(shards, decode=False, shuffle_buffer=4, seed=2).load_state_dict(state)
    other = lt.LICIterableDataset(shards, decode=False, shuffle_buffer=4, seed=1)
    with pytest.raises(ValueError, match="num_workers"):
        lt.ResumableDataLoader(other, num_workers=2).load_state_dict(state)
    with pytest.raises(ValueError, match="persistent"):
        lt.ResumableDataLoader(other, num_workers=1, persistent_workers=True)


# -- corrupt rows ---------------------------------------------------------------------------


def test_corrupt_row_names_shard_and_row(tmp_path, bitstreams):
    rows = [{"bytes": bitstreams[i], "path": None, "codec": None} for i in range(5)]
    bad = bytearray(bitstreams[3])
    bad[len(bad) // 2] ^= 0xFF
    rows[3]["bytes"] = bytes(bad)
    path = tmp_path / "damaged.parquet"
    pq.write_table(
        pa.table({"image": pa.array(rows, type=STORAGE_TYPE), "id": list(range(5))}),
        path,
        row_group_size=2,
    )
    ds = lt.LICDataset(path)
    ds[2]
    with pytest.raises(CorruptBitstreamError, match=r"damaged\.parquet row 3"):
        ds[3]
    with pytest.raises(CorruptBitstreamError, match=r"damaged\.parquet row 3"):
        list(lt.LICIterableDataset(path))
    with pytest.raises(CorruptBitstreamError, match=r"damaged\.parquet row 3"):
        list(DataLoader(lt.LICDataset(path, output="tensor"), batch_size=2, num_workers=2))
    with pytest.raises(CorruptBitstreamError, match="item 1"):
        lt.BatchDecoder()([bitstreams[0], bytes(bad)])


# -- BatchDecoder ---------------------------------------------------------------------------


def test_batch_decoder_matches_one_by_one(bitstreams):
    datas = [bitstreams[i] for i in (0, 1, 2, 100, 200)]
    singles = torch.stack([lt.to_tensor(licstore.decode(d)) for d in datas])
    exact = lt.BatchDecoder("cpu", batch_transforms=False)(datas)
    assert torch.equal(exact, singles)
    # on a CPU the default synthesizes one image at a time (faster there): same pixels
    assert not lt.BatchDecoder("cpu").batch_transforms
    assert torch.equal(lt.BatchDecoder("cpu", threads=2)(datas), singles)
    batched = lt.BatchDecoder("cpu", batch_size=4, threads=2, batch_transforms=True)(datas)
    assert batched.shape == (5, 3, 32, 32) and batched.dtype == torch.uint8
    assert (batched.int() - singles.int()).abs().max() <= 2  # rounding only
    fp32 = lt.BatchDecoder("cpu", precision="fp32")(datas)
    one = [lt.to_tensor(licstore.decode(d, precision="fp32")) for d in datas]
    assert (fp32.int() - torch.stack(one).int()).abs().max() <= 1

    scaled = lt.BatchDecoder(transform=lambda t: t.float() / 255)(datas)
    assert scaled.dtype == torch.float32 and torch.allclose(scaled, singles.float() / 255)


def test_batch_decoder_mixed_shapes_and_modes(tiny_model, photo, bitstreams):
    from PIL import Image

    photo = photo[:24, :40]
    gray = licstore.encode(Image.fromarray(photo).convert("L"), quality=4, model=tiny_model)
    rgba = licstore.encode(Image.fromarray(photo).convert("RGBA"), quality=4, model=tiny_model)
    datas = [bitstreams[0], gray, rgba, bitstreams[1]]
    out = lt.BatchDecoder(batch_transforms=False)(datas)
    assert isinstance(out, list)
    assert [tuple(t.shape) for t in out] == [(3, 32, 32), (1, 24, 40), (4, 24, 40), (3, 32, 32)]
    for data, t in zip(datas, out):
        assert torch.equal(t, lt.to_tensor(licstore.decode(data)))


def test_batch_decoder_as_collate_fn(shards, bitstreams):
    raw = lt.LICDataset(shards, columns=["id", "label"], decode=False)
    loader = DataLoader(raw, batch_size=4, num_workers=2, collate_fn=lt.BatchDecoder())
    batches = list(loader)
    assert batches[0]["image"].shape == (4, 3, 32, 32)
    assert _ids(batches) == ALL_IDS
    assert batches[0]["label"].tolist() == [0, 1, 0, 1]
    # default collate keeps bytes as lists: decode afterwards (the GPU pattern)
    batch = next(iter(DataLoader(raw, batch_size=3)))
    decoded = lt.BatchDecoder(batch_transforms=False)(batch)
    assert torch.equal(decoded["image"][1], lt.to_tensor(licstore.decode(bitstreams[1])))
    images_only = next(iter(DataLoader(lt.LICDataset(shards, decode=False), batch_size=2)))
    assert lt.BatchDecoder()(images_only).shape == (2, 3, 32, 32)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_batch_decoder_cuda_without_cuda_is_a_clear_error():
    with pytest.raises(ValueError, match="CUDA"):
        lt.BatchDecoder(device="cuda")


# -- recipe ---------------------------------------------------------------------------------


def _steps(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("step ")]


def test_recipe_trains_checkpoints_and_resumes_exactly(shards, tmp_path, load_tool):
    recipe = load_tool("recipes/train_from_compressed_shards.py")
    args = ["--shards", str(shards / "*.parquet"), "--steps", "8", "--batch-size", "4"]
    args += ["--workers", "2", "--size", "32", "--log-column", "id"]
    out = io.StringIO()
    with redirect_stdout(out):
        assert recipe.main(args) == 0
    full = _steps(out.getvalue())
    assert len(full) == 8 and "epoch 1" in full[-1]  # crosses an epoch boundary

    ckpt = tmp_path / "ckpt.pt"
    out = io.StringIO()
    with redirect_stdout(out):
        assert recipe.main([*args, "--stop-after", "3", "--checkpoint", str(ckpt)]) == 0
    assert _steps(out.getvalue()) == full[:3]

    proc = subprocess.run(  # a fresh process, as after a real interruption
        [sys.executable, str(ROOT / "recipes" / "train_from_compressed_shards.py"), *args]
        + ["--resume", str(ckpt)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},  # as in this process: same float sums
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _steps(proc.stdout) == full[3:]  # same rows, same losses
