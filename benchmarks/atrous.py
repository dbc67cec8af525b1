"""Benchmark: one EMD training step at the ``cpu`` preset's sizes with ASPP's atrous convolutions as
:class:`emdlib.models.atrous.AtrousConv2d` (centre tap on a map no larger than the rate) and as plain dilated
``nn.Conv2d`` — the same initial weights, the same fixed batch, steps alternating between the two models so that load
swings hit both alike. Also each ASPP atrous convolution alone (forward + backward). Reported: median seconds per
step, the ratio, and the largest output / gradient difference of the two models on the first step.

    python benchmarks/atrous.py --out results/benchmarks/atrous.json

Writes one JSON record (machine, load average before/after, commit, settings, times, ratio); logs progress.
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import statistics
import subprocess
import time
from pathlib import Path

import torch
import torch.nn as nn

from emdlib.io import write_json
from emdlib.models.atrous import AtrousConv2d
from emdlib.models.emd import EMD
from emdlib.presets import get_preset
from emdlib.study.records import machine_info
from emdlib.train import set_trainable, train_step

log = logging.getLogger("atrous")


def plain_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` whose :class:`AtrousConv2d` modules are plain ``nn.Conv2d`` again."""
    model = copy.deepcopy(model)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, AtrousConv2d):
                child.__class__ = nn.Conv2d
    return model


def step_seconds(models: dict[str, nn.Module], batch: dict, rounds: int) -> tuple[dict[str, list[float]], dict]:
    opts = {}
    for name, m in models.items():
        trainable = list(m.trainable_parameters())
        set_trainable(m, trainable, warmup=False)
        m.train()
        opts[name] = torch.optim.Adam(trainable, lr=1e-3)
    # first step, untimed: outputs and gradients of the two models compared
    diffs = {}
    outs = {name: m(batch["image"], None) for name, m in models.items()}
    for name, m in models.items():
        loss, _ = m.compute_loss(outs[name], batch)
        loss.backward()
    a, b = models.values()
    diffs["logits"] = float((outs["centre_tap"].logits - outs["dilated"].logits).abs().max())
    diffs["grad"] = max(float((p.grad - q.grad).abs().max()) for p, q in zip(a.parameters(), b.parameters())
                        if p.grad is not None)
    times: dict[str, list[float]] = {name: [] for name in models}
    for r in range(rounds):
        for name, m in models.items():
            t0 = time.perf_counter()
            train_step(m, batch, opts[name])
            times[name].append(time.perf_counter() - t0)
        log.info("round %d/%d: %s", r + 1, rounds, {k: round(v[-1], 3) for k, v in times.items()})
    return times, diffs


def conv_seconds(channels: int, size: int, rate: int, batch: int, rounds: int) -> dict[str, float]:
    conv = nn.Conv2d(channels, channels, 3, padding=rate, dilation=rate, groups=channels, bias=False)
    x = torch.randn(batch, channels, size, size, requires_grad=True)
    out = {}
    for name in ("dilated", "centre_tap"):
        conv.__class__ = AtrousConv2d if name == "centre_tap" else nn.Conv2d
        conv(x).sum().backward()
        ts = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            conv(x).sum().backward()
            ts.append(time.perf_counter() - t0)
        out[name] = statistics.median(ts)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--out", type=Path, default=Path("results/benchmarks/atrous.json"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    preset = get_preset(args.preset)
    size, n = preset.emd.image_size, preset.emd.batch_size
    load_before = os.getloadavg()
    torch.manual_seed(0)
    model = EMD(None, encoder=preset.emd.encoder)
    models = {"centre_tap": model, "dilated": plain_copy(model)}
    g = torch.Generator().manual_seed(3)
    batch = {"image": torch.rand(n, 3, size, size, generator=g) * 2 - 1,
             "mask": (torch.rand(n, 1, size, size, generator=g) > 0.5).float(), "label": torch.arange(n) % 2}
    times, diffs = step_seconds(models, batch, args.rounds)
    med = {k: statistics.median(v) for k, v in times.items()}
    grid = model.encoder_grid(size)
    convs = {f"rate {r}": conv_seconds(2048, grid[0], r, n, args.rounds) for r in (6, 12, 18)}
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    record = {"benchmark": "atrous", "commit": commit, "machine": machine_info(), "load_before": load_before,
              "load_after": os.getloadavg(), "preset": args.preset, "encoder": preset.emd.encoder, "image_size": size,
              "batch_size": n, "encoder_grid": grid, "rounds": args.rounds,
              "step_seconds_median": med, "speedup": med["dilated"] / med["centre_tap"],
              "step_seconds": times, "first_step_max_abs_diff": diffs,
              "aspp_conv_fwd_bwd_seconds_median": convs}
    write_json(args.out, record)
    log.info("EMD step: dilated %.3f s, centre tap %.3f s (%.2fx); wrote %s", med["dilated"], med["centre_tap"],
             record["speedup"], args.out)


if __name__ == "__main__":
    main()
