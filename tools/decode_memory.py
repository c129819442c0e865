#!/usr/bin/env python
"""Peak memory of one decode as a function of the image's pixel count (issue 21).

    python tools/decode_memory.py [--sides 512,1024,2048,4096] [--model mshp-vr]
                                  [--paths plain,lossless] [--precision auto] [--json OUT]

For each side ``s`` and path it encodes an ``s x s`` image (Kodak photos tiled, else the
bundled samples; ``plain`` at quality 4, ``lossless`` with ``lossless=True``), then decodes it
in a fresh Python that imports licstore and decodes it once, and reads that process's peak
resident memory (``VmHWM`` in ``/proc/self/status``). The same is done for a 64 x 64 image, the
fixed part (interpreter, torch, model: small decodes stay under the peak of start-up). A
least-squares line through the sides of at least ``--fit-from`` pixels gives the bytes per
padded pixel (the model pads to a multiple of its downsampling, 64 for mshp-vr), so:

    peak ~= fixed + slope * padded_pixels

The line at the decode limit (``licstore.limits.DEFAULT_MAX_PIXELS``) is what the limit
enforces; the numbers go to BENCHMARKS.md ("Decode memory").
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DECODER = r"""
import sys
import licstore
data = open(sys.argv[1], "rb").read()
image = licstore.decode(data, precision=sys.argv[2], max_pixels=1 << 40)
assert image.size == (int(sys.argv[3]), int(sys.argv[3]))
for line in open("/proc/self/status"):
    if line.startswith("VmHWM"):
        print(int(line.split()[1]) * 1024)
"""


def _photo(side: int) -> np.ndarray:
    """A ``side x side`` RGB photo: Kodak (or the bundled samples) tiled, mirrored at seams."""
    kodak = ROOT.parent / "shared" / "data" / "kodak"
    files = sorted(kodak.glob("*.png")) or sorted((ROOT / "licstore" / "samples").glob("*"))
    tile = np.asarray(Image.open(files[0]).convert("RGB"))
    tile = np.concatenate([tile, tile[:, ::-1]], 1)
    tile = np.concatenate([tile, tile[::-1]], 0)
    reps = (-(-side // tile.shape[0]), -(-side // tile.shape[1]), 1)
    return np.ascontiguousarray(np.tile(tile, reps)[:side, :side])


def _peak(path: Path, precision: str, side: int) -> int:
    run = subprocess.run(
        [sys.executable, "-c", DECODER, str(path), precision, str(side)],
        capture_output=True,
        text=True,
        check=False,
    )
    if run.returncode:
        raise RuntimeError(run.stderr[-2000:])
    return int(run.stdout.split()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sides", default="512,1024,2048,4096")
    ap.add_argument("--model", default="mshp-vr")
    ap.add_argument("--paths", default="plain,lossless")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--fit-from", type=int, default=1024, help="smallest side in the fit")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)

    import licstore
    from licstore import limits, models

    sides = [int(s) for s in args.sides.split(",")]
    multiple = models.load(args.model).downsampling
    result: dict = {"model": args.model, "precision": args.precision, "paths": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for path_name in args.paths.split(","):
            kwargs = {"lossless": True} if path_name == "lossless" else {"quality": 4}
            rows = []
            for side in [64, *sides]:
                data = licstore.encode(_photo(side), model=args.model, **kwargs)
                file = Path(tmp) / f"{path_name}-{side}.lic"
                file.write_bytes(data)
                padded = (-(-side // multiple) * multiple) ** 2
                peak = _peak(file, args.precision, side)
                rows.append({"side": side, "padded_pixels": padded, "peak_bytes": peak})
                print(f"{path_name:9s} {side:5d}^2  peak {peak / 2**20:8.1f} MiB", flush=True)
            fixed = rows[0]["peak_bytes"]
            fit = [r for r in rows[1:] if r["side"] >= args.fit_from] or rows[1:]
            if len(fit) < 2:  # one size: a measurement, no line
                continue
            x = np.array([r["padded_pixels"] for r in fit], dtype=np.float64)
            y = np.array([r["peak_bytes"] for r in fit], dtype=np.float64)
            slope, intercept = np.polyfit(x, y, 1)
            at_limit = intercept + slope * limits.DEFAULT_MAX_PIXELS
            result["paths"][path_name] = {
                "rows": rows,
                "fixed_bytes": fixed,
                "bytes_per_padded_pixel": slope,
                "intercept_bytes": intercept,
                "peak_at_default_limit_bytes": at_limit,
            }
            print(
                f"{path_name}: peak ~= {intercept / 2**20:.0f} MiB + {slope:.1f} B x padded "
                f"pixels (64x64: {fixed / 2**20:.0f} MiB); at {limits.DEFAULT_MAX_PIXELS} "
                f"pixels: {at_limit / 2**30:.2f} GiB",
                flush=True,
            )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
