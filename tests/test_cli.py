"""The command line, run in-process with the tiny model."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from licstore import cli


@pytest.fixture
def image_dir(tmp_path, photo):
    d = tmp_path / "imgs"
    (d / "sub").mkdir(parents=True)
    Image.fromarray(photo).save(d / "a.png")
    Image.fromarray(photo[::-1]).save(d / "sub" / "b.jpg")
    return d


def test_compress_decompress_info(tmp_path, image_dir, tiny_model, capsys):
    out = tmp_path / "lic"
    assert cli.main(["compress", str(image_dir), "-o", str(out), "--model", tiny_model, "-q"]) == 0
    lics = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.lic"))
    assert lics == ["a.lic", "sub/b.lic"]
    assert not list(out.rglob("*.tmp"))
    assert cli.main(["info", str(out / "a.lic")]) == 0
    assert "96x80" in capsys.readouterr().out
    back = tmp_path / "back"
    assert cli.main(["decompress", str(out), "-o", str(back), "-q"]) == 0
    img = Image.open(back / "sub" / "b.png")
    assert img.size == (96, 80)


def test_failed_inputs_are_listed_and_exit_1(tmp_path, image_dir, tiny_model, capsys):
    (image_dir / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "lic"
    code = cli.main(["compress", str(image_dir), "-o", str(out), "--model", tiny_model, "-q"])
    assert code == 1
    assert "broken.png" in capsys.readouterr().err
    assert (out / "a.lic").exists() and not (out / "broken.lic").exists()
    (out / "bad.lic").write_bytes(b"\x89LC\n garbage")
    assert cli.main(["info", str(out / "bad.lic")]) == 1


def test_usage_errors_exit_2(tmp_path):
    with pytest.raises(SystemExit) as e:
        cli.main(["compress", "x.png", "-o", str(tmp_path), "--bpp", "0.2", "--quality", "3"])
    assert e.value.code == 2
    assert cli.main(["compress", "x.png", "-o", str(tmp_path), "--quality", "11"]) == 2
    with pytest.raises(SystemExit) as e:
        cli.main([])
    assert e.value.code == 2


def test_single_file_output_name(tmp_path, image_dir, tiny_model):
    out = tmp_path / "one.lic"
    assert (
        cli.main(["compress", str(image_dir / "a.png"), "-o", str(out), "--model", tiny_model]) == 0
    )
    assert out.read_bytes()[:4] == b"\x89LC\n"
    png = tmp_path / "one.png"
    assert cli.main(["decompress", str(out), "-o", str(png)]) == 0
    assert np.asarray(Image.open(png)).shape == (80, 96, 3)


def test_models_lists_default(capsys):
    assert cli.main(["models"]) == 0
    assert "compressai:mbt2018-mean" in capsys.readouterr().out


def test_demo_on_bundled_samples(monkeypatch, capsys):
    """The demo's fallback images (bundled in the package) with the shipped model."""
    from pathlib import Path

    samples = sorted((Path(cli.__file__).parent / "samples").glob("*.png"))
    assert len(samples) >= 3
    monkeypatch.setattr(cli, "demo_images", lambda: samples[:1])
    assert cli.main(["demo", "--bpp", "0.5"]) == 0
    out = capsys.readouterr().out
    assert samples[0].name in out and "saved" in out


def test_output_name_collisions_are_refused(tmp_path, photo, tiny_model, capsys):
    """``a.png`` and ``a.jpg`` would both be ``out/a.lic``: nothing is written, both named."""
    Image.fromarray(photo).save(tmp_path / "a.png")
    Image.fromarray(photo[::-1]).save(tmp_path / "a.jpg")
    Image.fromarray(photo).save(tmp_path / "c.png")
    out = tmp_path / "out"
    args = [str(tmp_path / n) for n in ("a.png", "a.jpg", "c.png")]
    assert cli.main(["compress", *args, "-o", str(out), "--model", tiny_model, "-q"]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "a.png") in err and str(tmp_path / "a.jpg") in err
    assert str(out / "a.lic") in err and "c.png" not in err
    assert not out.exists() or not any(out.iterdir())
    # the same for decompress: two a.lic from different folders -> one a.png
    for d in ("x", "y"):
        assert cli.main(["compress", args[0], "-o", str(tmp_path / d), "--model", tiny_model]) == 0
    lics = [str(tmp_path / d / "a.lic") for d in ("x", "y")]
    assert cli.main(["decompress", *lics, "-o", str(tmp_path / "back"), "-q"]) == 2
    err = capsys.readouterr().err
    assert all(p in err for p in lics)
    assert not (tmp_path / "back").exists()


def test_existing_outputs_are_kept_without_force(tmp_path, image_dir, tiny_model, capsys):
    out = tmp_path / "lic"
    cmd = ["compress", str(image_dir), "-o", str(out), "--model", tiny_model, "-q"]
    assert cli.main(cmd) == 0
    (out / "a.lic").write_bytes(b"mine")
    (out / "sub" / "b.lic").unlink()
    assert cli.main(cmd) == 1
    err = capsys.readouterr().err
    assert "a.png" in err and "exists" in err and "--force" in err and "b.jpg" not in err
    assert (out / "a.lic").read_bytes() == b"mine"
    assert (out / "sub" / "b.lic").read_bytes()[:4] == b"\x89LC\n"  # the others are written
    assert cli.main([*cmd, "--force"]) == 0
    assert (out / "a.lic").read_bytes()[:4] == b"\x89LC\n"

    png = tmp_path / "a.png"
    png.write_bytes(b"mine")
    assert cli.main(["decompress", str(out / "a.lic"), "-o", str(png)]) == 1
    assert png.read_bytes() == b"mine"
    assert cli.main(["decompress", str(out / "a.lic"), "-o", str(png), "--force"]) == 0
    assert Image.open(png).size == (96, 80)
    assert not list(tmp_path.rglob("*.tmp"))


@pytest.mark.parametrize("umask", [0o022, 0o007])
def test_outputs_get_the_umask_permissions(tmp_path, image_dir, tiny_model, umask):
    import os
    import stat

    old = os.umask(umask)
    try:
        out, back = tmp_path / "lic", tmp_path / "back"
        assert cli.main(["compress", str(image_dir), "-o", str(out), "--model", tiny_model]) == 0
        assert cli.main(["decompress", str(out), "-o", str(back), "-q"]) == 0
    finally:
        os.umask(old)
    files = [*out.rglob("*.lic"), *back.rglob("*.png")]
    assert len(files) == 4
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~umask, f


def test_zoo_models_need_allow_download(tmp_path, image_dir, capsys, monkeypatch):
    """Without ``--allow-download`` a zoo model is refused before any download is tried."""
    import torch

    def refuse(*a, **k):
        raise AssertionError("no download without --allow-download")

    from licstore.models import compressai_zoo

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(compressai_zoo, "_download_allowed", set())
    out = tmp_path / "lic"
    args = ["compress", str(image_dir / "a.png"), "-o", str(out), "--model"]
    assert cli.main([*args, "compressai:mbt2018-mean", "-q"]) == 1
    assert "allow_download=True" in capsys.readouterr().err
    with pytest.raises(AssertionError, match="no download without"):
        cli.main([*args, "compressai:mbt2018-mean", "-q", "--allow-download"])
    assert compressai_zoo._download_allowed == {"mbt2018-mean"}
