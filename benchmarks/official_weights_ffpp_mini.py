"""Benchmark: the released MesoNet and ClassNSeg weights on the FF++ c23 clips of ``../shared/data/ffpp-mini``.

For every clip (pristine and manipulated, any method present) ``--frames`` frames are taken every ``--stride``
frames from the start; the largest dlib face gets FF++'s 1.3× square box (emdlib.data.faces); each model scores the
crop with its official preprocessing:

* MesoNet (Meso4 / MesoInception, DF and F2F weights): nearest resize to 256×256, /255 (the official example).
* ClassNSeg (``full`` epoch 46, ``finetune`` epoch 26): bilinear resize to 256×256, ImageNet mean/std. (The official
  crop is centred on the manipulation mask, which pristine frames lack, so the FF++ face box is used for all.)

Reported per model: the mean P(fake) of each clip, the mean over pristine clips and over fake clips (per method as
well), and frame accuracy at 0.5. A handful of clips: a sanity check of the ports on real FF++ data, not a result.

    python benchmarks/official_weights_ffpp_mini.py --out results/benchmarks/official_weights_ffpp_mini.json
"""

from __future__ import annotations

import argparse
import logging
import platform
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from emdlib.baselines.classnseg import MultiTask, load_classnseg
from emdlib.baselines.mesonet import Meso4, MesoInception4, load_mesonet_h5
from emdlib.data.faces import crop_box, detect_faces
from emdlib.data.transforms import to_tensor
from emdlib.data.video import read_frames
from emdlib.io import write_json

log = logging.getLogger("official_weights_ffpp_mini")
SHARED = Path(__file__).resolve().parents[2] / "shared"


def clips(root: Path, compression: str) -> list[tuple[str, str, Path]]:
    """``(method or "original", video id, path)`` for every clip in an FF++ layout."""
    out = [("original", p.stem, p) for p in sorted((root / "original_sequences/youtube" / compression / "videos").glob("*.mp4"))]
    for method_dir in sorted((root / "manipulated_sequences").glob("*")):
        out += [(method_dir.name, p.stem, p) for p in sorted((method_dir / compression / "videos").glob("*.mp4"))]
    return out


def face_crops(path: Path, n: int, stride: int) -> list[np.ndarray]:
    """RGB uint8 face crops (FF++ 1.3× box of the largest dlib face) of frames 0, stride, …; frames without a face
    are skipped."""
    frames = read_frames(path, [i * stride for i in range(n)])
    crops = []
    for idx in sorted(frames):
        faces = detect_faces(frames[idx])
        if not faces:
            log.warning("%s frame %d: no face", path, idx)
            continue
        crops.append(crop_box(faces[0], frames[idx].shape).crop(frames[idx]))
    return crops


def models(weights: Path) -> dict[str, tuple[torch.nn.Module, int]]:
    """name → (model in eval mode, interpolation used to reach 256×256)."""
    out: dict[str, tuple[torch.nn.Module, int]] = {}
    for name, ctor in [("Meso4_DF", Meso4), ("MesoInception_DF", MesoInception4), ("Meso4_F2F", Meso4),
                       ("MesoInception_F2F", MesoInception4)]:
        out[name] = (load_mesonet_h5(ctor(), weights / "mesonet" / f"{name}.h5").eval(), cv2.INTER_NEAREST)
    for folder, epoch in [("full", 46), ("finetune", 26)]:
        d = weights / "classnseg" / folder
        model = load_classnseg(MultiTask(), d / f"encoder_{epoch}.pt", d / f"decoder_{epoch}.pt").eval()
        out[f"ClassNSeg_{folder}_{epoch}"] = (model, cv2.INTER_LINEAR)
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", type=Path, default=SHARED / "data/ffpp-mini")
    p.add_argument("--weights", type=Path, default=SHARED / "weights")
    p.add_argument("--compression", default="c23")
    p.add_argument("--frames", type=int, default=10)
    p.add_argument("--stride", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("results/benchmarks/official_weights_ffpp_mini.json"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    t0 = time.time()

    nets = models(args.weights)
    per_clip: dict[str, dict] = {}
    scores: dict[str, dict[str, list[float]]] = {name: {} for name in nets}
    for method, video, path in clips(args.root, args.compression):
        crops = face_crops(path, args.frames, args.stride)
        key = f"{method}/{video}"
        per_clip[key] = {"method": method, "label": int(method != "original"), "frames": len(crops)}
        if not crops:
            continue
        for name, (model, interp) in nets.items():
            batch = torch.stack([to_tensor(cv2.resize(c, (256, 256), interpolation=interp)) for c in crops])
            with torch.no_grad():
                p_fake = model((batch - 0.5) / 0.5).logits.softmax(1)[:, 1].numpy()
            scores[name][key] = p_fake.tolist()
        log.info("%s: %d crops", key, len(crops))

    summary: dict[str, dict] = {}
    for name, by_clip in scores.items():
        clip_means = {k: float(np.mean(v)) for k, v in by_clip.items()}
        frames_y = [(per_clip[k]["label"], s) for k, v in by_clip.items() for s in v]
        by_method: dict[str, list[float]] = {}
        for k, m in clip_means.items():
            by_method.setdefault(per_clip[k]["method"], []).append(m)
        summary[name] = {
            "clip_mean_p_fake": clip_means,
            "mean_p_fake_pristine": float(np.mean([m for k, m in clip_means.items() if per_clip[k]["label"] == 0])),
            "mean_p_fake_fake": float(np.mean([m for k, m in clip_means.items() if per_clip[k]["label"] == 1])),
            "mean_p_fake_by_method": {m: float(np.mean(v)) for m, v in by_method.items()},
            "frame_accuracy": float(np.mean([(s >= 0.5) == y for y, s in frames_y])),
            "frames": len(frames_y),
        }
    result = {
        "benchmark": "official_weights_ffpp_mini",
        "root": str(args.root), "compression": args.compression, "frames_per_clip": args.frames,
        "stride": args.stride, "clips": per_clip, "models": summary, "frame_scores": scores,
        "seconds": round(time.time() - t0, 1),
        "environment": {"python": sys.version.split()[0], "torch": torch.__version__, "platform": platform.platform(),
                        "threads": args.threads, "device": "cpu"},
    }
    write_json(args.out, result)
    log.info("wrote %s in %.0f s", args.out, time.time() - t0)
    return result


if __name__ == "__main__":
    main()
