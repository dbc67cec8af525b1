"""Shared test fixtures. Tests that read ``../shared`` skip with a clear reason when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("EMD_SHARED", ROOT.parent / "shared"))


@pytest.fixture(scope="session")
def shared() -> Path:
    """The ``../shared`` folder (test data, official splits and weights), or skip."""
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} not found: the shared test data (FF++ samples, weights) are needed for this test")
    return SHARED


def shared_path(*parts: str) -> Path:
    """A path inside ``../shared``; skips the calling test when it does not exist."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"{p} not found (shared test data absent)")
    return p


@pytest.fixture
def study(tmp_path: Path):
    """An empty ``tiny`` study under ``tmp_path`` (its folders made, nothing run)."""
    from emdlib.study import Study

    return Study.open("tiny", tmp_path / "data", tmp_path / "results")


@pytest.fixture
def fake_run(study):
    """Write a run record into ``study`` as :func:`emdlib.study.experiments.run_cell` would (no training); returns
    ``fake_run(system, method, compression, accuracy, pixel_accuracy=None, seed=0, n_train_videos=None) -> run``."""
    from emdlib.study.experiments import run_name
    from emdlib.study.records import write_run_record

    def write(system: str, method: str, compression: str, accuracy: float, pixel_accuracy: float | None = None,
              seed: int = 0, n_train_videos: int | None = None) -> str:
        name = run_name(system, method, compression, seed, n_train_videos)
        metrics = {"accuracy": accuracy, "auc": 0.5}
        if pixel_accuracy is not None:
            metrics["pixel_accuracy"] = pixel_accuracy
        config = {"system": system, "method": method, "compression": compression, "n_train_videos": n_train_videos,
                  "n_test_images": 20, "preset": study.config()}
        write_run_record(study.paths.results, name, metrics, config, seed, wall_time_s=1.5, preset=study.name,
                         extra={"system": system, "method": method, "compression": compression,
                                "n_train_videos": n_train_videos})
        return name

    return write


@pytest.fixture()
def size_records(study, fake_run) -> Path:
    """Fig. 6 run records in ``study``: EMD on F2F c23 with 2 and 6 training videos × seeds 0-2 (one pixel accuracy
    missing), plus the full-data run, which is not a Fig. 6 point; returns the results folder."""
    for seed, acc, pix in [(0, 0.5, 0.8), (1, 0.7, 0.8), (2, 0.9, 0.9)]:
        fake_run("EMD", "Face2Face", "c23", acc, pix, seed=seed, n_train_videos=2)
    for seed, acc, pix in [(0, 1.0, 0.95), (1, 1.0, float("nan")), (2, 0.97, 0.97)]:
        fake_run("EMD", "Face2Face", "c23", acc, pix, seed=seed, n_train_videos=6)
    fake_run("EMD", "Face2Face", "c23", 0.1, 0.1)  # full-data run: not a Fig. 6 point
    return study.paths.results
