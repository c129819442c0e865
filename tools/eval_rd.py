#!/usr/bin/env python
"""Rate-distortion evaluation of licstore models against classical codecs.

Thin command-line wrapper around :mod:`licstore.rd`. Writes ``<out>.json`` (all points and
per-image values), ``<out>.md`` (BD-rate table, also printed) and ``<out>.png`` (RD plot).

Example::

    python tools/eval_rd.py --codecs jpeg,webp,hevc444,licstore:mshp-vr --limit 4
    python tools/eval_rd.py --codecs jpeg,hevc420 --q jpeg=10,90 --q hevc420=10,85 --limit 2
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_IMAGES = REPO.parent / "shared" / "data" / "kodak"
DEFAULT_CODECS = "jpeg,webp,avif,hevc420,hevc444"


def _parse_qualities(specs: list[str]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for spec in specs:
        name, sep, values = spec.partition("=")
        if not sep or not values:
            raise SystemExit(f"--q expects CODEC=Q1,Q2,..., got {spec!r}")
        try:
            out[name] = [int(v) for v in values.split(",") if v]
        except ValueError:
            raise SystemExit(f"--q: qualities must be integers, got {values!r}") from None
    return out


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(REPO))
    from licstore import rd

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--images",
        type=Path,
        default=DEFAULT_IMAGES,
        help=f"folder of images (default: {DEFAULT_IMAGES})",
    )
    ap.add_argument(
        "--codecs",
        default=DEFAULT_CODECS,
        help=f"comma-separated: {', '.join(rd.CODECS)}, licstore:MODEL (default: {DEFAULT_CODECS})",
    )
    ap.add_argument("--limit", type=int, default=None, help="use only the first N images")
    ap.add_argument(
        "--out",
        default="results/rd",
        help="output prefix: writes OUT.json, OUT.md, OUT.png (default: results/rd)",
    )
    ap.add_argument("--anchor", default="hevc444", help="BD anchor codec (default: hevc444)")
    ap.add_argument(
        "--method",
        choices=("pchip", "cubic"),
        default="pchip",
        help="BD interpolation (default: pchip)",
    )
    ap.add_argument(
        "--q",
        action="append",
        default=[],
        metavar="CODEC=Q1,Q2,...",
        help="override a codec's quality sweep (repeatable)",
    )
    ap.add_argument("--no-ms-ssim", action="store_true", help="skip MS-SSIM (faster)")
    ap.add_argument("--no-plot", action="store_true", help="do not write the PNG plot")
    args = ap.parse_args(argv)

    if not args.images.is_dir():
        print(
            f"error: image folder not found: {args.images}\n"
            "Put the 24 Kodak PNGs there or pass --images DIR.",
            file=sys.stderr,
        )
        return 2
    images = rd.load_images(args.images, args.limit)
    if not images:
        print(f"error: no images in {args.images}", file=sys.stderr)
        return 2
    codecs = [c.strip() for c in args.codecs.split(",") if c.strip()]
    try:
        for c in codecs:
            rd.get_codec(c)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    image_set = args.images.resolve().name
    print(f"{len(images)} images from {args.images}; codecs: {', '.join(codecs)}")
    result = rd.evaluate(
        images,
        codecs,
        _parse_qualities(args.q),
        image_set=image_set,
        compute_ms_ssim=not args.no_ms_ssim,
    )
    result["bd_method"] = args.method

    out = Path(args.out)
    json_path = rd.save_results(result, out.with_name(out.name + ".json"))
    table = rd.format_bd_markdown(result, anchors=(args.anchor, "webp"), method=args.method)
    md_path = out.with_name(out.name + ".md")
    md_path.write_text(table)
    print()
    print(table)
    written = [json_path, md_path]
    if not args.no_plot and result["codecs"]:
        written.append(rd.plot_rd(result, out.with_name(out.name + ".png")))
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
