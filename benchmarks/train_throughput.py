"""Benchmark: EMD training throughput (images/s) of the full loop vs the bare model step, at the cpu preset's sizes.

* **bare step**: :func:`emdlib.train.train_step` (forward of FER + EMD, Eq. 8 loss, backward, Adam step) on tensors
  already in memory, in the warm-up phase (encoder frozen, §IV-B) and in the full phase;
* **full loop**: :func:`emdlib.train.fit` for one full-phase epoch over an in-memory dataset of the same items (adds
  the DataLoader, collation, per-epoch seeding and bookkeeping; checkpoint writing is excluded from the epoch time and
  reported separately as ``fit_wall_s_rounds``). Bare and loop measurements alternate for ``--rounds`` rounds and the
  best of each is reported, so load swings on a shared machine do not land on one side only.

Model: EMD with an ESR FER stream at the preset's encoder, input size, branch count and batch (``cpu``: xception41, 64 px,
ESR-3, batch 16).

    python benchmarks/train_throughput.py --out results/benchmarks/train_throughput.json

Writes the JSON atomically; logs progress. Timings on a shared CPU vary with load (the load average is recorded).
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

import torch

from emdlib.io import write_json
from emdlib.models.emd import EMD
from emdlib.models.esr import ESR
from emdlib.presets import get_preset
from emdlib.study.records import git_commit, machine_info
from emdlib.train import TrainConfig, device_name, fit, move_batch, resolve_device, set_trainable, train_step

log = logging.getLogger("train_throughput")


def _items(n: int, size: int, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        mask = torch.zeros(1, size, size)
        if i % 2:
            mask[:, size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 1
        out.append({"image": torch.rand(3, size, size, generator=g) * 2 - 1,
                    "fer_image": torch.rand(3, 96, 96, generator=g), "mask": mask, "label": torch.tensor(i % 2),
                    "method": "Face2Face" if i % 2 else "original", "compression": "c23", "video": f"{i:03d}",
                    "frame": 0})
    return out


def _bare(model: EMD, batch: dict, warmup: bool, steps: int, device: torch.device) -> float:
    trainable = list(model.trainable_parameters())
    opt = torch.optim.Adam(trainable, lr=1e-3, betas=(0.9, 0.999), eps=1e-8)
    set_trainable(model, trainable, warmup)
    model.train()
    batch = move_batch(batch, device)
    train_step(model, batch, opt, sync=False)  # untimed: allocator and first-call overheads
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        train_step(model, batch, opt, sync=False)
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    set_trainable(model, trainable, False)
    return steps * len(batch["label"]) / dt


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="cpu")
    p.add_argument("--steps", type=int, default=2, help="timed bare steps per measurement")
    p.add_argument("--batches", type=int, default=2, help="batches in the full-loop epoch")
    p.add_argument("--rounds", type=int, default=2, help="alternating bare/loop measurements (best is reported)")
    p.add_argument("--device", default=None)
    p.add_argument("--out", type=Path, default=Path("results/benchmarks/train_throughput.json"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    preset = get_preset(args.preset)
    cfg = preset.emd
    device = resolve_device(args.device)
    torch.manual_seed(0)
    model = EMD(ESR(num_branches=preset.fer.branches), encoder=cfg.encoder).to(device)
    items = _items(cfg.batch_size * args.batches, cfg.image_size)
    batch = torch.utils.data.default_collate(items[: cfg.batch_size])

    log.info("bare warm-up step (%s, %d px, batch %d) on %s", cfg.encoder, cfg.image_size, cfg.batch_size, device)
    bare_warm = _bare(model, batch, True, args.steps, device)
    # bare and loop measurements alternate so that load changes on a shared machine hit both alike; best of rounds
    bare_full, loop, fit_walls = [], [], []
    for r in range(args.rounds):
        log.info("round %d/%d: bare full step", r + 1, args.rounds)
        bare_full.append(_bare(model, batch, False, args.steps, device))
        log.info("round %d/%d: full loop, one epoch of %d batches", r + 1, args.rounds, args.batches)
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            res = fit(model, items, None, tmp, TrainConfig(warmup_epochs=0, epochs=1, batch_size=cfg.batch_size,
                                                           device=str(device), image_size=cfg.image_size))
            fit_walls.append(time.perf_counter() - t0)
        epoch = res["history"][-1]
        loop.append(epoch["train_images"] / epoch["seconds"])
    result = {
        "commit": git_commit(),
        "machine": machine_info(),
        "device": device_name(device),
        "torch_threads": torch.get_num_threads(),
        "load_average": list(os.getloadavg()),
        "preset": args.preset,
        "encoder": cfg.encoder,
        "image_size": cfg.image_size,
        "batch_size": cfg.batch_size,
        "fer_branches": preset.fer.branches,
        "bare_steps": args.steps,
        "loop_batches": args.batches,
        "rounds": args.rounds,
        "bare_warmup_images_per_s": round(bare_warm, 3),
        "bare_full_images_per_s": round(max(bare_full), 3),
        "loop_full_images_per_s": round(max(loop), 3),
        "loop_overhead_pct": round(100 * (max(bare_full) / max(loop) - 1), 1),
        "loop_to_bare_ratio": round(max(loop) / max(bare_full), 3),  # issue 14's target: >= 0.95
        "bare_full_images_per_s_rounds": [round(v, 3) for v in bare_full],
        "loop_full_images_per_s_rounds": [round(v, 3) for v in loop],
        "fit_wall_s_rounds": [round(v, 2) for v in fit_walls],
    }
    write_json(args.out, result)
    log.info("%s", result)
    return result


if __name__ == "__main__":
    main()
