"""Figs. 4 and 5 (§IV-E1): classification and segmentation ROC of EMD with the FER stream (solid) and without it
(dotted; "XceptionNet (seg)", the same network), from the runs' stored test predictions."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import roc_curve

from emdlib.figures import new_figure
from emdlib.metrics import roc_auc

log = logging.getLogger(__name__)

#: Figs. 4–5: EMD with its FER stream and without it (the XceptionNet segmentation row of Table IV).
ROC_SYSTEMS: tuple[str, ...] = ("EMD", "XceptionNet (seg)")
#: File names of the cells' ROC figures, as the paper numbers them.
FIGURE_NAMES = {"Face2Face": "fig4_roc_face2face.png", "NeuralTextures": "fig5_roc_neuraltextures.png"}
FIGURE_NUMBERS = {"Face2Face": "Fig. 4", "NeuralTextures": "Fig. 5"}


@dataclass(frozen=True)
class ROCCurve:
    """A ROC curve: false- and true-positive rates (sklearn ``roc_curve``) and the area under it."""

    fpr: np.ndarray
    tpr: np.ndarray
    auc: float


def _curve(labels: np.ndarray, scores: np.ndarray) -> ROCCurve:
    auc = roc_auc(labels, scores)  # sklearn roc_auc_score; NaN (with a warning) for one class
    if math.isnan(auc):
        return ROCCurve(np.zeros(0), np.zeros(0), auc)
    fpr, tpr, _ = roc_curve(np.asarray(labels).astype(np.int64).ravel(), np.asarray(scores, np.float64).ravel())
    return ROCCurve(fpr, tpr, auc)


def roc_curves(pred: Mapping[str, np.ndarray]) -> dict[str, ROCCurve]:
    """``{"classification": frame-level ROC on P(fake), "segmentation": pixel-level ROC on the sampled pixels}``
    of one prediction set (:func:`emdlib.study.records.load_predictions`); segmentation only when pixels were stored."""
    out = {"classification": _curve(pred["label"], pred["prob"])}
    if "pixel_score" in pred and len(pred["pixel_score"]):
        out["segmentation"] = _curve(pred["pixel_label"], pred["pixel_score"])
    return out


def _uses_fer(system: str) -> bool:
    from emdlib.study.experiments import SYSTEMS

    spec = SYSTEMS.get(system)
    return bool(spec and spec.fer)


def roc_figure(preds: Mapping[str, Mapping[str, np.ndarray]], title: str = "",
               colours: Mapping[str, str] | None = None) -> Figure:
    """Figs. 4/5: classification and segmentation ROC of each system in ``preds`` (``{system: predictions}``).

    As the paper: solid = with the FER stream, dotted = without; both EMD lines blue. The legend gives the AUC
    (sklearn ``roc_auc_score``, 3 decimals); a curve with one class only is listed as "AUC n/a".
    """
    fig, axes = new_figure(1, 2, figsize=(9.0, 5.0))
    colours = dict(colours or {})
    tasks = (("classification", "classification (frame level)"), ("segmentation", "segmentation (pixel level)"))
    for i, (system, pred) in enumerate(preds.items()):
        curves = roc_curves(pred)
        fer = _uses_fer(system)
        colour = colours.get(system, "tab:blue" if system in ROC_SYSTEMS else f"C{i + 1}")
        for ax, (task, _) in zip(axes, tasks):
            curve = curves.get(task)
            if curve is None:
                continue
            auc = "AUC n/a" if math.isnan(curve.auc) else f"AUC = {curve.auc:.3f}"
            label = f"{system} ({'with' if fer else 'without'} FER), {auc}"
            if len(curve.fpr):
                ax.plot(curve.fpr, curve.tpr, ls="-" if fer else ":", lw=2.2, color=colour, label=label)
            else:
                ax.plot([], [], ls="-" if fer else ":", color=colour, label=label)
    for ax, (_, name) in zip(axes, tasks):
        ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="0.6")
        ax.set_xlim(-0.01, 1.01)
        ax.set_ylim(-0.01, 1.01)
        ax.set_aspect("equal")
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.set_title(name, fontsize=10)
        ax.grid(alpha=0.3)
        # below the axes, so that the legend never hides a curve
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def roc_figure_name(method: str) -> str:
    """File name of a cell's ROC figure: ``fig4_roc_face2face.png`` (F2F), ``fig5_roc_neuraltextures.png`` (NT)."""
    return FIGURE_NAMES.get(method, f"roc_{method.lower()}.png")


def roc_title(method: str, compression: str) -> str:
    """Title of a cell's ROC figure: ``Fig. 4 (ours): … Face2Face c23`` (``ROC`` for a cell the paper does not show)."""
    return (f"{FIGURE_NUMBERS.get(method, 'ROC')} (ours): ROC with and without the FER stream, {method} "
            f"{compression}")
