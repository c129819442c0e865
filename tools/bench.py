#!/usr/bin/env python
"""Speed and memory of licstore models next to classical codecs, on Kodak.

    python tools/bench.py [--images DIR] [--limit N] [--models A,B,...] [--threads 2]

Prints a markdown table, one column per model (paste it into BENCHMARKS.md with the
command line):
encode time (quality target and bpp target), decode time split into the exact latent
path and the synthesis, fp32 vs bf16 synthesis, batch 1 vs batched decoding, images/s,
peak resident memory of a decode-only process, and JPEG / WebP / HEVC decode times.
Run it on an otherwise idle machine: numbers from a loaded one are meaningless.
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import licstore  # noqa: E402
from licstore import container  # noqa: E402


def timed(fn, repeat: int = 1) -> float:
    best = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best.append(time.perf_counter() - t)
    return min(best)


def peak_rss_decode(folder: Path, precision: str) -> float:
    """Peak RSS (MiB) of a fresh process that decodes every bitstream (``folder/*.lic``) once.

    Read from VmHWM: ru_maxrss survives exec on Linux and would report the parent's peak.
    The bitstreams travel as plain ``.lic`` files, never pickled.
    """
    code = (
        "import sys, pathlib, licstore\n"
        "datas = [p.read_bytes() for p in sorted(pathlib.Path(sys.argv[1]).glob('*.lic'))]\n"
        "[licstore.decode(d, precision=sys.argv[2]) for d in datas]\n"
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0]\n"
        "print(int(hwm.split()[1]) / 1024)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(folder), precision],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(out.stdout.strip().splitlines()[-1])


def classical_decode_times(images: list[Image.Image]) -> dict[str, float]:
    import pillow_heif

    pillow_heif.register_heif_opener()
    out = {}
    for name, kw in {
        "JPEG q75": dict(format="JPEG", quality=75),
        "WebP q75 m6": dict(format="WEBP", quality=75, method=6),
        "HEVC 4:4:4 q50": dict(format="HEIF", quality=50, chroma=444),
    }.items():
        ts = []
        for im in images:
            buf = io.BytesIO()
            im.save(buf, **kw)
            data = buf.getvalue()
            ts.append(timed(lambda d=data: Image.open(io.BytesIO(d)).load(), repeat=3))
        out[name] = statistics.mean(ts)
    return out


def measure_model(model: str | None, images: list[Image.Image]) -> dict[str, float]:
    """Encode, decode and memory figures of one model on ``images``."""
    net = licstore.models.load(model)
    licstore.decode(licstore.encode(images[0], model=model))  # warm-up

    rows: dict[str, float] = {}
    datas = []
    t_q, t_bpp = [], []
    for im in images:
        t_q.append(timed(lambda im=im: datas.append(licstore.encode(im, model=model))))
        t_bpp.append(timed(lambda im=im: licstore.encode(im, model=model, bpp=0.5)))
    rows["encode, quality=4 (s/img)"] = statistics.mean(t_q)
    rows["encode, bpp=0.5 rate control (s/img)"] = statistics.mean(t_bpp)
    rows["rate control cost (x plain encode)"] = statistics.mean(t_bpp) / statistics.mean(t_q)

    lat, syn32, syn16 = [], [], []
    for d in datas:
        bs = container.unpack(d)
        base = bs.layer("base").data
        lat.append(timed(lambda b=base, s=bs: net.decode_latents(b, s.height, s.width, s.rate), 2))
        y = net.decode_latents(base, bs.height, bs.width, bs.rate)
        syn32.append(timed(lambda y=y: net.synthesize(y, bf16=False), 2))
        syn16.append(timed(lambda y=y: net.synthesize(y, bf16=True), 2))
    rows["decode: exact latents (entropy + integer hyper-synthesis) (s/img)"] = statistics.mean(lat)
    rows["decode: synthesis fp32 (s/img)"] = statistics.mean(syn32)
    rows["decode: synthesis bf16 (s/img)"] = statistics.mean(syn16)
    for prec in ("fp32", "bf16"):
        t = timed(lambda p=prec: [licstore.decode(d, precision=p) for d in datas])
        rows[f"decode end to end, {prec}, batch 1 (img/s)"] = len(datas) / t
        t = timed(lambda p=prec: licstore.decode_batch(datas, precision=p, batch_transforms=True))
        rows[f"decode_batch, {prec}, batched synthesis (img/s)"] = len(datas) / t
    work = Path(tempfile.mkdtemp(prefix="licstore-bench-"))  # private (0700), unguessable
    try:
        for i, d in enumerate(datas):
            (work / f"{i:05d}.lic").write_bytes(d)
        for prec in ("fp32", "bf16"):
            rows[f"peak RSS, decode-only process, {prec} (MiB)"] = peak_rss_decode(work, prec)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows["peak RSS, this benchmark process (MiB)"] = (
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    return rows


def unblocked(net) -> None:
    """Make ``net`` run its GDNs as CompressAI wrote them (the other rewrites stay)."""
    from licstore.models.subpixel_deconv import with_subpixel_deconvs

    net.__dict__["_g_a_view"] = net.g_a
    net.__dict__["_g_s_view"] = with_subpixel_deconvs(net.g_s)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--images", default=str(ROOT.parent / "shared/data/kodak"))
    ap.add_argument("--limit", type=int, default=8)
    ap.add_argument(
        "--models", "--model", default="", help="comma-separated model names (default model)"
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="also write the raw numbers here")
    ap.add_argument(
        "--unblocked-gdn",
        action="store_true",
        help="run g_a and g_s with CompressAI's GDN layers as written (for comparison with "
        "the blocked GDNs of licstore/models/blocked_gdn.py)",
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    files = sorted(Path(args.images).glob("*.png"))[: args.limit]
    if not files:
        raise SystemExit(f"no PNG images in {args.images}")
    images = [Image.open(f).convert("RGB") for f in files]
    names = [m for m in args.models.split(",") if m] or [None]
    columns: dict[str, dict[str, float]] = {}
    for name in names:
        net = licstore.models.load(name)
        if args.unblocked_gdn:
            unblocked(net)
        columns[f"{net.name}@{net.weights_sha256[:8]}"] = measure_model(name, images)
    classical = classical_decode_times(images)

    print(
        f"{len(images)} images from {args.images}, {args.threads} threads, "
        f"torch {torch.__version__}"
    )
    print("| measure | " + " | ".join(columns) + " |")
    print("|---|" + "---:|" * len(columns))
    for key in next(iter(columns.values())):
        print(f"| {key} | " + " | ".join(f"{c[key]:.3f}" for c in columns.values()) + " |")
    for key, t in classical.items():
        print(f"| {key} decode (s/img) | {t:.3f} |" + " |" * (len(columns) - 1))
    if args.json:
        rows = next(iter(columns.values())) if len(columns) == 1 else columns
        if len(columns) == 1:
            rows = {**rows, **{f"{k} decode (s/img)": v for k, v in classical.items()}}
        else:
            rows = {"models": columns, "classical decode (s/img)": classical}
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
