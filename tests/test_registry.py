"""Registering weights: decoding old files must not change what new encodes use."""

from __future__ import annotations

import licstore
from licstore import models
from licstore.models.weights import sha256_bytes


def _weights(tmp_path, name, seed):
    from conftest import make_tiny_weights

    path = make_tiny_weights(tmp_path / f"{name}-{seed}.safetensors", name=name, seed=seed)
    return path, sha256_bytes(path.read_bytes())


def _encoded_with(name, photo) -> str:
    return licstore.info(licstore.encode(photo, model=name, quality=3)).weights_hash


def test_register_keeps_the_default_unless_asked(tmp_path, photo):
    name = "tiny-registry-default"
    (a, digest_a), (b, digest_b) = _weights(tmp_path, name, 1), _weights(tmp_path, name, 2)
    assert digest_a != digest_b
    assert models.register_weights(a) == name  # a new name: its only weights are the default
    old_file = licstore.encode(photo, model=name, quality=3)
    assert licstore.info(old_file).weights_hash == digest_a[:16]

    models.register_weights(b)  # e.g. weights of old files, as ModelNotFoundError advises
    assert models.resolve(name) == (name, digest_a)
    assert _encoded_with(name, photo) == digest_a[:16]
    assert models.load(name, version=digest_b[:16]).weights_sha256 == digest_b  # decodable
    assert licstore.decode(old_file).size == (96, 80)

    models.register_weights(b, default=True)
    assert models.resolve(name) == (name, digest_b)
    assert _encoded_with(name, photo) == digest_b[:16]
    assert licstore.decode(old_file).size == (96, 80)  # old files still find their weights


def test_environment_weights_become_the_default(tmp_path, monkeypatch):
    """``LICSTORE_WEIGHTS`` is how a parent's choice reaches workers: it sets the default."""
    name = "tiny-registry-env"
    (a, digest_a), (b, digest_b) = _weights(tmp_path, name, 3), _weights(tmp_path, name, 4)
    models.register_weights(a)
    assert models.resolve(name) == (name, digest_a)
    monkeypatch.setenv("LICSTORE_WEIGHTS", str(b))
    models._register_from_env()
    assert models.resolve(name) == (name, digest_b)
