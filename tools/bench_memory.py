#!/usr/bin/env python
"""Memory of a decode-only process: start-up, first decode, and growth over many decodes.

    python tools/bench_memory.py [--image PATH] [--decodes 1000] [--quality 4] [--json OUT]

Encodes one image (default: the first Kodak image, else a bundled sample) in this process,
then starts a fresh Python that imports only ``licstore`` and decodes that bitstream
``--decodes`` times, reading its resident memory (``/proc/self/status``) after the import,
after the first decode and every 10% of the run. A leak shows as growth between the 10% mark
and the end (the first decodes warm caches and allocator pools); the tool prints that growth
per 1,000 decodes and exits 1 when it exceeds ``--max-growth-mib``. It also lists the heavy
packages the reader imported (none is the goal: see ``licstore/light_compressai.py``).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

HEAVY = ("datasets", "pandas", "pyarrow", "torch_geometric", "matplotlib", "compressai.models")

READER = r"""
import json, sys, time
def status(key):
    for line in open('/proc/self/status'):
        if line.startswith(key):
            return int(line.split()[1]) / 1024
    return float('nan')
import licstore
data = open(sys.argv[1], 'rb').read()
n = int(sys.argv[2])
marks = {'import': status('VmRSS')}
licstore.decode(data)
marks['first decode'] = status('VmRSS')
samples = []
t = time.perf_counter()
for i in range(1, n + 1):
    licstore.decode(data)
    if i % max(1, n // 10) == 0:
        samples.append((i, status('VmRSS')))
seconds = time.perf_counter() - t
heavy = [m for m in sys.argv[3].split(',') if m in sys.modules]
print(json.dumps({'marks': marks, 'samples': samples, 'peak': status('VmHWM'),
                  'seconds': seconds, 'heavy_imports': heavy}))
"""


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def default_image() -> Path:
    kodak = ROOT.parent / "shared/data/kodak"
    files = sorted(kodak.glob("*.png")) if kodak.is_dir() else []
    return files[0] if files else sorted((ROOT / "licstore/samples").glob("*.png"))[0]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--image", type=Path, default=None)
    ap.add_argument("--decodes", type=int, default=1000)
    ap.add_argument("--quality", type=int, default=4)
    ap.add_argument("--max-growth-mib", type=float, default=8.0, help="per 1,000 decodes")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    from PIL import Image

    import licstore

    image = args.image or default_image()
    with Image.open(image) as im:
        data = licstore.encode(im, quality=args.quality)
        size = im.size
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "image.lic"
        path.write_bytes(data)
        out = subprocess.run(
            [sys.executable, "-c", READER, str(path), str(args.decodes), ",".join(HEAVY)],
            capture_output=True,
            text=True,
            check=True,
        )
    got = json.loads(out.stdout.strip().splitlines()[-1])
    (first_i, first_rss), (last_i, last_rss) = got["samples"][0], got["samples"][-1]
    growth = (last_rss - first_rss) / max(1, last_i - first_i) * 1000
    rows = {
        "machine": cpu_name(),
        "image": f"{image.name} {size[0]}x{size[1]}, quality {args.quality}, {len(data)} B",
        "RSS after import licstore (MiB)": round(got["marks"]["import"], 1),
        "RSS after the first decode (MiB)": round(got["marks"]["first decode"], 1),
        "peak RSS (MiB)": round(got["peak"], 1),
        f"RSS after {last_i} decodes (MiB)": round(last_rss, 1),
        "growth per 1,000 decodes after the first 10% (MiB)": round(growth, 2),
        "decodes/s": round(args.decodes / got["seconds"], 2),
        "heavy packages imported": ", ".join(got["heavy_imports"]) or "none",
    }
    print("| | |\n|---|---|")
    for k, v in rows.items():
        print(f"| {k} | {v} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({**rows, "samples": got["samples"]}, indent=1))
    return 1 if growth > args.max_growth_mib else 0


if __name__ == "__main__":
    raise SystemExit(main())
