"""Fig. 6 (§IV-E2): EMD's detection and segmentation accuracy against the number of training videos, mean over seeds
with a t-interval band, drawn from :func:`emdlib.tables.training_size_table`."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from emdlib.figures import new_figure

#: Metrics of Fig. 6: classification = frame accuracy, segmentation = pixel accuracy (reference-facts §E).
CLS, SEG = "accuracy", "pixel_accuracy"
METRIC_LABELS = {CLS: "detection (cls) accuracy", SEG: "segmentation (seg) accuracy"}


def training_size_figure(df: pd.DataFrame, title: str = "", level: float = 0.95) -> Figure:
    """Fig. 6: mean accuracy (%) against the number of training videos, one panel per cell, detection and
    segmentation as two lines with their t-interval bands (clipped to [0, 100] %) and the single seeds as dots."""
    cells = list(dict.fromkeys(zip(df["method"], df["compression"])))
    if not cells:
        raise ValueError("empty training-size table")
    fig, axes = new_figure(1, len(cells), figsize=(4.6 * len(cells), 3.8), squeeze=False)
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
