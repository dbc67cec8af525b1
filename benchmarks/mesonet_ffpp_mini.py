"""Benchmark: the official MesoNet weights (Meso-4 and MesoInception-4, trained on FF++ Deepfakes / Face2Face) on
the seven real FF++ c23 clips of ``../shared/data/ffpp-mini``, through the ``emd detect`` pipeline.

Every ``--every``-th frame is sampled; faces are found once per frame (dlib, FF++ 1.3× box, as ``emd detect``) and
the same crops are scored by each weights file (``Detector.from_checkpoint(*.h5)``). Per clip and weights file it
reports the video score of ``emd detect`` (mean over sampled frames of the most-fake face's p_fake) and the mean
p_fake over all faces. MesoNet's original pre-processing differs (its own face finder and margins), so these are
numbers for our pipeline, not a reproduction of the MesoNet paper.

With ``--figure`` it also writes an example overlay (README): one frame of the Deepfakes clip scored with
``Meso4_DF.h5``, the face box and score drawn by :func:`emdlib.detect.overlay`.

    python benchmarks/mesonet_ffpp_mini.py --every 10 --figure results/figures/detect_example.png
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from tqdm.auto import tqdm

from emdlib.data.faces import find_faces
from emdlib.data.video import frame_times, read_frames
from emdlib.detect import Detector, frame_sampler, overlay
from emdlib.io import atomic_path, write_json

log = logging.getLogger("mesonet_ffpp_mini")
SHARED = Path(__file__).resolve().parents[2] / "shared"
WEIGHTS = ("Meso4_DF.h5", "Meso4_F2F.h5", "MesoInception_DF.h5", "MesoInception_F2F.h5")


def clips(root: Path) -> list[tuple[str, Path]]:
    """``(label, path)``: ``original`` or the manipulation method, from the FF++ layout."""
    out = [("original", p) for p in sorted((root / "original_sequences/youtube/c23/videos").glob("*.mp4"))]
    for method in sorted(p.name for p in (root / "manipulated_sequences").iterdir() if p.is_dir()):
        out += [(method, p) for p in sorted((root / "manipulated_sequences" / method / "c23/videos").glob("*.mp4"))]
    return out


def faces_of(path: Path, every: int) -> tuple[list[int], list[tuple[int, np.ndarray]], dict[int, np.ndarray]]:
    """Sampled frame indices, ``(frame, crop)`` for every face, and the sampled frames themselves."""
    sample = frame_sampler(every=every)
    frames = read_frames(path, [i for i, t in enumerate(frame_times(path)) if sample(i, t)])
    crops = []
    for i in sorted(frames):
        f = frames[i]
        for face in find_faces(f):
            if face.usable:
                crops.append((i, face.box.crop(f), face.box))
    return sorted(frames), crops, frames


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", type=Path, default=SHARED / "data/ffpp-mini")
    p.add_argument("--weights", type=Path, default=SHARED / "weights/mesonet")
    p.add_argument("--every", type=int, default=10)
    p.add_argument("--out", type=Path, default=Path("results/benchmarks/mesonet_ffpp_mini.json"))
    p.add_argument("--figure", type=Path, default=None, help="write an example overlay PNG here")
    p.add_argument("--figure-width", type=int, default=480, help="figure width in pixels (PNG < 300 KB)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    t_all = time.time()
    detectors = {w: Detector.from_checkpoint(args.weights / w, device="cpu") for w in WEIGHTS}
    rows = []
    example = None
    for label, path in tqdm(clips(args.root), desc="clips"):
        sampled, crops, frames = faces_of(path, args.every)
        row = {"clip": path.name, "label": label, "fake": label != "original", "frames_sampled": len(sampled),
               "frames_with_face": len({i for i, _, _ in crops}), "faces": len(crops), "scores": {}}
        for w, det in detectors.items():
            p_fake, _ = det.score_faces([c for _, c, _ in crops])
            per_frame: dict[int, float] = {}
            for (i, _, _), q in zip(crops, p_fake):
                per_frame[i] = max(per_frame.get(i, 0.0), float(q))
            row["scores"][w] = {"video_score": float(np.mean(list(per_frame.values()))) if per_frame else None,
                                "mean_p_fake_all_faces": float(np.mean(p_fake)) if len(p_fake) else None}
            if args.figure and w == "Meso4_DF.h5" and label == "Deepfakes" and example is None and crops:
                i, _, b = crops[len(crops) // 2]
                faces = [{"box_x": bb.x, "box_y": bb.y, "box_size": bb.size, "p_fake": float(q)}
                         for (j, _, bb), q in zip(crops, p_fake) if j == i]
                example = (path, i, overlay(frames[i], faces))
        log.info("%s (%s): %s", path.name, label, {w: round(s["video_score"] or float("nan"), 3)
                                                   for w, s in row["scores"].items()})
        rows.append(row)
    result = {
        "command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
        "root": str(args.root), "every": args.every, "weights": list(WEIGHTS),
        "score": "video_score = mean over sampled frames with a face of the most-fake face's p_fake (emd detect); "
                 "p_fake = 1 - MesoNet's sigmoid output (its output is P(real))",
        "clips": rows, "seconds": round(time.time() - t_all, 1),
    }
    write_json(args.out, result)
    log.info("wrote %s", args.out)
    if example is not None:
        path, i, img = example
        h, w = img.shape[:2]
        if w > args.figure_width:
            img = cv2.resize(img, (args.figure_width, round(h * args.figure_width / w)), interpolation=cv2.INTER_AREA)
        with atomic_path(args.figure, suffix=".png") as tmp:
            cv2.imwrite(str(tmp), cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 9])
        log.info("wrote %s (%s frame %d, %d bytes)", args.figure, path.name, i, args.figure.stat().st_size)
    return result


if __name__ == "__main__":
    main()
