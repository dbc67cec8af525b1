"""Figures of the FER stream (notebook 01): confusion matrices, per-branch accuracy, Grad-CAMs (paper §III-C; the
CAMs are those of the paper's Fig. 7, here on the expression set).

Each function takes stored metrics or a trained model's outputs and returns a matplotlib figure; save with
:func:`emdlib.figures.save_figure`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from emdlib.data.expressions import EXPRESSIONS
from emdlib.figures import new_figure

log = logging.getLogger(__name__)


def confusion_figure(metrics: Mapping[str, Any], title: str = "", normalise: bool = True) -> Figure:
    """Seaborn heat map of an :func:`emdlib.train_fer.evaluate` confusion matrix (rows = truth, columns = ensemble vote).

    Classes that never occur (neither as truth nor as vote) are left out; rows are normalised to recall.
    """
    import seaborn as sns

    cm = np.asarray(metrics["confusion"], dtype=float)
    names = list(metrics.get("class_names", EXPRESSIONS))
    keep = np.flatnonzero(cm.sum(0) + cm.sum(1) > 0)
    cm = cm[np.ix_(keep, keep)]
    if normalise:
        cm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    fig, ax = new_figure(figsize=(0.6 * len(keep) + 2, 0.6 * len(keep) + 1.5))
    sns.heatmap(cm, annot=True, fmt=".2f" if normalise else ".0f", cmap="Blues", vmin=0, vmax=1 if normalise else None,
                xticklabels=[names[i] for i in keep], yticklabels=[names[i] for i in keep], cbar=False, ax=ax,
                annot_kws={"fontsize": 7})
    ax.set_xlabel("ensemble vote (Eq. 4)")
    ax.set_ylabel("true expression")
    ax.set_title(title or f"confusion (ensemble accuracy {metrics['ensemble_accuracy']:.3f})", fontsize=9)
    fig.tight_layout()
    return fig


def branch_accuracy_figure(results: Mapping[str, Mapping[str, Any]]) -> Figure:
    """Bar chart: per-branch and ensemble accuracy of each model (``{name: evaluate(...) metrics}``)."""
    fig, ax = new_figure(figsize=(6, 3))
    x0 = 0
    ticks, labels = [], []
    for name, m in results.items():
        accs = list(m["branch_accuracy"]) + [m["ensemble_accuracy"]]
        xs = np.arange(x0, x0 + len(accs))
        colours = ["#9ecae1"] * (len(accs) - 1) + ["#08519c"]
        ax.bar(xs, accs, color=colours)
        ticks += list(xs)
        labels += [f"{name} b{b + 1}" for b in range(len(accs) - 1)] + [f"{name} vote"]
        x0 += len(accs) + 1
    ax.set_xticks(ticks, labels, rotation=60, ha="right", fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_ylabel("test accuracy")
    ax.set_title("per-branch and ensemble accuracy", fontsize=9)
    fig.tight_layout()
    return fig


def cam_figure(
    images_bgr: torch.Tensor,
    cams: torch.Tensor,
    labels: Sequence[int],
    classes: Sequence[int],
    branches: Sequence[int] | None = None,
    title: str = "",
) -> Figure:
    """Faces (ESR input, BGR [0, 1]) over their Grad-CAMs ``(N, H, W)``: true vs predicted class, selected branch."""
    n = len(images_bgr)
    fig, axes = new_figure(2, n, figsize=(1.5 * n, 4.0), squeeze=False)
    for i in range(n):
        rgb = images_bgr[i].flip(0).permute(1, 2, 0).cpu().numpy()
        axes[0, i].imshow(rgb)
        axes[1, i].imshow(rgb)
        axes[1, i].imshow(cams[i].cpu().numpy(), cmap="jet", alpha=0.45, vmin=0, vmax=1)
        sub = f"\nbranch {int(branches[i]) + 1}" if branches is not None else ""
        axes[0, i].set_title(f"true {EXPRESSIONS[int(labels[i])]}", fontsize=7)
        axes[1, i].set_title(f"pred {EXPRESSIONS[int(classes[i])]}{sub}", fontsize=7)
        for ax in axes[:, i]:
            ax.set_xticks([])
            ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def sample_cams(model: torch.nn.Module, dataset: Any, n: int = 8, seed: int = 0) -> dict[str, Any]:
    """Grad-CAMs of the Eqs. 3–5 branch for ``n`` images of ``dataset`` (one per class first, then any)."""
    from emdlib.models.gradcam import GradCAM

    rng = np.random.default_rng(seed)
    labels = np.array([int(dataset[i][1]) for i in range(len(dataset))])
    order = list(rng.permutation(len(dataset)))
    picked: list[int] = []
    for c in np.unique(labels):
        picked.append(next(i for i in order if labels[i] == c))
    picked += [i for i in order if i not in picked]
    picked = picked[:n]
    x = torch.stack([dataset[i][0] for i in picked])
    device = next(model.parameters()).device
    with GradCAM(model) as cam:
        res = cam(x.to(device), size=tuple(x.shape[-2:]))
    return {"images": x, "cams": res.cam.cpu(), "labels": labels[picked].tolist(), "classes": res.cls.tolist(),
            "branches": res.branch.tolist()}
