"""Run records and predictions (design.md "Results"): what each run of the experiments stage leaves behind.

* ``results/<preset>/runs/<run>/metrics.json`` (:func:`write_run_record`): the metrics and everything needed to trace
  them — the full configuration, the git commit of the code, the seed, the sha256 of the data manifest the model saw,
  the sha256 of the checkpoint, the device and the wall time;
* ``results/<preset>/runs/<run>/predictions.npz`` (:func:`save_predictions`): the test predictions (P(fake) per
  image, pixel counts and sampled pixels) that ROC curves and bootstrap intervals are computed from;
* the run's best checkpoint, named by the record, from which figures rebuild the trained model
  (:func:`load_run_model`).

Tables and figures are rendered from these (:func:`load_run_records`, :func:`load_predictions`), never from
typed-in numbers and never by training.
"""

from __future__ import annotations

import datetime as _dt
import logging
import math
import os
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import pandas as pd

import numpy as np

from emdlib.io import atomic_path, read_json, sha256_file, write_json

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

RECORD = "metrics.json"
PREDICTIONS = "predictions.npz"


def git_commit(repo: str | os.PathLike | None = None) -> str:
    """``git rev-parse HEAD`` of the emdlib checkout (read-only), or ``"unknown"`` outside a git work tree."""
    repo = Path(repo) if repo is not None else Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and commit else "unknown"


def _sha_or_none(path: str | os.PathLike | None, what: str) -> str | None:
    if path is None:
        return None
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: {what} not found (needed for its sha256 in the run record)")
    return sha256_file(p)


def _clean(obj: Any) -> Any:
    """JSON-safe copy: NaN/inf → None (strict JSON), tuples → lists, numpy scalars → Python."""
    if isinstance(obj, Mapping):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 1) == 0:
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return obj


#: The libraries whose versions a run record names (results can move with any of them).
RECORDED_LIBRARIES: tuple[str, ...] = ("torch", "torchvision", "timm", "numpy", "scikit-learn", "opencv-python-headless",
                                       "safetensors", "emdlib")


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else :func:`platform.processor`), or ``"unknown"``."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine_info() -> dict[str, Any]:
    """Where a run ran, for its record: CPU model, logical CPUs, torch's intra-op threads, Python and platform, and
    the versions of :data:`RECORDED_LIBRARIES` (None when one is not installed). The same run can differ by a few
    points between CPUs and library versions (issue 13): the record says which it was."""
    import platform
    from importlib import metadata

    import torch

    versions: dict[str, str | None] = {}
    for name in RECORDED_LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"cpu": cpu_model(), "logical_cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "platform": platform.platform(), "libraries": versions}


def write_run_record(results_dir: str | os.PathLike, run: str, metrics: Mapping[str, Any], config: Mapping[str, Any],
                     seed: int | None, manifest: str | os.PathLike | None = None,
                     checkpoint: str | os.PathLike | None = None, device: str | None = None,
                     wall_time_s: float | None = None, extra: Mapping[str, Any] | None = None,
                     preset: str | None = None) -> Path:
    """Write ``<results_dir>/runs/<run>/metrics.json`` atomically and return its path.

    ``results_dir`` is ``results/<preset>``; ``config`` the full configuration (e.g. ``Preset.to_dict()`` plus the
    training config); ``manifest`` the data cache manifest file and ``checkpoint`` the model's ``.safetensors`` —
    both are hashed (sha256); ``machine`` (:func:`machine_info`) names the CPU, threads and library versions. NaN
    metrics are stored as JSON ``null``. ``preset`` defaults to ``config["name"]``, else
    the name of ``results_dir``.
    """
    if not run or "/" in run or run in (".", ".."):
        raise ValueError(f"invalid run name {run!r}")
    record = {
        "run": run,
        "preset": preset or config.get("name") or Path(results_dir).name,
        "metrics": _clean(dict(metrics)),
        "config": _clean(dict(config)),
        "git_commit": git_commit(),
        "seed": seed,
        "data_manifest": os.fspath(manifest) if manifest is not None else None,
        "data_manifest_sha256": _sha_or_none(manifest, "data manifest"),
        "checkpoint": os.fspath(checkpoint) if checkpoint is not None else None,
        "checkpoint_sha256": _sha_or_none(checkpoint, "checkpoint"),
        "device": device,
        "machine": machine_info(),
        "wall_time_s": wall_time_s,
        "written": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **_clean(dict(extra or {})),
    }
    path = Path(results_dir) / "runs" / run / RECORD
    write_json(path, record)
    log.info("run record %s", path)
    return path


