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
