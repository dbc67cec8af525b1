"""Benchmark: recall of ``emd detect``'s faster face finders against training's dlib detector, and their speed.

The reference is :func:`emdlib.data.faces.find_faces` with ``detector="dlib"`` (dlib HOG, one up-sampling, full
resolution: the FF++ protocol that built the face cache). A reference face counts as *found* by a candidate when
one of the candidate's rectangles has IoU >= 0.5 with it (greedy one-to-one matching, largest IoU first); ``extra``
counts candidate rectangles that match no reference face; ``mean_iou`` is over the found faces (1.0 = the same
rectangle). Candidates:

* ``dlib-fast``: ``find_faces(frame, "dlib-fast")`` (no up-sampling, then each face re-detected at training's scale
  in the region around it);
* ``dlib-up0``: dlib HOG without up-sampling and no re-detection (= dlib on a frame downscaled by 2 with one
  up-sampling, the "downscaled frame" option), to show what the re-detection adds;
* ``tracker``: :class:`emdlib.detect.FaceTracker` (full detection with dlib every ``--redetect`` seconds, dlib
  re-detection near the last boxes in between) on the sampled frames of each video, against the reference on the
  same frames;
* ``dlib-cnn``: dlib's MMOD CNN (weights from the ``face-recognition-models`` package), no up-sampling, raw boxes,
  on every ``--cnn-every``-th item of at most ``--cnn-max-pixels`` pixels only (it takes seconds per frame on a CPU;
  its time on one 720p frame is recorded as ``cnn_720p_seconds``).

Data (read in place from ``../shared``): the ffpp-mini clips (first ``--seconds`` seconds sampled at ``--fps``), the
London photos (neutral and smiling) and ``cases`` (a phone photo with EXIF rotation, a 4K frame with a ~72-px face,
an AV1 clip, two clips cut with an edit list). Writes ``--out`` (machine, load, commit, per-set tallies, missed faces)::

    python benchmarks/face_detector_recall.py
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import cv2
import numpy as np
from tqdm import tqdm

from emdlib.data import faces as facelib
from emdlib.data.images import decode_image
from emdlib.data.video import open_video
from emdlib.detect import FaceTracker, frame_sampler
from emdlib.io import read_json, write_json
from emdlib.study.records import git_commit

log = logging.getLogger("face_detector_recall")
SHARED = Path(__file__).resolve().parents[2] / "shared"
IOU_FOUND = 0.5
SETS = ("ffpp-mini", "london-faces", "cases-images", "cases-videos")
Rect = tuple[int, int, int, int]


def match(reference: list[Rect], candidate: list[Rect], threshold: float = IOU_FOUND) -> tuple[list[float], int]:
    """Greedy one-to-one matching by IoU (largest first). Returns the IoU of each reference face (0.0 when not
    found, i.e. best remaining IoU below ``threshold``) and the number of candidate rectangles left unmatched."""
    pairs = sorted(((facelib.iou(r, c), i, j) for i, r in enumerate(reference) for j, c in enumerate(candidate)),
                   reverse=True)
    got = [0.0] * len(reference)
    used_r, used_c = set(), set()
    for o, i, j in pairs:
        if o < threshold:
            break
        if i in used_r or j in used_c:
            continue
        got[i] = o
        used_r.add(i)
        used_c.add(j)
    return got, len(candidate) - len(used_c)


@dataclass
class Tally:
    """One candidate on one data set."""

    frames: int = 0
    faces: int = 0
    found: int = 0
    extra: int = 0
    iou_sum: float = 0.0
    seconds: float = 0.0
    missed: list[dict] = field(default_factory=list)

    def add(self, ref: list[Rect], cand: list[Rect], seconds: float, where: dict) -> None:
        ious, extra = match(ref, cand)
        self.frames += 1
        self.faces += len(ref)
        self.found += sum(o > 0 for o in ious)
        self.iou_sum += sum(ious)
        self.extra += extra
        self.seconds += seconds
        for r, o in zip(ref, ious):
            if o == 0 and len(self.missed) < 50:
                self.missed.append({**where, "face_width_px": r[2] - r[0], "rect": list(r)})

    def summary(self) -> dict:
        return {"frames": self.frames, "reference_faces": self.faces, "found": self.found,
                "recall": round(self.found / self.faces, 4) if self.faces else None, "extra": self.extra,
                "mean_iou_found": round(self.iou_sum / self.found, 4) if self.found else None,
                "seconds_per_frame": round(self.seconds / self.frames, 4) if self.frames else None,
                "missed": self.missed}


def timed(fn: Callable[[], list[Rect]]) -> tuple[list[Rect], float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


class Candidates:
    """The candidates' rectangles for one frame, timed."""

    def __init__(self, cnn_every: int, cnn_max_pixels: int):
        import dlib

        self.cnn = dlib.cnn_face_detection_model_v1(
            str(facelib.predictor_path().parent / "mmod_human_face_detector.dat"))
        self.cnn_every = cnn_every
        self.cnn_max_pixels = cnn_max_pixels
        self.count = 0

    def run(self, frame: np.ndarray, tallies: dict[str, Tally], where: dict) -> list[Rect]:
        ref, t_ref = timed(lambda: [f.rect for f in facelib.find_faces(frame, "dlib")])
        tallies["dlib"].add(ref, ref, t_ref, where)
        fast, t = timed(lambda: [f.rect for f in facelib.find_faces(frame, "dlib-fast")])
        tallies["dlib-fast"].add(ref, fast, t, where)
        up0, t = timed(lambda: facelib.detect_faces(frame, 0))
        tallies["dlib-up0"].add(ref, up0, t, where)
        small = frame.shape[0] * frame.shape[1] <= self.cnn_max_pixels
        if self.cnn_every and small and self.count % self.cnn_every == 0:
            cnn, t = timed(lambda: [(d.rect.left(), d.rect.top(), d.rect.right(), d.rect.bottom())
                                    for d in self.cnn(np.ascontiguousarray(frame), 0)])
            tallies["dlib-cnn"].add(ref, cnn, t, where)
        self.count += small
        return ref


