"""Analysis of the results (paper §IV-D2 ablation and §IV-E): Table V, Figs. 4–7, from stored runs.

Everything here renders from what :func:`emdlib.experiments.run_cell` stored — run records
(``results/<preset>/runs/<run>/metrics.json``), test predictions (``predictions.npz``) and the best checkpoint of a
run — so a table or figure can be restyled without retraining (style.md, "cebra-figures"). The only functions that
may train are the two *runners*, which call :func:`emdlib.experiments.run_cell` (finished runs are read back):

* :func:`training_size_runs` — the runs of Fig. 6 (EMD on nested subsets of the training videos, several seeds).

What each figure or table shows:

* :func:`ablation_table` — Table V: classification (frame accuracy) and segmentation (pixel accuracy) of the four
  FER variants on the F2F / NT HQ cells, beside the paper's numbers (:data:`emdlib.paper.TABLE_V`).
* :func:`roc_figure` — Figs. 4 and 5: frame-level classification ROC and pixel-level segmentation ROC of EMD (with the
  FER stream, solid) and XceptionNet-seg (EMD without it, dotted), the AUC in the legend.
* :func:`training_size_table` / :func:`training_size_figure` — Fig. 6: detection and segmentation accuracy against
  the number of training videos, mean over seeds with a t-interval.
* :func:`fig7_samples` / :func:`fig7_grid` — Fig. 7: original, manipulated, ground-truth mask, predicted mask and the
  Grad-CAM of the ESR branch selected by Eqs. 3–5 (left: manipulated faces; right: pristine faces).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402

from emdlib.metrics import roc_auc  # noqa: E402
from emdlib.presets import Preset  # noqa: E402

log = logging.getLogger(__name__)

#: Table V rows, in the paper's order.
ABLATION_SYSTEMS: tuple[str, ...] = ("MultiTask+SimFER", "XceptionNet+SimFER", "MultiTask+EnsFER", "EMD")
#: Figs. 4–5: EMD with its FER stream and without it (the XceptionNet segmentation row of Table IV).
ROC_SYSTEMS: tuple[str, ...] = ("EMD", "XceptionNet (seg)")
#: The expression-manipulation methods of Table V and Figs. 4–7.
EXPRESSION_METHODS: tuple[str, ...] = ("Face2Face", "NeuralTextures")
#: Metrics of Table V / Fig. 6: classification = frame accuracy, segmentation = pixel accuracy (reference-facts §E).
CLS, SEG = "accuracy", "pixel_accuracy"
METRIC_LABELS = {CLS: "detection (cls) accuracy", SEG: "segmentation (seg) accuracy"}
SHORT = {"Deepfakes": "DF", "Face2Face": "F2F", "NeuralTextures": "NT"}
FIGURE_NAMES = {"Face2Face": "fig4_roc_face2face.png", "NeuralTextures": "fig5_roc_neuraltextures.png"}


# ------------------------------------------------------------------------------------------------------------------
# cells and records
# ------------------------------------------------------------------------------------------------------------------


def paper_cells(preset: Preset, methods: Sequence[str] = EXPRESSION_METHODS,
                compression: str = "c23") -> list[tuple[str, str]]:
    """The preset's cells (``preset.emd.cells``) that Table V and Figs. 4, 5, 7 use: F2F and NT at HQ (c23)."""
    cells = [(m, c) for m, c in preset.emd.cells if m in methods and c == compression]
    if not cells:
        raise ValueError(f"preset {preset.name!r} has no {'/'.join(methods)} {compression} cell "
                         f"(its cells: {list(preset.emd.cells)})")
    return cells


