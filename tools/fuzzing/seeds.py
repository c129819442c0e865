"""The fuzzing corpus: real bitstreams that every mutation starts from.

Kept apart from the mutations because building it means encoding images (torch, minutes on a
loaded machine) and caching the result, while the mutators only read (name, bytes) pairs.
"""

from __future__ import annotations

import struct
from pathlib import Path

from . import TINY_WEIGHTS, VECTORS


def _fresh_images():
    """Small synthetic images of every mode (deterministic), for freshly encoded seeds."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(21)
    h, w = 24, 40
    yy, xx = np.mgrid[0:h, 0:w]
    rgb = np.stack([xx * 6, yy * 9, (xx + yy) * 4], -1) + rng.normal(0, 8, (h, w, 3))
    rgb = np.clip(rgb, 0, 255).astype(np.uint8)
    alpha = np.clip(xx * 7 + yy * 3, 0, 255).astype(np.uint8)
    pil = Image.fromarray(rgb)
    out = {
        "RGB": pil,
        "L": pil.convert("L"),
        "LA": Image.merge("LA", (pil.convert("L"), Image.fromarray(alpha))),
        "RGBA": Image.merge("RGBA", (*pil.split(), Image.fromarray(alpha))),
        "P": pil.quantize(16),
        "1": pil.convert("1"),
    }
    pa = pil.quantize(8)
    pa_img = pa.convert("PA")
    pa_img.putalpha(Image.fromarray(alpha))
    out["PA"] = pa_img
    ptrans = pil.quantize(12)
    ptrans.info["transparency"] = 3
    out["P-transparent"] = ptrans
    return out


def _encode_seeds(small: bool) -> list[tuple[str, bytes]]:
    """Freshly encoded seeds: each mode, HEVC residual, lossless with each codec.

    ``small``: only what the tiny model's vectors lack (modes LA, PA, 1, P with a
    transparent index; lossless LA)."""
    import licstore
    from licstore import residual

    images = _fresh_images()
    if small:
        images = {k: v for k, v in images.items() if k in ("LA", "PA", "1", "P-transparent")}
    models = ["vector-tiny"] if small else ["vector-tiny", "mshp-vr", "resgdn-vr"]
    seeds = []
    for model in models:
        for name, image in images.items():
            seeds.append(
                (f"fresh-{model}-{name}-q3", licstore.encode(image, quality=3, model=model))
            )
        if small:
            data = licstore.encode(images["LA"], model=model, lossless=True)
            seeds.append((f"fresh-{model}-LA-lossless", data))
            continue
        seeds.append(
            (
                f"fresh-{model}-RGB-hevc",
                licstore.encode(images["RGB"], quality=2, model=model, residual="hevc"),
            )
        )
        for codec in residual.lossless_encoders():
            old = residual.LOSSLESS_CANDIDATES
            residual.LOSSLESS_CANDIDATES = (codec,)
            try:
                for mode in ("RGB", "L", "RGBA", "PA"):
                    data = licstore.encode(images[mode], model=model, lossless=True)
                    seeds.append((f"fresh-{model}-{mode}-lossless-{codec}", data))
            finally:
                residual.LOSSLESS_CANDIDATES = old
    return seeds


def load_corpus(
    kind: str = "full", fresh: bool = True, cache: Path | None = None
) -> list[tuple[str, bytes]]:
    """(name, bitstream) seeds in a fixed order. ``small``: the tiny model's vectors, the
    default model's and resgdn-vr's small vectors, and a few fresh tiny-model seeds.

    ``cache``: a file keeping the freshly encoded seeds (encoding them takes minutes on a
    loaded machine); delete it to encode them again."""
    paths = sorted(VECTORS.glob("*.lic"))
    if kind == "small":
        keep = (
            "tiny-",
            "mshp-vr-e11ec77a-rgb-",
            "mshp-vr-e11ec77a-1x1",
            "resgdn-vr-rgb-",
        )
        paths = [p for p in paths if p.name.startswith(keep)]
    seeds = [(p.name, p.read_bytes()) for p in paths]
    if fresh and cache is not None and cache.exists():
        seeds += _read_seeds(cache.read_bytes())
    elif fresh:
        _register_tiny()
        encoded = _encode_seeds(small=kind == "small")
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_bytes(b"".join(_seed_record(n, d) for n, d in encoded))
        seeds += encoded
    return seeds


def _seed_record(name: str, data: bytes) -> bytes:
    raw = name.encode()
    return struct.pack("<HI", len(raw), len(data)) + raw + data


def _read_seeds(blob: bytes) -> list[tuple[str, bytes]]:
    out, pos = [], 0
    while pos < len(blob):
        n, size = struct.unpack_from("<HI", blob, pos)
        pos += 6
        out.append((blob[pos : pos + n].decode(), blob[pos + n : pos + n + size]))
        pos += n + size
    return out


def _register_tiny() -> None:
    import licstore

    if "vector-tiny" not in licstore.models.available():
        licstore.models.register_weights(TINY_WEIGHTS)
