"""Benchmark: ESR (B branches) and SimFER on a subject-disjoint split of CK+ (48 px, 7 classes), CPU-sized.

Trains both FER streams with :func:`emdlib.train_fer.train_fer` (joint schedule, Eq. 1, official augmentation), keeps the
best epoch by validation ensemble accuracy, and reports per-branch and ensemble accuracy on the held-out subjects.
CK+ has no neutral images, so 7 of the 8 AffectNet classes occur; chance (majority class) is reported too.

    python benchmarks/fer_ckplus.py --root ../shared/data/ckplus48 --out results/benchmarks/fer_ckplus.json

Writes the JSON atomically; logs progress.
"""

from __future__ import annotations

import argparse
import logging
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from emdlib.data.expressions import EXPRESSIONS, ExpressionDataset, folder_samples, subject_id, subject_split
from emdlib.io import write_json
from emdlib.models.esr import ESR
from emdlib.models.simfer import SimFER
from emdlib.train_fer import FERTrainConfig, evaluate, train_fer

log = logging.getLogger("fer_ckplus")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/ckplus48")
    p.add_argument("--out", type=Path, default=Path("results/benchmarks/fer_ckplus.json"))
    p.add_argument("--branches", type=int, default=4)
    p.add_argument("--esr-epochs", type=int, default=8)
    p.add_argument("--simfer-epochs", type=int, default=15)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--optimizer", default="sgd", choices=["sgd", "adam"])
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--size", type=int, default=96, help="input side (official 96)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--models", nargs="+", default=["ESR", "SimFER"], choices=["ESR", "SimFER"])
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    t_all = time.time()

    samples = folder_samples(args.root)
    parts = subject_split(samples, (0.7, 0.15, 0.15), seed=args.seed)
    sets = {k: ExpressionDataset(v, size=args.size, preload=True) for k, v in parts.items()}
    split_info = {k: {"images": len(v), "subjects": len({subject_id(s.path) for s in v}),
                      "class_counts": dict(zip(EXPRESSIONS, np.bincount([s.label for s in v], minlength=8).tolist()))}
                  for k, v in parts.items()}
    test_counts = np.bincount(sets["test"].labels, minlength=8)
    log.info("split: %s", {k: (v["images"], v["subjects"]) for k, v in split_info.items()})

    results = {}
    factories = {"ESR": (lambda: ESR(args.branches), args.esr_epochs), "SimFER": (SimFER, args.simfer_epochs)}
    for name in args.models:
        make, epochs = factories[name]
        torch.manual_seed(args.seed)
        model = make()
        cfg = FERTrainConfig(epochs=epochs, batch_size=args.batch_size, lr=args.lr, optimizer=args.optimizer,
                             augment=not args.no_augment, seed=args.seed, device="cpu")
        t0 = time.time()
        summary = train_fer(model, sets["train"], sets["val"], cfg)
        test = evaluate(model, sets["test"], batch_size=64)
        results[name] = {
            "num_branches": model.num_branches,
            "parameters": sum(p.numel() for p in model.parameters()),
            "train_config": summary["train_config"],
            "best_val": {k: summary["best_val"][k] for k in ("ensemble_accuracy", "branch_accuracy")},
            "test": test,
            "history": summary["history"],
            "wall_seconds": time.time() - t0,
        }
        log.info("%s: test ensemble %.3f, branches %s, %.0f s", name, test["ensemble_accuracy"],
                 [round(a, 3) for a in test["branch_accuracy"]], time.time() - t0)

    report = {
        "benchmark": "FER on CK+ (48 px, subject-disjoint 70/15/15 split by subject)",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "root": str(args.root),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "split": split_info,
        "test_majority_class_accuracy": float(test_counts.max() / test_counts.sum()),
        "models": results,
        "wall_seconds": time.time() - t_all,
        "torch": torch.__version__,
        "machine": f"{platform.machine()} {platform.processor()} threads={args.threads}",
    }
    write_json(args.out, report)
    log.info("wrote %s (%.0f s)", args.out, report["wall_seconds"])
    return report


if __name__ == "__main__":
    main()
