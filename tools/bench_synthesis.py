#!/usr/bin/env python
"""Where the bf16 synthesis spends its time: each layer of ``g_s``, as written and as run.

    python tools/bench_synthesis.py [--model NAME] [--images DIR] [--limit N] [--threads 1,2]

"as written" runs the model's ``g_s`` module by module; "as run" runs the form
``synthesize(bf16=True)`` uses (``licstore/models/fast_transforms.py``: narrow transposed
convolutions as convolution + pixel shuffle, inverse GDNs in cache-sized row blocks). Milliseconds per Kodak image (best of 3, mean over
images), bf16 autocast, channels_last. Run it on an idle machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import licstore  # noqa: E402
from licstore import container  # noqa: E402


def layer_times(g_s: torch.nn.Module, y: torch.Tensor, repeat: int = 3) -> list[float]:
    """Best-of-``repeat`` seconds of each child of ``g_s`` on its real input."""
    out = []
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        x = y.contiguous(memory_format=torch.channels_last)
        for layer in g_s:
            nxt = layer(x)  # warm-up (and the input of the next layer)
            best = float("inf")
            for _ in range(repeat):
                t = time.perf_counter()
                layer(x)
                best = min(best, time.perf_counter() - t)
            out.append(best)
            x = nxt
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", default=None, help="registered model (default: the default)")
    ap.add_argument("--images", default=str(ROOT.parent / "shared/data/kodak"))
    ap.add_argument("--limit", type=int, default=2)
    ap.add_argument("--threads", default="1,2")
    args = ap.parse_args(argv)

    net = licstore.models.load(args.model)
    if not hasattr(net, "synthesis_module") or not isinstance(net.g_s, torch.nn.Sequential):
        raise SystemExit(f"{net.name}: its synthesis is not a sequential g_s this tool can time")
    files = sorted(Path(args.images).glob("*.png"))[: args.limit]
    if not files:
        raise SystemExit(f"no PNG images in {args.images}")
    latents = []
    for f in files:
        bs = container.unpack(licstore.encode(Image.open(f).convert("RGB"), model=args.model))
        latents.append(net.decode_latents(bs.layer("base").data, bs.height, bs.width, bs.rate))

    forms = {"as written": net.g_s, "as run": net.synthesis_module(bf16=True)}
    names = [type(m).__name__ for m in net.g_s]
    print(
        f"{net.name}@{net.weights_sha256[:8]}, {len(files)} images from {args.images}, "
        f"torch {torch.__version__}, ms per image"
    )
    print(
        "| threads | form | " + " | ".join(f"{i}: {n}" for i, n in enumerate(names)) + " | total |"
    )
    print("|---|---|" + "---:|" * (len(names) + 1))
    for threads in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(threads)
        for form, g_s in forms.items():
            per_image = [layer_times(g_s, y) for y in latents]
            ms = [1e3 * statistics.mean(col) for col in zip(*per_image)]
            cells = " | ".join(f"{v:.1f}" for v in ms)
            print(f"| {threads} | {form} | {cells} | {sum(ms):.1f} |")


if __name__ == "__main__":
    main()
