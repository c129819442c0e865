"""tools/train.py and tools/export_weights.py on tiny models and a few synthetic photos.

Every architecture must train, checkpoint, resume and export into a weights file the
codec loads: that is how shipped models are made.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import licstore

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for i in range(2):
        yy, xx = np.mgrid[0:176, 0:200]
        img = np.stack([xx * 1.2, yy * 1.4, (xx + yy) * 0.6], -1) + rng.normal(0, 8, (176, 200, 3))
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(d / f"p{i}.png")
    return d


def _events(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


CASES = [
    ("mshp-vr", {"N": 8, "M": 12}, 64),
    ("resnet-subpixel", {"N": 8, "M": 12}, 64),
    ("mshp-ckbd", {"N": 8, "M": 12}, 64),
    ("resgdn-vr", {"N": 8, "M": 2}, 128),  # MS-SSIM's 4 scales need 128-pixel crops
]


@pytest.mark.parametrize(("arch", "kwargs", "crop"), CASES, ids=[c[0] for c in CASES])
def test_train_resume_export_and_code(arch, kwargs, crop, photos, tmp_path, photo, load_tool):
    train, export = load_tool("train"), load_tool("export_weights")
    run = tmp_path / "run"
    common = [
        "--arch", arch, "--arch-kwargs", json.dumps(kwargs), "--data", str(photos),
        "--kodak", str(tmp_path / "no-kodak"), "--out", str(run), "--batch", "2",
        "--crop", str(crop), "--warmup", "2", "--threads", "1",
    ]  # fmt: skip
    train.main([*common, "--hours", str(1.5 / 3600)])
    first = torch.load(run / "last.pt", weights_only=True)
    assert first["arch"] == arch and first["step"] > 0
    events = _events(run)
    assert events[0]["event"] == "start" and events[-1]["event"] == "end"

    train.main([*common, "--hours", str(3 / 3600), "--resume"])
    second = torch.load(run / "last.pt", weights_only=True)
    assert second["step"] > first["step"]
    assert second["elapsed"] >= 3.0
    for ck in (first, second):
        assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())

    out = tmp_path / "weights"
    export.main([str(run / "last.pt"), "--name", f"trained-{arch}", "--out-dir", str(out)])
    (weights,) = out.glob(f"trained-{arch}-*.safetensors")
    name = licstore.models.register_weights(weights)
    data = licstore.encode(photo, quality=2, model=name)
    assert np.asarray(licstore.decode(data)).shape == photo.shape


def test_init_from_shipped_weights(photos, tmp_path, load_tool):
    """Continuing the default model from its safetensors (fresh optimizer), as the card says."""
    from licstore.models.weights import WEIGHTS_DIR, read_manifest

    entry = read_manifest()["models"]["mshp-vr"]
    shipped = WEIGHTS_DIR / next(
        v["file"] for v in entry["versions"] if v["sha256"] == entry["default"]
    )
    train = load_tool("train")
    run = tmp_path / "run"
    train.main([
        "--init-from", str(shipped), "--data", str(photos), "--kodak", str(tmp_path / "none"),
        "--out", str(run), "--batch", "1", "--crop", "64", "--hours", str(2 / 3600),
        "--threads", "1", "--lr", "1e-6",
    ])  # fmt: skip
    ck = torch.load(run / "last.pt", weights_only=True)
    shipped_g_s = licstore.models.weights.load_float_state(shipped)["g_s.0.weight"]
    # a tiny learning rate: the trained weights are still the shipped ones, to fp16 rounding
    assert torch.allclose(ck["model"]["g_s.0.weight"], shipped_g_s.float(), atol=1e-3)


def test_outlier_steps_are_recognised(load_tool):
    train = load_tool("train")
    recent = [1.0 + 0.01 * i for i in range(50)]
    assert train.is_outlier(float("inf"), [], 0.0) and train.is_outlier(float("nan"), recent, 10)
    assert train.is_outlier(30.0, recent, 10.0) and not train.is_outlier(5.0, recent, 10.0)
    assert not train.is_outlier(1e30, recent, 0.0)  # factor 0: only non-finite losses
    assert not train.is_outlier(1e30, recent[:5], 10.0)  # too few steps for a median yet


def test_cpu_clock_budget_counts_process_time(photos, tmp_path, load_tool):
    """``--clock cpu``: the budget is the process's CPU time, and a run keeps its clock."""
    import time

    train = load_tool("train")
    run = tmp_path / "run"
    common = [
        "--arch-kwargs", json.dumps({"N": 8, "M": 12}), "--data", str(photos),
        "--kodak", str(tmp_path / "none"), "--out", str(run), "--batch", "1", "--crop", "64",
        "--threads", "1", "--warmup", "1",
    ]  # fmt: skip
    cpu0, wall0 = time.process_time(), time.time()
    train.main([*common, "--hours", str(1.5 / 3600), "--clock", "cpu"])
    cpu_used = time.process_time() - cpu0
    ck = torch.load(run / "last.pt", weights_only=True)
    assert ck["clock"] == "cpu" and ck["step"] > 0
    # the budget was spent in CPU time of this process, which photo loading etc. also used
    assert 1.5 <= ck["elapsed"] <= cpu_used <= time.time() - wall0 + 0.5
    with pytest.raises(SystemExit, match="--clock cpu"):
        train.main([*common, "--hours", str(3 / 3600), "--resume"])  # default: wall


