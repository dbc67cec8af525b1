"""Evaluation metrics (design.md "Results", reference-facts §E) on the arrays :func:`emdlib.train.predict` returns.

* Classification, frame level (§E.1, §E.3): accuracy (P(fake) > 0.5, i.e. the arg-max of the two logits), ROC AUC,
  average precision and equal error rate, with P(fake) as the score and label 1 = fake.
* Video level: the mean frame probability per (method, compression, video), then the same metrics over videos.
* Localisation (§E.2, §E.4): pixel accuracy at 0.5 averaged over **all** test images (reals have all-zero masks);
  IoU and F1 over the **fakes only** (per image, then averaged; also pooled over all fake pixels); pixel-level ROC AUC
  on the bounded pixel sample.

A score that is undefined for the input (AUC/AP/EER with only one class present, IoU/F1 without fakes) is NaN with a
logged warning — never an exception — so a tiny or one-sided split still gives a results table.
"""

from __future__ import annotations

import logging
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

log = logging.getLogger(__name__)

THRESHOLD = 0.5


def _binary(labels: Sequence, scores: Sequence, name: str) -> tuple[np.ndarray, np.ndarray] | None:
    y = np.asarray(labels).astype(np.int64).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"{name}: {len(y)} labels but {len(s)} scores")
    if y.size == 0 or np.unique(y).size < 2:
        log.warning("%s is undefined with a single class (%d samples, classes %s): NaN", name, y.size,
                    np.unique(y).tolist())
        return None
    return y, s


def accuracy(labels: Sequence, probs: Sequence, threshold: float = THRESHOLD) -> float:
    """Fraction of samples whose prediction (P(fake) > threshold; ties → real, as arg-max) equals the label (§E.1)."""
    y = np.asarray(labels).astype(np.int64).ravel()
    p = np.asarray(probs, dtype=np.float64).ravel()
    if y.size == 0:
        log.warning("accuracy of an empty set: NaN")
        return float("nan")
    return float(np.mean((p > threshold).astype(np.int64) == y))


def roc_auc(labels: Sequence, scores: Sequence) -> float:
    """Area under the ROC curve (sklearn ``roc_auc_score``, §E.3); NaN for a single class."""
    d = _binary(labels, scores, "ROC AUC")
    return float("nan") if d is None else float(roc_auc_score(*d))


def average_precision(labels: Sequence, scores: Sequence) -> float:
    """Average precision with fake (1) as the positive class (sklearn); NaN for a single class."""
    d = _binary(labels, scores, "average precision")
    return float("nan") if d is None else float(average_precision_score(*d))


def eer(labels: Sequence, scores: Sequence) -> float:
    """Equal error rate: the error where the false-positive rate equals the false-negative rate (1 − TPR).

    Computed on sklearn's ROC points; between the two points where FPR − FNR changes sign the crossing is found by
    linear interpolation (the ROC convex segment), as the usual EER definition. NaN for a single class.
    """
    d = _binary(labels, scores, "EER")
    if d is None:
        return float("nan")
    fpr, tpr, _ = roc_curve(*d, drop_intermediate=False)
    fnr = 1.0 - tpr
    diff = fpr - fnr  # increasing from -1 (threshold +inf) to +1
    i = int(np.argmax(diff >= 0))  # diff[0] = -1 (nothing flagged), diff[-1] = +1 (everything flagged)
    if diff[i] == 0:
        return float(fpr[i])
    t = -diff[i - 1] / (diff[i] - diff[i - 1])
    return float(fpr[i - 1] + t * (fpr[i] - fpr[i - 1]))


def classification_metrics(labels: Sequence, probs: Sequence, threshold: float = THRESHOLD) -> dict[str, float]:
    """``{"accuracy", "auc", "ap", "eer", "n", "n_fake"}`` for one set of labels and P(fake) scores."""
    y = np.asarray(labels).astype(np.int64).ravel()
    return {"accuracy": accuracy(y, probs, threshold), "auc": roc_auc(y, probs), "ap": average_precision(y, probs),
            "eer": eer(y, probs), "n": int(y.size), "n_fake": int(y.sum())}


