"""Run records (design.md "Results"): ``results/<preset>/runs/<run>/metrics.json``, one per trained/evaluated model.

A record holds the metrics and everything needed to trace them: the full configuration, the git commit of the code,
the seed, the sha256 of the data manifest the model saw, the sha256 of the checkpoint, the device and the wall time.
Tables and figures are rendered from these records (:func:`load_run_records`), never from typed-in numbers.
"""

from __future__ import annotations

import datetime as _dt
import logging
import math
import os
import subprocess
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from emdlib.io import read_json, sha256_file, write_json

log = logging.getLogger(__name__)

RECORD = "metrics.json"


def git_commit(repo: str | os.PathLike | None = None) -> str:
    """``git rev-parse HEAD`` of the emdlib checkout (read-only), or ``"unknown"`` outside a git work tree."""
    repo = Path(repo) if repo is not None else Path(__file__).resolve().parent.parent
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


def write_run_record(results_dir: str | os.PathLike, run: str, metrics: Mapping[str, Any], config: Mapping[str, Any],
                     seed: int | None, manifest: str | os.PathLike | None = None,
                     checkpoint: str | os.PathLike | None = None, device: str | None = None,
                     wall_time_s: float | None = None, extra: Mapping[str, Any] | None = None,
                     preset: str | None = None) -> Path:
    """Write ``<results_dir>/runs/<run>/metrics.json`` atomically and return its path.

    ``results_dir`` is ``results/<preset>``; ``config`` the full configuration (e.g. ``Preset.to_dict()`` plus the
    training config); ``manifest`` the data cache manifest file and ``checkpoint`` the model's ``.safetensors`` —
    both are hashed (sha256). NaN metrics are stored as JSON ``null``. ``preset`` defaults to ``config["name"]``, else
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
    return pd.DataFrame(rows)
