"""Recipes run end to end on small data (the shipped default model, bundled or Kodak photos)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_shrink_hf_dataset_recipe(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "recipes" / "shrink_hf_dataset.py"),
            "--limit",
            "2",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = dict(line.split(":", 1) for line in proc.stdout.splitlines() if ":" in line)
    saved = float(lines["saved"].strip().rstrip("%"))
    psnr = float(lines["mean PSNR"].split()[0])
    bpp = float(lines["mean bpp"])
    assert saved > 80, proc.stdout  # PNG photos at 0.3 bpp: well over 80% smaller
    assert bpp <= 0.3 * 1.03, proc.stdout
    assert psnr > 24, proc.stdout


def test_s3_dataset_recipe():
    """Against the local S3 server it starts itself (moto[server], tools/local_s3.py)."""
    import pytest

    pytest.importorskip("s3fs", reason="s3fs is in the test extra: pip install -e '.[test]'")
    pytest.importorskip("moto", reason="moto[server] is in the test extra")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "recipes" / "s3_dataset.py"), "--limit", "2", "--sample", "2"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = dict(line.split(":", 1) for line in proc.stdout.splitlines() if ":" in line)
    assert int(lines["rows reloaded"]) == 2
    saved = float(lines["saved"].strip().rstrip("%"))
    assert saved > 80, proc.stdout  # PNG photos at 0.3 bpp: well over 80% smaller
    assert float(lines["mean PSNR"].split()[0]) > 24, proc.stdout
    assert "s3://licstore-recipe/photos/plain/ (parquet, 2 images)" in lines["source"]
    assert "read back as PNG" in proc.stdout
