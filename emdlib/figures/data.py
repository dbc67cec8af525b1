"""Fig. 3 of the paper, for our data: pristine frames, each manipulation of them and the ground-truth masks.

Read from the FF++-layout world the data stage wrote (:mod:`emdlib.study.data`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

from matplotlib.figure import Figure

from emdlib.figures import new_figure, save_figure
from emdlib.study import Study

log = logging.getLogger(__name__)


def fig3_grid(root: str | Path, pairs: Sequence[tuple[str, str]], methods: Sequence[str], compression: str = "c23",
              frame: int = 0) -> Figure:
    """Fig. 3: per row, the pristine frame of target ``t``, then for each method the fake ``t_s`` and its
    ground-truth mask (white = manipulated), all at frame index ``frame`` of the videos under ``root``."""
    from emdlib.data.ffpp import ORIGINAL, mask_path, video_path
    from emdlib.data.video import read_frames

    cols = 1 + 2 * len(methods)
    fig, axes = new_figure(len(pairs), cols, figsize=(1.6 * cols, 1.7 * len(pairs)), squeeze=False)
    for r, (t, s) in enumerate(pairs):
        images = [(read_frames(video_path(root, ORIGINAL, compression, t), [frame])[frame], f"pristine {t}")]
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


def save_fig3(study: Study, rows: int = 4, frame: int = 0) -> Path:
    """Render Fig. 3 for the first ``rows`` pairs of the study's splits (test, then val, then train) to
    ``figures/fig3_<world>.png`` and return the path."""
    from emdlib.data.ffpp import load_splits

    data, paths = study.preset.data, study.paths
    splits = load_splits(paths.splits)
    pairs = [p for split in ("test", "val", "train") for p in splits.get(split, [])][:rows]
    fig = fig3_grid(paths.world, pairs, data.methods, compression=data.compressions[0], frame=frame)
    return save_figure(fig, paths.figures / f"fig3_{data.world}.png")
