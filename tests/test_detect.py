"""``emd detect`` (emdlib.detect) and the checkpoint registry (emdlib.registry).

Real FF++ c23 clips from ../shared/data/ffpp-mini (trimmed to 20 frames), a tiny EMD trained a few steps on their
face crops, the official MesoNet weights, and every kind of bad input. Rows are checked against an independent
count of dlib faces per sampled frame; the overlay video against the input's frame count and size.
"""

from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import shared_path

from emdlib import cli
from emdlib.baselines.mesonet import Meso4, MesoInception4
from emdlib import detect as detect_mod
from emdlib.data.faces import FACE_DETECTORS, crop_box, detect_faces, find_faces, iou, redetect_near
from emdlib.data.images import read_image
from emdlib.data.video import count_frames, read_frames, write_video
from emdlib.detect import (DEFAULT_FPS, EXIT_ALL_READ, EXIT_NONE_READ, EXIT_PARTIAL, REDETECT_S, ROW_COLUMNS, Detector,
                           FaceTracker, detect, detect_file, exit_code, frame_sampler, resize_crop, sampling_name)
from emdlib.registry import build_model, mesonet_from_h5, model_spec, save_detector

FFPP = ("data", "ffpp-mini")
REAL = FFPP + ("original_sequences", "youtube", "c23", "videos", "004.mp4")
FAKE = FFPP + ("manipulated_sequences", "NeuralTextures", "c23", "videos", "004_982.mp4")
N_FRAMES = 20
S = 64  # tiny EMD input size
W, H = 640, 360  # test clip size


# -- fixtures -----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """The first 20 frames of a real 720p FF++ clip and of its NeuralTextures fake, re-encoded at 640×360 (fast)."""
    out = tmp_path_factory.mktemp("clips")
    paths = {}
    for name, parts in (("real", REAL), ("fake", FAKE)):
        frames = read_frames(shared_path(*parts), range(N_FRAMES))
        small = [cv2.resize(frames[i], (W, H), interpolation=cv2.INTER_AREA) for i in range(N_FRAMES)]
        paths[name] = write_video(out / f"{name}.mp4", small, crf=23, fps=25)
    return paths


@pytest.fixture(scope="module")
def face_rgb():
    """A London-set face photo (512×512 RGB)."""
    img = cv2.imread(str(shared_path("data", "london-faces", "neutral", "001.jpg")))
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="module")
def meso():
    """A randomly initialised Meso-4 detector: enough for input handling (the network is not under test)."""
    torch.manual_seed(0)
    return Detector(Meso4(), 256, device="cpu", batch_size=8)


