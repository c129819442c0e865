"""``licstore`` command line: compress, decompress, info, models, eval, demo.

Exit codes: 0 all inputs done, 1 some inputs failed (each listed on stderr), 2 usage (also:
two inputs that would be written to the same output, listed; nothing is written then).
Outputs are written to a temporary name and renamed, so no half-written file remains; an
existing output is replaced only with ``--force`` (otherwise its input fails), and new files
get the umask's permissions.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Iterable
from pathlib import Path

from .atomic import write_file
from .errors import LICError
from .ratecontrol import MAX_EFFORT, RESIDUALS

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".ppm", ".pgm"}


def _write_atomic(path: Path, data: bytes, force: bool = False) -> None:
    """Publish ``data`` at ``path`` in one rename; an existing file only with ``force``."""
    try:
        write_file(path, data, replace=force)
    except FileExistsError:
        raise FileExistsError(f"{path} exists (--force replaces it)") from None


def _plan(files: list[tuple[Path, Path]], out: Path, single: bool, suffix: str) -> list:
    """``(input, output)`` pairs; ``None`` (after listing them on stderr) when two inputs
    would be written to the same output, e.g. ``a.png`` and ``a.jpg`` both to ``a.lic``."""
    plan = [(src, out if single else out / rel.with_suffix(suffix)) for src, rel in files]
    by_output: dict[Path, list[Path]] = {}
    for src, dst in plan:
        by_output.setdefault(dst, []).append(src)
    clashes = {dst: srcs for dst, srcs in by_output.items() if len(srcs) > 1}
    for dst, srcs in clashes.items():
        print(
            f"licstore: {', '.join(map(str, srcs))} would all be written to {dst}; "
            "rename them or compress them to different folders",
            file=sys.stderr,
        )
    return None if clashes else plan


def _allow_download(args, names) -> None:
    """``--allow-download``: the CompressAI zoo models named may fetch their weights."""
    import licstore

    zoo = licstore.models.compressai_zoo
    if getattr(args, "allow_download", False):
        for name in names:
            if name and name.startswith(zoo.PREFIX):
                zoo.allow_download(name[len(zoo.PREFIX) :])


def _expand(inputs: Iterable[str], suffixes: set[str]) -> list[tuple[Path, Path]]:
    """(file, path relative to its input root) for files and folders given."""
    out = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            for f in sorted(p.rglob("*")):
                if f.is_file() and f.suffix.lower() in suffixes:
                    out.append((f, f.relative_to(p)))
        else:
            out.append((p, Path(p.name)))
    return out


def _rate_kwargs(args) -> dict:
    return {"bpp": args.bpp, "quality": args.quality, "psnr": args.psnr}


def cmd_compress(args) -> int:
    from tqdm import tqdm

    import licstore

    files = _expand(args.inputs, IMAGE_SUFFIXES)
    if not files:
        print("no input images found", file=sys.stderr)
        return 1
    out = Path(args.output)
    single = len(files) == 1 and out.suffix == ".lic" and not out.is_dir()
    plan = _plan(files, out, single, ".lic")
    if plan is None:
        return 2
    failed = []
    model = _models(args.model)
    try:
        _allow_download(args, model if isinstance(model, list) else [model])
    except LICError as e:
        print(f"licstore: {e}", file=sys.stderr)
        return 2
    for src, dst in tqdm(plan, unit="img", disable=args.quiet or len(plan) < 2):
        try:
            if dst.exists() and not args.force:
                raise FileExistsError(f"{dst} exists (--force replaces it)")
            data = licstore.encode(
                str(src),
                model=model,
                residual=args.residual,
                lossless=args.lossless,
                effort=args.effort,
                **_rate_kwargs(args),
            )
            _write_atomic(dst, data, args.force)
        except (LICError, OSError) as e:
            failed.append((src, e))
    for src, e in failed:
        print(f"failed: {src}: {e}", file=sys.stderr)
    return 1 if failed else 0


def cmd_decompress(args) -> int:
    from tqdm import tqdm

    import licstore

    files = _expand(args.inputs, {".lic"})
    out = Path(args.output)
    fmt = args.format.lower()
    single = len(files) == 1 and out.suffix.lower() in {f".{fmt}", ".png", ".jpg", ".webp", ".tif"}
    plan = _plan(files, out, single, f".{fmt}")
    if plan is None:
        return 2
    failed = []
    for src, dst in tqdm(plan, unit="img", disable=args.quiet or len(plan) < 2):
        try:
            if dst.exists() and not args.force:
                raise FileExistsError(f"{dst} exists (--force replaces it)")
            data = src.read_bytes()
            if args.allow_download:  # the zoo model this file names may fetch its weights
                _allow_download(args, [licstore.info(data).model])
            img = licstore.decode(data)
            import io

            buf = io.BytesIO()
            img.save(buf, format=dst.suffix.lstrip(".").upper().replace("JPG", "JPEG"))
            _write_atomic(dst, buf.getvalue(), args.force)
        except (LICError, OSError, ValueError, KeyError) as e:
            failed.append((src, e))
    for src, e in failed:
        print(f"failed: {src}: {e}", file=sys.stderr)
    return 1 if failed else 0


def cmd_info(args) -> int:
    import licstore

    failed = 0
    for src, _ in _expand(args.inputs, {".lic"}):
        try:
            i = licstore.info(src.read_bytes())
        except (LICError, OSError) as e:
            print(f"failed: {src}: {e}", file=sys.stderr)
            failed += 1
            continue
        layers = ", ".join(f"{layer.kind} {layer.bytes} B" for layer in i.layers)
        print(
            f"{src}: v{i.format_version} {i.model}@{i.weights_hash[:8]} {i.width}x{i.height} "
            f"{i.mode} rate={i.rate} {i.total_bytes} B ({i.bpp:.3f} bpp) layers: {layers}; "
            f"container overhead {i.overhead_bytes} B"
        )
    return 1 if failed else 0


def cmd_models_export(args) -> int:
    from .carried_weights import export

    try:
        print(export(args.spec, args.folder))
    except (LICError, ValueError, OSError) as e:
        print(f"licstore models export: {e}", file=sys.stderr)
        return 1
    return 0


def cmd_models_register(args) -> int:
    from .carried_weights import keep

    try:
        name, sha256, path = keep(args.file, args.name)
    except (LICError, ValueError, OSError) as e:
        print(f"licstore models register: {e}", file=sys.stderr)
        return 1
    print(f"{name}@{sha256[:16]} kept as {path}: files written with it decode from now on")
    return 0


def cmd_models(args) -> int:
    import licstore

    default = licstore.models.DEFAULT_MODEL
    if not args.stats:
        for name in licstore.models.available():
            print(f"{name}{'  (default)' if name == default else ''}")
        return 0
    from licstore.models import stats

    try:
        height, width = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        print(f"--size wants HEIGHTxWIDTH, got {args.size!r}", file=sys.stderr)
        return 2
    rows, shipped_archs = [], set()
    for name in licstore.models.available():
        if name.startswith(licstore.models.compressai_zoo.PREFIX):
            continue  # their weights may need a download: not loaded here
        try:
            model = licstore.models.load(name)
        except LICError as e:  # a damaged or missing registered file: report, go on
            print(f"skipped {name}: {e}", file=sys.stderr)
            continue
        shipped_archs.add(model.architecture)
        s = stats.measure(model, height, width)
        rows.append(dataclasses.replace(s, architecture=f"{name} ({model.architecture})"))
    for arch in licstore.models.architectures():
        if arch not in shipped_archs:
            s = stats.measure_architecture(arch, height=height, width=width)
            rows.append(dataclasses.replace(s, architecture=f"{arch} (no weights)"))
    print(f"{height} x {width} pixels, one image")
    print(stats.table(rows))
    return 0


def cmd_eval(args) -> int:
    from . import rd

    return rd.main(args.rest)


def demo_images() -> list[Path]:
    """Kodak next to the repository when present, else the small bundled sample photos."""
    kodak = Path(__file__).resolve().parents[2] / "shared" / "data" / "kodak"
    if kodak.is_dir() and any(kodak.glob("*.png")):
        return sorted(kodak.glob("*.png"))
    samples = Path(__file__).resolve().parent / "samples"
    return sorted(p for p in samples.glob("*") if p.suffix.lower() in {".png", ".jpg", ".jpeg"})


def cmd_demo(args) -> int:
    """Compress real photos with the shipped default model; print sizes, bpp, PSNR, time."""
    import numpy as np
    from PIL import Image

    import licstore
    from licstore.metrics import psnr

    files = demo_images()[: args.limit] if args.limit else demo_images()
    if not files:
        print("no demo images found", file=sys.stderr)
        return 1
    print(f"model {licstore.models.DEFAULT_MODEL}, target bpp={args.bpp}, {len(files)} images")
    print(
        f"{'image':<14}{'original B':>12}{'licstore B':>12}{'bpp':>8}{'PSNR dB':>9}{'enc s':>8}{'dec s':>8}"
    )
    tot_in = tot_out = 0
    ps = []
    for f in files:
        raw = f.stat().st_size
        img = Image.open(f).convert("RGB")
        t0 = time.perf_counter()
        try:
            data = licstore.encode(img, bpp=args.bpp)
        except LICError as e:  # e.g. a target below the model's lowest rate for this image
            print(f"{f.name:<14}failed: {e}", file=sys.stderr)
            continue
        t1 = time.perf_counter()
        rec = licstore.decode(data)
        t2 = time.perf_counter()
        p = psnr(np.asarray(img), np.asarray(rec))
        bpp = len(data) * 8 / (img.width * img.height)
        tot_in += raw
        tot_out += len(data)
        ps.append(p)
        print(
            f"{f.name:<14}{raw:>12}{len(data):>12}{bpp:>8.3f}{p:>9.2f}{t1 - t0:>8.2f}{t2 - t1:>8.2f}"
        )
    if not ps:
        return 1
    print(
        f"total: {tot_in} B as stored -> {tot_out} B with licstore "
        f"({100 * (1 - tot_out / tot_in):.1f}% saved, {tot_in / tot_out:.1f}x), mean PSNR {np.mean(ps):.2f} dB"
    )
    return 0


def _models(spec: str | None) -> str | list[str] | None:
    """``--model a,b``: keep the better of the two models' bitstreams per image."""
    if spec and "," in spec:
        return [m.strip() for m in spec.split(",") if m.strip()]
    return spec


