"""prepare: frame sampling, pristine box reuse, masks, bad inputs, resume and parallel runs (design.md "prepare")."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

import emdlib.data.prepare as prep
from conftest import shared_path
from emdlib.data import faces
from emdlib.data.prepare import MANIFEST_COLUMNS, entry_paths, prepare, read_manifest, sample_indices
from emdlib.data.video import read_frames, write_video
from emdlib.io import write_json
from emdlib.presets import PrepareConfig

SIZE = 128  # frame side of the tiny clips
N_FRAMES = 5
CFG = PrepareConfig(train_frames=3, eval_frames=2, crop_size=48, workers=1)
RECT = (40, 50, 90, 80)  # x0, y0, x1, y1 of the painted "manipulation": covers eyes and nose
PAIRS = {"train": [["000", "001"], ["002", "003"]], "val": [["004", "005"]], "test": [["006", "007"], ["008", "009"]]}


def _clip(photo: Path, n: int = N_FRAMES) -> list[np.ndarray]:
    """A short 'video' from one 512x512 photo: a window sliding 8 px a frame (smooth head motion), 128 px frames."""
    rgb = cv2.cvtColor(cv2.imread(str(photo)), cv2.COLOR_BGR2RGB)
    return [cv2.resize(rgb[8 * i: 8 * i + 480, 8 * i: 8 * i + 480], (SIZE, SIZE), interpolation=cv2.INTER_AREA)
            for i in range(n)]


def _fake(frames: list[np.ndarray], color: tuple[int, int, int]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Hand-made manipulation: a flat rectangle painted over the face, and its white-on-black mask."""
    x0, y0, x1, y1 = RECT
    fakes, masks = [], []
    for f in frames:
        f = f.copy()
        f[y0:y1, x0:x1] = color
        m = np.zeros_like(f)
        m[y0:y1, x0:x1] = 255
        fakes.append(f)
        masks.append(m)
    return fakes, masks


