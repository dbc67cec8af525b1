"""Benchmark: EMD training throughput at the paper's input size beside timm's bare xception65 step, in one run
(issue 14, deliverable 7; run by ``benchmarks/gpu.sh``).

Measured side by side on one device, alternating for ``--rounds`` rounds (best of each reported, so load swings hit
both sides alike):

* **EMD bare step**: :func:`emdlib.train.train_step` (FER stream + EMD forward, Eq. 8 loss, backward, Adam step) in
  the full phase (§IV-B: every layer but the frozen FER stream trains) on a batch already on the device;
* **EMD loop**: :func:`emdlib.train.fit` for one full-phase epoch over an in-memory dataset of the same items (adds
  the DataLoader, host→device copies and bookkeeping; checkpoint writing is outside the epoch time);
* **timm bare step**: ``timm.create_model(--timm-model)`` (default ``xception65``, the encoder EMD builds on) with
  a 2-class head, cross-entropy, backward and Adam step on the same batch size and input size.

On CUDA the steps run in bfloat16 autocast where the device supports it (else float16 with a grad scaler inside
``train_step``; the timm step then uses float32) with channels_last tensors and ``cudnn.benchmark``; on the CPU in
float32 (the CPU smoke test of ``gpu.sh``). FLOPs per forward are counted once per network with
``torch.utils.flop_counter.FlopCounterMode`` (2 FLOPs per multiply-add) at batch 1; achieved FLOP/s =
3 × forward FLOPs × images/s (backward ≈ 2 × forward, the usual estimate; the same factor on both sides, so their ratio
does not depend on it). Reported: images/s of each, the loop/bare ratio, achieved TFLOP/s of each and the EMD/timm
ratio, and the issue's targets (EMD ≥ 1500 img/s on one H200-class GPU, FLOP/s ratio ≥ 0.9) with whether they were met.

    python benchmarks/gpu_throughput.py --device cuda --out results/benchmarks/gpu_throughput.json
    python benchmarks/gpu_throughput.py --device cpu --image-size 64 --batch 2 --encoder xception41 \\
        --timm-model xception41 --esr-branches 2 --steps 1 --rounds 1 --out /tmp/gpu_smoke.json   # CPU smoke

Writes the JSON atomically (merged under the device's name, so CPU and GPU records live side by side); logs progress.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from emdlib.io import read_json, write_json
from emdlib.models.emd import EMD
from emdlib.models.esr import ESR
from emdlib.train import TrainConfig, _amp_dtype, device_name, fit, move_batch, resolve_device, set_trainable, train_step

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import _items  # noqa: E402  (the same in-memory items as the CPU loop benchmark)

log = logging.getLogger("gpu_throughput")
REPO = Path(__file__).resolve().parents[1]
#: Issue 14's targets for one H200-class GPU.
TARGET_EMD_IMAGES_PER_S = 1500.0
TARGET_FLOPS_RATIO = 0.9


def forward_flops(fn: Callable[[], object]) -> float:
    """FLOPs of one call of ``fn`` (a forward pass), counted by ``torch.utils.flop_counter.FlopCounterMode``."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        fn()
    return float(counter.get_total_flops())


