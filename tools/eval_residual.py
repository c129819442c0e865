#!/usr/bin/env python
"""Measure the enhancement layers on Kodak: rate split of residual="hevc", and lossless size.

Part 1 (split): at each target bpp, the searched base/HEVC split (what ``residual="hevc"``
writes) against a fixed split (the base layer gets 70% of the budget, HEVC the rest at the
highest quality that fits) and against the base layer alone (plain ``bpp=``); PSNR and the
share of the bytes spent on the residual. Every number comes from decoding the bitstream.

Part 2 (lossless): ``lossless=True`` (checked bit-exact) against PNG, WebP lossless and
JPEG XL lossless of the same images, with the encoder settings the lossless layer uses.

    nice -n 19 python tools/eval_residual.py --limit 4          # quick
    python tools/eval_residual.py                               # all 24 Kodak images

Writes OUT.json and OUT.md (default benchmarks/residual-kodak). Skips (exit 0) when the
image folder is absent.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import licstore  # noqa: E402
from licstore import codec, container, imageio, residual  # noqa: E402
from licstore.metrics import psnr  # noqa: E402

KODAK = ROOT.parent / "shared" / "data" / "kodak"
FIXED_FRACTION = 0.7


def _point(data: bytes, ref: np.ndarray, extra: dict | None = None) -> dict:
    """bpp, PSNR (of the decoded bitstream) and the residual's share of the bytes."""
    bs = container.unpack(data)
    layer = bs.layer(residual.HEVC_KIND)
    res_bytes = len(layer.data) + len(layer.meta) if layer is not None else 0
    out = {
        "bytes": len(data),
        "bpp": len(data) * 8 / (bs.width * bs.height),
        "psnr": psnr(ref, np.asarray(licstore.decode(data).convert("RGB"))),
        "residual_bytes": res_bytes,
        "residual_share": res_bytes / len(data),
        "hevc_quality": layer.meta[1] if layer is not None else None,
    }
    return {**out, **(extra or {})}


def split_image(net, img: Image.Image, bpps: list[float]) -> dict:
    """Searched vs fixed split vs base-only for one image at every target bpp."""
    dev = codec._device("cpu")
    prep = imageio.prepare(img)
    x = codec._to_tensor([prep.rgb], net.downsampling, dev)
    enc = codec._ImageEncoder(net, net.analyze(x), 0, prep, dev)
    out = {}
    for bpp in bpps:
        t0 = time.perf_counter()
        rate, q, _ = enc.split_for_bpp(bpp)
        searched = enc.pack(rate, q)
        t1 = time.perf_counter()
        plain = codec._encode_one(
            net, enc.analyzed, 0, prep, codec.RateTarget(bpp=bpp), dev
        )  # the base-only candidate the search also saw
        point = {
            "searched": _point(searched, prep.rgb, {"encode_s": t1 - t0}),
            "plain": _point(plain, prep.rgb),
        }
        try:
            rate_f, q_f, _ = enc.split_for_bpp(bpp, fractions=[FIXED_FRACTION])
            point["fixed"] = _point(enc.pack(rate_f, q_f), prep.rgb)
        except licstore.errors.RateTargetError as e:
            point["fixed"] = {"error": str(e)}
        out[str(bpp)] = point
        s, f, p = point["searched"], point["fixed"], point["plain"]
        print(
            f"  bpp {bpp}: base-only {p['bpp']:.3f} bpp {p['psnr']:.2f} dB | fixed "
            + (
                f"{f['bpp']:.3f} bpp {f['psnr']:.2f} dB res {f['residual_share']:.0%}"
                if "psnr" in f
                else "n/a"
            )
            + f" | searched {s['bpp']:.3f} bpp {s['psnr']:.2f} dB res {s['residual_share']:.0%}"
            f" ({s['encode_s']:.1f} s)",
            flush=True,
        )
    return out


