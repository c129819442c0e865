"""Weights files: one checkpoint always exports to the same bytes (the SHA-256 names it)."""

from __future__ import annotations

import torch

from licstore.models.registry import model_class
from licstore.models.weights import export, parse


def test_export_is_byte_deterministic_and_loads(tmp_path):
    torch.manual_seed(0)
    model = model_class("mshp-vr")(N=8, M=12).eval()
    model.freeze()
    meta = {"name": "tiny-det", "architecture": "mshp-vr", "arch_kwargs": '{"N": 8, "M": 12}'}
    meta.update({f"key{i}": str(i) for i in range(8)})  # a map safetensors orders at random
    hashes = {export(model, tmp_path / f"{i}.safetensors", meta) for i in range(6)}
    assert len(hashes) == 1
    tensors, metadata = parse((tmp_path / "0.safetensors").read_bytes())
    assert metadata == meta
    assert torch.equal(tensors["g_s.0.weight"], model.g_s[0].weight.detach().half())
