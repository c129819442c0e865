#!/usr/bin/env python
"""Compare the lossless coders of resgdn-vr's code map on a folder of images (Kodak).

    python tools/eval_codemap_coders.py [--images DIR] [--limit N] [--out benchmarks/codemap-coders.md]

For each image and bit depth B, the quantized code map (M channels stacked into one
mosaic) is coded by every coder licstore can write (PNG, JPEG XL lossless) and set against
the zeroth-order entropy of each channel, the size an ideal adaptive arithmetic coder over
the symbols would approach. The codec keeps the smaller of the real coders per image; this
table shows how much each contributes and how far both are from the entropy bound.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from licstore import models, rd  # noqa: E402
from licstore.models import resgdn_vr  # noqa: E402


def measure(net, image, bits_list) -> list[dict]:
    x = torch.from_numpy(np.asarray(image)).permute(2, 0, 1)[None].float() / 255
    h, w = x.shape[-2:]
    ph, pw = (-h) % net.downsampling, (-w) % net.downsampling
    x = torch.nn.functional.pad(x, (0, pw, 0, ph), mode="replicate")
    analyzed = net.analyze(x)
    rows = []
    for bits in bits_list:
        q, _, _ = net._quantize(analyzed, 0, bits)
        mosaic = q.reshape(-1, q.shape[-1])
        sizes = {fmt: len(resgdn_vr._lossless(mosaic, fmt)) for fmt in resgdn_vr.CODERS.values()}
        entropy = resgdn_vr.order0_bytes(q)
        rows.append({"bits": bits, "pixels": h * w, "entropy": entropy, **sizes})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=Path, default=rd.DEFAULT_IMAGES)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--model", default="resgdn-vr")
    ap.add_argument("--out", type=Path, help="also write the table here")
    args = ap.parse_args(argv)

    net = models.load(args.model)
    lo, hi = net.rate_range()
    bits_list = list(range(lo, hi + 1))
    images = rd.load_images(args.images, args.limit)
    if not images:
        raise SystemExit(f"no images in {args.images}")
    rows = [r for _, img in images for r in measure(net, img, bits_list)]
    coders = list(resgdn_vr.CODERS.values())
    lines = [
        f"Code-map coders of `{args.model}` on {len(images)} images from "
        f"`{args.images.name}` (`python tools/eval_codemap_coders.py`): mean bytes of the "
        "code map per image (side info excluded); entropy = sum over channels of the "
        "zeroth-order entropy, the bound of a context-free adaptive arithmetic coder (JPEG XL models context, so it can go below).",
        "",
        "| B | " + " | ".join(f"{c} bytes" for c in coders)
        + " | kept (smaller) | images where JXL wins | order-0 entropy | kept / order-0 |",
        "|---:|" + "---:|" * (len(coders) + 4),
    ]  # fmt: skip
    for bits in bits_list:
        sel = [r for r in rows if r["bits"] == bits]
        means = {c: np.mean([r[c] for r in sel]) for c in coders}
        kept = np.mean([min(r[c] for c in coders) for r in sel])
        jxl_wins = sum(r["JXL"] < r["PNG"] for r in sel)
        entropy = np.mean([r["entropy"] for r in sel])
        lines.append(
            f"| {bits} | "
            + " | ".join(f"{means[c]:,.0f}" for c in coders)
            + f" | {kept:,.0f} | {jxl_wins} / {len(sel)} | {entropy:,.0f} | {kept / entropy:.2f} |"
        )
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        args.out.write_text(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