def make_world(root: Path) -> dict[str, list[np.ndarray]]:
    """A tiny FF++-layout tree (c23, Face2Face) from London photos, with one bad input of each kind.

    * 000, 001, 002, 004, 006, 007: pristine clips of people; 003: zero-byte file; 005: noise (no face);
      008, 009: absent (their fake 008_009 has no original).
    * Face2Face fakes: 000_001, 001_000 (no mask), 002_003, 003_002 (original unreadable), 004_005 (mask has one
      frame less), 005_004 (original without face), 006_007 (truncated mp4), 007_006 (not a video), 008_009.
    """
    photos = sorted(shared_path("data", "london-faces", "neutral").glob("*.jpg"))
    orig = root / "original_sequences" / "youtube" / "c23" / "videos"
    f2f = root / "manipulated_sequences" / "Face2Face" / "c23" / "videos"
    masks_dir = root / "manipulated_sequences" / "Face2Face" / "masks" / "videos"
    clips: dict[str, list[np.ndarray]] = {}
    for i, vid in enumerate(["000", "001", "002", "004", "006", "007"]):
        clips[vid] = _clip(photos[i])
        write_video(orig / f"{vid}.mp4", clips[vid], crf=23)
    orig.joinpath("003.mp4").write_bytes(b"")
    clips["003"] = _clip(photos[6])
    noise = np.random.default_rng(0).integers(0, 256, (N_FRAMES, SIZE, SIZE, 3), dtype=np.uint8)
    clips["005"] = list(noise)
    write_video(orig / "005.mp4", clips["005"], crf=23)
    clips["008"] = _clip(photos[7])
    for t, s in [("000", "001"), ("001", "000"), ("002", "003"), ("003", "002"), ("004", "005"), ("005", "004"),
                 ("006", "007"), ("008", "009")]:
        fakes, masks = _fake(clips[t], color=(200, 60, 60))
        clips[f"{t}_{s}"] = fakes
        write_video(f2f / f"{t}_{s}.mp4", fakes, crf=23)
        if (t, s) == ("001", "000"):
            continue
        write_video(masks_dir / f"{t}_{s}.mp4", masks[:-1] if (t, s) == ("004", "005") else masks, lossless=True)
    data = f2f.joinpath("006_007.mp4").read_bytes()
    f2f.joinpath("006_007.mp4").write_bytes(data[: len(data) // 2])
    f2f.joinpath("007_006.mp4").write_text("this is not a video\n")
    write_video(masks_dir / "007_006.mp4", _fake(clips["007"], (0, 0, 0))[1], lossless=True)
    for split, pairs in PAIRS.items():
        write_json(root / "splits" / f"{split}.json", pairs)
    return clips


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> tuple[Path, dict[str, list[np.ndarray]]]:
    root = tmp_path_factory.mktemp("ffpp_world")
    return root, make_world(root)


@pytest.fixture(scope="module")
def prepared(world, tmp_path_factory) -> tuple[Path, dict]:
    """The world prepared once, uninterrupted, with one worker (the reference cache)."""
    root, _ = world
    cache = tmp_path_factory.mktemp("cache_ref")
    summary = prepare(root, cache, CFG, methods=["Face2Face"], compressions=["c23"], workers=1, progress=False)
    return cache, summary


def _rows(cache: Path) -> dict[tuple[str, str, int], dict]:
    return {(r["method"], r["video"], r["frame"]): r for r in read_manifest(cache)}


def _cache_files(cache: Path) -> dict[str, bytes]:
    """Every file of the cache except the run summary (which records run counts and paths)."""
    return {str(p.relative_to(cache)): p.read_bytes() for p in sorted(cache.rglob("*"))
            if p.is_file() and p.name != "summary.json"}


# ----------------------------------------------------------------------------------------------------------- tests
def test_sample_indices_evenly_spaced():
    assert sample_indices(5, 3) == [0, 2, 4]
    assert sample_indices(5, 2) == [1, 3]
    assert sample_indices(300, 10) == [15, 45, 75, 105, 135, 165, 195, 225, 255, 285]
    assert sample_indices(3, 10) == [0, 1, 2]
    assert sample_indices(0, 10) == []


def test_frame_counts_per_split(prepared):
    cache, summary = prepared
    rows = read_manifest(cache)
    frames = {}
    for r in rows:
        if r["status"] == "ok":
            frames.setdefault((r["split"], r["method"], r["video"]), []).append(r["frame"])
    assert frames[("train", "original", "000")] == [0, 2, 4]  # train_frames = 3 of 5
    assert frames[("train", "Face2Face", "000_001")] == [0, 2, 4]
    assert frames[("val", "original", "004")] == [1, 3]  # eval_frames = 2 of 5
    assert frames[("test", "original", "006")] == [1, 3]
    assert summary["cells"]["train"]["original"]["c23"] == {"videos": 4, "rows": 3 * 3 + 1, "ok_frames": 9}
    assert summary["ok_frames"] == sum(r["status"] == "ok" for r in rows) == 3 * 3 + 3 + 2 * 3 + 3
    assert list(csv.reader(open(cache / "manifest.csv")))[0] == list(MANIFEST_COLUMNS)


def test_fakes_reuse_pristine_box_and_masks_are_cropped_with_it(prepared, world):
    cache, _ = prepared
    _, clips = world
    rows = _rows(cache)
    crops = np.load(entry_paths(cache, "c23", "Face2Face", "000_001")["crops"], mmap_mode="r")
    masks = np.load(entry_paths(cache, "c23", "Face2Face", "000_001")["masks"], mmap_mode="r")
    real = np.load(entry_paths(cache, "c23", "original", "000")["crops"], mmap_mode="r")
    decoded = read_frames(_video(world, "original", "000"), [0, 2, 4])
    assert crops.shape == (3, 48, 48, 3) and masks.shape == (3, 48, 48) and crops.dtype == masks.dtype == np.uint8
    assert not entry_paths(cache, "c23", "original", "000")["masks"].exists()  # reals: all-zero masks, not stored
    for j, i in enumerate([0, 2, 4]):
        fake_row, real_row = rows[("Face2Face", "000_001", i)], rows[("original", "000", i)]
        assert fake_row["status"] == "ok" and fake_row["row"] == j
        box = faces.Box(real_row["box_x"], real_row["box_y"], real_row["box_size"])
        assert (fake_row["box_x"], fake_row["box_y"], fake_row["box_size"]) == (box.x, box.y, box.size)
        # the box is dlib's on the pristine frame (×1.3, §B.4); dlib finds no face in the painted fake frame
        rects = faces.detect_faces(decoded[i])
        assert faces.crop_box(rects[0], decoded[i].shape) == box
        assert faces.detect_faces(clips["000_001"][i]) == []
        # the cached real crop is the pristine frame cropped with the box, resized to crop_size
        expected = cv2.resize(box.crop(decoded[i]), (48, 48), interpolation=cv2.INTER_AREA)
        np.testing.assert_array_equal(real[j], expected)
        # the mask crop is the painted rectangle seen through the same box
        full = np.zeros((SIZE, SIZE), np.uint8)
        x0, y0, x1, y1 = RECT
        full[y0:y1, x0:x1] = 1
        want = (cv2.resize(box.crop(full) * 255, (48, 48), interpolation=cv2.INTER_AREA) > 127).astype(np.uint8)
        np.testing.assert_array_equal(masks[j], want)
        assert 0.2 < masks[j].mean() < 0.9
        # the fake crop shows the painted colour inside the mask
        assert np.abs(crops[j][masks[j] == 1].astype(int) - [200, 60, 60]).mean() < 20


def _video(world, method: str, vid: str) -> Path:
    root, _ = world
    if method == "original":
        return root / "original_sequences" / "youtube" / "c23" / "videos" / f"{vid}.mp4"
    return root / "manipulated_sequences" / method / "c23" / "videos" / f"{vid}.mp4"


def test_bad_inputs_are_manifest_rows_and_summary_counts(prepared):
    cache, summary = prepared
    rows = read_manifest(cache)
    by_video: dict[str, set] = {}
    for r in rows:
        by_video.setdefault(r["video"], set()).add(r["status"])
    assert by_video["003"] == {"unreadable_video"}  # zero-byte file
    assert by_video["006_007"] == {"unreadable_video"}  # truncated mp4
    assert by_video["007_006"] == {"unreadable_video"}  # not a video
    assert by_video["005"] == {"no_face"}  # noise clip
    assert by_video["005_004"] == {"no_face"}  # its fake: no pristine box
    assert by_video["003_002"] == {"original_unreadable"}
    assert by_video["008_009"] == {"original_missing"}
    assert by_video["001_000"] == {"mask_missing"}
    assert by_video["004_005"] == {"mask_mismatch"}
    assert by_video["000_001"] == by_video["002_003"] == by_video["000"] == {"ok"}
    reasons = {r["video"]: r["reason"] for r in rows}
    assert "empty file" in reasons["003"] and "003.mp4" in reasons["003"]
    assert "006_007.mp4" in reasons["006_007"]
    assert "has 4 frames" in reasons["004_005"] and "has 5" in reasons["004_005"]
    assert "original 008 not found" in reasons["008_009"]
    assert summary["bad_videos"] == {"no_face": 2, "original_missing": 1, "original_unreadable": 1,
                                     "unreadable_video": 3, "mask_missing": 1, "mask_mismatch": 1}
    assert summary["status"]["unreadable_video"] == 3 and summary["status"]["no_face"] == 2 + 2
    assert summary["missing_videos"] == {"test/original/c23": 2, "test/Face2Face/c23": 1}  # 008, 009; 009_008
    assert {(p["video"], p["status"]) for p in summary["problems"]} >= {("003", "unreadable_video"),
                                                                        ("005", "no_face")}
    # frames with a crop but without a usable mask are cached (row >= 0) yet never 'ok'
    assert all(r["row"] >= 0 for r in rows if r["status"] in ("mask_missing", "mask_mismatch"))
    assert json.loads((cache / "summary.json").read_text())["ok_frames"] == summary["ok_frames"]


def test_killed_run_resumes_to_the_same_cache(prepared, world, tmp_path, monkeypatch):
    cache_ref, summary_ref = prepared
    root, _ = world
    cache = tmp_path / "cache"
    real_write = prep._write_outputs
    calls = []

    def write_then_die(*args, **kwargs):
        if len(calls) == 5:
            raise KeyboardInterrupt  # the process is killed in the middle of the batch
        calls.append(1)
        return real_write(*args, **kwargs)

    monkeypatch.setattr(prep, "_write_outputs", write_then_die)
    with pytest.raises(KeyboardInterrupt):
        prepare(root, cache, CFG, methods=["Face2Face"], compressions=["c23"], workers=1, progress=False)
    assert 0 < len(list(cache.rglob("*.json"))) and not (cache / "manifest.csv").exists()
    # what kill -9 inside write_npy leaves (an exception removes its temp file, a kill does not): the next run
    # removes it, so the cache below has exactly the reference's files
    leftover = next(cache.rglob("*.crops.npy")).parent / ".999_998.crops.k1ll3d_9.tmp.npy"
    leftover.write_bytes(b"\x93NUMPY half-written")
    monkeypatch.setattr(prep, "_write_outputs", real_write)
    detect_calls = []
    real_detect = faces.detect_faces
    monkeypatch.setattr(faces, "detect_faces", lambda img, *a, **k: detect_calls.append(1) or real_detect(img, *a, **k))
    summary = prepare(root, cache, CFG, methods=["Face2Face"], compressions=["c23"], workers=1, progress=False)
    assert summary["resumed_videos"] > 0 and summary["processed_videos"] < summary_ref["processed_videos"]
    assert summary["ok_frames"] == summary_ref["ok_frames"] and summary["status"] == summary_ref["status"]
    assert _cache_files(cache) == _cache_files(cache_ref)
    # a third run finds everything cached: no video processed, no face detected again
    detect_calls.clear()
    again = prepare(root, cache, CFG, methods=["Face2Face"], compressions=["c23"], workers=1, progress=False)
    assert again["processed_videos"] == 0 and detect_calls == []
    assert _cache_files(cache) == _cache_files(cache_ref)


def test_two_workers_give_the_same_cache(prepared, world, tmp_path):
    cache_ref, _ = prepared
    root, _ = world
    summary = prepare(root, tmp_path / "c", CFG, methods=["Face2Face"], compressions=["c23"], workers=2,
                      progress=False)
    assert summary["workers"] == 2
    assert _cache_files(tmp_path / "c") == _cache_files(cache_ref)


def test_each_video_is_decoded_once_and_the_cache_is_the_two_pass_one(prepared, world, tmp_path, monkeypatch):
    """prepare counts a video and keeps its sampled frames in one decoding pass (the detection source's crops come
    from the detection pass, a mask is counted and read at once); the cache is byte for byte the one that counting
    every video first and reading its frames in a second pass gives."""
    cache_ref, _ = prepared
    root, _ = world
    opened: list[str] = []
    real_open = prep.vio.open_video
    monkeypatch.setattr(prep.vio, "open_video", lambda p, *a: opened.append(str(p)) or real_open(p, *a))
    prepare(root, tmp_path / "one", CFG, methods=["Face2Face"], compressions=["c23"], workers=1, progress=False)
    assert _cache_files(tmp_path / "one") == _cache_files(cache_ref)
    counts = {p: opened.count(p) for p in opened}
    assert max(counts.values()) == 1 and "000.mp4" in {Path(p).name for p in counts}

    def two_passes(path, choose):  # the decoding prepare did before: count every frame, then read the sampled ones
        n = prep.vio.count_frames(path)
        wanted = list(choose(n))
        return n, prep.vio.read_frames(path, wanted) if wanted else {}

    monkeypatch.setattr(prep.vio, "count_and_read", two_passes)
    prepare(root, tmp_path / "two", CFG, methods=["Face2Face"], compressions=["c23"], workers=1, progress=False)
    assert _cache_files(tmp_path / "two") == _cache_files(cache_ref)


def test_cache_refuses_other_parameters(prepared, world):
    cache, _ = prepared
    root, _ = world
    with pytest.raises(ValueError, match="crop_size"):
        prepare(root, cache, PrepareConfig(train_frames=3, eval_frames=2, crop_size=32), methods=["Face2Face"],
                compressions=["c23"], workers=1, progress=False)


def test_prepare_ffpp_mini_with_official_splits(tmp_path):
    root = shared_path("data", "ffpp-mini")
    cfg = PrepareConfig(train_frames=2, eval_frames=1, crop_size=32, workers=1)
    summary = prepare(root, tmp_path / "cache", cfg, methods=["Deepfakes", "Face2Face", "NeuralTextures", "FaceSwap"],
                      compressions=["c23"], splits_dir=shared_path("ffpp", "splits"), workers=1, progress=False)
    rows = {(r["method"], r["video"]): r for r in read_manifest(tmp_path / "cache")}
    statuses = {}
    for r in read_manifest(tmp_path / "cache"):
        statuses.setdefault((r["split"], r["method"], r["video"]), []).append(r["status"])
    # 519 is in train (2 frames), 004 in val and 634 in test (1 frame each); dlib finds the faces
    assert statuses[("train", "original", "519")] == ["ok", "ok"]
    assert statuses[("val", "original", "004")] == ["ok"]
    assert statuses[("test", "original", "634")] == ["ok"]
    # the fakes are cropped with their original's boxes; ffpp-mini has no masks
    assert statuses[("train", "Deepfakes", "519_515")] == ["mask_missing"] * 2
    assert statuses[("val", "NeuralTextures", "004_982")] == ["mask_missing"]
    assert statuses[("test", "FaceSwap", "634_660")] == ["mask_missing"]
    assert rows[("NeuralTextures", "004_982")]["box_size"] == rows[("original", "004")]["box_size"] > 100
    # Face2Face 750_743 has no original
    assert statuses[("train", "Face2Face", "750_743")] == ["original_missing"] * 2
    assert summary["ok_frames"] == 4 and summary["bad_videos"]["original_missing"] == 1
    assert summary["missing_videos"]["train/original/c23"] == 719  # of 720: only 519 is on disk


def test_crash_in_one_group_is_recorded_and_retried(prepared, world, tmp_path, monkeypatch):
    cache_ref, summary_ref = prepared
    root, _ = world
    real_detect = faces.detect_faces
    calls = []

    def flaky(img, *a, **k):
        calls.append(1)
        if len(calls) == 4:
            raise RuntimeError("detector exploded")
        return real_detect(img, *a, **k)

    monkeypatch.setattr(faces, "detect_faces", flaky)
    cache = tmp_path / "cache"
    summary = prepare(root, cache, CFG, methods=["Face2Face"], compressions=["c23"], workers=1, progress=False)
    errors = [r for r in read_manifest(cache) if r["status"] == "error"]
    assert errors and all("RuntimeError: detector exploded" in r["reason"] for r in errors)
    assert summary["status"]["error"] == len(errors) and 0 < summary["ok_frames"] < summary_ref["ok_frames"]
    monkeypatch.setattr(faces, "detect_faces", real_detect)
    again = prepare(root, cache, CFG, methods=["Face2Face"], compressions=["c23"], workers=1, progress=False)
    assert "error" not in again["status"] and again["ok_frames"] == summary_ref["ok_frames"]
    assert _cache_files(cache) == _cache_files(cache_ref)


def test_emd_prepare_takes_the_settings_reproduce_takes(world, tmp_path):
    import json

    from emdlib import cli

    root, _ = world
    cells = json.dumps([["Face2Face", "c23"]])
    args = ["prepare", "--root", str(root), "--cache", str(tmp_path / "cache"), "--preset", "tiny", "--workers", "1",
            "--set", "prepare.train_frames=2", "--set", "prepare.eval_frames=1", "--set", "prepare.crop_size=32",
            "--set", 'data.methods=["Face2Face"]', "--set", 'data.compressions=["c23"]', "--set", f"emd.cells={cells}"]
    assert cli.main(args) == 0
    recorded = json.loads((tmp_path / "cache" / "prepare.json").read_text())
    assert (recorded["train_frames"], recorded["eval_frames"], recorded["crop_size"]) == (2, 1, 32)
    assert cli.main([*args[:-2], "--set", "prepare.train_frame=2"]) == cli.EXIT_USAGE  # unknown key: refused
