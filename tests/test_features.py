"""The ``LICImage`` datasets feature: casts, laziness, formats, persistence, encode-once."""

from __future__ import annotations

import io
import os
import pickle
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

datasets = pytest.importorskip("datasets")
pa = pytest.importorskip("pyarrow")

import licstore  # noqa: E402
from licstore import LICImage, encode_cache  # noqa: E402
from licstore.errors import CorruptBitstreamError, UnsupportedImageError  # noqa: E402
from licstore.features import STORAGE_TYPE  # noqa: E402

N = 5


def _images(n: int = N, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:32, 0:48]
    out = []
    for _ in range(n):
        base = np.stack([xx * 5, yy * 7, (xx + yy) * 3], -1) + rng.normal(0, 8, (32, 48, 3))
        out.append(Image.fromarray(np.clip(base, 0, 255).astype(np.uint8)))
    return out


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def image_ds():
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    return datasets.Dataset.from_dict({"image": _images(), "label": list(range(N))}, features=feats)


@pytest.fixture
def lic_ds(image_ds, tiny_model):
    return image_ds.cast_column("image", LICImage(quality=3, model=tiny_model))


class _Counter:
    """Counts images through a licstore codec function while patched in."""

    def __init__(self, monkeypatch, name: str):
        import licstore.codec as codec

        self.calls: list[int] = []
        original = getattr(codec, name)

        def counting(datas, *args, **kwargs):
            datas = list(datas)
            self.calls.append(len(datas))
            return original(datas, *args, **kwargs)

        monkeypatch.setattr(codec, name, counting)

    @property
    def images(self) -> int:
        return sum(self.calls)


# -- the feature itself -----------------------------------------------------------------------


def test_storage_differs_from_image_and_is_frozen(lic_ds):
    assert STORAGE_TYPE != datasets.Image().pa_type
    assert lic_ds.data.schema.field("image").type == pa.struct(
        {"bytes": pa.binary(), "path": pa.string(), "codec": pa.string()}
    )
    raw = lic_ds.data.column("image").to_pylist()
    assert all(licstore.info(r["bytes"]).model for r in raw)
    assert all(r["codec"].startswith("lic1 model=tiny-test@") for r in raw)
    assert sum(len(r["bytes"]) for r in raw) < sum(len(_png(im)) for im in _images())


def test_rate_fields_serialised_even_when_default(tiny_model):
    d = datasets.Features({"image": LICImage()}).to_dict()["image"]
    assert {"bpp", "quality", "psnr", "model"} <= set(d)
    assert d["_type"] == "LICImage"
    back = datasets.Features.from_dict({"image": {**d, "bpp": 0.3, "quality": None}})
    assert back["image"] == LICImage(bpp=0.3)


def test_enhancement_layers_through_the_feature(tiny_model):
    from licstore import container, residual

    imgs = _images(2)
    plain = LICImage(quality=2, model=tiny_model)
    layered = LICImage(quality=2, model=tiny_model, residual="hevc")
    exact = LICImage(model=tiny_model, lossless=True)
    d = datasets.Features({"a": plain, "b": layered, "c": exact}).to_dict()
    assert "residual" not in d["a"] and "lossless" not in d["a"]  # old readers see no change
    assert d["b"]["residual"] == "hevc" and d["c"]["lossless"] is True
    assert datasets.Features.from_dict(d)["b"] == layered
    ds = datasets.Dataset.from_dict({"a": imgs, "b": imgs, "c": imgs}).cast(
        datasets.Features({"a": plain, "b": layered, "c": exact})
    )
    raw = ds.cast(datasets.Features({k: LICImage(decode=False) for k in "abc"}))[0]
    kinds = {k: [layer.kind for layer in container.unpack(raw[k]["bytes"]).layers] for k in "abc"}
    assert residual.HEVC_KIND in kinds["b"] and residual.HEVC_KIND not in kinds["a"]
    assert residual.LOSSLESS_KIND in kinds["c"]
    assert np.array_equal(np.asarray(ds[0]["c"]), np.asarray(imgs[0]))  # bit-exact
    # the encode cache tells the settings apart: same image, three different bitstreams
    assert len({raw[k]["bytes"] for k in "abc"}) == 3


def test_invalid_feature_parameters_fail_early():
    with pytest.raises(licstore.errors.RateTargetError, match="residual"):
        LICImage(residual="jpeg")
    with pytest.raises(licstore.errors.RateTargetError, match="lossless"):
        LICImage(residual="hevc", lossless=True)
    with pytest.raises(licstore.errors.RateTargetError):
        LICImage(bpp=0.3, quality=2)
    with pytest.raises(licstore.errors.RateTargetError):
        LICImage(quality=12)