@pytest.fixture(scope="module")
def emd_checkpoint(clips, tmp_path_factory):
    """A tiny EMD (xception41, ESR with one branch, 64²) trained 3 Adam steps on 4 face crops of the clips,
    written with :func:`save_detector`."""
    from emdlib.models.emd import EMD
    from emdlib.models.esr import ESR
    from emdlib.models.detector import manipulation_loss

    crops, labels = [], []
    for label, name in ((0, "real"), (1, "fake")):
        frames = read_frames(clips[name], range(0, N_FRAMES, 10))
        for f in frames.values():
            crops.append(resize_crop(crop_box(detect_faces(f)[0], f.shape).crop(f), S))
            labels.append(label)
    rgb01 = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 255
    mask = torch.zeros(len(crops), 1, S, S)
    mask[torch.tensor(labels) == 1, :, S // 4 : 3 * S // 4, S // 4 : 3 * S // 4] = 1  # stand-in face region
    batch = {"label": torch.tensor(labels), "mask": mask}
    torch.manual_seed(0)
    model = EMD(ESR(1), encoder="xception41", fer_spec=model_spec("esr", num_branches=1))
    opt = torch.optim.Adam(list(model.trainable_parameters()), lr=1e-3)
    model.train()
    losses = []
    for _ in range(3):
        loss, _ = manipulation_loss(model((rgb01 - 0.5) / 0.5), batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]
    path = tmp_path_factory.mktemp("ckpt") / "emd_tiny.safetensors"
    save_detector(path, model.eval(), S, meta={"note": "test"}, verify=False)  # emd_detector rebuilds it
    return path, model


@pytest.fixture(scope="module")
def emd_detector(emd_checkpoint):
    """The tiny EMD checkpoint loaded the way ``emd detect`` loads it (batch size 3: batches span frames)."""
    return Detector.from_checkpoint(emd_checkpoint[0], device="cpu", batch_size=3)


# -- registry ---------------------------------------------------------------------------------------------------
def test_emd_checkpoint_rebuilds_with_same_outputs(emd_checkpoint, emd_detector):
    path, model = emd_checkpoint
    side = json.loads(path.with_suffix(".json").read_text())
    assert side["image_size"] == S and side["model"]["name"] == "emd" and side["note"] == "test"
    assert side["model"]["kwargs"]["fer"] == {"name": "esr", "kwargs": {"num_branches": 1}}
    rebuilt = emd_detector.model
    assert emd_detector.image_size == S and type(rebuilt).__name__ == "EMD" and rebuilt.fer.num_branches == 1
    x = torch.randn(2, 3, S, S)
    with torch.no_grad():
        a, b = rebuilt(x), model.eval()(x)
    assert torch.allclose(a.logits, b.logits, atol=1e-5)
    assert torch.allclose(a.mask_logits, b.mask_logits, atol=1e-5)


def test_baseline_checkpoint_and_fer_spec_formats(tmp_path):
    torch.manual_seed(1)
    model = MesoInception4()
    save_detector(tmp_path / "m.safetensors", model, 256, spec=model_spec("mesonet"))
    det = Detector.from_checkpoint(tmp_path / "m.safetensors", device="cpu")
    assert det.image_size == 256 and type(det.model).__name__ == "MesoNet"
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in det.model.state_dict().items())
    # a FER stream described by its registry spec is built inside the detector
    esr = build_model("esr", **{"num_branches": 2})
    assert esr.num_branches == 2
    esr2 = build_model("emd", fer={"name": "esr", "kwargs": {"num_branches": 2, "num_classes": 8}},
                       encoder="xception41").fer
    assert esr2.num_branches == 2


def test_save_detector_refuses_a_spec_that_cannot_rebuild(tmp_path):
    with pytest.raises(ValueError, match="weights do not match"):
        save_detector(tmp_path / "x.safetensors", Meso4(), 256, spec=model_spec("mesonet"))  # wrong variant
    assert not (tmp_path / "x.safetensors").exists()
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        save_detector(tmp_path / "x.safetensors", Meso4(), 256, spec=model_spec("nope"))
    with pytest.raises(ValueError, match="no spec"):
        save_detector(tmp_path / "x.safetensors", Meso4(), 256)


def test_checkpoint_without_image_size_is_refused(tmp_path):
    from emdlib.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "m.safetensors", Meso4().state_dict(), {"model": model_spec("meso4")})
    with pytest.raises(ValueError, match="image_size"):
        Detector.from_checkpoint(tmp_path / "m.safetensors")
    with pytest.raises(FileNotFoundError):
        Detector.from_checkpoint(tmp_path / "absent.safetensors")


# -- sampling and faces -----------------------------------------------------------------------------------------
def test_frame_sampler_by_every_and_fps():
    pick = lambda s, n=26, rate=25: [i for i in range(n) if s(i, i / rate)]  # noqa: E731
    assert pick(frame_sampler(every=10)) == [0, 10, 20]
    assert pick(frame_sampler(fps=5)) == [0, 5, 10, 15, 20, 25]
    # 10 of 25 fps: the first frame of each 0.1 s interval (i·0.4 crosses an integer)
    assert pick(frame_sampler(fps=10), 13) == [0, 3, 5, 8, 10]
    assert pick(frame_sampler(fps=60), 5) == [0, 1, 2, 3, 4]
    # variable frame rate: sampling follows the frames' times, not their indices
    times = [0.0, 0.04, 0.08, 0.5, 0.55, 1.0, 1.6, 1.62]
    s = frame_sampler(fps=2)
    assert [i for i, t in enumerate(times) if s(i, t)] == [0, 3, 5, 6]
    with pytest.raises(ValueError, match="give either fps or every, not both"):
        frame_sampler(fps=5, every=2)
    with pytest.raises(ValueError, match="every must be >= 1, got 0"):
        frame_sampler(every=0)
    with pytest.raises(ValueError, match="fps must be > 0, got 0"):
        frame_sampler(fps=0)