def lossless_image(img: Image.Image, model: str) -> dict:
    """Sizes of licstore lossless and the classical lossless codecs; exactness checked."""
    out: dict = {}
    for name, fn in residual.lossless_encoders().items():
        t0 = time.perf_counter()
        out[name] = {"bytes": len(fn(img)), "encode_s": time.perf_counter() - t0}
    t0 = time.perf_counter()
    data = licstore.encode(img, model=model, lossless=True)
    t1 = time.perf_counter()
    back = licstore.decode(data)
    t2 = time.perf_counter()
    bs = container.unpack(data)
    layer = bs.layer(residual.LOSSLESS_KIND)
    out["licstore"] = {
        "bytes": len(data),
        "base_bytes": len(bs.layer("base").data),
        "residual_bytes": len(layer.data) + len(layer.meta),
        "residual_codec": residual.LOSSLESS_CODECS[layer.meta[1]][0],
        "exact": bool(np.array_equal(np.asarray(back), np.asarray(img))),
        "encode_s": t1 - t0,
        "decode_s": t2 - t1,
    }
    pixels = img.width * img.height
    for entry in out.values():
        entry["bpp"] = entry["bytes"] * 8 / pixels
    out["licstore"]["base_bpp"] = out["licstore"]["base_bytes"] * 8 / pixels
    print(
        "  lossless bpp: "
        + ", ".join(f"{k} {v['bpp']:.3f}" for k, v in out.items())
        + f" (exact: {out['licstore']['exact']})",
        flush=True,
    )
    return out


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def summarize(result: dict) -> dict:
    summary: dict = {"split": {}, "lossless": {}}
    images = result["images"]
    for bpp in result["bpps"]:
        key = str(bpp)
        rows = [result["split"][n][key] for n in images if n in result["split"]]
        if not rows:
            continue
        entry = {}
        for kind in ("plain", "fixed", "searched"):
            ok = [r[kind] for r in rows if "psnr" in r[kind]]
            entry[kind] = {
                "images": len(ok),
                "bpp": _mean([r["bpp"] for r in ok]),
                "psnr": _mean([r["psnr"] for r in ok]),
                "residual_share": _mean([r["residual_share"] for r in ok]),
            }
        both = [r for r in rows if "psnr" in r["fixed"]]
        entry["gain_vs_fixed_db"] = _mean(
            [r["searched"]["psnr"] - r["fixed"]["psnr"] for r in both]
        )
        entry["gain_vs_plain_db"] = _mean(
            [r["searched"]["psnr"] - r["plain"]["psnr"] for r in rows]
        )
        entry["searched_base_only"] = sum(r["searched"]["residual_bytes"] == 0 for r in rows)
        entry["searched_encode_s"] = _mean([r["searched"]["encode_s"] for r in rows])
        summary["split"][key] = entry
    rows = [result["lossless"][n] for n in images if n in result["lossless"]]
    if rows:
        for name in rows[0]:
            summary["lossless"][name] = {"bpp": _mean([r[name]["bpp"] for r in rows])}
        lic = summary["lossless"]["licstore"]
        lic["exact"] = sum(r["licstore"]["exact"] for r in rows)
        lic["images"] = len(rows)
        lic["encode_s"] = _mean([r["licstore"]["encode_s"] for r in rows])
        lic["decode_s"] = _mean([r["licstore"]["decode_s"] for r in rows])
        lic["base_bpp"] = _mean([r["licstore"]["base_bpp"] for r in rows])
    return summary