def test_decoded_rows_are_the_bitstreams(lic_ds):
    raw = lic_ds.data.column("image").to_pylist()
    for row, stored in zip(lic_ds, raw):
        expect = licstore.decode(stored["bytes"])
        assert row["image"].size == (48, 32) and row["image"].mode == "RGB"
        assert np.array_equal(np.asarray(row["image"]), np.asarray(expect))


def test_mode_converts_on_decode(lic_ds, tiny_model):
    gray = lic_ds.cast_column("image", LICImage(quality=3, model=tiny_model, mode="L"))
    assert gray[0]["image"].mode == "L"


# -- casts from every column kind ------------------------------------------------------------


def test_cast_from_binary_path_and_array_columns(tmp_path, tiny_model):
    images = _images(3)
    paths = []
    for i, im in enumerate(images):
        paths.append(str(tmp_path / f"{i}.png"))
        im.save(paths[-1])
    feature = LICImage(quality=2, model=tiny_model)
    expected = [licstore.encode(im, quality=2, model=tiny_model) for im in images]
    sources = {
        "binary": datasets.Dataset.from_dict({"image": [_png(im) for im in images]}),
        "path": datasets.Dataset.from_dict({"image": paths}),
        "array": datasets.Dataset.from_dict({"image": [np.asarray(im) for im in images]}),
    }
    assert sources["binary"].features["image"] == datasets.Value("binary")
    assert sources["path"].features["image"] == datasets.Value("string")
    for kind, ds in sources.items():
        cast = ds.cast_column("image", feature)
        stored = cast.data.column("image").to_pylist()
        assert [s["bytes"] for s in stored] == expected, kind
    assert cast.data.column("image").to_pylist()[0]["path"] is None
    by_path = sources["path"].cast_column("image", feature).data.column("image").to_pylist()
    assert by_path[0]["path"] == paths[0]


def test_cast_batches_same_size_images(tiny_model, monkeypatch):
    fresh = datasets.Dataset.from_dict(
        {"image": _images(seed=11)}, features=datasets.Features({"image": datasets.Image()})
    )
    counter = _Counter(monkeypatch, "encode_batch")
    fresh.cast_column("image", LICImage(quality=2, model=tiny_model))
    assert counter.calls == [N]  # one batched call for the whole (same-size) column


def test_none_rows_stay_none(tiny_model):
    ds = datasets.Dataset.from_dict(
        {"image": [_images(1)[0], None]}, features=datasets.Features({"image": datasets.Image()})
    )
    cast = ds.cast_column("image", LICImage(model=tiny_model))
    assert cast[1]["image"] is None and cast[0]["image"].size == (48, 32)


def test_non_image_bytes_name_the_row(tiny_model):
    ds = datasets.Dataset.from_dict({"image": [_png(_images(1)[0]), b"not an image"]})
    with pytest.raises(UnsupportedImageError, match="row 1"):
        ds.cast_column("image", LICImage(model=tiny_model))


