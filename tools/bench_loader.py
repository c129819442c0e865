#!/usr/bin/env python
"""Training-loader throughput: LIC shards vs the same images as PNG and JPEG q90 in Parquet.

    python tools/bench_loader.py [--images DIR] [--limit N] [--model mshp-vr] [--bpp 0.3]
                                 [--workers 0 2] [--batch-size 4] [--out FILE]

Writes one Parquet file per format (same rows, same row groups; image bytes stored
uncompressed), then times a PyTorch DataLoader that decodes every image to a CHW uint8
tensor, with each ``--workers`` count: ``licstore.torch.LICDataset`` for LIC, the same
row-group reading with PIL decoding for PNG and JPEG, and LIC bytes decoded by
``BatchDecoder`` (batched synthesis; in the main process on a GPU when one exists).
Reports images/s (one untimed warm-up epoch, then ``--epochs`` timed ones) and the bytes
read from storage per image (the column chunks the loader reads, from the Parquet
metadata). Writes ``benchmarks/bench_loader.json`` and prints a markdown table. Kodak next
to the repository by default; without it the benchmark is skipped. Numbers from a loaded
machine are meaningless: run it on an idle one.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import licstore  # noqa: E402
import licstore.torch as lt  # noqa: E402

KODAK = ROOT.parent / "shared" / "data" / "kodak"
ROW_GROUP = 8


class PILParquetImages(Dataset):
    """PNG/JPEG bytes in Parquet, read the way ``LICDataset`` reads (row group by row group,
    the last one cached), decoded with PIL: the baseline."""

    def __init__(self, path: Path):
        self.path = path
        md = pq.ParquetFile(path).metadata
        self.starts = [0]
        for g in range(md.num_row_groups):
            self.starts.append(self.starts[-1] + md.row_group(g).num_rows)
        self._file = None
        self._cached: tuple[int, list[bytes]] | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_file": None, "_cached": None}

    def __len__(self) -> int:
        return self.starts[-1]

    def __getitem__(self, i: int) -> torch.Tensor:
        g = next(k for k in range(len(self.starts) - 1) if self.starts[k + 1] > i)
        if self._cached is None or self._cached[0] != g:
            if self._file is None:
                self._file = pq.ParquetFile(self.path)
            column = self._file.read_row_group(g, columns=["image"]).column(0)
            self._cached = (g, [row["bytes"] for row in column.to_pylist()])
        image = Image.open(io.BytesIO(self._cached[1][i - self.starts[g]]))
        return lt.to_tensor(image.convert("RGB"))


def keep_list(batch: list) -> list:
    """Collate that keeps a list: Kodak mixes landscape and portrait images."""
    return batch


def write_shards(files: list[Path], work: Path, model: str, bpp: float) -> dict[str, Path]:
    names = [f.name for f in files]
    pngs = [f.read_bytes() for f in files]
    jpegs = []
    for f in files:
        buf = io.BytesIO()
        Image.open(f).convert("RGB").save(buf, "JPEG", quality=90)
        jpegs.append(buf.getvalue())
    image_type = pa.struct({"bytes": pa.binary(), "path": pa.string()})
    out = {}
    for fmt, datas in (("png", pngs), ("jpeg", jpegs)):
        rows = [{"bytes": d, "path": n} for d, n in zip(datas, names)]
        table = pa.table({"image": pa.array(rows, type=image_type), "name": names})
        out[fmt] = work / f"{fmt}.parquet"
        pq.write_table(table, out[fmt], row_group_size=ROW_GROUP, compression="none")
    t = time.perf_counter()
    licstore.parquet.write_table(
        pa.table({"image": pngs, "name": names}),
        work / "lic.parquet",
        {"image": licstore.LICImage(bpp=bpp, model=model)},
        row_group_size=ROW_GROUP,
    )
    print(f"encoded {len(files)} images in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    out["lic"] = work / "lic.parquet"
    return out


def bytes_read_per_image(path: Path) -> float:
    """Column-chunk bytes of the image column (what a loader fetches), per row."""
    md = pq.ParquetFile(path).metadata
    total = 0
    for g in range(md.num_row_groups):
        rg = md.row_group(g)
        for c in range(rg.num_columns):
            if rg.column(c).path_in_schema.split(".")[0] == "image":
                total += rg.column(c).total_compressed_size
    return total / md.num_rows


def images_per_second(loader: DataLoader, epochs: int, after=None) -> float:
    """Images/s over ``epochs`` timed epochs after one warm-up epoch (worker start-up and
    model loading excluded: persistent workers)."""
    n = 0
    for epoch in range(epochs + 1):
        if epoch == 1:
            start, n = time.perf_counter(), 0
        for batch in loader:
            if after is not None:
                batch = after(batch)
            n += len(batch)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return n / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=Path, default=KODAK)
    ap.add_argument("--limit", type=int, default=None, help="use only the first N images")
    ap.add_argument("--model", default="mshp-vr")
    ap.add_argument("--bpp", type=float, default=0.3)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=1, help="timed epochs (after one warm-up)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "bench_loader.json")
    args = ap.parse_args(argv)

    files = sorted(args.images.glob("*.png"))[: args.limit] if args.images.is_dir() else []
    if not files:
        print(f"skipped: no PNG images at {args.images} (Kodak absent?)")
        return 0
    threads = torch.get_num_threads()
    licstore.models.load(args.model)  # once here: forked workers inherit it
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-loader-") as tmp:
        shards = write_shards(files, Path(tmp), args.model, args.bpp)
        pixels = sum(Image.open(f).width * Image.open(f).height for f in files) / len(files)
        cases = [
            ("LIC", "LICDataset", lambda: lt.LICDataset(shards["lic"], output="tensor"), None),
            (
                "LIC",
                "LICDataset(decode=False) + BatchDecoder collate",
                lambda: lt.LICDataset(shards["lic"], decode=False),
                "collate",
            ),
            ("PNG", "PIL", lambda: PILParquetImages(shards["png"]), None),
            ("JPEG q90", "PIL", lambda: PILParquetImages(shards["jpeg"]), None),
        ]
        if torch.cuda.is_available():
            cases.insert(2, ("LIC", "BatchDecoder(cuda) in main", None, "cuda"))
        for workers in args.workers:
            for fmt, how, make, mode in cases:
                collate = keep_list
                after = None
                if mode == "collate":
                    collate = lt.BatchDecoder("cpu", stack=False)
                elif mode == "cuda":
                    make = lambda: lt.LICDataset(shards["lic"], decode=False)  # noqa: E731
                    decoder = lt.BatchDecoder("cuda", stack=False)
                    after = decoder
                loader = DataLoader(
                    make(),
                    batch_size=args.batch_size,
                    num_workers=workers,
                    collate_fn=collate,
                    persistent_workers=workers > 0,
                )
                speed = images_per_second(loader, args.epochs, after)
                del loader
                per_image = bytes_read_per_image(
                    shards["lic" if fmt == "LIC" else fmt.split()[0].lower()]
                )
                rows.append(
                    {
                        "format": fmt,
                        "loader": how,
                        "workers": workers,
                        "images_per_s": round(speed, 2),
                        "bytes_read_per_image": round(per_image),
                        "bpp_read": round(per_image * 8 / pixels, 3),
                    }
                )
                print(f"{fmt:9} {how:48} workers={workers}: {speed:.2f} img/s", file=sys.stderr)
    torch.set_num_threads(threads)
    result = {
        "command": " ".join(
            ["python tools/bench_loader.py", *(argv if argv is not None else sys.argv[1:])]
        ),
        "images": len(files),
        "source": os.path.relpath(args.images, ROOT),
        "model": args.model,
        "lic_bpp_target": args.bpp,
        "batch_size": args.batch_size,
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": threads,
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        "note": "DataLoader workers run one intra-op thread each; workers=0 uses torch_threads",
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print("| format | loader | workers | images/s | bytes read/image | bpp read |")
    print("|---|---|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['format']} | {r['loader']} | {r['workers']} | {r['images_per_s']:.2f} | "
            f"{r['bytes_read_per_image']:,} | {r['bpp_read']:.3f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