def video_scores(pred: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """One row per (method, compression, video): mean frame P(fake), label and number of frames (design.md "Results").

    A real video evaluated in several method cells appears once per method key, as in FF++'s per-method tables.
    """
    df = pd.DataFrame({"method": pred["method"], "compression": pred["compression"], "video": pred["video"],
                       "prob": np.asarray(pred["prob"], dtype=np.float64), "label": np.asarray(pred["label"])})
    g = df.groupby(["method", "compression", "video"], sort=True)
    out = g.agg(prob=("prob", "mean"), label=("label", "max"), frames=("prob", "size")).reset_index()
    mixed = g["label"].nunique() > 1
    if mixed.any():
        raise ValueError(f"videos with mixed frame labels: {list(mixed[mixed].index)[:5]}")
    return out


def pixel_metrics(pred: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Localisation metrics from :func:`emdlib.train.predict`'s pixel fields (reference-facts §E.2, §E.4).

    * ``pixel_accuracy``: mean over all images of the per-image accuracy at 0.5 (reals: all-zero ground truth).
    * ``iou`` / ``f1``: per fake image ``TP/(TP+FP+FN)`` and ``2TP/(2TP+FP+FN)`` averaged over fakes (an image whose
      ground truth and prediction are both empty scores 1); ``iou_pooled`` / ``f1_pooled`` from the summed counts.
    * ``pixel_auc``: ROC AUC over the sampled pixels of all images.
    """
    if "pixel_accuracy" not in pred:
        return {}
    labels = np.asarray(pred["label"]).astype(np.int64)
    tp, fp, fn = (np.asarray(pred[k], dtype=np.float64) for k in ("pixel_tp", "pixel_fp", "pixel_fn"))
    out = {"pixel_accuracy": float(np.mean(pred["pixel_accuracy"])) if len(labels) else float("nan")}
    fake = labels == 1
    if fake.any():
        denom_iou = tp[fake] + fp[fake] + fn[fake]
        denom_f1 = 2 * tp[fake] + fp[fake] + fn[fake]
        with np.errstate(invalid="ignore", divide="ignore"):
            out["iou"] = float(np.mean(np.where(denom_iou > 0, tp[fake] / denom_iou, 1.0)))
            out["f1"] = float(np.mean(np.where(denom_f1 > 0, 2 * tp[fake] / denom_f1, 1.0)))
        T, P, N = tp[fake].sum(), fp[fake].sum(), fn[fake].sum()
        out["iou_pooled"] = float(T / (T + P + N)) if T + P + N > 0 else 1.0
        out["f1_pooled"] = float(2 * T / (2 * T + P + N)) if 2 * T + P + N > 0 else 1.0
    else:
        log.warning("IoU/F1 are defined over fakes only and there are none: NaN")
        out.update(iou=float("nan"), f1=float("nan"), iou_pooled=float("nan"), f1_pooled=float("nan"))
    if "pixel_score" in pred:
        out["pixel_auc"] = roc_auc(pred["pixel_label"], pred["pixel_score"])
    return out


def pixel_roc(pred: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-level ROC curve (FPR, TPR) over the sampled pixels (Fig./Table IV segmentation ROC); empty if undefined."""
    d = _binary(pred["pixel_label"], pred["pixel_score"], "pixel ROC")
    if d is None:
        return np.zeros(0), np.zeros(0)
    fpr, tpr, _ = roc_curve(*d)
    return fpr, tpr


def evaluate(pred: Mapping[str, np.ndarray], threshold: float = THRESHOLD) -> dict[str, float]:
    """All metrics of one prediction set: frame-level, video-level (``video_*``) and pixel-level."""
    out = classification_metrics(pred["label"], pred["prob"], threshold)
    vids = video_scores(pred)
    out.update({f"video_{k}": v for k, v in classification_metrics(vids["label"], vids["prob"], threshold).items()})
    out.update(pixel_metrics(pred))
    return out


def subset(pred: Mapping[str, np.ndarray], mask: np.ndarray) -> dict[str, np.ndarray]:
    """The rows of a prediction set selected by a boolean image mask (pixel samples follow their images)."""
    mask = np.asarray(mask, dtype=bool)
    n = len(mask)
    out: dict[str, np.ndarray] = {}
    for k, v in pred.items():
        v = np.asarray(v)
        if k in ("pixel_score", "pixel_label"):
            out[k] = v[mask[np.asarray(pred["pixel_image"])]]
        elif k == "pixel_image":
            remap = np.cumsum(mask) - 1
            out[k] = remap[v[mask[v]]]
        elif len(v) == n:
            out[k] = v[mask]
        else:
            out[k] = v
    return out


def evaluate_by(pred: Mapping[str, np.ndarray], by: str = "compression") -> pd.DataFrame:
    """:func:`evaluate` per value of ``by`` (e.g. ``"compression"``); one row each. For methods see
    :func:`evaluate_by_method`."""
    rows = []
    for value in sorted(set(np.asarray(pred[by]).tolist())):
        rows.append({by: value, **evaluate(subset(pred, np.asarray(pred[by]) == value))})
    return pd.DataFrame(rows)


def evaluate_by_method(pred: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """:func:`evaluate` per manipulation method: that method's fakes against all reals (FF++ per-method tables)."""
    method, labels = np.asarray(pred["method"]), np.asarray(pred["label"])
    rows = []
    for m in sorted(set(method[labels == 1].tolist())):
        rows.append({"method": m, **evaluate(subset(pred, (method == m) | (labels == 0)))})
    return pd.DataFrame(rows)
