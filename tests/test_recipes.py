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
