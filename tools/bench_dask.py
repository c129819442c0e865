#!/usr/bin/env python
"""Throughput of ``licstore.dask.compress_parquet`` with 1 and 2 workers, and its per-image
cost next to calling ``licstore.encode_batch`` directly, on Kodak stored as PNG in Parquet.

    python tools/bench_dask.py [--images DIR] [--limit N] [--model mshp-vr] [--bpp 0.3]
        [--shard-rows 2] [--out benchmarks/bench_dask.json]

Each worker is one process with one thread and one torch thread; the direct baseline runs
in this process with one torch thread too, so "per image" compares like with like. Worker
start-up, model loading and first-call set-up are excluded (each worker, like the baseline,
encodes one image first); the content cache is
off (``LICSTORE_CACHE_MAX_BYTES=0``), so both runs encode every image. PSNR sampling is off
(``--psnr-samples 0``) because it decodes rows, which the baseline does not. Targets
(reported, not enforced): 2 workers >= 1.7x one worker; per image within 15% of direct.
Writes the JSON to ``--out`` and prints a markdown table. Skips (exit 0) without Kodak.
Run it on an otherwise idle machine: numbers from a loaded one are meaningless.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ["LICSTORE_CACHE_MAX_BYTES"] = "0"  # before licstore is imported; workers inherit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pyarrow.parquet as pq  # noqa: E402

import licstore  # noqa: E402


def write_shards(files: list[Path], folder: Path, shard_rows: int) -> None:
    """Kodak's PNG bytes as a ``datasets`` ``Image()`` column, ``shard_rows`` rows a file."""
    import datasets

    features = datasets.Features({"image": datasets.Image(), "name": datasets.Value("string")})
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(0, len(files), shard_rows):
        part = files[k : k + shard_rows]
        ds = datasets.Dataset.from_dict(
            {
                "image": [{"bytes": f.read_bytes(), "path": f.name} for f in part],
                "name": [f.name for f in part],
            },
            features=features,
        )
        ds.to_parquet(str(folder / f"train-{k // shard_rows:05d}.parquet"))


def direct_seconds(files: list[Path], model: str, bpp: float) -> float:
    """``encode_batch`` over the PNG bytes in this process, one torch thread, model warm."""
    import torch

    torch.set_num_threads(1)
    datas = [f.read_bytes() for f in files]
    licstore.encode_batch(datas[:1], bpp=bpp, model=model)  # load the model
    t = time.perf_counter()
    licstore.encode_batch(datas, bpp=bpp, model=model)
    return time.perf_counter() - t


def job_seconds(src: Path, dst: Path, workers: int, model: str, bpp: float, psnr: int):
    import dask
    import distributed

    from licstore.dask import WORKER_CONFIG, LicstoreWorkerPlugin, compress_parquet

    with (
        dask.config.set(WORKER_CONFIG),  # as compress_parquet(client=None) starts its cluster
        distributed.LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",
            silence_logs=40,
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        client.register_plugin(LicstoreWorkerPlugin(model, "cpu", 1))  # model loaded
        # warm as the direct baseline is: one encode per worker (first-call kernel set-up)
        first = next(iter(sorted(src.glob("*.parquet"))))
        sample = pq.read_table(first).column("image")[0]["bytes"].as_py()
        client.run(licstore.encode_batch, [sample], bpp=bpp, model=model)
        threads = set(client.run(lambda: __import__("torch").get_num_threads()).values())
        report = compress_parquet(
            str(src),
            str(dst),
            feature=licstore.LICImage(bpp=bpp, model=model),
            client=client,
            device="cpu",
            psnr_samples=psnr,
            progress=False,
        )
    return report, threads


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", default=str(ROOT.parent / "shared" / "data" / "kodak"))
    ap.add_argument("--limit", type=int, default=None, help="use only the first N images")
    ap.add_argument("--model", default=licstore.models.DEFAULT_MODEL)
    ap.add_argument("--bpp", type=float, default=0.3)
    ap.add_argument("--shard-rows", type=int, default=2, help="rows per input file (= task)")
    ap.add_argument("--psnr-samples", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "bench_dask.json"))
    args = ap.parse_args(argv)

    files = sorted(Path(args.images).glob("*.png"))[: args.limit]
    if not files:
        print(f"skipped: no PNG images in {args.images}")
        return 0
    work = Path(tempfile.mkdtemp(prefix="licstore-bench-dask-"))
    try:
        write_shards(files, work / "src", args.shard_rows)
        direct = direct_seconds(files, args.model, args.bpp)
        runs = {}
        for n in (1, 2):
            report, threads = job_seconds(
                work / "src", work / f"dst{n}", n, args.model, args.bpp, args.psnr_samples
            )
            if report.rows_encoded != len(files):
                raise SystemExit(f"{n} workers encoded {report.rows_encoded} of {len(files)}")
            runs[n] = {
                "seconds": report.wall_seconds,
                "images_per_second": len(files) / report.wall_seconds,
                "torch_threads_per_worker": sorted(threads),
                "mean_bpp": report.mean_bpp,
                "bytes_in": report.bytes_in,
                "bytes_out": report.bytes_out,
            }
    finally:
        shutil.rmtree(work, ignore_errors=True)

    n = len(files)
    per_direct = direct / n
    per_job = runs[1]["seconds"] / n
    speedup = runs[2]["images_per_second"] / runs[1]["images_per_second"]
    result = {
        "command": "python tools/bench_dask.py " + " ".join(argv or sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "model": args.model,
        "bpp": args.bpp,
        "images": n,
        "shard_rows": args.shard_rows,
        "psnr_samples": args.psnr_samples,
        "direct_encode_batch": {"seconds": direct, "seconds_per_image": per_direct},
        "workers": {str(k): v for k, v in runs.items()},
        "speedup_2_vs_1": speedup,
        "per_image_overhead_vs_direct": per_job / per_direct - 1,
        "targets": {"speedup_2_vs_1": ">= 1.7", "per_image_overhead_vs_direct": "<= 0.15"},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")

    print(f"{n} Kodak images, model {args.model}, bpp {args.bpp}, {args.shard_rows} rows/task")
    print()
    print("| run | seconds | images/s | s/image |")
    print("|---|---:|---:|---:|")
    print(f"| encode_batch, 1 thread | {direct:.1f} | {n / direct:.2f} | {per_direct:.2f} |")
    for k, r in runs.items():
        print(
            f"| compress_parquet, {k} worker{'s' if k > 1 else ''} | {r['seconds']:.1f} "
            f"| {r['images_per_second']:.2f} | {r['seconds'] / n:.2f} |"
        )
    print()
    print(f"2 vs 1 workers: {speedup:.2f}x (target >= 1.7x)")
    print(
        f"per image, 1 worker vs encode_batch: {100 * (per_job / per_direct - 1):+.1f}% "
        "(target <= +15%)"
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
