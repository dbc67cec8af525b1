"""EMD vs EMD without the FER stream ("XceptionNet (seg)") on every cell of a preset: test accuracy, AUC, pixel
accuracy (and IoU/F1), with each run's wall time and device.

    python benchmarks/emd_cells.py --preset cpu --out results/benchmarks/emd_cells_cpu.json

Runs go through :func:`emdlib.study.experiments.run_grid`, so cells that notebook 02 already trained are read back from
their run records (``results/<preset>/runs``) instead of retrained; missing ones are trained now. The data and
FER-stream stages (notebooks 00 and 01) are ensured first.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
from pathlib import Path

from emdlib.io import write_json
from emdlib.study import Study, ensure_stages, experiments

SYSTEMS = ["EMD", "XceptionNet (seg)"]
KEYS = ["accuracy", "auc", "ap", "eer", "video_accuracy", "pixel_accuracy", "iou", "f1", "pixel_auc"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--data-root", default="data")
    ap.add_argument("--results", default="results")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    study = Study.open(args.preset, args.data_root, args.results)
    preset = study.preset
    ensure_stages(study, ["02"])  # what notebook 02 needs: the data and FER-stream stages
    records = experiments.run_grid(study, SYSTEMS, list(preset.emd.cells))
    rows = [{"system": r["system"], "method": r["method"], "compression": r["compression"],
             **{k: r["metrics"].get(k) for k in KEYS}, "n_test_images": r["config"]["n_test_images"],
             "wall_time_s": r.get("wall_time_s"), "device": r.get("device"), "run": r["run"]} for r in records]
    out = args.out or Path(args.results) / "benchmarks" / f"emd_cells_{args.preset}.json"
    write_json(out, {"preset": args.preset, "machine": platform.processor() or platform.machine(),
                     "cores": os.cpu_count(), "note": preset.note, "cells": rows})
    logging.info("wrote %s", out)


if __name__ == "__main__":
    main()
