#!/usr/bin/env python
"""An image dataset on S3: estimate the savings, compress it to Parquet, read rows back.

Runs out of the box against a local S3 server (moto's, started by ``tools/local_s3.py`` on
127.0.0.1; ``pip install "moto[server]" s3fs``); give ``--endpoint-url``/``--key``/``--secret``
and ``--bucket`` to run it against any S3-compatible store (the bucket must exist). With
``--endpoint-url`` only, the keys come from the usual AWS places (environment, profile).

1. uploads photos (Kodak next to the repository, else the bundled samples) as a plain
   ``datasets``-style Parquet file (``Image()`` column) to ``s3://BUCKET/PREFIX/plain/``;
2. ``licstore.estimate`` samples it and projects size, PSNR and encode time;
3. ``licstore.parquet.write_table`` writes the compressed copy to ``.../lic/train.parquet``
   (one upload, visible when complete);
4. ``read_images(rows=[i])`` reads one row back (footer + its row group: the bytes it
   fetched are printed when the local server counts them) and ``datasets.load_dataset``
   opens the copy from S3 with ``LICImage`` rows;
5. ``fsspec.open("lic::s3://...")`` stores one photo as a bitstream and reads it back as PNG.

    python recipes/s3_dataset.py [--limit N] [--bpp 0.3] [--sample 4] [--model NAME]
        [--endpoint-url URL --key KEY --secret SECRET --bucket NAME] [--prefix P]
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import sys
import tempfile
from pathlib import Path

import datasets
import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

import licstore
from licstore.cli import demo_images
from licstore.estimate import estimate
from licstore.metrics import psnr
from licstore.parquet import read_images, write_table

ROOT = Path(__file__).resolve().parents[1]


def local_server():
    """tools/local_s3.py's server (a script of this repository, not part of licstore)."""
    spec = importlib.util.spec_from_file_location("local_s3", ROOT / "tools" / "local_s3.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.LocalS3().start()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--endpoint-url", help="S3 endpoint (default: start a local server)")
    ap.add_argument("--key", help="access key id")
    ap.add_argument("--secret", help="secret access key")
    ap.add_argument("--bucket", default="licstore-recipe", help="bucket (created if local)")
    ap.add_argument("--prefix", default="photos", help="key prefix inside the bucket")
    ap.add_argument("--bpp", type=float, default=0.3)
    ap.add_argument("--model", default=None, help="registry name (default: licstore's default)")
    ap.add_argument("--limit", type=int, default=None, help="use only the first N photos")
    ap.add_argument("--sample", type=int, default=4, help="images the estimate encodes")
    args = ap.parse_args(argv)

    server = None
    if args.endpoint_url:
        options = {"endpoint_url": args.endpoint_url}
        options.update({k: v for k, v in (("key", args.key), ("secret", args.secret)) if v})
    else:
        server = local_server()
        server.make_bucket(args.bucket)
        options = dict(server.storage_options)
    base = f"s3://{args.bucket}/{args.prefix}"
    try:
        files = demo_images()[: args.limit]
        photos = [f.read_bytes() for f in files]

        # 1. the dataset as users have it: PNG/JPEG bytes in a datasets Image() column
        features = datasets.Features({"image": datasets.Image(), "name": datasets.Value("string")})
        plain = datasets.Dataset.from_dict(
            {
                "image": [{"bytes": b, "path": f.name} for b, f in zip(photos, files)],
                "name": [f.name for f in files],
            },
            features=features,
        )
        with fsspec.open(f"{base}/plain/train.parquet", "wb", **options) as f:
            pq.write_table(plain.data.table, f, row_group_size=4)

        # 2. what would compressing it save?
        est = estimate(
            f"{base}/plain/",
            sample=min(args.sample, len(files)),
            bpp=args.bpp,
            model=args.model,
            storage_options=options,
        )
        print(est)

        # 3. the compressed copy, written straight to S3
        table = pa.table(
            {"image": plain.data.table.column("image"), "name": plain.data.table.column("name")}
        )
        url = f"{base}/lic/train.parquet"
        write_table(
            table,
            url,
            {"image": licstore.LICImage(bpp=args.bpp, model=args.model)},
            row_group_size=4,
            storage_options=options,
        )

        # 4. one row back, then the whole copy through datasets
        row = len(files) // 2
        if server is not None:
            server.reset_log()
        (image,) = read_images(url, rows=[row], storage_options=options)
        fs = fsspec.core.url_to_fs(url, **options)[0]
        before, after = fs.size(f"{base}/plain/train.parquet"), fs.size(url)
        source = np.asarray(Image.open(io.BytesIO(photos[row])).convert("RGB"))
        print(f"row {row} PSNR:   {psnr(source, np.asarray(image.convert('RGB'))):.2f} dB")
        if server is not None:
            fetched = server.bytes_served(url.removeprefix("s3:/"))
            gets = len(server.requests("GET", url.removeprefix("s3:/")))
            print(f"row {row} fetched: {fetched:,} B in {gets} GETs of a {after:,} B file")
        small = datasets.load_dataset(  # a copy: datasets adds an "hf" entry to the dict
            "parquet",
            data_files=url,
            storage_options=dict(options),
            split="train",
            cache_dir=tempfile.mkdtemp(prefix="licstore-s3-recipe-"),  # this run's copy only
        )
        assert type(small.features["image"]).__name__ == "LICImage", small.features
        scores = [
            psnr(
                np.asarray(Image.open(io.BytesIO(p)).convert("RGB")),
                np.asarray(r["image"].convert("RGB")),
            )
            for p, r in zip(photos, small)
        ]
        print(f"rows reloaded: {len(small)}")
        print(f"bytes before:  {before:,}")
        print(f"bytes after:   {after:,} (LICImage(bpp={args.bpp:g}))")
        print(f"saved:         {100 * (1 - after / before):.1f}%")
        print(f"mean PSNR:     {np.mean(scores):.2f} dB (every reloaded image vs its source)")

        # 5. one photo through the lic:: protocol
        lic_url = f"lic::{base}/single/{files[0].stem}.png"
        with fsspec.open(
            lic_url, "wb", lic={"bpp": args.bpp, "model": args.model}, s3=options
        ) as f:
            f.write(photos[0])
        with fsspec.open(lic_url, "rb", s3=options) as f:
            back = Image.open(io.BytesIO(f.read()))
        stored = fs.size(f"{base}/single/{files[0].stem}.png")
        print(
            f"lic:: stored:  {stored:,} B for a {len(photos[0]):,} B photo, read back as "
            f"{back.format} {back.size[0]}x{back.size[1]}"
        )
    finally:
        if server is not None:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
