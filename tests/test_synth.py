"""Tests for the procedural face renderer (emdlib.data.synth, design.md "synth")."""

from __future__ import annotations


import cv2
import numpy as np
import pytest

from emdlib.data import synth
from emdlib.data.expressions import EXPRESSIONS
from emdlib.presets import DataConfig


def _ident(seed: int = 0) -> synth.Identity:
    return synth.sample_identity(np.random.default_rng(seed))


def _lm(name: str, intensity: float = 1.0, seed: int = 0, size: int = 128) -> np.ndarray:
    return synth.render_face(_ident(seed), synth.expression_params(name, intensity), size)[1]


def test_sample_identity_and_render_are_deterministic():
    assert _ident(3) == _ident(3)
    assert _ident(3) != _ident(4)
    ident = _ident(3)
    p = synth.expression_params("happy", 0.8)
    pose = synth.Pose(roll=3.0, tx=0.01, ty=-0.02, scale=1.02, yaw=5.0)
    a = synth.render_face(ident, p, 96, pose, blink=0.2, rng=np.random.default_rng(7))
    b = synth.render_face(ident, p, 96, pose, blink=0.2, rng=np.random.default_rng(7))
    c = synth.render_face(ident, p, 96, pose, blink=0.2, rng=np.random.default_rng(8))
    assert a[0].shape == (96, 96, 3) and a[0].dtype == np.uint8
    assert a[1].shape == (68, 2) and a[1].dtype == np.float32
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])  # sensor noise follows the generator
    np.testing.assert_array_equal(a[1], c[1])  # geometry does not


def test_pose_tuple_and_transform():
    assert synth.Pose.coerce((2.0, 0.1, -0.1, 1.1)) == synth.Pose(roll=2.0, tx=0.1, ty=-0.1, scale=1.1)
    assert synth.Pose.coerce((2.0, 0.1, -0.1, 1.1, 4.0)).yaw == 4.0
    with pytest.raises(ValueError):
        synth.Pose.coerce((1.0, 2.0))
    ident = _ident(1)
    p = synth.expression_params("neutral")
    lm0 = synth.render_face(ident, p, 128)[1]
    lm_t = synth.render_face(ident, p, 128, (0.0, 0.1, 0.05, 1.0))[1]
    np.testing.assert_allclose(lm_t - lm0, np.broadcast_to([12.8, 6.4], lm0.shape), atol=1e-3)
    lm_s = synth.render_face(ident, p, 128, (0.0, 0.0, 0.0, 1.2))[1]
    assert np.ptp(lm_s[:, 0]) == pytest.approx(1.2 * np.ptp(lm0[:, 0]), rel=1e-3)
    lm_r = synth.render_face(ident, p, 128, (10.0, 0.0, 0.0, 1.0))[1]  # image y down: +roll turns clockwise
    assert lm_r[45, 1] > lm_r[36, 1] + 3


def test_landmark_order_is_dlib_68():
    lm = _lm("neutral", seed=2)
    jaw, brow_l, brow_r = lm[0:17], lm[17:22], lm[22:27]
    eye_l, eye_r, mouth = lm[36:42], lm[42:48], lm[48:68]
    # jaw runs image-left -> chin -> image-right, chin lowest
    assert jaw[0, 0] < jaw[8, 0] < jaw[16, 0]
    assert np.argmax(jaw[:, 1]) in (7, 8, 9)
    assert np.all(np.diff(jaw[:9, 1]) > 0) and np.all(np.diff(jaw[8:, 1]) < 0)
    # image-left features left of image-right ones; brows outer -> inner on the left, inner -> outer on the right
    assert eye_l[:, 0].max() < eye_r[:, 0].min()
    assert brow_l[:, 0].max() < brow_r[:, 0].min()
    assert np.all(np.diff(brow_l[:, 0]) > 0) and np.all(np.diff(brow_r[:, 0]) > 0)
    assert lm[36, 0] < lm[39, 0] < lm[42, 0] < lm[45, 0]  # eye corners
    assert lm[37:39, 1].max() < lm[40:42, 1].min()  # upper lid above lower lid
    # vertical order: brows above eyes above nose tip above mouth above chin
    assert lm[17:27, 1].max() < lm[36:48, 1].min()
    assert np.all(np.diff(lm[27:31, 1]) > 0)
    assert lm[33, 1] < mouth[:, 1].min()
    assert mouth[:, 1].max() < jaw[8, 1]
    assert lm[31, 0] < lm[33, 0] < lm[35, 0]
    assert lm[48, 0] < lm[51, 0] < lm[54, 0] and lm[60, 0] < lm[62, 0] < lm[64, 0]
    assert lm[51, 1] < lm[62, 1] <= lm[66, 1] < lm[57, 1]
    # the jaw encloses the inner face
    inner = lm[17:68].astype(np.float32)
    hull = np.vstack([lm[0:17], [[lm[16, 0], lm[24, 1] - 20], [lm[0, 0], lm[19, 1] - 20]]]).astype(np.float32)
    assert all(cv2.pointPolygonTest(hull.reshape(-1, 1, 2), (float(x), float(y)), False) > 0 for x, y in inner)