@pytest.mark.parametrize("native", [True, False], ids=["native-bf16", "emulated-bf16"])
def test_bf16_only_where_the_cpu_has_it(native, photos, tmp_path, load_tool, monkeypatch, capsys):
    """``--bf16`` on a CPU without native bf16 trains in fp32 (emulated bf16 is several times slower
    there), says so on stderr and in the log; ``--force-bf16`` overrides."""
    train = load_tool("train")
    monkeypatch.setattr(train, "native_bf16", lambda device="cpu": native)
    common = [
        "--arch-kwargs", json.dumps({"N": 8, "M": 12}), "--data", str(photos),
        "--kodak", str(tmp_path / "none"), "--batch", "1", "--crop", "64",
        "--threads", "1", "--warmup", "1", "--hours", str(0.3 / 3600),
    ]  # fmt: skip
    train.main([*common, "--out", str(tmp_path / "a"), "--bf16"])
    start = _events(tmp_path / "a")[0]
    assert start["precision"] == ("bf16" if native else "fp32")
    assert start["bf16_fallback"] is (not native)
    assert ("no native bf16" in capsys.readouterr().err) is (not native)
    train.main([*common, "--out", str(tmp_path / "b"), "--force-bf16"])
    assert _events(tmp_path / "b")[0]["precision"] == "bf16"
    train.main([*common, "--out", str(tmp_path / "c")])
    assert _events(tmp_path / "c")[0]["precision"] == "fp32"


def test_native_bf16_answers_for_cpu_and_cuda():
    from licstore.precision import native_bf16

    assert isinstance(native_bf16("cpu"), bool)
    assert native_bf16("cuda") is (torch.cuda.is_available() and torch.cuda.is_bf16_supported())


def test_train_report_chains_hours_and_summarises_throughput(tmp_path, load_tool, capsys):
    log = tmp_path / "log.jsonl"
    recs = [
        {"event": "start", "step": 0},
        {"step": 100, "hours": 0.1, "patches_per_s": 10.0},
        {"event": "kodak", "step": 100, "hours": 0.1,
         "points": [{"r": r, "bpp": 0.5, "psnr": 30.0} for r in (0, 3.5, 7)]},
        {"step": 200, "hours": 0.2, "patches_per_s": 30.0},
        {"step": 300, "hours": 0.3, "patches_per_s": 20.0},
    ]  # fmt: skip
    log.write_text("".join(json.dumps(r) + "\n" for r in recs))
    load_tool("train_report").main([f"{log}:0.25", str(log)])
    out = capsys.readouterr().out
    assert f"| 0.10 | {log} | 100 | 0.500 / 30.00" in out
    assert f"| 0.35 | {log} | 100 |" in out  # the second run starts after 0.25 h
    assert f"{log}: median 20.0 patches/s (10.0-30.0, 6 records)" in out


def test_lambda_balance_weights_low_rates_up(load_tool):
    train = load_tool("train")

    class Lambdas:  # the two things rd_loss asks of a model
        levels = 3

        def lambdas(self, r):
            return 0.001 * 4.0**r

    x = torch.zeros(2, 3, 4, 4)
    out = {"x_hat": torch.full((2, 3, 4, 4), 0.1), "likelihoods": {"y": torch.full((2, 1), 0.5)}}
    r = torch.tensor([0.0, 2.0])
    lam = Lambdas().lambdas(r)
    mean = train.geometric_mean_lambda(Lambdas())
    assert mean == pytest.approx(0.004)  # (0.001 * 0.004 * 0.016) ** (1 / 3)
    per_sample = lam * 255**2 * 0.01 + 1 / 16  # MSE 0.01; 1 bit over 16 pixels
    plain, mse, bpp = train.rd_loss(Lambdas(), out, x, r, mean, 0.0)
    assert torch.allclose(mse, torch.full((2,), 0.01)) and torch.allclose(
        bpp, torch.full((2,), 1 / 16)
    )
    assert float(plain) == pytest.approx(float(per_sample.mean()), rel=1e-6)
    balanced, _, _ = train.rd_loss(Lambdas(), out, x, r, mean, 0.5)
    weights = (lam / mean) ** -0.5  # 2 for the low rate, 1/2 for the high one
    assert float(balanced) == pytest.approx(float((weights * per_sample).mean()), rel=1e-6)
    assert float(balanced) < float(plain)  # the large-lambda sample counts less
