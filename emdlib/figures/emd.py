"""Figures of notebook 02 (§III-D, §IV-B): the training curves of the EMD runs (Eqs. 6–7 per epoch) and the masks
the trained systems predict on test faces (rebuilt from the runs' checkpoints; nothing is trained)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from emdlib.figures import display_image, new_figure
from emdlib.study import Study


def training_curves_figure(records: Iterable[Mapping[str, Any]], warmup_epochs: int) -> Figure:
    """L_cls (Eq. 6), L_seg (Eq. 7) on the training set and validation accuracy per epoch, one line per run;
    the warm-up epochs are shaded."""
    fig, axes = new_figure(1, 3, figsize=(13, 3.4))
    for rec in records:
        h = pd.DataFrame(rec.get("history") or [])
        label = f'{rec["system"]} · {rec["method"]} {rec["compression"]}'
        for ax, col in zip(axes, ["train_loss_cls", "train_loss_seg", "val_accuracy"]):
            if col in h:
                ax.plot(h["epoch"], h[col], marker="o", label=label)
    for ax, title in zip(axes, ["$L_{cls}$ (Eq. 6), training", "$L_{seg}$ (Eq. 7), training", "validation accuracy"]):
        ax.axvspan(0.5, warmup_epochs + 0.5, color="0.92", zorder=0)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("epoch (grey: warm-up)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[2].legend(fontsize=7)
    return fig


def predicted_masks_figure(study: Study, systems: Sequence[str], method: str, compression: str, seed: int = 0,
                           n_fake: int = 4, n_real: int = 2) -> Figure:
    """Test faces of one cell: the face, its ground-truth mask and each trained system's predicted mask and P(fake)
    (each system rebuilt from its run's best checkpoint, :func:`emdlib.study.records.load_run_model`)."""
    from emdlib.study.experiments import cell_datasets, run_name
    from emdlib.study.records import load_run_model
    from emdlib.train import predict

    test = cell_datasets(study, method, compression)["test"]
    labels = test.labels
    rng = np.random.default_rng(seed)
    pick = np.concatenate([rng.permutation(np.flatnonzero(labels == 1))[:n_fake],
                           rng.permutation(np.flatnonzero(labels == 0))[:n_real]])
    items = [test[int(i)] for i in pick]
    probs = {s: predict(load_run_model(study.paths.runs, run_name(s, method, compression, seed)), items, device="cpu",
                        keep_masks=True)
             for s in systems}
    cols = 2 + len(systems)
    fig, axes = new_figure(len(items), cols, figsize=(1.8 * cols, 1.9 * len(items)), squeeze=False)
    for j, item in enumerate(items):
        row = [(display_image(item["image"]), f'{item["method"]} {item["video"]}'),
               (item["mask"][0].numpy(), "ground truth")]
        row += [(probs[s]["mask_prob"][j].astype(np.float32), f'{s}\np(fake)={probs[s]["prob"][j]:.2f}') for s in systems]
        for ax, (img, title) in zip(axes[j], row):
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1)
            ax.set_title(title, fontsize=7)
            ax.axis("off")
    return fig

