"""The forge world: the three manipulations (emdlib.data.forge) and their warps (emdlib.data.warps) on real London
faces, clips from photos (emdlib.data.photos) and the FF++-layout writer (emdlib.data.world)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from emdlib.data import ffpp, forge, photos, warps
from emdlib.data.clip import Clip
from emdlib.data.video import count_frames, read_frames
from emdlib.data.world import write_world
from emdlib.presets import DataConfig

from conftest import shared_path

PEOPLE = ("001", "004", "010")
SIZE = 160


@pytest.fixture(scope="module")
def london() -> dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]:
    """(person, "neutral"|"smiling") -> (RGB photo, dlib landmarks) for three London identities."""
    root = shared_path("data", "london-faces")
    out = {}
    for p in PEOPLE:
        for kind in ("neutral", "smiling"):
            r = photos.read_face_photo(root / kind / f"{p}.jpg")
            assert not isinstance(r, str), r
            out[p, kind] = r
    return out


@pytest.fixture(scope="module")
def frames(london) -> dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]:
    """One still frame (face-centred crop, SIZE px) per photo, with its landmarks."""
    out = {}
    for i, (key, (img, lms)) in enumerate(sorted(london.items())):
        clip = photos.clip_from_photo(img, lms, np.random.default_rng(i), 1, SIZE)
        out[key] = (clip.frames[0], clip.landmarks[0])
    return out


def _sources(frames, person: str, method: str):
    if method == "Deepfakes":  # identity from another person
        other = PEOPLE[(PEOPLE.index(person) + 1) % len(PEOPLE)]
        return frames[other, "neutral"]
    return frames[person, "smiling"]  # expression from the person's other photo


@pytest.mark.parametrize("method", forge.METHOD_FUNCTIONS)
@pytest.mark.parametrize("person", PEOPLE)
def test_mask_covers_exactly_the_change(frames, method, person):
    frame, lms = frames[person, "neutral"]
    src_frame, src_lms = _sources(frames, person, method)
    fake, mask = forge.manipulate_frame(method, frame, lms, src_frame, src_lms)
    assert fake.shape == frame.shape and fake.dtype == np.uint8
    assert mask.shape == frame.shape[:2] and mask.dtype == np.uint8
    assert set(np.unique(mask)) <= {0, 255}
    inside = mask > 0
    # a face-sized region, not the whole frame
    assert 0.01 < inside.mean() < 0.6
    # outside the mask the fake IS the pristine frame
    np.testing.assert_array_equal(fake[~inside], frame[~inside])
    diff = np.abs(fake.astype(int) - frame.astype(int))
    changed = diff.max(2) > 0
    assert not (changed & ~inside).any()
    # inside it clearly differs, over most of the mask
    assert diff[inside].mean() > 2.0
    assert changed[inside].mean() > 0.5


@pytest.mark.parametrize("person", PEOPLE)
def test_face2face_moves_mouth_corners_to_the_smile(frames, person):
    frame, lms = frames[person, "neutral"]
    src_frame, src_lms = frames[person, "smiling"]
    new = warps.transfer_expression(lms, src_lms, forge.F2F_POINTS)
    # smiling widens the mouth: the corners move apart by a visible amount
    width = lambda p: float(np.linalg.norm(p[54] - p[48]))
    assert width(new) > width(lms) + 1.0
    # stable points do not move (only expression moves, not head pose)
    np.testing.assert_array_equal(new[warps.NOSE], lms[warps.NOSE])
    fake, mask = forge.face2face(frame, lms, src_lms, src_frame)
    # the pixels at the new mouth corners changed and lie inside the mask
    for k in (48, 54):
        x, y = np.round(new[k]).astype(int)
        assert mask[y, x] == 255
    corners = np.concatenate([new[[48, 54]], lms[[48, 54]]])
    x0, y0 = np.floor(corners.min(0)).astype(int) - 3
    x1, y1 = np.ceil(corners.max(0)).astype(int) + 3
    patch = np.abs(fake[y0:y1, x0:x1].astype(int) - frame[y0:y1, x0:x1].astype(int))
    assert patch.mean() > 4.0


def test_both_ways_and_identity_source(frames):
    """smile -> neutral works too and moves the corners back; the same source/target gives (almost) no motion."""
    p = PEOPLE[1]
    (fn, ln), (fs, ls) = frames[p, "neutral"], frames[p, "smiling"]
    to_neutral = warps.transfer_expression(ls, ln, forge.F2F_POINTS)
    width = lambda q: float(np.linalg.norm(q[54] - q[48]))
    assert width(to_neutral) < width(ls) - 1.0
    same = warps.transfer_expression(ln, ln, forge.F2F_POINTS)
    np.testing.assert_allclose(same, ln, atol=1e-3)


def test_similarity_transform_recovers_known_motion():
    rng = np.random.default_rng(0)
    pts = rng.uniform(0, 100, (20, 2))
    a = np.deg2rad(12.0)
    m = np.array([[1.3 * np.cos(a), -1.3 * np.sin(a), 5.0], [1.3 * np.sin(a), 1.3 * np.cos(a), -7.0]])
    np.testing.assert_allclose(warps.similarity_transform(pts, warps.apply_affine(m, pts)), m, atol=1e-4)


def test_piecewise_affine_identity_and_translation():
    pts = np.array([[0, 0], [63, 0], [0, 47], [63, 47], [30, 20]], np.float32)
    mx, my, cov = warps.piecewise_affine_map(pts, pts, (48, 64))
    yy, xx = np.mgrid[0:48, 0:64]
    assert cov.all()
    np.testing.assert_array_equal(mx, xx)
    np.testing.assert_array_equal(my, yy)
    moved = pts.copy()
    moved[4] += (3, 2)
    mx, my, _ = warps.piecewise_affine_map(pts, moved, (48, 64))
    # the moved vertex samples the original vertex
    assert abs(mx[22, 33] - 30) < 1e-3 and abs(my[22, 33] - 20) < 1e-3


def test_clip_from_photo_motion_landmarks_and_blink(london):
    img, lms = london[PEOPLE[0], "neutral"]
    clip = photos.clip_from_photo(img, lms, np.random.default_rng(5), 12, 96, expression="neutral", identity="x")
    assert clip.frames.shape == (12, 96, 96, 3) and clip.landmarks.shape == (12, 68, 2)
    assert clip.expressions == ["neutral"] * 12
    # the face is centred and inside the frame
    assert (clip.landmarks > 0).all() and (clip.landmarks < 96).all()
    centre = clip.landmarks.mean(1)
    assert np.abs(centre - 48).max() < 20
    # smooth head motion: frames differ, landmarks move little between consecutive frames
    assert not np.array_equal(clip.frames[0], clip.frames[-1])
    step = np.abs(np.diff(centre, axis=0)).max()
    assert 0 < step < 3
    # at least one blink: the upper and lower lids of an eye come close together
    opening = np.linalg.norm(clip.landmarks[:, 37] - clip.landmarks[:, 41], axis=1)
    assert opening.min() < 0.4 * opening.max()
    # deterministic with the same generator
    again = photos.clip_from_photo(img, lms, np.random.default_rng(5), 12, 96, expression="neutral", identity="x")
    np.testing.assert_array_equal(again.frames, clip.frames)


def test_scale_pairs():
    assert photos.scale_pairs((36, 7, 7), 102) == (36, 7, 7)
    assert photos.scale_pairs((36, 7, 7), 20) == (16, 2, 2)
    assert photos.scale_pairs((3, 1, 1), 3) == (1, 1, 1)
    assert photos.scale_pairs((3, 1, 1), 2) == (1, 0, 1)
    assert photos.scale_pairs((3, 1, 1), 1) == (1, 0, 0)
    assert sum(photos.scale_pairs((360, 70, 70), 51)) == 51


def _mtimes(root: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def test_write_world_round_trip_and_resume(london, tmp_path):
    clips = {}
    for i, key in enumerate([(PEOPLE[0], "neutral"), (PEOPLE[0], "smiling"), (PEOPLE[1], "smiling"), (PEOPLE[1], "neutral")]):
        img, lms = london[key]
        clips[f"{i:03d}"] = photos.clip_from_photo(img, lms, np.random.default_rng(i), 4, 64, identity=key[0])
    # the last clip is longer: its fakes must still follow the target's length
    img, lms = london[PEOPLE[1], "neutral"]
    clips["003"] = photos.clip_from_photo(img, lms, np.random.default_rng(9), 5, 64)
    pairs = {"train": [("000", "001")], "val": [("002", "003")], "test": []}
    cfg = DataConfig(pairs=(1, 1, 0), frames_per_clip=4, frame_size=64)
    root = tmp_path / "world"
    summary = write_world(root, clips, pairs, cfg, seed=0, progress=False)

    n_fakes = 4 * len(cfg.methods)
    assert summary["videos_written"] == 4 * len(cfg.compressions) + n_fakes * (len(cfg.compressions) + 1)
    for vid, clip in clips.items():
        for comp in cfg.compressions:
            p = ffpp.video_path(root, ffpp.ORIGINAL, comp, vid)
            assert count_frames(p) == len(clip)
    for method in cfg.methods:
        for t, s in [("000", "001"), ("001", "000"), ("002", "003"), ("003", "002")]:
            name = f"{t}_{s}"
            m = ffpp.mask_path(root, method, name)
            mask = read_frames(m)
            assert len(mask) == len(clips[t])
            assert mask[0].shape == (64, 64, 3)
            assert set(np.unique(np.stack(list(mask.values())))) <= {0, 255}  # lossless, still binary
            assert max(v.max() for v in mask.values()) == 255
            for comp in cfg.compressions:
                v = ffpp.video_path(root, method, comp, name)
                assert count_frames(v) == len(clips[t])
                assert read_frames(v, [0])[0].shape == (64, 64, 3)
    # split JSONs as FF++ (lists of [a, b])
    assert json.loads((root / "splits" / "train.json").read_text()) == [["000", "001"]]
    assert json.loads((root / "splits" / "val.json").read_text()) == [["002", "003"]]
    assert json.loads((root / "splits" / "test.json").read_text()) == []
    world = json.loads((root / "world.json").read_text())
    assert world["seed"] == 0 and world["counts"]["original"] == 4
    assert world["counts"]["Face2Face"] == 4
    assert world["config"] == json.loads(json.dumps(dataclasses.asdict(cfg)))

    # resumable: a second run writes nothing and touches no file
    before = _mtimes(root)
    again = write_world(root, clips, pairs, cfg, seed=0, progress=False)
    assert again["videos_written"] == 0
    assert again["videos_skipped"] == summary["videos_written"]
    assert _mtimes(root) == before
    # a deleted output is re-made, the rest is left alone
    victim = ffpp.video_path(root, "Deepfakes", "c40", "002_003")
    victim.unlink()
    third = write_world(root, clips, pairs, cfg, seed=0, progress=False)
    assert third["videos_written"] == 1 and victim.is_file()


def test_write_world_rejects_bad_splits(tmp_path):
    clip = Clip(np.zeros((2, 8, 8, 3), np.uint8), np.zeros((2, 68, 2), np.float32))
    cfg = DataConfig()
    with pytest.raises(ValueError, match="no clip"):
        write_world(tmp_path, {"000": clip}, {"train": [("000", "001")]}, cfg, 0, progress=False)
    with pytest.raises(ValueError, match="twice"):
        write_world(tmp_path, {"000": clip, "001": clip, "002": clip},
                          {"train": [("000", "001")], "val": [("001", "002")]}, cfg, 0, progress=False)


def test_build_faces_world_paired_and_skips(tmp_path):
    """A tiny paired folder (2 London people + one unreadable and one faceless photo) -> FF++ world."""
    import shutil

    import cv2

    src = shared_path("data", "london-faces")
    faces = tmp_path / "faces"
    for kind in ("neutral", "smiling"):
        (faces / kind).mkdir(parents=True)
        for p in ("001", "004", "010"):
            shutil.copy(src / kind / f"{p}.jpg", faces / kind / f"{p}.jpg")
    (faces / "neutral" / "000.jpg").write_bytes(b"not a jpeg")  # unreadable, sorted first
    (faces / "smiling" / "000.jpg").write_bytes(b"not a jpeg")
    cv2.imwrite(str(faces / "neutral" / "002.jpg"), np.full((64, 64, 3), 128, np.uint8))  # no face
    cv2.imwrite(str(faces / "smiling" / "002.jpg"), np.full((64, 64, 3), 128, np.uint8))
    cfg = DataConfig(world="faces", pairs=(1, 1, 1), frames_per_clip=2, frame_size=64,
                     methods=("Face2Face", "Deepfakes"), compressions=("c23",))
    out = tmp_path / "world"
    summary = photos.build_faces_world(faces, out, cfg, seed=1, progress=False)
    world = json.loads((out / "world.json").read_text())
    assert world["layout"] == "paired"
    assert world["pairs_used"] == [1, 1, 1]
    reasons = {Path(s["file"]).name + ":" + Path(s["file"]).parent.name: s["reason"] for s in world["skipped"]}
    assert "unreadable" in reasons["000.jpg:neutral"]
    assert "no face" in reasons["002.jpg:neutral"]
    assert summary["skipped"] >= 2
    # each person is one pair (neutral, smiling); clips name their photo
    assert json.loads((out / "splits" / "train.json").read_text()) == [["000", "001"]]
    assert world["clips"]["000"]["expression"] == "neutral" and world["clips"]["001"]["expression"] == "happy"
    assert world["clips"]["000"]["person"] == world["clips"]["001"]["person"] == "001"
    # Deepfakes takes another person's identity; Face2Face the person's own other photo
    df = world["sources"]["Deepfakes"]
    assert df["000_001"] not in ("000", "001")
    assert "Face2Face" not in world["sources"]
    assert ffpp.video_path(out, "Face2Face", "c23", "001_000").is_file()
    assert count_frames(ffpp.mask_path(out, "Deepfakes", "000_001")) == 2


def test_build_faces_world_flat_folder_pairs_by_order(tmp_path):
    import shutil

    src = shared_path("data", "london-faces", "neutral")
    faces = tmp_path / "flat"
    faces.mkdir()
    for p in ("001", "004", "010", "012"):
        shutil.copy(src / f"{p}.jpg", faces / f"p{p}.jpg")
    cfg = DataConfig(world="faces", pairs=(3, 1, 1), frames_per_clip=2, frame_size=64,
                     methods=("NeuralTextures",), compressions=("c40",))
    photos.build_faces_world(faces, tmp_path / "w", cfg, seed=0, progress=False)
    world = json.loads((tmp_path / "w" / "world.json").read_text())
    assert world["layout"] == "flat" and world["pairs_used"] == [1, 0, 1]
    assert json.loads((tmp_path / "w" / "splits" / "train.json").read_text()) == [["000", "001"]]
    assert json.loads((tmp_path / "w" / "splits" / "val.json").read_text()) == []
    assert json.loads((tmp_path / "w" / "splits" / "test.json").read_text()) == [["002", "003"]]
    assert [world["clips"][i]["person"] for i in ("000", "001", "002", "003")] == ["p001", "p004", "p010", "p012"]
    assert ffpp.video_path(tmp_path / "w", "NeuralTextures", "c40", "003_002").is_file()