def cmd_compress_parquet(args) -> int:
    """A Parquet dataset -> its LIC-compressed copy, on a Dask cluster (``licstore.dask``)."""
    import licstore
    from licstore.dask import compress_parquet

    rate = _rate_kwargs(args)
    if all(v is None for v in rate.values()):
        rate["bpp"] = 0.3
    try:
        report = compress_parquet(
            args.src,
            args.dst,
            column=args.column,
            feature=licstore.LICImage(
                model=args.model,
                residual=args.residual,
                lossless=args.lossless,
                effort=args.effort,
                **rate,
            ),
            client=args.scheduler,
            workers=args.workers,
            on_error=args.on_error,
            device=args.device,
            rows_per_task=args.rows_per_task,
            progress=not args.quiet,
        )
    except (LICError, OSError, KeyError, ValueError) as e:
        print(f"failed: {e}", file=sys.stderr)
        return 1
    print(report)
    for f in report.failures:
        print(f"failed: {f.shard} row {f.row} ({f.source}): {f.reason}", file=sys.stderr)
    return 1 if report.failures else 0


def add_enhancement(p: argparse.ArgumentParser) -> None:
    """``--residual hevc`` / ``--lossless``: the enhancement layers of ``licstore.encode``."""
    enh = p.add_mutually_exclusive_group()
    enh.add_argument(
        "--residual",
        choices=list(RESIDUALS),
        help="add an HEVC-coded residual layer (with --bpp: best base/residual split)",
    )
    enh.add_argument(
        "--lossless",
        action="store_true",
        help="add an exact residual layer: decoded images equal the input bit for bit",
    )


