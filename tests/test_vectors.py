"""Old bitstreams keep decoding: every file in formats/vectors/ against current code."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import licstore
from licstore import container
from licstore.models.weights import WEIGHTS_DIR, read_manifest

VECTORS = Path(__file__).resolve().parents[1] / "formats" / "vectors"
INDEX = json.loads((VECTORS / "index.json").read_text())
#: the repository's weights: superseded versions stay here when the wheel leaves them out
REPO_WEIGHTS = Path(__file__).resolve().parents[1] / "licstore" / "weights"


@pytest.fixture(scope="module", autouse=True)
def vector_models():
    for w in VECTORS.glob("*.safetensors"):
        licstore.models.register_weights(w)
    # an installed wheel ships the current versions only: the vectors of superseded ones
    # decode with the repository's files (registered without changing any default)
    for name, entry in read_manifest()["models"].items():
        for v in entry["versions"]:
            if (REPO_WEIGHTS / v["file"]).is_file():
                licstore.models.add_weights(name, v["sha256"], REPO_WEIGHTS / v["file"])


def _skip_if_weights_absent(bs) -> None:
    """Skip (with the reason) a vector whose weights are a manifest version present neither
    in the installed package nor in the repository; anything else must decode."""
    key = bs.weights_hash.hex()
    for v in read_manifest()["models"].get(bs.model, {}).get("versions", []):
        if v["sha256"].startswith(key):
            if not (WEIGHTS_DIR / v["file"]).is_file() and not (REPO_WEIGHTS / v["file"]).is_file():
                pytest.skip(f"{v['file']} (superseded, not installed) is not in this checkout")


def test_every_vector_is_indexed():
    assert {p.name for p in VECTORS.glob("*.lic")} == set(INDEX)
    assert len(INDEX) >= 7
    pngs = {rec["pixels_file"] for rec in INDEX.values() if "pixels_file" in rec}
    assert {p.name for p in VECTORS.glob("*.png")} == pngs


@pytest.mark.parametrize("name", sorted(INDEX))
def test_vector_decodes_to_recorded_latents_and_pixels(name):
    rec = INDEX[name]
    data = (VECTORS / name).read_bytes()
    assert hashlib.sha256(data).hexdigest() == rec["bitstream_sha256"]
    bs = container.unpack(data)
    _skip_if_weights_absent(bs)
    net = licstore.models.for_bitstream(bs.model, bs.weights_hash)
    y = net.decode_latents(bs.layer("base").data, bs.height, bs.width, bs.rate)
    assert hashlib.sha256(y.numpy().tobytes()).hexdigest() == rec["latents_sha256"]
    img = licstore.decode(data, precision="fp32")
    assert img.mode == rec["mode"] and list(img.size) == rec["size"]
    if "pixels_tolerance" in rec:  # the model's fp32 synthesis is exact only to rounding
        ref = np.asarray(Image.open(VECTORS / rec["pixels_file"]), dtype=np.int16)
        assert np.abs(np.asarray(img, dtype=np.int16) - ref).max() <= rec["pixels_tolerance"]
    else:
        assert hashlib.sha256(np.asarray(img).tobytes()).hexdigest() == rec["pixels_sha256"]
