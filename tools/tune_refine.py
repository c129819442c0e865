#!/usr/bin/env python
"""One refinement schedule on Kodak crops: how much RD loss it removes (tuning ``effort``).

Per image: the coded RD loss ``lambda * 255^2 * MSE + bpp`` (table bits, decoded pixels) of
the amortized latents and of the refined ones at one quality level, bytes, PSNR, the soft and
hard loss at the end of the run, and the seconds it took. Example (BENCHMARKS.md)::

    python tools/tune_refine.py kodim03,kodim23 4 '{"iterations": 100, "hard_iterations": 20}'
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from licstore import codec, models  # noqa: E402
from licstore.metrics import psnr  # noqa: E402
from licstore.rd import DEFAULT_IMAGES  # noqa: E402
from licstore.refine import Schedule, coded_loss, refine  # noqa: E402


def main(argv: list[str]) -> int:
    names, quality, spec = argv[0].split(","), int(argv[1]), json.loads(argv[2])
    bf16 = len(argv) > 3 and argv[3] == "bf16"
    schedule = Schedule(**spec)
    net = models.load("mshp-vr")
    rate = net.quality_to_rate(quality)
    for name in names:
        img = np.asarray(Image.open(DEFAULT_IMAGES / f"{name}.png").convert("RGB"))
        img = np.ascontiguousarray(img[128:384, 256:512])  # 256 x 256 crop
        x = codec._to_tensor([img], net.downsampling, torch.device("cpu"))
        a = net.analyze(x)
        size = img.shape[:2]
        t = time.perf_counter()
        log: list = []
        r = refine(net, x, a, 0, rate, schedule, size=size, bf16=bf16, log=log)
        seconds = time.perf_counter() - t

        def decoded_psnr(latents, img=img, size=size) -> float:
            y = net.reconstruct_latents(latents, 0, rate)
            rec = net.synthesize(y)[0, :, : size[0], : size[1]].permute(1, 2, 0)
            return psnr(img, (rec.numpy() * 255).round().clip(0, 255).astype(np.uint8))

        l0, l1 = coded_loss(net, a, 0, x, size, rate), coded_loss(net, r, 0, x, size, rate)
        soft = log[schedule.iterations - 1][1] if schedule.iterations else float("nan")
        print(
            f"{name} q{quality} loss {l0:.4f}->{l1:.4f} ({(l1 / l0 - 1) * 100:+.1f}%) bytes "
            f"{net.estimate_bytes(a, 0, rate):.0f}->{net.estimate_bytes(r, 0, rate):.0f} psnr "
            f"{decoded_psnr(a):.2f}->{decoded_psnr(r):.2f} soft_end {soft:.4f} "
            f"final {log[-1][1]:.4f} {seconds:.1f}s",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
