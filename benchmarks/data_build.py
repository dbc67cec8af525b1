"""Data-build benchmark: wall time and size of the synth worlds (``tiny``, ``cpu``), prepare throughput, and a
forged London-faces world with its Fig. 3-style grid.

    python benchmarks/data_build.py --out /tmp/emd_bench \
        --london ../shared/data/london-faces --json results/benchmarks/data_build.json \
        --figure results/figures/fig3_london.png

Writes one JSON record (machine, cores, load average, per-step seconds, sizes, prepare frames/s). The London
world uses the ``faces`` preset's frame size with fewer people and frames so that it fits a CPU run.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import shutil
import time
from pathlib import Path

from emdlib.data.prepare import prepare
from emdlib.io import read_json, write_json
from emdlib.presets import get_preset


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def build(world: str, preset: str, out: Path, faces: Path | None = None, **overrides) -> dict:
    from emdlib.data.photos import build_faces_world
    from emdlib.data.synth import build_synth_world

    p = get_preset(preset)
    data = dataclasses.replace(p.data, **overrides)
    root, cache = out / f"{world}-{preset}" / "ffpp", out / f"{world}-{preset}" / "cache"
    shutil.rmtree(root.parent, ignore_errors=True)
    t0 = time.perf_counter()
    summary = build_faces_world(faces, root, data) if world == "faces" else build_synth_world(root, data)
    t_world = time.perf_counter() - t0
    t0 = time.perf_counter()
    prep = prepare(root, cache, p.prepare, methods=data.methods, compressions=data.compressions, workers=2)
    t_prep = time.perf_counter() - t0
    return {
        "world": world, "preset": preset, "data": dataclasses.asdict(data), "prepare_config": dataclasses.asdict(p.prepare),
        "videos": int(summary.get("videos", 0) or sum(1 for _ in root.rglob("*.mp4"))),
        "world_seconds": round(t_world, 1), "world_bytes": du(root),
        "prepare_seconds": round(t_prep, 1), "cache_bytes": du(cache), "prepared_rows": prep["rows"],
        "ok_frames": prep["ok_frames"], "prepare_frames_per_s": round(prep["rows"] / t_prep, 2),
        "status": prep.get("status"), "root": str(root),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("/tmp/emd_bench"))
    ap.add_argument("--london", type=Path, default=None, help="London set folder (neutral/, smiling/)")
    ap.add_argument("--presets", nargs="*", default=["tiny", "cpu"])
    ap.add_argument("--json", type=Path, default=Path("results/benchmarks/data_build.json"))
    ap.add_argument("--figure", type=Path, default=None, help="Fig. 3-style grid of the London world")
    args = ap.parse_args()
    record = {"machine": platform.processor() or platform.machine(), "cores": os.cpu_count(),
              "load_average_start": os.getloadavg(), "runs": []}
    for preset in args.presets:
        record["runs"].append(build("synth", preset, args.out))
    if args.london:
        run = build("faces", "faces", args.out, faces=args.london, pairs=(6, 2, 2), frames_per_clip=16)
        record["runs"].append(run)
        if args.figure:
            from emdlib.data.ffpp import load_splits
            from emdlib.figures import save_figure
            from emdlib.figures.data import fig3_grid

            root = Path(run["root"])
            splits = load_splits(root / "splits")
            pairs = splits["test"] + splits["val"]
            save_figure(fig3_grid(root, pairs[:4], get_preset("faces").data.methods, frame=3), args.figure)
    record["load_average_end"] = os.getloadavg()
    previous = read_json(args.json) if args.json.is_file() else {}
    write_json(args.json, {**previous, "data_build": record})


if __name__ == "__main__":
    main()
