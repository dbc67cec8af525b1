"""Benchmark: size and decode rate of the face-crop cache formats (issue 14, deliverable 4; emdlib.data.crop_codec).

Crops are real faces at the ``paper`` preset's size: the London photos (``../shared/data/london-faces``, neutral and
smiling) through ``prepare``'s own face path (dlib box × 1.3, ``faces.resize_crop`` to ``--size`` px). For each format
— ``npy`` (raw uint8, memory-mapped), ``jpeg`` (q95) and ``png`` (lossless) — measured side by side in one run:
bytes per crop (mean and 95th percentile), the cache of the ``paper`` preset extrapolated with those bytes
(:func:`emdlib.check.cache_bytes`' frame counts), and the decode rate in crops/s of ``ManipulationDataset``'s read
(memory-map slice + copy, or :class:`emdlib.data.crop_codec.EncodedCrops` decoding) on one thread, best of
``--rounds``. JPEG's error against the raw crop is reported as mean absolute difference in grey levels. Masks (raw
uint8 in the ``npy`` cache, lossless PNG in both compressed ones) are measured on FF++'s official sample masks
(``../shared/ffpp/samples/*_mask.png``, binarised as ``prepare`` does, centre square resized to ``--size``).

    python benchmarks/cache_formats.py --out results/benchmarks/cache_formats.json
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from emdlib.check import cache_bytes
from emdlib.data import faces
from emdlib.data.crop_codec import EncodedCrops, encode_crops
from emdlib.data.ffpp import binarize_mask
from emdlib.data.images import read_image
from emdlib.io import write_json, write_npy
from emdlib.presets import get_preset

log = logging.getLogger("cache_formats")
REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def _crops(folder: Path, size: int, limit: int) -> list[np.ndarray]:
    out = []
    for path in sorted(folder.glob("*/*.jpg"))[:limit]:
        image = read_image(path)
        found = faces.find_faces(image)
        if found:
            out.append(faces.resize_crop(found[0].box.crop(image), size))
    return out


def _rate(read, n: int, rounds: int) -> float:
    best = 0.0
    for _ in range(rounds):
        t0 = time.perf_counter()
        for i in range(n):
            np.array(read(i))
        best = max(best, n / (time.perf_counter() - t0))
    return best


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--faces", type=Path, default=SHARED / "data" / "london-faces")
    p.add_argument("--size", type=int, default=299, help="crop side in px (paper preset: 299)")
    p.add_argument("--limit", type=int, default=60, help="photos to crop")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", type=Path, default=REPO / "results" / "benchmarks" / "cache_formats.json")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(1)

    masks = []
    for path in sorted((SHARED / "ffpp" / "samples").glob("*_mask.png")):
        m = binarize_mask(read_image(path))
        side = min(m.shape)
        top, left = (m.shape[0] - side) // 2, (m.shape[1] - side) // 2
        masks.append(cv2.resize(m[top:top + side, left:left + side], (args.size, args.size),
                                interpolation=cv2.INTER_NEAREST))
    crops = _crops(args.faces, args.size, args.limit)
    if not crops:
        raise SystemExit(f"{args.faces}: no faces found to crop")
    log.info("%d crops of %d px from %s", len(crops), args.size, args.faces)
    raw = np.stack(crops)
    paper = get_preset("paper")
    raw_total = cache_bytes(paper)
    record: dict = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs",
                    "load_average": list(os.getloadavg()), "torch_threads": 1, "crops": len(crops),
                    "crop_size": args.size, "source": str(args.faces), "formats": {}}
    try:
        record["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                          text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        record["commit"] = None
    with tempfile.TemporaryDirectory() as tmp:
        write_npy(Path(tmp) / "raw.npy", raw)
        mm = np.load(Path(tmp) / "raw.npy", mmap_mode="r")
        readers = {"npy": (lambda i: mm[i], np.full(len(crops), raw[0].nbytes))}
        for fmt in ("jpeg", "png"):
            data, offsets = encode_crops(crops, fmt)
            write_npy(Path(tmp) / f"{fmt}.npy", data)
            enc = EncodedCrops(np.load(Path(tmp) / f"{fmt}.npy", mmap_mode="r"), offsets, fmt)
            readers[fmt] = (enc.__getitem__, np.diff(offsets))
        for fmt, (read, sizes) in readers.items():
            rate = _rate(read, len(crops), args.rounds)
            mean, p95 = float(sizes.mean()), float(np.percentile(sizes, 95))
            entry = {"bytes_per_crop_mean": round(mean), "bytes_per_crop_p95": round(p95),
                     "bytes_per_pixel_p95": round(p95 / args.size ** 2, 3), "ratio_to_raw": round(mean / raw[0].nbytes, 4),
                     "decode_crops_per_s": round(rate, 1)}
            if fmt != "npy":
                back = np.stack([read(i) for i in range(len(crops))])
                entry["mean_abs_error_grey_levels"] = round(float(np.abs(back.astype(int) - raw.astype(int)).mean()), 3)
            record["formats"][fmt] = entry
            log.info("%s: %s", fmt, entry)
    mask_ratio = 1.0
    if masks:
        data, offsets = encode_crops(masks, "png")
        enc = EncodedCrops(data, offsets, "masks", mask=True)
        assert all(np.array_equal(enc[i], m) for i, m in enumerate(masks)), "PNG masks must round-trip exactly"
        mask_ratio = float(np.mean(np.diff(offsets))) / masks[0].nbytes
        record["masks_png"] = {"masks": len(masks), "bytes_per_mask_mean": round(float(np.mean(np.diff(offsets)))),
                               "ratio_to_raw": round(mask_ratio, 4),
                               "decode_masks_per_s": round(_rate(enc.__getitem__, len(masks), args.rounds * 20), 1)}
    for fmt, entry in record["formats"].items():
        # cache_bytes per target: a real (3 B/px) and 3 fakes (3 B/px crop + 1 B/px mask): crops are 12 of 15 parts
        masks_part = 3 / 15 * (1.0 if fmt == "npy" else mask_ratio)
        entry["paper_cache_gb_estimate"] = round(raw_total * (12 / 15 * entry["ratio_to_raw"] + masks_part) / 1e9, 1)
    write_json(args.out, record)
    log.info("%s", record)
    return record


if __name__ == "__main__":
    main()
