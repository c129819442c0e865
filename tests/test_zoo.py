"""CompressAI zoo models through licstore, from a local checkpoint (never the network)."""

import numpy as np
import pytest
import torch

import licstore
from licstore.errors import ModelNotFoundError
from licstore.models import compressai_zoo


@pytest.fixture
def offline(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("tests must not download weights")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    import compressai.zoo.image

    monkeypatch.setattr(compressai.zoo.image, "load_state_dict_from_url", refuse)


def test_zoo_names_listed():
    names = licstore.models.available()
    assert "compressai:bmshj2018-hyperprior" in names and "compressai:mbt2018-mean" in names


def test_local_checkpoint_round_trip(tmp_path, offline, monkeypatch):
    from compressai.zoo import image_models

    torch.manual_seed(0)
    net = image_models["bmshj2018-hyperprior"](quality=1, pretrained=False)
    ckpt = tmp_path / "bmshj2018-hyperprior-1.pth.tar"
    torch.save(net.state_dict(), ckpt)
    monkeypatch.setattr(compressai_zoo, "_checkpoints", {})
    name = compressai_zoo.register_checkpoint("bmshj2018-hyperprior", 1, ckpt)
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (70, 90, 3), dtype=np.uint8)
    data = licstore.encode(img, model=name, quality=1)
    info = licstore.info(data)
    assert info.model == name and info.rate == 0
    out = licstore.decode(data)
    assert out.size == (90, 70)


def test_unknown_zoo_architecture():
    with pytest.raises(ModelNotFoundError):
        licstore.encode(np.zeros((8, 8, 3), np.uint8), model="compressai:nope")
