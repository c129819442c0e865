"""Rate-distortion evaluation: classical codec adapters, the evaluation loop, BD tables, plots.

Shared by ``tools/eval_rd.py`` and the ``licstore eval`` subcommand so that every number we
publish about licstore comes from one code path. Classical codecs go through Pillow (JPEG,
WebP, AVIF) and pillow-heif (HEVC/x265); licstore models go through the public
``licstore.encode`` / ``licstore.decode`` API, exactly as users call it.

matplotlib, pillow-heif and the licstore codec are imported lazily, only when used.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import platform
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .metrics import bd_psnr, bd_rate, ms_ssim, psnr
from .ratecontrol import RESIDUALS

__all__ = [
    "CODECS",
    "Codec",
    "CodecUnavailable",
    "bd_table",
    "evaluate",
    "format_bd_markdown",
    "get_codec",
    "licstore_codec",
    "load_images",
    "load_results",
    "plot_rd",
    "save_results",
]

EncodeFn = Callable[[Image.Image, int], bytes]
DecodeFn = Callable[[bytes], Image.Image]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".ppm", ".bmp", ".tif", ".tiff", ".webp")


class CodecUnavailable(RuntimeError):
    """The codec cannot run in this environment (missing plugin, API or model)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason} ({detail})" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Codec:
    """A lossy codec under test: ``encode(image, quality) -> bytes`` and ``decode(bytes)``.

    ``qualities`` is the default sweep, ordered from lowest to highest rate. ``check``
    raises :class:`CodecUnavailable` when the codec cannot run here.
    """

    name: str
    encode: EncodeFn
    decode: DecodeFn
    qualities: tuple[int, ...]
    label: str = ""
    check: Callable[[], None] = field(default=lambda: None)
    #: extra per-image numbers read off a bitstream (e.g. the residual layer's share)
    describe: Callable[[bytes], dict[str, float]] | None = None


# --------------------------------------------------------------------------- classical codecs


def _save(img: Image.Image, fmt: str, **params: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **params)
    return buf.getvalue()


def _pil_decode(data: bytes) -> Image.Image:
    """Decode with Pillow (and any registered plugin), forcing the lazy load to happen now."""
    with Image.open(io.BytesIO(data)) as im:
        return im.convert("RGB")


def _jpeg_encode(img: Image.Image, quality: int) -> bytes:
    # Optimized Huffman tables: free rate savings any sane deployment uses.
    return _save(img, "JPEG", quality=quality, subsampling="4:2:0", optimize=True)


def _webp_encode(img: Image.Image, quality: int) -> bytes:
    return _save(img, "WEBP", quality=quality, method=6)


_AVIF_REASON: list[str | None] = []


def _avif_check() -> None:
    """Pillow >= 11.2 ships AVIF; older setups may have the ``pillow_avif`` plugin."""
    if not _AVIF_REASON:
        from PIL import features

        reason: str | None = None
        if not features.check("avif"):
            try:
                import pillow_avif  # noqa: F401  (registers the AVIF plugin on import)
            except ImportError:
                reason = "no AVIF support in Pillow and pillow_avif is not installed"
        _AVIF_REASON.append(reason)
    if _AVIF_REASON[0]:
        raise CodecUnavailable(_AVIF_REASON[0])


def _avif_encode(img: Image.Image, quality: int) -> bytes:
    return _save(img, "AVIF", quality=quality, subsampling="4:2:0", speed=6)


def _avif_decode(data: bytes) -> Image.Image:
    _avif_check()
    return _pil_decode(data)


_HEIF_REASON: list[str | None] = []


def _heif_check() -> None:
    """Register pillow-heif's opener once; report why HEVC cannot be used if it fails."""
    if not _HEIF_REASON:
        reason: str | None = None
        try:
            import pillow_heif

            pillow_heif.register_heif_opener()
            if not pillow_heif.libheif_info().get("HEIF"):
                reason = "pillow-heif has no HEVC encoder (x265) built in"
        except ImportError:
            reason = "pillow-heif is not installed"
        _HEIF_REASON.append(reason)
    if _HEIF_REASON[0]:
        raise CodecUnavailable(_HEIF_REASON[0])


def _hevc_encoder(chroma: int) -> EncodeFn:
    def encode(img: Image.Image, quality: int) -> bytes:
        _heif_check()
        # pillow-heif: ``quality`` 0..100 (x265 CRF under the hood), ``chroma`` 420/422/444.
        # Note: pillow-heif mutates a passed ``enc_params`` dict, so none is shared here.
        return _save(img, "HEIF", quality=quality, chroma=chroma)

    return encode


