#!/usr/bin/env python
"""Per-component diagnosis of ``resgdn-vr`` (seed 002, issue 23): where do more bits go?

Each check runs on seeded crops of Kodak images (``licstore/samples`` when Kodak is absent):

a. the autoencoder without quantization: PSNR of ``g_s(g_a(x))`` in fp32, the ceiling that
   no bit depth can pass;
b. the scalable quantizer (the exact inference path) at each B = 2..8: PSNR, estimated and
   coded bpp, distinct code-map symbols, latent range vs quantizer range, and the largest
   ``|y - y_hat|`` against half a quantizer step;
c. code-map coding: bytes written by ``encode_latents`` vs the estimate, and whether
   ``decode_latents`` of that payload gives back the encoder's quantized code map bit for bit;
d. the rate search: the B that ``licstore.encode(bpp=...)`` picks for each target, its bytes
   and PSNR, and whether different targets give different bitstreams;
e. training vs inference quantization: stochastic rounding (``quantize_train``) against the
   exact quantizer at each B; training-size crops of the training photos that the
   stochastic quantizer sends out of the decoder's domain (decoded MSE > 1); the latent
   range in units of its standard deviation at the training crop size (128 px), on these
   crops and on the whole images (the quantizer step at a given B scales with it); and the
   bf16 cast of the dequantized code map (what a bf16 synthesis sees) against half a step
   at B = 8.

    python tools/diagnose_resgdn.py                      # 4 crops of 256 px, 1-3 min on 2 loaded cores
    python tools/diagnose_resgdn.py --json > diag.json   # the same as JSON
    python tools/diagnose_resgdn.py --checkpoint runs/resgdn-vr-x/last.pt   # a training run
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import licstore  # noqa: E402
from licstore import models  # noqa: E402
from licstore.errors import RateTargetError  # noqa: E402
from licstore.models import resgdn_vr  # noqa: E402

KODAK = ROOT.parent / "shared" / "data" / "kodak"
TRAIN = ROOT.parent / "shared" / "data" / "train"
SAMPLES = ROOT / "licstore" / "samples"
IMAGES = {".png", ".jpg", ".jpeg"}
#: a level "reaches the ceiling" within this many dB of the float autoencoder
CEILING_DB = 0.05


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float((a.double() - b.double()).pow(2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(1 / mse)


def load_crops(
    folder: Path, count: int, crop: int, seed: int
) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, seeded ``crop`` x ``crop`` window, whole image) of ``count`` images of ``folder``."""
    files = sorted(folder.glob("*.png"))
    if not files:
        raise SystemExit(f"no PNG images in {folder}")
    step = max(len(files) // count, 1)
    rng = random.Random(seed)
    out = []
    for p in files[::step][:count]:
        a = np.asarray(Image.open(p).convert("RGB"))
        c = min(crop, a.shape[0], a.shape[1]) // 16 * 16
        y0, x0 = rng.randrange(a.shape[0] - c + 1), rng.randrange(a.shape[1] - c + 1)
        out.append((p.stem, np.ascontiguousarray(a[y0 : y0 + c, x0 : x0 + c]), a))
    return out


def to_tensor(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(a)).permute(2, 0, 1)[None].float() / 255


def range_over_std(y: torch.Tensor) -> float:
    """Mean over channels of (max - min) / std: how many sigmas one quantizer range spans."""
    r = (y.amax(dim=(2, 3)) - y.amin(dim=(2, 3))) / y.std(dim=(2, 3)).clamp_min(1e-8)
    return float(r.mean())


def load_model(args) -> tuple[torch.nn.Module, str]:
    """The model to diagnose and a name ``licstore.encode`` knows it by."""
    if not args.checkpoint:
        return models.load(args.model), args.model
    ck = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    kwargs = ck.get("arch_kwargs", {}) if isinstance(ck, dict) else {}
    net = resgdn_vr.ResGDNVR(**kwargs)
    net.load_state_dict(ck["model"])
    from licstore.models.weights import export

    path = Path(tempfile.mkdtemp()) / "resgdn-vr-diagnosed.safetensors"
    meta = {"name": "resgdn-vr-diagnosed", "architecture": "resgdn-vr"}
    export(net, path, {**meta, "arch_kwargs": json.dumps(kwargs)})
    name = models.register_weights(path, default=True)
    return models.load(name), name


@torch.no_grad()
def check_image(net, x: torch.Tensor, full: torch.Tensor, args, seed: int) -> dict:
    """Checks a, b, c and e on one crop ``x`` (``full``: its whole image, for ranges)."""
    a = net.analyze(x)
    y = a.y
    rec = {"float_psnr": psnr(net.synthesize(y), x), "levels": {}}
    # windows of the training crop size (up to four), where stochastic rounding is trained
    c = args.train_crop
    windows = [
        x[..., i : i + c, j : j + c]
        for i in range(0, x.shape[2] - c + 1, c)
        for j in range(0, x.shape[3] - c + 1, c)
    ][:4]
    window_y = [net.analyze(w).y for w in windows]
    for bits in range(resgdn_vr.MIN_BITS, resgdn_vr.MAX_BITS + 1):
        q, lo, hi = net._quantize(a, 0, bits)
        y_hat = net.reconstruct_latents(a, 0, bits)
        step = torch.from_numpy((hi - lo) / (2**bits - 1))[None, :, None, None]
        payload = net.encode_latents(a, 0, bits)
        decoded = net.decode_latents(payload, x.shape[2], x.shape[3], bits)
        torch.manual_seed(seed + bits)
        train_psnrs = [
            psnr(net.g_s(net.quantize_train(y, bits)).clamp(0, 1), x) for _ in range(args.draws)
        ]
        rec["levels"][bits] = {
            "psnr": psnr(net.synthesize(y_hat), x),
            "psnr_train_quantizer": float(np.mean(train_psnrs)),
            "bpp_estimate": net.estimate_bytes(a, 0, bits) * 8 / x[0, 0].numel(),
            "bpp_coded": len(payload) * 8 / x[0, 0].numel(),
            "symbols": int(len(np.unique(q))),
            "symbols_per_channel": float(np.mean([len(np.unique(c)) for c in q])),
            "y_min": float(y.min()),
            "y_max": float(y.max()),
            "quant_lo": float(lo.min()),
            "quant_hi": float(hi.max()),
            "max_err_over_half_step": float(((y_hat - y).abs() / (step / 2)).max()),
            "decode_exact": bool(torch.equal(decoded, y_hat)),
        }
    y8 = net.reconstruct_latents(a, 0, resgdn_vr.MAX_BITS)
    step8 = float(((y.amax(dim=(2, 3)) - y.amin(dim=(2, 3))) / 255).min())
    rec["bf16_cast_err_over_half_step"] = float((y8.bfloat16().float() - y8).abs().max()) / (
        step8 / 2
    )
    # latent range in sigmas at the training crop size, on this crop and on the whole image
    rec["range_std_train_crop"] = float(np.mean([range_over_std(wy) for wy in window_y]))
    rec["range_std_eval_crop"] = range_over_std(y)
    rec["range_std_full_image"] = range_over_std(net.analyze(full).y)
    return rec


def check_rate_search(name: str, crops, targets) -> list[dict]:
    """Check d: what ``encode(bpp=)`` picks on each crop."""
    rows = []
    for bpp in targets:
        rates, bpps, psnrs, digests = [], [], [], []
        for _, a, _ in crops:
            try:
                data = licstore.encode(a, bpp=bpp, model=name)
            except RateTargetError:  # below the lowest rate on this crop
                rates.append(None)
                continue
            out = np.asarray(licstore.decode(data)).astype(np.float64)
            mse = ((out - a.astype(np.float64)) ** 2).mean()
            rates.append(licstore.info(data).rate)
            bpps.append(len(data) * 8 / (a.shape[0] * a.shape[1]))
            psnrs.append(10 * np.log10(255**2 / mse))
            digests.append(hashlib.sha256(data).hexdigest()[:12])
        rows.append(
            {
                "bpp_target": bpp,
                "rates": rates,
                "bpp": float(np.mean(bpps)) if bpps else None,
                "psnr": float(np.mean(psnrs)) if psnrs else None,
                "bitstreams": digests,
            }
        )
    return rows


@torch.no_grad()
def check_blowups(net, args) -> dict[int, dict]:
    """Check e: seeded training-size crops of training photos through ``quantize_train``; a
    crop decoded to an MSE above ``BLOWUP_MSE`` (or NaN) has left the decoder's domain."""
    files = sorted(p for p in Path(args.blowup_images).iterdir() if p.suffix.lower() in IMAGES)
    rng = random.Random(args.seed)
    c = args.train_crop
    crops = []
    for p in rng.sample(files, min(args.blowup_crops, len(files))):
        a = np.asarray(Image.open(p).convert("RGB"))
        if min(a.shape[:2]) < c:
            continue
        y0, x0 = rng.randrange(a.shape[0] - c + 1), rng.randrange(a.shape[1] - c + 1)
        crops.append(to_tensor(a[y0 : y0 + c, x0 : x0 + c]))
    x = torch.cat(crops)
    y = net.g_a(x)
    out = {}
    torch.manual_seed(args.seed)
    for bits in sorted(args.blowup_bits):
        n = 0
        for _ in range(args.blowup_draws):  # quant_params are per crop: batching changes nothing
            mse = (net.g_s(net.quantize_train(y, bits)) - x).pow(2).flatten(1).mean(1)
            n += int((~(mse <= resgdn_vr.BLOWUP_MSE)).sum())
        out[bits] = {"blowups": n, "decodes": args.blowup_draws * len(crops)}
    return out


def summarize(per_image: list[dict], search: list[dict], blowups: dict) -> dict:
    levels = sorted(per_image[0]["levels"])
    mean = {
        b: {
            k: float(np.mean([r["levels"][b][k] for r in per_image]))
            for k in per_image[0]["levels"][b]
            if k not in ("decode_exact",)
        }
        for b in levels
    }
    for b in levels:
        mean[b]["decode_exact"] = all(r["levels"][b]["decode_exact"] for r in per_image)
        for k, f in (("y_min", min), ("y_max", max), ("quant_lo", min), ("quant_hi", max)):
            mean[b][k] = f(r["levels"][b][k] for r in per_image)
    float_psnr = float(np.mean([r["float_psnr"] for r in per_image]))
    psnrs = [mean[b]["psnr"] for b in levels]
    ceiling_at = next((b for b in levels if mean[b]["psnr"] >= float_psnr - CEILING_DB), None)
    top_bpp = mean[levels[-1]]["bpp_coded"]
    verdicts = {
        "quantizer_exact": all(mean[b]["max_err_over_half_step"] <= 1.0 + 1e-4 for b in levels),
        "code_map_round_trip_exact": all(mean[b]["decode_exact"] for b in levels),
        "psnr_strictly_increasing": all(b > a for a, b in zip(psnrs, psnrs[1:])),
        "float_ceiling_reached_at_bits": ceiling_at,
        "base_layer_max_bpp": top_bpp,
        "targets_above_max_bpp": [r["bpp_target"] for r in search if r["bpp_target"] > top_bpp],
        "distinct_bitstreams_over_targets": len({tuple(r["bitstreams"]) for r in search}),
        "stochastic_rounding_blowups": {b: r["blowups"] for b, r in blowups.items()},
    }
    return {
        "float_psnr": float_psnr,
        "levels": mean,
        "rate_search": search,
        "range_std": {
            k: float(np.mean([r[k] for r in per_image]))
            for k in ("range_std_train_crop", "range_std_eval_crop", "range_std_full_image")
        },
        "bf16_cast_err_over_half_step_b8": float(
            np.max([r["bf16_cast_err_over_half_step"] for r in per_image])
        ),
        "blowups": blowups,
        "verdicts": verdicts,
    }


def print_table(s: dict, args) -> None:
    print(f"(a) autoencoder, no quantization (fp32): PSNR {s['float_psnr']:.2f} dB")
    print(
        "(b, c, e) per bit depth, mean over crops (train-q: PSNR through the training-time "
        "stochastic quantizer):"
    )
    head = (
        f"{'B':>2} {'PSNR':>6} {'dPSNR':>6} {'train-q':>7} {'bpp est':>7} "
        f"{'bpp coded':>9} {'symbols':>7} {'/ch':>5} {'|err|/half':>10} {'decode==enc':>11}"
    )
    print(head)
    prev = None
    for b, r in s["levels"].items():
        d = "" if prev is None else f"{r['psnr'] - prev:+.2f}"
        prev = r["psnr"]
        print(
            f"{b:>2} {r['psnr']:6.2f} {d:>6} {r['psnr_train_quantizer']:7.2f} "
            f"{r['bpp_estimate']:7.3f} {r['bpp_coded']:9.3f} {r['symbols']:7.0f} "
            f"{r['symbols_per_channel']:5.0f} {r['max_err_over_half_step']:10.3f} "
            f"{str(r['decode_exact']):>11}"
        )
    lv = s["levels"][resgdn_vr.MAX_BITS]
    print(
        f"latent range [{lv['y_min']:.2f}, {lv['y_max']:.2f}] = quantizer range "
        f"[{lv['quant_lo']:.2f}, {lv['quant_hi']:.2f}] (per-channel min/max, side info)"
    )
    rs = s["range_std"]
    print(
        f"(e) range / std: {rs['range_std_train_crop']:.2f} at the {args.train_crop} px "
        f"training crop, {rs['range_std_eval_crop']:.2f} on these crops, "
        f"{rs['range_std_full_image']:.2f} on whole images; bf16 cast of y_hat at B=8: "
        f"{s['bf16_cast_err_over_half_step_b8']:.2f} x half a step"
    )
    blown = ", ".join(f"B={b}: {r['blowups']}/{r['decodes']}" for b, r in s["blowups"].items())
    print(
        f"(e) {args.train_crop} px training crops decoded to MSE > {resgdn_vr.BLOWUP_MSE:g} "
        f"through the stochastic quantizer: {blown}"
    )
    print("(d) rate search, licstore.encode(bpp=...):")
    print(f"{'target':>6} {'B picked':>16} {'bpp':>6} {'PSNR':>6}  bitstreams")
    for r in s["rate_search"]:
        if r["bpp"] is None:
            print(f"{r['bpp_target']:6.2f} below the lowest rate on every crop")
            continue
        print(
            f"{r['bpp_target']:6.2f} {','.join(map(str, r['rates'])):>16} {r['bpp']:6.3f} "
            f"{r['psnr']:6.2f}  {' '.join(r['bitstreams'])}"
        )
    print("verdicts:")
    for k, v in s["verdicts"].items():
        print(f"  {k}: {v}")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", default="resgdn-vr", help="a registered resgdn-vr model name")
    ap.add_argument("--checkpoint", help="a tools/train.py checkpoint (.pt) instead of --model")
    ap.add_argument("--images", default=str(KODAK if KODAK.is_dir() else SAMPLES))
    ap.add_argument("--count", type=int, default=4, help="images (spread over the folder)")
    ap.add_argument("--crop", type=int, default=256)
    ap.add_argument("--train-crop", type=int, default=128, help="tools/train.py's --crop")
    ap.add_argument("--bpp", default="0.1,0.2,0.3,0.6,1.0,1.5", help="rate-search targets")
    ap.add_argument("--draws", type=int, default=2, help="stochastic-rounding draws per B")
    ap.add_argument(
        "--blowup-images",
        default=str(TRAIN if TRAIN.is_dir() else SAMPLES),
        help="photos whose training-size crops are decoded through the stochastic quantizer",
    )
    ap.add_argument("--blowup-crops", type=int, default=16)
    ap.add_argument("--blowup-draws", type=int, default=8, help="draws per crop and B")
    ap.add_argument("--blowup-bits", default="2,3,5", help="bit depths checked for blowups")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", action="store_true", help="print JSON instead of the table")
    args = ap.parse_args(argv)
    args.blowup_bits = {int(b) for b in args.blowup_bits.split(",") if b}
    torch.set_num_threads(args.threads)
    t0 = time.time()
    net, name = load_model(args)
    crops = load_crops(Path(args.images), args.count, args.crop, args.seed)
    per_image = [
        check_image(net, to_tensor(a), to_tensor(full), args, args.seed + i)
        for i, (_, a, full) in enumerate(crops)
    ]
    search = check_rate_search(name, crops, [float(b) for b in args.bpp.split(",")])
    s = summarize(per_image, search, check_blowups(net, args))
    s["config"] = {
        "model": name,
        "weights": getattr(net, "weights_sha256", "")[:16],
        "images": [n for n, _, _ in crops],
        "crop": args.crop,
        "seed": args.seed,
        "seconds": round(time.time() - t0, 1),
    }
    if args.json:
        print(json.dumps(s, indent=1))
    else:
        print(f"resgdn-vr diagnosis: {s['config']}")
        print_table(s, args)
    return s


if __name__ == "__main__":
    main()