def test_landmarks_match_what_is_drawn():
    ident = _ident(5)
    img, lm = synth.render_face(ident, synth.expression_params("surprise"), 160)
    grey = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY).astype(float)

    def at(p):
        return grey[int(round(p[1])), int(round(p[0]))]

    pupil_l = lm[36:42].mean(axis=0)
    pupil_r = lm[42:48].mean(axis=0)
    cheek = (lm[3] + lm[30]) / 2
    assert at(pupil_l) < at(cheek) - 30 and at(pupil_r) < at(cheek) - 30
    mouth_inside = (lm[62] + lm[66]) / 2
    assert at(mouth_inside) < at(cheek) - 30
    # the image is face-coloured inside the jaw and background-coloured well outside it
    face_px = img[int(cheek[1]), int(cheek[0])].astype(float)
    assert np.abs(face_px - 255 * np.array(ident.skin)).max() < 80


def test_detection_rate_and_predictor_agreement():
    from emdlib.data import faces

    rng = np.random.default_rng(123)
    found, errors = 0, []
    n = 20
    for i in range(n):
        ident = synth.sample_identity(rng)
        pose = synth.Pose(roll=rng.uniform(-6, 6), tx=rng.uniform(-0.03, 0.03), ty=rng.uniform(-0.03, 0.03),
                          scale=rng.uniform(0.93, 1.07), yaw=rng.uniform(-10, 10))
        img, lm = synth.render_face(ident, synth.expression_params(EXPRESSIONS[i % 8], rng.uniform(0.6, 1)), 128,
                                    pose, rng=rng)
        boxes = faces.detect_faces(img)
        if boxes:
            found += 1
            errors.append(np.linalg.norm(faces.landmarks(img, boxes[0]) - lm, axis=1).mean())
    assert found / n >= 0.9
    assert np.mean(errors) < 4.0  # px at 128: dlib's predictor lands on the analytic landmarks


def _mouth_corner_lift(lm: np.ndarray) -> float:
    """How far the corners sit above the lip centre line (px, + = up)."""
    centre_y = (lm[62, 1] + lm[66, 1]) / 2
    return float(centre_y - (lm[48, 1] + lm[54, 1]) / 2)


def test_expressions_move_landmarks_the_expected_way():
    neutral, happy, sad = _lm("neutral"), _lm("happy"), _lm("sad")
    surprise, anger, contempt = _lm("surprise"), _lm("anger"), _lm("contempt")
    assert _mouth_corner_lift(happy) > _mouth_corner_lift(neutral) + 2
    assert _mouth_corner_lift(sad) < _mouth_corner_lift(neutral) - 2
    # surprise: brows higher, mouth open, eyes wider
    assert surprise[17:27, 1].mean() < neutral[17:27, 1].mean() - 2
    assert surprise[66, 1] - surprise[62, 1] > neutral[66, 1] - neutral[62, 1] + 5
    assert surprise[41, 1] - surprise[37, 1] > neutral[41, 1] - neutral[37, 1]
    # anger: inner brow ends lowered and pulled together
    assert anger[[21, 22], 1].mean() > neutral[[21, 22], 1].mean() + 1.5
    assert anger[22, 0] - anger[21, 0] < neutral[22, 0] - neutral[21, 0]
    # sadness raises the inner brow ends relative to the outer ones
    assert (sad[21, 1] - sad[17, 1]) < (neutral[21, 1] - neutral[17, 1]) - 1.5
    # contempt lifts one corner only
    assert abs(contempt[48, 1] - contempt[54, 1]) > abs(neutral[48, 1] - neutral[54, 1]) + 2
    # intensity scales the action
    assert _mouth_corner_lift(_lm("happy", 0.5)) == pytest.approx(
        (_mouth_corner_lift(happy) + _mouth_corner_lift(neutral)) / 2, abs=0.6)


def test_expressions_are_visible_to_dlib():
    """The drawn smile is a smile to dlib's predictor too (not only in our analytic landmarks)."""
    from emdlib.data import faces

    lifts = {}
    for name in ("happy", "sad"):
        img, _ = synth.render_face(_ident(9), synth.expression_params(name), 160)
        found = faces.face_box_and_landmarks(img)
        assert found is not None
        lifts[name] = _mouth_corner_lift(found[1])
    assert lifts["happy"] > lifts["sad"] + 2


def test_expression_params_and_interpolation():
    neutral = synth.expression_params("neutral")
    assert synth.expression_params("happy", 0.0) == neutral
    a, b = synth.expression_params("happy"), synth.expression_params("sad")
    mid = synth.interpolate_expressions(a, b, 0.5)
    np.testing.assert_allclose(mid.as_array(), (a.as_array() + b.as_array()) / 2)
    assert synth.interpolate_expressions(a, b, 1.0) == b
    with pytest.raises(KeyError, match="unknown expression"):
        synth.expression_params("joy")
    # every class differs from every other
    arrays = [synth.expression_params(n).as_array() for n in EXPRESSIONS]
    assert all(not np.allclose(arrays[i], arrays[j]) for i in range(8) for j in range(i + 1, 8))


