#!/usr/bin/env python
"""S3 benchmark: bytes fetched by single-row reads, and ``licstore estimate`` against the real
compressed size, on a local S3 server (tools/local_s3.py: moto on 127.0.0.1, requests counted).

1. Kodak (``../shared/data/kodak``, 24 PNGs; else ``--images DIR``) goes to S3 as a plain
   ``datasets``-style Parquet file (``Image()`` column, ``--row-group-size`` rows per group).
2. ``licstore.estimate`` samples ``--sample`` images (seed ``--seed``) and projects the size.
3. ``licstore.parquet.write_table`` compresses the whole file to S3: the real size and time.
4. ``read_images(rows=[i])`` on the compressed file, and on a bigger one (the same bitstreams
   repeated ``--repeat`` times, passed through), counting the bytes and GETs the server served.

Prints Markdown for BENCHMARKS.md (``--out FILE`` also writes it).

    python tools/bench_s3.py [--bpp 0.3] [--sample 8] [--seed 0] [--repeat 10]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
KODAK = ROOT.parent / "shared" / "data" / "kodak"


def _local_s3():
    spec = importlib.util.spec_from_file_location("local_s3", ROOT / "tools" / "local_s3.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        flags = Path("/proc/cpuinfo").read_text()
        if "amx_tile" in flags:
            cpu += " (AMX)"
    except OSError:
        pass
    load = "/".join(f"{x:.1f}" for x in os.getloadavg())
    return f"{cpu}, {os.cpu_count()} cores, load average {load}"


def single_row_reads(s3, url: str, rows: list[int], options: dict) -> list[dict]:
    from licstore.parquet import read_images

    fs = s3.filesystem()
    key = url.removeprefix("s3:/")
    size = fs.size(url.removeprefix("s3://"))
    with fs.open(url.removeprefix("s3://")) as f:
        md = pq.ParquetFile(f).metadata
    out = []
    for row in rows:
        s3.reset_log()
        started = time.perf_counter()
        read_images(url, rows=[row], storage_options=options)
        seconds = time.perf_counter() - started
        out.append(
            {
                "row": row,
                "file": size,
                "groups": md.num_row_groups,
                "rows": md.num_rows,
                "fetched": s3.bytes_served(key),
                "gets": len(s3.requests("GET", key)),
                "requests": len(s3.requests(path=key)),
                "seconds": seconds,
            }
        )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=Path, default=KODAK, help="folder of PNGs (default Kodak)")
    ap.add_argument("--bpp", type=float, default=0.3)
    ap.add_argument("--sample", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--row-group-size", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=10, help="copies in the bigger file")
    ap.add_argument("--out", type=Path, help="also write the Markdown here")
    args = ap.parse_args(argv)

    files = sorted(args.images.glob("*.png"))
    if not files:
        print(f"no PNGs in {args.images} (Kodak is not beside the repository)", file=sys.stderr)
        return 1
    import licstore
    from licstore.estimate import estimate
    from licstore.parquet import write_table

    where = machine()
    s3 = _local_s3().LocalS3().start()
    try:
        s3.make_bucket("bench")
        options = s3.storage_options
        fs = s3.filesystem()
        pngs = [f.read_bytes() for f in files]
        plain = pa.table(
            {
                "image": pa.array([{"bytes": b, "path": f.name} for b, f in zip(pngs, files)]),
                "name": pa.array([f.name for f in files]),
            }
        )
        with fs.open("bench/plain/train.parquet", "wb") as f:
            pq.write_table(plain, f, row_group_size=args.row_group_size)

        started = time.perf_counter()
        est = estimate(
            "s3://bench/plain/",
            sample=args.sample,
            seed=args.seed,
            bpp=args.bpp,
            storage_options=options,
        )
        est_seconds = time.perf_counter() - started

        started = time.perf_counter()
        url = "s3://bench/lic/train.parquet"
        write_table(
            plain,
            url,
            {"image": licstore.LICImage(bpp=args.bpp)},
            row_group_size=args.row_group_size,
            storage_options=options,
        )
        real_seconds = time.perf_counter() - started
        with fs.open("bench/lic/train.parquet") as f:
            table = pq.read_table(f)
        real_images = sum(len(r["bytes"]) for r in table.column("image").to_pylist())
        real_file = fs.size("bench/lic/train.parquet")
        plain_file = fs.size("bench/plain/train.parquet")

        n = len(files)
        reads = single_row_reads(s3, url, [0, n // 2, n - 1], options)
        big = pa.concat_tables([table] * args.repeat)  # bitstreams: passed through
        big_url = "s3://bench/lic/big.parquet"
        write_table(
            big,
            big_url,
            {"image": licstore.LICImage(bpp=args.bpp)},
            row_group_size=10,
            storage_options=options,
        )
        m = big.num_rows
        reads += single_row_reads(s3, big_url, [0, m // 2, m - 1], options)
    finally:
        s3.stop()

    c, pct = est.compressed_image_bytes, round(100 * est.confidence)
    inside = "inside" if c.low <= real_images <= c.high else "OUTSIDE"
    lines = [
        f"Machine: {where}. Command: `python tools/bench_s3.py --bpp {args.bpp:g} "
        f"--sample {args.sample} --seed {args.seed}` ({n} images from {args.images.name}/, "
        f"local S3 server: moto on 127.0.0.1, bytes counted by the server).",
        "",
        f"**Estimate vs real** (`licstore estimate`, {args.sample} of {n} images sampled, "
        f"bpp={args.bpp:g}, default model):",
        "",
        "| | image bytes | file bytes | PSNR (dB) | encode time, one process |",
        "|---|---:|---:|---:|---:|",
        f"| as stored (PNG in Parquet) | {est.current_image_bytes:,} | {plain_file:,} | | |",
        f"| estimate ({pct}% CI) | {c.value:,.0f} ({c.low:,.0f} .. {c.high:,.0f}) "
        f"| {est.projected_total_bytes.value:,.0f} "
        f"| {est.psnr.value:.2f} ({est.psnr.low:.2f} .. {est.psnr.high:.2f}) "
        f"| {est.encode_seconds.value:.0f} s ({est.encode_seconds.low:.0f} .. "
        f"{est.encode_seconds.high:.0f}) |",
        f"| real (`write_table` to S3) | {real_images:,} | {real_file:,} | | "
        f"{real_seconds:.0f} s (with upload) |",
        "",
        f"The real size is {inside} the interval ({100 * (est.compressed_image_bytes.value / real_images - 1):+.1f}% "
        f"estimate error); the estimate itself took {est_seconds:.0f} s.",
        "",
        "**Single-row reads** (`read_images(url, rows=[i])`, the footer and one row group):",
        "",
        "| file | rows / row groups | row | bytes fetched | GETs (all requests) | fetched / file |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in reads:
        lines.append(
            f"| {r['file']:,} B | {r['rows']} / {r['groups']} | {r['row']} | {r['fetched']:,} "
            f"| {r['gets']} ({r['requests']}) | {100 * r['fetched'] / r['file']:.1f}% |"
        )
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
