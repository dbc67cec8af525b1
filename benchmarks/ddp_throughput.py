"""Benchmark: data-parallel training on CPU, 2 processes against 1 (issue 14, deliverable 5), reported as measured.

One small real network — MesoNet (Meso-4, the registry's ``mesonet``, at its input size 256 px) — trained by
:func:`emdlib.train.fit` on the same in-memory items (``benchmarks/train_throughput.py``'s) with the same global batch:

* ``1 process x 1 thread`` and ``1 process x 2 threads``: ``fit`` in this process;
* ``2 processes x 1 thread``: ``fit`` in each of 2 processes started by :func:`emdlib.distributed.launch` (gloo;
  ``DistributedDataParallel``, ``DistributedSampler``, batch ``global / 2`` per rank: ``emd``'s own DDP path).

Throughput is ``train_images / seconds`` over the epochs after the first (the first is the warm-up: allocator,
DDP's bucket set-up), from ``fit``'s own per-epoch records (forward, backward, all-reduce, optimiser step, the
data loader; checkpoint writing excluded). Start-up (spawn, rendezvous, process group, model build, the first
epoch and the checkpoints) is reported separately as ``wall_s`` minus the timed epochs. The settings alternate for
``--rounds`` rounds; medians are reported, each round's values too.

    OMP_NUM_THREADS=1 python benchmarks/ddp_throughput.py --out results/benchmarks/ddp_cpu.json

Writes the JSON atomically; logs progress.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from emdlib import distributed
from emdlib.io import write_json
from emdlib.registry import build_model
from emdlib.study.records import git_commit, machine_info
from emdlib.train import TrainConfig, fit

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import _items  # noqa: E402  (the in-memory items, written once)

log = logging.getLogger("ddp_throughput")
MODEL = "mesonet"
INPUT = 256  # MesoNet's input side (emdlib.baselines.mesonet.INPUT_SIZE)


def _fit(out_dir: str, n_items: int, batch: int, epochs: int, threads: int) -> dict:
    """One training run in this process (rank r of the group the launcher made, or alone)."""
    torch.set_num_threads(threads)
    distributed.init_from_env(backend="gloo")
    torch.manual_seed(0)
    model = build_model(MODEL)
    cfg = TrainConfig(warmup_epochs=0, epochs=epochs, batch_size=batch, lr=1e-3, device="cpu", image_size=INPUT,
                      seed=0)
    t0 = time.perf_counter()
    res = fit(model, _items(n_items, INPUT), None, out_dir, cfg, resume=False)
    return {"history": res["history"], "fit_wall_s": time.perf_counter() - t0, "world": distributed.world_size(),
            "threads": torch.get_num_threads()}


def measure(nproc: int, threads: int, n_items: int, batch: int, epochs: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        res = distributed.launch(_fit, nproc, tmp, n_items, batch, epochs, threads)
        wall = time.perf_counter() - t0
    timed = res["history"][1:]
    images, seconds = sum(e["train_images"] for e in timed), sum(e["seconds"] for e in timed)
    if res["world"] != nproc:
        raise RuntimeError(f"asked for {nproc} processes, fit ran on {res['world']}")
    return {"images_per_s": images / seconds, "timed_images": images, "timed_s": seconds, "wall_s": wall,
            "startup_s": wall - seconds, "threads_per_process": res["threads"],
            "epoch_seconds": [e["seconds"] for e in res["history"]],
            "train_loss": [round(e["train_loss"], 5) for e in res["history"] if "train_loss" in e]}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=64, help="training images (in memory)")
    p.add_argument("--batch", type=int, default=16, help="global batch (each of 2 processes takes half)")
    p.add_argument("--epochs", type=int, default=3, help="epochs per run; the first is not timed")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--note", default="", help="what else ran on the machine")
    p.add_argument("--out", type=Path, default=Path("results/benchmarks/ddp_cpu.json"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("emdlib.train", "emdlib.distributed", "torch.distributed"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    settings = [(1, 1), (1, 2), (2, 1)]  # (processes, threads per process)
    runs: dict[str, list[dict]] = {f"{n}p_x_{t}t": [] for n, t in settings}
    load_start = list(os.getloadavg())
    for r in range(args.rounds):
        for n, t in settings:
            log.info("round %d/%d: %d process(es) x %d thread(s) (load %s)", r + 1, args.rounds, n, t,
                     os.getloadavg())
            m = measure(n, t, args.items, args.batch, args.epochs)
            log.info("  %.2f images/s (start-up %.1f s)", m["images_per_s"], m["startup_s"])
            runs[f"{n}p_x_{t}t"].append(m)
    med = {k: statistics.median(m["images_per_s"] for m in v) for k, v in runs.items()}
    record = {
        "what": "data-parallel training on CPU: 2 processes vs 1 (issue 14, deliverable 5)",
        "commit": git_commit(), "machine": machine_info(), "note": args.note,
        "load_average_start": load_start, "load_average_end": list(os.getloadavg()),
        "model": MODEL, "input_size": INPUT, "global_batch": args.batch, "items": args.items,
        "epochs": args.epochs, "timed_epochs": args.epochs - 1, "rounds": args.rounds, "backend": "gloo",
        "images_per_s_median": {k: round(v, 3) for k, v in med.items()},
        "ratio_2p_x_1t_over_1p_x_1t": round(med["2p_x_1t"] / med["1p_x_1t"], 3),
        "ratio_2p_x_1t_over_1p_x_2t": round(med["2p_x_1t"] / med["1p_x_2t"], 3),
        "runs": {k: [{kk: (round(vv, 4) if isinstance(vv, float) else vv) for kk, vv in m.items()} for m in v]
                 for k, v in runs.items()},
    }
    write_json(args.out, record)
    log.info("%s", {k: record[k] for k in ("images_per_s_median", "ratio_2p_x_1t_over_1p_x_1t",
                                          "ratio_2p_x_1t_over_1p_x_2t")})
    return record


if __name__ == "__main__":
    main()
