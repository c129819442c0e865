"""licstore.estimate / `licstore estimate`: projections from a sample, checked against the
real compression of small local datasets (the tiny model)."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

import licstore
from licstore import cli
from licstore.estimate import estimate


def photo(width: int, height: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    img = np.stack([xx * 2.1, yy * 2.7, (xx + yy) * 1.3], -1) + rng.normal(0, 6, (height, width, 3))
    buf = io.BytesIO()
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "photos"
    (root / "sub").mkdir(parents=True)
    for i in range(10):
        name = root / ("sub" if i % 3 else "") / f"p{i}.png"
        name.write_bytes(photo(32 + 16 * (i % 4), 32 + 8 * (i % 3), i))
    (root / ".hidden.png").write_bytes(photo(40, 32, 99))  # skipped, as datasets skips it
    (root / "notes.txt").write_text("not an image")
    return root


def test_folder_estimate_brackets_the_real_size(folder):
    opts = {"quality": 3}  # the shipped model: sizes vary with the images
    files = sorted(p for p in folder.rglob("p*.png"))
    real = sum(len(licstore.encode(p.read_bytes(), **opts)) for p in files)
    current = sum(p.stat().st_size for p in files)

    est = estimate(str(folder), sample=5, seed=3, **opts)
    assert (est.kind, est.images, est.sampled) == ("images", 10, 5)
    assert est.current_image_bytes == est.current_total_bytes == current
    c = est.compressed_image_bytes
    assert c.low <= real <= c.high, (c, real)
    assert c.low < c.value < c.high
    assert est.ratio.value == pytest.approx(c.value / current)
    assert est.psnr is not None and est.psnr.low <= est.psnr.value <= est.psnr.high
    assert est.min_psnr <= est.psnr.value
    assert est.encode_seconds.value == pytest.approx(10 * est.seconds_per_image)
    # deterministic: the same seed samples (and measures) the same images
    assert estimate(str(folder), sample=5, seed=3, **opts).sample_bytes == est.sample_bytes


def test_datasets_dataset_and_lossless(tiny_model, tmp_path):
    import datasets

    rows = [{"bytes": photo(32 + 16 * i, 24, 10 + i), "path": None} for i in range(5)]
    ds = datasets.Dataset.from_dict(
        {"image": rows}, features=datasets.Features({"image": datasets.Image()})
    )
    opts = {"model": tiny_model, "lossless": True}
    est = estimate(ds, sample=3, **opts)
    assert est.kind == "datasets" and est.images == 5
    assert est.current_image_bytes == sum(len(r["bytes"]) for r in rows)
    assert est.psnr is None and "lossless" in str(est)
    # the whole dataset as the sample: exact, no interval (finite-population correction)
    real = sum(len(licstore.encode(r["bytes"], **opts)) for r in rows)
    full = estimate(ds, sample=50, **opts)
    assert full.sampled == 5 and len({b for _, b in full.sample_bytes}) > 1
    assert full.compressed_image_bytes.low == full.compressed_image_bytes.high == real
    ds.save_to_disk(str(tmp_path / "saved"))  # a save_to_disk folder (any fsspec URL)
    saved = estimate(str(tmp_path / "saved"), sample=50, **opts)
    assert saved.kind == "datasets" and saved.compressed_image_bytes.value == real


def test_cli_estimate(folder, tiny_model, capsys):
    args = ["estimate", str(folder), "--bpp", "1.0", "--model", tiny_model, "--sample", "4"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    for label in ("source:", "projected:", "total:", "PSNR:", "encode:"):
        assert label in out, out
    assert "10 images" in out and "95% CI" in out
    assert cli.main([*args, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["images"] == 10 and data["sampled"] == 4
    assert 0 < data["ratio"]["value"] < 1
    assert cli.main(["estimate", str(folder / "missing"), "--sample", "4"]) == 1
    assert "missing" in capsys.readouterr().err


def test_bad_arguments():
    with pytest.raises(ValueError, match="sample"):
        estimate("anything", sample=1)
    with pytest.raises(TypeError, match="unknown options"):
        estimate("anything", rate=3)
    with pytest.raises(licstore.errors.RateTargetError):
        estimate("anything", bpp=0.3, quality=2)
