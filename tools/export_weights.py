#!/usr/bin/env python
"""Freeze a training checkpoint into a shipped weights file and record it in the manifest.

    python tools/export_weights.py runs/mshp-vr/last.pt --name mshp-vr [--default]

Writes ``licstore/weights/<name>-<sha8>.safetensors`` (fp16 transforms, exact tables at
full precision) and adds the version to ``licstore/weights/manifest.json``. Older
versions stay listed so that their bitstreams keep decoding.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from licstore.atomic import write_file  # noqa: E402
from licstore.models import registry  # noqa: E402
from licstore.models.weights import MANIFEST, WEIGHTS_DIR, export, read_manifest  # noqa: E402


def freeze_checkpoint(ckpt_path: str) -> tuple[torch.nn.Module, dict]:
    ck = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    model = registry.model_class(ck["arch"])(**ck.get("arch_kwargs", {}))
    model.load_state_dict(ck["model"])
    # what ships is fp16: round the transforms first so the exact tables match them
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith(("g_a.", "g_s.", "h_a.")):
                p.copy_(p.half().float())
    model.eval()
    model.freeze()
    return model, ck


def write_manifest(manifest: dict) -> None:
    text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    write_file(MANIFEST, text.encode())  # atomic, with the umask's permissions


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("checkpoint")
    ap.add_argument("--name", required=True, help="model name in the registry")
    ap.add_argument(
        "--default", action="store_true", help="make this version the default for --name"
    )
    ap.add_argument("--out-dir", default=str(WEIGHTS_DIR))
    args = ap.parse_args(argv)

    model, ck = freeze_checkpoint(args.checkpoint)
    meta = {
        "name": args.name,
        "architecture": ck["arch"],
        "arch_kwargs": json.dumps(ck.get("arch_kwargs", {})),
        "train_steps": ck["step"],
        "train_hours": f"{ck['elapsed'] / 3600:.3f}",
        "format": "licstore-weights-1",
    }
    tmp_path = Path(args.out_dir) / f"{args.name}.safetensors.new"
    digest = export(model, tmp_path, meta)
    final = Path(args.out_dir) / f"{args.name}-{digest[:8]}.safetensors"
    os.replace(tmp_path, final)
    if Path(args.out_dir).resolve() == WEIGHTS_DIR.resolve():
        manifest = read_manifest()
        entry = manifest["models"].setdefault(
            args.name, {"architecture": ck["arch"], "default": digest, "versions": []}
        )
        if not any(v["sha256"] == digest for v in entry["versions"]):
            entry["versions"].append(
                {
                    "file": final.name,
                    "sha256": digest,
                    "steps": ck["step"],
                    "train_hours": round(ck["elapsed"] / 3600, 3),
                }
            )
        previous = entry["default"]
        if args.default or len(entry["versions"]) == 1:
            entry["default"] = digest
        write_manifest(manifest)
        if entry["default"] != previous:  # the wheel ships defaults only (tests/test_packaging)
            old = next(v["file"] for v in entry["versions"] if v["sha256"] == previous)
            print(f"add weights/{old} to pyproject.toml's exclude-package-data (superseded)")
    print(f"{final} sha256={digest}")


if __name__ == "__main__":
    main()
