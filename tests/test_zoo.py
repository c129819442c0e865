"""CompressAI zoo models through licstore: local checkpoints only, unless a download is asked
for; a bitstream naming a zoo model never reaches the network or an unpickler."""

import dataclasses
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

import licstore
from licstore import codec, container
from licstore.errors import ModelNotFoundError, WeightsIntegrityError
from licstore.metrics import psnr
from licstore.models import compressai_zoo


@pytest.fixture
def offline(monkeypatch):
    """No socket can be opened, no checkpoint fetched; the zoo's registrations start empty."""

    def refuse(*a, **k):
        raise AssertionError("tests must not reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)  # sockets made before the patch
    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    import compressai.zoo.image

    monkeypatch.setattr(compressai.zoo.image, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(compressai_zoo, "_checkpoints", {})
    monkeypatch.setattr(compressai_zoo, "_download_allowed", set())
    monkeypatch.setattr(licstore.models, "_cache", {})


def _checkpoint(tmp_path, architecture="bmshj2018-hyperprior", quality=1):
    from compressai.zoo import image_models

    torch.manual_seed(0)
    net = image_models[architecture](quality=quality, pretrained=False)
    path = tmp_path / f"{architecture}-{quality}.pth.tar"
    torch.save(net.state_dict(), path)
    return path


def _renamed(data: bytes, model: str, weights_hash: bytes, **fields) -> bytes:
    """A valid bitstream of another model's name and hash (what an attacker can write)."""
    bs = container.unpack(data)
    return container.pack(dataclasses.replace(bs, model=model, weights_hash=weights_hash, **fields))


def test_zoo_names_listed():
    names = licstore.models.available()
    assert "compressai:bmshj2018-hyperprior" in names and "compressai:mbt2018-mean" in names


def test_local_checkpoint_round_trip(tmp_path, offline):
    name = compressai_zoo.register_checkpoint("bmshj2018-hyperprior", 1, _checkpoint(tmp_path))
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:70, 0:90]
    img = np.stack([xx * 2.5, yy * 3.0, (xx + yy) * 1.4], -1) + rng.normal(0, 6, (70, 90, 3))
    img = np.clip(img, 0, 255).astype(np.uint8)
    data = licstore.encode(img, model=name, quality=1)
    info = licstore.info(data)
    assert info.model == name and info.rate == 0
    out = licstore.decode(data)
    assert out.size == (90, 70) and out.mode == "RGB"
    # the pixels are CompressAI's own reconstruction of the same (padded) input: the
    # random-weight network is not a good codec, but licstore must not change its output
    net = licstore.models.load(name).net(1)
    with torch.no_grad():
        x = codec._to_tensor([img], 64, torch.device("cpu"))
        enc = net.compress(x)
        ref = net.decompress(enc["strings"], enc["shape"])["x_hat"][0].clamp(0, 1)
    assert psnr(np.asarray(out), codec._to_uint8(ref, 70, 90)) >= 50
    assert psnr(np.asarray(out), img) < 50  # the bound above is not met by the input itself


def test_unknown_zoo_architecture(offline):
    with pytest.raises(ModelNotFoundError):
        licstore.encode(np.zeros((8, 8, 3), np.uint8), model="compressai:nope")


def test_bitstream_naming_a_zoo_model_fails_at_once_without_network(offline, tiny_model, photo):
    """The crafted file names mbt2018-mean with the hash CompressAI's public URLs give."""
    zoo_hash = compressai_zoo.CompressAIZooModel("mbt2018-mean").weights_sha256
    crafted = _renamed(
        licstore.encode(photo, model=tiny_model, quality=2),
        "compressai:mbt2018-mean",
        bytes.fromhex(zoo_hash[:16]),
    )
    t0 = time.perf_counter()
    with pytest.raises(ModelNotFoundError, match="allow_download=True"):
        licstore.decode(crafted)
    assert time.perf_counter() - t0 < 2
    with pytest.raises(ModelNotFoundError):
        licstore.decode_batch([crafted])
    with pytest.raises(ModelNotFoundError):  # nor does an encode ask for it
        licstore.encode(photo, model="compressai:mbt2018-mean")


def test_fresh_process_refuses_a_zoo_file_without_loading_the_zoo(tmp_path, tiny_model, photo):
    """A reader process with sockets that fail: decoding stops before CompressAI's zoo (and
    its downloader) is even imported."""
    zoo_hash = compressai_zoo.CompressAIZooModel("mbt2018-mean").weights_sha256
    path = tmp_path / "crafted.lic"
    path.write_bytes(
        _renamed(
            licstore.encode(photo, model=tiny_model, quality=2),
            "compressai:mbt2018-mean",
            bytes.fromhex(zoo_hash[:16]),
        )
    )
    code = textwrap.dedent(
        """
        import socket, sys

        import licstore
        from licstore.errors import ModelNotFoundError

        def refuse(*a, **k):
            raise AssertionError("a socket was opened")

        socket.socket.connect = socket.socket.connect_ex = refuse
        socket.socket = socket.create_connection = refuse

        try:
            licstore.decode(open(sys.argv[1], "rb").read())
        except ModelNotFoundError:
            print("refused", "compressai.zoo" in sys.modules)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["refused", "False"]


def test_registered_quality_does_not_open_the_others(tmp_path, offline, photo):
    """A checkpoint for quality 1 only: a file at another rate needs no download either."""
    name = compressai_zoo.register_checkpoint("bmshj2018-hyperprior", 1, _checkpoint(tmp_path))
    data = licstore.encode(photo, model=name, quality=1)
    licstore.decode(data)
    with pytest.raises(ModelNotFoundError, match="quality 4"):
        licstore.decode(_renamed(data, name, container.unpack(data).weights_hash, rate=3))


def test_allowed_download_reads_weights_only(tmp_path, offline, monkeypatch, photo):
    """``allow_download=True`` fetches through torch.hub with ``weights_only=True``."""
    from compressai.zoo import image_models

    calls = []

    def fake_fetch(url, **kwargs):
        calls.append((url, kwargs))
        torch.manual_seed(0)
        return image_models["bmshj2018-factorized"](quality=2, pretrained=False).state_dict()

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fake_fetch)
    name = "compressai:bmshj2018-factorized"
    with pytest.raises(ModelNotFoundError):
        licstore.models.load(name)
    model = licstore.models.load(name, allow_download=True)
    assert not calls  # nothing fetched until a quality level is used
    data = licstore.encode(photo, model=name, quality=2)  # later calls need no flag
    assert licstore.decode(data).size == (96, 80)
    assert len(calls) == 1
    url, kwargs = calls[0]
    assert url.endswith(".pth.tar") and "factorized-prior-2-" in url
    assert kwargs["weights_only"] is True and kwargs["map_location"] == "cpu"
    assert model.weights_sha256 == licstore.models.resolve(name)[1]


class _Payload:
    def __reduce__(self):
        return (exec, ("import builtins; builtins._licstore_zoo_unpickled = True",))


def test_pickled_objects_in_a_checkpoint_are_refused(tmp_path, offline, photo):
    import builtins

    path = tmp_path / "evil.pth.tar"
    torch.save({"state_dict": _Payload()}, path)
    name = compressai_zoo.register_checkpoint("bmshj2018-hyperprior", 1, path)
    with pytest.raises(WeightsIntegrityError, match="evil.pth.tar"):
        licstore.encode(photo, model=name, quality=1)
    assert not hasattr(builtins, "_licstore_zoo_unpickled")