def _hevc_decode(data: bytes) -> Image.Image:
    _heif_check()
    return _pil_decode(data)


# Sweeps span roughly 0.1 .. 2 bpp on Kodak (low to high rate), 8 points each. Measured on
# kodim01 + kodim23 (mean): jpeg 0.15-2.3, webp 0.10-2.2, avif 0.10-2.0, hevc 0.09-2.3 bpp.
# JPEG cannot go much below ~0.15 bpp at any quality.
CODECS: dict[str, Codec] = {
    "jpeg": Codec(
        "jpeg",
        _jpeg_encode,
        _pil_decode,
        (5, 10, 20, 35, 50, 65, 80, 90),
        "JPEG (libjpeg, 4:2:0, optimized)",
    ),
    "webp": Codec(
        "webp",
        _webp_encode,
        _pil_decode,
        (0, 10, 25, 45, 62, 75, 85, 92),
        "WebP (method 6)",
    ),
    "avif": Codec(
        "avif",
        _avif_encode,
        _avif_decode,
        (10, 25, 40, 52, 62, 72, 80, 86),
        "AVIF (libavif, 4:2:0, speed 6)",
        _avif_check,
    ),
    "hevc420": Codec(
        "hevc420",
        _hevc_encoder(420),
        _hevc_decode,
        (12, 20, 28, 36, 44, 52, 58, 64),
        "HEVC 4:2:0 (x265 via pillow-heif)",
        _heif_check,
    ),
    "hevc444": Codec(
        "hevc444",
        _hevc_encoder(444),
        _hevc_decode,
        (12, 20, 28, 36, 44, 52, 58, 64),
        "HEVC 4:4:4 (x265 via pillow-heif)",
        _heif_check,
    ),
}


# --------------------------------------------------------------------------- licstore codec

LICSTORE_QUALITIES = tuple(range(1, 9))


def _licstore_check() -> None:
    try:
        import licstore

        licstore.encode  # noqa: B018  (the API is written in parallel; probe it exists)
        licstore.decode  # noqa: B018
    except (ImportError, AttributeError) as exc:
        raise CodecUnavailable("licstore API not available", str(exc)) from exc


def _to_rgb(decoded: Any) -> Image.Image:
    if isinstance(decoded, Image.Image):
        return decoded.convert("RGB")
    arr = np.asarray(decoded)
    if arr.dtype != np.uint8:
        raise TypeError(f"licstore.decode returned {arr.dtype} data, expected uint8 or an image")
    return Image.fromarray(arr).convert("RGB")


def _residual_share(data: bytes) -> dict[str, float]:
    """Fraction of the bitstream's bytes in the HEVC enhancement layer (0 without one)."""
    import licstore
    from licstore.residual import HEVC_KIND

    meta = licstore.info(data)
    residual = sum(layer.bytes for layer in meta.layers if layer.kind == HEVC_KIND)
    return {"residual_share": residual / meta.total_bytes}


#: ``licstore:MODEL@bpp`` sweeps: targets in hundredths of a bpp (0.25 .. 2.0 bpp)
LICSTORE_BPP_TARGETS = (25, 50, 75, 100, 150, 200)


def licstore_codec(
    model: str | Sequence[str], residual: str | None = None, by_bpp: bool = False
) -> Codec:
    """Adapter for a licstore model through the public API: quality levels 1..8, or with
    ``by_bpp`` (codec ``licstore:MODEL@bpp``) ``bpp=`` targets given in hundredths.

    Several models (``licstore:A|B@bpp``) are seed 001's rate control by model switching:
    per image and target the encoder keeps the best of their bitstreams. Their quality
    levels are not comparable, so a model list needs ``by_bpp``.

    With ``residual="hevc"`` (``licstore:MODEL+hevc``) every bitstream may carry the HEVC
    enhancement layer and every point records the layer's share of the bytes. By quality the
    residual is added at a fixed HEVC quality; by bpp the encoder searches the base/residual
    split for each target, which is the curve the layer really offers.
    """

    models = [model] if isinstance(model, str) else list(model)
    if len(models) > 1 and not by_bpp:
        raise ValueError("several models are chosen between by bpp= targets: add '@bpp'")
    choice = models[0] if len(models) == 1 else models
    model = "|".join(models)

    def encode(img: Image.Image, quality: int) -> bytes:
        import licstore

        target = {"bpp": quality / 100} if by_bpp else {"quality": quality}
        return bytes(licstore.encode(img, model=choice, residual=residual, **target))

    def decode(data: bytes) -> Image.Image:
        import licstore

        return _to_rgb(licstore.decode(data))

    name = f"licstore:{model}" + (f"+{residual}" if residual else "") + ("@bpp" if by_bpp else "")
    label = f"licstore {' or '.join(models)}" + (f" + {residual} residual" if residual else "")
    return Codec(
        name, encode, decode, LICSTORE_BPP_TARGETS if by_bpp else LICSTORE_QUALITIES,
        label + (" (bpp targets)" if by_bpp else ""), _licstore_check,
        describe=_residual_share if residual else None,
    )  # fmt: skip