def test_corrupt_row_fails_on_access_only(lic_ds):
    table = lic_ds.data.table
    rows = table.column("image").to_pylist()
    bad = bytearray(rows[2]["bytes"])
    bad[len(bad) // 2] ^= 0xFF
    rows[2]["bytes"] = bytes(bad)
    broken = datasets.Dataset(
        table.set_column(0, "image", pa.array(rows, type=STORAGE_TYPE)),
        info=lic_ds.info,
    )
    assert broken[1]["image"].size == (48, 32)
    with pytest.raises(CorruptBitstreamError, match="stored image"):
        broken[2]["image"]
    assert broken[3]["image"].size == (48, 32)


# -- laziness and formats ------------------------------------------------------------------


def test_row_access_decodes_only_that_row(lic_ds, monkeypatch):
    counter = _Counter(monkeypatch, "decode_batch")
    column = lic_ds["image"]
    assert counter.images == 0  # a column object stays lazy
    assert column[3].size == (48, 32)
    assert counter.images == 1
    assert lic_ds[1]["image"].size == (48, 32)
    assert counter.images == 2
    assert lic_ds["label"][1] == 1 and counter.images == 2  # other columns: no decode


def test_decode_false_gives_stored_dict(lic_ds, tiny_model):
    raw = lic_ds.cast_column("image", LICImage(model=tiny_model, decode=False))[0]["image"]
    assert set(raw) == {"bytes", "path", "codec"}
    assert licstore.info(raw["bytes"]).width == 48


def test_torch_and_numpy_formats(lic_ds):
    torch = pytest.importorskip("torch")
    t = lic_ds.with_format("torch")[0]["image"]
    assert isinstance(t, torch.Tensor) and tuple(t.shape) == (3, 32, 48)
    a = lic_ds.with_format("numpy")[0]["image"]
    assert a.shape == (32, 48, 3) and a.dtype == np.uint8


def test_dataset_operations(lic_ds):
    mapped = lic_ds.map(lambda r: {"w": r["image"].size[0]})
    assert mapped["w"][:] == [48] * N and isinstance(mapped.features["image"], LICImage)
    kept = lic_ds.filter(lambda label: label % 2 == 0, input_columns="label")
    assert kept["label"][:] == [0, 2, 4] and kept[1]["image"].size == (48, 32)
    assert lic_ds.select([4, 0])[0]["label"] == 4
    shuffled = lic_ds.shuffle(seed=0)
    assert sorted(shuffled["label"][:]) == list(range(N))
    both = datasets.concatenate_datasets([lic_ds, lic_ds])
    assert len(both) == 2 * N and isinstance(both.features["image"], LICImage)
    assert np.array_equal(np.asarray(both[N]["image"]), np.asarray(lic_ds[0]["image"]))
    streamed = list(lic_ds.to_iterable_dataset())
    assert len(streamed) == N and streamed[0]["image"].size == (48, 32)


# -- passthrough and re-encoding ---------------------------------------------------------------


def test_lic_input_passes_through_untouched(lic_ds, tiny_model, monkeypatch):
    before = lic_ds.data.column("image").to_pylist()
    counter = _Counter(monkeypatch, "encode_batch")
    recast = lic_ds.cast_column("image", LICImage(quality=7, model=tiny_model))
    assert recast.data.column("image").to_pylist() == before
    as_binary = datasets.Dataset.from_dict({"image": [r["bytes"] for r in before]})
    again = as_binary.cast_column("image", LICImage(quality=7, model=tiny_model))
    assert [r["bytes"] for r in again.data.column("image").to_pylist()] == [
        r["bytes"] for r in before
    ]
    assert counter.images == 0
    redone = licstore.compress_dataset(
        lic_ds, "image", LICImage(quality=7, model=tiny_model), reencode=True
    )
    assert counter.images == N
    assert all(
        licstore.info(r["bytes"]).rate != licstore.info(b["bytes"]).rate
        for r, b in zip(redone.data.column("image").to_pylist(), before)
    )


def test_compress_dataset_batches_and_writes_cache_files(
    image_ds, tmp_path, tiny_model, monkeypatch
):
    image_ds.save_to_disk(tmp_path / "src")
    src = datasets.load_from_disk(str(tmp_path / "src"))
    counter = _Counter(monkeypatch, "encode_batch")
    out = licstore.compress_dataset(
        src, "image", LICImage(quality=8, model=tiny_model), batch_size=2
    )
    assert counter.calls == [2, 2, 1]
    assert out.cache_files and isinstance(out.features["image"], LICImage)
    direct = image_ds.cast_column("image", LICImage(quality=8, model=tiny_model))
    assert out.data.column("image").to_pylist() == direct.data.column("image").to_pylist()
    assert out.format == src.format


def test_to_image_column_round_trip(lic_ds):
    back = licstore.to_image_column(lic_ds, "image")
    assert back.features["image"] == datasets.Image()
    for a, b in zip(back, lic_ds):
        assert np.array_equal(np.asarray(a["image"]), np.asarray(b["image"]))
    jpeg = licstore.to_image_column(lic_ds, "image", format="jpeg")
    assert jpeg[0]["image"].format == "JPEG"


# -- encoding happens once --------------------------------------------------------------------


@pytest.fixture
def mmapped_cast(image_ds, tmp_path, tiny_model):
    """A cast recorded as a replay on a memory-mapped table (what load_from_disk gives)."""
    image_ds.save_to_disk(tmp_path / "src")
    src = datasets.load_from_disk(str(tmp_path / "src"))
    shutil.rmtree(encode_cache.cache_dir(), ignore_errors=True)
    encode_cache.clear_memory()
    start = encode_cache.stats["encoded"]
    cast = src.cast_column("image", LICImage(quality=5, model=tiny_model))
    assert encode_cache.stats["encoded"] - start == N
    encode_cache.clear_memory()  # replays must find the shared directory, not this process
    return cast


def test_unpickling_and_concatenation_do_not_reencode(mmapped_cast):
    start = encode_cache.stats["encoded"]
    clone = pickle.loads(pickle.dumps(mmapped_cast))
    both = datasets.concatenate_datasets([mmapped_cast, clone])
    pickle.loads(pickle.dumps(both))
    assert encode_cache.stats["encoded"] == start
    assert np.array_equal(np.asarray(clone[0]["image"]), np.asarray(mmapped_cast[0]["image"]))


def _encoded_in_this_process(row):
    return {"encoded": encode_cache.stats["encoded"], "pid": os.getpid()}


def test_map_workers_do_not_reencode(mmapped_cast):
    out = mmapped_cast.map(_encoded_in_this_process, num_proc=2)
    assert len(set(out["pid"][:])) == 2
    parent = encode_cache.stats["encoded"]
    assert all(n == parent for n in out["encoded"][:])  # forked workers encoded nothing


class _EncodeCountingDataset:
    """torch-style dataset reporting how many images its worker process encoded."""

    def __init__(self, ds):
        self.ds = ds

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        return np.asarray(self.ds[i]["image"]).shape, encode_cache.stats["encoded"]


def test_spawned_dataloader_workers_do_not_reencode(mmapped_cast):
    torch = pytest.importorskip("torch")
    loader = torch.utils.data.DataLoader(
        _EncodeCountingDataset(mmapped_cast),
        batch_size=None,
        num_workers=1,
        multiprocessing_context="spawn",
    )
    results = list(loader)
    assert len(results) == N
    assert all(encoded == 0 for _, encoded in results)


# -- persistence, in fresh processes -----------------------------------------------------------


def _run(code: str, timeout: float = 600, cwd: str | None = None) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=os.environ.copy(),
        cwd=cwd,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_save_parquet_and_stream_in_fresh_processes(lic_ds, tmp_path):
    lic_ds.save_to_disk(tmp_path / "saved")
    lic_ds.to_parquet(str(tmp_path / "data.parquet"))
    expect = np.asarray(lic_ds[2]["image"]).tobytes().hex()[:64]
    out = _run(
        f"""
        import numpy as np, licstore, datasets
        ds = datasets.load_from_disk({str(tmp_path / "saved")!r})
        pq = datasets.load_dataset("parquet", data_files={str(tmp_path / "data.parquet")!r},
                                   split="train")
        st = datasets.load_dataset("parquet", data_files={str(tmp_path / "data.parquet")!r},
                                   split="train", streaming=True)
        rows = list(st)
        for d in (ds, pq):
            assert type(d.features["image"]).__name__ == "LICImage", d.features
        assert type(st.features["image"]).__name__ == "LICImage", st.features
        for im in (ds[2]["image"], pq[2]["image"], rows[2]["image"]):
            assert np.asarray(im).tobytes().hex()[:64] == {expect!r}
        print("ok", len(ds), len(pq), len(rows))
        """
    )
    assert out.strip() == f"ok {N} {N} {N}"
    # readers without licstore: an explicit features= override gives the raw struct
    raw = _run(
        f"""
        import datasets
        feats = datasets.Features({{"image": {{"bytes": datasets.Value("binary"),
            "path": datasets.Value("string"), "codec": datasets.Value("string")}},
            "label": datasets.Value("int64")}})
        ds = datasets.load_dataset("parquet", data_files={str(tmp_path / "data.parquet")!r},
                                   split="train", features=feats)
        import sys
        assert "licstore" not in sys.modules
        print(ds[0]["image"]["codec"].split()[0], ds[0]["image"]["bytes"][:4])
        """
    )
    assert raw.split()[0] == "lic1"


def test_embed_storage_inlines_lic_file_references(tmp_path, tiny_model):
    paths = []
    for i, im in enumerate(_images(2)):
        paths.append(str(tmp_path / f"{i}.lic"))
        with open(paths[-1], "wb") as f:
            f.write(licstore.encode(im, model=tiny_model))
    feats = datasets.Features({"image": LICImage(model=tiny_model)})
    ds = datasets.Dataset.from_dict({"image": paths}, features=feats)
    stored = ds.data.column("image").to_pylist()
    assert stored[0]["bytes"] is None and stored[0]["path"] == paths[0]
    assert ds[0]["image"].size == (48, 32)
    expect = np.asarray(ds[1]["image"])
    ds.save_to_disk(tmp_path / "saved")
    for p in paths:
        os.remove(p)
    back = datasets.load_from_disk(str(tmp_path / "saved"))
    row = back.data.column("image").to_pylist()[1]
    assert row["bytes"][:4] == licstore.container.MAGIC and row["path"] == "1.lic"
    assert row["codec"].startswith("lic1 ")
    assert np.array_equal(np.asarray(back[1]["image"]), expect)


def test_compress_dataset_in_forked_workers_after_torch_ran(tmp_path):
    """map(num_proc=2) forks after the parent used torch: must not deadlock (cache off)."""
    out = _run(
        """
        import os
        os.environ["LICSTORE_CACHE_MAX_BYTES"] = "0"
        import datasets, licstore
        from test_features import _images
        ds = datasets.Dataset.from_dict({"image": _images(4)},
                                        features=datasets.Features({"image": datasets.Image()}))
        one = licstore.compress_dataset(ds, "image", licstore.LICImage(model="tiny-test"))
        two = licstore.compress_dataset(ds, "image", licstore.LICImage(model="tiny-test"),
                                        num_proc=2, batch_size=2)
        assert one.data.column("image").to_pylist() == two.data.column("image").to_pylist()
        print("ok")
        """,
        timeout=300,
        cwd=os.path.dirname(__file__),
    )
    assert out.strip().endswith("ok")
