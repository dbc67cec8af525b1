"""Bad-input corpus, media half: videos, images, folders, links and FF++ trees as people hand them to ``emd detect``,
``emd prepare`` and the FF++ reader (issue 11, kinds 1, 2, 3, 4 and 8).

Every input is generated here from tiny data (a synth face, OpenCV drawing, the bundled ffmpeg of imageio-ffmpeg).
Each case asserts the message (naming the file and the problem), the exit code where it goes through the CLI, that
the batch finishes (the other inputs are still scored) and that nothing is half-written (no temporary file left).
The inputs of ``../shared/cases`` are read too when present.
"""

from __future__ import annotations

import errno
import logging
import os
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from conftest import shared_path
from emdlib import cli
from emdlib.baselines.mesonet import Meso4
from emdlib.data import faces, media, synth
from emdlib.data.ffpp import FFPP, load_splits, read_world
from emdlib.data.images import decode_image, read_image
from emdlib.data.prepare import prepare, read_manifest
from emdlib.data.video import (VideoError, count_and_read, count_frames, frame_times, open_video, probe, read_frames,
                               write_video)
from emdlib.detect import (EXIT_ALL_READ, EXIT_NONE_READ, EXIT_PARTIAL, OUTPUT_MARKER, Detector, detect, detect_file,
                           frame_sampler, iter_media)
from emdlib.io import write_json
from emdlib.registry import model_spec, save_detector
from emdlib.presets import PrepareConfig

FPS = 25


# -- generated material --------------------------------------------------------------------------------------------
def ffmpeg(*args: str) -> None:
    """Run the bundled ffmpeg (imageio-ffmpeg) quietly; fail the test with its message."""
    import imageio_ffmpeg

    proc = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-v", "error", *args], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.fixture(scope="module")
def face() -> np.ndarray:
    """A rendered synth face, 128×128 RGB, that dlib finds."""
    img, _ = synth.render_face(synth.sample_identity(np.random.default_rng(3)), synth.expression_params("neutral"),
                               128, synth.Pose(), rng=np.random.default_rng(0))
    assert len(faces.find_faces(img)) == 1
    return img


def moving(face: np.ndarray, n: int, size: tuple[int, int] = (160, 128)) -> list[np.ndarray]:
    """``n`` frames ``size`` (W, H) with the face drifting 1 px a frame on a grey background."""
    w, h = size
    out = []
    for i in range(n):
        canvas = np.full((h, w, 3), 90, np.uint8)
        x, y = (w - 128) // 2 + (i % 8) - 4, (h - 128) // 2
        canvas[y:y + 128, max(x, 0):x + 128] = face[:, max(-x, 0):]
        out.append(canvas)
    return out


@pytest.fixture(scope="module")
def media_dir(face, tmp_path_factory) -> Path:
    """Clips and images made once for the module (each test copies what it changes)."""
    d = tmp_path_factory.mktemp("media")
    frames = moving(face, 75)
    write_video(d / "long.mp4", frames, crf=20, fps=FPS)  # 3 s, the source of the trimmed and truncated clips
    ffmpeg("-i", str(d / "long.mp4"), "-c:v", "libx264", "-g", "25", "-pix_fmt", "yuv420p", str(d / "gop.mp4"))
    write_video(d / "short.mp4", frames[:10], crf=20, fps=FPS)
    cv2.imwrite(str(d / "face.png"), cv2.cvtColor(face, cv2.COLOR_RGB2BGR))
    return d


@pytest.fixture(scope="module")
def meso() -> Detector:
    """A randomly initialised Meso-4 (the network is not under test, the input handling is)."""
    torch.manual_seed(0)
    return Detector(Meso4(), 256, device="cpu", batch_size=8)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> str:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "meso4.safetensors"
    save_detector(path, Meso4(), 256, spec=model_spec("meso4"))
    return str(path)


def no_temp_files(*folders: Path) -> bool:
    """Nothing half-written: no ``.<name>.*.tmp*`` file of emdlib.io.atomic_path is left behind."""
    return not [p for f in folders for p in Path(f).rglob("*") if ".tmp" in p.name]


