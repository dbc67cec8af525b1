"""ManipulationDataset over a prepared cache (contracts.md "Datasets")."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from emdlib.data.datasets import ManipulationDataset
from emdlib.data.prepare import entry_paths, prepare
from emdlib.data.transforms import esr_input, to_tensor
from test_prepare import CFG, make_world  # the tiny London-photo FF++ tree (crop_size 48)

S = CFG.crop_size


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("world")
    make_world(root)
    cache = tmp_path_factory.mktemp("cache")
    prepare(root, cache, CFG, methods=["Face2Face"], compressions=["c23"], workers=1, progress=False)
    return cache


def _find(ds: ManipulationDataset, method: str, video: str, frame: int) -> int:
    return next(i for i, s in enumerate(ds.samples) if s[0] == method and s[2] == video and s[3] == frame)


def test_items_follow_the_contract(cache):
    ds = ManipulationDataset(cache, "train", ["Face2Face"], ["c23"], image_size=S)
    # train: reals 000, 001, 002 (3 frames each; 003 is an empty file); ok fakes 000_001, 002_003 (001_000 has no
    # mask, 003_002 no readable original)
    assert ds.class_counts() == {0: 9, 1: 6}
    assert sorted(ds.videos) == [("Face2Face", "c23", "000_001"), ("Face2Face", "c23", "002_003"),
                                 ("original", "c23", "000"), ("original", "c23", "001"), ("original", "c23", "002")]
    i = _find(ds, "Face2Face", "000_001", 2)
    item = ds[i]
    assert set(item) == {"image", "fer_image", "mask", "label", "method", "compression", "video", "frame"}
    assert item["label"].dtype == torch.long and item["label"].item() == 1
    assert (item["method"], item["compression"], item["video"], item["frame"]) == ("Face2Face", "c23", "000_001", 2)
    crop = np.load(entry_paths(cache, "c23", "Face2Face", "000_001")["crops"])[1]  # frame 2 is the 2nd cached row
    mask = np.load(entry_paths(cache, "c23", "Face2Face", "000_001")["masks"])[1]
    assert item["image"].shape == (3, S, S) and item["image"].dtype == torch.float32
    expected = torch.from_numpy(crop).permute(2, 0, 1).float() / 255 * 2 - 1  # (x - 0.5) / 0.5, RGB
    torch.testing.assert_close(item["image"], expected)
    assert item["mask"].shape == (1, S, S)
    np.testing.assert_array_equal(item["mask"][0].numpy(), mask.astype(np.float32))
    assert 0 < item["mask"].mean() < 1 and set(item["mask"].unique().tolist()) == {0.0, 1.0}
    fer = item["fer_image"]
    assert fer.shape == (3, 96, 96) and 0 <= fer.min() and fer.max() <= 1
    torch.testing.assert_close(fer, esr_input(to_tensor(crop)))
    # BGR: the first channel is the blue one; the painted colour (200, 60, 60) makes the crop redder than blue
    assert fer[2].mean() > fer[0].mean()

    real = ds[_find(ds, "original", "000", 0)]
    assert real["label"].item() == 0 and real["method"] == "original"
    assert real["mask"].shape == (1, S, S) and real["mask"].sum() == 0
    assert ds.labels.tolist().count(1) == 6


def test_image_size_resizes_image_and_mask_nearest(cache):
    ds = ManipulationDataset(cache, "train", ["Face2Face"], ["c23"], image_size=24)
    item = ds[_find(ds, "Face2Face", "000_001", 2)]
    assert item["image"].shape == (3, 24, 24) and item["mask"].shape == (1, 24, 24)
    assert -1 <= item["image"].min() and item["image"].max() <= 1
    mask = np.load(entry_paths(cache, "c23", "Face2Face", "000_001")["masks"])[1]
    np.testing.assert_array_equal(item["mask"][0].numpy(), mask[::2, ::2].astype(np.float32))  # nearest, 48 -> 24
    assert item["fer_image"].shape == (3, 96, 96)


def test_splits_compressions_and_statuses(cache):
    val = ManipulationDataset(cache, "val", ["Face2Face"], ["c23"], image_size=S)
    assert val.class_counts() == {0: 2, 1: 0}  # 005 is noise (no face); 004_005's mask has a frame too few
    test = ManipulationDataset(cache, "test", ["Face2Face"], ["c23"], image_size=S)
    assert {v for _, _, v in test.videos} == {"006", "007"}
    assert len(ManipulationDataset(cache, "train", ["Face2Face"], ["c40"], image_size=S)) == 0
    reals_only = ManipulationDataset(cache, "train", [], ["c23"], image_size=S)
    assert reals_only.class_counts() == {0: 9, 1: 0}
    unmasked = ManipulationDataset(cache, "train", ["Face2Face"], ["c23"], image_size=S,
                                   statuses=("ok", "mask_missing"))
    assert unmasked.class_counts() == {0: 9, 1: 9}
    with pytest.raises(KeyError, match="unknown split 'dev'"):
        ManipulationDataset(cache, "dev", ["Face2Face"], ["c23"], image_size=S)
    with pytest.raises(FileNotFoundError, match="manifest.csv: manifest not found"):
        ManipulationDataset(cache / "nowhere", "train", ["Face2Face"], ["c23"], image_size=S)


def test_augment_flips_image_mask_and_fer_together(cache):
    plain = ManipulationDataset(cache, "train", ["Face2Face"], ["c23"], image_size=S)
    aug = ManipulationDataset(cache, "train", ["Face2Face"], ["c23"], image_size=S, augment=True)
    i = _find(plain, "Face2Face", "000_001", 0)
    base = plain[i]
    assert not torch.equal(base["mask"], base["mask"].flip(-1))  # the mask is not symmetric: a flip is visible
    torch.manual_seed(0)
    seen = set()
    for _ in range(12):
        item = aug[i]
        flipped = torch.equal(item["mask"], base["mask"].flip(-1))
        seen.add(flipped)
        for key in ("image", "mask", "fer_image"):
            want = base[key].flip(-1) if flipped else base[key]
            torch.testing.assert_close(item[key], want, atol=1e-6, rtol=0)
    assert seen == {True, False}


def test_subset_videos_and_balance_helpers(cache):
    ds = ManipulationDataset(cache, "train", ["Face2Face"], ["c23"], image_size=S)
    one, two = ds.subset_videos(1, seed=3), ds.subset_videos(2, seed=3)
    targets = lambda d: {v[:3] for _, _, v in d.videos}  # noqa: E731
    assert len(targets(one)) == 1 and len(targets(two)) == 2 and targets(one) < targets(two)
    for d in (one, two):  # a target brings its pristine video and the fakes made from it
        assert {v for m, _, v in d.videos if m == "original"} == targets(d)
    assert len(ds.subset_videos(0)) == 0 and len(ds.subset_videos(10)) == len(ds)
    assert len(ds) == 15  # the view did not change the parent
    w = ds.sample_weights()
    assert w.shape == (15,) and torch.isclose(w[ds.labels == 0].sum(), w[ds.labels == 1].sum())


def test_dataloader_batches(cache):
    ds = ManipulationDataset(cache, "train", ["Face2Face"], ["c23"], image_size=32, augment=True)
    batch = next(iter(DataLoader(ds, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(0))))
    assert batch["image"].shape == (4, 3, 32, 32) and batch["fer_image"].shape == (4, 3, 96, 96)
    assert batch["mask"].shape == (4, 1, 32, 32) and batch["label"].shape == (4,)
    assert len(batch["video"]) == 4 and batch["frame"].dtype == torch.long


def test_a_set_without_fakes_is_refused_and_says_why(cache, tmp_path):
    import csv
    import shutil

    ds = ManipulationDataset(cache, "train", ["Face2Face"], ["c23"], image_size=S)
    n_real, n_fake = ds.class_counts()[0], ds.class_counts()[1]
    assert n_real and n_fake
    ds.require_both_classes()  # both classes: nothing raised
    # the same cache with every training fake's mask missing (an FF++ copy downloaded without `-t masks`)
    copy = tmp_path / "cache"
    shutil.copytree(cache, copy)
    with open(copy / "manifest.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        if r["split"] == "train" and r["method"] == "Face2Face" and r["status"] == "ok":
            r["status"] = "mask_missing"
    n_missing = sum(r["split"] == "train" and r["method"] == "Face2Face" and r["status"] == "mask_missing"
                    for r in rows)
    assert n_missing >= n_fake  # the world has a fake without its mask already
    with open(copy / "manifest.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    only_real = ManipulationDataset(copy, "train", ["Face2Face"], ["c23"], image_size=S)
    assert only_real.class_counts() == {0: n_real, 1: 0}
    with pytest.raises(ValueError, match=rf"train set of Face2Face c23 has no fake frames \({n_real} real, 0 fake\)"
                                         rf".*manifest.csv: {n_missing} fake rows mask_missing"):
        only_real.require_both_classes()
    with pytest.raises(ValueError, match="has no real and no fake frames"):
        ManipulationDataset(copy, "train", ["Face2Face"], ["c40"], image_size=S).require_both_classes()
    # the data stage says so right after prepare, for every cell of the preset, before any training
    import dataclasses
    from types import SimpleNamespace

    from emdlib.presets import get_preset
    from emdlib.study.data import require_trainable_cells

    tiny = get_preset("tiny")
    preset = dataclasses.replace(tiny, emd=dataclasses.replace(tiny.emd, cells=(("Face2Face", "c23"),)))
    with pytest.raises(ValueError, match="train set of Face2Face c23 has no fake frames"):
        require_trainable_cells(SimpleNamespace(preset=preset, paths=SimpleNamespace(cache=copy)))
    # the fixture world's own val split: its one fake's mask is a frame short, its other fake's original faceless
    with pytest.raises(ValueError, match="val set of Face2Face c23 has no fake frames.*2 fake rows mask_mismatch"):
        require_trainable_cells(SimpleNamespace(preset=preset, paths=SimpleNamespace(cache=cache)))
