#!/usr/bin/env python
"""What ``effort=`` (encoder-side latent refinement, ``licstore.refine``) costs and buys.

Per effort level and quality level: mean coded bpp and decoded PSNR through the public
``licstore.encode`` / ``decode``, encode seconds per image, and BD-rate against effort 0
and, for full Kodak images, against the HEVC 4:4:4 and WebP curves of the same images in
``benchmarks/rd-kodak.json``. Writes ``<out>.json`` and ``<out>.md`` (also printed), with
the CPU and the load average (timings on a shared machine are loaded). Example::

    python tools/eval_effort.py --limit 6 --qualities 2,4,6,8 --efforts 0,1,2
    python tools/eval_effort.py --crop 256 --limit 3 --qualities 3,5 --efforts 0,1   # tuning
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import licstore  # noqa: E402
from licstore.metrics import bd_rate  # noqa: E402
from licstore.metrics import psnr as _psnr  # noqa: E402
from licstore.rd import DEFAULT_IMAGES, load_images  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ANCHORS = {"hevc444": "HEVC 4:4:4", "webp": "WebP"}


def cpu_name() -> str:
    """Model name, core count and whether the CPU has AMX (the bf16 fast path)."""
    name, flags = platform.processor() or "unknown CPU", ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and name == (platform.processor() or "unknown CPU"):
                name = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = line
    except OSError:
        pass
    amx = " with AMX" if "amx_bf16" in flags else ""
    return f"{name}{amx}, {os.cpu_count()} logical CPUs, {torch.get_num_threads()} torch threads"


def _crop(img: Image.Image, spec: str | None) -> Image.Image:
    """Centre crop to ``W`` (square) or ``WxH``."""
    if not spec:
        return img
    w, _, h = spec.partition("x")
    w, h = int(w), int(h or w)
    left, top = (img.width - w) // 2, (img.height - h) // 2
    return img.crop((left, top, left + w, top + h))


def measure(images, qualities, efforts) -> dict:
    """{effort: [{quality, bpp, psnr, enc_s, per_image}]} through the public API."""
    out: dict[int, list[dict]] = {}
    for effort in efforts:
        points = []
        for q in qualities:
            per = []
            for name, img in images:
                t = time.perf_counter()
                data = licstore.encode(img, quality=q, effort=effort)
                enc_s = time.perf_counter() - t
                rec = licstore.decode(data)
                bpp = len(data) * 8 / (img.width * img.height)
                per.append(
                    {
                        "image": name,
                        "bytes": len(data),
                        "bpp": bpp,
                        "psnr": _psnr(np.asarray(img), np.asarray(rec)),
                        "enc_s": enc_s,
                    }
                )
                print(
                    f"effort {effort} q{q} {name}: {len(data)} B, {bpp:.4f} bpp, "
                    f"{per[-1]['psnr']:.3f} dB, {enc_s:.1f} s",
                    flush=True,
                )
            points.append(
                {
                    "quality": q,
                    **{k: float(np.mean([r[k] for r in per])) for k in ("bpp", "psnr", "enc_s")},
                    "per_image": per,
                }
            )
        out[effort] = points
    return out


def anchor_curves(names: list[str], path: Path) -> dict[str, tuple[list, list]]:
    """Mean (bpp, PSNR) per quality of the anchors over exactly these images."""
    if not path.exists():
        return {}
    rd = json.loads(path.read_text())
    curves = {}
    for key in ANCHORS:
        codec = rd["codecs"].get(key)
        if not codec:
            continue
        bpp, psnr = [], []
        for p in codec["points"]:
            rows = [r for r in p["per_image"] if r["image"] in names]
            if len(rows) == len(names):
                bpp.append(float(np.mean([r["bpp"] for r in rows])))
                psnr.append(float(np.mean([r["psnr"] for r in rows])))
        if len(bpp) >= 2:
            curves[key] = (bpp, psnr)
    return curves


def _bd(anchor, points) -> float | None:
    try:
        return bd_rate(
            anchor[0], anchor[1], [p["bpp"] for p in points], [p["psnr"] for p in points]
        )
    except ValueError:  # curves do not overlap
        return None


def table(result: dict, anchors: dict) -> str:
    base = result["efforts"]["0"] if "0" in result["efforts"] else None
    head = "| effort | bpp | PSNR dB | BD-rate vs effort 0 |"
    head += "".join(f" BD-rate vs {ANCHORS[k]} |" for k in anchors)
    head += " encode s/image |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for effort, points in result["efforts"].items():
        vs0 = _bd((([p["bpp"] for p in base]), [p["psnr"] for p in base]), points) if base else None
        cells = [
            effort,
            " / ".join(f"{p['bpp']:.3f}" for p in points),
            " / ".join(f"{p['psnr']:.2f}" for p in points),
            "-" if effort == "0" or vs0 is None else f"{vs0:+.1f}%",
        ]
        for key in anchors:
            v = _bd(anchors[key], points)
            cells.append("n/a" if v is None else f"{v:+.1f}%")
        cells.append(f"{np.mean([p['enc_s'] for p in points]):.1f}")
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", default=str(DEFAULT_IMAGES))
    ap.add_argument("--limit", type=int, default=6)
    ap.add_argument("--crop", default=None, help="centre crop W or WxH (tuning; no anchors)")
    ap.add_argument("--qualities", default="2,4,6,8")
    ap.add_argument("--efforts", default="0,1,2")
    ap.add_argument("--anchors", default=str(ROOT / "benchmarks" / "rd-kodak.json"))
    ap.add_argument("--out", default=str(ROOT / "results" / "eval_effort"))
    args = ap.parse_args(argv)
    qualities = [int(q) for q in args.qualities.split(",")]
    efforts = [int(e) for e in args.efforts.split(",")]
    images = [
        (n, _crop(im.convert("RGB"), args.crop)) for n, im in load_images(args.images, args.limit)
    ]
    load0 = os.getloadavg()
    t0 = time.time()
    measured = measure(images, qualities, efforts)
    result = {
        "command": " ".join(["python", "tools/eval_effort.py", *(argv or sys.argv[1:])]),
        "cpu": cpu_name(),
        "load_average_start_end": [load0[0], os.getloadavg()[0]],
        "wall_s": time.time() - t0,
        "images": [n for n, _ in images],
        "crop": args.crop,
        "efforts": {str(e): pts for e, pts in measured.items()},
    }
    anchors = {} if args.crop else anchor_curves(result["images"], Path(args.anchors))
    md = [
        f"`{result['command']}`",
        "",
        f"{len(images)} images ({', '.join(result['images'])})"
        + (f", centre crops {args.crop}" if args.crop else "")
        + f", qualities {args.qualities}; {result['cpu']}; load average "
        f"{load0[0]:.1f} at start, {result['load_average_start_end'][1]:.1f} at end.",
        "",
        table(result, anchors),
    ]
    text = "\n".join(md)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    out.with_suffix(".md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