def copy(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(src.read_bytes())
    return dst


# -- kind 1: what the decoder delivers, not the header -------------------------------------------------------------
def test_trimmed_edit_list_clip_counts_the_frames_that_play(media_dir, meso, tmp_path):
    """``ffmpeg -ss 1.3 -t 0.6 -c copy``: the kept GOP starts at 1.0 s; an edit list hides 0.3 s of it."""
    cut = tmp_path / "trimmed.mp4"
    ffmpeg("-ss", "1.3", "-i", str(media_dir / "gop.mp4"), "-t", "0.6", "-c", "copy", str(cut))
    info = probe(cut)
    n = count_frames(cut)
    assert info.declared_frames > n  # the header counts the hidden frames too
    assert 14 <= n <= 18 and abs(n / FPS - info.declared_duration_s) < 0.05
    times = frame_times(cut)
    assert times[0] == 0 and np.allclose(np.diff(times), 1 / FPS)
    assert sorted(read_frames(cut, [0, n - 1])) == [0, n - 1] and read_frames(cut, [n]) == {}
    res = detect_file(cut, meso, every=5)
    assert res.ok and res.frames_total == n and not res.warnings  # not called damaged
    assert res.rows["frame"].tolist() == list(range(0, n, 5)) and res.rows["time_s"].tolist() == [
        round(i / FPS, 4) for i in range(0, n, 5)]


def test_count_and_read_in_one_pass_equals_counting_then_reading(media_dir, tmp_path, monkeypatch):
    """One decoding pass when the header's count is right; a second pass for the frames a wrong header (an edit
    list) made it miss. Either way: the count of count_frames and the pixels of read_frames."""
    cut = tmp_path / "trimmed.mp4"
    ffmpeg("-ss", "1.3", "-i", str(media_dir / "gop.mp4"), "-t", "0.6", "-c", "copy", str(cut))
    opened = []
    real_open = open_video
    monkeypatch.setattr("emdlib.data.video.open_video", lambda p, *a: opened.append(Path(p).name) or real_open(p, *a))

    def last_three(n: int) -> list[int]:
        return [n - 3, n - 2, n - 1]

    for clip, passes in ((media_dir / "short.mp4", 1), (cut, 2)):
        opened.clear()
        n, frames = count_and_read(clip, last_three)
        assert opened == [clip.name] * passes
        assert n == count_frames(clip) and sorted(frames) == last_three(n)
        ref = read_frames(clip, last_three(n))
        assert all(np.array_equal(frames[i], ref[i]) for i in ref)
    assert probe(cut).declared_frames > count_frames(cut)  # why the trimmed clip needs a second pass
    assert count_and_read(media_dir / "short.mp4", lambda n: [n, n + 5]) == (10, {})  # past the end: absent


def test_variable_frame_rate_times_come_from_the_decoder(meso, tmp_path):
    vfr = tmp_path / "vfr.mp4"  # frames 0-11 at 25 fps, then every 3rd tick: 40 ms, then 120 ms apart
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=96x64:rate=25:duration=1",
           "-vf", "setpts='if(lt(N,12),N,12+(N-12)*3)/(25*TB)'", "-fps_mode", "vfr", "-c:v", "libx264", str(vfr))
    want = [i / 25 if i < 12 else (12 + (i - 12) * 3) / 25 for i in range(25)]
    assert np.allclose(frame_times(vfr), want, atol=1e-3)
    res = detect_file(vfr, meso, fps=4)  # first frame of each 0.25 s of the timeline
    assert res.ok and res.frames_total == 25 and not res.warnings
    # by hand, the first frame of each quarter second: 0 s, 0.28 (7), 0.6 (13), 0.84 (15), 1.08 (17), 1.32 (19),
    # 1.56 (21), 1.8 (23); frame indices over a header rate (13.9 fps) would pick others
    sample = frame_sampler(fps=4)
    assert [i for i, t in enumerate(frame_times(vfr)) if sample(i, t)] == [0, 7, 13, 15, 17, 19, 21, 23]
    assert res.frames_sampled == 8 and res.frames_total == 25
    assert abs(res.fps - 24 / 1.92) < 1e-6  # the mean rate of the decoded frames, not the header's


def test_rotated_clip_is_read_upright_by_both_decoders(media_dir, tmp_path):
    rot = tmp_path / "rotated.mp4"
    ffmpeg("-display_rotation", "90", "-i", str(media_dir / "short.mp4"), "-c", "copy", str(rot))
    upright = np.rot90(read_frames(media_dir / "short.mp4", [0])[0])  # 90° counter-clockwise
    for backend in ("opencv", "pyav"):
        with open_video(rot, backend) as v:
            first = next(v.frames()).rgb
        assert first.shape == (160, 128, 3) and np.array_equal(first, upright), backend