def test_default_sampling_rate_picks_frames_by_the_video_rate():
    """Neither fps nor every: DEFAULT_FPS (5) frames per second of video, whatever the clip's own rate."""
    assert DEFAULT_FPS == 5
    def pick(rate: float, n: int) -> list[int]:
        sample = frame_sampler()
        return [i for i in range(n) if sample(i, i / rate)]

    assert pick(25, 26) == [0, 5, 10, 15, 20, 25]
    assert pick(30, 31) == [0, 6, 12, 18, 24, 30]
    # 24 fps: frame i starts interval floor(5·i/24) — 5/24 = 0.21, 10/24 = 0.42, ..., 24/24 = 1.0
    assert pick(24, 25) == [0, 5, 10, 15, 20, 24]
    assert pick(2, 5) == [0, 1, 2, 3, 4]  # a clip slower than the rate: every frame
    assert [sampling_name(), sampling_name(fps=2.5), sampling_name(every=1), sampling_name(every=2),
            sampling_name(every=11), sampling_name(every=23)] == \
        ["5 fps", "2.5 fps", "every frame", "every 2nd frame", "every 11th frame", "every 23rd frame"]


def test_video_rows_match_independent_face_count_and_overlay(clips, emd_detector, tmp_path):
    det = emd_detector
    ov = tmp_path / "fake.overlay.mp4"
    res = detect_file(clips["fake"], det, every=6, overlay_path=ov)
    assert res.ok and res.kind == "video" and not res.warnings
    assert (res.frames_total, res.frames_sampled, res.width, res.height) == (N_FRAMES, 4, W, H)
    frames = read_frames(clips["fake"], [0, 6, 12, 18])
    expected = [(i, k) for i in sorted(frames) for k in range(len(detect_faces(frames[i])))]
    assert list(zip(res.rows["frame"], res.rows["face"])) == expected and len(expected) >= 4
    assert list(res.rows.columns) == list(ROW_COLUMNS) and not res.rows["partial"].any()
    assert res.rows["p_fake"].between(0, 1).all() and res.rows["mask_area"].between(0, 1).all()
    assert res.rows["time_s"].tolist() == [i / 25 for i, _ in expected]
    # the same crops scored one by one give the same probabilities (batching does not change results)
    crops = [crop_box((r.left, r.top, r.right, r.bottom), frames[r.frame].shape).crop(frames[r.frame])
             for r in res.rows.itertuples()]
    p, masks = det.score_faces(crops)
    assert np.allclose(p, res.rows["p_fake"], atol=1e-5)
    assert np.allclose([(m > 0.5).mean() for m in masks], res.rows["mask_area"], atol=0.02)
    top = res.rows.groupby("frame")["p_fake"].max()
    assert math.isclose(res.score, top.mean(), rel_tol=1e-9)
    # overlay: every frame, input size, boxes drawn
    assert count_frames(ov) == N_FRAMES
    cap = cv2.VideoCapture(str(ov))
    assert (cap.get(cv2.CAP_PROP_FRAME_WIDTH), cap.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (W, H)
    cap.release()
    first = read_frames(ov, [0])[0].astype(int)
    x, y, s = (int(res.rows.iloc[0][k]) for k in ("box_x", "box_y", "box_size"))
    diff = np.abs(first - frames[0].astype(int))
    assert diff[y : y + s, x : x + s].mean() > 5  # box, label and mask heat-map drawn over the face
    assert diff[:, : max(1, x - 30)].mean() < 3  # far from the face: only the re-encoding difference


def test_detect_api_writes_csv_json_summary(clips, emd_detector, tmp_path):
    results = detect([clips["real"].parent], emd_detector, out_dir=tmp_path / "out", every=10, progress=False)
    assert [r.path.name for r in results] == ["fake.mp4", "real.mp4"] and exit_code(results) == EXIT_ALL_READ
    for r in results:
        csv = pd.read_csv(tmp_path / "out" / f"{r.path.name}.csv")
        assert len(csv) == len(r.rows) == r.faces > 0
        assert np.allclose(csv["p_fake"], r.rows["p_fake"])
        js = json.loads((tmp_path / "out" / f"{r.path.name}.json").read_text())
        assert js["ok"] and js["faces"] == r.faces and len(js["rows"]) == r.faces and js["frames_sampled"] == 2
    summary = pd.read_csv(tmp_path / "out" / "summary.csv")
    assert summary["path"].tolist() == [str(r.path) for r in results]


# -- bad input: each gets a reason, none stops the batch ---------------------------------------------------------
def _bad(tmp_path, name, data: bytes):
    p = tmp_path / name
    p.write_bytes(data)
    return p


def test_truncated_video_without_index_is_an_error(clips, meso, tmp_path):
    data = clips["real"].read_bytes()
    p = _bad(tmp_path, "cut.mp4", data[: len(data) // 2])  # the moov index is at the end: lost
    res = detect_file(p, meso)
    assert not res.ok and res.rows.empty
    assert res.error.startswith("not a playable video: its MP4/MOV index (moov atom) is missing")


def test_truncated_streamable_video_is_read_with_a_warning(face_rgb, meso, tmp_path):
    import imageio_ffmpeg

    p = tmp_path / "faststart.mp4"
    rng = np.random.default_rng(0)
    w = imageio_ffmpeg.write_frames(str(p), (128, 128), fps=25, codec="libx264", pix_fmt_out="yuv420p",
                                    output_params=["-movflags", "+faststart", "-g", "1"], macro_block_size=1,
                                    ffmpeg_log_level="error")
    w.send(None)
    for _ in range(30):
        w.send(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8))
    w.close()
    data = p.read_bytes()
    cut = _bad(tmp_path, "cut_faststart.mp4", data[: int(len(data) * 0.6)])
    res = detect_file(cut, meso, every=5)
    assert res.ok and 0 < res.frames_total < 30
    assert any("the file looks truncated or damaged" in w for w in res.warnings) and "warning" in res.summary()


def test_zero_length_video_and_image(meso, tmp_path):
    for name in ("empty.mp4", "empty.png"):
        res = detect_file(_bad(tmp_path, name, b""), meso)
        assert not res.ok and res.error == "empty file (0 bytes)"


def test_files_that_are_not_media(meso, tmp_path):
    res = detect_file(_bad(tmp_path, "notes.txt", b"hello"), meso)
    assert not res.ok and "not a supported image or video" in res.error and "'.txt'" in res.error
    rnd = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    res = detect_file(_bad(tmp_path, "noise.mp4", rnd), meso)
    assert not res.ok and res.error.startswith("not a video: the data are in no container format")
    res = detect_file(_bad(tmp_path, "noise.png", rnd), meso)
    assert not res.ok and "not a readable image" in res.error
    res = detect_file(tmp_path / "absent.jpg", meso)
    assert not res.ok and res.error == "no such file"


def test_image_without_face_is_read_and_says_so(meso, tmp_path):
    img = np.tile(np.linspace(0, 255, 320, dtype=np.uint8)[None, :, None], (240, 1, 3))
    p = tmp_path / "gradient.png"
    cv2.imwrite(str(p), img)
    res = detect_file(p, meso)
    assert res.ok and res.faces == 0 and math.isnan(res.score)
    assert res.summary().endswith("no face found (faces narrower than ~40 px are not found at training scale)")
    assert exit_code([res]) == EXIT_ALL_READ


@pytest.mark.parametrize("variant", ["grey", "rgba", "grey16", "rgb16"])
def test_grey_rgba_and_16bit_images(variant, face_rgb, meso, tmp_path):
    bgr = cv2.cvtColor(face_rgb, cv2.COLOR_RGB2BGR)
    grey = cv2.cvtColor(face_rgb, cv2.COLOR_RGB2GRAY)
    data = {"grey": grey, "rgba": np.dstack([bgr, np.full(grey.shape, 77, np.uint8)]),
            "grey16": grey.astype(np.uint16) * 257, "rgb16": bgr.astype(np.uint16) * 257}[variant]
    p = tmp_path / f"{variant}.png"
    assert cv2.imwrite(str(p), data)
    img = read_image(p)
    assert img.dtype == np.uint8 and img.shape == (512, 512, 3)
    want = np.repeat(grey[..., None], 3, axis=2) if variant.startswith("grey") else face_rgb
    assert np.array_equal(img, want)  # 16-bit v·257 → v exactly; alpha dropped; grey → R = G = B
    res = detect_file(p, meso, overlay_path=tmp_path / f"{variant}.overlay.png")
    assert res.ok and res.faces == 1 and 0 <= res.rows["p_fake"][0] <= 1
    assert cv2.imread(str(tmp_path / f"{variant}.overlay.png")).shape == (512, 512, 3)


def test_huge_image_is_searched_at_training_scale(face_rgb, meso, tmp_path):
    """A 6000×4000 photo: detected at full resolution with the function prepare uses, so the box is training's."""
    scale = 4000 / 512
    big = np.zeros((4000, 6000, 3), np.uint8)
    big[:, 1000:5000] = cv2.resize(face_rgb, (4000, 4000), interpolation=cv2.INTER_LINEAR)
    p = tmp_path / "huge.jpg"
    cv2.imwrite(str(p), cv2.cvtColor(big, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])
    (l0, t0, r0, b0), = detect_faces(face_rgb)
    res = detect_file(p, meso)
    assert res.ok and (res.width, res.height) == (6000, 4000) and res.faces == 1 and not res.warnings
    r = res.rows.iloc[0]
    (face,) = find_faces(read_image(p))  # what prepare would crop from this frame
    assert (r.left, r.top, r.right, r.bottom) == face.rect
    assert (r.box_x, r.box_y, r.box_size) == (face.box.x, face.box.y, face.box.size)
    # and it is the photo's face: within 15% of the face size of its box in the 512² original, scaled up
    side = (r0 - l0) * scale
    for got, want in ((r.left, 1000 + l0 * scale), (r.top, t0 * scale), (r.right, 1000 + r0 * scale),
                      (r.bottom, b0 * scale)):
        assert abs(got - want) < 0.15 * side


def test_frame_above_the_detection_limit_is_skipped_and_said(face_rgb, meso, tmp_path, monkeypatch):
    monkeypatch.setattr(detect_mod, "MAX_DETECT_PIXELS", 100_000)  # 512² = 262 144 pixels
    p = tmp_path / "face.png"
    cv2.imwrite(str(p), cv2.cvtColor(face_rgb, cv2.COLOR_RGB2BGR))
    res = detect_file(p, meso)
    assert res.ok and res.faces == 0 and res.frames_skipped == 1
    assert res.warnings == ["1 sampled frame not searched for faces: 512x512 is above 0 Mpixels, more than dlib can "
                            "search at training scale here (downscaling would change the crop; crop or downscale "
                            "the input yourself, keeping faces at least 40 px wide)"]
    assert "no face found in what could be read (warning: 1 sampled frame not searched" in res.summary()


# -- the command ---------------------------------------------------------------------------------------------------
def _ckpt(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "meso4.safetensors"
    save_detector(path, Meso4(), 256, spec=model_spec("meso4"))
    return str(path)


def test_cli_exit_codes_and_summary_lines(face_rgb, tmp_path, capsys):
    ck = _ckpt(tmp_path)
    good = tmp_path / "face.jpg"
    cv2.imwrite(str(good), cv2.cvtColor(face_rgb, cv2.COLOR_RGB2BGR))
    bad = _bad(tmp_path, "bad.mp4", b"not a video")
    out = str(tmp_path / "out")

    assert cli.main(["detect", str(good), "--checkpoint", ck, "--out", out]) == EXIT_ALL_READ
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[1].startswith(f"{good}: image 512x512, 1 face, p(fake)=")
    assert lines[0] == (f"model: meso4 ({ck}), input 256x256, training data unknown (the checkpoint does not record "
                        "it), validation accuracy not recorded")
    strict = json.loads((tmp_path / "out" / "face.jpg.json").read_text(),
                        parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert strict["faces"] == 1 and strict["rows"][0]["mask_area"] is None  # Meso-4 has no mask

    assert cli.main(["detect", str(good), str(bad), "--checkpoint", ck, "--out", out]) == EXIT_PARTIAL == 3
    lines = capsys.readouterr().out.splitlines()[1:]
    assert len(lines) == 2 and lines[1].startswith(f"{bad}: ERROR not a video: the data are in no container format")
    assert json.loads((tmp_path / "out" / "bad.mp4.json").read_text())["error"].startswith("not a video")

    assert cli.main(["detect", str(bad), str(tmp_path / "absent.png"), "--checkpoint", ck, "--out", out]) \
        == EXIT_NONE_READ == 1
    assert capsys.readouterr().out.count("ERROR") == 2
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    assert cli.main(["detect", str(empty), "--checkpoint", ck, "--out", out]) == EXIT_NONE_READ

    assert cli.main(["detect", str(good), "--checkpoint", str(tmp_path / "nope.safetensors")]) == 2
    with pytest.raises(SystemExit):  # --fps and --every are exclusive
        cli.main(["detect", str(good), "--checkpoint", ck, "--fps", "5", "--every", "3"])


def test_official_mesonet_h5_end_to_end(clips, tmp_path, capsys):
    pytest.importorskip("h5py")
    weights = shared_path("weights", "mesonet")
    samples = shared_path("data", "mesonet-samples")
    assert type(mesonet_from_h5(weights / "MesoInception_F2F.h5").features[0]).__name__ == "InceptionLayer"
    code = cli.main(["detect", str(samples), str(clips["fake"]), "--checkpoint", str(weights / "Meso4_DF.h5"),
                     "--every", "10", "--out", str(tmp_path / "out"), "--overlay"])
    model, *lines = capsys.readouterr().out.splitlines()
    assert model.startswith("model: MesoNet (official Keras weights) (") and "trained on the MesoNet authors'" in model
    assert code == 0 and len(lines) == 5 and all("p(fake)=" in line for line in lines)
    scores = {line.split(":")[0].rsplit("/", 1)[-1]: float(line.split("p(fake)=")[1].split()[0]) for line in lines}
    # the official Deepfakes weights put the two Deepfakes samples above the two real ones
    df = [v for k, v in scores.items() if k.startswith("df")]
    real = [v for k, v in scores.items() if k.startswith("real")]
    assert len(df) == len(real) == 2 and min(df) > max(real)
    assert count_frames(tmp_path / "out" / "fake.mp4.overlay.mp4") == N_FRAMES
    assert (tmp_path / "out" / "df").is_dir()  # folder structure mirrored


# -- what the user trusts ----------------------------------------------------------------------------------------
def test_model_line_reads_sidecar_and_run_record_and_warns_for_synthetic(tmp_path, monkeypatch):
    """A checkpoint in the study layout: preset and data world from the run record that names it, validation
    accuracy from the sidecar; a synthetic-world model gets a WARNING line."""
    from emdlib.checkpoint import save_checkpoint

    run = "meso4__Face2Face__c23__s0"
    ck = tmp_path / "data" / "cpu" / "checkpoints" / "runs" / run / "best.safetensors"
    ck.parent.mkdir(parents=True)
    save_checkpoint(ck, Meso4().state_dict(), {"model": model_spec("meso4"), "image_size": 64, "epoch": 3,
                                               "val": {"accuracy": 0.65, "loss": 0.6}})
    record = tmp_path / "results" / "cpu" / "runs" / run / "metrics.json"
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps({"run": run, "checkpoint": str(ck), "method": "Face2Face", "compression": "c23",
                                  "metrics": {"accuracy": 0.7},
                                  "config": {"preset": {"name": "cpu", "data": {"world": "synth"}}}}))
    monkeypatch.chdir(tmp_path / "data")  # the run record is found beside the data folder, not through the cwd
    det = Detector.from_checkpoint(ck, device="cpu")
    assert det.provenance["world"] == "synth" and det.provenance["synthetic"]
    assert det.describe() == [
        f"model: meso4 ({ck}), input 64x64, trained on the synthetic world (rendered faces), preset cpu, Face2Face "
        f"c23, validation accuracy 0.650 (epoch 3), test accuracy 0.700, provenance: run record {record}",
        "WARNING: this model was trained on the synthetic world (rendered cartoon faces, not real people): its "
        "scores on real photos and videos say nothing about manipulation"]
    # a run record that names another checkpoint is not trusted: the folder's preset is, and says so
    record.write_text(json.dumps({"checkpoint": str(tmp_path / "other.safetensors")}))
    prov = Detector.from_checkpoint(ck, device="cpu").provenance
    assert prov["preset"] == "cpu" and prov["world"] == "synth" and prov["test_accuracy"] is None
    assert prov["source"] == "inferred from the checkpoint's folder (preset 'cpu')"
    # what the trainer wrote into the sidecar comes first; a FaceForensics++ model gets no warning
    elsewhere = tmp_path / "m.safetensors"
    save_checkpoint(elsewhere, Meso4().state_dict(), {"model": model_spec("meso4"), "image_size": 256,
                                                      "preset": "paper", "method": "NeuralTextures",
                                                      "compression": "c40", "val": {"accuracy": 0.9}})
    lines = Detector.from_checkpoint(elsewhere, device="cpu").describe()
    assert lines == [f"model: meso4 ({elsewhere}), input 256x256, trained on FaceForensics++, preset paper, "
                     "NeuralTextures c40, validation accuracy 0.900"]


# -- speed: default sampling rate, tracking between full detections, the dlib-fast face detector ----------------------
def test_default_video_run_says_which_frames_were_scored(clips, meso, tmp_path):
    """20 frames at 25 fps, default sampling (5 fps) and tracking: frames 0, 5, 10, 15 scored, one full detection
    (0.8 s of video < REDETECT_S), the rest tracked; the JSON and the summary line name the rate and the frames."""
    results = detect([clips["real"]], meso, out_dir=tmp_path / "out", progress=False)
    (res,) = results
    assert res.ok and res.sampling == "5 fps" and res.frames_scored == [0, 5, 10, 15] and res.frames_sampled == 4
    assert res.full_detections == 1 and res.face_detector == "dlib" and res.redetect_s == REDETECT_S == 1.0
    assert res.rows["frame"].tolist() == [0, 5, 10, 15]  # one face in every scored frame
    assert res.rows["detection"].tolist() == ["full", "tracked", "tracked", "tracked"]
    assert f"{N_FRAMES} frames, 4 sampled (5 fps), 4 faces" in res.summary()
    js = json.loads((tmp_path / "out" / "real.mp4.json").read_text())
    assert (js["sampling"], js["frames_scored"], js["full_detections"]) == ("5 fps", [0, 5, 10, 15], 1)
    assert [r["detection"] for r in js["rows"]] == ["full", "tracked", "tracked", "tracked"]
    summary = pd.read_csv(tmp_path / "out" / "summary.csv")
    assert summary["sampling"].tolist() == ["5 fps"] and "frames_scored" not in summary.columns


def test_tracker_boxes_every_frame_and_redetects_at_the_interval(clips):
    """Every frame of 0.8 s at 25 fps, full detection every 0.4 s: full at frames 0 and 10, dlib re-detection near
    the last box on the others — each a face in dlib's convention overlapping training's full-frame box."""
    frames = read_frames(clips["fake"], range(N_FRAMES))
    tracker = FaceTracker("dlib", redetect_s=0.4)
    full_at = []
    for i in range(N_FRAMES):
        found, full = tracker(frames[i], i / 25)
        if full:
            full_at.append(i)
        (ref,) = find_faces(frames[i])  # the reference: one face per frame of this clip
        assert len(found) == 1 and iou(found[0].rect, ref.rect) >= 0.5, i
        assert found[0].box == crop_box(found[0].rect, frames[i].shape)  # FF++'s 1.3x box of that rectangle
    assert full_at == [0, 10] and (tracker.full_detections, tracker.tracked) == (2, 18)
    # redetect_s=0: the full detector on every frame, i.e. exactly training's boxes
    every = FaceTracker("dlib", redetect_s=0)
    assert all(every(frames[i], i / 25) == (find_faces(frames[i]), True) for i in (0, 1))


def test_tracker_redetects_at_once_when_a_face_is_lost(clips):
    frames = read_frames(clips["real"], [0, 1])
    blank = np.full_like(frames[0], 127)
    tracker = FaceTracker("dlib", redetect_s=10)
    assert tracker(frames[0], 0.0)[1] is True
    found, full = tracker(blank, 0.04)  # the face is gone: dlib finds nothing near its box → full detection now
    assert (found, full) == ([], True) and tracker.full_detections == 2
    # with no face left to follow, a new face waits for the next full detection (10 s later)
    assert tracker(frames[1], 0.08) == ([], False)
    assert len(tracker(frames[1], 10.04)[0]) == 1
    assert redetect_near(blank, (100, 50, 180, 130)) is None


def test_dlib_fast_boxes_follow_the_dlib_convention(face_rgb):
    """On a London photo the fast detector's rectangle is (nearly) dlib's at training scale, boxed the same way;
    a face ~43 px wide is found by dlib (one up-sampling) and missed by dlib-fast (none): its documented limit."""
    (ref,) = find_faces(face_rgb)
    (fast,) = find_faces(face_rgb, "dlib-fast")
    assert iou(fast.rect, ref.rect) > 0.9 and all(abs(a - b) <= 4 for a, b in zip(fast.rect, ref.rect))
    assert fast.box == crop_box(fast.rect, face_rgb.shape)
    small = cv2.resize(face_rgb, None, fx=0.25, fy=0.25, interpolation=cv2.INTER_AREA)
    canvas = np.full((240, 320, 3), 128, np.uint8)
    canvas[20 : 20 + small.shape[0], 100 : 100 + small.shape[1]] = small
    (tiny,) = find_faces(canvas)
    assert 35 <= tiny.rect[2] - tiny.rect[0] <= 50 and find_faces(canvas, "dlib-fast") == []
    assert FACE_DETECTORS == ("dlib", "dlib-fast")
    with pytest.raises(ValueError, match="unknown face detector 'hog' \\(choose from dlib, dlib-fast\\)"):
        find_faces(face_rgb, "hog")


def test_iou_by_hand():
    assert iou((0, 0, 9, 9), (0, 0, 9, 9)) == 1.0
    assert iou((0, 0, 9, 9), (5, 0, 14, 9)) == pytest.approx(50 / 150)  # inclusive corners: 10×10 boxes
    assert iou((0, 0, 9, 9), (10, 10, 19, 19)) == 0.0


def test_detect_options_are_checked_and_cli_help_defaults_agree(face_rgb, tmp_path, capsys):
    with pytest.raises(ValueError, match="unknown face detector 'x'"):
        FaceTracker("x")
    with pytest.raises(ValueError, match="redetect_s must be >= 0 seconds, got -1"):
        detect([tmp_path], _ckpt(tmp_path), redetect_s=-1)
    ck = _ckpt(tmp_path)
    good = tmp_path / "face.jpg"
    cv2.imwrite(str(good), cv2.cvtColor(face_rgb, cv2.COLOR_RGB2BGR))
    assert cli.main(["detect", str(good), "--checkpoint", ck, "--redetect", "-1"]) == 2
    assert cli.main(["detect", str(good), "--checkpoint", ck, "--fps", "0"]) == 2
    for bad in (["--face-detector", "hog"], ["--every-frame", "--fps", "2"], ["--every-frame", "--every", "2"]):
        with pytest.raises(SystemExit):
            cli.main(["detect", str(good), "--checkpoint", ck, *bad])
    capsys.readouterr()
    # the parser names the library's defaults without importing it (it stays free of torch and OpenCV)
    sub = next(a for a in cli.build_parser()._actions if a.dest == "command").choices["detect"]
    helps = {a.dest: a for a in sub._actions}
    assert f"(default {DEFAULT_FPS:g})" in helps["fps"].help and f"(default {REDETECT_S:g})" in helps["redetect"].help
    assert tuple(helps["face_detector"].choices) == FACE_DETECTORS
    # --every-frame scores every frame; the image path is unchanged by sampling and tracking
    assert cli.main(["detect", str(good), "--checkpoint", ck, "--every-frame", "--out", str(tmp_path / "o")]) == 0
    js = json.loads((tmp_path / "o" / "face.jpg.json").read_text())
    assert js["sampling"] == "image" and js["frames_scored"] == [0] and js["rows"][0]["detection"] == "full"
