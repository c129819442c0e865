#!/usr/bin/env python
"""Equal-CPU-time ablations: train each configuration for the same CPU time, code Kodak.

    python tools/ablate.py --out runs/ablate-seed001 --hours-each 0.25 \\
        --config 'hyperprior-5x5=mshp-vr' \\
        --config 'resnet-subpixel=resnet-subpixel' \\
        --config 'resnet-tconv=resnet-subpixel:{"upsample": "tconv"}' \\
        [--train-args '--bf16 --batch 16'] [--merge benchmarks/rd-kodak.json]

Each ``NAME=ARCH[:JSON kwargs]`` is trained by ``tools/train.py`` in its own process into
``OUT/NAME`` (rerunning resumes unfinished runs and skips finished ones), exported by
``tools/export_weights.py``, registered and coded end to end on the evaluation images by
``licstore.rd.evaluate`` (real bitstreams, not likelihood estimates). The table gives each
configuration's BD-rate against the first one (and against HEVC 4:4:4 and WebP when
``--merge`` brings their points measured on the same images). Runs are sequential, and
``--clock cpu`` (the default) budgets each in CPU time of its training process, so other
work on the machine slows a run down but does not shorten its share (``--clock wall``
budgets wall time, fair only on an idle machine). Writes ``OUT/ablation.json`` and
``OUT/ablation.md``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from licstore import models, rd  # noqa: E402


def parse_config(spec: str) -> tuple[str, str, dict]:
    """``NAME=ARCH[:JSON]`` -> (name, architecture, kwargs)."""
    name, sep, rest = spec.partition("=")
    if not sep or not name or not rest:
        raise SystemExit(f"--config expects NAME=ARCH[:JSON kwargs], got {spec!r}")
    arch, _, kwargs = rest.partition(":")
    try:
        parsed = json.loads(kwargs) if kwargs else {}
    except json.JSONDecodeError as e:
        raise SystemExit(f"--config {name}: bad JSON kwargs: {e}") from None
    if arch not in models.architectures():
        raise SystemExit(f"--config {name}: unknown architecture {arch!r}")
    return name, arch, parsed


def trained_hours(run: Path) -> float:
    ckpt = run / "last.pt"
    if not ckpt.exists():
        return 0.0
    return torch.load(ckpt, map_location="cpu", weights_only=True)["elapsed"] / 3600


def train(
    run: Path, arch: str, kwargs: dict, hours: float, clock: str, extra: list[str], data: str
) -> None:
    cmd = [
        sys.executable, str(ROOT / "tools" / "train.py"), "--arch", arch,
        "--arch-kwargs", json.dumps(kwargs), "--out", str(run), "--hours", str(hours),
        "--clock", clock, "--data", data, *extra,
    ]  # fmt: skip
    if (run / "last.pt").exists():
        cmd.append("--resume")
    print("$ " + shlex.join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def export(run: Path, name: str) -> Path:
    """Weights of ``run/last.pt``; an export newer than the checkpoint is reused."""
    out = run / "weights"
    done = sorted(out.glob(f"{name}-*.safetensors"))
    if len(done) == 1 and done[0].stat().st_mtime_ns >= (run / "last.pt").stat().st_mtime_ns:
        return done[0]
    for old in out.glob("*.safetensors"):
        old.unlink()
    subprocess.run(
        [sys.executable, str(ROOT / "tools" / "export_weights.py"), str(run / "last.pt"),
         "--name", name, "--out-dir", str(out)],
        check=True,
    )  # fmt: skip
    (weights,) = out.glob(f"{name}-*.safetensors")
    return weights


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, type=Path, help="folder of the runs and the table")
    ap.add_argument("--config", action="append", required=True, help="NAME=ARCH[:JSON kwargs]")
    ap.add_argument("--hours-each", type=float, required=True, help="training time each")
    ap.add_argument(
        "--clock",
        choices=("cpu", "wall"),
        default="cpu",
        help="what --hours-each counts: CPU hours of the training process, or wall hours",
    )
    ap.add_argument("--train-args", default="--bf16", help="more tools/train.py arguments")
    ap.add_argument("--data", default=str(ROOT.parent / "shared/data/train"))
    ap.add_argument("--images", type=Path, default=rd.DEFAULT_IMAGES, help="evaluation images")
    ap.add_argument("--limit", type=int, default=None, help="first N evaluation images only")
    ap.add_argument("--q", default="1,3,5,8", help="quality levels coded per configuration")
    ap.add_argument("--merge", type=Path, help="rd JSON with hevc444/webp on the same images")
    ap.add_argument("--no-ms-ssim", action="store_true")
    args = ap.parse_args(argv)

    configs = [parse_config(c) for c in args.config]
    if len({c[0] for c in configs}) != len(configs):
        raise SystemExit("configuration names must differ")
    images = rd.load_images(args.images, args.limit)
    if not images:
        raise SystemExit(f"no evaluation images in {args.images}")
    qualities = [int(q) for q in args.q.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    extra = shlex.split(args.train_args) + ["--kodak", str(args.out / "no-eval-during-training")]

    runs: dict[str, dict] = {}
    for name, arch, kwargs in configs:
        run = args.out / name
        t0 = time.time()
        if trained_hours(run) < args.hours_each * 0.999:
            train(run, arch, kwargs, args.hours_each, args.clock, extra, args.data)
        weights = export(run, f"ablate-{name}")
        models.register_weights(weights)
        ck = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
        runs[name] = {
            "architecture": arch,
            "arch_kwargs": kwargs,
            "steps": ck["step"],
            "hours": ck["elapsed"] / 3600,
            "clock": ck.get("clock", "wall"),
            "weights": str(weights),
            "session_seconds": time.time() - t0,
        }

    codecs = [f"licstore:ablate-{name}" for name, _, _ in configs]
    result = rd.evaluate(
        images,
        codecs,
        {c: qualities for c in codecs},
        image_set=args.images.resolve().name,
        compute_ms_ssim=not args.no_ms_ssim,
    )
    if args.merge:
        earlier = rd.load_results(args.merge)
        if earlier["images"] == result["images"]:
            for anchor in ("hevc444", "webp"):
                if anchor in earlier["codecs"]:
                    result["codecs"].setdefault(anchor, earlier["codecs"][anchor])
        else:
            print(f"--merge {args.merge}: other images, not merged", file=sys.stderr)
    result["ablation"] = runs
    rd.save_results(result, args.out / "ablation.json")

    anchors = [codecs[0]] + [a for a in ("hevc444", "webp") if a in result["codecs"]]
    tables = {a: rd.bd_table(result, a) for a in anchors}
    head = "| configuration | architecture | kwargs | steps | hours | " + " | ".join(
        f"BD-rate vs {a}" for a in anchors
    )
    lines = [
        f"Equal-time ablation: {args.hours_each} {args.clock} h of training each, "
        f"{len(images)} images, qualities {args.q}; `{shlex.join(['python', *sys.argv])}`",
        "",
        head + " |",
        "|---|---|---|---:|---:|" + "---:|" * len(anchors),
    ]
    for (name, arch, kwargs), codec in zip(configs, codecs):
        r = runs[name]
        cells = []
        for a in anchors:
            v = tables[a][codec]["bd_rate"]
            cells.append("anchor" if a == codec else ("n/a" if v is None else f"{v:+.2f}%"))
        lines.append(
            f"| {name} | {arch} | `{json.dumps(kwargs)}` | {r['steps']} | {r['hours']:.2f} | "
            + " | ".join(cells)
            + " |"
        )
    lines += ["", "Per quality level: bpp / PSNR (mean over images)", ""]
    lines.append("| configuration | " + " | ".join(f"q={q}" for q in qualities) + " |")
    lines.append("|---|" + "---:|" * len(qualities))
    for (name, _, _), codec in zip(configs, codecs):
        points = {p["quality"]: p for p in result["codecs"][codec]["points"]}
        lines.append(
            f"| {name} | "
            + " | ".join(f"{points[q]['bpp']:.3f} / {points[q]['psnr']:.2f} dB" for q in qualities)
            + " |"
        )
    md = "\n".join(lines) + "\n"
    (args.out / "ablation.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
