"""FF++ layout reader, official splits and mask binarisation (reference-facts §B.1–§B.3)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import shared_path
from emdlib.data.ffpp import FFPP, binarize_mask, load_splits, mask_path, parse_fake_id, split_ids, video_path


# ---------------------------------------------------------------------------------------------- official splits
def test_official_splits_sizes_and_disjoint():
    splits = load_splits(shared_path("ffpp", "splits"))
    assert {s: len(p) for s, p in splits.items()} == {"train": 360, "val": 70, "test": 70}
    ids = {}
    for s, pairs in splits.items():
        reals, fakes = split_ids(pairs)
        assert len(reals) == len(set(reals)) == {"train": 720, "val": 140, "test": 140}[s]
        assert len(fakes) == len(set(fakes)) == len(reals)
        ids[s] = set(reals)
    assert not (ids["train"] & ids["val"]) and not (ids["train"] & ids["test"]) and not (ids["val"] & ids["test"])
    assert ids["train"] | ids["val"] | ids["test"] == {f"{i:03d}" for i in range(1000)}


def test_split_ids_pair_gives_two_reals_and_both_fakes():
    assert split_ids([("071", "054"), ("001", "002")]) == (["071", "054", "001", "002"],
                                                          ["071_054", "054_071", "001_002", "002_001"])
    assert parse_fake_id("004_982") == ("004", "982")
    with pytest.raises(ValueError, match="not a fake video id"):
        parse_fake_id("004")


def test_paths_follow_official_layout(tmp_path):
    assert video_path(tmp_path, "original", "c23", "004") == tmp_path / "original_sequences/youtube/c23/videos/004.mp4"
    assert video_path(tmp_path, "Face2Face", "c40", "004_982") == (
        tmp_path / "manipulated_sequences/Face2Face/c40/videos/004_982.mp4")
    assert mask_path(tmp_path, "NeuralTextures", "004_982") == (
        tmp_path / "manipulated_sequences/NeuralTextures/masks/videos/004_982.mp4")
    with pytest.raises(ValueError, match="unknown FF\\+\\+ method 'DeepFake'"):
        video_path(tmp_path, "DeepFake", "c23", "004_982")
    with pytest.raises(ValueError, match="unknown FF\\+\\+ compression 'c0'"):
        video_path(tmp_path, "original", "c0", "004")


# -------------------------------------------------------------------------------------------------- ffpp-mini
@pytest.fixture(scope="module")
def mini() -> FFPP:
    return FFPP(shared_path("data", "ffpp-mini"), splits_dir=shared_path("ffpp", "splits"))


def test_mini_lists_videos_per_split_method_compression(mini):
    assert mini.split_of("004") == "val" and mini.split_of("004_982") == "val"
    assert mini.split_of("519") == "train" and mini.split_of("634_660") == "test"
    assert [v for v, _ in mini.videos("val", "original", "c23")] == ["004"]
    assert [v for v, _ in mini.videos("train", "original", "c23")] == ["519"]
    assert [v for v, _ in mini.videos("test", "original", "c23")] == ["634"]
    assert [v for v, _ in mini.videos("train", "Deepfakes", "c23")] == ["519_515"]
    assert [v for v, _ in mini.videos("val", "NeuralTextures", "c23")] == ["004_982"]
    assert [v for v, _ in mini.videos("test", "FaceSwap", "c23")] == ["634_660"]
    assert [v for v, _ in mini.videos("train", "Face2Face", "c23")] == ["750_743"]
    assert mini.videos("train", "Face2Face", "c40") == []
    assert len(mini.videos("train", "Deepfakes", "c23", existing=False)) == 720
    assert "750" in mini.missing("train", "original", "c23")
    assert mini.video("NeuralTextures", "c23", "004_982").is_file()
    assert mini.partner("750") == "743"


def test_mini_missing_items_give_clear_errors(mini):
    with pytest.raises(FileNotFoundError, match=r"original c23 video 750 not found: .*750\.mp4"):
        mini.video("original", "c23", "750")
    with pytest.raises(FileNotFoundError, match=r"Deepfakes c40 video 519_515 not found"):
        mini.video("Deepfakes", "c40", "519_515")
    with pytest.raises(FileNotFoundError, match=r"NeuralTextures mask of video 004_982 not found: .*masks/videos/004_982\.mp4"):
        mini.mask("NeuralTextures", "004_982")
    with pytest.raises(KeyError, match=r"video id '004_005' is in none of the splits"):
        mini.video("Face2Face", "c23", "004_005")
    with pytest.raises(KeyError, match="unknown split 'training'"):
        mini.videos("training", "original", "c23")


def test_missing_root_and_split_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere: FF\+\+ root folder not found"):
        FFPP(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"splits: split folder not found"):
        FFPP(tmp_path)
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits" / "train.json").write_text(json.dumps([["000", "001"]]))
    (tmp_path / "splits" / "val.json").write_text(json.dumps([["002", "003"]]))
    with pytest.raises(FileNotFoundError, match=r"test\.json: split file missing"):
        FFPP(tmp_path)
    (tmp_path / "splits" / "test.json").write_text(json.dumps([["004", 5]]))
    with pytest.raises(ValueError, match=r"test\.json: entry 0 \['004', 5\] is not a pair"):
        FFPP(tmp_path)
    (tmp_path / "splits" / "test.json").write_text(json.dumps([["004", "001"]]))
    with pytest.raises(ValueError, match=r"test\.json: id 001 of entry 0 is already in split 'train'"):
        FFPP(tmp_path)


# ------------------------------------------------------------------------------------------------------ masks
def _grey(path: Path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)


def test_binarize_deepfakes_mask_equals_white():
    path = shared_path("ffpp", "samples", "ex_deepfakes_mask.png")
    rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    grey = _grey(path)
    assert set(np.unique(grey)) == {0, 255}  # hand-checked: DF masks are strictly binary (§B.3)
    out = binarize_mask(rgb)
    assert out.dtype == np.uint8 and set(np.unique(out)) == {0, 1}
    np.testing.assert_array_equal(out, (grey == 255).astype(np.uint8))


def test_binarize_neuraltextures_graded_mask():
    path = shared_path("ffpp", "samples", "ex_neuraltextures_mask.png")
    grey = _grey(path)
    assert len(np.unique(grey)) > 100  # graded edges from anti-aliasing / compression (§B.3)
    out = binarize_mask(cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB))
    np.testing.assert_array_equal(out, (grey > 127).astype(np.uint8))
    np.testing.assert_array_equal(binarize_mask(grey), out)
    assert set(np.unique(out)) == {0, 1}
    frac = out.mean()
    # hand-checked on the sample: ~2.5% of the 640x480 frame (a mouth/jaw region), < 3.2% of pixels are non-zero
    assert 0.015 < frac < (grey > 0).mean()


def test_binarize_rejects_bad_shapes():
    with pytest.raises(ValueError, match="mask must be"):
        binarize_mask(np.zeros((2, 3, 4, 5), np.uint8))
