"""Build licstore's wheel from a clean copy of the repository and check its weights budget.

    python tools/check_wheel.py [--budget-mb 100] [--keep DIR]

Copies the files git knows (tracked, and untracked ones that are not ignored) into a temporary
folder (hard links where possible: a stale ``build/`` would put files into the wheel that the
packaging configuration leaves out), runs ``pip wheel --no-deps --no-build-isolation`` there,
and lists the wheel's weights files. Fails (exit 1) when the weights exceed the budget or the
wheel's weights are not exactly the default version of every model in the manifest. The
figure goes into BENCHMARKS.md; ``tests/test_packaging.py`` runs the same check.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUDGET_MB = 100  # decimal megabytes of uncompressed weights in the wheel (issue 21)


def clean_copy(dest: Path) -> None:
    """The repository's non-ignored files under ``dest`` (no build/, no egg-info)."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout
    for rel in sorted({p for p in out.decode().split("\0") if p}):
        src = ROOT / rel
        if not src.is_file():
            continue  # deleted in the work tree
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(src, target)
        except OSError:
            shutil.copy2(src, target)


def build(out_dir: Path) -> Path:
    """Build the wheel into ``out_dir`` from a clean copy; returns its path."""
    with tempfile.TemporaryDirectory(prefix="licstore-wheel-src-") as tmp:
        src = Path(tmp) / "licstore"
        clean_copy(src)
        subprocess.run(
            [
                sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                "--no-index", "-q", "-w", str(out_dir), str(src),
            ],
            check=True,
            capture_output=True,
        )  # fmt: skip
    (wheel,) = out_dir.glob("licstore-*.whl")
    return wheel


def weights_in(wheel: Path) -> dict[str, int]:
    """``{file name: uncompressed bytes}`` of the wheel's ``licstore/weights/*.safetensors``."""
    with zipfile.ZipFile(wheel) as z:
        return {
            Path(i.filename).name: i.file_size
            for i in z.infolist()
            if i.filename.startswith("licstore/weights/") and i.filename.endswith(".safetensors")
        }


def expected_weights() -> set[str]:
    """The default version's file of every model in the manifest: what the wheel ships."""
    manifest = json.loads((ROOT / "licstore" / "weights" / "manifest.json").read_text())
    out = set()
    for entry in manifest["models"].values():
        (file,) = [v["file"] for v in entry["versions"] if v["sha256"] == entry["default"]]
        out.add(file)
    return out


def check(wheel: Path, budget_mb: float = BUDGET_MB) -> list[str]:
    """Problems with ``wheel``'s weights (empty: within budget, exactly the defaults)."""
    shipped = weights_in(wheel)
    problems = []
    total = sum(shipped.values())
    if total > budget_mb * 1e6:
        problems.append(f"weights {total / 1e6:.1f} MB > budget {budget_mb} MB")
    expected = expected_weights()
    if set(shipped) != expected:
        extra, missing = sorted(set(shipped) - expected), sorted(expected - set(shipped))
        problems.append(f"weights not the manifest's defaults: extra {extra}, missing {missing}")
    return problems


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget-mb", type=float, default=BUDGET_MB)
    ap.add_argument("--keep", help="folder to keep the wheel in (default: a temporary one)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="licstore-wheel-") as tmp:
        out = Path(args.keep) if args.keep else Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        wheel = build(out)
        seconds = time.perf_counter() - t0
        shipped = weights_in(wheel)
        for name, size in sorted(shipped.items()):
            print(f"{size / 1e6:8.1f} MB  {name}")
        print(
            f"wheel {wheel.name}: {wheel.stat().st_size / 1e6:.1f} MB compressed; weights "
            f"{sum(shipped.values()) / 1e6:.1f} MB in {len(shipped)} files "
            f"(budget {args.budget_mb:g} MB); built in {seconds:.0f} s"
        )
        problems = check(wheel, args.budget_mb)
        for p in problems:
            print(f"FAIL: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
