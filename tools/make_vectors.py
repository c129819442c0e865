#!/usr/bin/env python
"""Write the format test vectors in formats/vectors/ (run once per new vector set).

Each vector is a bitstream plus the SHA-256 of its decoded latents (exact on every
machine) and of its decoded pixels (fp32 synthesis). ``tests/test_vectors.py`` checks
that current code still decodes every vector to the same latents and pixels: old files
must keep decoding. Never regenerate an existing vector; add new ones.

Latents are exact by design; pixels only as far as the model's fp32 synthesis is: its
kernels round differently on another CPU or thread count, which can move a pixel by one
level (seen for ibfe between thread counts, for an ``mshp-vr`` vector between an AMD and an
Intel CPU). Lossy vectors therefore store their decoded pixels as a PNG beside the vector and
the test accepts differences up to ``--pixels-tolerance`` (default 1); lossless ones must
decode to their source exactly. ``--add-references`` gives the lossy vectors written before
that (exact SHA-256 only) a PNG of this machine's decode and the tolerance; the recorded
SHA-256 stays, and ``reference_matches_recorded`` says whether this machine reproduced it.

    python tools/make_vectors.py            # tiny random model, committed beside the vectors
    python tools/make_vectors.py --model mshp-vr --prefix mshp-vr   # the shipped default
    python tools/make_vectors.py --model ibfe --prefix ibfe --cases rgb-q2,rgb-q8
    python tools/make_vectors.py --add-references   # PNGs for older lossy vectors
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import licstore  # noqa: E402
from licstore import container, residual  # noqa: E402

VECTORS = ROOT / "formats" / "vectors"


def synthetic_photo(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([128 + 100 * np.sin(xx / 9.0), yy * 255 / h, (xx * yy) % 255], -1)
    return np.clip(img + rng.normal(0, 5, img.shape), 0, 255).astype(np.uint8)


def rgba_photo(h: int, w: int, seed: int) -> Image.Image:
    """A photo with a non-trivial alpha ramp (the alpha side layer is not constant)."""
    rgb = synthetic_photo(h, w, seed)
    alpha = (np.arange(w)[None, :] * 255 // max(w - 1, 1)).repeat(h, 0).astype(np.uint8)
    return Image.fromarray(np.dstack([rgb, alpha]), "RGBA")


def pixels_sha256(img) -> str:
    return hashlib.sha256(np.asarray(img).tobytes()).hexdigest()


def encode(img, model: str, kw: dict) -> bytes:
    """licstore.encode; ``lossless_codecs`` restricts the residual codec (to cover each code)."""
    kw = dict(kw)
    codecs = kw.pop("lossless_codecs", None)
    saved = residual.LOSSLESS_CANDIDATES
    residual.LOSSLESS_CANDIDATES = tuple(codecs) if codecs else saved
    try:
        return licstore.encode(img, model=model, **kw)
    finally:
        residual.LOSSLESS_CANDIDATES = saved


def digests(data: bytes) -> dict:
    bs = container.unpack(data)
    net = licstore.models.for_bitstream(bs.model, bs.weights_hash)
    y = net.decode_latents(bs.layer("base").data, bs.height, bs.width, bs.rate)
    img = licstore.decode(data, precision="fp32")
    return {
        "bitstream_sha256": hashlib.sha256(data).hexdigest(),
        "latents_sha256": hashlib.sha256(y.numpy().tobytes()).hexdigest(),
        "pixels_sha256": pixels_sha256(img),
        "mode": img.mode,
        "size": list(img.size),
    }


def reference(fname: str, data: bytes, tolerance: int) -> dict:
    """Store this machine's fp32 decode of vector ``fname`` as its reference PNG."""
    png = fname.removesuffix(".lic") + ".png"
    licstore.decode(data, precision="fp32").save(VECTORS / png)
    return {"pixels_file": png, "pixels_tolerance": tolerance}


