"""Benchmark: ``prepare`` throughput against the pure decode rate of the same frames (issue 14, deliverable 5).

One run, side by side: the measurements alternate for ``--rounds`` rounds and the median of each is reported, so
a load swing on a shared machine does not land on one side only.

* **pure decode**: exactly the frames ``prepare`` samples (same videos, same frame indices, read from the manifest
  of an untimed first prepare), decoded with the library ``prepare`` decodes with — OpenCV's FFmpeg backend: open,
  ``grab`` up to the last wanted frame, ``retrieve`` + BGR→RGB the wanted ones — in this process, no start-up;
* **prepare**: :func:`emdlib.data.prepare.prepare` of the same world into a fresh cache, in this process, with one
  worker and with the preset's ``workers``. Its own start-up is reported separately and excluded from the rate:
  the worker pool (spawn, imports, dlib's detector model: ``pool_startup_s``, measured in the same rounds) and the
  detector's one-off load (warm in this process after the first prepare). ``cli_import_s``: a fresh interpreter
  importing the prepare module (what ``emd prepare`` pays before its first video);
* **prepare, detections cached**: the same with the pristine boxes of the first prepare copied into the fresh
  cache (a rerun "never detects again"): what prepare costs besides dlib's detection;
* **detection alone**: dlib's detector (:func:`emdlib.data.faces.find_faces`) on the pristine frames prepare
  detects, already decoded.

The ratio asked for is ``prepare frames/s ÷ pure decode frames/s`` (frames: the sampled frames, ``rows`` of the
manifest). World: any FF++-layout root given as ``--root`` (read-only: prepare writes only its cache) — the synth
world of ``--preset`` (``cpu``: 320 videos, 1,920 sampled frames) or real FF++ videos with the official ``splits/``
— else the preset's synth world built under ``--work``. ``--train-frames`` / ``--eval-frames`` override the preset's
frames per video (the paper's are 200 / 10, §IV-A): how many sampled frames share one decode of a video, and how
many of them dlib must detect, decide the ratio.

    OMP_NUM_THREADS=1 python benchmarks/prepare_throughput.py --root /tmp/cpudata/cpu/ffpp \
        --out results/benchmarks/prepare_throughput.json
    OMP_NUM_THREADS=1 python benchmarks/prepare_throughput.py --root FFPP_MINI --label ffpp_mini_paper_sampling \
        --train-frames 200 --eval-frames 10 --rounds 1

(``FFPP_MINI``: ``../shared/data/ffpp-mini``'s ``original_sequences`` and ``manipulated_sequences`` linked into a
folder beside a link ``splits`` to ``../shared/ffpp/splits``; its Face2Face fake, whose original is not there,
left out.)

Writes the JSON atomically (merged under ``--label``, default ``prepare_throughput``); logs progress.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import cv2

from emdlib.data import faces
from emdlib.data.ffpp import FFPP
from emdlib.data.prepare import prepare, read_manifest, worker_pool
from emdlib.io import read_json, write_json
from emdlib.presets import get_preset
from emdlib.study.records import git_commit, machine_info

log = logging.getLogger("prepare_throughput")


def _warm_worker() -> int:
    """Run in each pool worker: import prepare's modules and load dlib's detector, as a prepare worker does."""
    import emdlib.data.prepare  # noqa: F401  (what unpickling a prepare job imports)

    faces._detector()
    return os.getpid()


def plan_from_cache(cache: Path, root: Path) -> list[tuple[str, list[int]]]:
    """``(video path, sampled frame indices)`` of every video a prepare cached (from its manifest)."""
    ff = FFPP(root)
    per_video: dict[tuple, list[int]] = {}
    for r in read_manifest(cache):
        if r["frame"] >= 0:
            per_video.setdefault((r["method"], r["compression"], r["video"]), []).append(r["frame"])
    return [(str(ff.video_path(m, c, v)), sorted(f)) for (m, c, v), f in sorted(per_video.items())]


def pure_decode(plan: list[tuple[str, list[int]]]) -> tuple[float, int]:
    """Decode the planned frames with OpenCV's FFmpeg backend; ``(seconds, frames decoded)``."""
    t0 = time.perf_counter()
    got = 0
    for path, frames in plan:
        wanted, last = set(frames), max(frames)
        cap = cv2.VideoCapture(path, cv2.CAP_FFMPEG)
        i = 0
        while i <= last and cap.grab():
            if i in wanted:
                ok, bgr = cap.retrieve()
                if ok:
                    cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                    got += 1
            i += 1
        cap.release()
    return time.perf_counter() - t0, got


def run_prepare(root: Path, cache: Path, cfg, data, workers: int, boxes_from: Path | None = None) -> tuple[float, dict]:
    shutil.rmtree(cache, ignore_errors=True)
    if boxes_from is not None:  # a rerun's situation: the pristine detections exist, nothing is cached yet
        cache.mkdir(parents=True)
        shutil.copytree(boxes_from / "boxes", cache / "boxes")
        shutil.copy2(boxes_from / "prepare.json", cache / "prepare.json")
    t0 = time.perf_counter()
    summary = prepare(root, cache, cfg, methods=data.methods, compressions=data.compressions, workers=workers,
                      progress=False)
    return time.perf_counter() - t0, summary


def pool_startup(workers: int) -> float:
    """Seconds to start ``workers`` prepare worker processes, each with prepare's imports and dlib's detector."""
    t0 = time.perf_counter()
    with worker_pool(workers) as pool:
        pids = {f.result() for f in [pool.submit(_warm_worker) for _ in range(workers)]}
    dt = time.perf_counter() - t0
    log.debug("pool of %d started (%d distinct workers answered)", workers, len(pids))
    return dt


