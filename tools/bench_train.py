#!/usr/bin/env python
"""Training throughput of an architecture: patches/s by precision and memory layout.

    python tools/bench_train.py [--arch mshp-vr] [--batch 16] [--crop 128] [--steps 4]

Times the costly part of a ``tools/train.py`` step (forward, RD loss as ``train.py
--lambda-balance 0.25`` computes it, backward, Adam step; not its gradient clipping or the
small auxiliary entropy-bottleneck step) on random crops, in fp32 and bf16 autocast,
contiguous and channels_last. Run it before a training stage: bf16 is the fast path only where the CPU has native bf16 (AMX or AVX-512
BF16); elsewhere torch emulates it, several times slower than fp32. Run it on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from licstore.models import registry  # noqa: E402  (the package registers every architecture)
from licstore.precision import native_bf16  # noqa: E402

sys.path.insert(0, str(ROOT / "tools"))
from train import geometric_mean_lambda, rd_loss  # noqa: E402


def patches_per_second(
    model: torch.nn.Module,
    batch: int,
    crop: int,
    steps: int,
    bf16: bool,
    channels_last: bool,
    lambda_balance: float = 0.25,
) -> float:
    """Steps after one warm-up step, timed; ``model`` is trained in place (a throwaway)."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-5)
    gen = torch.Generator().manual_seed(0)
    lam_mean = None if hasattr(model, "training_loss") else geometric_mean_lambda(model)
    t0 = 0.0
    for i in range(steps + 1):
        if i == 1:
            t0 = time.perf_counter()
        x = torch.rand(batch, 3, crop, crop, generator=gen).contiguous(memory_format=fmt)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            if hasattr(model, "training_loss"):
                loss, _ = model.training_loss(x)
            else:
                r = torch.rand(batch, generator=gen) * (model.levels - 1)
                loss, _, _ = rd_loss(model, model(x, r), x, r, lam_mean, lambda_balance)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return steps * batch / (time.perf_counter() - t0)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--arch", "--model", default="mshp-vr")
    ap.add_argument("--arch-kwargs", default="{}", help="JSON kwargs for the architecture")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--crop", type=int, default=128)
    ap.add_argument("--steps", type=int, default=4, help="timed steps per configuration")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cls = registry.model_class(args.arch)
    kwargs = json.loads(args.arch_kwargs)
    result = {
        "arch": args.arch,
        "arch_kwargs": kwargs,
        "batch": args.batch,
        "crop": args.crop,
        "threads": args.threads,
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "native_bf16": native_bf16("cpu"),
        "patches_per_s": {},
    }
    print(
        f"{args.arch}, batch {args.batch} of {args.crop}x{args.crop}, {args.threads} threads, "
        f"torch {torch.__version__}, CPU capability {result['cpu_capability']}, "
        f"native bf16: {result['native_bf16']}"
    )
    print("| precision | layout | patches/s |\n|---|---|---:|")
    for bf16 in (False, True):
        for channels_last in (False, True):
            rate = patches_per_second(
                cls(**kwargs), args.batch, args.crop, args.steps, bf16, channels_last
            )
            precision, layout = (
                "bf16" if bf16 else "fp32",
                ("channels_last" if channels_last else "contiguous"),
            )
            result["patches_per_s"][f"{precision} {layout}"] = rate
            print(f"| {precision} | {layout} | {rate:.1f} |", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
