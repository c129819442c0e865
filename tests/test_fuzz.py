"""Structured fuzzing of decode (``tools/fuzz.py``, issue 21): a bounded run in the suite.

Every mutated bitstream must decode to an image of the header's size and mode or raise a
``LICError``; other exceptions, crashes, timeouts, hitting the worker's memory cap and socket
attempts are findings, saved as reproducers under ``results/fuzz/findings/``.
"""

from __future__ import annotations

import pytest

from licstore import container

CASES = 200


@pytest.fixture(scope="module")
def fuzz():
    """``tools/fuzz.py`` as a module (registered in sys.modules: it defines dataclasses)."""
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "tools" / "fuzz.py"
    spec = importlib.util.spec_from_file_location("_licstore_fuzz_tool", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def mutator(fuzz):
    return fuzz.Mutator(fuzz.load_corpus("small", fresh=False), {}, fuzz.zoo_names())


def test_cases_are_reproducible_and_reach_past_the_crc(mutator):
    cases = [mutator.case(7, i) for i in range(300)]
    assert cases == [mutator.case(7, i) for i in range(300)]
    assert len({kind for kind, *_ in cases}) >= 25  # the kinds are all drawn
    # field mutations re-pack with a valid CRC: the container parses them, with changed fields
    reached = changed = 0
    for kind, seed, _desc, data in cases:
        if kind in ("header.dims", "header.rate", "header.mode", "side.hevc-file", "layers.splice"):
            bs = container.unpack(data)  # would raise on a CRC mismatch
            reached += 1
            original = dict(mutator.corpus)[seed]
            changed += data != original
            assert bs.layer("base") is not None
    assert reached >= 20 and changed >= reached * 0.8


def test_run_one_classifies_outcomes(fuzz, monkeypatch):
    import licstore

    fuzz._register_tiny()  # the weights of the tiny-* vectors
    data = dict(fuzz.load_corpus("small", fresh=False))["tiny-rgb-q2.lic"]
    assert fuzz._run_one(data)["outcome"] == "image"
    assert fuzz._run_one(data[:-1])["outcome"] == "lic:CorruptBitstreamError"

    def boom(_data):
        raise IndexError("index 9 is out of bounds")

    monkeypatch.setattr(licstore, "decode", boom)
    result = fuzz._run_one(data)
    assert result["outcome"] == "exception:IndexError" and "boom" in result["traceback"]
    assert fuzz.is_finding(result["outcome"]) and not fuzz.is_finding("lic:ModelNotFoundError")

    def dials(_data):
        fuzz._NETWORK.append("a socket was opened here")
        raise licstore.errors.ModelNotFoundError("no such model")

    monkeypatch.setattr(licstore, "decode", dials)
    assert fuzz._run_one(data)["outcome"] == "network"


def test_fuzz_decode_gives_an_image_or_a_lic_error(fuzz, tmp_path):
    report = fuzz.run(n=CASES, seed=21, corpus="small", out=tmp_path, timeout=30)
    assert report.cases == CASES
    # the mutations reach the decoders: images come out, and several typed errors
    assert report.outcomes["image"] >= CASES // 10
    assert sum(1 for o in report.outcomes if o.startswith("lic:")) >= 2
    found = "\n".join(
        f"case {f['case']} {f['kind']} ({f['mutation']}): {f['outcome']} {f.get('detail', '')}"
        f" -> {f['file']}"
        for f in report.findings
    )
    assert report.finding_count() == 0, f"{report.text()}\n\n{found}"
