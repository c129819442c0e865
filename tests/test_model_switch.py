"""Rate control by model choice (seed 001): the best of several models' bitstreams."""

from __future__ import annotations

import numpy as np
import pytest

import licstore
from licstore import cli
from licstore.errors import RateTargetError
from licstore.metrics import psnr


@pytest.fixture(scope="module")
def second_model(tmp_path_factory) -> str:
    from conftest import make_tiny_weights

    path = make_tiny_weights(tmp_path_factory.mktemp("w") / "b.safetensors", "tiny-b", seed=1)
    return licstore.models.register_weights(path)


def _psnr(photo, data) -> float:
    return psnr(photo, np.asarray(licstore.decode(data)))


def test_bpp_keeps_the_best_psnr_within_budget(tiny_model, second_model, photo):
    budget_bpp = 1.5
    singles = {
        m: licstore.encode(photo, bpp=budget_bpp, model=m) for m in (tiny_model, second_model)
    }
    chosen = licstore.encode(photo, bpp=budget_bpp, model=[tiny_model, second_model])
    assert chosen in singles.values()
    budget = budget_bpp * photo.shape[0] * photo.shape[1] / 8 * 1.03
    within = {m: d for m, d in singles.items() if len(d) <= budget}
    best = max(within, key=lambda m: _psnr(photo, within[m]))
    assert chosen == within[best]
    assert licstore.info(chosen).model == best  # the choice is in the bitstream


def test_psnr_keeps_the_smallest(tiny_model, second_model, photo):
    # random tiny models: aim just below what both reach at their top level
    tops = [
        _psnr(photo, licstore.encode(photo, quality=8, model=m)) for m in (tiny_model, second_model)
    ]
    target = min(tops) - 0.2
    singles = [licstore.encode(photo, psnr=target, model=m) for m in (tiny_model, second_model)]
    chosen = licstore.encode(photo, psnr=target, model=[tiny_model, second_model])
    assert chosen == min(singles, key=len)
    assert _psnr(photo, chosen) >= target


def test_a_model_out_of_reach_is_skipped(tiny_model, second_model, photo, monkeypatch):
    from licstore import codec

    real = codec.encode_batch

    def failing_for_b(images, **kw):
        if kw.get("model") == second_model:
            raise RateTargetError("out of reach")
        return real(images, **kw)

    monkeypatch.setattr(codec, "encode_batch", failing_for_b)
    chosen = licstore.encode(photo, bpp=1.0, model=[tiny_model, second_model])
    assert licstore.info(chosen).model == tiny_model
    monkeypatch.setattr(
        codec, "encode_batch", lambda images, **kw: (_ for _ in ()).throw(RateTargetError("no"))
    )
    with pytest.raises(RateTargetError, match="no model reaches"):
        from licstore.model_switch import encode_batch_choosing

        encode_batch_choosing([photo], [tiny_model, second_model], bpp=1.0, quality=None, psnr=None)


def test_ambiguous_requests_are_refused(tiny_model, second_model, photo):
    with pytest.raises(ValueError, match="ambiguous"):
        licstore.encode(photo, quality=3, model=[tiny_model, second_model])
    with pytest.raises(ValueError, match="two or more"):
        licstore.encode(photo, bpp=0.5, model=[tiny_model])


def test_cli_model_pair(tmp_path, tiny_model, second_model, photo):
    from PIL import Image

    src = tmp_path / "a.png"
    Image.fromarray(photo).save(src)
    out = tmp_path / "a.lic"
    assert (
        cli.main(
            [
                "compress",
                str(src),
                "-o",
                str(out),
                "--bpp",
                "1.0",
                "--model",
                f"{tiny_model},{second_model}",
                "-q",
            ]
        )
        == 0
    )
    assert licstore.info(out.read_bytes()).model in (tiny_model, second_model)


def test_rd_sweeps_model_switching_by_bpp(tiny_model, second_model, photo):
    from PIL import Image

    from licstore import rd

    name = f"licstore:{tiny_model}|{second_model}@bpp"
    result = rd.evaluate(
        [("photo", Image.fromarray(photo))], [name], {name: [150]},
        compute_ms_ssim=False, log=None,
    )  # fmt: skip
    point = result["codecs"][name]["points"][0]
    chosen = licstore.encode(photo, bpp=1.5, model=[tiny_model, second_model])
    assert point["bpp"] == pytest.approx(len(chosen) * 8 / (photo.shape[0] * photo.shape[1]))
    assert point["psnr"] == pytest.approx(_psnr(photo, chosen), abs=1e-6)
    with pytest.raises(ValueError, match="@bpp"):
        rd.get_codec(f"licstore:{tiny_model}|{second_model}")
    with pytest.raises(ValueError, match="unknown codec"):
        rd.get_codec(f"licstore:{tiny_model}|@bpp")
