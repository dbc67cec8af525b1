"""Data-parallel processes: the process group, ranks, sharding without padding, gathering, launching.

Training across N processes uses PyTorch's own engine (no home-made process groups or schedulers):

* ``torchrun --nproc_per_node=N …`` (multi-node through its rendezvous: ``--nnodes``, ``--rdzv-endpoint``) starts N
  processes with ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``/``MASTER_PORT`` set;
  :func:`init_from_env` turns them into ``torch.distributed.init_process_group`` (NCCL on CUDA, gloo on CPU);
* :func:`launch` starts the same from Python (a notebook, ``emd reproduce --nproc N``) through
  ``torch.distributed.launcher.api.elastic_launch``, the API ``torchrun`` itself is built on.

When no process group is initialised (``WORLD_SIZE`` unset or 1) every helper here answers as a single process does
(rank 0 of 1), so callers need no special case: :func:`world_size` is 1, :func:`is_main` True, :func:`barrier` does
nothing, :func:`gather` returns ``[obj]``.

Evaluation shards a dataset without padding (:func:`shard_indices`: rank ``r`` takes indices ``r::N``), so after
:func:`gather` every item is seen exactly once — unlike ``DistributedSampler``, which pads with repeated items.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import uuid
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Environment variables ``torchrun`` sets for every process it starts.
TORCHRUN_ENV: tuple[str, ...] = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def is_distributed() -> bool:
    """True when a ``torch.distributed`` process group is initialised with more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Number of processes of the initialised group (1 without one)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's global rank, ``0 … world_size() - 1`` (0 without a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    """Whether this process is rank 0, the one that writes checkpoints, run records and predictions."""
    return rank() == 0


def backend_for(device: str | torch.device | None = None) -> str:
    """The process-group backend for processes training on ``device``: ``"nccl"`` on CUDA (None: CUDA when
    available), ``"gloo"`` otherwise (NCCL takes CUDA tensors only)."""
    on = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return "nccl" if on.type == "cuda" else "gloo"


def init_from_env(backend: str | None = None, device: str | torch.device | None = None) -> bool:
    """Initialise the default process group from ``torchrun``'s environment variables when it asks for >1 process.

    ``backend``: None chooses NCCL when the processes train on CUDA — ``device`` (the study's ``device``; None:
    CUDA when available) — else gloo, so that ``device="cpu"`` on a GPU node still gets a backend that takes CPU
    tensors (:func:`backend_for`). With NCCL each process takes the GPU ``LOCAL_RANK``. Does nothing (returns
    False) when ``WORLD_SIZE`` is unset or 1 or a group already exists
    (returns True then if it has more than one process). Raises ValueError when ``WORLD_SIZE`` is not an integer or
    ``RANK`` is missing (launch through ``torchrun`` or :func:`launch`).
    """
    if dist.is_available() and dist.is_initialized():
        return is_distributed()
    raw = os.environ.get("WORLD_SIZE")
    if raw is None:
        return False
    try:
        n = int(raw)
    except ValueError as e:
        raise ValueError(f"WORLD_SIZE={raw!r} is not an integer") from e
    if n <= 1:
        return False
    if "RANK" not in os.environ:
        raise ValueError(f"WORLD_SIZE={n} but RANK is not set; start the processes with torchrun or "
                         "emdlib.distributed.launch")
    if backend is None:
        backend = backend_for(device)
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    log.info("process group initialised: rank %d of %d (%s)", rank(), world_size(), backend)
    return True


def local_device(device: str | torch.device | None) -> torch.device | None:
    """The device this process should use: ``cuda:LOCAL_RANK`` when a multi-process group runs on CUDA and
    ``device`` is None or a bare ``"cuda"``; ``device`` unchanged otherwise (None stays None). Raises ValueError for
    a numbered GPU (``"cuda:1"``) in a multi-process group: every process would take that one GPU (NCCL refuses
    duplicate GPUs); choose the GPUs with ``CUDA_VISIBLE_DEVICES`` instead."""
    if not is_distributed():
        return None if device is None else torch.device(device)
    d = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if d.type == "cuda" and d.index is not None:
        raise ValueError(f"device {str(d)!r} names one GPU, but {world_size()} processes train: give 'cuda' (each "
                         "process takes GPU LOCAL_RANK) and choose the GPUs with CUDA_VISIBLE_DEVICES")
    if d.type == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return d


def barrier() -> None:
    """Wait for every process of the group (no-op in a single process)."""
    if is_distributed():
        dist.barrier()


def gather(obj: T) -> list[T]:
    """Every rank's ``obj`` (picklable; exchanged among our own processes only), in rank order, on every rank
    (``torch.distributed.all_gather_object``); ``[obj]`` in a single process."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def all_sum(values: Sequence[float]) -> list[float]:
    """Element-wise sum of ``values`` over the ranks (float64 all-reduce; ``values`` itself in a single process).
    Every rank must pass the same number of values."""
    if not is_distributed():
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return t.cpu().tolist()


def broadcast_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s buffers (e.g. BatchNorm running statistics) to every rank (no-op in a single process).

    ``DistributedDataParallel`` broadcasts buffers at the start of each forward, so after the last training step of
    an epoch the ranks' running statistics differ by their last batch; this makes them rank 0's — those it saves."""
    if not is_distributed():
        return
    for b in module.buffers():
        dist.broadcast(b.data, src)


