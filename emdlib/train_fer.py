"""Training and evaluation of the FER stream (paper §III-C, Eq. 1; official schedule reference-facts §A.5).

* :func:`fer_loss` — Eq. 1: the sum over branches of each branch's cross-entropy (mean over the batch).
* :func:`train_fer` — trains an :class:`~emdlib.models.esr.ESR` (or :class:`~emdlib.models.simfer.SimFER`) on an
  expression set. Two schedules:

  - ``"joint"`` (default, small presets): all branches from the start, SGD (momentum 0.9) with one learning rate and
    StepLR — the same loss, the same optimiser family, far fewer epochs;
  - ``"grow"`` (the official ESR schedule, reference-facts §A.5): base + branch 1 for ``first_epochs`` at lr 0.1;
    then, for each further branch, reload the best ensemble, add the branch and train ``branch_epochs`` with the
    newest branch at lr 0.1 and the base and older branches at 0.01; StepLR(10, 0.5) re-created every phase.

  Both validate on the first epoch of a phase and then every ``val_every`` epochs, and on its last epoch (official:
  ``epoch % 2 == 0`` counted from 0, and the last), and keep the state with the best validation **ensemble**
  (majority-vote) accuracy (ties: the later one, as the official ``>=``). Augmentation is the official one
  (:func:`fer_augmentation`). With ``max_per_class`` each phase trains on a fresh class-capped sample of the
  training set (official: at most 5,000 AffectNet images per class, re-sampled for each new branch;
  :func:`class_capped_indices`).
* :func:`evaluate` — per-branch accuracy, ensemble accuracy (Eq. 4 vote) and the ensemble confusion matrix.
* Checkpoints go through :mod:`emdlib.registry` (:func:`~emdlib.registry.save_fer_stream`, read back with
  :func:`~emdlib.registry.model_from_checkpoint`); the study's FER stage is :mod:`emdlib.study.fer`.

Everything is seeded (``FERTrainConfig.seed``): model init, shuffling and augmentation draw from torch's RNG.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
# tqdm.asyncio, not tqdm.auto: plain-text bars, never ipywidgets (which executed notebooks cannot show outside
# Jupyter). Not plain tqdm either: the asyncio variant (which tqdm.auto also builds on) makes one iterator of the
# DataLoader when the bar is created, and that iterator draws from the loader's seeded generator; the shuffle order
# of every recorded run depends on that draw, so changing the bar class would change the results.
from tqdm.asyncio import tqdm

from emdlib.data.expressions import EXPRESSIONS
from emdlib.models.esr import ESR, FERStream, ensemble_vote_from_logits
from emdlib.presets import FER_SCHEDULES, FERConfig
from emdlib.registry import save_fer_stream
from emdlib.train import make_optimizer

log = logging.getLogger(__name__)

SCHEDULES = FER_SCHEDULES


@dataclass(frozen=True)
class FERTrainConfig:
    """Hyper-parameters of :func:`train_fer`; defaults = the official optimiser (reference-facts §A.5), few epochs."""

    schedule: str = "joint"  # joint | grow
    epochs: int = 2  # joint: all epochs; grow: ignored (first_epochs / branch_epochs)
    first_epochs: int = 50  # grow: base + branch 1
    branch_epochs: int = 20  # grow: each further branch
    batch_size: int = 32
    lr: float = 0.1  # joint: every parameter; grow: base + branch 1 in phase 1, the newest branch later
    later_lr: float = 0.01  # grow: base and older branches after phase 1
    optimizer: str = "sgd"  # sgd (official, momentum 0.9) | adam (faster start on small sets)
    momentum: float = 0.9
    weight_decay: float = 0.0
    lr_step: int = 10  # StepLR step (epochs)
    lr_gamma: float = 0.5
    val_every: int = 1  # official: 2
    max_per_class: int | None = None  # official: 5000, a new sample per phase (None: the whole training set)
    augment: bool = True
    num_workers: int = 0
    seed: int = 0
    device: str | None = None  # None: cuda when available

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown FER schedule {self.schedule!r}; choose one of {SCHEDULES}")
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose 'sgd' or 'adam'")
        if self.val_every < 1:
            raise ValueError(f"val_every must be >= 1, got {self.val_every}")
        if self.max_per_class is not None and self.max_per_class < 1:
            raise ValueError(f"max_per_class must be >= 1 or None, got {self.max_per_class}")

    @classmethod
    def from_preset(cls, fer: FERConfig, **overrides: Any) -> "FERTrainConfig":
        """From a preset's :class:`emdlib.presets.FERConfig`: schedule, epochs (``epochs``; ``first_epochs`` and
        ``branch_epochs`` of ``grow``), batch size, learning rates, optimiser, validation interval, class cap and
        loader workers; the other fields keep their defaults (momentum 0.9, StepLR(10, 0.5), augmentation on,
        seed 0). ``overrides`` replace any field."""
        base = {"schedule": fer.schedule, "epochs": fer.epochs, "first_epochs": fer.first_epochs,
                "branch_epochs": fer.branch_epochs, "batch_size": fer.batch_size, "lr": fer.lr,
                "later_lr": fer.later_lr, "optimizer": fer.optimizer, "val_every": fer.val_every,
                "max_per_class": fer.max_per_class, "num_workers": fer.workers}
        return cls(**{**base, **overrides})


def fer_augmentation() -> nn.Module:
    """The official ESR training augmentation (reference-facts §A.5), applied to ESR-convention tensors.

    ColorJitter(brightness 0.5, contrast 0.5), RandomHorizontalFlip(0.5), RandomAffine(30°, translate 0.1,
    scale 1–1.25, bilinear). The official code jitters the BGR image as if it were RGB; so do we.
    """
    from torchvision.transforms import InterpolationMode, v2

    return v2.Compose([
        v2.ColorJitter(brightness=0.5, contrast=0.5),
        v2.RandomHorizontalFlip(0.5),
        v2.RandomAffine(degrees=30, translate=(0.1, 0.1), scale=(1.0, 1.25), interpolation=InterpolationMode.BILINEAR),
    ])


def fer_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Eq. 1: ``L_FER = Σ_b CE_b``, each branch's cross-entropy averaged over the batch. ``logits`` ``(N, B, C)``."""
    if logits.ndim != 3:
        raise ValueError(f"expected branch logits (N, B, C), got {tuple(logits.shape)}")
    n, b, c = logits.shape
    return F.cross_entropy(logits.reshape(n * b, c), labels.repeat_interleave(b), reduction="sum") / n