def read_run_record(path: str | os.PathLike) -> dict[str, Any]:
    """One ``metrics.json``; null metrics come back as NaN."""
    rec = read_json(path)
    if not isinstance(rec, dict) or "metrics" not in rec:
        raise ValueError(f"{path}: not a run record (no 'metrics')")
    rec["metrics"] = {k: (float("nan") if v is None else v) for k, v in rec["metrics"].items()}
    return rec


#: Integer fields of a run record that some records lack, read as pandas' nullable ``Int64`` so that tables show
#: ``5``, not ``5.0`` (``n_train_videos`` stays float: the figures compute with it).
INTEGER_COLUMNS: tuple[str, ...] = ("best_epoch",)


def load_run_records(results_dir: str | os.PathLike) -> pd.DataFrame:
    """Every ``runs/<run>/metrics.json`` under ``results_dir`` (a preset folder or the results root) as one table.

    Columns: ``run``, ``preset``, ``seed``, ``git_commit``, ``device``, ``wall_time_s``, the checksums, every metric as
    its own column (nested metric dicts flattened with ``.``), any extra top-level scalars, and ``path``. The full
    configuration stays in the ``config`` column (a dict). An empty folder gives an empty frame.
    """
    rows = []
    for path in sorted(Path(results_dir).rglob(f"runs/*/{RECORD}")):
        rec = read_run_record(path)
        metrics = pd.json_normalize(rec.pop("metrics"), sep=".").to_dict("records")[0] if rec["metrics"] else {}
        row = {k: v for k, v in rec.items() if not isinstance(v, (dict, list))}
        row["config"] = rec.get("config")
        row.update(metrics)
        row["path"] = str(path)
        rows.append(row)
    df = pd.DataFrame(rows)
    for col in INTEGER_COLUMNS:  # missing in some records (an SVM has no epochs): nullable ints, never 2.0
        if col in df:
            df[col] = df[col].astype("Int64")
    return df


def save_predictions(run_dir: str | os.PathLike, pred: Mapping[str, np.ndarray]) -> Path:
    """Write ``<run_dir>/predictions.npz`` atomically (every array of :func:`emdlib.train.predict` but the full
    probability maps ``mask_prob``; strings as unicode arrays, so nothing needs unpickling). Returns its path."""
    path = Path(run_dir) / PREDICTIONS
    arrays = {k: (np.asarray(v).astype(str) if np.asarray(v).dtype == object else np.asarray(v))
              for k, v in pred.items() if k != "mask_prob"}
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez_compressed(tmp, **arrays)
    return path


def load_predictions(runs_dir: str | os.PathLike, run: str) -> dict[str, np.ndarray]:
    """The test predictions of ``run`` under ``runs_dir`` (``results/<preset>/runs``); FileNotFoundError naming the
    file when the run has not been made."""
    path = Path(runs_dir) / run / PREDICTIONS
    if not path.is_file():
        raise FileNotFoundError(f"{path}: predictions not found; run the cell first")
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def load_run_model(runs_dir: str | os.PathLike, run: str, device: str = "cpu") -> "torch.nn.Module":
    """The trained model of a finished run, rebuilt from the best checkpoint its record names
    (:func:`emdlib.registry.model_from_checkpoint`), in eval mode. FileNotFoundError when the record or its
    checkpoint is missing."""
    from emdlib.registry import model_from_checkpoint

    record = Path(runs_dir) / run / RECORD
    if not record.is_file():
        raise FileNotFoundError(f"{record}: run record not found; run the cell first")
    ckpt = read_run_record(record).get("checkpoint")
    if not ckpt or not Path(ckpt).is_file():
        raise FileNotFoundError(f"{record}: its checkpoint {ckpt!r} is missing; rerun the cell (force=True)")
    model, _ = model_from_checkpoint(ckpt, device=device)
    return model