def test_expression_schedule_holds_and_morphs():
    keys = [synth.expression_params("neutral"), synth.expression_params("happy")]
    params, labels = synth.expression_schedule(keys, 10)
    assert labels[0] == 0 and labels[-1] == 1 and labels == sorted(labels)
    assert params[0] == keys[0] and params[-1] == keys[1]
    curve = [p.mouth_curve for p in params]
    assert all(np.diff(curve) >= 0)
    assert 0 < curve[5] < 1


def test_render_clip_shapes_motion_and_labels():
    rng = np.random.default_rng(0)
    clip = synth.render_clip(_ident(0), rng, 8, 64, expressions=["neutral", "surprise"], identity_tag="007")
    assert clip.frames.shape == (8, 64, 64, 3) and clip.frames.dtype == np.uint8
    assert clip.landmarks.shape == (8, 68, 2) and clip.identity == "007"
    assert clip.expressions[0] == "neutral" and clip.expressions[-1] == "surprise"
    step = np.linalg.norm(np.diff(clip.landmarks, axis=0), axis=2)
    assert step.max() < 6.0  # smooth: no landmark jumps more than a few pixels between frames
    assert np.abs(clip.landmarks[-1] - clip.landmarks[0]).max() > 0.5  # but the head does move
    opening = clip.landmarks[:, 66, 1] - clip.landmarks[:, 62, 1]
    assert opening[-1] > opening[0] + 2
    # clips with default schedules visit 2-3 expressions each and differ between clips
    rng = np.random.default_rng(1)
    seen = set()
    for _ in range(4):
        c = synth.render_clip(_ident(1), rng, 4, 32)
        assert 1 <= len(set(c.expressions)) <= 3
        seen |= set(c.expressions)
    assert len(seen) >= 4
    with pytest.raises(ValueError, match="unknown"):
        synth.render_clip(_ident(1), rng, 4, 32, expressions=["joy"])


def test_render_expression_set_layout_and_resume(tmp_path):
    out = tmp_path / "expr"
    counts = synth.render_expression_set(out, 2, size=40, seed=3)
    assert counts == {name: 2 for name in EXPRESSIONS}
    files = sorted(out.glob("*/*.png"))
    assert len(files) == 16
    assert {f.parent.name for f in files} == set(EXPRESSIONS)
    assert {f.name for f in files} == {"00000.png", "00001.png"}
    assert not list(out.rglob(".*"))  # no temporary files left behind
    img = cv2.imread(str(out / "happy" / "00000.png"))
    assert img.shape == (40, 40, 3)
    centre = img[12:28, 12:28].reshape(-1, 3).astype(float).mean(axis=0)
    assert centre[2] > centre[0]  # stored BGR: skin has more red than blue
    before = {f: f.read_bytes() for f in files}
    mtimes = {f: f.stat().st_mtime_ns for f in files}
    victim = out / "anger" / "00001.png"
    victim.unlink()
    counts = synth.render_expression_set(out, 2, size=40, seed=3)
    assert counts == {name: 2 for name in EXPRESSIONS}
    assert victim.read_bytes() == before[victim]  # re-rendered identically
    assert all(f.stat().st_mtime_ns == mtimes[f] for f in files if f != victim)  # the rest were kept


def test_make_pairs():
    pairs = synth.make_pairs(2, 1, 1)
    assert pairs == {"train": [("000", "001"), ("002", "003")], "val": [("004", "005")], "test": [("006", "007")]}
    with pytest.raises(ValueError):
        synth.make_pairs(400, 50, 60)


def test_build_synth_world_hands_clips_to_the_world_writer(tmp_path, monkeypatch):
    calls = []

    def fake_write_world(out_root, clips, pairs, cfg, seed, **kwargs):
        calls.append((out_root, clips, pairs, cfg, seed))
        return {"written": len(clips)}

    from emdlib.data import world

    monkeypatch.setattr(world, "write_world", fake_write_world)

    cfg = DataConfig(pairs=(2, 1, 1), frames_per_clip=3, frame_size=48, seed=11)
    summary = synth.build_synth_world(tmp_path, cfg)
    out_root, clips, pairs, cfg_seen, seed = calls[0]
    assert out_root == tmp_path and cfg_seen is cfg and seed == 11
    assert pairs == synth.make_pairs(2, 1, 1)
    assert sorted(clips) == [f"{i:03d}" for i in range(8)]
    assert all(c.frames.shape == (3, 48, 48, 3) and c.identity == vid for vid, c in clips.items())
    shown = {name for c in clips.values() for name in c.expressions}
    assert shown == set(EXPRESSIONS)  # pristine clips together show every expression
    assert summary["written"] == 8 and summary["synth"]["ids"] == 8
    assert all(n > 0 for n in summary["synth"]["frames_per_expression"].values())
    # deterministic per seed; another seed gives other faces
    synth.build_synth_world(tmp_path, cfg, seed=11)
    synth.build_synth_world(tmp_path, cfg, seed=12)
    again, other = calls[1][1], calls[2][1]
    assert all(np.array_equal(clips[k].frames, again[k].frames) for k in clips)
    assert not np.array_equal(clips["000"].frames, other["000"].frames)