@pytest.mark.parametrize("codec,pix_fmt", [("libx264", "yuv420p10le"), ("libx265", "yuv420p10le")])
def test_ten_bit_clips_decode_to_8_bit(codec, pix_fmt, media_dir, tmp_path):
    out = tmp_path / f"{codec}.mp4"
    ffmpeg("-i", str(media_dir / "short.mp4"), "-c:v", codec, "-pix_fmt", pix_fmt, "-x265-params", "log-level=none",
           str(out)) if codec == "libx265" else ffmpeg("-i", str(media_dir / "short.mp4"), "-c:v", codec,
                                                        "-pix_fmt", pix_fmt, str(out))
    assert probe(out).pix_fmt == pix_fmt
    frames = read_frames(out)
    ref = read_frames(media_dir / "short.mp4")
    assert len(frames) == 10 and frames[0].dtype == np.uint8 and frames[0].shape == (128, 160, 3)
    assert np.abs(frames[5].astype(int) - ref[5]).mean() < 4  # the same picture, re-encoded


def test_odd_sized_clip_is_read_and_its_overlay_padded(face, meso, tmp_path):
    odd = tmp_path / "odd.mp4"
    frames = moving(face, 6, size=(161, 129))
    write_video(odd, frames, lossless=True)  # libx264rgb takes odd sides
    res = detect_file(odd, meso, every=3, overlay_path=tmp_path / "odd.overlay.mp4")
    assert res.ok and (res.width, res.height) == (161, 129) and res.faces == 2
    assert read_frames(tmp_path / "odd.overlay.mp4", [0])[0].shape == (130, 162, 3)  # padded by one edge pixel


def test_truncated_clip_without_index_names_the_missing_moov(media_dir, meso, tmp_path):
    data = (media_dir / "short.mp4").read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])  # the moov index is written last: gone
    res = detect_file(cut, meso)
    assert not res.ok and res.error.startswith("not a playable video: its MP4/MOV index (moov atom) is missing")
    with pytest.raises(VideoError, match=r"cut\.mp4: not a playable video"):
        from emdlib.data.prepare import frame_count

        frame_count(cut)


def test_truncated_streamable_clip_is_scored_with_a_warning(media_dir, meso, tmp_path):
    fast = tmp_path / "fast.mp4"
    ffmpeg("-i", str(media_dir / "long.mp4"), "-c:v", "libx264", "-g", "1", "-movflags", "+faststart", str(fast))
    data = fast.read_bytes()
    cut = tmp_path / "cut_fast.mp4"
    cut.write_bytes(data[: int(len(data) * 0.5)])
    res = detect_file(cut, meso, every=10)
    assert res.ok and 0 < res.frames_total < 75 and res.faces > 0
    (w,) = res.warnings
    assert w.startswith("decoded frames cover") and w.endswith("the file looks truncated or damaged")
    assert "of the 3.00 s the container declares" in w


# -- kind 3: decoding coverage and honest messages -----------------------------------------------------------------
def test_av1_clip_opencv_cannot_decode_is_decoded_with_pyav(media_dir, meso, tmp_path):
    av1 = tmp_path / "clip.mkv"
    ffmpeg("-i", str(media_dir / "short.mp4"), "-c:v", "libaom-av1", "-cpu-used", "8", "-pix_fmt", "yuv420p10le",
           str(av1))
    with open_video(av1) as v:
        assert v.backend == "pyav" and v.info.pix_fmt == "yuv420p10le"
        frames = [f.rgb for f in v.frames()]
    ref = read_frames(media_dir / "short.mp4")
    assert len(frames) == 10 and np.abs(frames[3].astype(int) - ref[3]).mean() < 6
    res = detect_file(av1, meso, every=5)
    assert res.ok and res.faces == 2 and res.decoder.startswith("PyAV (")


def test_pyav_decodes_h264_to_the_same_bytes_as_opencv(media_dir):
    """The fallback decoder is not a different picture: frame-identical on H.264 (OpenCV built the face caches)."""
    for clip in ("short.mp4", "gop.mp4"):
        with open_video(media_dir / clip, "opencv") as a, open_video(media_dir / clip, "pyav") as b:
            fa, fb = list(a.frames()), list(b.frames())
        assert len(fa) == len(fb) > 0
        assert all(np.array_equal(x.rgb, y.rgb) and abs(x.time_s - y.time_s) < 1e-6 for x, y in zip(fa, fb))