def new_tallies() -> dict[str, Tally]:
    return {k: Tally() for k in ("dlib", "dlib-fast", "dlib-up0", "dlib-cnn", "tracker")}


def video_frames(path: Path, fps: float, seconds: float | None) -> Iterator[tuple[int, float, np.ndarray]]:
    sample = frame_sampler(fps=fps)
    with open_video(path) as video:
        for f in video.frames(lambda i, t: (seconds is None or t < seconds) and sample(i, t)):
            if seconds is not None and f.time_s >= seconds:
                break
            if f.rgb is not None:
                yield f.index, f.time_s, f.rgb


def measure_videos(paths: list[Path], cands: Candidates, args: argparse.Namespace, seconds: float | None) -> dict:
    tallies = new_tallies()
    for path in tqdm(paths, desc="videos", unit="clip"):
        tracker = FaceTracker("dlib", args.redetect)
        for idx, ts, frame in video_frames(path, args.fps, seconds):
            where = {"file": str(path.relative_to(SHARED)), "frame": idx}
            ref = cands.run(frame, tallies, where)
            (tracked, _full), t = timed(lambda: tracker(frame, ts))
            tallies["tracker"].add(ref, [f.rect for f in tracked], t, where)
    return {k: v.summary() for k, v in tallies.items() if v.frames}