def get_codec(name: str) -> Codec:
    """Resolve a codec name: a key of :data:`CODECS` or ``licstore:<model>[+hevc][@bpp]``
    (``+hevc``: with the residual enhancement layer; ``@bpp``: sweep bpp targets;
    ``<model>`` may be ``A|B|...`` with ``@bpp``: per-image model switching)."""
    if name in CODECS:
        return CODECS[name]
    if name.startswith("licstore:") and len(name) > len("licstore:"):
        spec = name.split(":", 1)[1]
        by_bpp = spec.endswith("@bpp")
        model, plus, residual = spec.removesuffix("@bpp").partition("+")
        if plus:
            if residual not in RESIDUALS or not model:
                raise ValueError(
                    f"unknown codec {name!r}: after '+' comes a residual layer, one of {RESIDUALS}"
                )
        models = model.split("|")
        if not all(models) or "@" in model:
            raise ValueError(f"unknown codec {name!r}: expected licstore:<model>[+hevc][@bpp]")
        if len(models) > 1 and not by_bpp:
            raise ValueError(
                f"unknown codec {name!r}: several models (model switching) need '@bpp'"
            )
        return licstore_codec(models, residual or None, by_bpp)
    raise ValueError(
        f"unknown codec {name!r}; known: {sorted(CODECS)} or licstore:<model>[+hevc][@bpp]"
    )


# --------------------------------------------------------------------------- evaluation


