"""Training protocol of the manipulation stream (paper §III-D Eqs. 6–8, §III-E Algorithm 1, §IV-B).

One loop for EMD, its variants and every trainable baseline, through the detector contract
(:class:`emdlib.models.detector.DetectorNet`):

* ``model(image, fer_image) -> DetectorOutput(logits (N,2), mask_logits (N,1,S,S) or None, extras)``;
* loss: ``model.compute_loss(output, batch) -> (loss, parts)`` — Eq. 8 by default
  (:func:`emdlib.models.detector.manipulation_loss`: Eq. 6 cross-entropy on the class logits + Eq. 7 per-pixel BCE
  on the mask logits), the baseline's own loss where its paper trains with another;
* warm-up (§IV-B "we fix all weights up to the last convolutional layer and pre-train the network for 3 epochs"):
  only ``model.warmup_parameters()`` train; then the whole network (``model.trainable_parameters()``, e.g. EMD
  excludes its frozen FER stream) for the remaining epochs; ``model.after_step()`` after every optimiser step;
  ``model.select_samples(epoch, total, batches)`` before every epoch for a network that overrides it (LAE);
* Adam (lr 1e-3, β 0.9/0.999, ε 1e-8), batch 16 (a baseline's own optimiser and batch from its recipe,
  :mod:`emdlib.recipes`, via :func:`make_optimizer`); the best model by validation accuracy (ties: lower validation
  loss, :func:`is_better`) is kept (``best.safetensors``) and loaded back into the model at the end.

Engineering: CUDA with AMP (bf16 where supported, else fp16 with a grad scaler) and channels_last, CPU otherwise;
on CUDA batches come through pinned memory and are copied ``non_blocking``, and the loop adds no wait for the GPU
inside a training step (a network may: the FER memo hashes its input on the host, fp16's grad scaler reads its
scale): the loss parts are summed on the device and read once per :data:`LOG_EVERY` steps (progress bar,
non-finite check) and at the epoch's end (loader workers: :func:`loader_workers`). Where the training flips come from
is ``TrainConfig.flip_rng`` (``emd.flip_rng``): ``"global"`` (tiny, cpu: the committed results) draws them in the
dataset from the global RNG of the loading process, so workers are re-created every epoch to be re-seeded from
``(seed, epoch)`` (which is what makes a resumed run end where an uninterrupted one does) and a run's batches depend
on its number of workers; ``"sampler"`` (faces, paper) draws them in the main process
(:class:`emdlib.data.datasets.FlipSampler` over a ``DistributedSampler``, one process or N), so the batches are the
same with any number of workers, which persist across epochs;
seeded and deterministic (the shuffle order and every RNG are re-seeded from ``(seed, epoch)`` at each epoch start);
``last.safetensors`` (model + flattened optimiser state + RNG states; scalars in the JSON sidecar, nothing pickled) is
written after every epoch, and :func:`fit` resumes from it, ending exactly where an uninterrupted run ends.

Data parallel (``torchrun --nproc_per_node=N``, or :func:`emdlib.distributed.launch`): when a ``torch.distributed``
process group of N > 1 processes is initialised, :func:`fit` wraps the network in ``DistributedDataParallel``
(gradients all-reduced; optionally ``SyncBatchNorm``, ``TrainConfig.sync_bn``), draws each rank's batches with a
``DistributedSampler`` (``set_epoch`` every epoch), splits the GLOBAL ``batch_size`` into ``batch_size / N`` per
process, computes validation accuracy and losses over all ranks' shards together, and only rank 0 writes
checkpoints (the unwrapped module's ``state_dict``: a DDP checkpoint loads in one process and vice versa).
:func:`predict` shards the data without padding and gathers every rank's predictions in dataset order. Without a
process group (``WORLD_SIZE`` unset or 1) nothing of this runs: same RNG draws, batches, losses and checkpoints.

:func:`predict` turns a model and a dataset into the numpy arrays :mod:`emdlib.metrics` consumes.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, SequentialSampler, Subset
# tqdm.asyncio, not tqdm.auto: plain-text bars, never ipywidgets (which executed notebooks cannot show outside
# Jupyter). Not plain tqdm either: the asyncio variant (which tqdm.auto also builds on) makes one iterator of the
# DataLoader when the bar is created, and that iterator draws from the loader's seeded generator; the shuffle order
# of every recorded run depends on that draw, so changing the bar class would change the results.
from tqdm.asyncio import tqdm

from emdlib import distributed
from emdlib.checkpoint import CheckpointError, load_checkpoint, load_meta, repair_sidecar, save_checkpoint
from emdlib.io import remove_stale_temps
from emdlib.data.datasets import FlipSampler
from emdlib.models.detector import DetectorNet, DetectorOutput
from emdlib.presets import FLIP_RNGS, EMDConfig

log = logging.getLogger(__name__)

LAST = "last.safetensors"
BEST = "best.safetensors"
#: Sidecar keys a training-state checkpoint (``last.safetensors``) must have to be resumed.
TRAINING_STATE_KEYS: tuple[str, ...] = ("kind", "epoch", "config", "optimizer", "rng")
#: Optimisers :func:`make_optimizer` builds.
OPTIMIZERS: tuple[str, ...] = ("adam", "sgd")


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of §IV-B (defaults = the paper) plus engineering switches.

    ``epochs`` counts the full-network epochs *after* the ``warmup_epochs`` (paper: 3 + 20). The optimiser
    (:func:`make_optimizer`): ``optimizer`` ``"adam"`` (``betas``, ``eps``) or ``"sgd"`` (``momentum``), ``lr`` and
    ``weight_decay`` (L2) for both; the defaults are EMD's Adam (§IV-B). A baseline's values come from its recipe
    (:mod:`emdlib.recipes`). Raises ValueError for another optimiser name.

    ``batch_size`` is the GLOBAL batch: under data parallelism with N processes each takes ``batch_size / N``
    (:func:`emdlib.distributed.per_rank_batch`), so one optimiser step always sees ``batch_size`` images.
    ``sync_bn``: with N > 1 processes on CUDA, BatchNorm layers become ``torch.nn.SyncBatchNorm`` (batch statistics
    over the global batch); ignored in a single process.
    ``flip_rng``: where the training flips are drawn, ``"global"`` or ``"sampler"`` (:data:`emdlib.presets.FLIP_RNGS`,
    module docstring); ValueError for another value.
    """

    warmup_epochs: int = 3
    epochs: int = 20
    batch_size: int = 16
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    optimizer: str = "adam"
    momentum: float = 0.0  # sgd only
    weight_decay: float = 0.0
    seed: int = 0
    num_workers: int = 0
    device: str | None = None  # None: CUDA when present, else CPU
    amp: bool = True  # only on CUDA
    channels_last: bool = True  # only on CUDA
    deterministic: bool = True
    image_size: int | None = None  # recorded in checkpoint sidecars (emd detect needs it)
    max_batches: int | None = None  # cap on training batches per epoch (smoke runs); None = the whole set
    precise_bn: bool = False  # BatchNorm population statistics before each validation (recompute_bn_statistics)
    sync_bn: bool = False  # data parallel on CUDA only: SyncBatchNorm (statistics over the global batch)
    cudnn_benchmark: bool = False  # CUDA only: cuDNN autotuning (EMDConfig.cudnn_benchmark)
    flip_rng: str = "global"  # where training flips are drawn (EMDConfig.flip_rng)

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose one of {OPTIMIZERS}")
        if self.flip_rng not in FLIP_RNGS:
            raise ValueError(f"unknown flip_rng {self.flip_rng!r}; choose one of {FLIP_RNGS}")

    @property
    def total_epochs(self) -> int:
        return self.warmup_epochs + self.epochs

    @classmethod
    def from_preset(cls, cfg: EMDConfig, seed: int = 0, **overrides: Any) -> "TrainConfig":
        """From a preset's :class:`emdlib.presets.EMDConfig`: warm-up and full epochs, batch size, learning rate,
        image size, the smoke-test batch cap, ``sync_bn``, ``cudnn_benchmark`` and ``flip_rng``; the other fields
        keep their defaults (the paper's)."""
        base = dict(warmup_epochs=cfg.warmup_epochs, epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr,
                    seed=seed, image_size=cfg.image_size, max_batches=cfg.max_batches, sync_bn=cfg.sync_bn,
                    cudnn_benchmark=cfg.cudnn_benchmark, flip_rng=cfg.flip_rng)
        return cls(**{**base, **overrides})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def make_optimizer(params: Iterable[nn.Parameter], name: str = "adam", lr: float = 1e-3, *,
                   betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, momentum: float = 0.0,
                   weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """``torch.optim.Adam(params, lr, betas, eps, weight_decay)`` or ``torch.optim.SGD(params, lr, momentum,
    weight_decay)``; ``betas``/``eps`` apply to Adam only, ``momentum`` to SGD only. The defaults are EMD's §IV-B
    Adam. Raises ValueError for another ``name`` (:data:`OPTIMIZERS`)."""
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {OPTIMIZERS}")


# ------------------------------------------------------------------------------------------------------------------
# Devices, batches, seeding
# ------------------------------------------------------------------------------------------------------------------


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """CUDA when present (and not overridden), else CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def device_name(device: torch.device) -> str:
    """Human-readable device name for run records (GPU model, or the CPU)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _amp_dtype(device: torch.device, enabled: bool) -> torch.dtype | None:
    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def move_batch(batch: Mapping[str, Any], device: torch.device, channels_last: bool = False) -> dict[str, Any]:
    """Tensors to ``device`` (images channels_last when asked); strings and lists stay as they are."""
    out: dict[str, Any] = {}
    for k, v in batch.items():
        if torch.is_tensor(v):
            v = v.to(device, non_blocking=True)
            if channels_last and v.ndim == 4 and k in ("image", "fer_image"):
                v = v.contiguous(memory_format=torch.channels_last)
        out[k] = v
    return out


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _epoch_seed(seed: int, epoch: int) -> int:
    return (int(seed) * 1_000_003 + int(epoch) * 7_919) % (2**63 - 1)


def set_deterministic(enabled: bool = True) -> None:
    """cuDNN deterministic, no benchmark; deterministic algorithms where PyTorch has them (warn otherwise).

    Also sets ``CUBLAS_WORKSPACE_CONFIG`` (needed for deterministic cuBLAS) unless the user set it; it only takes
    effect when CUDA has not been initialised yet in this process.
    """
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = not enabled
    torch.backends.cudnn.deterministic = enabled
    torch.use_deterministic_algorithms(enabled, warn_only=True)


def loader_workers(device: torch.device, cap: int = 8) -> int:
    """DataLoader worker processes for training on ``device``: none on the CPU (its cores compute the network; and
    the CPU study's batches stay those of the committed results), on a GPU the CPU cores this process may use shared
    by the training processes of this node (``LOCAL_WORLD_SIZE``, set by torchrun), at most ``cap``."""
    if device.type != "cuda":
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    local = int(os.environ.get("LOCAL_WORLD_SIZE", distributed.world_size()))
    return max(1, min(cap, cores // max(1, local)))


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool, seed: int = 0, num_workers: int = 0,
                pin_memory: bool = False, sampler: Sampler | None = None, persistent: bool = False) -> DataLoader:
    """A seeded DataLoader. Training drops a final batch of size 1 (BatchNorm cannot train on it).

    ``sampler`` (a ``DistributedSampler``, which shuffles itself, or a :class:`emdlib.data.datasets.FlipSampler`
    over one) replaces ``shuffle``'s order; the final batch of size 1 is counted on the sampler's share
    (``len(sampler)``). ``persistent``: with ``num_workers > 0`` the workers outlive an epoch
    (``persistent_workers``; only for datasets whose items do not depend on the workers' RNG: ``flip_rng="sampler"``).
    """
    persistent = persistent and num_workers > 0
    if sampler is not None:
        n = len(sampler)
        drop_last = shuffle and n % batch_size == 1 and n > 1
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last,
                          num_workers=num_workers, generator=torch.Generator().manual_seed(seed),
                          pin_memory=pin_memory, persistent_workers=persistent)
    drop_last = shuffle and len(dataset) % batch_size == 1 and len(dataset) > 1
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last, num_workers=num_workers,
                      generator=torch.Generator().manual_seed(seed), pin_memory=pin_memory,
                      persistent_workers=persistent)