def test_unknown_codec_is_named(media_dir, meso, tmp_path):
    data = (media_dir / "short.mp4").read_bytes()
    i = data.index(b"avc1", data.index(b"stsd"))  # the sample entry's codec tag
    unk = tmp_path / "unknown_codec.mp4"
    unk.write_bytes(data[:i] + b"xyz1" + data[i + 4:])
    res = detect_file(unk, meso)
    assert not res.ok and res.error.startswith("unknown video codec (none (xyz1 / 0x317A7978)): neither OpenCV nor")
    assert "has a decoder for it" in res.error and "truncated" not in res.error


def test_audio_only_file_says_there_is_no_video_stream(meso, tmp_path):
    m4a = tmp_path / "voice.mp4"
    ffmpeg("-f", "lavfi", "-i", "sine=duration=0.3", str(m4a))
    res = detect_file(m4a, meso)
    assert not res.ok and res.error == "no video stream in this mov,mp4,m4a,3gp,3g2,mj2 file (streams: audio aac)"


@pytest.mark.parametrize("name,data,message", [
    ("notes.mp4", b"hello, this is text\n" * 20, "not a video: the data are in no container format FFmpeg can read"),
    ("empty.mp4", b"", "empty file (0 bytes)"),
    ("notes.jpg", b"hello, this is text\n" * 20, "not a readable image: the data are in no image format Pillow knows"),
    ("empty.png", b"", "empty file (0 bytes)"),
], ids=["text_mp4", "empty_mp4", "text_jpg", "empty_png"])
def test_non_media_with_a_media_extension(name, data, message, meso, tmp_path):
    p = tmp_path / name
    p.write_bytes(data)
    res = detect_file(p, meso)
    assert not res.ok and res.error.startswith(message) and res.rows.empty


# -- images --------------------------------------------------------------------------------------------------------
def _bgr(face):
    return cv2.cvtColor(face, cv2.COLOR_RGB2BGR)


@pytest.mark.parametrize("variant", ["grey", "rgba", "grey16", "rgb16", "palette", "bilevel", "float_tiff"])
def test_image_modes_are_read_as_rgb8(variant, face, meso, tmp_path):
    grey = cv2.cvtColor(face, cv2.COLOR_RGB2GRAY)
    p = tmp_path / f"{variant}.{'tif' if variant == 'float_tiff' else 'png'}"
    if variant == "grey":
        cv2.imwrite(str(p), grey)
        want = np.repeat(grey[..., None], 3, 2)
    elif variant == "rgba":
        cv2.imwrite(str(p), np.dstack([_bgr(face), np.full(grey.shape, 60, np.uint8)]))
        want = face
    elif variant == "grey16":
        cv2.imwrite(str(p), grey.astype(np.uint16) * 257)
        want = np.repeat(grey[..., None], 3, 2)
    elif variant == "rgb16":
        cv2.imwrite(str(p), _bgr(face).astype(np.uint16) * 257)
        want = face
    elif variant == "palette":
        Image.fromarray(face).quantize(64).save(p)
        want = np.asarray(Image.open(p).convert("RGB"))
    elif variant == "bilevel":
        Image.fromarray(grey > 128).save(p)
        want = np.repeat(np.where(grey > 128, 255, 0).astype(np.uint8)[..., None], 3, 2)
    else:
        Image.fromarray(grey.astype(np.float32) / 255.0 * 3.0 - 1.0, mode="F").save(p)  # values -1 .. 2
        f = grey.astype(np.float32) / 255.0 * 3.0 - 1.0
        want = np.repeat(np.round((f - f.min()) * 255.0 / (f.max() - f.min())).astype(np.uint8)[..., None], 3, 2)
    img = read_image(p)
    assert img.dtype == np.uint8 and img.shape == (128, 128, 3)
    assert np.abs(img.astype(int) - want).max() <= 1
    res = detect_file(p, meso)
    assert res.ok and not res.warnings and res.rows["partial"].tolist() == [False] * res.faces


def test_cmyk_jpeg_is_converted(face, tmp_path):
    p = tmp_path / "print.jpg"
    Image.fromarray(face).convert("CMYK").save(p, quality=95)
    img = decode_image(p)
    assert img.mode == "CMYK" and img.rgb.shape == (128, 128, 3)
    assert np.abs(img.rgb.astype(int) - face).mean() < 4
    assert len(faces.find_faces(img.rgb)) == 1