def records_frame(records: pd.DataFrame | Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Run records as one flat table (one row per run, one column per metric).

    Accepts :func:`emdlib.runs.load_run_records`' frame as is, or the dicts :func:`emdlib.experiments.run_cell`
    returns (``metrics`` nested); ``system``/``method``/``compression``/``n_train_videos`` come from the record's top
    level, else from its ``config``.
    """
    if isinstance(records, pd.DataFrame):
        df = records.copy()
    else:
        rows = []
        for rec in records:
            row = {k: v for k, v in rec.items() if not isinstance(v, (dict, list))}
            for key in ("system", "method", "compression", "n_train_videos"):
                if key not in row and isinstance(rec.get("config"), Mapping):
                    row[key] = rec["config"].get(key)
            for k, v in (rec.get("metrics") or {}).items():
                if not isinstance(v, (dict, list)):
                    row[k] = np.nan if v is None else v
            rows.append(row)
        df = pd.DataFrame(rows)
    if len(df) and "config" in df:
        for key in ("system", "method", "compression", "n_train_videos"):
            from_config = df["config"].map(lambda c, k=key: c.get(k) if isinstance(c, Mapping) else None)
            df[key] = df[key].where(df[key].notna(), from_config) if key in df else from_config
    return df


# ------------------------------------------------------------------------------------------------------------------
# Table V
# ------------------------------------------------------------------------------------------------------------------


def ablation_table(records: pd.DataFrame | Iterable[Mapping[str, Any]],
                   systems: Sequence[str] = ABLATION_SYSTEMS,
                   cells: Sequence[tuple[str, str]] | None = None, paper: bool = True) -> pd.DataFrame:
    """Table V: Cls (frame accuracy) and Seg (pixel accuracy), in %, per system (rows) and cell (columns).

    Several seeds of one system and cell are averaged. ``paper`` adds the paper's value beside each of ours
    (c23 cells only; Table V is HQ). Columns are a MultiIndex ``(cell, "Cls"|"Seg", "ours"|"paper")``.
    """
    from emdlib.paper import TABLE_V

    df = records_frame(records)
    if not len(df):
        raise ValueError("no run records for Table V")
    df = df[df["system"].isin(systems)]
    if "n_train_videos" in df:  # training-size runs are not the full-data rows of the table
        df = df[df["n_train_videos"].isna()]
    if cells is None:
        cells = sorted({(m, c) for m, c in zip(df["method"], df["compression"])})
    data: dict[tuple[str, str, str], list[float]] = {}
    for method, comp in cells:
        label = f"{SHORT.get(method, method)} {comp}"
        sub = df[(df["method"] == method) & (df["compression"] == comp)]
        for metric, short in ((CLS, "Cls"), (SEG, "Seg")):
            means = sub.groupby("system")[metric].mean() if metric in sub else pd.Series(dtype=float)
            data[(label, short, "ours")] = [100.0 * means.get(s, np.nan) for s in systems]
            if paper:
                data[(label, short, "paper")] = [TABLE_V.get(s, {}).get((method, short.lower()), np.nan)
                                                 if comp == "c23" else np.nan for s in systems]
    table = pd.DataFrame(data, index=pd.Index(list(systems), name="system"))
    table.columns = pd.MultiIndex.from_tuples(table.columns, names=["cell", "task", "source"])
    return table


# ------------------------------------------------------------------------------------------------------------------
# Figs. 4–5: ROC curves with and without the FER stream
# ------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ROCCurve:
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
    of one prediction set (:func:`emdlib.experiments.load_predictions`); segmentation only when pixels were stored."""
    out = {"classification": _curve(pred["label"], pred["prob"])}
    if "pixel_score" in pred and len(pred["pixel_score"]):
        out["segmentation"] = _curve(pred["pixel_label"], pred["pixel_score"])
    return out


def _uses_fer(system: str) -> bool:
    from emdlib.experiments import SYSTEMS

    spec = SYSTEMS.get(system)
    return bool(spec and spec.fer)


def roc_figure(preds: Mapping[str, Mapping[str, np.ndarray]], title: str = "",
               colours: Mapping[str, str] | None = None) -> "plt.Figure":
    """Figs. 4/5: classification and segmentation ROC of each system in ``preds`` (``{system: predictions}``).

    As the paper: solid = with the FER stream, dotted = without; both EMD lines blue. The legend gives the AUC
    (sklearn ``roc_auc_score``, 3 decimals); a curve with one class only is listed as "AUC n/a".
    """
    fig, axes = plt.subplots(1, 2, figsize=(9.0, 5.0))
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


def legend_texts(fig: "plt.Figure") -> list[str]:
    """Every legend entry of a figure (used to check what the ROC legends say)."""
    return [t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()]


# ------------------------------------------------------------------------------------------------------------------
# Fig. 6: size of the training data
# ------------------------------------------------------------------------------------------------------------------


def _train_videos(preset: Preset) -> int:
    """Pristine training videos of the preset: two per train pair (FF++ splits; 720 for the paper)."""
    return 2 * int(preset.data.pairs[0])


def training_size_points(preset: Preset, n_points: int | None = None) -> list[int]:
    """Numbers of (pristine) training videos for Fig. 6, increasing, ending at the preset's full training set.

    The paper goes from 10 to ~700 videos. Here the points are geometrically spaced between 10 (2 when the preset has
    fewer than 100 training videos) and ``2 × train pairs``; by default 2 points for a smoke-test preset (≤ 8 videos),
    4 up to 200 videos, 6 beyond (e.g. ``tiny`` → [2, 6], ``cpu`` → [2, 4, 9, 20], ``paper`` → 10 … 720).
    """
    total = _train_videos(preset)
    if total < 1:
        raise ValueError(f"preset {preset.name!r} has no training videos")
    if n_points is None:
        n_points = 2 if total <= 8 else 4 if total <= 200 else 6
    if n_points < 1:
        raise ValueError(f"n_points must be >= 1, got {n_points}")
    lo = min(10 if total >= 100 else 2, total)
    points = sorted({int(round(x)) for x in np.geomspace(lo, total, n_points)} | {total})
    return [p for p in points if 1 <= p <= total]


def training_size_plan(preset: Preset) -> dict[str, Any]:
    """Preset-dependent defaults of notebook 05: ``points``, ``seeds`` (three, as the minimum for an interval) and
    ``cells`` — F2F and one other cell of the preset (NT, else DF) as the paper's two panels; one cell for a
    smoke-test preset (≤ 8 training videos) or when the preset asks for one (``EMDConfig.curve_cells``)."""
    cells = list(preset.emd.cells)
    f2f = [c for c in cells if c[0] == "Face2Face"] or cells[:1]
    chosen = f2f[:1]
    if _train_videos(preset) > 8 and preset.emd.curve_cells > 1:
        others = [c for m in ("NeuralTextures", "Deepfakes") for c in cells if c[0] == m and c[1] == chosen[0][1]]
        chosen += others[:1]
    return {"points": training_size_points(preset, preset.emd.curve_points), "seeds": [0, 1, 2], "cells": chosen}


def training_size_runs(paths: Any, preset: Preset, points: Sequence[int], seeds: Sequence[int],
                       cells: Sequence[tuple[str, str]], system: str = "EMD") -> list[dict[str, Any]]:
    """Fig. 6's runs: ``system`` on each cell trained on the first ``n`` pristine training videos (and their fakes;
    :meth:`~emdlib.data.datasets.ManipulationDataset.subset_videos`, nested per seed) for every ``n`` and seed.

    A runner, not a figure: it calls :func:`emdlib.experiments.run_cell`, which reads finished runs back.
    """
    from emdlib.experiments import run_cell

    records = []
    for method, comp in cells:
        for n in points:
            for seed in seeds:
                log.info("Fig. 6: %s on %s %s, %d training videos, seed %d", system, method, comp, n, seed)
                records.append(run_cell(paths, preset, system, method, comp, seed=seed, n_train_videos=int(n)))
    return records


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """``(mean, low, high)``: Student-t confidence interval of the mean, ``mean ± t_{(1+level)/2, k-1} · s/√k``
    (``s`` with ``k - 1`` degrees of freedom); NaN bounds for fewer than two values."""
    from scipy import stats

    x = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=np.float64)
    if x.size == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(x.mean())
    if x.size < 2:
        return mean, float("nan"), float("nan")
    half = float(stats.t.ppf(0.5 + level / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return mean, mean - half, mean + half


def training_size_table(records: pd.DataFrame | Iterable[Mapping[str, Any]],
                        metrics: Sequence[str] = (CLS, SEG), level: float = 0.95) -> pd.DataFrame:
    """Fig. 6 data: one row per (system, method, compression, n_train_videos, metric) with the seeds' ``values``,
    ``n_seeds``, ``mean``, ``std`` (ddof 1) and the ``level`` t-interval ``ci_low``/``ci_high``.

    Only runs with ``n_train_videos`` set (training-size runs) are used; NaN metric values are left out.
    """
    df = records_frame(records)
    if "n_train_videos" not in df or not df["n_train_videos"].notna().any():
        raise ValueError("no training-size runs (records with n_train_videos) to tabulate")
    df = df[df["n_train_videos"].notna()].copy()
    df["n_train_videos"] = df["n_train_videos"].astype(int)
    rows = []
    keys = ["system", "method", "compression", "n_train_videos"]
    for key, group in df.groupby(keys, sort=True):
        for metric in metrics:
            vals = [float(v) for v in group[metric]] if metric in group else []
            vals = [v for v in vals if np.isfinite(v)]
            mean, lo, hi = t_interval(vals, level)
            rows.append({**dict(zip(keys, key)), "metric": metric, "n_seeds": len(vals),
                         "seeds": sorted(int(s) for s in group["seed"]) if "seed" in group else [],
                         "values": vals, "mean": mean,
                         "std": float(np.std(vals, ddof=1)) if len(vals) > 1 else float("nan"),
                         "ci_low": lo, "ci_high": hi})
    return pd.DataFrame(rows)


def training_size_figure(df: pd.DataFrame, title: str = "", level: float = 0.95) -> "plt.Figure":
    """Fig. 6: mean accuracy (%) against the number of training videos, one panel per cell, detection and
    segmentation as two lines with their t-interval bands (clipped to [0, 100] %) and the single seeds as dots."""
    cells = list(dict.fromkeys(zip(df["method"], df["compression"])))
    if not cells:
        raise ValueError("empty training-size table")
    fig, axes = plt.subplots(1, len(cells), figsize=(4.6 * len(cells), 3.8), squeeze=False)
    colours = {CLS: "tab:blue", SEG: "tab:orange"}
    for ax, (method, comp) in zip(axes[0], cells):
        sub = df[(df["method"] == method) & (df["compression"] == comp)]
        xs_all = sorted(sub["n_train_videos"].unique())
        for j, metric in enumerate(dict.fromkeys(sub["metric"])):
            m = sub[sub["metric"] == metric].sort_values("n_train_videos")
            x = m["n_train_videos"].to_numpy(dtype=float)
            colour = colours.get(metric, f"C{j + 2}")
            ax.plot(x, 100 * m["mean"], marker="o", color=colour, lw=2,
                    label=f"{METRIC_LABELS.get(metric, metric)} (mean ± {round(100 * level)}% CI)")
            ok = m["ci_low"].notna().to_numpy()
            if ok.any():  # an accuracy lies in [0, 100] %: the band is drawn clipped to it (the table is not)
                lo, hi = (np.clip(100 * m[k].to_numpy(dtype=float)[ok], 0, 100) for k in ("ci_low", "ci_high"))
                ax.fill_between(x[ok], lo, hi, color=colour, alpha=0.18, lw=0)
            # single seeds, nudged sideways so that equal values stay visible
            jitter = 1.0 + 0.025 * (j - 0.5)
            for xi, vals in zip(x, m["values"]):
                ax.scatter(np.full(len(vals), xi * jitter), 100 * np.asarray(vals), s=12, color=colour, alpha=0.55,
                           edgecolor="none")
        if len(xs_all) > 1 and xs_all[-1] / max(xs_all[0], 1) >= 10:
            ax.set_xscale("log")
        ax.set_xticks(xs_all, [str(v) for v in xs_all])
        ax.minorticks_off()
        shown = np.concatenate([100 * sub["mean"].to_numpy(dtype=float)]
                               + [100 * np.asarray(v, dtype=float) for v in sub["values"]])
        shown = shown[np.isfinite(shown)]
        ax.set_ylim(max(0.0, (shown.min() if shown.size else 0.0) - 8.0), 101.0)
        seeds = int(sub["n_seeds"].max()) if len(sub) else 0
        ax.set_title(f"{method} {comp} ({seeds} seeds per point)", fontsize=10)
        ax.set_xlabel("training videos (pristine, each with its fakes)")
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.suptitle(title or "Fig. 6 (ours): EMD against the size of the training set", fontsize=11)
    fig.tight_layout()
    # one legend for all panels, below them, so that it never hides a point
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=len(labels), fontsize=8,
               frameon=False)
    return fig


# ------------------------------------------------------------------------------------------------------------------
# Fig. 7: predicted masks and CAMs
# ------------------------------------------------------------------------------------------------------------------

FIG7_FAKE_COLUMNS: tuple[str, ...] = ("original", "manipulated", "GT mask", "predicted mask", "CAM")
FIG7_REAL_COLUMNS: tuple[str, ...] = ("pristine", "GT mask", "predicted mask", "CAM")


@dataclass
class MaskCamSample:
    """One row of Fig. 7. ``image``: the face EMD saw, (H, W, 3) RGB in [0, 1]; ``mask``/``pred_mask``: (H, W)
    ground truth and P(manipulated); ``cam``: (H, W) Grad-CAM in [0, 1] of the selected ESR branch (None without a FER
    stream); ``original``: the pristine face of the same target video and frame (fakes only)."""

    image: np.ndarray
    mask: np.ndarray
    pred_mask: np.ndarray
    cam: np.ndarray | None = None
    original: np.ndarray | None = None
    title: str = ""
    prob: float | None = None
    cam_label: str = ""


def fig7_layout(n_fake: int, n_real: int) -> list[list[str | None]]:
    """Panel names of Fig. 7 row by row: the five fake columns, a gap (``None``), the four pristine columns; a side
    with fewer rows is padded with ``None``. A side with no rows is left out (and the gap with it)."""
    rows = max(n_fake, n_real)
    out = []
    for r in range(rows):
        left = [c if r < n_fake else None for c in FIG7_FAKE_COLUMNS] if n_fake else []
        right = [c if r < n_real else None for c in FIG7_REAL_COLUMNS] if n_real else []
        out.append(left + ([None] if n_fake and n_real else []) + right)
    return out


def _show(ax: "plt.Axes", img: np.ndarray | None, grey: bool = False, cam: np.ndarray | None = None) -> None:
    if img is None:
        ax.text(0.5, 0.5, "n/a", ha="center", va="center", fontsize=8, color="0.5", transform=ax.transAxes)
    elif grey:
        ax.imshow(np.asarray(img, dtype=np.float32), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    else:
        ax.imshow(np.clip(np.asarray(img, dtype=np.float32), 0, 1))
        if cam is not None:
            ax.imshow(np.asarray(cam, dtype=np.float32), cmap="jet", alpha=0.45, vmin=0, vmax=1)
    ax.set_xticks([])
    ax.set_yticks([])


def fig7_grid(fakes: Sequence[MaskCamSample], reals: Sequence[MaskCamSample], panel: float = 1.25,
              title: str = "") -> "plt.Figure":
    """Fig. 7: left, per manipulated face, original · manipulated · GT mask · predicted mask · CAM; right, per
    pristine face, image · GT mask · predicted mask · CAM (CAMs overlaid on the face, jet, 0 → 1).

    The axes follow :func:`fig7_layout`; empty cells (gap column, padding) are hidden. Axes are labelled with
    ``ax.get_label() == "<row>:<panel>"`` so callers and tests can find a panel.
    """
    layout = fig7_layout(len(fakes), len(reals))
    if not layout:
        raise ValueError("Fig. 7 needs at least one manipulated or pristine sample")
    ncols = len(layout[0])
    widths = [0.25 if (len(fakes) and len(reals) and c == len(FIG7_FAKE_COLUMNS)) else 1.0 for c in range(ncols)]
    fig, axes = plt.subplots(len(layout), ncols, figsize=(panel * sum(widths) + 0.6, panel * 1.18 * len(layout)),
                             squeeze=False, gridspec_kw={"width_ratios": widths})
    for r, row in enumerate(layout):
        for c, name in enumerate(row):
            ax = axes[r, c]
            if name is None:
                ax.axis("off")
                continue
            right = c > len(FIG7_FAKE_COLUMNS) or not len(fakes)
            s = (reals if right else fakes)[r]
            ax.set_label(f"{r}:{name}" if not right else f"{r}:real {name}")
            if name in ("original", "pristine", "manipulated"):
                _show(ax, s.original if name == "original" else s.image)
            elif name == "GT mask":
                _show(ax, s.mask, grey=True)
            elif name == "predicted mask":
                _show(ax, s.pred_mask, grey=True)
            else:  # CAM over the face; "n/a" for a system without a FER stream
                _show(ax, s.image if s.cam is not None else None, cam=s.cam)
            first = r == 0 or (layout[r - 1][c] is None)
            sub = ""
            if name == "predicted mask" and s.prob is not None:
                sub = f"p(fake)={s.prob:.2f}"
            elif name == "CAM" and s.cam_label:
                sub = s.cam_label
            head = name if first else ""
            ax.set_title("\n".join(t for t in (head, sub) if t), fontsize=7)
            if c == 0 or (right and c == ncols - len(FIG7_REAL_COLUMNS)):
                ax.set_ylabel(s.title, fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def load_run_model(paths: Any, system: str, method: str, compression: str, seed: int = 0,
                   device: str = "cpu") -> torch.nn.Module:
    """The trained model of a finished run, rebuilt from the best checkpoint its record names
    (:func:`emdlib.models.registry.model_from_checkpoint`), in eval mode."""
    from emdlib.experiments import run_name
    from emdlib.models.registry import model_from_checkpoint
    from emdlib.runs import read_run_record

    name = run_name(system, method, compression, seed)
    record = paths.runs / name / "metrics.json"
    if not record.is_file():
        raise FileNotFoundError(f"{record}: run record not found; run {system} on {method} {compression} first")
    ckpt = read_run_record(record).get("checkpoint")
    if not ckpt or not Path(ckpt).is_file():
        raise FileNotFoundError(f"{record}: its checkpoint {ckpt!r} is missing; rerun the cell (force=True)")
    model, _ = model_from_checkpoint(ckpt, device=device)
    return model


def _pick(indices: np.ndarray, samples: list, n: int, rng: np.random.Generator) -> list[int]:
    """Up to ``n`` of ``indices`` (random order), one per video first."""
    order = [int(i) for i in rng.permutation(indices)]
    picked, seen = [], set()
    for i in order:
        if samples[i][2] not in seen:
            picked.append(i)
            seen.add(samples[i][2])
    picked += [i for i in order if i not in picked]
    return picked[:n]


def _pristine_index(samples: list, method: str, comp: str, video: str, frame: int) -> int | None:
    """Index of the pristine frame of ``video``'s target at ``frame`` (nearest frame when that one was skipped)."""
    from emdlib.data.ffpp import ORIGINAL, target_id

    target = target_id(video)
    cands = [(abs(s[3] - frame), i) for i, s in enumerate(samples)
             if s[0] == ORIGINAL and s[1] == comp and s[2] == target]
    if not cands:
        log.warning("Fig. 7: no pristine frame of %s (target of %s %s) in the test set", target, method, video)
        return None
    d, i = min(cands)
    if d:
        log.warning("Fig. 7: pristine %s frame %d missing; showing frame %d", target, frame, samples[i][3])
    return i


@torch.no_grad()
def _masks(model: torch.nn.Module, items: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    image = torch.stack([it["image"] for it in items])
    fer = torch.stack([it["fer_image"] for it in items])
    out = model(image, fer_image=fer)
    prob = torch.softmax(out["logits"].float(), 1)[:, 1].numpy()
    return torch.sigmoid(out["mask_logits"].float())[:, 0].numpy(), prob


def _cams(model: torch.nn.Module, items: list[dict], size: int) -> tuple[np.ndarray | None, list[str]]:
    from emdlib.data.expressions import EXPRESSIONS
    from emdlib.models.gradcam import GradCAM

    fer = getattr(model, "fer", None)
    if fer is None:
        return None, [""] * len(items)
    with GradCAM(fer) as cam:
        res = cam(torch.stack([it["fer_image"] for it in items]), size=size)
    labels = [f"{EXPRESSIONS[int(c)]} (branch {int(b) + 1})" for c, b in zip(res.cls, res.branch)]
    return res.cam.numpy(), labels


def fig7_samples(paths: Any, preset: Preset, cells: Sequence[tuple[str, str]], n_fake: int = 3, n_real: int = 3,
                 system: str = "EMD", seed: int = 0) -> tuple[list[MaskCamSample], list[MaskCamSample]]:
    """Fig. 7 rows from each cell's test set and the cell's trained ``system`` (rebuilt from its checkpoint).

    Per cell: ``n_fake`` manipulated faces (distinct videos first) with the pristine face of the same target video
    and frame, and ``n_real`` pristine faces; for each, the predicted mask (sigmoid of the mask logits), P(fake) and
    the Grad-CAM (:class:`emdlib.models.gradcam.GradCAM`) of the ESR branch EMD selected (Eqs. 3–5) for the
    ensemble's expression. Nothing is trained.
    """
    from emdlib.data.ffpp import ORIGINAL
    from emdlib.experiments import cell_datasets

    fakes: list[MaskCamSample] = []
    reals: list[MaskCamSample] = []
    rng = np.random.default_rng(seed)
    for method, comp in cells:
        model = load_run_model(paths, system, method, comp, seed)
        test = cell_datasets(paths, preset, method, comp)["test"]
        samples = test.samples
        labels = test.labels
        fake_idx = _pick(np.flatnonzero(labels == 1), samples, n_fake, rng)
        real_idx = _pick(np.flatnonzero(labels == 0), samples, n_real, rng)
        orig_idx = [_pristine_index(samples, *samples[i][:4]) for i in fake_idx]
        items = [test[i] for i in fake_idx + real_idx]
        originals = {i: test[i] for i in orig_idx if i is not None}
        if not items:
            log.warning("Fig. 7: empty test set for %s %s", method, comp)
            continue
        masks, probs = _masks(model, items)
        cams, cam_labels = _cams(model, items, test.image_size)
        short = SHORT.get(method, method)
        for k, it in enumerate(items):
            fake = k < len(fake_idx)
            oi = orig_idx[k] if fake else None
            s = MaskCamSample(
                image=(it["image"].permute(1, 2, 0).numpy() * 0.5 + 0.5).clip(0, 1),
                mask=it["mask"][0].numpy(), pred_mask=masks[k], cam=None if cams is None else cams[k],
                original=((originals[oi]["image"].permute(1, 2, 0).numpy() * 0.5 + 0.5).clip(0, 1)
                          if oi is not None else None),
                title=(f"{short} {it['video']} f{it['frame']}" if fake
                       else f"{ORIGINAL} {it['video']} f{it['frame']}\n({short} model)"),
                prob=float(probs[k]), cam_label=cam_labels[k])
            (fakes if fake else reals).append(s)
    return fakes, reals


# ------------------------------------------------------------------------------------------------------------------
# Notebook 02: the EMD network, its training curves, test metrics and predicted masks
# ------------------------------------------------------------------------------------------------------------------


def architecture_table(model: torch.nn.Module) -> pd.DataFrame:
    """Parameters per part of an EMD model and which parts train in the warm-up epochs (§IV-B)."""
    warm = {id(p) for p in model.warmup_parameters()}
    parts = {"encoder (aligned Xception, up to its last conv)": model.encoder,
             f"last conv (rebuilt{': +512 FER channels' if model.fer is not None else ''})": model.last_conv,
             "ASPP": model.aspp, "decoder": model.decoder, "FC(2)": model.fc}
    if model.fer is not None:
        parts["FER stream (frozen)"] = model.fer
    return pd.DataFrame([{"part": name, "parameters": sum(p.numel() for p in m.parameters()),
                          "warm-up": all(id(p) in warm for p in m.parameters()),
                          "full phase": m is not model.fer} for name, m in parts.items()])


def training_curves_figure(records: Iterable[Mapping[str, Any]], warmup_epochs: int) -> "plt.Figure":
    """L_cls (Eq. 6), L_seg (Eq. 7) on the training set and validation accuracy per epoch, one line per run;
    the warm-up epochs are shaded."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
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
        ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
    axes[2].legend(fontsize=7)
    return fig


METRIC_COLUMNS = ["system", "method", "compression", "accuracy", "auc", "ap", "eer", "video_accuracy", "video_auc",
                  "pixel_accuracy", "iou", "f1", "pixel_auc", "best_epoch", "wall_time_s", "device"]


def metrics_table(paths: Any, systems: Sequence[str], cells: Sequence[tuple[str, str]], seed: int = 0) -> pd.DataFrame:
    """Test metrics of the given systems × cells, read from their run records."""
    from emdlib.experiments import run_name
    from emdlib.runs import load_run_records

    names = {run_name(s, m, c, seed) for s in systems for m, c in cells}
    runs = load_run_records(paths.results)
    if runs.empty:
        return pd.DataFrame(columns=METRIC_COLUMNS)
    runs = runs[runs["run"].isin(names)]
    cols = [c for c in METRIC_COLUMNS if c in runs]
    return runs[cols].sort_values(["method", "compression", "system"]).reset_index(drop=True)


def predicted_masks_figure(paths: Any, preset: Preset, systems: Sequence[str], method: str, compression: str,
                           seed: int = 0, n_fake: int = 4, n_real: int = 2) -> "plt.Figure":
    """Test faces of one cell: the face, its ground-truth mask and each trained system's predicted mask and P(fake)."""
    from emdlib.experiments import cell_datasets
    from emdlib.train import predict

    test = cell_datasets(paths, preset, method, compression)["test"]
    labels = test.labels
    rng = np.random.default_rng(seed)
    pick = np.concatenate([rng.permutation(np.flatnonzero(labels == 1))[:n_fake],
                           rng.permutation(np.flatnonzero(labels == 0))[:n_real]])
    items = [test[int(i)] for i in pick]
    probs = {s: predict(load_run_model(paths, s, method, compression, seed), items, device="cpu", keep_masks=True)
             for s in systems}
    cols = 2 + len(systems)
    fig, axes = plt.subplots(len(items), cols, figsize=(1.8 * cols, 1.9 * len(items)), squeeze=False)
    for j, item in enumerate(items):
        row = [((item["image"].permute(1, 2, 0).numpy() * 0.5 + 0.5).clip(0, 1), f'{item["method"]} {item["video"]}'),
               (item["mask"][0].numpy(), "ground truth")]
        row += [(probs[s]["mask_prob"][j].astype(np.float32), f'{s}\np(fake)={probs[s]["prob"][j]:.2f}') for s in systems]
        for ax, (img, title) in zip(axes[j], row):
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1)
            ax.set_title(title, fontsize=7)
            ax.axis("off")
    return fig
