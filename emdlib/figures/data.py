"""Figures of the study, rendered from stored data and results (never by retraining).

* :func:`fig3_grid` — Fig. 3 style: a pristine frame, each manipulation of it and its mask, for several identities.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from emdlib.io import atomic_path  # noqa: E402

log = logging.getLogger(__name__)


def save_figure(fig: "plt.Figure", path: str | Path, dpi: int = 120) -> Path:
    """Save a figure atomically as PNG and close it."""
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")
    plt.close(fig)
    return path


def fig3_grid(
    root: str | Path,
    pairs: Sequence[tuple[str, str]],
    methods: Sequence[str],
    compression: str = "c23",
    frame: int = 0,
) -> "plt.Figure":
    """Fig. 3 of the paper, for our data: per row, the pristine frame of target ``t``, then for each method the
    fake ``t_s`` and its ground-truth mask (white = manipulated), all at frame index ``frame``."""
    from emdlib.data.ffpp import mask_path, video_path
    from emdlib.data.video import read_frames

    cols = 1 + 2 * len(methods)
    fig, axes = plt.subplots(len(pairs), cols, figsize=(1.6 * cols, 1.7 * len(pairs)), squeeze=False)
    for r, (t, s) in enumerate(pairs):
        images = [(read_frames(video_path(root, "original", compression, t), [frame])[frame], f"pristine {t}")]
        for m in methods:
            fake_id = f"{t}_{s}"
            images.append((read_frames(video_path(root, m, compression, fake_id), [frame])[frame], f"{m} {fake_id}"))
            mask = read_frames(mask_path(root, m, fake_id), [frame])[frame][..., 0]
            images.append((mask, "mask"))
        for c, (img, title) in enumerate(images):
            ax = axes[r, c]
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
            if title != "mask" or r == 0:
                ax.set_title(title, fontsize=7)
    fig.suptitle(f"Fig. 3 (ours): pristine frames, their manipulations and masks ({compression})", fontsize=9)
    return fig


def image_grid(images: Sequence[np.ndarray], titles: Sequence[str] | None = None, cols: int = 8) -> "plt.Figure":
    """A plain grid of RGB/grey images with optional titles."""
    rows = int(np.ceil(len(images) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.5 * cols, 1.6 * rows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < len(images):
            img = images[i]
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None)
            if titles:
                ax.set_title(titles[i], fontsize=7)
    return fig