def test_exif_rotated_photo_is_read_upright(face, meso, tmp_path):
    p = tmp_path / "phone.jpg"
    sideways = np.ascontiguousarray(np.rot90(face, -1))  # stored turned 90° clockwise...
    exif = Image.Exif()
    exif[0x0112] = 8  # ...and tagged "rotate 90° counter-clockwise to display" (Orientation = 8)
    Image.fromarray(sideways).save(p, quality=98, exif=exif)
    img = decode_image(p)
    assert img.orientation == 8 and img.rgb.shape == face.shape
    assert np.abs(img.rgb.astype(int) - face).mean() < 3
    res = detect_file(p, meso)
    assert res.ok and res.faces == 1 and "EXIF orientation 8" in res.decoder


def test_truncated_image_without_a_face_does_not_blame_the_face_size(face, meso, tmp_path):
    p = tmp_path / "cut.jpg"
    Image.fromarray(face).save(p)
    p.write_bytes(p.read_bytes()[:700])  # the header and a sliver of the first rows: no face left to find
    res = detect_file(p, meso)
    assert res.ok and res.faces == 0 and res.warnings
    assert "no face found in what could be read (warning: image data cut short" in res.summary()
    assert "narrower than" not in res.summary()


@pytest.mark.parametrize("fmt", ["jpg", "png"])
def test_truncated_image_is_flagged_in_warning_and_rows(fmt, face, meso, tmp_path, caplog):
    p = tmp_path / f"half.{fmt}"
    Image.fromarray(face).save(p)
    data = p.read_bytes()
    p.write_bytes(data[: int(len(data) * 0.8)])
    img = decode_image(p)
    assert img.truncated and img.rgb.shape == face.shape
    with caplog.at_level(logging.WARNING):
        res = detect_file(p, meso)
    assert res.ok and res.warnings == [f"image data cut short (truncated {fmt.upper().replace('JPG', 'JPEG')}): the "
                                       "missing part was filled by the decoder; scores of this image are unreliable"]
    assert res.faces >= 1 and res.rows["partial"].all() and "warning: image data cut short" in res.summary()
    assert any(str(p) in r.getMessage() and "cut short" in r.getMessage() for r in caplog.records)


