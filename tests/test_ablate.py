"""tools/ablate.py: equal-time training runs, exported, coded and tabulated; reruns resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def test_two_configurations_end_to_end(tmp_path, load_tool):
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        img = rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)
        Image.fromarray(img).save(photos / f"p{i}.png")
    out = tmp_path / "abl"
    argv = [
        "--out", str(out), "--hours-each", str(1.5 / 3600),
        "--config", 'a=mshp-vr:{"N": 8, "M": 12}',
        "--config", 'b=resnet-subpixel:{"N": 8, "M": 12, "upsample": "tconv"}',
        "--train-args", "--batch 1 --crop 64 --threads 1 --warmup 1",
        "--data", str(photos), "--images", str(photos), "--limit", "1", "--q", "1,8",
        "--no-ms-ssim",
    ]  # fmt: skip
    ablate = load_tool("ablate")
    assert ablate.main(argv) == 0
    result = json.loads((out / "ablation.json").read_text())
    assert set(result["ablation"]) == {"a", "b"}
    assert result["ablation"]["b"]["arch_kwargs"]["upsample"] == "tconv"
    assert {"licstore:ablate-a", "licstore:ablate-b"} <= set(result["codecs"])
    md = (out / "ablation.md").read_text()
    assert "| a | mshp-vr |" in md and "| b | resnet-subpixel |" in md and "anchor" in md
    for point in result["codecs"]["licstore:ablate-b"]["points"]:  # the per-level table
        assert f"{point['bpp']:.3f} / {point['psnr']:.2f} dB" in md

    # a rerun finds both runs finished and exported: no training, no export
    def stamps():
        files = [out / n / "last.pt" for n in "ab"] + sorted(out.glob("*/weights/*"))
        return {f: f.stat().st_mtime_ns for f in files}

    before = stamps()
    assert len(before) == 4
    assert ablate.main(argv) == 0
    assert stamps() == before


def test_bad_configurations_are_refused(load_tool):
    import pytest

    ablate = load_tool("ablate")
    for spec in ("noequals", "x=unknown-arch", 'x=mshp-vr:{"N": }'):
        with pytest.raises(SystemExit):
            ablate.parse_config(spec)
