#!/usr/bin/env python
"""Train a licstore model (default: ``mshp-vr``) on a folder of photos.

Rate-distortion loss ``lambda(r) * 255^2 * MSE + bpp`` with a rate parameter ``r`` drawn
per sample, so one network learns every rate. Time-budgeted (``--hours``): the learning
rate follows a cosine over the budget, checkpoints are written atomically every few
minutes, ``--resume`` continues a run, ``--init-from`` starts from shipped weights.
``--clock cpu`` counts the budget in CPU time of the process instead of wall time, so that
runs sharing the machine with other work still get equal work (equal-time ablations).
A Kodak evaluation is logged periodically so the RD curve over time is visible.

Example::

    nohup python tools/train.py --out runs/mshp-vr --hours 2 --bf16 &   # fp32 where bf16 is emulated
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import random
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from licstore.models import (
    mshp_vr,  # noqa: E402,F401  (registers the architecture)
    registry,  # noqa: E402
)
from licstore.precision import native_bf16  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def load_photos(folder: Path, scales=(1.0, 0.75, 0.5), min_side: int = 128) -> list[np.ndarray]:
    """All photos of ``folder`` in memory, each also downscaled (antialiased) by ``scales``."""
    out = []
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    if not files:
        raise SystemExit(f"no training images in {folder}")
    for p in files:
        with Image.open(p) as im:
            im = im.convert("RGB")
            for s in scales:
                w, h = round(im.width * s), round(im.height * s)
                if min(w, h) < min_side:
                    continue
                out.append(np.asarray(im.resize((w, h), Image.BICUBIC) if s != 1 else im))
    return out


def random_batch(
    photos: list[np.ndarray], batch: int, crop: int, rng: random.Random
) -> torch.Tensor:
    patches = []
    for _ in range(batch):
        a = photos[rng.randrange(len(photos))]
        y = rng.randrange(a.shape[0] - crop + 1)
        x = rng.randrange(a.shape[1] - crop + 1)
        p = a[y : y + crop, x : x + crop]
        if rng.random() < 0.5:
            p = p[:, ::-1]
        patches.append(np.ascontiguousarray(p))
    t = torch.from_numpy(np.stack(patches)).permute(0, 3, 1, 2).float().div_(255)
    return t.contiguous(memory_format=torch.channels_last)


def rd_terms(out: dict, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample MSE and bpp."""
    n_px = x.shape[2] * x.shape[3]
    mse = (out["x_hat"].float() - x).pow(2).flatten(1).mean(1)
    bits = sum(lk.log2().flatten(1).sum(1) for lk in out["likelihoods"].values())
    return mse, -bits / n_px


def geometric_mean_lambda(model) -> float:
    """Geometric mean of a variable-rate model's lambdas over its rate levels."""
    levels = torch.arange(model.levels, dtype=torch.float32)
    return float(model.lambdas(levels).log().mean().exp())