def add_references(tolerance: int) -> None:
    """PNG references for the lossy vectors that only have an exact pixel SHA-256."""
    torch.set_num_threads(1)  # as the vectors were written
    index_path = VECTORS / "index.json"
    index = json.loads(index_path.read_text())
    for fname, rec in sorted(index.items()):
        if "pixels_file" in rec or rec["encode"].get("lossless"):
            continue
        if rec["model"] == "vector-tiny":
            licstore.models.register_weights(VECTORS / "vector-tiny.safetensors")
        data = (VECTORS / fname).read_bytes()
        rec.update(reference(fname, data, tolerance))
        decoded = pixels_sha256(Image.open(VECTORS / rec["pixels_file"]))
        rec["reference_matches_recorded"] = decoded == rec["pixels_sha256"]
        print(
            fname,
            "reproduces" if rec["reference_matches_recorded"] else "DIFFERS from",
            "the recorded decode",
        )
    index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", help="registered model; default: a tiny random model written here")
    ap.add_argument("--prefix", default="tiny")
    ap.add_argument("--cases", help="comma-separated subset of the cases (default: all)")
    ap.add_argument(
        "--pixels-tolerance",
        type=int,
        default=1,
        help="lossy vectors: accept decoded pixels within N of a stored PNG (0: exact SHA-256)",
    )
    ap.add_argument(
        "--add-references",
        action="store_true",
        help="write no vectors; give existing lossy vectors without a PNG one (this machine's)",
    )
    args = ap.parse_args()
    VECTORS.mkdir(parents=True, exist_ok=True)
    if args.add_references:
        add_references(args.pixels_tolerance or 1)
        return
    if args.model is None:
        from conftest import make_tiny_weights

        wpath = VECTORS / "vector-tiny.safetensors"
        if not wpath.exists():
            make_tiny_weights(wpath, name="vector-tiny", seed=1234)
        model = licstore.models.register_weights(wpath)
    else:
        model = args.model
    torch.set_num_threads(1)
    photo = synthetic_photo(48, 72, 1)
    cases = {
        "rgb-q2": (photo, {"quality": 2}),
        "rgb-q8": (photo, {"quality": 8}),
        "rgba-q5": (Image.fromarray(photo).convert("RGBA"), {"quality": 5}),
        "l-q4": (Image.fromarray(photo).convert("L"), {"quality": 4}),
        "p-q3": (Image.fromarray(photo).convert("P"), {"quality": 3}),
        "1x1-q1": (photo[:1, :1], {"quality": 1}),
        "odd-130x67-q6": (synthetic_photo(67, 130, 2), {"quality": 6}),
        # enhancement layers (formats/licstore-v1.md, sections 13 and 14)
        "rgb-hevc-q3": (photo, {"quality": 3, "residual": "hevc"}),
        "rgb-hevc-bpp3": (photo, {"bpp": 3.0, "residual": "hevc"}),
        "rgb-lossless": (photo, {"lossless": True}),
        "rgb-lossless-png": (photo, {"lossless": True, "lossless_codecs": ["png"]}),
        "rgb-lossless-webp": (photo, {"lossless": True, "lossless_codecs": ["webp"]}),
        "rgba-lossless": (rgba_photo(48, 72, 3), {"lossless": True}),
        "l-lossless": (Image.fromarray(photo).convert("L"), {"lossless": True, "quality": 2}),
        "p-lossless": (Image.fromarray(photo).convert("P"), {"lossless": True}),
        "odd-130x67-lossless": (synthetic_photo(67, 130, 2), {"lossless": True, "quality": 8}),
    }
    if args.cases:
        wanted = args.cases.split(",")
        unknown = set(wanted) - set(cases)
        if unknown:
            raise SystemExit(f"unknown cases {sorted(unknown)}; known: {sorted(cases)}")
        cases = {c: cases[c] for c in wanted}
    index_path = VECTORS / "index.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else {}
    for case, (img, kw) in cases.items():
        fname = f"{args.prefix}-{case}.lic"
        if fname in index:
            continue  # vectors are forever: never rewrite one
        data = encode(img, model, kw)
        (VECTORS / fname).write_bytes(data)
        index[fname] = {"model": model, "encode": kw, **digests(data)}
        if args.pixels_tolerance and not kw.get("lossless"):
            index[fname].update(reference(fname, data, args.pixels_tolerance))
        if kw.get("lossless"):  # the decoded pixels must be the input's, on every machine
            index[fname]["source_pixels_sha256"] = pixels_sha256(img)
            assert index[fname]["source_pixels_sha256"] == index[fname]["pixels_sha256"]
        print(fname, len(data), "bytes")
    index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