def load_images(folder: str | Path, limit: int | None = None) -> list[tuple[str, Image.Image]]:
    """Load the images of a folder (sorted by name) as RGB, fully decoded."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if limit is not None:
        paths = paths[:limit]
    out = []
    for p in paths:
        with Image.open(p) as im:
            out.append((p.name, im.convert("RGB")))
    return out


def _named_images(images: Iterable[Any]) -> list[tuple[str, Image.Image]]:
    out = []
    for i, item in enumerate(images):
        if isinstance(item, tuple):
            name, img = item
        elif isinstance(item, (str, Path)):
            name, img = Path(item).name, Image.open(item)
        else:
            name, img = f"image{i:03d}", item
        if not isinstance(img, Image.Image):
            img = Image.fromarray(np.asarray(img))
        out.append((str(name), img.convert("RGB")))
    if not out:
        raise ValueError("no images to evaluate")
    return out


def _run_one(codec: Codec, name: str, img: Image.Image, quality: int, do_msssim: bool) -> dict:
    t0 = time.perf_counter()
    data = codec.encode(img, quality)
    t1 = time.perf_counter()
    rec = codec.decode(data)
    t2 = time.perf_counter()
    if rec.size != img.size:
        raise RuntimeError(f"{codec.name} q={quality}: decoded size {rec.size} != {img.size}")
    ref, out = np.asarray(img), np.asarray(rec)
    pixels = img.width * img.height
    return {
        "image": name,
        "bytes": len(data),
        "bpp": len(data) * 8 / pixels,
        "psnr": psnr(ref, out),
        "ms_ssim": ms_ssim(ref, out) if do_msssim else float("nan"),
        "enc_s": t1 - t0,
        "dec_s": t2 - t1,
        **(codec.describe(data) if codec.describe else {}),
    }


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")


def _aggregate(quality: int, per_image: list[dict]) -> dict:
    point: dict[str, Any] = {"quality": quality}
    for key in ("bpp", "psnr", "ms_ssim", "enc_s", "dec_s", "residual_share"):
        if key in per_image[0]:
            point[key] = _mean([r[key] for r in per_image])
    point["per_image"] = per_image
    return point


def _versions() -> dict[str, str]:
    import PIL

    v = {"python": platform.python_version(), "pillow": PIL.__version__}
    from PIL import features

    for lib, feature in (("libavif", "avif"), ("libjpeg", "jpg"), ("libwebp", "webp")):
        version = features.version(feature)
        if version:
            v[lib] = str(version)
    try:
        import pillow_heif

        info = pillow_heif.libheif_info()
        v["pillow_heif"] = pillow_heif.__version__
        v["libheif"] = str(info.get("libheif"))
        v["x265"] = str(info.get("HEIF"))
    except ImportError:
        pass
    return v


def evaluate(
    images: Iterable[Any],
    codecs: Sequence[str | Codec],
    qualities: Mapping[str, Sequence[int]] | None = None,
    *,
    image_set: str = "",
    compute_ms_ssim: bool = True,
    log: Callable[[str], None] | None = print,
) -> dict:
    """Encode/decode every image at every quality of every codec and average the metrics.

    ``images``: PIL images, arrays, paths or ``(name, image)`` pairs. ``codecs``: names
    (see :func:`get_codec`) or :class:`Codec` objects. ``qualities`` overrides a codec's
    default sweep by name. Codecs that cannot run here (plugin, API or model missing) are
    reported through ``log`` and listed in ``result["skipped"]``; other errors propagate.

    Returns ``{"image_set", "images", "codecs": {name: {"label", "points": [...]}},
    "skipped", "versions"}`` where each point holds the means over images of bpp, psnr,
    ms_ssim, enc_s, dec_s (per image, seconds) plus the ``per_image`` records.
    """
    say = log or (lambda _msg: None)
    named = _named_images(images)
    result: dict[str, Any] = {
        "image_set": image_set,
        "images": [n for n, _ in named],
        "pixels": [im.width * im.height for _, im in named],
        "codecs": {},
        "skipped": {},
        "versions": _versions(),
    }
    for spec in codecs:
        codec = spec if isinstance(spec, Codec) else get_codec(spec)
        try:
            codec.check()
            result["codecs"][codec.name] = _evaluate_codec(
                codec, named, (qualities or {}).get(codec.name), compute_ms_ssim, say
            )
        except CodecUnavailable as exc:
            detail = f" ({exc.detail})" if exc.detail else ""
            say(f"{codec.name}: {exc.reason}, skipping{detail}")
            result["skipped"][codec.name] = str(exc)
    return result


def _evaluate_codec(
    codec: Codec,
    named: list[tuple[str, Image.Image]],
    qualities: Sequence[int] | None,
    do_msssim: bool,
    say: Callable[[str], None],
) -> dict:
    from .errors import ModelNotFoundError

    points = []
    for q in qualities if qualities is not None else codec.qualities:
        try:
            per_image = [_run_one(codec, n, im, int(q), do_msssim) for n, im in named]
        except (ImportError, AttributeError, ModelNotFoundError) as exc:
            if not codec.name.startswith("licstore:"):
                raise
            what = "model" if isinstance(exc, ModelNotFoundError) else "API"
            raise CodecUnavailable(f"licstore {what} not available", str(exc)) from exc
        point = _aggregate(int(q), per_image)
        say(
            f"{codec.name:>16s} q={q:<3d} {point['bpp']:7.4f} bpp  {point['psnr']:6.2f} dB"
            f"  ms-ssim {point['ms_ssim']:.4f}  enc {point['enc_s']:.3f}s"
            f"  dec {point['dec_s']:.3f}s"
            + (f"  residual {point['residual_share']:.1%}" if "residual_share" in point else "")
        )
        points.append(point)
    return {"label": codec.label or codec.name, "points": points}


# --------------------------------------------------------------------------- BD table


def _msssim_db(values: Sequence[float]) -> list[float]:
    """MS-SSIM on a dB scale, -10 log10(1 - x), where BD integration is meaningful."""
    return [-10 * math.log10(max(1 - v, 1e-12)) for v in values]


def _curve(result: Mapping, name: str, metric: str) -> tuple[list[float], list[float]]:
    points = result["codecs"][name]["points"]
    pts = [p for p in points if _finite(p.get("bpp")) and _finite(p.get(metric))]
    rates = [p["bpp"] for p in pts]
    values = [p[metric] for p in pts]
    return rates, _msssim_db(values) if metric == "ms_ssim" else values


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def bd_table(result: Mapping, anchor: str, method: str = "pchip") -> dict[str, dict]:
    """BD-rate (PSNR and MS-SSIM-dB, %) and BD-PSNR (dB) of every codec against ``anchor``.

    Values that cannot be computed (anchor missing, no overlap, too few points) are ``None``
    with the reason in ``"notes"``.
    """
    table: dict[str, dict] = {}
    for name in result["codecs"]:
        row: dict[str, Any] = {"bd_rate": None, "bd_psnr": None, "bd_rate_msssim": None}
        notes = []
        if anchor not in result["codecs"]:
            notes.append(f"anchor {anchor} not evaluated")
        else:
            for key, metric, fn in (
                ("bd_rate", "psnr", bd_rate),
                ("bd_psnr", "psnr", bd_psnr),
                ("bd_rate_msssim", "ms_ssim", bd_rate),
            ):
                try:
                    ra, qa = _curve(result, anchor, metric)
                    rb, qb = _curve(result, name, metric)
                    row[key] = fn(ra, qa, rb, qb, method=method)
                except ValueError as exc:
                    notes.append(f"{key}: {exc}")
        row["notes"] = notes
        table[name] = row
    return table


def _fmt(x: float | None, unit: str) -> str:
    if x is None:
        return "n/a"
    return f"{x:+.2f}{unit}"


def format_bd_markdown(
    result: Mapping, anchors: Sequence[str] = ("hevc444", "webp"), method: str = "pchip"
) -> str:
    """Markdown summary: rate range per codec and BD numbers against each anchor."""
    anchors = list(dict.fromkeys(anchors))
    n = len(result["images"])
    title = result.get("image_set") or "images"
    lines = [
        f"# Rate-distortion: {title} ({n} image{'s' if n != 1 else ''})",
        "",
        (
            f"BD method: {method}. BD-rate in % (negative = fewer bits than the anchor at equal"
            " quality), BD-PSNR in dB (positive = better)."
            " MS-SSIM BD-rate uses -10 log10(1 - MS-SSIM)."
        ),
        "",
    ]
    header = ["codec", "points", "bpp range", "PSNR range (dB)"]
    for a in anchors:
        header += [f"BD-rate vs {a}", f"BD-PSNR vs {a}", f"BD-rate MS-SSIM vs {a}"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
    tables = {a: bd_table(result, a, method) for a in anchors}
    for name, entry in result["codecs"].items():
        pts = entry["points"]
        bpps = [p["bpp"] for p in pts]
        ps = [p["psnr"] for p in pts if _finite(p["psnr"])]
        cells = [
            name,
            str(len(pts)),
            f"{min(bpps):.3f}-{max(bpps):.3f}" if bpps else "n/a",
            f"{min(ps):.2f}-{max(ps):.2f}" if ps else "n/a",
        ]
        for a in anchors:
            row = tables[a][name]
            if name == a:
                cells += ["anchor", "anchor", "anchor"]
            else:
                cells += [
                    _fmt(row["bd_rate"], "%"),
                    _fmt(row["bd_psnr"], " dB"),
                    _fmt(row["bd_rate_msssim"], "%"),
                ]
        lines.append("| " + " | ".join(cells) + " |")
    for name, reason in result.get("skipped", {}).items():
        lines.append(f"\nSkipped {name}: {reason}")
    notes = [
        f"- {name} vs {a}: {note}"
        for a in anchors
        for name, row in tables[a].items()
        if name != a
        for note in row["notes"]
    ]
    if notes:
        lines += ["", "Notes:"] + notes
    lines += _residual_share_markdown(result)
    return "\n".join(lines) + "\n"


def _residual_share_markdown(result: Mapping) -> list[str]:
    """Per point of each codec with an enhancement layer: bpp, PSNR and the layer's share."""
    lines: list[str] = []
    for name, entry in result["codecs"].items():
        pts = [p for p in entry["points"] if "residual_share" in p]
        if not pts:
            continue
        by_bpp = name.endswith("@bpp")
        lines += [
            "",
            f"{name}: share of the bytes in the residual layer (mean over images)",
            "",
            f"| {'target bpp' if by_bpp else 'quality'} | bpp | PSNR (dB) | residual share |",
            "|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {p['quality'] / 100 if by_bpp else p['quality']:g} | {p['bpp']:.3f} "
            f"| {p['psnr']:.2f} | {p['residual_share']:.1%} |"
            for p in pts
        ]
    return lines