def detection_alone(root: Path, cache: Path) -> tuple[float, int]:
    """dlib on the pristine frames prepare detected (decoded beforehand, untimed); ``(seconds, frames)``."""
    from emdlib.data.video import read_frames

    imgs = []
    for box_file in sorted((cache / "boxes").glob("*.json")):
        b = read_json(box_file)
        frames = read_frames(b["path"], [int(i) for i in b["boxes"]])
        imgs += [frames[i] for i in sorted(frames)]
    t0 = time.perf_counter()
    for img in imgs:
        faces.find_faces(img)
    return time.perf_counter() - t0, len(imgs)


def cli_import_s() -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import emdlib.data.prepare, emdlib.cli"], check=True,
                   env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="cpu")
    p.add_argument("--root", type=Path, default=None,
                   help="an FF++-layout root with splits/ (a synth world, or real FF++; read only)")
    p.add_argument("--work", type=Path, default=Path("/tmp/prepare_throughput"), help="caches (and world) go here")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--train-frames", type=int, default=None,
                   help="override the preset's sampled frames per training video (paper §IV-A: 200)")
    p.add_argument("--eval-frames", type=int, default=None,
                   help="override the preset's sampled frames per validation/test video (paper: 10)")
    p.add_argument("--label", default="prepare_throughput")
    p.add_argument("--note", default="", help="what else ran on the machine")
    p.add_argument("--out", type=Path, default=Path("results/benchmarks/prepare_throughput.json"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    cv2.setNumThreads(1)  # as prepare's workers (one process per core)
    import torch

    torch.set_num_threads(1)

    preset = get_preset(args.preset)
    cfg, data = preset.prepare, preset.data
    overrides = {k: v for k, v in (("train_frames", args.train_frames), ("eval_frames", args.eval_frames))
                 if v is not None}
    cfg = dataclasses.replace(cfg, **overrides)
    root = args.root
    if root is None:
        from emdlib.data.synth import build_synth_world

        root = args.work / "ffpp"
        if not (root / "world.json").is_file():
            log.info("building the %s synth world in %s", args.preset, root)
            build_synth_world(root, data)
    load_start = list(os.getloadavg())

    log.info("first prepare (untimed: the plan of sampled frames, the boxes, dlib's model load)")
    t_first, first = run_prepare(root, args.work / "cache_first", cfg, data, 1)
    plan = plan_from_cache(args.work / "cache_first", root)
    frames = sum(len(f) for _, f in plan)
    if frames != first["rows"]:
        raise RuntimeError(f"plan has {frames} frames, the manifest {first['rows']} rows")
    pure_decode(plan)  # page cache and decoder warm

    series: dict[str, list[float]] = {k: [] for k in
                                      ("pure_decode_s", "prepare_1_s", f"prepare_{cfg.workers}_s",
                                       "prepare_boxes_cached_1_s", "pool_startup_s", "detection_s")}
    for r in range(args.rounds):
        log.info("round %d/%d (load %s)", r + 1, args.rounds, os.getloadavg())
        dt, got = pure_decode(plan)
        assert got == frames, (got, frames)
        series["pure_decode_s"].append(dt)
        series["prepare_1_s"].append(run_prepare(root, args.work / "cache", cfg, data, 1)[0])
        series["pool_startup_s"].append(pool_startup(cfg.workers))
        series[f"prepare_{cfg.workers}_s"].append(run_prepare(root, args.work / "cache", cfg, data, cfg.workers)[0])
        series["prepare_boxes_cached_1_s"].append(
            run_prepare(root, args.work / "cache", cfg, data, 1, boxes_from=args.work / "cache_first")[0])
        dt, n_detected = detection_alone(root, args.work / "cache_first")
        series["detection_s"].append(dt)
    med = {k: statistics.median(v) for k, v in series.items()}
    pool = med["pool_startup_s"]
    rate = {
        "pure_decode": frames / med["pure_decode_s"],
        "prepare_1_worker": frames / med["prepare_1_s"],
        f"prepare_{cfg.workers}_workers_without_pool_startup": frames / max(1e-9, med[f"prepare_{cfg.workers}_s"] - pool),
        f"prepare_{cfg.workers}_workers_with_pool_startup": frames / med[f"prepare_{cfg.workers}_s"],
        "prepare_1_worker_detections_cached": frames / med["prepare_boxes_cached_1_s"],
        "detection_alone": n_detected / med["detection_s"],
    }
    record = {
        "what": "prepare throughput vs pure decode of the same sampled frames (issue 14, deliverable 5)",
        "commit": git_commit(), "machine": machine_info(), "note": args.note,
        "load_average_start": load_start, "load_average_end": list(os.getloadavg()),
        "preset": args.preset, "prepare_config": dataclasses.asdict(cfg), "root": str(root),
        "videos": len(plan), "sampled_frames": frames, "detected_pristine_frames": n_detected,
        "status": first["status"], "rounds": args.rounds,
        "first_prepare_s": round(t_first, 3), "cli_import_s": round(cli_import_s(), 3),
        "median_s": {k: round(v, 4) for k, v in med.items()},
        "rounds_s": {k: [round(x, 4) for x in v] for k, v in series.items()},
        "frames_per_s": {k: round(v, 1) for k, v in rate.items()},
        "ratio_to_pure_decode": {k: round(v / rate["pure_decode"], 3) for k, v in rate.items() if k != "pure_decode"},
        "detection_share_of_prepare_1_worker": round(med["detection_s"] / med["prepare_1_s"], 3),
    }
    previous = read_json(args.out) if args.out.is_file() else {}
    write_json(args.out, {**previous, args.label: record})
    log.info("%s", {k: record[k] for k in ("frames_per_s", "ratio_to_pure_decode", "median_s")})
    return record


if __name__ == "__main__":
    main()
