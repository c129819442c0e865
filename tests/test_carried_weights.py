"""Datasets carry their weights: written beside the data, registered by readers, checked by
SHA-256, and decoded in a fresh process by a licstore that no longer ships those weights."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

import licstore
from licstore import carried_weights, models
from licstore.errors import ModelNotFoundError, WeightsIntegrityError
from licstore.models.weights import WEIGHTS_DIR, named_file
from licstore.parquet import read_images, write_table

ROOT = Path(__file__).resolve().parents[1]
#: a superseded mshp-vr version: in the repository, left out of the wheel (pyproject.toml)
OLD = "ff75265381401e873ebd793014f2572ae6ae3131ce2d1ed3b519ca33cab4ced4"


def png(seed: int, size: tuple[int, int] = (40, 32)) -> bytes:
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx * 4.0, yy * 5.0, (xx + yy) * 2.0], -1) + rng.normal(0, 5, (h, w, 3))
    buf = io.BytesIO()
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def table(seed: int, n: int = 3) -> pa.Table:
    return pa.table(
        {
            "image": [{"bytes": png(seed + i), "path": None} for i in range(n)],
            "label": list(range(n)),
        }
    )


@pytest.fixture
def mem():
    fs = fsspec.filesystem("memory")
    root = f"/carried-{os.urandom(4).hex()}"
    yield fs, root
    if fs.exists(root):
        fs.rm(root, recursive=True)


@pytest.fixture
def forget(monkeypatch):
    """``forget(name)``: this process no longer has any weights of ``name`` (as a licstore
    that does not ship them), until the test ends."""

    def forget(name: str) -> None:
        monkeypatch.setitem(models._weights, name, {})
        monkeypatch.setattr(models, "_cache", {})

    return forget


def test_write_table_puts_weights_beside_the_file_once_and_records_them(
    tiny_model, mem, monkeypatch
):
    fs, root = mem
    feature = licstore.LICImage(bpp=1.0, model=tiny_model)
    write_table(table(1), f"memory://{root}/a.parquet", {"image": feature})
    _, sha256 = models.resolve(tiny_model)
    name = named_file(tiny_model, sha256)
    assert fs.ls(f"{root}/.licstore-weights", detail=False) == [f"{root}/.licstore-weights/{name}"]
    assert (
        fs.cat(f"{root}/.licstore-weights/{name}")
        == Path(models._resolve(tiny_model, None)[0]).read_bytes()
    )
    with fs.open(f"{root}/a.parquet", "rb") as f:
        record = json.loads(pq.ParquetFile(f).metadata.metadata[b"licstore"])
    assert record == {
        "weights": [{"file": f".licstore-weights/{name}", "model": tiny_model, "sha256": sha256}]
    }
    reads = []
    real = carried_weights.read_verified
    monkeypatch.setattr(carried_weights, "read_verified", lambda *a: reads.append(a) or real(*a))
    write_table(table(10), f"memory://{root}/b.parquet", {"image": feature})
    assert reads == []  # once per dataset: the second file finds the weights there


def test_read_images_registers_the_weights_a_file_carries(tiny_model, mem, forget):
    fs, root = mem
    url = f"memory://{root}/a.parquet"
    write_table(table(20), url, {"image": licstore.LICImage(bpp=1.0, model=tiny_model)})
    expected = [np.asarray(im) for im in read_images(url)]
    data = pq.read_table(fs.open(f"{root}/a.parquet", "rb")).column("image")[0]["bytes"].as_py()
    forget(tiny_model)
    with pytest.raises(ModelNotFoundError):
        licstore.decode(data)  # a single file: the registry alone, and its error
    got = read_images(url)
    assert all(np.array_equal(np.asarray(g), e) for g, e in zip(got, expected))
    location = models._weights[tiny_model][models.resolve(tiny_model)[1][:16]][0]
    assert str(location).startswith("memory://")  # read from the dataset, not the registry
    licstore.decode(data)  # registered for the rest of the process


def test_a_replaced_weights_file_is_refused(tiny_model, mem, forget):
    fs, root = mem
    url = f"memory://{root}/a.parquet"
    write_table(table(30), url, {"image": licstore.LICImage(bpp=1.0, model=tiny_model)})
    (path,) = fs.ls(f"{root}/.licstore-weights", detail=False)
    good = fs.cat(path)
    fs.pipe(path, good[:-1] + bytes([good[-1] ^ 1]))  # same size, one bit flipped
    forget(tiny_model)
    with pytest.raises(WeightsIntegrityError, match="SHA-256"):
        read_images(url)


def test_unknown_weights_of_rows_passed_through_fail_the_write(tiny_model, mem, forget):
    fs, root = mem
    feature = licstore.LICImage(bpp=1.0, model=tiny_model)
    write_table(table(40), f"memory://{root}/a.parquet", {"image": feature})
    stored = pq.read_table(fs.open(f"{root}/a.parquet", "rb"))
    forget(tiny_model)
    with pytest.raises(ModelNotFoundError, match="cannot store the weights"):
        write_table(stored, f"memory://{root}/other/b.parquet", {"image": licstore.LICImage()})
    assert not fs.exists(f"{root}/other/b.parquet")  # no dataset without its weights


def test_dask_job_carries_its_weights_and_torch_reads_them(tiny_model, mem, forget):
    distributed = pytest.importorskip("distributed")
    from licstore import dask as ldask
    from licstore.torch import LICDataset

    fs, root = mem
    buf = io.BytesIO()
    pq.write_table(table(50, n=4), buf)
    fs.pipe(f"{root}/src/sub/m.parquet", buf.getvalue())
    feature = licstore.LICImage(bpp=1.0, model=tiny_model)
    with (
        distributed.LocalCluster(
            n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster) as c,
    ):
        ldask.compress_parquet(
            f"memory://{root}/src", f"memory://{root}/dst", feature=feature, client=c,
            progress=False,
        )  # fmt: skip
    _, sha256 = models.resolve(tiny_model)
    assert fs.ls(f"{root}/dst/.licstore-weights", detail=False) == [
        f"{root}/dst/.licstore-weights/{named_file(tiny_model, sha256)}"
    ]
    with fs.open(f"{root}/dst/sub/m.parquet", "rb") as f:
        (record,) = json.loads(pq.ParquetFile(f).metadata.metadata[b"licstore"])["weights"]
    assert record["file"] == f"../.licstore-weights/{named_file(tiny_model, sha256)}"
    forget(tiny_model)
    ds = LICDataset(f"memory://{root}/dst/sub/m.parquet", output="tensor")
    assert [tuple(ds[i].shape) for i in range(4)] == [(3, 32, 40)] * 4


def test_folder_registration_and_models_export_register(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("LICSTORE_WEIGHTS_DIR", str(tmp_path / "user"))
    exported = carried_weights.export(tiny_model, tmp_path / "out")
    _, sha256 = models.resolve(tiny_model)
    assert Path(exported).name == named_file(tiny_model, sha256)
    with pytest.raises(ModelNotFoundError):
        carried_weights.export(f"{tiny_model}@00000000", tmp_path / "out")
    data = licstore.encode(Image.open(io.BytesIO(png(60))), bpp=1.0, model=tiny_model)
    monkeypatch.setitem(models._weights, tiny_model, {})
    monkeypatch.setattr(models, "_cache", {})
    name, digest, kept = carried_weights.keep(exported)
    assert (name, digest) == (tiny_model, sha256) and Path(kept).parent == tmp_path / "user"
    assert licstore.decode(data).size == (40, 32)


# -- a fresh process with a licstore whose package no longer ships the weights ------------


def _excluded() -> set[str]:
    """The superseded versions' files: what pyproject.toml leaves out of the wheel
    (tests/test_packaging.py checks that the two agree)."""
    manifest = json.loads((WEIGHTS_DIR / "manifest.json").read_text())
    return {
        v["file"]
        for entry in manifest["models"].values()
        for v in entry["versions"]
        if v["sha256"] != entry["default"]
    }


@pytest.fixture(scope="module")
def lean_package(tmp_path_factory) -> Path:
    """A copy of the licstore package as the wheel installs it: the superseded weights files
    are absent (the manifest still lists them)."""
    dest = tmp_path_factory.mktemp("lean") / "site"
    pkg = dest / "licstore"
    shutil.copytree(
        ROOT / "licstore", pkg, ignore=shutil.ignore_patterns("*.safetensors", "__pycache__")
    )
    excluded = _excluded()
    assert f"mshp-vr-{OLD[:8]}.safetensors" in excluded
    for f in WEIGHTS_DIR.glob("*.safetensors"):
        if f.name not in excluded:
            (pkg / "weights" / f.name).symlink_to(f)
    return dest


def run_lean(lean_package: Path, tmp_path: Path, script: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("LICSTORE_WEIGHTS", "PYTHONPATH")}
    env.update(PYTHONPATH=str(lean_package), LICSTORE_WEIGHTS_DIR=str(tmp_path / "no-user"))
    prelude = textwrap.dedent(f"""
        import licstore, sys
        assert licstore.__file__.startswith({str(lean_package)!r}), licstore.__file__
    """)
    out = subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(script)],
        env=env,
        cwd=tmp_path,  # not the repository: its licstore/ would come first on sys.path
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


@pytest.fixture
def old_default(monkeypatch):
    """Encode with the superseded mshp-vr version, as the licstore that shipped it did."""
    monkeypatch.setitem(models._default_version, "mshp-vr", OLD[:16])


def test_dataset_with_superseded_weights_decodes_in_a_lean_licstore(
    lean_package, tmp_path, old_default
):
    import datasets

    src = table(70)
    parquet_path = tmp_path / "pq" / "part-0.parquet"
    write_table(src, str(parquet_path), {"image": licstore.LICImage(quality=3)})
    ds = datasets.Dataset.from_dict(
        {"image": [{"bytes": png(70 + i), "path": None} for i in range(3)]},
        features=datasets.Features({"image": datasets.Image()}),
    )
    ds = licstore.compress_dataset(ds, "image", licstore.LICImage(quality=3))
    licstore.save_to_disk(ds, str(tmp_path / "saved"))
    assert os.listdir(tmp_path / "saved" / ".licstore-weights") == [named_file("mshp-vr", OLD)]
    first = pq.read_table(parquet_path).column("image")[0]["bytes"].as_py()
    assert OLD.startswith(licstore.info(first).weights_hash)
    expected = np.asarray(read_images(str(parquet_path), rows=[0])[0])
    np.save(tmp_path / "expected.npy", expected)
    (tmp_path / "first.lic").write_bytes(first)

    out = run_lean(
        lean_package,
        tmp_path,
        f"""
        import numpy as np
        from licstore.errors import ModelNotFoundError
        tmp = {str(tmp_path)!r}
        try:  # a single file keeps the registry's error, which names the way back
            licstore.decode(open(tmp + "/first.lic", "rb").read())
            sys.exit("decoded without the weights")
        except ModelNotFoundError as e:
            assert "superseded" in str(e) and "licstore models register" in str(e), e
        img = licstore.parquet.read_images(tmp + "/pq/part-0.parquet", rows=[0])[0]
        assert np.array_equal(np.asarray(img), np.load(tmp + "/expected.npy"))
        ds = licstore.load_from_disk(tmp + "/saved")
        assert ds[2]["image"].size == (40, 32)
        from licstore.torch import LICDataset
        assert tuple(LICDataset(tmp + "/pq", output="tensor")[1].shape) == (3, 32, 40)
        print("ok")
        """,
    )
    assert out.strip().endswith("ok")


def test_superseded_vector_decodes_in_a_lean_licstore_after_models_register(lean_package, tmp_path):
    """The documented way back for a single file: `licstore models export` where the version
    is installed, `licstore models register` where it is not; every later process decodes."""
    from licstore.cli import main

    vector = ROOT / "formats" / "vectors" / "mshp-vr-rgb-lossless.lic"  # written by ff752653
    assert OLD.startswith(licstore.info(vector.read_bytes()).weights_hash)
    assert main(["models", "export", f"mshp-vr@{OLD[:8]}", str(tmp_path / "kept")]) == 0
    (kept,) = (tmp_path / "kept").iterdir()
    decode = f"""
        from licstore.errors import ModelNotFoundError
        data = open({str(vector)!r}, "rb").read()
        try:
            image = licstore.decode(data)
        except ModelNotFoundError as e:
            print("missing:", e)
        else:
            print("decoded", image.size, image.mode)
        """
    assert "superseded" in run_lean(lean_package, tmp_path, decode)
    register = f"""
        from licstore.cli import main
        sys.exit(main(["models", "register", {str(kept)!r}]))
        """
    assert "kept as" in run_lean(lean_package, tmp_path, register)
    assert "decoded (72, 48) RGB" in run_lean(lean_package, tmp_path, decode)
