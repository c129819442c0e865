#!/usr/bin/env python
"""Compress a Parquet image dataset with licstore on a Dask cluster, then reload it.

Without ``--src``, builds a small Hugging Face-style Parquet dataset first (Kodak next to the
repository, else the sample photos bundled with licstore, as a standard ``Image()`` column plus
a ``name`` column, in ``--shards`` files under ``OUT/plain``). Then compresses it with
``licstore.dask.compress_parquet`` into ``OUT/lic`` (or ``--dst``) on a local cluster
(``--workers N`` processes, default one per core) or an existing one (``--scheduler
ADDRESS``), prints the job report, reloads the result with ``datasets.load_dataset("parquet")``
and prints the bytes before and after and the PSNR of every reloaded image against its source.
Rerunning the same command resumes: finished shards are skipped.

    python recipes/compress_parquet_with_dask.py [--src URL] [--dst URL] [--out DIR]
        [--bpp 0.3] [--model NAME] [--limit N] [--shards 2] [--scheduler ADDRESS | --workers N]

``--src``/``--dst`` take any fsspec URL (``s3://bucket/data``, a local folder, ...). Not
``memory://``: an in-memory filesystem lives in one process, and the workers of a local
cluster are other processes; use local files (as this recipe does by default) or an object
store that every worker can reach.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import datasets
import fsspec
import numpy as np

import licstore
from licstore.cli import demo_images
from licstore.dask import compress_parquet
from licstore.metrics import psnr


def build_plain_dataset(folder: Path, limit: int | None, shards: int) -> str:
    """Photos as a standard ``Image()`` column, bytes embedded, in ``shards`` files."""
    files = demo_images()[:limit]
    features = datasets.Features({"image": datasets.Image(), "name": datasets.Value("string")})
    images = [{"bytes": f.read_bytes(), "path": f.name} for f in files]
    ds = datasets.Dataset.from_dict(
        {"image": images, "name": [f.name for f in files]}, features=features
    )
    shards = max(1, min(shards, len(ds)))
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(shards):
        part = ds.shard(shards, i, contiguous=True)
        part.to_parquet(str(folder / f"train-{i:05d}-of-{shards:05d}.parquet"))
    return str(folder)


def folder_bytes(url: str) -> int:
    fs, path = fsspec.core.url_to_fs(url)
    return sum(fs.du(p) for p in fs.glob(f"{path.rstrip('/')}/**/*.parquet"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", help="Parquet file/folder/glob URL (default: build one from photos)")
    ap.add_argument("--dst", help="output folder URL (default: OUT/lic)")
    ap.add_argument("--out", help="working folder (default: a temporary folder)")
    ap.add_argument("--column", default="image")
    ap.add_argument("--bpp", type=float, default=0.3)
    ap.add_argument("--model", default=None, help="registry name (default: licstore's default)")
    ap.add_argument("--limit", type=int, default=None, help="use only the first N photos")
    ap.add_argument("--shards", type=int, default=2, help="files of the built dataset")
    where = ap.add_mutually_exclusive_group()
    where.add_argument("--scheduler", help="address of a running Dask scheduler")
    where.add_argument("--workers", type=int, help="processes of the local cluster")
    args = ap.parse_args(argv)

    out = Path(args.out or tempfile.mkdtemp(prefix="licstore-dask-recipe-"))
    src = args.src or build_plain_dataset(out / "plain", args.limit, args.shards)
    dst = args.dst or str(out / "lic")

    report = compress_parquet(
        src,
        dst,
        column=args.column,
        feature=licstore.LICImage(bpp=args.bpp, model=args.model),
        client=args.scheduler,
        workers=args.workers,
    )
    print(report)

    # reload: all a reader needs is `import licstore` (it registers the LICImage feature)
    small = datasets.load_dataset("parquet", data_dir=dst, split="train")
    plain = datasets.load_dataset("parquet", data_dir=src, split="train") if not args.src else None
    assert type(small.features[args.column]).__name__ == "LICImage", small.features
    scores = []
    if plain is not None:
        for a, b in zip(plain, small):
            x = np.asarray(a[args.column].convert("RGB"))
            y = np.asarray(b[args.column].convert("RGB"))
            scores.append(psnr(x, y))
    before, after = folder_bytes(src), folder_bytes(dst)
    print(f"rows reloaded: {len(small)}")
    print(f"bytes before:  {before:,}")
    print(f"bytes after:   {after:,} (LICImage(bpp={args.bpp:g}))")
    print(f"saved:         {100 * (1 - after / before):.1f}%")
    if scores:
        print(f"mean PSNR:     {np.mean(scores):.2f} dB (every reloaded image vs its source)")
    print(f"output:        {dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
