#!/usr/bin/env python
"""Shrink a Hugging Face dataset's image column with licstore, end to end.

Builds a dataset with a standard ``Image()`` column (Kodak next to the repository, else the
sample photos bundled with licstore), casts it to ``LICImage(bpp=0.3)``, saves it, reloads it
in a fresh process (which only needs ``import licstore``) and prints the bytes before and
after and the mean PSNR of the reloaded images against the originals.

    python recipes/shrink_hf_dataset.py [--bpp 0.3] [--out DIR] [--limit N] [--model NAME]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import datasets
import numpy as np

import licstore
from licstore.cli import demo_images


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bpp", type=float, default=0.3)
    ap.add_argument("--model", default=None, help="registry name (default: licstore's default)")
    ap.add_argument("--limit", type=int, default=None, help="use only the first N images")
    ap.add_argument("--out", default=None, help="where to save (default: a temporary folder)")
    args = ap.parse_args(argv)

    files = [str(p) for p in demo_images()][: args.limit]
    features = datasets.Features({"image": datasets.Image(), "name": datasets.Value("string")})
    ds = datasets.Dataset.from_dict(
        {"image": files, "name": [Path(f).name for f in files]}, features=features
    )
    ds = ds.cast_column("image", datasets.Image())
    out = Path(args.out or tempfile.mkdtemp(prefix="licstore-recipe-"))
    plain_dir, lic_dir = out / "plain", out / "lic"
    # embed the original files, so "before" counts the image bytes, not the paths
    ds.save_to_disk(str(plain_dir))

    t0 = time.perf_counter()
    small = ds.cast_column("image", licstore.LICImage(bpp=args.bpp, model=args.model))
    seconds = time.perf_counter() - t0
    small.save_to_disk(str(lic_dir))

    # reload in a fresh process: all it needs is `import licstore`
    check = textwrap.dedent(
        f"""
        import json, numpy as np, datasets, licstore
        from licstore.metrics import psnr
        plain = datasets.load_from_disk({str(plain_dir)!r})
        small = datasets.load_from_disk({str(lic_dir)!r})
        assert type(small.features["image"]).__name__ == "LICImage", small.features
        scores = [psnr(np.asarray(a["image"].convert("RGB")), np.asarray(b["image"].convert("RGB")))
                  for a, b in zip(plain, small)]
        bpps = [licstore.info(r["bytes"]).bpp for r in small.data.column("image").to_pylist()]
        print(json.dumps({{"psnr": scores, "bpp": bpps}}))
        """
    )
    proc = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    if proc.returncode != 0:
        print(proc.stderr, file=sys.stderr)
        return 1
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    before, after = folder_bytes(plain_dir), folder_bytes(lic_dir)
    print(f"images:        {len(ds)} ({Path(files[0]).parent})")
    print(f"saved to:      {out}")
    print(f"bytes before:  {before:,} (Image() column, original files embedded)")
    print(f"bytes after:   {after:,} (LICImage(bpp={args.bpp:g}))")
    print(f"saved:         {100 * (1 - after / before):.1f}%")
    print(f"mean bpp:      {np.mean(result['bpp']):.3f}")
    print(f"mean PSNR:     {np.mean(result['psnr']):.2f} dB (reloaded in a fresh process)")
    print(f"encode time:   {seconds / len(ds):.2f} s/image")
    return 0


if __name__ == "__main__":
    sys.exit(main())
