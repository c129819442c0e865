#!/usr/bin/env python
"""The y-latent entropy decode per image: escapes, the bounded route taken, and its cost.

    python tools/bench_rans.py [--images DIR ...] [--limit N] [--qualities 1,4,8] [--json OUT]

For each image and quality level, encodes with the default model, counts the escaped symbols
in the y string (symbols outside their CDF table, coded by CompressAI's bypass mode), then
times ``licstore``'s bounded decode of that string (``entropy._TableCoder.decode``: "guarded"
or "checked", see its docstring) against one call of CompressAI's own decoder on a
generously padded buffer (what licstore did before its reads were bounded). Escapes also cost
bits, so their count says where the model's tables are too narrow for the images.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from licstore import codec, entropy, models  # noqa: E402


def _best_of(fn, *args, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - t)
    return min(times)


def measure(net, path: Path, qualities: list[int]) -> list[dict]:
    from compressai.ans import RansDecoder

    with Image.open(path) as im:
        rgb = np.asarray(im.convert("RGB"))
    analyzed = net.analyze(codec._to_tensor([rgb], net.downsampling, torch.device("cpu")))
    coder = net.y_coder
    offset, length = np.asarray(coder.offset), np.asarray(coder.cdf_length)
    rows = []
    for q in qualities:
        rate = net.quality_to_rate(q)
        sym, idx = net._y_symbols(analyzed, 0, rate)
        data = coder.encode(sym, idx)
        value = sym - offset[idx]
        escapes = int(((value < 0) | (value >= length[idx] - 2)).sum())
        entropy.rans_routes.clear()
        assert np.array_equal(coder.decode(data, idx), sym)
        route = "+".join(sorted(entropy.rans_routes))
        bounded = _best_of(coder.decode, data, idx)
        flat = idx.reshape(-1).astype(np.int32).tolist()
        padded = data + bytes(8 * len(flat) + 64 + 8 * len(data))
        tables = (coder.cdfs, coder.cdf_length, coder.offset)
        unbounded = _best_of(RansDecoder().decode_with_indexes, padded, flat, *tables)
        rows.append(
            {
                "image": path.name,
                "size": f"{rgb.shape[1]}x{rgb.shape[0]}",
                "quality": q,
                "symbols": int(sym.size),
                "escapes": escapes,
                "route": route,
                "bounded_ms": round(bounded * 1e3, 1),
                "compressai_ms": round(unbounded * 1e3, 1),
            }
        )
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default = [ROOT.parent / "shared/data/kodak", ROOT.parent / "shared/data/train-hr"]
    ap.add_argument("--images", type=Path, nargs="+", default=default)
    ap.add_argument("--limit", type=int, default=4, help="first N images of each folder")
    ap.add_argument("--qualities", default="1,4,8")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    net = models.load("mshp-vr")
    qualities = [int(q) for q in args.qualities.split(",")]
    rows = []
    for folder in args.images:
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in {".png", ".jpg"})
        for path in files[: args.limit]:
            rows += measure(net, path, qualities)
    cols = list(rows[0]) if rows else []
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