def markdown(result: dict, command: str) -> str:
    s = result["summary"]
    n = len(result["images"])
    lines = [
        f"# Enhancement layers on {result['image_set']} ({n} images, model `{result['model']}`)",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {result['machine']}. Every PSNR is measured on the decoded bitstream (RGB).",
        "",
    ]
    if s["split"]:
        lines += [
            '## residual="hevc": searched split vs fixed split vs base only',
            "",
            f"Fixed split: the base layer gets {FIXED_FRACTION:.0%} of the budget, the HEVC "
            "residual the highest quality that fits the rest. Searched: what "
            '`licstore.encode(..., bpp=B, residual="hevc")` writes (base-only is one of its '
            "candidates). Base only: plain `bpp=B`. Residual share: residual layer bytes / "
            "total bytes (mean over images).",
            "",
            "| target bpp | base only: bpp / PSNR | fixed 70%: bpp / PSNR / residual share "
            "| searched: bpp / PSNR / residual share | searched - fixed | searched - base only "
            "| searched picked base only | search time |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for bpp, e in s["split"].items():
            p, f, r = e["plain"], e["fixed"], e["searched"]
            lines.append(
                f"| {bpp} | {p['bpp']:.3f} / {p['psnr']:.2f} dB "
                f"| {f['bpp']:.3f} / {f['psnr']:.2f} dB / {f['residual_share']:.1%}"
                + (f" ({f['images']} of {n})" if f["images"] < n else "")
                + f" | {r['bpp']:.3f} / {r['psnr']:.2f} dB / {r['residual_share']:.1%} "
                f"| {e['gain_vs_fixed_db']:+.2f} dB | {e['gain_vs_plain_db']:+.2f} dB "
                f"| {e['searched_base_only']} of {n} | {e['searched_encode_s']:.1f} s |"
            )
        lines.append("")
    if s["lossless"]:
        lic = s["lossless"]["licstore"]
        lines += [
            "## lossless=True vs classical lossless codecs",
            "",
            f"licstore: base at `quality={codec.LOSSLESS_BASE_QUALITY}` "
            f"(mean {lic['base_bpp']:.3f} bpp) + the exact residual layer; "
            f"bit-exact on {lic['exact']} of {lic['images']} images; "
            f"encode {lic['encode_s']:.1f} s, decode {lic['decode_s']:.1f} s per image. "
            "PNG: Pillow `optimize=True`; WebP: lossless, method 6, quality 50; "
            "JPEG XL: lossless, effort 7 (pillow-jxl-plugin).",
            "",
            "| codec | mean bpp | licstore vs it |",
            "|---|---:|---:|",
        ]
        for name, e in s["lossless"].items():
            ratio = lic["bpp"] / e["bpp"] - 1
            lines.append(
                f"| {name} | {e['bpp']:.3f} | "
                + ("-" if name == "licstore" else f"{ratio:+.1%}")
                + " |"
            )
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=Path, default=KODAK)
    ap.add_argument("--model", default=licstore.models.DEFAULT_MODEL)
    ap.add_argument("--limit", type=int, default=None, help="first N images only")
    ap.add_argument("--bpp", default="0.25,0.5,1.0", help="target bpps (comma-separated)")
    ap.add_argument("--no-split", action="store_true", help="skip part 1")
    ap.add_argument("--no-lossless", action="store_true", help="skip part 2")
    ap.add_argument("--threads", type=int, default=None, help="torch threads")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "residual-kodak"))
    args = ap.parse_args(argv)
    if not args.images.is_dir():
        print(f"skipping: image folder {args.images} not found", file=sys.stderr)
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    paths = sorted(p for p in args.images.iterdir() if p.suffix.lower() == ".png")[: args.limit]
    bpps = [float(b) for b in args.bpp.split(",") if b]
    net = licstore.models.load(args.model)
    result: dict = {
        "image_set": args.images.resolve().name,
        "images": [p.name for p in paths],
        "model": args.model,
        "weights_sha256": net.weights_sha256,
        "bpps": bpps,
        "fixed_fraction": FIXED_FRACTION,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
        "split": {},
        "lossless": {},
    }
    for p in paths:
        img = Image.open(p).convert("RGB")
        print(p.name, flush=True)
        if not args.no_split:
            result["split"][p.name] = split_image(net, img, bpps)
        if not args.no_lossless:
            result["lossless"][p.name] = lossless_image(img, args.model)
    result["summary"] = summarize(result)
    command = "python tools/eval_residual.py " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    md = markdown(result, command.strip())
    out.with_suffix(".md").write_text(md)
    print()
    print(md)
    print(f"wrote {out.with_suffix('.json')}, {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
