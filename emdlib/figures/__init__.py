"""Figures of the study (style.md, "cebra-figures"): each renders from what earlier stages stored — run records,
test predictions, the face cache, trained checkpoints — and never trains, so a figure can be restyled cheaply.

| module | figure | notebook |
|---|---|---|
| :mod:`emdlib.figures.data` | Fig. 3: pristine frames, their manipulations and masks | 00 |
| :mod:`emdlib.figures.fer` | FER stream: confusion, per-branch accuracy, Grad-CAMs | 01 |
| :mod:`emdlib.figures.emd` | EMD training curves and predicted masks | 02 |
| :mod:`emdlib.figures.roc` | Figs. 4–5: ROC with and without the FER stream | 06 |
| :mod:`emdlib.figures.training_size` | Fig. 6: accuracy against the number of training videos | 05 |
| :mod:`emdlib.figures.masks_cams` | Fig. 7: original, fake, ground truth, predicted mask, CAM | 06 |

Figures are :class:`matplotlib.figure.Figure` objects built without pyplot, so no plotting backend is chosen (or
needed) by emdlib; :func:`save_figure` writes one atomically as PNG.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from emdlib.data.transforms import xception_to_rgb01
from emdlib.io import atomic_path


def new_figure(nrows: int = 1, ncols: int = 1, figsize: tuple[float, float] | None = None, **kwargs
               ) -> tuple[Figure, object]:
    """A pyplot-free figure and its axes (``Figure.subplots`` arguments; ``squeeze`` as there)."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, **kwargs)


def save_figure(fig: Figure, path: str | Path, dpi: int = 120) -> Path:
    """Save ``fig`` atomically as PNG (tight bounding box) and return the path."""
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")
    return path


def display_image(image: torch.Tensor) -> np.ndarray:
    """A dataset image (the Xception input ``(3, S, S)``, :mod:`emdlib.data.transforms`) as ``(S, S, 3)`` RGB in
    [0, 1] for ``imshow``."""
    return xception_to_rgb01(image.detach().float().cpu()).clamp(0, 1).permute(1, 2, 0).numpy()


def legend_texts(fig: Figure) -> list[str]:
    """Every legend entry of a figure's axes (used to check what the ROC legends say)."""
    return [t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()]


__all__ = ["display_image", "legend_texts", "new_figure", "save_figure"]
