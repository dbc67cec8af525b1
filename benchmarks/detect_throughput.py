"""Benchmark: ``emd detect`` throughput on a 720p clip — video frames per second end to end, the share of time in
decoding, face finding, the network and (optionally) the overlay, and the ratio to the bare work.

The clip is the first ``--frames`` frames of a 1280×720 FF++ c23 video (default ``004.mp4`` from
``../shared/data/ffpp-mini``), re-encoded at 25 fps. Each *setting* is one way of running :func:`detect_file`:

* ``every-frame-full``: every frame, dlib on the whole of each (the old default; training's protocol verbatim);
* ``every-frame-tracked``: every frame, full detection once per second of video, dlib re-detection near the last
  boxes in between (:class:`emdlib.detect.FaceTracker`);
* ``default``: ``emd detect``'s defaults — 5 frames per second of video, tracked;
* ``default-fast``: the defaults with ``--face-detector dlib-fast`` for the full detections;
* ``fps5-full``: 5 frames per second, dlib on the whole of each sampled frame.

``fps`` = video frames (all decoded frames, sampled or not) per second of wall time; ``sampled_fps`` = scored frames
per second. ``bare_s`` times the same work without the pipeline, in one plain loop over the same clip: decoding
(the same sampled frames converted to RGB), the same :class:`FaceTracker`, and the network's forward pass on the same
crops in batches; ``bare_ratio`` = ``bare_s / wall_s`` (1.0: no overhead; the target is >= 0.8).

Models: ``mesonet`` = the official MesoInception-4 Face2Face weights from ``../shared/weights/mesonet`` (randomly
initialised when absent; weights do not change the speed); ``emd`` = EMD at the paper's size, randomly initialised.
The network is warmed up on one batch and the face detectors on one frame before timing. Results are merged into
``--out`` under the device's name, run by run (model, setting)::

    python benchmarks/detect_throughput.py --frames 250 --device cpu --threads 2
    python benchmarks/detect_throughput.py --frames 300 --device cuda --overlay --models emd mesonet
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from emdlib.data.faces import FACE_DETECTORS, find_faces, resize_crop
from emdlib.data.video import open_video, read_frames, write_video
from emdlib.detect import REDETECT_S, Detector, FaceTracker, detect_file, frame_sampler
from emdlib.io import read_json, write_json
from emdlib.study.records import git_commit

log = logging.getLogger("detect_throughput")
SHARED = Path(__file__).resolve().parents[2] / "shared"
SETTINGS: dict[str, dict] = {
    "every-frame-full": {"every": 1, "redetect_s": 0.0},
    "every-frame-tracked": {"every": 1},
    "default": {},
    "default-fast": {"face_detector": "dlib-fast"},
    "fps5-full": {"fps": 5.0, "redetect_s": 0.0},
}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} logical CPUs, torch threads "\
                       f"{torch.get_num_threads()})"
    except OSError:
        pass
    return platform.processor() or "cpu"


def build(name: str, args: argparse.Namespace, device: torch.device) -> tuple[Detector, dict]:
    if name == "emd":
        from emdlib.models.emd import EMD
        from emdlib.models.esr import ESR

        torch.manual_seed(0)
        model = EMD(ESR(args.esr_branches), encoder=args.emd_encoder)
        return Detector(model, args.emd_size, device=device, batch_size=args.batch_size), {
            "encoder": args.emd_encoder, "image_size": args.emd_size, "esr_branches": args.esr_branches,
            "weights": "random"}
    if name == "mesonet":
        weights = args.mesonet_weights
        if weights.is_file():
            det = Detector.from_checkpoint(weights, device=str(device), batch_size=args.batch_size)
            return det, {"variant": "MesoInception-4", "image_size": 256, "weights": str(weights)}
        from emdlib.baselines.mesonet import MesoInception4

        torch.manual_seed(0)
        return Detector(MesoInception4(), 256, device=device, batch_size=args.batch_size), {
            "variant": "MesoInception-4", "image_size": 256, "weights": "random"}
    raise ValueError(f"unknown model {name!r}")


def bare_seconds(clip: Path, det: Detector, setting: dict) -> dict[str, float]:
    """The same work as :func:`detect_file` with ``setting``, in a plain loop: decode (the sampled frames to RGB),
    find faces (the same tracker), then the network's forward pass on the crops in batches."""
    sample = frame_sampler(setting.get("fps"), setting.get("every"))
    tracker = FaceTracker(setting.get("face_detector", "dlib"), setting.get("redetect_s", REDETECT_S))
    t = {"decode": 0.0, "detect": 0.0, "network": 0.0}
    crops = []
    with open_video(clip) as video:
        frames = video.frames(sample)
        while True:
            t0 = time.perf_counter()
            f = next(frames, None)
            t["decode"] += time.perf_counter() - t0
            if f is None:
                break
            if f.rgb is None:
                continue
            t0 = time.perf_counter()
            faces, _ = tracker(f.rgb, f.time_s)
            t["detect"] += time.perf_counter() - t0
            crops += [resize_crop(face.box.crop(f.rgb), det.image_size) for face in faces if face.usable]
    t0 = time.perf_counter()
    if crops:
        det.score_batch(np.stack(crops))
    if det.device.type == "cuda":
        torch.cuda.synchronize()
    t["network"] = time.perf_counter() - t0
    return {k: round(v, 4) for k, v in t.items()}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--video", type=Path,
                   default=SHARED / "data/ffpp-mini/original_sequences/youtube/c23/videos/004.mp4")
    p.add_argument("--frames", type=int, default=250, help="length of the benchmark clip (first N frames)")
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument("--models", nargs="+", default=["mesonet"], choices=["emd", "mesonet"])
    p.add_argument("--mesonet-weights", type=Path, default=SHARED / "weights/mesonet/MesoInception_F2F.h5")
    p.add_argument("--emd-encoder", default="xception65")
    p.add_argument("--emd-size", type=int, default=299)
    p.add_argument("--esr-branches", type=int, default=9)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--overlay", action="store_true", help="also write the overlay video (timed as overlay/write)")
    p.add_argument("--no-bare", action="store_true", help="skip the bare-work loop (halves the run time)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--out", type=Path, default=Path("results/benchmarks/detect_throughput.json"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if not args.video.is_file():
        raise SystemExit(f"{args.video}: benchmark video not found")
    command = "python " + shlex.join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
    commit = git_commit()

    with tempfile.TemporaryDirectory() as tmp:
        frames = read_frames(args.video, range(args.frames))
        clip = write_video(Path(tmp) / "clip.mp4", [frames[i] for i in sorted(frames)], crf=23, fps=25)
        h, w = frames[0].shape[:2]
        for name in FACE_DETECTORS:  # warm-up: dlib's first call on a frame of this size allocates (~1 s)
            find_faces(frames[0], name)
        del frames
        runs = []
        for name in args.models:
            det, info = build(name, args, device)
            face = np.zeros((det.image_size, det.image_size, 3), np.uint8)
            det.score_batch(np.stack([face] * min(args.batch_size, 4)))  # warm-up (allocations, cuDNN autotune)
            if device.type == "cuda":
                torch.cuda.synchronize()
            for setting in args.settings:
                kw = SETTINGS[setting]
                t0 = time.perf_counter()
                res = detect_file(clip, det, overlay_path=Path(tmp) / f"{name}.overlay.mp4" if args.overlay
                                  else None, progress=False, **kw)
                wall = time.perf_counter() - t0
                if not res.ok:
                    raise SystemExit(f"{clip}: {res.error}")
                parts = {k: v for k, v in res.timings.items() if k != "total"}
                run = {
                    "model": name, **info, "setting": setting, "options": kw, "overlay": args.overlay,
                    "sampling": res.sampling,
                    "command": command, "commit": commit, "clip_frames": args.frames,
                    "load_average_1m": round(os.getloadavg()[0], 2), "threads": torch.get_num_threads(),
                    "face_detector": res.face_detector, "redetect_s": res.redetect_s,
                    "frames": res.frames_total, "frames_sampled": res.frames_sampled,
                    "full_detections": res.full_detections, "faces": res.faces, "wall_s": round(wall, 3),
                    "fps": round(res.frames_total / wall, 3), "sampled_fps": round(res.frames_sampled / wall, 3),
                    "seconds": parts, "share": {k: round(v / wall, 4) for k, v in parts.items()},
                    "share_other": round(max(0.0, 1 - sum(parts.values()) / wall), 4),
                }
                if not args.no_bare:
                    bare = bare_seconds(clip, det, kw)
                    run["bare_seconds"] = bare
                    run["bare_s"] = round(sum(bare.values()), 3)
                    run["bare_ratio"] = round(run["bare_s"] / wall, 3)
                log.info("%s %s: %.2f fps (%d frames, %d sampled, %d faces, %d full detections); bare ratio %s",
                         name, setting, run["fps"], run["frames"], run["frames_sampled"], run["faces"],
                         run["full_detections"], run.get("bare_ratio"))
                runs.append(run)
            del det

    old = read_json(args.out) if args.out.is_file() else {}
    results = {k: v for k, v in old.items() if isinstance(v, dict)}
    key = f"{device.type}: {device_name(device)}"
    # runs of separate commands merge (each run records its command, clip length, load and commit); a run of the
    # same model, setting and overlay replaces the older one
    same = {(r["model"], r["setting"], r.get("overlay", False)) for r in runs}
    kept = [r for r in results.get(key, {}).get("runs", [])
            if "setting" in r and (r["model"], r["setting"], r.get("overlay", False)) not in same]
    entry = {
        "device": device_name(device), "device_type": device.type, "video": str(args.video),
        "clip": {"width": w, "height": h, "fps": 25},
        "batch_size": args.batch_size, "torch": torch.__version__, "runs": kept + runs,
        "note": "fps = all video frames (decoded, sampled or not) per wall-clock second of detect_file; face "
                "finding = emdlib.detect.FaceTracker (dlib HOG, one up-sampling, full frame at key frames, "
                "dlib re-detection near the last boxes between); network = crop resize + forward pass, batched "
                "across frames; bare_ratio = (plain decode + the same tracker + forward passes) / wall",
    }
    results[key] = entry
    write_json(args.out, results)
    log.info("wrote %s", args.out)
    return entry


if __name__ == "__main__":
    main()