def rd_loss(
    model, out: dict, x: torch.Tensor, r: torch.Tensor, lam_mean: float, balance: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, per-sample MSE, per-sample bpp) of a variable-rate model at rates ``r``.

    Each sample's ``lambda * 255**2 * MSE + bpp`` is weighted by ``(lambda / lam_mean) **
    -balance``, so that the high rates (large lambda) do not dominate the mean.
    """
    mse, bpp = rd_terms(out, x)
    lam = model.lambdas(r)
    weight = (lam / lam_mean) ** -balance
    return (weight * (lam * 255**2 * mse + bpp)).mean(), mse, bpp


@torch.no_grad()
def is_outlier(loss: float, recent: Sequence[float], factor: float) -> bool:
    """A non-finite loss, or one over ``factor`` x the median of ``recent`` (after 20 steps)."""
    if not math.isfinite(loss):
        return True
    if factor <= 0 or len(recent) < 20:
        return False
    return loss > factor * statistics.median(recent)


def quick_kodak_eval(model, kodak: list[torch.Tensor], rates=(0.0, 3.5, 7.0)) -> list[dict]:
    """Estimated bpp (from likelihoods, with rounding) and PSNR on a few Kodak images."""
    model.eval()
    if hasattr(model, "training_loss"):  # models without a rate term: real coded sizes
        return _coded_kodak_eval(model, kodak)
    res = []
    for r in rates:
        bpps, psnrs = [], []
        for x in kodak:
            out = model(x, torch.tensor([r]))
            mse, bpp = rd_terms(out, x)
            mse = (out["x_hat"].clamp(0, 1) - x).pow(2).mean()
            psnrs.append(float(10 * torch.log10(1 / mse)))
            bpps.append(float(bpp))
        res.append({"r": r, "bpp": float(np.mean(bpps)), "psnr": float(np.mean(psnrs))})
    model.train()
    return res


@torch.no_grad()
def _coded_kodak_eval(model, kodak: list[torch.Tensor]) -> list[dict]:
    lo, hi = model.rate_range()
    res = []
    for rate in (lo, (lo + hi) // 2, hi):
        bpps, psnrs = [], []
        for x in kodak:
            a = model.analyze(x)
            n_bytes = len(model.encode_latents(a, 0, rate))
            x_hat = model.synthesize(model.reconstruct_latents(a, 0, rate))
            mse = (x_hat - x).pow(2).mean()
            psnrs.append(float(10 * torch.log10(1 / mse)))
            bpps.append(n_bytes * 8 / (x.shape[2] * x.shape[3]))
        res.append({"r": rate, "bpp": float(np.mean(bpps)), "psnr": float(np.mean(psnrs))})
    model.train()
    return res


def save_atomic(obj, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--arch", "--model", dest="arch", default="mshp-vr")
    ap.add_argument("--arch-kwargs", default="{}", help="JSON kwargs for the architecture")
    ap.add_argument("--data", default=str(ROOT.parent / "shared/data/train"))
    ap.add_argument("--kodak", default=str(ROOT.parent / "shared/data/kodak"))
    ap.add_argument("--out", required=True, help="run folder: checkpoints and log.jsonl")
    ap.add_argument(
        "--hours",
        type=float,
        default=2.0,
        help="budget of the whole run, by --clock (a resumed run continues to it)",
    )
    ap.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="what --hours counts: wall time, or CPU time of this process (all threads)",
    )
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--crop", type=int, default=128)
    ap.add_argument("--lr", type=float, default=5e-4, help="peak learning rate")
    ap.add_argument("--lr-min", type=float, default=2e-5)
    ap.add_argument("--warmup", type=int, default=300, help="warm-up steps")
    ap.add_argument(
        "--bf16",
        action="store_true",
        help="bf16 autocast where the CPU has native bf16 (AMX or AVX-512 BF16); elsewhere "
        "torch emulates it, several times slower than fp32, so the run trains in fp32 and logs why",
    )
    ap.add_argument(
        "--force-bf16", action="store_true", help="bf16 autocast even where it is emulated"
    )
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    ap.add_argument(
        "--init-from", help="weights (.safetensors or .pt) to start from, fresh optimizer"
    )
    ap.add_argument("--ckpt-minutes", type=float, default=5.0)
    ap.add_argument("--eval-minutes", type=float, default=15.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--outlier-factor",
        type=float,
        default=0.0,
        help="drop a step whose loss exceeds F times the median of the last 200 kept steps "
        "(0: off). For resgdn-vr: a chain of IGDNs now and then blows a batch up to 1e30, "
        "and even clipped, such steps undo what the run had learned",
    )
    ap.add_argument(
        "--lambda-balance",
        type=float,
        default=0.0,
        help="weight each sample's loss by (lambda / geometric mean lambda) ** -P, so the "
        "high-lambda samples (large MSE gradients) do not drown the low-rate end",
    )
    ap.add_argument(
        "--fenm-weight", type=float, default=1.0, help="weight of a model's fenm_loss (ibfe)"
    )
    ap.add_argument(
        "--fenm-fraction",
        type=float,
        default=0.3,
        help="fenm_loss is added during this first fraction of the time budget, then 0",
    )
    args = ap.parse_args(argv)
    bf16_fallback = args.bf16 and not args.force_bf16 and not native_bf16("cpu")
    args.bf16 = (args.bf16 and not bf16_fallback) or args.force_bf16
    if bf16_fallback:
        print(
            "warning: --bf16 asked for, but this CPU has no native bf16 (AMX / AVX-512 BF16): "
            "training in fp32, which is faster here (--force-bf16 overrides)",
            file=sys.stderr,
            flush=True,
        )

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    log_f = open(out_dir / "log.jsonl", "a")

    def log(rec: dict) -> None:
        log_f.write(json.dumps(rec) + "\n")
        log_f.flush()

    model = registry.model_class(args.arch)(**json.loads(args.arch_kwargs))
    model = model.to(memory_format=torch.channels_last)
    main_params = [p for n, p in model.named_parameters() if not n.endswith(".quantiles")]
    aux_params = [p for n, p in model.named_parameters() if n.endswith(".quantiles")]
    opt = torch.optim.Adam(main_params, lr=args.lr)
    aux_opt = torch.optim.Adam(aux_params, lr=1e-3) if aux_params else None
    step, elapsed_before = 0, 0.0
    if args.resume and (out_dir / "last.pt").exists():
        ck = torch.load(out_dir / "last.pt", weights_only=True)
        model.load_state_dict(ck["model"], strict=False)
        opt.load_state_dict(ck["opt"])
        if aux_opt is not None:
            aux_opt.load_state_dict(ck["aux_opt"])
        step, elapsed_before = ck["step"], ck["elapsed"]
        if ck.get("clock", "wall") != args.clock:
            raise SystemExit(f"{out_dir} was trained with --clock {ck.get('clock', 'wall')}")
        rng.setstate(tuple(ck["rng"][0:1]) + (tuple(ck["rng"][1]),) + tuple(ck["rng"][2:]))
        print(f"resumed at step {step}, {elapsed_before / 3600:.2f} h", flush=True)
    elif args.init_from:
        from licstore.models.weights import load_float_state, warm_start

        loaded, total = warm_start(model, load_float_state(args.init_from))
        print(f"initialised {loaded} of {total} tensors from {args.init_from}", flush=True)

    photos = load_photos(Path(args.data), min_side=args.crop)
    kodak = []
    kdir = Path(args.kodak)
    if kdir.is_dir():
        for p in sorted(kdir.glob("*.png"))[:24:6]:  # 4 images: kodim01, 07, 13, 19
            a = np.asarray(Image.open(p).convert("RGB"))
            kodak.append(torch.from_numpy(a).permute(2, 0, 1)[None].float().div(255))
    print(f"{len(photos)} training crops sources, {len(kodak)} Kodak eval images", flush=True)
    # paths relative to the repository, so logs can be committed and compared across machines
    logged = {
        k: os.path.relpath(v, ROOT) if k in ("data", "kodak") else v for k, v in vars(args).items()
    }
    log(
        {
            "event": "start",
            "args": logged,
            "step": step,
            "time": time.time(),
            "precision": "bf16" if args.bf16 else "fp32",
            "bf16_fallback": bf16_fallback,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        }
    )

    budget = args.hours * 3600
    own_loss = hasattr(model, "training_loss")  # e.g. resgdn-vr: distortion over bit depths
    if not own_loss:
        lam_mean = geometric_mean_lambda(model)
    clock = time.process_time if args.clock == "cpu" else time.time
    t0 = clock()
    last_ckpt = last_eval = time.time()
    skipped = 0
    recent: collections.deque[float] = collections.deque(maxlen=200)
    acc = {"loss": 0.0, "bpp": 0.0, "psnr": 0.0, "n": 0}
    t_log = time.time()
    model.train()

    def checkpoint() -> None:
        save_atomic(
            {
                "model": model.state_dict(),
                "opt": opt.state_dict(),
                "aux_opt": aux_opt.state_dict() if aux_opt is not None else {},
                "step": step,
                "elapsed": elapsed_before + clock() - t0,
                "clock": args.clock,
                "rng": list(rng.getstate()),
                "arch": args.arch,
                "arch_kwargs": json.loads(args.arch_kwargs),
            },
            out_dir / "last.pt",
        )

    while True:
        total = elapsed_before + clock() - t0
        if total >= budget:
            break
        frac = total / budget
        lr = args.lr_min + 0.5 * (args.lr - args.lr_min) * (1 + math.cos(math.pi * frac))
        if step < args.warmup and not args.resume:
            lr *= (step + 1) / args.warmup
        for g in opt.param_groups:
            g["lr"] = lr

        x = random_batch(photos, args.batch, args.crop, rng)
        if own_loss:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
                loss, stats = model.training_loss(x)
            bpp, psnr = 0.0, stats["psnr"]
        else:
            r = torch.rand(args.batch) * (model.levels - 1)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
                out = model(x, r)
            loss, mse, bpp = rd_loss(model, out, x, r, lam_mean, args.lambda_balance)
            if "fenm_loss" in out and frac < args.fenm_fraction:
                loss = loss + args.fenm_weight * out["fenm_loss"]
            bpp = float(bpp.detach().mean())
            psnr = float((10 * torch.log10(1 / mse.detach().clamp_min(1e-10))).mean())
        loss_value = float(loss.detach())
        if is_outlier(loss_value, recent, args.outlier_factor):
            skipped += 1
            why = "outlier" if math.isfinite(loss_value) else "non-finite loss"
            log({"event": "skipped-step", "step": step, "loss": loss_value, "why": why})
            continue
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(main_params, 1.0)
        if not torch.isfinite(grad_norm):
            # e.g. MS-SSIM's relu(cs) ** w has an infinite gradient at cs = 0: one such
            # batch would turn every weight into NaN, so the step is dropped and counted
            skipped += 1
            log({"event": "skipped-step", "step": step, "loss": loss_value})
            continue
        recent.append(loss_value)
        opt.step()
        aux = torch.zeros(())
        if aux_opt is not None:
            aux_opt.zero_grad(set_to_none=True)
            aux = model.aux_loss()
            aux.backward()
            aux_opt.step()
        step += 1

        acc["loss"] += loss_value
        acc["bpp"] += bpp
        acc["psnr"] += psnr
        acc["n"] += 1
        if own_loss and "blowups" in stats:  # resgdn-vr: crops its training_loss left out
            acc["blowups"] = acc.get("blowups", 0) + stats["blowups"]
        if step % 100 == 0:
            n = acc.pop("n")
            rec = {k: v / n for k, v in acc.items()}
            rec.update(
                step=step,
                lr=lr,
                aux=float(aux.detach()),
                skipped=skipped,
                hours=(elapsed_before + clock() - t0) / 3600,
                patches_per_s=n * args.batch / (time.time() - t_log),
            )
            log(rec)
            print(json.dumps(rec), flush=True)
            acc = {"loss": 0.0, "bpp": 0.0, "psnr": 0.0, "n": 0}
            t_log = time.time()
        now = time.time()
        if now - last_ckpt > args.ckpt_minutes * 60:
            checkpoint()
            last_ckpt = now
        if kodak and now - last_eval > args.eval_minutes * 60:
            ev = quick_kodak_eval(model, kodak)
            rec = {
                "event": "kodak",
                "step": step,
                "hours": (elapsed_before + clock() - t0) / 3600,
                "points": ev,
            }
            log(rec)
            print(json.dumps(rec), flush=True)
            last_eval = time.time()

    checkpoint()
    if kodak:
        ev = quick_kodak_eval(model, kodak)
        log(
            {
                "event": "kodak",
                "step": step,
                "hours": (elapsed_before + clock() - t0) / 3600,
                "points": ev,
            }
        )
    log({"event": "end", "step": step, "hours": (elapsed_before + clock() - t0) / 3600})
    print("done", step, flush=True)


if __name__ == "__main__":
    main()
