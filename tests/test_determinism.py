"""Decoding must not depend on the machine: threads, batch composition, synthesis precision.

Encode in one process (1 thread, batch of 1); decode in another (2 threads, inside a
batch of other images, bf16 synthesis). The decoded latents must be bit-identical and
the pixels equal up to the synthesis' rounding.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

ENCODE = textwrap.dedent(
    """
    import sys, torch, numpy as np, licstore
    torch.set_num_threads(1)
    name = licstore.models.register_weights(sys.argv[1])
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:72, 0:100]
    img = np.clip(np.stack([xx * 2, yy * 3, xx + yy], -1) + rng.normal(0, 8, (72, 100, 3)), 0, 255)
    data = licstore.encode(img.astype(np.uint8), model=name, quality=6)
    sys.stdout.buffer.write(data)
    """
)

DECODE = textwrap.dedent(
    """
    import sys, json, hashlib, torch, numpy as np, licstore
    from licstore import container
    torch.set_num_threads(int(sys.argv[2]))
    name = licstore.models.register_weights(sys.argv[1])
    data = sys.stdin.buffer.read()
    bs = container.unpack(data)
    net = licstore.models.for_bitstream(bs.model, bs.weights_hash)
    y = net.decode_latents(bs.layer("base").data, bs.height, bs.width, bs.rate)
    rng = np.random.default_rng(int(sys.argv[3]))
    others = [licstore.encode(rng.integers(0, 256, (72, 100, 3), dtype=np.uint8), model=name)
              for _ in range(2)]
    batch = others[:1] + [data] + others[1:]
    img = licstore.decode_batch(batch, precision=sys.argv[4], batch_transforms=True)[1]
    print(json.dumps({"latents": hashlib.sha256(y.numpy().tobytes()).hexdigest(),
                      "pixels": np.asarray(img).tolist()}))
    """
)


def _run(
    script: str, *args: str, stdin: bytes | None = None, float64_kernel: bool = False
) -> bytes:
    env = dict(os.environ)
    if float64_kernel:
        env["LICSTORE_EXACT_MATMUL"] = "float64"
    res = subprocess.run(
        [sys.executable, "-c", script, *args], input=stdin, capture_output=True, check=False,
        env=env,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr.decode()[-2000:]
    return res.stdout


TINY = {  # architecture -> sizes of its tiny model
    "mshp-ckbd": {"N": 16, "M": 24},
    "resnet-subpixel": {"N": 16, "M": 24},
    "resgdn-vr": {"N": 16, "M": 4},
    "ibfe": {"N": 8, "M": 12, "qecm_noise": 0.1},  # QECM's dither on: the decoder replays it
}


@pytest.fixture(scope="module", params=["mshp-vr", *TINY])
def weights_path(request, tiny_weights_path, tmp_path_factory):
    """Every shipped architecture (tiny, random): the contract is the format's, not a model's."""
    if request.param == "mshp-vr":
        return tiny_weights_path
    from conftest import make_tiny_weights

    path = tmp_path_factory.mktemp("w") / f"{request.param}.safetensors"
    return make_tiny_weights(
        path, f"tiny-{request.param}", architecture=request.param, kwargs=TINY[request.param]
    )


def test_cross_process_threads_batch_precision_and_kernel(weights_path):
    """The second decoder also computes the exact path with the float64 kernel."""
    data = _run(ENCODE, str(weights_path))
    a = json.loads(_run(DECODE, str(weights_path), "1", "1", "fp32", stdin=data))
    b = json.loads(
        _run(DECODE, str(weights_path), "2", "2", "bf16", stdin=data, float64_kernel=True)
    )
    assert a["latents"] == b["latents"]
    pa, pb = np.array(a["pixels"], np.int16), np.array(b["pixels"], np.int16)
    assert pa.shape == pb.shape == (72, 100, 3)
    mse = float(np.mean((pa - pb) ** 2))
    assert mse < 1.0, f"bf16 vs fp32 synthesis differ by more than rounding (MSE {mse})"


def test_latents_hash_is_stable_in_process(tiny_model):
    """Same bitstream, different batch neighbours and thread counts: same latents."""
    import torch

    import licstore
    from licstore import container

    rng = np.random.default_rng(5)
    data = licstore.encode(rng.integers(0, 256, (64, 80, 3), dtype=np.uint8), model=tiny_model)
    bs = container.unpack(data)
    net = licstore.models.for_bitstream(bs.model, bs.weights_hash)
    hashes = set()
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            y = net.decode_latents(bs.layer("base").data, bs.height, bs.width, bs.rate)
            hashes.add(hashlib.sha256(y.numpy().tobytes()).hexdigest())
    finally:
        torch.set_num_threads(before)
    assert len(hashes) == 1
