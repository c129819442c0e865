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