def test_huge_image_is_refused_before_decoding(tmp_path, meso):
    """A PNG whose header claims 40000×40000 pixels (1.6 Gpixels): refused by its size, in no time."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    p = tmp_path / "bomb.png"
    p.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 40000, 40000, 8, 0, 0, 0, 0))
                  + chunk(b"IDAT", zlib.compress(b"\x00" * 1000)) + chunk(b"IEND", b""))
    res = detect_file(p, meso)
    assert not res.ok and res.error.startswith("image too large to decode safely (Image size (1600000000 pixels)")


# -- kind 2: the crop is training's ----------------------------------------------------------------------------------
def test_detect_crops_exactly_as_prepare(face, meso, tmp_path):
    """A face in a 1920×1080 frame: detect's box is prepare's box (one function, full resolution)."""
    frame = np.full((1080, 1920, 3), 100, np.uint8)
    big = cv2.resize(face, (300, 300), interpolation=cv2.INTER_LINEAR)
    frame[500:800, 1400:1700] = big
    p = tmp_path / "hd.png"
    cv2.imwrite(str(p), _bgr(frame))
    res = detect_file(p, meso)
    (f,) = faces.find_faces(read_image(p))
    row = res.rows.iloc[0]
    assert res.faces == 1 and (row.box_x, row.box_y, row.box_size) == (f.box.x, f.box.y, f.box.size)
    assert (row.left, row.top, row.right, row.bottom) == f.rect


def test_small_face_in_a_large_frame_is_found(face, meso, tmp_path):
    """A 64-px face in 2560×1440: too small once shrunk to 1280 px (the old shortcut), found at training scale."""
    frame = np.full((1440, 2560, 3), 120, np.uint8)
    frame[700:764, 1800:1864] = cv2.resize(face, (64, 64), interpolation=cv2.INTER_AREA)
    p = tmp_path / "small_face.png"
    cv2.imwrite(str(p), _bgr(frame))
    res = detect_file(p, meso)
    assert res.ok and res.faces == 1 and 1790 < res.rows.iloc[0].left < 1830
    small = cv2.resize(frame, (1280, 720), interpolation=cv2.INTER_AREA)
    assert faces.find_faces(small) == []  # what the down-scaled copy used to miss


# -- folders, links, permissions (kind 4 and 8) --------------------------------------------------------------------
def test_skipped_files_in_a_folder_are_named(ckpt, tmp_path, caplog):
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "notes.txt").write_text("not media")
    (folder / "sub").mkdir()
    (folder / "sub" / "clip.srt").write_text("1\n00:00:00,000 --> 00:00:01,000\nhi\n")
    with caplog.at_level(logging.INFO):
        code = cli.main(["detect", str(folder), "--checkpoint", ckpt, "--out", str(tmp_path / "out")])
    assert code == EXIT_NONE_READ
    assert any(f"{folder}: skipping 2 file(s) that are neither images nor videos: notes.txt, sub/clip.srt"
               in r.getMessage() for r in caplog.records)


def test_empty_folder_exits_1_and_names_it(ckpt, tmp_path, capsys, caplog):
    empty = tmp_path / "nothing here"
    empty.mkdir()
    with caplog.at_level(logging.WARNING):
        code = cli.main(["detect", str(empty), "--checkpoint", ckpt, "--out", str(tmp_path / "out")])
    assert code == EXIT_NONE_READ == 1
    assert any(f"{empty}: folder holds no image or video files" in r.getMessage() for r in caplog.records)


def test_symlink_loops_and_dangling_links_are_reported_as_such(media_dir, meso, tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    copy(media_dir / "face.png", d / "a_face.png")
    (d / "loop1.jpg").symlink_to(d / "loop2.jpg")
    (d / "loop2.jpg").symlink_to(d / "loop1.jpg")
    (d / "gone.png").symlink_to(d / "deleted.png")
    (d / "sub").mkdir()
    (d / "sub" / "back").symlink_to(d)  # a folder loop: walked once
    items = list(iter_media([d]))
    assert [(i.path.name, i.problem) for i in items] == [
        ("a_face.png", None),
        ("gone.png", f"broken symbolic link (points to {d / 'deleted.png'}, which does not exist)"),
        ("loop1.jpg", "symbolic link loop (the link points, directly or through other links, back to itself)"),
        ("loop2.jpg", "symbolic link loop (the link points, directly or through other links, back to itself)")]
    results = detect([d], meso, progress=False)
    assert [r.ok for r in results] == [True, False, False, False]
    res = detect_file(d / "loop1.jpg", meso)  # named directly: the same reason
    assert res.error.startswith("symbolic link loop")


def test_unreadable_folder_is_an_error_with_its_cause_and_the_batch_goes_on(media_dir, ckpt, tmp_path, monkeypatch,
                                                                          capsys):
    """Root can read anything, so the denial is mocked at the system call the walk makes."""
    d = tmp_path / "in"
    copy(media_dir / "face.png", d / "ok" / "face.png")
    locked = d / "locked"
    copy(media_dir / "face.png", locked / "secret.png")
    real_scandir = os.scandir

    def scandir(path):
        if Path(path) == locked:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    out = tmp_path / "out"
    code = cli.main(["detect", str(d), "--checkpoint", ckpt, "--out", str(out)])
    lines = capsys.readouterr().out.splitlines()[1:]
    assert code == EXIT_PARTIAL == 3
    assert lines[0] == f"{locked}: ERROR cannot list folder: permission denied"
    assert lines[1].startswith(f"{d / 'ok' / 'face.png'}: image 128x128, 1 face")
    summary = pd.read_csv(out / "summary.csv")
    assert summary["ok"].tolist() == [False, True] and no_temp_files(out)


def test_unreadable_file_is_permission_denied(media_dir, meso, tmp_path, monkeypatch):
    p = copy(media_dir / "face.png", tmp_path / "private.png")
    real_open = open

    def fake_open(path, *a, **k):
        if Path(path) == p:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, *a, **k)

    monkeypatch.setattr(media, "open", fake_open, raising=False)
    res = detect_file(p, meso)
    assert not res.ok and res.error == "permission denied"


def test_unicode_names_are_read_and_written(media_dir, meso, tmp_path):
    d = tmp_path / "vidéos été"
    copy(media_dir / "short.mp4", d / "clip_😀_測試.mp4")
    copy(media_dir / "face.png", d / "фото.png")
    out = tmp_path / "sortie"
    results = detect([d], meso, out_dir=out, every=5, progress=False)
    assert [r.path.name for r in results] == ["clip_😀_測試.mp4", "фото.png"] and all(r.ok and r.faces for r in results)
    assert (out / "clip_😀_測試.mp4.csv").is_file() and (out / "фото.png.json").is_file()
    assert pd.read_csv(out / "summary.csv")["path"].tolist() == [str(r.path) for r in results]


def test_rerun_in_the_same_folder_is_idempotent(media_dir, ckpt, tmp_path, monkeypatch, capsys):
    work = tmp_path / "project"
    copy(media_dir / "short.mp4", work / "clip.mp4")
    copy(media_dir / "face.png", work / "face.png")
    monkeypatch.chdir(work)
    runs = []
    for _ in range(2):
        assert cli.main(["detect", ".", "--checkpoint", ckpt, "--overlay", "--every", "5"]) == EXIT_ALL_READ
        runs.append(capsys.readouterr().out.splitlines())
        runs[-1].append(pd.read_csv(work / "detect_out" / "summary.csv")[["path", "score"]].to_json())
    assert runs[0] == runs[1] and len(runs[0]) == 4  # model line, 2 inputs, summary
    assert not (work / "detect_out" / "detect_out").exists() and (work / "detect_out" / OUTPUT_MARKER).is_file()
    assert sorted(p.name for p in (work / "detect_out").iterdir()) == sorted(
        [OUTPUT_MARKER, "clip.mp4.csv", "clip.mp4.json", "clip.mp4.overlay.mp4", "face.png.csv", "face.png.json",
         "face.png.overlay.png", "summary.csv"])
    # an output folder elsewhere under the inputs, under another name, is excluded too
    assert cli.main(["detect", ".", "--checkpoint", ckpt, "--out", "elsewhere/results"]) == EXIT_ALL_READ
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and not any("overlay" in line for line in lines) and no_temp_files(work)


# -- the FF++ reader: malformed split and world JSON ---------------------------------------------------------------
@pytest.mark.parametrize("text,message", [
    ('[["000", "001"]', r"train\.json: not valid JSON \(Expecting ',' delimiter"),
    ('{"pairs": [["000", "001"]]}', r"train\.json: expected a JSON list of \[id, id\] pairs, got dict"),
    ('[["000", "001", "002"]]', r"train\.json: entry 0 \['000', '001', '002'\] is not a pair of 3-digit id strings"),
    ('[[0, 1]]', r"train\.json: entry 0 \[0, 1\] is not a pair"),
    ('[["0a0", "001"]]', r"train\.json: entry 0 \['0a0', '001'\] is not a pair"),
    (b'[["000", "001"]]\xff\xfe', r"train\.json: not UTF-8 JSON text \(invalid start byte at byte 16\)"),
], ids=["unclosed", "object", "triple", "int_ids", "bad_id", "not_utf8"])
def test_malformed_split_files_name_the_file_and_entry(text, message, tmp_path):
    splits = tmp_path / "splits"
    splits.mkdir()
    p = splits / "train.json"
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    for s in ("val", "test"):
        (splits / f"{s}.json").write_text("[]")
    with pytest.raises(ValueError, match=message):
        load_splits(splits)


@pytest.mark.parametrize("text,message", [
    ("{not json", r"world\.json: not valid JSON"),
    ('["synth"]', r"world\.json: expected a JSON object describing the world, got list"),
    ('{"world": "cartoons"}', r"world\.json: 'world' is 'cartoons'; expected one of \['synth', 'faces', 'ffpp'\]"),
], ids=["invalid", "list", "unknown_world"])
def test_malformed_world_json(text, message, tmp_path):
    (tmp_path / "splits").mkdir()
    for s in ("train", "val", "test"):
        (tmp_path / "splits" / f"{s}.json").write_text("[]")
    (tmp_path / "world.json").write_text(text)
    with pytest.raises(ValueError, match=message):
        FFPP(tmp_path).world
    (tmp_path / "world.json").write_text('{"world": "synth", "seed": 0}')
    assert read_world(tmp_path)["world"] == "synth"


# -- prepare: trimmed clips, missing and short masks ---------------------------------------------------------------
def test_prepare_samples_the_frames_a_trimmed_world_plays(face, tmp_path):
    """Original, fake and mask all cut with ``-ss -c copy`` (edit lists: the header counts 25 frames more than play): every sampled
    frame is cropped; a second fake's mask is missing, a third's is short."""
    root = tmp_path / "world"
    orig = root / "original_sequences" / "youtube" / "c23" / "videos"
    f2f = root / "manipulated_sequences" / "Face2Face" / "c23" / "videos"
    masks = root / "manipulated_sequences" / "Face2Face" / "masks" / "videos"
    frames = moving(face, 75)
    fake = [f.copy() for f in frames]
    mask = []
    for f in fake:
        f[50:90, 50:110] = (200, 60, 60)
        m = np.zeros_like(f)
        m[50:90, 50:110] = 255
        mask.append(m)
    src = tmp_path / "src"
    for name, fr in (("000", frames), ("001", frames), ("000_001", fake), ("001_000", fake)):
        write_video(src / f"{name}.mp4", fr, crf=20, fps=FPS)
        ffmpeg("-i", str(src / f"{name}.mp4"), "-c:v", "libx264", "-g", "25", str(src / f"{name}.gop.mp4"))
        dst = orig if name in ("000", "001") else f2f
        dst.mkdir(parents=True, exist_ok=True)
        ffmpeg("-ss", "1.3", "-i", str(src / f"{name}.gop.mp4"), "-t", "0.6", "-c", "copy", str(dst / f"{name}.mp4"))
    n = count_frames(orig / "000.mp4")
    assert probe(orig / "000.mp4").declared_frames > n  # the header counts the frames the edit list hides
    # the mask of 000_001 has as many frames as play (its header agrees); 001_000's mask is short
    write_video(masks / "000_001.mp4", mask[25 + 7: 25 + 7 + n], lossless=True)
    write_video(masks / "001_000.mp4", mask[:5], lossless=True)
    write_json(root / "splits" / "train.json", [["000", "001"]])
    write_json(root / "splits" / "val.json", [])
    write_json(root / "splits" / "test.json", [])
    cache = tmp_path / "cache"
    cfg = PrepareConfig(train_frames=4, eval_frames=2, crop_size=32, workers=1)
    summary = prepare(root, cache, cfg, methods=["Face2Face"], compressions=["c23"], workers=1, progress=False)
    rows = read_manifest(cache)
    by_video = {}
    for r in rows:
        by_video.setdefault(r["video"], []).append(r)
    want = [int((i + 0.5) * n / 4) for i in range(4)]
    assert all([r["frame"] for r in v] == want and v[0]["n_frames"] == n for v in by_video.values())
    assert {r["status"] for r in by_video["000"] + by_video["001"] + by_video["000_001"]} == {"ok"}
    assert {r["status"] for r in by_video["001_000"]} == {"mask_mismatch"}
    assert by_video["001_000"][0]["reason"] == (f"mask {masks / '001_000.mp4'} has 5 frames, video "
                                                f"{f2f / '001_000.mp4'} has {n}")
    assert summary["ok_frames"] == 12 and no_temp_files(cache)
    (masks / "000_001.mp4").unlink()  # a missing mask, in a fresh cache
    prepare(root, tmp_path / "cache2", cfg, methods=["Face2Face"], compressions=["c23"], workers=1, progress=False)
    missing = [r for r in read_manifest(tmp_path / "cache2") if r["video"] == "000_001"]
    assert {r["status"] for r in missing} == {"mask_missing"} and all(r["row"] >= 0 for r in missing)
    assert missing[0]["reason"] == f"mask video not found: {masks / '000_001.mp4'}"


# -- the inputs of ../shared/cases -----------------------------------------------------------------------------------
def test_shared_trimmed_clips_play_27_frames_and_are_not_called_damaged(meso):
    for name in ("519.mp4", "519_515.mp4"):
        p = shared_path("cases", "trimmed", name)
        assert probe(p).declared_frames == 127 and count_frames(p) == 27
        res = detect_file(p, meso, every=13)
        assert res.ok and res.frames_total == 27 and res.frames_sampled == 3 and not res.warnings
        assert res.frames_with_face == 3


def test_shared_phone_exif6_is_upright_with_a_face(meso):
    p = shared_path("cases", "phone_exif6.jpg")
    img = decode_image(p)
    assert img.orientation == 6 and img.rgb.shape == (512, 512, 3)
    res = detect_file(p, meso)
    assert res.ok and res.faces == 1


def test_shared_small_face_4k_is_found(meso):
    res = detect_file(shared_path("cases", "small_face_4k.png"), meso)
    assert res.ok and (res.width, res.height) == (3840, 2160) and res.faces == 1
    assert 60 < res.rows.iloc[0].right - res.rows.iloc[0].left < 90


def test_shared_av1_10bit_is_decoded(meso):
    p = shared_path("cases", "av1_10bit.mkv")
    with open_video(p) as v:
        assert v.backend == "pyav" and v.info.pix_fmt == "yuv420p10le"
        assert sum(1 for _ in v.frames(lambda i, t: False)) == 20
    res = detect_file(p, meso, every=10)
    assert res.ok and res.frames_total == 20 and res.faces == 2 and not res.warnings
