"""A process that only decodes imports neither ``datasets``/pandas nor CompressAI's whole package."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

VECTOR = Path(__file__).resolve().parents[1] / "formats/vectors/mshp-vr-e11ec77a-rgb-q2.lic"
HEAVY = ["datasets", "pandas", "pyarrow", "torch_geometric", "matplotlib", "compressai.models"]


def _run(code: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_decode_only_process_stays_light():
    got = _run(
        "import json, sys, licstore\n"
        f"im = licstore.decode(open({str(VECTOR)!r}, 'rb').read())\n"
        f"print(json.dumps({{'size': im.size, 'loaded': [m for m in {HEAVY!r} if m in sys.modules]}}))"
    )
    assert got["loaded"] == []
    assert got["size"][0] > 0 and got["size"][1] > 0


@pytest.mark.parametrize("order", ["licstore-first", "datasets-first"])
def test_licimage_is_registered_with_datasets_in_either_import_order(order):
    imports = (
        "import licstore, datasets" if order == "licstore-first" else "import datasets, licstore"
    )
    got = _run(
        "import json\n"
        f"{imports}\n"
        "from datasets.features.features import _FEATURE_TYPES, Features\n"
        "f = Features.from_dict({'image': {'_type': 'LICImage'}})\n"
        "print(json.dumps({'type': type(f['image']).__name__,"
        " 'same': _FEATURE_TYPES.get('LICImage') is licstore.LICImage}))"
    )
    assert got == {"type": "LICImage", "same": True}


def test_the_whole_compressai_package_still_loads_on_demand():
    got = _run(
        "import json, licstore, compressai\n"
        "light = 'compressai.models' not in __import__('sys').modules\n"
        "compressai.set_entropy_coder('ans')\n"
        "from compressai.zoo import image_models\n"
        "print(json.dumps({'light': light, 'coder': compressai.get_entropy_coder(),"
        " 'zoo': 'mbt2018-mean' in image_models}))"
    )
    assert got == {"light": True, "coder": "ans", "zoo": True}


def test_scale_table_equals_compressais():
    from compressai.models.base import get_scale_table

    from licstore.light_compressai import scale_table

    assert scale_table().tolist() == get_scale_table().tolist()
