"""Compressed face-crop caches (emdlib.data.crop_codec; issue 14, deliverable 4): encode/decode round trips, a
prepared cache in each format read back by ManipulationDataset (PNG exactly the raw cache's items, JPEG q95 close),
a cache refusing another format, and older caches and run records read as the raw format."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from emdlib.data.crop_codec import EncodedCrops, decode_crop, encode_crops
from emdlib.data.datasets import ManipulationDataset
from emdlib.data.prepare import cache_format, entry_paths, prepare
from emdlib.presets import PrepareConfig, get_preset, with_defaults
from test_prepare import CFG, make_world  # the tiny London-photo FF++ tree (crop_size 48)


def _smooth(seed: int, size: int = 32) -> np.ndarray:
    """A smooth RGB image (JPEG's favourable case, like a face crop)."""
    y, x = np.mgrid[0:size, 0:size] / size
    rng = np.random.default_rng(seed)
    a, b, c = rng.uniform(0.2, 1.0, 3)
    return (255 * np.stack([a * x, b * y, c * (x + y) / 2], -1)).astype(np.uint8)


def test_png_round_trip_is_exact_and_offsets_index_each_crop() -> None:
    crops = [_smooth(0), _smooth(1), np.zeros((32, 32, 3), np.uint8)]
    data, offsets = encode_crops(crops, "png")
    assert data.dtype == np.uint8 and data.ndim == 1 and len(offsets) == 4 and offsets[0] == 0
    assert offsets[-1] == len(data)
    decoded = EncodedCrops(data, offsets, "v.crops.png.npy")
    assert len(decoded) == 3
    for i, crop in enumerate(crops):
        assert np.array_equal(decoded[i], crop)  # lossless, RGB order kept
    masks = [np.eye(8, dtype=np.uint8), np.zeros((8, 8), np.uint8)]
    data, offsets = encode_crops(masks, "png")
    back = EncodedCrops(data, offsets, "v.masks.png.npy", mask=True)
    assert [m.tolist() for m in (back[0], back[1])] == [m.tolist() for m in masks]  # {0, 1} kept exactly


def test_jpeg_q95_is_close_and_smaller_than_raw() -> None:
    crop = _smooth(2, 64)
    data, offsets = encode_crops([crop], "jpeg")
    back = decode_crop(data[offsets[0]:offsets[1]])
    assert back.shape == crop.shape and back.dtype == np.uint8
    assert np.abs(back.astype(int) - crop.astype(int)).mean() < 2.0
    assert len(data) < crop.nbytes


def test_bad_inputs_name_the_problem() -> None:
    with pytest.raises(ValueError, match="unknown cache format 'webp'"):
        encode_crops([_smooth(0)], "webp")
    with pytest.raises(ValueError, match=r"crop 1: expected an \(H, W, 3\) uint8 RGB image or an \(H, W\) uint8 mask"):
        encode_crops([_smooth(0), np.zeros((4, 4, 2), np.uint8)], "png")
    data, offsets = encode_crops([_smooth(0)], "png")
    with pytest.raises(ValueError, match="x.npy: crop offsets do not fit"):
        EncodedCrops(data, [0, len(data) + 5], "x.npy")
    with pytest.raises(IndexError, match="x.npy: crop 1 of 1"):
        EncodedCrops(data, offsets, "x.npy")[1]
    with pytest.raises(ValueError, match="unknown cache format"):
        PrepareConfig(cache_format="tiff")


@pytest.fixture(scope="module")
def caches(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("world")
    make_world(root)
    out = {}
    for fmt in ("npy", "png", "jpeg"):
        out[fmt] = tmp_path_factory.mktemp(f"cache-{fmt}")
        prepare(root, out[fmt], dataclasses.replace(CFG, cache_format=fmt), methods=["Face2Face"],
                compressions=["c23"], workers=1, progress=False)
    out["root"] = root
    return out


def test_a_compressed_cache_gives_the_raw_cache_items(caches) -> None:
    raw, png, jpeg = (ManipulationDataset(caches[f], "train", ["Face2Face"], ["c23"], image_size=CFG.crop_size)
                      for f in ("npy", "png", "jpeg"))
    assert (raw.cache_format, png.cache_format, jpeg.cache_format) == ("npy", "png", "jpeg")
    assert raw.samples == png.samples == jpeg.samples and len(raw) > 0
    assert entry_paths(caches["png"], "c23", "Face2Face", "000_001", "png")["crops"].name == "000_001.crops.png.npy"
    assert not entry_paths(caches["png"], "c23", "Face2Face", "000_001")["crops"].exists()  # no raw array written
    assert entry_paths(caches["jpeg"], "c23", "Face2Face", "000_001", "jpeg")["masks"].is_file()  # masks: PNG
    for i in range(len(raw)):
        a, b, c = raw[i], png[i], jpeg[i]
        for key in ("image", "fer_image", "mask", "label"):
            assert torch.equal(a[key], b[key]), (i, key)
        assert torch.equal(a["mask"], c["mask"]) and a["label"] == c["label"]
        assert (a["image"] - c["image"]).abs().mean() < 0.03  # q95: about 1 grey level of 255 on the (-1, 1) scale
    assert cache_format(caches["jpeg"]) == "jpeg"


def test_a_cache_refuses_another_format(caches) -> None:
    with pytest.raises(ValueError, match="cache_format"):
        prepare(caches["root"], caches["npy"], dataclasses.replace(CFG, cache_format="jpeg"), methods=["Face2Face"],
                compressions=["c23"], workers=1, progress=False)


def test_caches_and_records_from_before_the_setting_read_as_raw(caches, tmp_path) -> None:
    old = tmp_path / "cache"
    old.mkdir()
    record = json.loads((caches["npy"] / "prepare.json").read_text())
    del record["cache_format"]
    (old / "prepare.json").write_text(json.dumps(record))
    assert cache_format(old) == "npy"
    cpu = get_preset("cpu").to_dict()
    recorded = json.loads(json.dumps(cpu))
    del recorded["prepare"]["cache_format"]
    assert with_defaults(recorded) == json.loads(json.dumps(cpu))