def flip_sampler(dataset: Dataset, base: Sampler[int], seed: int) -> Sampler:
    """``base`` with the training flips drawn in the main process (:class:`emdlib.data.datasets.FlipSampler`) when
    ``dataset`` flips (an ``augment`` attribute that is true, as :class:`~emdlib.data.datasets.ManipulationDataset`
    has), else ``base`` itself (its items take no flip)."""
    return FlipSampler(base, len(dataset), seed) if getattr(dataset, "augment", False) else base


#: Sidecar config keys a resumed training state may lack (written before they existed): read at these defaults.
OLD_DEFAULTS: tuple[str, ...] = ("optimizer", "flip_rng")

#: Training steps between two reads of the loss sums from the device in :func:`fit` (progress bar, non-finite check).
LOG_EVERY = 25
#: Within an epoch, :func:`fit` logs a progress line (batch, images/s, time left) at most this often, in seconds:
#: the progress bar lives in the notebook, and a batch job's log would otherwise be silent for a whole epoch.
PROGRESS_SECONDS = 60.0


def _progress_line(epoch: int, epochs: int, batch: int, batches: int, images: int, seconds: float) -> None:
    """Log ``epoch e/E: batch b/B, R img/s, about M min left in the epoch`` (``images``: over every process)."""
    rate = images / max(seconds, 1e-9)
    left = (batches - batch) * seconds / max(batch, 1)
    log.info("epoch %d/%d: batch %d/%d, %.1f img/s, about %.0f min left in the epoch", epoch + 1, epochs, batch,
             batches, rate, left / 60)


