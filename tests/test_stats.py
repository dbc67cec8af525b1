"""emdlib.stats: the t-interval over seeds, the paired FER-effect bootstrap and the chance levels (no training)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from emdlib import stats, tables
from emdlib.study.experiments import run_name


def test_t_interval_single_value_has_no_band():
    mean, lo, hi = stats.t_interval([0.4])
    assert mean == 0.4 and math.isnan(lo) and math.isnan(hi)


def test_t_interval_hand_computed():
    mean, lo, hi = stats.t_interval([0.5, 0.7, 0.9, float("nan")])  # NaN left out: k = 3, s = 0.2
    half = 4.302652729911275 * 0.2 / math.sqrt(3)
    assert mean == pytest.approx(0.7) and lo == pytest.approx(0.7 - half) and hi == pytest.approx(0.7 + half)


def write_predictions(study, run: str, correct: np.ndarray, pix: np.ndarray, videos: np.ndarray,
                      labels: np.ndarray) -> None:
    prob = np.where(correct.astype(bool), labels, 1 - labels).astype(float) * 0.8 + 0.1
    folder = study.paths.runs / run
    folder.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(folder / "predictions.npz", prob=prob, label=labels,
                        method=np.where(labels == 1, "Face2Face", "original"), compression=np.full(len(labels), "c23"),
                        video=videos, frame=np.arange(len(labels)) % 2, pixel_accuracy=pix)


def test_fer_effect_point_estimate_and_interval(study):
    # 6 videos × 2 frames; EMD gets 10/12 right, XceptionNet (seg) 6/12 → +33.33 points
    videos = np.repeat([f"v{i}" for i in range(6)], 2)
    labels = np.repeat([1, 1, 1, 0, 0, 0], 2)
    emd_correct = np.array([1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 0, 1])
    xs_correct = np.array([1, 0, 1, 0, 0, 1, 1, 0, 1, 0, 1, 0])
    emd_pix = np.linspace(0.8, 1.0, 12)
    xs_pix = emd_pix - 0.05
    write_predictions(study, run_name("EMD", "Face2Face", "c23"), emd_correct, emd_pix, videos, labels)
    write_predictions(study, run_name("XceptionNet (seg)", "Face2Face", "c23"), xs_correct, xs_pix, videos, labels)
    eff = stats.fer_effect(study, [("Face2Face", "c23"), ("NeuralTextures", "c23")], n_boot=500, seed=0)
    acc = eff[(eff["method"] == "Face2Face") & (eff["metric"] == "accuracy")].iloc[0]
    assert acc["with_fer"] == pytest.approx(100 * 10 / 12) and acc["without_fer"] == pytest.approx(50.0)
    assert acc["diff"] == pytest.approx(100 * 4 / 12)
    assert acc["ci_low"] <= acc["diff"] <= acc["ci_high"] and acc["ci_low"] < acc["ci_high"]
    assert acc["n_videos"] == 6 and acc["n_images"] == 12
    pix = eff[(eff["method"] == "Face2Face") & (eff["metric"] == "pixel_accuracy")].iloc[0]
    # a constant per-image gain: every resample gives exactly +5 points
    assert pix["diff"] == pytest.approx(5.0)
    assert pix["ci_low"] == pytest.approx(5.0) and pix["ci_high"] == pytest.approx(5.0)
    assert (eff[eff["method"] == "NeuralTextures"]["status"] == "not run").all()
    # the same seed gives the same interval
    again = stats.fer_effect(study, [("Face2Face", "c23")], n_boot=500, seed=0)
    assert again.iloc[0]["ci_low"] == acc["ci_low"] and again.iloc[0]["ci_high"] == acc["ci_high"]


def test_fer_effect_rejects_unpaired_predictions(study):
    labels = np.array([1, 0])
    write_predictions(study, run_name("EMD", "Face2Face", "c23"), np.ones(2), np.ones(2), np.array(["a", "b"]), labels)
    write_predictions(study, run_name("XceptionNet (seg)", "Face2Face", "c23"), np.ones(2), np.ones(2),
                      np.array(["a", "c"]), labels)
    with pytest.raises(ValueError, match="not on the same test images"):
        stats.fer_effect(study, [("Face2Face", "c23")], n_boot=10)


def test_chance_levels(study, fake_run):
    name = fake_run("EMD", "Face2Face", "c23", 0.5, 0.9)
    folder = study.paths.runs / name
    # 3 fakes, 1 real; image pixel counts (tp, fp, fn, tn) of a 10-pixel mask
    np.savez_compressed(folder / "predictions.npz", prob=np.full(4, 0.6), label=np.array([1, 1, 1, 0]),
                        method=np.array(["Face2Face"] * 3 + ["original"]), compression=np.full(4, "c23"),
                        video=np.array(["a", "b", "c", "d"]), frame=np.zeros(4, int),
                        pixel_tp=np.array([1, 0, 2, 0]), pixel_fp=np.array([0, 1, 0, 0]),
                        pixel_fn=np.array([1, 4, 0, 0]), pixel_tn=np.array([8, 5, 8, 10]),
                        pixel_accuracy=np.array([0.9, 0.5, 1.0, 1.0]))
    c = stats.chance_levels(study.paths.runs, tables.main_runs(study)).iloc[0]
    assert c["majority_accuracy"] == pytest.approx(75.0)
    # empty mask: fraction of ground-truth-negative pixels per image = (fp + tn) / 10
    assert c["empty_mask_pixel_accuracy"] == pytest.approx(100 * np.mean([0.8, 0.6, 0.8, 1.0]))
    assert c["run"] == name


def test_fer_effect_over_seeds_means_seeds_and_bootstraps_seeds_and_videos(study):
    """Three seeds: per-seed differences +33.3, 0 and −16.7 points → mean +5.56; the interval spans the seeds."""
    videos = np.repeat([f"v{i}" for i in range(6)], 2)
    labels = np.repeat([1, 1, 1, 0, 0, 0], 2)
    xs_correct = np.array([1, 0, 1, 0, 0, 1, 1, 0, 1, 0, 1, 0])  # 6/12
    emd_by_seed = {0: np.array([1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 0, 1]),  # 10/12
                   1: xs_correct,  # 6/12
                   2: np.array([1, 0, 1, 0, 0, 0, 1, 0, 1, 0, 0, 0])}  # 4/12
    pix = np.full(12, 0.9)
    for s, emd_correct in emd_by_seed.items():
        write_predictions(study, run_name("EMD", "Face2Face", "c23", s), emd_correct, pix + 0.01 * s, videos, labels)
        write_predictions(study, run_name("XceptionNet (seg)", "Face2Face", "c23", s), xs_correct, pix, videos,
                          labels)
    eff = stats.fer_effect_over_seeds(study, [("Face2Face", "c23")], seeds=[0, 1, 2, 3], n_boot=400, seed=0)
    acc = eff[eff["metric"] == "accuracy"].iloc[0]
    assert acc["seeds"] == [0, 1, 2] and acc["n_seeds"] == 3  # seed 3 was never run: left out
    assert acc["per_seed_diff"] == pytest.approx([100 * 4 / 12, 0.0, -100 * 2 / 12])
    assert acc["diff"] == pytest.approx(100 * 2 / 12 / 3) and acc["seeds_better"] == 1
    assert acc["with_fer"] == pytest.approx(100 * 20 / 36) and acc["without_fer"] == pytest.approx(50.0)
    assert acc["ci_low"] < 0 < acc["ci_high"]  # one seed's gain does not carry the conclusion
    px = eff[eff["metric"] == "pixel_accuracy"].iloc[0]
    # seed s gains exactly s points on every image: the mean is 1, the interval the range a seed draw can give
    assert px["diff"] == pytest.approx(1.0) and -1e-9 <= px["ci_low"] <= 1.0 <= px["ci_high"] <= 2.0 + 1e-9
    single = stats.fer_effect_over_seeds(study, [("Face2Face", "c23")], seeds=[0], n_boot=400, seed=0)
    ref = stats.fer_effect(study, [("Face2Face", "c23")], n_boot=400, seed=0)
    assert single.iloc[0]["diff"] == pytest.approx(ref.iloc[0]["diff"])
    none = stats.fer_effect_over_seeds(study, [("NeuralTextures", "c23")], seeds=[0, 1])
    assert (none["status"] == "not run").all()
