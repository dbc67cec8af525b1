"""Benchmark: ``emd detect`` throughput on a 720p clip — frames per second and the share of time in decoding, face
detection, the network and (optionally) the overlay.

The clip is the first ``--frames`` frames of a 1280×720 FF++ c23 video (default ``004.mp4`` from
``../shared/data/ffpp-mini``), re-encoded at its frame rate. Every frame is sampled (``--every 1``) unless told
otherwise, so frames per second = decoded, detected and scored frames per second. Models are randomly initialised
at their study sizes (weights do not change the speed):

* ``emd``: EMD, the paper's configuration (xception65 at 299², ESR with 9 branches; ``--emd-encoder``,
  ``--emd-size`` and ``--esr-branches`` change it);
* ``mesonet``: MesoInception-4 at 256².

The network is warmed up on one batch before timing. Results are merged into ``--out`` under the device's name, so
CPU and CUDA runs of the same file live side by side::

    python benchmarks/detect_throughput.py --frames 30 --device cpu
    python benchmarks/detect_throughput.py --frames 300 --device cuda --overlay
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

from emdlib.data.video import read_frames, write_video
from emdlib.detect import Detector, detect_file
from emdlib.io import read_json, write_json

log = logging.getLogger("detect_throughput")
SHARED = Path(__file__).resolve().parents[2] / "shared"


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


def build(name: str, args: argparse.Namespace) -> tuple[torch.nn.Module, int, dict]:
    if name == "emd":
        from emdlib.models.emd import EMD
        from emdlib.models.esr import ESR

        torch.manual_seed(0)
        model = EMD(ESR(args.esr_branches), encoder=args.emd_encoder)
        return model, args.emd_size, {"encoder": args.emd_encoder, "image_size": args.emd_size,
                                      "esr_branches": args.esr_branches}
    if name == "mesonet":
        from emdlib.baselines.mesonet import MesoInception4

        torch.manual_seed(0)
        return MesoInception4(), 256, {"variant": "MesoInception-4", "image_size": 256}
    raise ValueError(f"unknown model {name!r}")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--video", type=Path,
                   default=SHARED / "data/ffpp-mini/original_sequences/youtube/c23/videos/004.mp4")
    p.add_argument("--frames", type=int, default=30, help="length of the benchmark clip (first N frames)")
    p.add_argument("--every", type=int, default=1)
    p.add_argument("--models", nargs="+", default=["emd", "mesonet"], choices=["emd", "mesonet"])
    p.add_argument("--emd-encoder", default="xception65")
    p.add_argument("--emd-size", type=int, default=299)
    p.add_argument("--esr-branches", type=int, default=9)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--overlay", action="store_true", help="also write the overlay video (timed as overlay/write)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--out", type=Path, default=Path("results/benchmarks/detect_throughput.json"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if not args.video.is_file():
        raise SystemExit(f"{args.video}: benchmark video not found")

    with tempfile.TemporaryDirectory() as tmp:
        frames = read_frames(args.video, range(args.frames))
        clip = write_video(Path(tmp) / "clip.mp4", [frames[i] for i in sorted(frames)], crf=23, fps=25)
        h, w = frames[0].shape[:2]
        runs = []
        for name in args.models:
            model, size, info = build(name, args)
            det = Detector(model, size, device=device, batch_size=args.batch_size)
            face = np.zeros((size, size, 3), np.uint8)
            det.score_batch(np.stack([face] * min(args.batch_size, 4)))  # warm-up (allocations, cuDNN autotune)
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            res = detect_file(clip, det, every=args.every,
                              overlay_path=Path(tmp) / f"{name}.overlay.mp4" if args.overlay else None,
                              progress=False)
            wall = time.perf_counter() - t0
            if not res.ok:
                raise SystemExit(f"{clip}: {res.error}")
            parts = {k: v for k, v in res.timings.items() if k != "total"}
            run = {
                "model": name, **info, "frames": res.frames_total, "frames_sampled": res.frames_sampled,
                "faces": res.faces, "wall_s": round(wall, 3),
                "fps": round(res.frames_total / wall, 3),
                "sampled_fps": round(res.frames_sampled / wall, 3),
                "faces_per_s_network": round(res.faces / parts["network"], 3) if parts["network"] else None,
                "seconds": parts,
                "share": {k: round(v / wall, 4) for k, v in parts.items()},
                "share_other": round(max(0.0, 1 - sum(parts.values()) / wall), 4),
            }
            log.info("%s: %.2f fps (%d frames, %d faces); shares %s", name, run["fps"], run["frames"], run["faces"],
                     run["share"])
            runs.append(run)
            del det, model

    entry = {
        "device": device_name(device), "device_type": device.type,
        "command": "python " + shlex.join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
        "video": str(args.video), "clip": {"width": w, "height": h, "frames": args.frames, "every": args.every},
        "batch_size": args.batch_size, "overlay": args.overlay,
        "load_average_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "torch": torch.__version__, "runs": runs,
        "note": "face detection = dlib HOG with one up-sampling on the full-resolution frame (the FF++/training "
                "protocol, emdlib.data.faces.find_faces); network = crop resize + forward pass, batched across frames",
    }
    old = read_json(args.out) if args.out.is_file() else {}
    results = {k: v for k, v in old.items() if isinstance(v, dict)}
    results[f"{device.type}: {entry['device']}"] = entry
    write_json(args.out, results)
    log.info("wrote %s", args.out)
    return entry


if __name__ == "__main__":
    main()