# ------------------------------------------------------------------------------------------------------------------
# One step, validation
# ------------------------------------------------------------------------------------------------------------------


def forward(model: DetectorNet, batch: Mapping[str, Any]) -> DetectorOutput:
    """``model(image, fer_image)`` (``fer_image`` None when the batch has none)."""
    return model(batch["image"], batch.get("fer_image"))


def compute_loss(model: DetectorNet, output: DetectorOutput, batch: Mapping[str, Any]
                 ) -> tuple[torch.Tensor, dict[str, float]]:
    """``model.compute_loss`` with its parts as floats and ``"loss"`` (the total) always among them: the parts of
    :func:`loss_parts_on_device`, read back to the host."""
    loss, parts = loss_parts_on_device(model, output, batch)
    return loss, {k: float(v) for k, v in parts.items()}


def loss_parts_on_device(model: DetectorNet, output: DetectorOutput, batch: Mapping[str, Any]
                         ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """As :func:`compute_loss`, but each part a detached 0-d float64 tensor on the loss's device: nothing is read
    back to the host (no synchronisation with the GPU). float64 holds a float32 part exactly, so sums of these are
    the sums :func:`compute_loss`'s floats give, bit for bit."""
    loss, parts = model.compute_loss(output, batch)
    out = {k: (v.detach() if torch.is_tensor(v) else torch.tensor(v)).to(loss.device, torch.float64)
           for k, v in parts.items()}
    out.setdefault("loss", loss.detach().to(torch.float64))
    return loss, out


def train_step(model: DetectorNet, batch: Mapping[str, Any], optimizer: torch.optim.Optimizer,
               scaler: torch.amp.GradScaler | None = None, amp_dtype: torch.dtype | None = None,
               net: nn.Module | None = None, sync: bool = True) -> dict[str, float] | dict[str, torch.Tensor]:
    """One optimisation step on a batch already on the model's device; returns the loss parts.

    ``sync`` (default): the parts as floats, and FloatingPointError for a non-finite loss. ``sync=False``: the parts
    as device tensors (:func:`loss_parts_on_device`) and no check here — nothing waits for the GPU inside the step;
    :func:`fit` reads its sums once per :data:`LOG_EVERY` steps and checks them then.

    ``model.after_step()`` is called after every optimiser step (e.g. Bayar & Stamm's constraint projection).
    ``net``: the module the forward pass goes through when it is not ``model`` itself — its
    ``DistributedDataParallel`` wrapper, which all-reduces (averages) the gradients over the processes.
    """
    optimizer.zero_grad(set_to_none=True)
    device_type = batch["image"].device.type
    with torch.autocast(device_type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        output = forward(model if net is None else net, batch)
        loss, parts = (compute_loss if sync else loss_parts_on_device)(model, output, batch)
    if sync and not torch.isfinite(loss):
        raise FloatingPointError(f"non-finite training loss {parts}")
    if scaler is not None and scaler.is_enabled():
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()
    model.after_step()
    return parts


@torch.no_grad()
def validate(model: DetectorNet, loader: Iterable[Mapping[str, Any]], device: torch.device,
             amp_dtype: torch.dtype | None = None, channels_last: bool = False) -> dict[str, float]:
    """Frame accuracy (arg-max of the 2 logits, reference-facts §E.1) and mean loss parts on ``loader``.

    Under data parallelism each rank passes its shard of the validation set (:func:`emdlib.distributed.shard_indices`)
    and the counts and per-image loss sums of all ranks are added before dividing: the accuracy of the whole set,
    never an average of per-rank accuracies. Raises ValueError when the (whole) set is empty."""
    was_training = model.training
    model.eval()
    n, correct, sums = 0, 0, {}
    for batch in loader:
        batch = move_batch(batch, device, channels_last)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            output = forward(model, batch)
            _, parts = compute_loss(model, output, batch)
        k = len(batch["label"])
        correct += int((output.logits.argmax(1) == batch["label"]).sum())
        for name, v in parts.items():
            sums[name] = sums.get(name, 0.0) + v * k
        n += k
    model.train(was_training)
    if distributed.is_distributed():
        shards = distributed.gather((n, correct, sums))
        n, correct, sums = sum(s[0] for s in shards), sum(s[1] for s in shards), {}
        for _, _, part in shards:
            for name, v in part.items():
                sums[name] = sums.get(name, 0.0) + v
    if n == 0:
        raise ValueError("validation set is empty")
    return {"accuracy": correct / n, **{k: v / n for k, v in sums.items()}}


@torch.no_grad()
def recompute_bn_statistics(model: DetectorNet, batches: Iterable[Mapping[str, Any]], device: torch.device,
                            amp_dtype: torch.dtype | None = None, channels_last: bool = False,
                            max_batches: int | None = None) -> int:
    """Replace the running statistics of the model's trained BatchNorm layers by population statistics of ``batches``.

    Inference-time BatchNorm as Ioffe & Szegedy (ICML 2015) define it, Algorithm 2 steps 8–11: with the final
    weights, E[x] is the mean of the mini-batch means and Var[x] the mean of the unbiased mini-batch variances over
    the training set — what ``torch.optim.swa_utils.update_bn`` computes (cumulative average, ``momentum=None``), here
    restricted to the layers in training mode after ``model.train()``, so a frozen FER stream (which EMD and
    MultiTask+EnsFER keep in eval mode) keeps its own statistics. The exponential running average that training
    keeps (momentum 0.1) lags weights that still move fast — in short runs from scratch, far enough that eval-mode
    outputs collapse to a constant (``EMDConfig.baseline_precise_bn``). Training-mode forward passes never read
    running statistics, so the optimisation is unchanged. ``max_batches`` caps the batches read (smoke presets).
    Returns the number of layers updated (0 for a network without BatchNorm).
    """
    was_training = model.training
    model.train()
    layers = [m for m in model.modules()
              if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats]
    momenta = {m: m.momentum for m in layers}
    for m in layers:
        m.reset_running_stats()
        m.momentum = None
    try:
        if layers:
            for i, batch in enumerate(batches):
                if max_batches is not None and i >= max_batches:
                    break
                batch = move_batch(batch, device, channels_last)
                with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                    forward(model, batch)
    finally:
        for m, momentum in momenta.items():
            m.momentum = momentum
        model.train(was_training)
    return len(layers)


# ------------------------------------------------------------------------------------------------------------------
# Training state <-> safetensors + JSON
# ------------------------------------------------------------------------------------------------------------------


def set_trainable(model: DetectorNet, trainable: list[nn.Parameter], warmup: bool) -> None:
    """Warm-up: only ``warmup_parameters()`` require grad (when the model has a warm-up of its own, else every
    trainable parameter does); otherwise every trainable parameter does."""
    warm = {id(p) for p in model.warmup_parameters()} if warmup and model.has_warmup() else None
    for p in trainable:
        p.requires_grad_(warm is None or id(p) in warm)


def _rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"rng/torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda/{i}"] = s
    name, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["rng/numpy"] = torch.from_numpy(keys.astype(np.int64))
    version, pystate, gauss_next = random.getstate()
    tensors["rng/python"] = torch.tensor(pystate, dtype=torch.int64)
    meta = {"numpy": [name, int(pos), int(has_gauss), float(cached)], "python": [version, gauss_next]}
    return tensors, meta


def _set_rng_state(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
    torch.set_rng_state(tensors["rng/torch"].to(torch.uint8).cpu())
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng/cuda/"))]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([t.to(torch.uint8).cpu() for t in cuda])
    name, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((name, tensors["rng/numpy"].numpy().astype(np.uint32), pos, has_gauss, cached))
    version, gauss_next = meta["python"]
    random.setstate((version, tuple(int(v) for v in tensors["rng/python"].tolist()), gauss_next))


def _optimizer_to_flat(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"optimizer/{idx}/{k}"] = v
            else:
                scalars.setdefault(str(idx), {})[k] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _optimizer_from_flat(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        if key.startswith("optimizer/"):
            _, idx, name = key.split("/", 2)
            state.setdefault(int(idx), {})[name] = v
    for idx, st in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(st)
    groups = []
    for g in meta["param_groups"]:
        g = dict(g)
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    return {"state": state, "param_groups": groups}


def save_training_state(path: str | Path, model: DetectorNet, optimizer: torch.optim.Optimizer,
                        scaler: torch.amp.GradScaler | None, epoch: int, meta: Mapping[str, Any]) -> str:
    """``last.safetensors``: model + optimizer tensors + RNG states; scalars (epoch, history, ...) in the sidecar."""
    tensors = {f"model/{k}": v for k, v in model.state_dict().items()}
    opt_t, opt_m = _optimizer_to_flat(optimizer)
    rng_t, rng_m = _rng_state()
    tensors.update(opt_t)
    tensors.update(rng_t)
    side = {**dict(meta), "kind": "training_state", "epoch": epoch, "optimizer": opt_m, "rng": rng_m,
            "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None}
    return save_checkpoint(path, tensors, side)


def _state_like_parameters(optimizer: torch.optim.Optimizer) -> None:
    """Give each optimizer-state tensor of a parameter's shape that parameter's memory layout: a checkpoint stores
    them contiguous, and Adam's foreach path falls back to its slower per-tensor loop when the moments' strides
    differ from those of the gradients (a channels_last model on the GPU)."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            st = optimizer.state.get(p, {})
            for k, v in st.items():
                if torch.is_tensor(v) and v.shape == p.shape and v.stride() != p.stride():
                    st[k] = torch.empty_like(p, dtype=v.dtype).copy_(v)


def load_training_state(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                        scaler: torch.amp.GradScaler | None = None, device: str | torch.device = "cpu") -> dict:
    """Restore what :func:`save_training_state` wrote; returns the sidecar."""
    tensors, meta = load_checkpoint(path, required=TRAINING_STATE_KEYS)
    if meta.get("kind") != "training_state":
        raise ValueError(f"{path}: not a training-state checkpoint (sidecar kind={meta.get('kind')!r})")
    state = {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}
    try:
        model.load_state_dict(state, strict=True)
        optimizer.load_state_dict(_optimizer_from_flat(tensors, meta["optimizer"]))
    except (RuntimeError, ValueError, KeyError) as e:
        raise ValueError(f"{path}: training state does not match this model/optimizer ({e})") from e
    _state_like_parameters(optimizer)
    if scaler is not None and meta.get("scaler"):
        scaler.load_state_dict(meta["scaler"])
    _set_rng_state(tensors, meta["rng"])
    return meta


# ------------------------------------------------------------------------------------------------------------------
# fit
# ------------------------------------------------------------------------------------------------------------------


def _resume_state(last_path: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                  scaler: torch.amp.GradScaler | None, device: torch.device) -> dict | None:
    """Load ``last.safetensors`` for resuming; None (start again, with a warning) when it cannot be trusted.

    A run killed between writing the weights and the sidecar left new weights beside an old sidecar: the sidecar is
    rewritten from the copy in the weights' header first (:func:`emdlib.checkpoint.repair_sidecar`), so the epoch
    resumed is the epoch of the weights. Weights whose metadata cannot be verified at all (an old file without the
    header copy, written over by another run) are not resumed: training starts again at epoch 1 and overwrites them.
    A training state that does not fit this model/optimizer is the caller's mistake and raises ``ValueError``.
    """
    try:
        repair_sidecar(last_path)
        return load_training_state(last_path, model, optimizer, scaler, device)
    except (CheckpointError, FileNotFoundError) as e:
        log.warning("cannot resume from %s (%s); training starts again at epoch 1", last_path, e)
        return None


def _best_so_far(best_path: Path, prev: Mapping[str, Any]) -> tuple[int | None, float, float]:
    """``(best_epoch, best_val_accuracy, best_val_loss)`` on resume, taken from ``best.safetensors`` itself.

    ``last.json`` records the best epoch too, but a run killed after writing ``best`` and before writing ``last``
    (or between ``best``'s two files) leaves ``best.safetensors`` one epoch ahead of it: the epoch and validation
    metrics stored with the best weights are the truth, so the best epoch reported always names the weights that are
    loaded. A best checkpoint that cannot be verified is removed (the next epoch replaces it).
    """
    recorded = prev.get("best_epoch")
    if not best_path.is_file():
        return None, -math.inf, math.inf
    try:
        repair_sidecar(best_path)
        meta = load_meta(best_path, required=("epoch",))
    except (CheckpointError, FileNotFoundError) as e:
        log.warning("%s cannot be verified (%s); it is removed and the best model is chosen again from the "
                    "epochs still to run", best_path, e)
        best_path.unlink(missing_ok=True)
        return None, -math.inf, math.inf
    epoch = int(meta["epoch"])
    if recorded != epoch:
        log.warning("%s holds the weights of epoch %d but %s recorded best epoch %s (the run was interrupted "
                    "between the two checkpoints); the best so far is epoch %d", best_path, epoch,
                    best_path.with_name(LAST), recorded, epoch)
    val = meta.get("val") or {}
    acc, loss = val.get("accuracy"), val.get("loss")
    return epoch, (-math.inf if acc is None else float(acc)), (math.inf if loss is None else float(loss))


def _check_loss(device_sums: Mapping[str, torch.Tensor], n: int, epoch: int, step: int | None, bar: Any
                ) -> dict[str, float]:
    """The epoch's loss sums read from the device (one synchronisation), shown as running means on ``bar``; raises
    FloatingPointError naming the epoch (and the step reached) when the loss is not finite."""
    sums = {k: float(v) for k, v in device_sums.items()}
    if sums and not math.isfinite(sums["loss"]):
        where = f"epoch {epoch + 1}" + (f" by step {step}" if step is not None else "")
        raise FloatingPointError(f"non-finite training loss in {where}: per-image sums {sums}")
    if sums and n:
        bar.set_postfix(loss=f"{sums['loss'] / n:.4f}")
    return sums


def is_better(acc: float | None, loss: float, best_acc: float, best_loss: float) -> bool:
    """Model selection (§IV-B keeps the best model on validation): higher accuracy, or the same at lower loss."""
    return acc is not None and (acc > best_acc or (acc == best_acc and loss < best_loss))


def fit(model: DetectorNet, train_data: Dataset, val_data: Dataset | None, out_dir: str | Path,
        config: TrainConfig = TrainConfig(), resume: bool = True,
        on_epoch_end: Callable[[dict], None] | None = None, meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Train ``model`` with the §IV-B protocol; checkpoints in ``out_dir``; returns a summary.

    ``train_data`` / ``val_data``: datasets of dicts (``ManipulationDataset`` items). After every epoch the training
    state goes to ``out_dir/last.safetensors`` and, when validation accuracy improves — or equals the best so far at a
    lower validation loss (with 10–50 validation images ties are common, and the first epoch of a tie can be a
    warm-up epoch whose decoder has not trained yet) — the weights go to ``out_dir/best.safetensors`` (sidecar: model
    spec, image size, epoch, validation metrics, config and ``meta``). With ``resume`` an existing
    ``last.safetensors`` is continued. At the end the best weights are loaded into ``model`` (the last ones when there
    is no validation set). With ``config.precise_bn`` the trained BatchNorm layers take population statistics of
    the training split before each validation (:func:`recompute_bn_statistics`; the baselines on small presets).
    With ``config.flip_rng == "sampler"`` the training loader (and the ``precise_bn`` one, which reads the split in
    order with the epoch's flips) is built once with persistent workers, its ``DistributedSampler`` (one replica in
    one process) wrapped by :class:`emdlib.data.datasets.FlipSampler` when ``train_data.augment`` is true, and
    ``set_epoch`` every epoch: the batches, and so the run, do not depend on ``config.num_workers``.

    Returns ``{"history": [per-epoch dicts], "best_epoch", "best_val_accuracy", "best_checkpoint",
    "last_checkpoint", "device", "wall_time_s"}``. ``on_epoch_end(record)`` is called after each epoch.

    Data parallel (an initialised process group of N > 1 processes, module docstring): every rank calls ``fit`` with
    the same arguments; each takes ``config.batch_size / N`` images per step (ValueError when not divisible) from a
    ``DistributedSampler`` seeded with ``config.seed`` (``set_epoch`` each epoch); the recorded training losses are
    means over all ranks' images (``train_images`` counts the images stepped on, with the ``DistributedSampler``'s
    padding repeats when the set does not divide by N); rank 0 alone writes the checkpoints (the others wait at a
    barrier) and every rank returns the same summary with the best weights loaded. A run resumes only under the
    number of processes it was started with (ValueError otherwise; recorded as ``world_size`` in the sidecars).
    ``config.sync_bn`` on CPU raises ValueError (``SyncBatchNorm`` runs on GPUs only). Every rank reads the
    checkpoints back (resume, best weights): on several nodes ``out_dir`` must be on a filesystem they share
    (RuntimeError at the end otherwise).
    """
    out_dir = Path(out_dir)
    ddp = distributed.is_distributed()
    world, rank = distributed.world_size(), distributed.rank()
    if distributed.is_main():
        out_dir.mkdir(parents=True, exist_ok=True)
    if len(train_data) == 0:
        raise ValueError("training set is empty")
    device = resolve_device(distributed.local_device(config.device) if ddp else config.device)
    batch_size = distributed.per_rank_batch(config.batch_size, world) if ddp else config.batch_size
    if ddp and config.sync_bn and device.type == "cpu":
        raise ValueError("sync_bn: torch.nn.SyncBatchNorm runs on GPUs only; train on CUDA or set sync_bn=False "
                         "(emd reproduce --set emd.sync_bn=false)")
    if config.deterministic:
        set_deterministic(True)
    if device.type == "cuda" and config.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True  # autotuned among the deterministic algorithms when deterministic
    seed_everything(config.seed)
    amp_dtype = _amp_dtype(device, config.amp)
    channels_last = config.channels_last and device.type == "cuda"
    if ddp and config.sync_bn:
        converted = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        if converted is not model:  # the network's own BatchNorm layers are replaced in place
            raise TypeError(f"{type(model).__name__} is a BatchNorm layer itself; cannot convert it in place")
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    trainable = list(model.trainable_parameters())
    if not trainable:
        raise ValueError(f"{type(model).__name__} has no trainable parameters")
    optimizer = make_optimizer(trainable, config.optimizer, config.lr, betas=config.betas, eps=config.eps,
                               momentum=config.momentum, weight_decay=config.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    base_meta = {"model": model.spec(), "image_size": config.image_size, "config": config.to_dict(),
                 **({"world_size": world} if ddp else {}), **dict(meta or {})}
    if config.warmup_epochs and not model.has_warmup():
        log.info("%s has no warm-up of its own; warm-up epochs train the whole network", type(model).__name__)

    history: list[dict] = []
    best_acc, best_loss, best_epoch, start = -math.inf, math.inf, None, 0
    last_path, best_path = out_dir / LAST, out_dir / BEST
    if ddp and not distributed.is_main():
        distributed.barrier()  # rank 0 first removes half-written files and repairs the checkpoints it resumes
    else:
        remove_stale_temps(out_dir, recursive=False)  # half-written files of a killed run
    if resume and last_path.is_file():
        prev = _resume_state(last_path, model, optimizer, scaler, device)
        if prev is not None:
            for key in ("seed", "batch_size", "lr", "warmup_epochs", "optimizer", "flip_rng"):
                recorded = prev["config"].get(key, getattr(TrainConfig, key) if key in OLD_DEFAULTS else None)
                if recorded != getattr(config, key):
                    raise ValueError(f"{last_path}: cannot resume, {key}={recorded!r} in the "
                                     f"checkpoint but {getattr(config, key)!r} now (use another out_dir or "
                                     "resume=False)")
            if int(prev.get("world_size", 1)) != world:
                raise ValueError(f"{last_path}: cannot resume, trained on {prev.get('world_size', 1)} processes but "
                                 f"{world} now (resume with the same number, or use another out_dir or resume=False)")
            start, history = int(prev["epoch"]), list(prev.get("history", []))
            best_epoch, best_acc, best_loss = _best_so_far(best_path, prev)
            log.info("resuming %s from epoch %d (best epoch so far: %s)", last_path, start, best_epoch)
    if ddp and distributed.is_main():
        distributed.barrier()

    has_val = val_data is not None and len(val_data) > 0
    if has_val and ddp:  # each rank validates its shard (no padding; a shard may be empty), validate() adds them up
        val_data = Subset(val_data, distributed.shard_indices(len(val_data), rank, world))
    by_sampler = config.flip_rng == "sampler"  # flips drawn in the main process: workers may persist
    pin = device.type == "cuda"
    val_loader = (make_loader(val_data, batch_size, False, config.seed, config.num_workers, pin, persistent=by_sampler)
                  if has_val else None)
    sampler = (DistributedSampler(train_data, num_replicas=world, rank=rank, shuffle=True, seed=config.seed)
               if ddp or by_sampler else None)  # "sampler" in one process: a DistributedSampler of one replica
    train_loader = bn_loader = bn_sampler = None
    if by_sampler:  # built once; every epoch is set_epoch on the samplers
        sampler = flip_sampler(train_data, sampler, config.seed)
        train_loader = make_loader(train_data, batch_size, True, config.seed, config.num_workers, pin,
                                   sampler=sampler, persistent=True)
        if config.precise_bn:  # the training split in order, with the flips of the epoch
            bn_sampler = flip_sampler(train_data, SequentialSampler(train_data), config.seed)
            bn_loader = make_loader(train_data, config.batch_size, False, config.seed, config.num_workers, pin,
                                    sampler=bn_sampler, persistent=True)
    net, net_phase = None, None  # the DistributedDataParallel wrapper, rebuilt when the trained parameters change
    t_start = time.perf_counter()
    for epoch in range(start, config.total_epochs):
        warmup = epoch < config.warmup_epochs
        set_trainable(model, trainable, warmup)
        if ddp and net_phase != warmup:  # DDP all-reduces the parameters that require grad when it is built
            net = None  # the previous wrapper's gradient hooks go with it
            # every system's loss reaches every parameter that requires grad, in warm-up and after, also on batches of
            # one class (checked for all SYSTEMS), so DDP need not search the graph for unused ones each step
            net, net_phase = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                     else None, find_unused_parameters=False), warmup
        if model.selects_samples():  # LAE's active learning: a pass over the training split (before the seeding,
            # so the epoch's RNG draws stay those of (seed, epoch)); every rank makes it alike on the same weights
            model.select_samples(epoch, config.total_epochs,
                                 make_loader(train_data, batch_size, False, config.seed, config.num_workers,
                                             device.type == "cuda"))
        seed_everything(_epoch_seed(config.seed, epoch) + rank)  # rank 0: the single-process seeds
        for s in (sampler, bn_sampler):
            if hasattr(s, "set_epoch"):
                s.set_epoch(epoch)
        loader = train_loader if train_loader is not None else make_loader(
            train_data, batch_size, True, _epoch_seed(config.seed, epoch), config.num_workers, pin, sampler=sampler)
        model.train()
        t0 = time.perf_counter()
        device_sums: dict[str, torch.Tensor] = {}  # per-image loss sums, float64 on the device: read once per LOG_EVERY
        n = 0
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{config.total_epochs}{' (warm-up)' if warmup else ''}",
                   leave=False, disable=None)
        total = len(loader) if config.max_batches is None else min(len(loader), config.max_batches)
        last_line = t0
        for i, batch in enumerate(bar):
            if config.max_batches is not None and i >= config.max_batches:
                break
            batch = move_batch(batch, device, channels_last)
            parts = train_step(model, batch, optimizer, scaler, amp_dtype, net=net, sync=False)
            k = len(batch["label"])
            for name, v in parts.items():
                device_sums[name] = device_sums[name] + v * k if name in device_sums else v * k
            n += k
            if (i + 1) % LOG_EVERY == 0:
                _check_loss(device_sums, n, epoch, i + 1, bar)
                if time.perf_counter() - last_line >= PROGRESS_SECONDS and distributed.is_main():
                    last_line = time.perf_counter()
                    _progress_line(epoch, config.total_epochs, i + 1, total, n * distributed.world_size(),
                                   last_line - t0)
        sums = _check_loss(device_sums, n, epoch, None, bar)
        if ddp:  # means over every rank's images; the ranks' BatchNorm statistics become rank 0's (those saved)
            names = sorted(sums)
            *totals, n = distributed.all_sum([sums[k] for k in names] + [n])
            sums, n = dict(zip(names, totals)), int(n)
            distributed.broadcast_buffers(model)
        record: dict[str, Any] = {"epoch": epoch + 1, "phase": "warmup" if warmup else "full",
                                  **{f"train_{k}": v / max(n, 1) for k, v in sums.items()}, "train_images": n}
        if config.precise_bn:  # every rank reads the whole training split, as one process does: same statistics
            batches = bn_loader if bn_loader is not None else make_loader(  # "global": a new one every epoch
                train_data, config.batch_size, False, config.seed, config.num_workers, pin)
            recompute_bn_statistics(model, batches, device, amp_dtype, channels_last, config.max_batches)
            distributed.broadcast_buffers(model)
        if val_loader is not None:
            val = validate(model, val_loader, device, amp_dtype, channels_last)
            record.update({f"val_{k}": v for k, v in val.items()})
        record["seconds"] = round(time.perf_counter() - t0, 3)
        history.append(record)
        acc, loss = record.get("val_accuracy"), record.get("val_loss", math.inf)
        if is_better(acc, loss, best_acc, best_loss) or val_loader is None:
            best_acc, best_loss = (acc, loss) if acc is not None else (best_acc, best_loss)
            best_epoch = epoch + 1
            if distributed.is_main():
                save_checkpoint(best_path, model.state_dict(),
                                {**base_meta, "kind": "best", "epoch": epoch + 1,
                                 "val": {k[4:]: v for k, v in record.items() if k.startswith("val_")}})
        if distributed.is_main():
            save_training_state(last_path, model, optimizer, scaler, epoch + 1,
                                {**base_meta, "history": history, "best_epoch": best_epoch,
                                 "best_val_accuracy": None if best_acc == -math.inf else best_acc,
                                 "best_val_loss": None if best_loss == math.inf else best_loss})
        distributed.barrier()  # the epoch's checkpoints are complete before any rank goes on
        log.info("epoch %d/%d %s: %s", epoch + 1, config.total_epochs, record["phase"],
                 ", ".join(f"{k}={v:.4f}" for k, v in record.items() if isinstance(v, float)))
        if on_epoch_end is not None:
            on_epoch_end(record)

    set_trainable(model, trainable, warmup=False)
    distributed.barrier()
    if ddp and len(set(distributed.gather(best_path.is_file()))) > 1:
        raise RuntimeError(f"{best_path}: rank 0 wrote it but some ranks cannot see it; under several nodes out_dir "
                           "must be on a filesystem every node shares (checkpoints are read back by every rank)")
    if best_path.is_file():
        state, best_meta = load_checkpoint(best_path, device=device)
        model.load_state_dict(state)
        best_epoch = best_meta.get("epoch", best_epoch)  # the epoch of the weights loaded, whatever was recorded
    return {"history": history, "best_epoch": best_epoch,
            "best_val_accuracy": None if best_acc == -math.inf else best_acc,
            "best_checkpoint": str(best_path), "last_checkpoint": str(last_path),
            "device": device_name(device), "wall_time_s": round(time.perf_counter() - t_start, 3)}


# ------------------------------------------------------------------------------------------------------------------
# predict
# ------------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def predict(model: DetectorNet, data: Dataset | DataLoader, device: str | torch.device | None = None,
            batch_size: int = 16, pixels_per_image: int = 256, seed: int = 0, keep_masks: bool = False,
            amp: bool = True, num_workers: int = 0, shard: bool | None = None) -> dict[str, np.ndarray]:
    """Run ``model`` over ``data`` and collect what :mod:`emdlib.metrics` needs, as numpy arrays.

    Always: ``prob`` (P(fake) = softmax(logits)[:, 1]), ``label``, ``method``, ``compression``, ``video``, ``frame``.
    When the model predicts masks and the batches carry ``mask``: per image ``pixel_accuracy`` (threshold 0.5,
    reference-facts §E.2) and confusion counts ``pixel_tp``/``pixel_fp``/``pixel_fn``/``pixel_tn``; a seeded sample of
    ``pixels_per_image`` pixels per image for pixel-level ROC (``pixel_score``, ``pixel_label``, ``pixel_image``); and,
    with ``keep_masks``, every predicted probability map ``mask_prob`` (N, H, W) float16.

    ``shard`` (None: whenever a process group of N > 1 processes is initialised; needs a Dataset, not a DataLoader):
    every rank calls ``predict``, predicts the images ``rank::N`` (:func:`emdlib.distributed.shard_indices`: no
    padding, each image once) and every rank returns the predictions of all ranks in dataset order
    (``all_gather_object``), equal to one process's (bit for bit where each image meets a batch of the same size;
    CPU kernels may round the mask of a batch of 1 and of 2 one ulp apart); the sampled pixels are the ones one
    process draws (the seeded generator is advanced over the other ranks' images). ``device`` None under a process
    group on CUDA is the process's ``cuda:LOCAL_RANK``.
    """
    if shard is None:
        shard = distributed.is_distributed() and not isinstance(data, DataLoader)
    if shard:
        if isinstance(data, DataLoader):
            raise TypeError("predict(shard=True) needs a Dataset to shard, not a DataLoader")
        device = distributed.local_device(device)
        indices = distributed.shard_indices(len(data))
        data = Subset(data, indices)
    device = resolve_device(device)
    loader = (data if isinstance(data, DataLoader)
              else make_loader(data, batch_size, False, seed, num_workers, pin_memory=device.type == "cuda"))
    was_training = model.training
    model.to(device).eval()
    amp_dtype = _amp_dtype(device, amp)
    gen = torch.Generator().manual_seed(seed)
    cols: dict[str, list] = {k: [] for k in ("prob", "label", "method", "compression", "video", "frame")}
    pix: dict[str, list] = {}
    start = 0  # images predicted so far
    drawn = 0  # images the pixel sampler has drawn for (in a shard, the other ranks' images too)
    for batch in tqdm(loader, desc="predict", leave=False, disable=None):
        batch = move_batch(batch, device)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            out = forward(model, batch)
        n = len(batch["label"])
        first, start = start, start + n
        cols["prob"].append(out.prob.cpu().numpy())
        cols["label"].append(batch["label"].cpu().numpy())
        for k in ("method", "compression", "video"):
            cols[k].append(np.asarray(batch.get(k, [""] * n), dtype=object))
        frame = batch.get("frame")
        cols["frame"].append(frame.cpu().numpy() if torch.is_tensor(frame) else np.asarray(frame if frame is not None else [-1] * n))
        if out.mask_logits is None or "mask" not in batch:
            continue
        prob = out.mask_prob
        gt = batch["mask"][:, 0] >= 0.5
        pred = prob >= 0.5
        for name, v in (("pixel_tp", pred & gt), ("pixel_fp", pred & ~gt), ("pixel_fn", ~pred & gt),
                        ("pixel_tn", ~pred & ~gt)):
            pix.setdefault(name, []).append(v.flatten(1).sum(1).cpu().numpy().astype(np.int64))
        pix.setdefault("pixel_accuracy", []).append((pred == gt).float().flatten(1).mean(1).cpu().numpy())
        hw = prob[0].numel()
        k = min(pixels_per_image, hw)
        if k > 0:
            images = np.arange(first, first + n) if not shard else np.asarray(indices[first:first + n])
            perms = []
            for j in images:  # one permutation per image of the whole set, in dataset order
                while drawn < j:
                    torch.randperm(hw, generator=gen)
                    drawn += 1
                perms.append(torch.randperm(hw, generator=gen)[:k])
                drawn += 1
            idx = torch.stack(perms).to(device)
            pix.setdefault("pixel_score", []).append(prob.flatten(1).gather(1, idx).flatten().cpu().numpy())
            pix.setdefault("pixel_label", []).append(gt.flatten(1).gather(1, idx).flatten().cpu().numpy().astype(np.uint8))
            pix.setdefault("pixel_image", []).append(np.repeat(images, k))
        if keep_masks:
            pix.setdefault("mask_prob", []).append(prob.cpu().numpy().astype(np.float16))
    model.train(was_training)
    result = {k: np.concatenate(v) if v else np.zeros(0) for k, v in cols.items()}
    result["prob"] = result["prob"].astype(np.float64)
    result["label"] = result["label"].astype(np.int64)
    result["frame"] = result["frame"].astype(np.int64)
    result.update({k: np.concatenate(v) for k, v in pix.items()})
    if shard:
        result = _gather_predictions(result, np.asarray(indices, dtype=np.int64))
    return result


#: Columns of :func:`predict` with one entry per sampled pixel (the others have one per image).
PIXEL_SAMPLE_KEYS: tuple[str, ...] = ("pixel_score", "pixel_label", "pixel_image")


def _gather_predictions(result: dict[str, np.ndarray], indices: np.ndarray) -> dict[str, np.ndarray]:
    """Every rank's :func:`predict` columns (this rank's: images ``indices`` of the dataset), put together in
    dataset order on every rank: per-image columns ordered by dataset index, sampled-pixel columns ordered by image
    (``pixel_image`` holds dataset indices) keeping each image's draw order. A rank with no images contributes
    nothing."""
    shards = [(r, i) for r, i in distributed.gather((result, indices)) if len(i)]
    if not shards:
        return result
    order = np.argsort(np.concatenate([i for _, i in shards]), kind="stable")
    keys = shards[0][0].keys()
    out: dict[str, np.ndarray] = {}
    for key in keys:
        parts = [r[key] for r, _ in shards if key in r]
        if len(parts) != len(shards):
            raise ValueError(f"predict: column {key!r} is missing on some ranks")
        col = np.concatenate(parts)
        if key in PIXEL_SAMPLE_KEYS:
            col = col[np.argsort(np.concatenate([r["pixel_image"] for r, _ in shards]), kind="stable")]
        else:
            col = col[order]
        out[key] = col
    return out