def shard_indices(n: int, rank_: int | None = None, world: int | None = None) -> range:
    """Indices of an ``n``-item dataset this rank evaluates: ``rank::world`` (no padding, no item twice; every
    item in exactly one shard). Raises ValueError for a negative ``n`` or a rank outside ``0 … world-1``."""
    r = rank() if rank_ is None else rank_
    w = world_size() if world is None else world
    if n < 0 or w < 1 or not 0 <= r < w:
        raise ValueError(f"cannot shard {n} items for rank {r} of {w}")
    return range(r, n, w)


def per_rank_batch(global_batch: int, world: int | None = None) -> int:
    """The batch each process takes when the recipe's ``global_batch`` is split over ``world`` processes.

    ``batch_size`` in :class:`emdlib.train.TrainConfig` and the recipes is the GLOBAL batch (one optimiser step
    sees ``global_batch`` images whatever the number of processes), so N processes × batch B/N take the step one
    process takes with batch B. Raises ValueError when ``global_batch`` is not divisible by ``world``."""
    w = world_size() if world is None else world
    if global_batch % w:
        raise ValueError(f"batch size {global_batch} is the global batch and must be divisible by the {w} "
                         f"processes (each takes batch/{w}); choose another --nproc or batch size")
    return global_batch // w


def processes_for_batch(global_batch: int, nproc: int) -> int:
    """The most processes, at most ``nproc``, that split ``global_batch`` evenly (its largest divisor ≤ ``nproc``):
    e.g. 5 for MesoNet's batch of 75 on 8 GPUs. Raises ValueError unless both are >= 1."""
    if global_batch < 1 or nproc < 1:
        raise ValueError(f"cannot split a batch of {global_batch} over {nproc} processes")
    return max(d for d in range(1, min(nproc, global_batch) + 1) if global_batch % d == 0)


def launch(fn: Callable[..., T], nproc: int, *args: Any, run_id: str | None = None,
           max_restarts: int = 0) -> T:
    """Run ``fn(*args)`` in ``nproc`` processes on this node, as ``torchrun --nproc_per_node=nproc`` would, through
    ``torch.distributed.launcher.api.elastic_launch`` (c10d rendezvous on a free local port, as
    ``torchrun --standalone``); returns rank 0's return value.

    ``fn`` must be importable by name (a module-level function: the processes are spawned, so a script that calls
    ``launch`` needs the ``if __name__ == "__main__":`` guard; a notebook does not) and should call
    :func:`init_from_env` (the launcher sets ``RANK``/``WORLD_SIZE``/…). ``nproc == 1`` calls ``fn(*args)`` in this
    process. Raises ValueError for ``nproc < 1`` and :class:`ProcessFailed` when a process fails: its message is the
    first failed rank's own error (``"… failed on rank 1 of 2: ValueError: training set is empty"``), the
    process's traceback attached as a note, the launcher's ``ChildFailedError`` as its cause; the other ranks'
    logs go to this process's stderr as usual. Each process logs as this one does (:func:`_logging_setup`): the
    ``emdlib`` loggers' level and the root handler's format on rank 0, warnings and errors only on the others.
    """
    if nproc < 1:
        raise ValueError(f"nproc must be >= 1, got {nproc}")
    if nproc == 1:
        return fn(*args)
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=run_id or uuid.uuid4().hex,
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0",
                          max_restarts=max_restarts, start_method="spawn")
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    name = getattr(fn, "__qualname__", str(fn))
    log.info("launching %s on %d processes", name, nproc)
    handlers = _signal_handlers()
    try:
        return elastic_launch(config, _call_logging)(fn, _logging_setup(), *args)[0]
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        data = failure.message if isinstance(failure.message, dict) else {"message": failure.message}
        err = ProcessFailed(f"{name} failed on rank {rank} of {nproc}: {data.get('message')}")
        stack = data.get("extraInfo", {}).get("py_callstack") if isinstance(data.get("extraInfo"), dict) else None
        if stack:
            err.add_note(f"rank {rank}'s traceback:\n{stack}")
        raise err from e
    finally:  # the launcher leaves handlers that turn this process's own later SIGTERM into a traceback
        _restore_signal_handlers(handlers)


_SIGNALS = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT") if hasattr(signal, n))


def _signal_handlers() -> dict:
    """This process's handlers of the signals torch's launcher takes over (none outside the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {s: signal.getsignal(s) for s in _SIGNALS}


def _restore_signal_handlers(handlers: dict) -> None:
    for s, h in handlers.items():
        if h is not None:
            signal.signal(s, h)


class ProcessFailed(RuntimeError):
    """A process started by :func:`launch` failed; the message names the rank and its error."""


def _logging_setup() -> tuple[int, str | None]:
    """``(level of the emdlib loggers, format of the root logger's first handler or None)`` in this process, for
    :func:`launch`'s processes to log the same way (a notebook's epoch lines then reach ``emd reproduce``)."""
    root = logging.getLogger()
    fmt = next((h.formatter._fmt for h in root.handlers if h.formatter is not None), None)
    return logging.getLogger("emdlib").getEffectiveLevel(), fmt


def _call_logging(fn: Callable[..., T], setup: tuple[int, str | None], *args: Any) -> T:
    """A :func:`launch` process: log as the launching process did (rank 0; the other ranks warnings and up, so
    that each epoch is told once), then ``fn(*args)``."""
    level, fmt = setup
    if fmt is not None and not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format=fmt, stream=sys.stderr)
    first = os.environ.get("RANK", "0") == "0"
    logging.getLogger("emdlib").setLevel(level if first else max(level, logging.WARNING))
    return fn(*args)
