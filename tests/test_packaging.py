"""The wheel ships the current weights of each model only (at most 100 MB of weights);
superseded versions stay in the repository for the test vectors and `licstore models export`."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = json.loads((ROOT / "licstore" / "weights" / "manifest.json").read_text())


def test_the_wheel_leaves_out_exactly_the_superseded_weights():
    tomllib = pytest.importorskip("tomllib", reason="Python 3.11+ reads pyproject.toml")
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    excluded = {
        Path(p).name for p in config["tool"]["setuptools"]["exclude-package-data"]["licstore"]
    }
    superseded = {
        v["file"]
        for entry in MANIFEST["models"].values()
        for v in entry["versions"]
        if v["sha256"] != entry["default"]
    }
    assert excluded == superseded, "pyproject.toml's exclude-package-data is out of date"
    # else a stale licstore.egg-info/SOURCES.txt brings the excluded files back
    assert config["tool"]["setuptools"]["include-package-data"] is False
    for name in excluded:  # kept in the repository: vectors, `licstore models export`
        assert (ROOT / "licstore" / "weights" / name).is_file(), name


def test_the_built_wheel_ships_at_most_100_mb_of_weights(tmp_path, load_tool):
    if shutil.which("git") is None:
        pytest.skip("git is needed to list the repository's files")
    if subprocess.run(["git", "rev-parse"], cwd=ROOT, capture_output=True).returncode:
        pytest.skip("not a git checkout")
    tool = load_tool("check_wheel")
    wheel = tool.build(tmp_path)
    shipped = tool.weights_in(wheel)
    assert tool.check(wheel) == [], shipped
    assert 0 < sum(shipped.values()) <= 100e6
    defaults = {e["default"][:8] for e in MANIFEST["models"].values()}
    assert {name.rsplit("-", 1)[1].split(".")[0] for name in shipped} == defaults