# --------------------------------------------------------------------------- plot & I/O


def plot_rd(result: Mapping, path: str | Path, title: str | None = None) -> Path:
    """PSNR-vs-bpp plot (plus MS-SSIM dB panel when available), one line per codec."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    codecs = result["codecs"]
    has_msssim = any(_finite(p.get("ms_ssim")) for c in codecs.values() for p in c["points"])
    ncols = 2 if has_msssim else 1
    fig, axes = plt.subplots(1, ncols, figsize=(6.5 * ncols, 5), squeeze=False)
    panels = [("psnr", "PSNR (RGB) [dB]")]
    if has_msssim:
        panels.append(("ms_ssim", "MS-SSIM [dB]"))
    for ax, (metric, ylabel) in zip(axes[0], panels, strict=True):
        for name, entry in codecs.items():
            rates, values = _curve(result, name, metric)
            if rates:
                ax.plot(rates, values, marker="o", ms=3, label=entry.get("label") or name)
        ax.set_xlabel("bits per pixel")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    n = len(result["images"])
    fig.suptitle(title or f"{result.get('image_set') or 'images'} ({n} images)")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _json_safe(obj: Any) -> Any:
    """NaN/inf are not JSON: store them as null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def save_results(result: Mapping, path: str | Path) -> Path:
    """Write results as JSON (non-finite numbers become null)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_json_safe(result), indent=1) + "\n")
    return path


def load_results(path: str | Path) -> dict:
    """Read a results JSON back (nulls in metrics become NaN) for re-plotting or BD tables."""
    result = json.loads(Path(path).read_text())
    for entry in result.get("codecs", {}).values():
        for p in entry["points"]:
            for key in ("bpp", "psnr", "ms_ssim", "enc_s", "dec_s"):
                if p.get(key) is None:
                    p[key] = float("nan")
    return result


# -- command line (``licstore eval`` and ``tools/eval_rd.py``) ---------------------------

DEFAULT_IMAGES = Path(__file__).resolve().parents[2] / "shared" / "data" / "kodak"
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
    ap = argparse.ArgumentParser(
        prog="licstore eval", description="Rate-distortion evaluation against classical codecs."
    )
    ap.add_argument(
        "--images",
        type=Path,
        default=DEFAULT_IMAGES,
        help=f"folder of images (default: {DEFAULT_IMAGES})",
    )
    ap.add_argument(
        "--codecs",
        default=DEFAULT_CODECS,
        help=f"comma-separated: {', '.join(CODECS)}, licstore:MODEL[+hevc][@bpp], "
        f"licstore:A|B@bpp (model switching) (default: {DEFAULT_CODECS})",
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
    ap.add_argument(
        "--merge",
        type=Path,
        action="append",
        default=[],
        help="earlier results JSON on the same images: its codecs are kept, not re-run "
        "(repeatable; with --codecs '' only merges)",
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
    images = load_images(args.images, args.limit)
    if not images:
        print(f"error: no images in {args.images}", file=sys.stderr)
        return 2
    codecs = [c.strip() for c in args.codecs.split(",") if c.strip()]
    try:
        for c in codecs:
            get_codec(c)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    image_set = args.images.resolve().name
    print(f"{len(images)} images from {args.images}; codecs: {', '.join(codecs)}")
    result = evaluate(
        images,
        codecs,
        _parse_qualities(args.q),
        image_set=image_set,
        compute_ms_ssim=not args.no_ms_ssim,
    )
    result["bd_method"] = args.method
    for path in args.merge:
        earlier = load_results(path)
        if earlier["images"] != result["images"]:
            print(f"error: {path} was measured on other images", file=sys.stderr)
            return 2
        for name, entry in earlier["codecs"].items():
            result["codecs"].setdefault(name, entry)

    out = Path(args.out)
    json_path = save_results(result, out.with_name(out.name + ".json"))
    table = format_bd_markdown(result, anchors=(args.anchor, "webp"), method=args.method)
    md_path = out.with_name(out.name + ".md")
    md_path.write_text(table)
    print()
    print(table)
    written = [json_path, md_path]
    if not args.no_plot and result["codecs"]:
        written.append(plot_rd(result, out.with_name(out.name + ".png")))
    print("wrote " + ", ".join(str(p) for p in written))
    return 0