def measure_images(paths: list[Path], cands: Candidates) -> dict:
    tallies = new_tallies()
    for path in tqdm(paths, desc="photos", unit="photo"):
        cands.run(decode_image(path).rgb, tallies, {"file": str(path.relative_to(SHARED))})
    return {k: v.summary() for k, v in tallies.items() if v.frames}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shared", type=Path, default=SHARED)
    p.add_argument("--fps", type=float, default=5.0, help="sampling rate of the videos (frames per second)")
    p.add_argument("--seconds", type=float, default=10.0, help="first seconds of each ffpp-mini clip")
    p.add_argument("--redetect", type=float, default=1.0, help="the tracker's seconds between full detections")
    p.add_argument("--cnn-every", type=int, default=10, help="run dlib's CNN on every N-th item (0: never)")
    p.add_argument("--cnn-max-pixels", type=int, default=600_000, help="... of at most this many pixels")
    p.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS), help="data sets to measure")
    p.add_argument("--photo-every", type=int, default=1, help="measure every N-th London photo (1: all)")
    p.add_argument("--out", type=Path, default=Path("results/benchmarks/face_detector_recall.json"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    cv2.setNumThreads(1)
    shared = args.shared
    ffpp = sorted((shared / "data" / "ffpp-mini").rglob("*.mp4"))
    london = sorted((shared / "data" / "london-faces").rglob("*.jpg"))
    cases = shared / "cases"
    if not ffpp or not london or not cases.is_dir():
        raise SystemExit(f"{shared}: ffpp-mini clips, London photos or cases missing")
    cands = Candidates(args.cnn_every, args.cnn_max_pixels)
    cnn_720p = None
    if args.cnn_every:
        clip720 = shared / "data/ffpp-mini/original_sequences/youtube/c23/videos/004.mp4"
        _, _, frame = next(video_frames(clip720, args.fps, None))
        cnn_720p = round(timed(lambda: cands.cnn(frame, 0))[1], 2)
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    runs = {
        "ffpp-mini": lambda: measure_videos(ffpp, cands, args, args.seconds),
        "london-faces": lambda: measure_images(london[:: args.photo_every], cands),
        "cases-images": lambda: measure_images([cases / "phone_exif6.jpg", cases / "small_face_4k.png"], cands),
        "cases-videos": lambda: measure_videos([cases / "av1_10bit.mkv", *sorted((cases / "trimmed").glob("*.mp4"))],
                                               cands, args, None),
    }
    command = "python " + shlex.join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
    sets = {}
    for name in args.sets:  # each set records how it was measured: sets measured by separate runs merge in --out
        t_set, load_set = time.perf_counter(), os.getloadavg()[0]
        sets[name] = {"tallies": runs[name](), "command": command, "commit": git_commit(),
                      "load_average_1m_start": round(load_set, 2), "load_average_1m_end": round(os.getloadavg()[0], 2),
                      "wall_s": round(time.perf_counter() - t_set, 1)}
    record = {
        "command": command, "commit": git_commit(), "machine": platform.processor() or platform.machine(),
        "cpu": _cpu_name(), "cores": os.cpu_count(), "threads": "OpenCV 1; dlib single-threaded",
        "load_average_1m_start": round(load0, 2), "load_average_1m_end": round(os.getloadavg()[0], 2),
        "wall_s": round(time.perf_counter() - t0, 1),
        "reference": "dlib HOG frontal detector, one up-sampling, full resolution (emdlib.data.faces.find_faces, "
                     "the FF++ protocol of emd prepare)",
        "found_when": f"IoU >= {IOU_FOUND} with the reference rectangle (greedy one-to-one)",
        "sets_measured": args.sets, "london_photo_every": args.photo_every,
        "videos": {"fps": args.fps, "ffpp_seconds": args.seconds, "tracker_redetect_s": args.redetect},
        "cnn_every": args.cnn_every, "cnn_max_pixels": args.cnn_max_pixels, "cnn_720p_seconds": cnn_720p,
        "sets": {**(read_json(args.out).get("sets", {}) if args.out.is_file() else {}), **sets},
        "not_measured": {
            "opencv-haar": "opencv-python-headless 5.0 has no CascadeClassifier and ships no haarcascades "
                           "(cv2.data holds only __init__.py)",
            "opencv-yunet": "cv2.FaceDetectorYN needs an ONNX model that the wheel does not ship",
            "mediapipe-blazeface": "mediapipe 1.2.3 (PyPI, py3-none-manylinux_2_28) ships no face-detection .tflite "
                                   "(its Tasks API fetches models at run time: not offline) and requires "
                                   "opencv-contrib-python, a second cv2 beside opencv-python-headless 5",
        },
    }
    write_json(args.out, record)
    for name, one in sets.items():
        log.info("%s: %s", name, {k: (v["recall"], v["mean_iou_found"], v["seconds_per_frame"])
                                  for k, v in one["tallies"].items()})
    log.info("wrote %s", args.out)
    return record


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


if __name__ == "__main__":
    main()
