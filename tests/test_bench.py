"""tools/bench.py runs end to end (tiny models, two small photos): the table and the JSON."""

from __future__ import annotations

import json
import stat
import sys
from pathlib import Path

import numpy as np
from PIL import Image


def test_bench_compares_models(tiny_model, photo, tmp_path, load_tool, capsys, monkeypatch):
    import os

    from conftest import make_tiny_weights

    import licstore

    path = make_tiny_weights(tmp_path / "b.safetensors", "tiny-bench-b", seed=3)
    other = licstore.models.register_weights(path)
    # the decode-only memory probe runs in a fresh process: it finds models as users' do
    monkeypatch.setenv(
        "LICSTORE_WEIGHTS", os.pathsep.join([os.environ["LICSTORE_WEIGHTS"], str(path)])
    )
    for i in range(2):
        Image.fromarray(photo).rotate(90 * i, expand=True).save(tmp_path / f"{i}.png")
    out = tmp_path / "bench.json"
    bench = load_tool("bench")
    folders = []  # the memory probe's bitstreams: a private folder, .lic files, no pickle

    def mkdtemp(**kwargs):
        folders.append(Path(real_mkdtemp(**kwargs)))
        assert stat.S_IMODE(folders[-1].stat().st_mode) == 0o700
        return str(folders[-1])

    real_mkdtemp = bench.tempfile.mkdtemp
    monkeypatch.setattr(bench.tempfile, "mkdtemp", mkdtemp)
    monkeypatch.setitem(sys.modules, "pickle", None)  # `import pickle` fails in this process
    bench.main([
        "--images", str(tmp_path), "--models", f"{tiny_model},{other}", "--threads", "1",
        "--json", str(out),
    ])  # fmt: skip
    monkeypatch.undo()
    assert len(folders) == 2 and not any(f.exists() for f in folders)
    table = capsys.readouterr().out
    assert f"| measure | {tiny_model}@" in table and f"{other}@" in table
    result = json.loads(out.read_text())
    assert len(result["models"]) == 2
    for rows in result["models"].values():
        assert rows["decode end to end, fp32, batch 1 (img/s)"] > 0
        assert rows["peak RSS, decode-only process, bf16 (MiB)"] > 10
    assert set(result["classical decode (s/img)"]) == {"JPEG q75", "WebP q75 m6", "HEVC 4:4:4 q50"}


def test_bench_synthesis_times_every_layer_both_forms(
    tiny_model, photo, tmp_path, load_tool, capsys
):
    import licstore

    Image.fromarray(photo).save(tmp_path / "0.png")
    load_tool("bench_synthesis").main(
        ["--model", tiny_model, "--images", str(tmp_path), "--threads", "1"]
    )
    lines = capsys.readouterr().out.splitlines()
    layers = len(licstore.models.load(tiny_model).g_s)
    header = next(line for line in lines if line.startswith("| threads | form |"))
    assert header.count("|") == layers + 4 and "ConvTranspose2d" in header
    rows = [line for line in lines if line.startswith("| 1 |")]
    assert [r.split("|")[2].strip() for r in rows] == ["as written", "as run"]
    for r in rows:
        cells = [float(c) for c in r.strip("|").split("|")[2:]]
        assert len(cells) == layers + 1 and all(c > 0 for c in cells)
        assert abs(sum(cells[:-1]) - cells[-1]) < 0.2  # total = sum of the rounded layers


def test_bench_train_times_each_precision_and_layout(tmp_path, load_tool, capsys):
    out = tmp_path / "train.json"
    result = load_tool("bench_train").main([
        "--arch-kwargs", json.dumps({"N": 8, "M": 12}), "--batch", "2", "--crop", "64",
        "--steps", "1", "--threads", "1", "--json", str(out),
    ])  # fmt: skip
    table = capsys.readouterr().out
    assert json.loads(out.read_text()) == result
    assert set(result["patches_per_s"]) == {
        "fp32 contiguous", "fp32 channels_last", "bf16 contiguous", "bf16 channels_last"
    }  # fmt: skip
    assert all(v > 0 for v in result["patches_per_s"].values())
    assert isinstance(result["native_bf16"], bool)
    rows = [line for line in table.splitlines() if line.startswith(("| fp32 |", "| bf16 |"))]
    assert len(rows) == 4


def test_bench_rans_counts_escapes_and_decodes_every_string(load_tool, tmp_path, capsys):
    from PIL import Image

    tool = load_tool("bench_rans")
    folder = tmp_path / "images"
    folder.mkdir()
    sample = Path(__file__).resolve().parents[1] / "licstore/samples/coffee.png"
    Image.open(sample).convert("RGB").crop((0, 0, 128, 128)).save(folder / "a.png")
    # noise drives symbols outside the CDF tables: escapes, and a bounded route that takes them
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)).save(folder / "b.png")
    out = tmp_path / "rans.json"
    tool.main(["--images", str(folder), "--qualities", "1,8", "--threads", "1", "--json", str(out)])
    rows = json.loads(out.read_text())
    assert [(r["image"], r["quality"]) for r in rows] == [
        ("a.png", 1),
        ("a.png", 8),
        ("b.png", 1),
        ("b.png", 8),
    ]
    for r in rows:
        assert r["symbols"] == 192 * 8 * 8
        assert r["route"] in {"guarded", "checked"}
        assert (r["route"] == "guarded") == (r["escapes"] == 0)
    assert "| image |" in capsys.readouterr().out