def add_effort(p: argparse.ArgumentParser) -> None:
    """``--effort N``: encoder-side latent refinement (``licstore.encode(effort=...)``)."""
    p.add_argument(
        "--effort",
        type=int,
        default=0,
        help=f"0..{MAX_EFFORT}: refine each image's latents before coding (slower encode, "
        "fewer bytes at the same quality; decoding unchanged). Default 0",
    )


def add_output_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--force", action="store_true", help="replace existing output files")
    p.add_argument(
        "--allow-download",
        action="store_true",
        help="let CompressAI zoo models (compressai:...) fetch their weights from CompressAI's "
        "model store (never done otherwise)",
    )


def add_compress_parquet(sub) -> None:
    p = sub.add_parser(
        "compress-parquet", help="Parquet dataset -> LIC-compressed copy, on a Dask cluster"
    )
    p.add_argument("src", help="Parquet file, folder or glob (any fsspec URL)")
    p.add_argument("dst", help="output folder (any fsspec URL); rerun to resume")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--bpp", type=float, help="target bits per pixel (default 0.3)")
    g.add_argument("--quality", type=int, help="quality level 1..8")
    g.add_argument("--psnr", type=float, help="target PSNR in dB")
    p.add_argument("--model", help="model name (see `licstore models`)")
    p.add_argument("--column", default="image", help="image column (default: image)")
    add_enhancement(p)
    add_effort(p)
    w = p.add_mutually_exclusive_group()
    w.add_argument("--scheduler", help="address of a running Dask scheduler")
    w.add_argument("--workers", type=int, help="worker processes of the local cluster")
    p.add_argument("--on-error", choices=["raise", "copy"], default="raise")
    p.add_argument("--device", default="auto", help="auto (GPU when a worker has one), cpu, cuda")
    p.add_argument("--rows-per-task", type=int, default=1000, help="split bigger files")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_compress_parquet)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="licstore", description="learned image compression for datasets"
    )
    sub = ap.add_subparsers(dest="cmd", required=True)

    def add_rate(p):
        g = p.add_mutually_exclusive_group()
        g.add_argument("--bpp", type=float, help="target bits per pixel (per image)")
        g.add_argument("--quality", type=int, help="quality level 1..8")
        g.add_argument("--psnr", type=float, help="target PSNR in dB")
        p.add_argument(
            "--model",
            help="model name (see `licstore models`); A,B: per image the better of the two",
        )

    p = sub.add_parser("compress", help="images -> .lic files")
    p.add_argument("inputs", nargs="+", help="image files or folders")
    p.add_argument(
        "-o", "--output", required=True, help="output folder (or .lic file for one input)"
    )
    p.add_argument("-q", "--quiet", action="store_true")
    add_rate(p)
    add_enhancement(p)
    add_effort(p)
    add_output_flags(p)
    p.set_defaults(func=cmd_compress)

    p = sub.add_parser("decompress", help=".lic files -> images")
    p.add_argument("inputs", nargs="+")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--format", default="png", help="png (default), webp, tiff, jpg")
    p.add_argument("-q", "--quiet", action="store_true")
    add_output_flags(p)
    p.set_defaults(func=cmd_decompress)

    p = sub.add_parser("info", help="describe .lic files (no network runs)")
    p.add_argument("inputs", nargs="+")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("models", help="list available models")
    p.add_argument(
        "--stats",
        action="store_true",
        help="parameters and multiply-accumulates per transform, for every model",
    )
    p.add_argument("--size", default="512x768", help="HEIGHTxWIDTH for --stats (Kodak's)")
    p.set_defaults(func=cmd_models)
    ms = p.add_subparsers(dest="models_command", metavar="{export,register}")
    q = ms.add_parser(
        "export", help="copy weights (NAME or NAME@HASH) to a folder, to keep them for later"
    )
    q.add_argument("spec", help="model name (its default weights) or NAME@HASH (>= 8 hex)")
    q.add_argument("folder", help="destination folder (any fsspec URL)")
    q.set_defaults(func=cmd_models_export)
    q = ms.add_parser(
        "register",
        help="keep a weights file for every later process (decodes the files written with it)",
    )
    q.add_argument("file", help="a licstore weights file (.safetensors)")
    q.add_argument("--name", help="model name, when the file's metadata has none")
    q.set_defaults(func=cmd_models_register)

    p = sub.add_parser("eval", help="rate-distortion evaluation (see tools/eval_rd.py --help)")
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("demo", help="compress real photos with the default model")
    p.add_argument("--bpp", type=float, default=0.3)
    p.add_argument("--limit", type=int, default=0, help="at most this many images")
    p.set_defaults(func=cmd_demo)
    add_compress_parquet(sub)
    from licstore.estimate import add_parser as add_estimate

    add_estimate(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "quality", None) is not None and not 1 <= args.quality <= 8:
        print("licstore: --quality must be 1..8", file=sys.stderr)
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