def _timed(step: Callable[[], object], steps: int, device: torch.device) -> float:
    """Seconds for ``steps`` calls of ``step`` after one untimed call (allocator, autotuning)."""
    step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def _commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: CUDA when present)")
    p.add_argument("--image-size", type=int, default=299, help="input side in px (paper preset: 299)")
    p.add_argument("--batch", type=int, default=64, help="images per step (both networks)")
    p.add_argument("--encoder", default="xception65", help="EMD's encoder (paper preset: xception65)")
    p.add_argument("--esr-branches", type=int, default=9, help="ESR branches of EMD's FER stream (paper: 9)")
    p.add_argument("--timm-model", default="xception65", help="timm network of the bare comparison step")
    p.add_argument("--steps", type=int, default=20, help="timed steps per measurement")
    p.add_argument("--loop-batches", type=int, default=20, help="batches in the EMD loop's epoch")
    p.add_argument("--rounds", type=int, default=2, help="alternating measurements (best of each reported)")
    p.add_argument("--out", type=Path, default=REPO / "results" / "benchmarks" / "gpu_throughput.json")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    import timm

    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
    amp = _amp_dtype(device, True)  # bf16 where supported, fp16 on older GPUs, None on the CPU
    memory_format = torch.channels_last if cuda else torch.contiguous_format
    torch.manual_seed(0)

    emd = EMD(ESR(num_branches=args.esr_branches), encoder=args.encoder).to(device, memory_format=memory_format)
    items = _items(args.batch * max(args.loop_batches, 1), args.image_size)
    batch = move_batch(torch.utils.data.default_collate(items[: args.batch]), device, channels_last=cuda)
    trainable = list(emd.trainable_parameters())
    set_trainable(emd, trainable, warmup=False)
    emd.train()
    emd_opt = torch.optim.Adam(trainable, lr=1e-3)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)

    net = timm.create_model(args.timm_model, pretrained=False, num_classes=2).to(device, memory_format=memory_format)
    net.train()
    net_opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    net_amp = amp if amp == torch.bfloat16 else None  # fp16 would need a scaler; only bf16 is worth comparing

    def emd_step() -> None:
        train_step(emd, batch, emd_opt, scaler, amp, sync=False)  # no host sync, as the loop and the timm step

    def timm_step() -> None:
        net_opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=net_amp or torch.float32, enabled=net_amp is not None):
            loss = F.cross_entropy(net(batch["image"]), batch["label"])
        loss.backward()
        net_opt.step()

    one = {k: (v[:1] if torch.is_tensor(v) else v[:1]) for k, v in batch.items()}
    emd.eval()
    emd_flops = forward_flops(lambda: emd(one["image"], one["fer_image"]))
    emd.train()
    net.eval()
    timm_flops = forward_flops(lambda: net(one["image"]))
    net.train()
    log.info("forward GFLOP per image: EMD %.2f, %s %.2f", emd_flops / 1e9, args.timm_model, timm_flops / 1e9)

    emd_bare, timm_bare, emd_loop = [], [], []
    for r in range(args.rounds):
        log.info("round %d/%d: EMD bare step (%s, %d px, batch %d, %s)", r + 1, args.rounds, args.encoder,
                 args.image_size, args.batch, amp or "float32")
        emd_bare.append(args.steps * args.batch / _timed(emd_step, args.steps, device))
        log.info("round %d/%d: %s bare step", r + 1, args.rounds, args.timm_model)
        timm_bare.append(args.steps * args.batch / _timed(timm_step, args.steps, device))
        log.info("round %d/%d: EMD loop, one epoch of %d batches", r + 1, args.rounds, args.loop_batches)
        with tempfile.TemporaryDirectory() as tmp:
            res = fit(emd, items, None, tmp, TrainConfig(warmup_epochs=0, epochs=1, batch_size=args.batch,
                                                         device=str(device), image_size=args.image_size,
                                                         deterministic=False))
        epoch = res["history"][-1]
        emd_loop.append(epoch["train_images"] / epoch["seconds"])

    best_emd, best_timm, best_loop = max(emd_bare), max(timm_bare), max(emd_loop)
    emd_tflops = 3 * emd_flops * best_emd / 1e12
    timm_tflops = 3 * timm_flops * best_timm / 1e12
    record = {
        "device": device_name(device),
        "commit": _commit(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "load_average": list(os.getloadavg()),
        "torch_threads": torch.get_num_threads(),
        "dtype": str(amp or torch.float32).replace("torch.", ""),
        "channels_last": cuda,
        "cudnn_benchmark": cuda,
        "image_size": args.image_size,
        "batch": args.batch,
        "encoder": args.encoder,
        "esr_branches": args.esr_branches,
        "timm_model": args.timm_model,
        "steps": args.steps,
        "rounds": args.rounds,
        "emd_forward_gflop": round(emd_flops / 1e9, 3),
        "timm_forward_gflop": round(timm_flops / 1e9, 3),
        "emd_bare_images_per_s": round(best_emd, 2),
        "emd_loop_images_per_s": round(best_loop, 2),
        "timm_bare_images_per_s": round(best_timm, 2),
        "loop_over_bare": round(best_loop / best_emd, 3),
        "emd_tflop_per_s": round(emd_tflops, 6),
        "timm_tflop_per_s": round(timm_tflops, 6),
        "emd_over_timm_flop_per_s": round(emd_tflops / timm_tflops, 3),
        "targets": {"emd_images_per_s": TARGET_EMD_IMAGES_PER_S, "flop_per_s_ratio": TARGET_FLOPS_RATIO,
                    "apply": "one H200-class GPU at 299 px"},
        "rounds_images_per_s": {"emd_bare": [round(v, 2) for v in emd_bare],
                                "emd_loop": [round(v, 2) for v in emd_loop],
                                "timm_bare": [round(v, 2) for v in timm_bare]},
    }
    if cuda and args.image_size == 299:
        record["targets"].update(met_images_per_s=best_emd >= TARGET_EMD_IMAGES_PER_S,
                                 met_flop_per_s_ratio=emd_tflops / timm_tflops >= TARGET_FLOPS_RATIO)
    merged = read_json(args.out) if args.out.is_file() else {}
    merged[record["device"]] = record
    write_json(args.out, merged)
    log.info("%s", record)
    return record


if __name__ == "__main__":
    main()
