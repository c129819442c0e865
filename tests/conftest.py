"""Shared fixtures: tiny randomly initialised models (plumbing), real photos (skipped if absent)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
KODAK = ROOT.parent / "shared" / "data" / "kodak"


def _load_script(relative: str):
    """Import a script of the repository (``tools/x.py``, ``recipes/y.py``) as a module."""
    import importlib.util

    path = ROOT / relative
    spec = importlib.util.spec_from_file_location(f"_script_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def load_tool():
    """``load_tool("train")`` imports ``tools/train.py``; ``load_tool("recipes/x.py")`` a script."""
    return lambda name: _load_script(name if name.endswith(".py") else f"tools/{name}.py")


def make_tiny_weights(
    path: Path,
    name: str = "tiny-test",
    seed: int = 0,
    architecture: str = "mshp-vr",
    kwargs: dict | None = None,
) -> Path:
    """Export a small random model of any registered architecture (fast to run) as a weights
    file, with the parts random initialisation leaves inert (zeros) made to act."""
    from licstore.models.registry import model_class
    from licstore.models.weights import export

    kwargs = dict(kwargs or {"N": 16, "M": 24})
    torch.manual_seed(seed)
    model = model_class(architecture)(**kwargs).eval()
    with torch.no_grad():
        if hasattr(model, "entropy_parameters"):  # mshp-ckbd: a context that changes the code
            model.context.weight.mul_(20)
            model.entropy_parameters[-1].weight.normal_(0, 0.05)
        if hasattr(model, "qecm"):  # ibfe: a decoder-side error compensation that acts
            model.qecm.dec_weight.normal_(0, 0.3)
    model.freeze()
    meta = {"name": name, "architecture": architecture, "arch_kwargs": json.dumps(kwargs)}
    export(model, path, meta)
    return path


@pytest.fixture(scope="session", autouse=True)
def _private_encode_cache(tmp_path_factory):
    """Tests never touch the user's encode cache or its secret; subprocesses inherit both."""
    import os

    os.environ["LICSTORE_CACHE_DIR"] = str(tmp_path_factory.mktemp("encode-cache"))
    secret = tmp_path_factory.mktemp("encode-cache-secret") / "cache-secret"
    os.environ["LICSTORE_CACHE_SECRET_FILE"] = str(secret)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """Name of a registered tiny model (random weights); subprocesses and spawned workers
    find it through ``LICSTORE_WEIGHTS``."""
    import os

    import licstore

    path = make_tiny_weights(tmp_path_factory.mktemp("weights") / "tiny.safetensors")
    os.environ["LICSTORE_WEIGHTS"] = str(path)
    return licstore.models.register_weights(path)


@pytest.fixture(scope="session")
def tiny_weights_path(tiny_model) -> Path:
    import licstore.models as m

    return next(iter(m._weights[tiny_model].values()))[0]


@pytest.fixture
def photo() -> np.ndarray:
    """A smooth synthetic 'photo' (gradients + texture), 96x80 RGB uint8."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:80, 0:96]
    img = np.stack([xx * 2.5, yy * 3.0, (xx + yy) * 1.4], -1)
    img = img + rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture(scope="session")
def kodak_dir() -> Path:
    if not KODAK.is_dir():
        pytest.skip(f"Kodak images not found at {KODAK}")
    return KODAK