def _optimizer(params: Any, cfg: FERTrainConfig) -> torch.optim.Optimizer:
    return make_optimizer(params, cfg.optimizer, cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def _device(cfg: FERTrainConfig) -> torch.device:
    return torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))


def _outputs(model: FERStream, x: torch.Tensor, branches: Sequence[int] | None) -> torch.Tensor:
    if branches is not None and isinstance(model, ESR):
        return model.branch_outputs(x, branches)[1]
    return model(x)


def class_capped_indices(labels: Sequence[int] | np.ndarray, max_per_class: int,
                         seed: int | Sequence[int] = 0) -> np.ndarray:
    """Indices of a sample with at most ``max_per_class`` items of each class, drawn without replacement (a class
    with fewer items is taken whole); sorted. Official ESR training (reference-facts §A.5): at most 5,000 AffectNet
    images per class, a new random sample for each new branch.

    ``labels``: ``(N,)`` class indices; ``seed`` (an int or a sequence of ints) seeds a NumPy generator of its own
    (torch's RNG is not touched).
    Raises ValueError for ``max_per_class < 1``.
    """
    if max_per_class < 1:
        raise ValueError(f"max_per_class must be >= 1, got {max_per_class}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    keep = [rng.permutation(np.flatnonzero(labels == c))[:max_per_class] for c in np.unique(labels)]
    return np.sort(np.concatenate(keep)) if keep else np.zeros(0, dtype=np.int64)


def _phase_sample(train_set: Dataset, cfg: FERTrainConfig, phase: int) -> Dataset:
    """The training data of one phase: ``train_set`` itself, or a class-capped sample (``cfg.max_per_class``) drawn
    with seed ``(cfg.seed, phase)``. The dataset must expose ``labels`` (e.g. :class:`ExpressionDataset`)."""
    if cfg.max_per_class is None:
        return train_set
    labels = getattr(train_set, "labels", None)
    if labels is None:
        raise ValueError(f"max_per_class={cfg.max_per_class} needs a training set with `labels` "
                         f"(an ExpressionDataset), got {type(train_set).__name__}")
    idx = class_capped_indices(labels, cfg.max_per_class, seed=(cfg.seed, phase))
    log.info("FER phase %d: %d of %d training images (at most %d per class)", phase, len(idx), len(labels),
             cfg.max_per_class)
    return Subset(train_set, idx.tolist())


def _loader(data: Dataset | DataLoader, batch_size: int, shuffle: bool = False, seed: int = 0, workers: int = 0):
    if isinstance(data, DataLoader):
        return data
    g = torch.Generator().manual_seed(seed)
    return DataLoader(data, batch_size=batch_size, shuffle=shuffle, generator=g, num_workers=workers,
                      pin_memory=torch.cuda.is_available())


@torch.no_grad()
def evaluate(
    model: FERStream,
    data: Dataset | DataLoader,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    branches: Sequence[int] | None = None,
    class_names: Sequence[str] = EXPRESSIONS,
) -> dict[str, Any]:
    """Per-branch and ensemble accuracy and the ensemble confusion matrix (rows = truth, columns = vote).

    The ensemble class is the majority vote of the (selected) branches, Eq. 4 with ties to the lowest class index.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    c = len(class_names)
    confusion = np.zeros((c, c), dtype=np.int64)
    correct_b: np.ndarray | None = None
    n = 0
    loss = 0.0
    for x, y in _loader(data, batch_size):
        x, y = x.to(device), y.to(device)
        logits = _outputs(model, x, branches)
        loss += float(fer_loss(logits, y)) * len(y)
        hits = (logits.argmax(-1) == y[:, None]).sum(0).cpu().numpy()
        correct_b = hits if correct_b is None else correct_b + hits
        vote = ensemble_vote_from_logits(logits)
        np.add.at(confusion, (y.cpu().numpy(), vote.cpu().numpy()), 1)
        n += len(y)
    model.train(was_training)
    if n == 0:
        raise ValueError("evaluate: empty data set")
    return {
        "n": n,
        "loss": loss / n,
        "branch_accuracy": (correct_b / n).tolist(),
        "ensemble_accuracy": float(np.trace(confusion) / n),
        "confusion": confusion.tolist(),
        "class_names": list(class_names),
    }


def _train_epochs(
    model: FERStream,
    train: DataLoader,
    val: Dataset | None,
    optimizer: torch.optim.Optimizer,
    epochs: int,
    cfg: FERTrainConfig,
    device: torch.device,
    branches: Sequence[int] | None,
    phase: str,
    history: list[dict],
) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """Train ``epochs`` epochs; return the best state (by validation ensemble accuracy) and its metrics."""
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.lr_step, gamma=cfg.lr_gamma)
    best_state, best = None, None
    bar = tqdm(range(epochs), desc=f"FER {phase}", leave=False, disable=None)
    for epoch in bar:
        model.train()
        t0, total, seen, hits = time.time(), 0.0, 0, 0
        for x, y in tqdm(train, desc=f"epoch {epoch + 1}", leave=False, disable=None):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            logits = _outputs(model, x, branches)
            loss = fer_loss(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(y)
            seen += len(y)
            hits += int((ensemble_vote_from_logits(logits.detach()) == y).sum())
        scheduler.step()
        row = {"phase": phase, "epoch": epoch + 1, "train_loss": total / max(seen, 1),
               "train_ensemble_accuracy": hits / max(seen, 1), "seconds": time.time() - t0}
        last = epoch + 1 == epochs
        if val is not None and (epoch % cfg.val_every == 0 or last):  # official: epoch % 2 == 0 (from 0), or last
            m = evaluate(model, val, cfg.batch_size, device, branches)
            row.update(val_loss=m["loss"], val_ensemble_accuracy=m["ensemble_accuracy"],
                       val_branch_accuracy=m["branch_accuracy"])
            if best is None or m["ensemble_accuracy"] >= best["ensemble_accuracy"]:
                best, best_state = m, copy.deepcopy(model.state_dict())
        elif val is None and last:
            best_state = copy.deepcopy(model.state_dict())
        history.append(row)
        bar.set_postfix(loss=f"{row['train_loss']:.3f}", val=f"{row.get('val_ensemble_accuracy', float('nan')):.3f}")
        log.info("FER %s epoch %d/%d: %s", phase, epoch + 1, epochs,
                 {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items() if k != "phase"})
    return best_state, best


def train_fer(
    model: FERStream,
    train_set: Dataset,
    val_set: Dataset | None = None,
    cfg: FERTrainConfig = FERTrainConfig(),
    checkpoint: str | os.PathLike | None = None,
    extra_meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train ``model`` on ``train_set`` with Eq. 1 (see module docstring for the schedules); return a summary.

    The model ends holding the best state; when ``checkpoint`` is given it is saved there with
    :func:`emdlib.registry.save_fer_stream`. ``train_set`` items are ``(image (3, 96, 96) BGR [0, 1], label)``; when
    ``cfg.augment`` and the dataset has a ``transform`` attribute that is ``None``, the official augmentation is
    set on it for training only.
    """
    torch.manual_seed(cfg.seed)
    device = _device(cfg)
    model.to(device)
    restore_transform = False
    if cfg.augment and getattr(train_set, "transform", "absent") is None:
        train_set.transform = fer_augmentation()
        restore_transform = True
    t0 = time.time()
    history: list[dict] = []
    n_seen: list[int] = []

    def phase_loader(phase: int) -> DataLoader:
        data = _phase_sample(train_set, cfg, phase)
        n_seen.append(len(data))
        return _loader(data, cfg.batch_size, shuffle=True, seed=cfg.seed, workers=cfg.num_workers)

    try:
        train = phase_loader(1)
        if cfg.schedule == "joint" or not isinstance(model, ESR) or model.num_branches == 1:
            epochs = cfg.epochs if cfg.schedule == "joint" else cfg.first_epochs
            opt = _optimizer(model.parameters(), cfg)
            state, best = _train_epochs(model, train, val_set, opt, epochs, cfg, device, None, "joint", history)
        else:
            state, best = None, None
            for k in range(1, model.num_branches + 1):
                if k > 1 and cfg.max_per_class is not None:
                    train = phase_loader(k)  # official: a new class-capped sample for each new branch
                if state is not None:
                    model.load_state_dict(state)  # the best ensemble so far (official: reload, then add a branch)
                active = list(range(k))
                if k == 1:
                    groups = [{"params": model.base.parameters(), "lr": cfg.lr},
                              {"params": model.branches[0].parameters(), "lr": cfg.lr}]
                    epochs = cfg.first_epochs
                else:
                    groups = [{"params": model.base.parameters(), "lr": cfg.later_lr},
                              {"params": model.branches[k - 1].parameters(), "lr": cfg.lr}]
                    groups += [{"params": model.branches[b].parameters(), "lr": cfg.later_lr} for b in range(k - 1)]
                    epochs = cfg.branch_epochs
                opt = _optimizer(groups, cfg)
                state, best = _train_epochs(model, train, val_set, opt, epochs, cfg, device, active,
                                            f"branch {k}/{model.num_branches}", history)
        if state is not None:
            model.load_state_dict(state)
    finally:
        if restore_transform:
            train_set.transform = None
    summary = {
        "model": model.spec(),
        "train_config": dataclasses.asdict(cfg),
        "best_val": best,
        "history": history,
        "train_seconds": time.time() - t0,
        "n_train": len(train_set),
        "n_train_per_phase": n_seen,
        "n_val": len(val_set) if val_set is not None else 0,
    }
    if checkpoint is not None:
        summary["checkpoint"] = str(checkpoint)
        summary["sha256"] = save_fer_stream(checkpoint, model, {
            "train_config": summary["train_config"], "metrics": best, "history": history, **(extra_meta or {})})
    return summary
