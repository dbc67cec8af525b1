"""Statistics of the study's results: intervals over seeds, a paired bootstrap over test videos, chance levels.

* :func:`t_interval` — Student-t confidence interval of a mean over seeds (Fig. 6's bands).
* :func:`fer_effect` — "does the FER stream help?": EMD minus EMD-without-FER ("XceptionNet (seg)") per cell, with
  a paired percentile bootstrap over test videos from the stored predictions (§IV-E1).
* :func:`fer_effect_over_seeds` — the same comparison over several seeds (each system trained once per seed), with
  a two-level bootstrap over seeds and test videos: the conclusion the cpu study states (issue 13).
* :func:`chance_levels` — what trivial predictors (majority class, empty mask) score on each cell's test set.

Everything reads stored predictions (:mod:`emdlib.study.records`); nothing trains.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from emdlib.study import Study
from emdlib.study.records import load_predictions

log = logging.getLogger(__name__)

OURS = "ours"
NOT_RUN = "not run"


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


def _image_frame(pred: dict[str, np.ndarray]) -> pd.DataFrame:
    n = len(pred["label"])
    df = pd.DataFrame({k: np.asarray(pred[k]).astype(str) for k in ("method", "compression", "video") if k in pred})
    df["frame"] = np.asarray(pred.get("frame", np.arange(n)))
    df["label"] = np.asarray(pred["label"]).astype(np.int64)
    df["correct"] = ((np.asarray(pred["prob"], dtype=np.float64) > 0.5).astype(np.int64) == df["label"]).astype(float)
    pix = pred.get("pixel_accuracy")
    df["pixel_accuracy"] = np.asarray(pix, dtype=np.float64) if pix is not None and len(pix) == n else np.nan
    return df


def _paired(a: pd.DataFrame, b: pd.DataFrame, names: tuple[str, str]) -> pd.DataFrame:
    """The two prediction sets image by image (same test images; by position, or by key when the order differs)."""
    keys = ["method", "compression", "video", "frame", "label"]
    if len(a) == len(b) and (a[keys].values == b[keys].values).all():
        return a.join(b[["correct", "pixel_accuracy"]], rsuffix="_b")
    if a.duplicated(keys).any() or b.duplicated(keys).any() or len(a) != len(b):
        raise ValueError(f"predictions of {names[0]} and {names[1]} are not on the same test images")
    merged = a.merge(b[keys + ["correct", "pixel_accuracy"]], on=keys, suffixes=("", "_b"), validate="one_to_one")
    if len(merged) != len(a):
        raise ValueError(f"predictions of {names[0]} and {names[1]} are not on the same test images")
    return merged


def fer_effect(study: Study, cells: Iterable[Sequence[str]], n_boot: int = 1000, seed: int = 0,
               run_seed: int = 0, with_fer: str = "EMD", without_fer: str = "XceptionNet (seg)") -> pd.DataFrame:
    """Does the FER stream help? ``with_fer`` − ``without_fer`` per cell, in percentage points, with a 95% CI.

    For each (method, compression) cell the stored test predictions of both runs (seed ``run_seed``) are paired
    image by image; the metrics are frame accuracy (P(fake) > 0.5, Tables II/III) and pixel accuracy (mean of the
    per-image pixel accuracy, Table IV). The interval is a paired percentile bootstrap over **test videos** (frames
    of one video are not independent): ``n_boot`` resamples of the videos with replacement (``numpy`` generator
    seeded with ``seed``), the difference of the pooled metric each time, and its 2.5/97.5 percentiles.

    One row per cell × metric: ``with_fer``, ``without_fer``, ``diff`` (the point estimate on the full test set,
    equal to the difference of the run records' metrics), ``ci_low``, ``ci_high``, ``n_videos``, ``n_images``,
    ``n_boot``, ``runs`` and ``status`` ("ours", or "not run" when a run or its predictions are missing).
    """
    from emdlib.study.experiments import run_name

    rng = np.random.default_rng(seed)
    rows = []
    for method, comp in cells:
        names = (run_name(with_fer, method, comp, run_seed), run_name(without_fer, method, comp, run_seed))
        base = {"method": method, "compression": comp, "runs": ";".join(names), "n_boot": n_boot}
        try:
            per_video = _per_video(study, names)
        except FileNotFoundError as e:
            log.info("FER effect on %s %s: %s", method, comp, e)
            rows += [{**base, "metric": m, "status": NOT_RUN} for m in ("accuracy", "pixel_accuracy")]
            continue
        idx = rng.integers(0, len(per_video), size=(n_boot, len(per_video)))
        n = per_video["n"].to_numpy(float)
        for metric, (ca, cb) in (("accuracy", ("acc_a", "acc_b")), ("pixel_accuracy", ("pix_a", "pix_b"))):
            a, b = per_video[ca].to_numpy(float), per_video[cb].to_numpy(float)
            row = {**base, "metric": metric, "n_videos": len(per_video), "n_images": int(n.sum()), "status": OURS}
            if np.isnan(a).any() or np.isnan(b).any():
                rows.append({**row, "status": "n/a (no masks predicted)"})
                continue
            va, vb = 100 * a.sum() / n.sum(), 100 * b.sum() / n.sum()
            boot = 100 * (a[idx].sum(1) - b[idx].sum(1)) / n[idx].sum(1)
            lo, hi = np.percentile(boot, [2.5, 97.5])
            rows.append({**row, "with_fer": va, "without_fer": vb, "diff": va - vb, "ci_low": float(lo),
                         "ci_high": float(hi)})
    cols = ["method", "compression", "metric", "with_fer", "without_fer", "diff", "ci_low", "ci_high", "n_videos",
            "n_images", "n_boot", "status", "runs"]
    out = pd.DataFrame(rows).reindex(columns=cols)
    out.attrs.update(with_fer=with_fer, without_fer=without_fer)
    return out


def _per_video(study: Study, names: tuple[str, str]) -> pd.DataFrame:
    """Paired test predictions of two runs summed per test video: ``n`` images, correct frames and summed pixel
    accuracy of each (``acc_a``/``acc_b``, ``pix_a``/``pix_b``), indexed by (method, compression, video)."""
    frames = [_image_frame(load_predictions(study.paths.runs, n)) for n in names]
    df = _paired(*frames, names)
    g = df.groupby(["method", "compression", "video"], sort=True)
    return pd.DataFrame({"n": g.size(), "acc_a": g["correct"].sum(), "acc_b": g["correct_b"].sum(),
                         "pix_a": g["pixel_accuracy"].sum(min_count=1), "pix_b": g["pixel_accuracy_b"].sum(min_count=1)})


def fer_effect_over_seeds(study: Study, cells: Iterable[Sequence[str]], seeds: Sequence[int], n_boot: int = 2000,
                          seed: int = 0, with_fer: str = "EMD", without_fer: str = "XceptionNet (seg)",
                          level: float = 0.95) -> pd.DataFrame:
    """EMD − EMD-without-FER per cell over the runs of several ``seeds``, in percentage points, with an interval.

    Each seed trained both systems once (``emdlib.study.experiments.comparison_runs``); their test predictions are
    paired image by image per seed. The point estimate is the mean over seeds of each seed's difference (frame
    accuracy, Tables II/III; pixel accuracy, Table IV). The ``level`` interval is a two-level percentile bootstrap:
    each of ``n_boot`` resamples draws the seeds with replacement **and** the test videos with replacement (the
    same videos for every seed: the test set is shared), and averages the drawn seeds' pooled differences — so it
    covers both the training randomness a re-run on another machine meets and the finite test set. With one seed
    it reduces to :func:`fer_effect`'s bootstrap over videos.

    One row per cell × metric: ``with_fer`` / ``without_fer`` (means over seeds), ``diff``, ``ci_low``, ``ci_high``,
    ``per_seed_diff`` (list), ``seeds_better`` (seeds where FER helped), ``n_seeds``, ``seeds``, ``n_videos``,
    ``n_images``, ``n_boot``, ``status`` ("ours"; "not run" when no seed has both runs). Seeds with a run or its
    predictions missing are left out (``seeds`` lists those used).
    """
    from emdlib.study.experiments import run_name

    rng = np.random.default_rng(seed)
    tail = 100 * (1 - level) / 2
    rows = []
    for method, comp in cells:
        base = {"method": method, "compression": comp, "n_boot": n_boot}
        used, tables_ = [], []
        for s in seeds:
            names = (run_name(with_fer, method, comp, s), run_name(without_fer, method, comp, s))
            try:
                tables_.append(_per_video(study, names))
                used.append(int(s))
            except FileNotFoundError as e:
                log.info("FER comparison on %s %s, seed %s: %s", method, comp, s, e)
        if not used:
            rows += [{**base, "metric": m, "n_seeds": 0, "seeds": [], "status": NOT_RUN}
                     for m in ("accuracy", "pixel_accuracy")]
            continue
        index = tables_[0].index
        if any(not t.index.equals(index) for t in tables_[1:]):
            raise ValueError(f"{method} {comp}: the seeds' runs were tested on different videos")
        n = tables_[0]["n"].to_numpy(float)
        idx_v = rng.integers(0, len(n), size=(n_boot, len(n)))
        idx_s = rng.integers(0, len(used), size=(n_boot, len(used)))
        for metric, (ca, cb) in (("accuracy", ("acc_a", "acc_b")), ("pixel_accuracy", ("pix_a", "pix_b"))):
            a = np.stack([t[ca].to_numpy(float) for t in tables_])  # (seeds, videos)
            b = np.stack([t[cb].to_numpy(float) for t in tables_])
            row = {**base, "metric": metric, "n_seeds": len(used), "seeds": used, "n_videos": len(n),
                   "n_images": int(n.sum()), "status": OURS}
            if np.isnan(a).any() or np.isnan(b).any():
                rows.append({**row, "status": "n/a (no masks predicted)"})
                continue
            va, vb = 100 * a.sum(1) / n.sum(), 100 * b.sum(1) / n.sum()  # per seed
            per_video_diff = 100 * (a[:, idx_v].sum(2) - b[:, idx_v].sum(2)) / n[idx_v].sum(1)  # (seeds, n_boot)
            boot = per_video_diff[idx_s, np.arange(n_boot)[:, None]].mean(1)
            lo, hi = np.percentile(boot, [tail, 100 - tail])
            rows.append({**row, "with_fer": float(va.mean()), "without_fer": float(vb.mean()),
                         "diff": float((va - vb).mean()), "ci_low": float(lo), "ci_high": float(hi),
                         "per_seed_diff": [float(d) for d in va - vb], "seeds_better": int(((va - vb) > 0).sum())})
    cols = ["method", "compression", "metric", "with_fer", "without_fer", "diff", "ci_low", "ci_high",
            "per_seed_diff", "seeds_better", "n_seeds", "seeds", "n_videos", "n_images", "n_boot", "status"]
    out = pd.DataFrame(rows).reindex(columns=cols)
    out.attrs.update(with_fer=with_fer, without_fer=without_fer, level=level)
    return out


def chance_levels(runs_dir: str | os.PathLike, runs: pd.DataFrame) -> pd.DataFrame:
    """What trivial predictors score on each cell's test set, to read small-preset numbers against.

    ``runs``: run records (columns ``run``, ``method``, ``compression``; e.g. :func:`emdlib.tables.main_runs`);
    ``runs_dir``: where their predictions are (``results/<preset>/runs``). The test labels and the ground-truth mask
    pixel counts are read from the stored predictions of the cell's runs (every run of a cell sees the same test
    images): ``majority_accuracy`` (%) — always answering the more frequent class (Tables II/III) — and
    ``empty_mask_pixel_accuracy`` (%) — predicting no manipulated pixel anywhere, the mean over test images of the
    fraction of unmanipulated pixels, as Table IV's pixel accuracy averages (reals count as all-unmanipulated). NaN
    when no run of the cell stored pixel counts. One row per cell, with ``n_images`` and the ``run`` read.
    """
    rows = []
    if runs.empty:
        return pd.DataFrame(columns=["method", "compression", "majority_accuracy", "empty_mask_pixel_accuracy",
                                     "n_images", "run"])
    for (method, comp), sel in runs.sort_values("run").groupby(["method", "compression"], sort=True):
        row = {"method": method, "compression": comp, "majority_accuracy": math.nan,
               "empty_mask_pixel_accuracy": math.nan, "n_images": 0, "run": ""}
        for run in sel["run"]:
            try:
                pred = load_predictions(runs_dir, run)
            except FileNotFoundError:
                continue
            labels = np.asarray(pred["label"]).astype(np.int64)
            if not row["run"] and len(labels):
                row.update(majority_accuracy=100 * max(labels.mean(), 1 - labels.mean()), n_images=len(labels),
                           run=run)
            if all(k in pred for k in ("pixel_tp", "pixel_fp", "pixel_fn", "pixel_tn")):
                tp, fp, fn, tn = (np.asarray(pred[k], dtype=np.float64) for k in
                                  ("pixel_tp", "pixel_fp", "pixel_fn", "pixel_tn"))
                row.update(empty_mask_pixel_accuracy=float(100 * np.mean((fp + tn) / (tp + fp + fn + tn))), run=run)
                break
        rows.append(row)
    return pd.DataFrame(rows)
