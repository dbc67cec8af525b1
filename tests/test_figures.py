"""emdlib.analysis: Table V, Figs. 4–7 rendered from fake run records and predictions (no training)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from emdlib import analysis
from emdlib.experiments import load_predictions, run_name
from emdlib.paper import TABLE_V
from emdlib.presets import DataConfig, EMDConfig, Preset, get_preset
from emdlib.runs import load_run_records, write_run_record
from emdlib.study import study_paths

T_975_DF2 = 4.302652729911275  # Student t quantile 0.975 with 2 degrees of freedom (tables)


def _record(results, system, method, comp, seed, n, acc, pix):
    name = run_name(system, method, comp, seed, n)
    extra = {"system": system, "method": method, "compression": comp, "n_train_videos": n}
    write_run_record(results, name, {"accuracy": acc, "pixel_accuracy": pix, "auc": 0.5}, {"system": system},
                     seed, extra=extra, preset="tiny")


@pytest.fixture()
def size_records(tmp_path):
    results = tmp_path / "tiny"
    for seed, acc, pix in [(0, 0.5, 0.8), (1, 0.7, 0.8), (2, 0.9, 0.9)]:
        _record(results, "EMD", "Face2Face", "c23", seed, 2, acc, pix)
    for seed, acc, pix in [(0, 1.0, 0.95), (1, 1.0, float("nan")), (2, 0.97, 0.97)]:
        _record(results, "EMD", "Face2Face", "c23", seed, 6, acc, pix)
    _record(results, "EMD", "Face2Face", "c23", 0, None, 0.1, 0.1)  # full-data run: not a Fig. 6 point
    return results


def test_training_size_table_aggregates_seeds(size_records):
    df = analysis.training_size_table(load_run_records(size_records))
    assert sorted(df["n_train_videos"].unique()) == [2, 6]
    row = df[(df["n_train_videos"] == 2) & (df["metric"] == "accuracy")].iloc[0]
    assert row["n_seeds"] == 3 and row["seeds"] == [0, 1, 2]
    assert row["mean"] == pytest.approx(0.7)
    assert row["std"] == pytest.approx(0.2)
    half = T_975_DF2 * 0.2 / math.sqrt(3)
    assert row["ci_low"] == pytest.approx(0.7 - half) and row["ci_high"] == pytest.approx(0.7 + half)
    seg = df[(df["n_train_videos"] == 6) & (df["metric"] == "pixel_accuracy")].iloc[0]
    assert seg["n_seeds"] == 2  # the NaN seed is left out
    assert seg["mean"] == pytest.approx(0.96)
    half = 12.706204736174698 * np.std([0.95, 0.97], ddof=1) / math.sqrt(2)
    assert seg["ci_high"] == pytest.approx(0.96 + half)


def test_training_size_table_from_run_cell_dicts_matches(size_records):
    from emdlib.io import read_json

    dicts = [read_json(p) for p in sorted(size_records.rglob("metrics.json"))]
    a = analysis.training_size_table(dicts)
    b = analysis.training_size_table(load_run_records(size_records))
    pd.testing.assert_frame_equal(a[["n_train_videos", "metric", "mean", "ci_low"]],
                                  b[["n_train_videos", "metric", "mean", "ci_low"]])


def test_training_size_table_needs_size_runs(tmp_path):
    _record(tmp_path / "tiny", "EMD", "Face2Face", "c23", 0, None, 0.9, 0.9)
    with pytest.raises(ValueError, match="training-size"):
        analysis.training_size_table(load_run_records(tmp_path / "tiny"))


def test_t_interval_single_value_has_no_band():
    mean, lo, hi = analysis.t_interval([0.4])
    assert mean == 0.4 and math.isnan(lo) and math.isnan(hi)


def test_training_size_figure_draws_mean_and_band(size_records):
    df = analysis.training_size_table(load_run_records(size_records))
    fig = analysis.training_size_figure(df)
    ax = fig.axes[0]
    means = [line for line in ax.get_lines() if line.get_marker() == "o"]
    assert len(means) == 2
    np.testing.assert_allclose(means[0].get_ydata(), [70.0, 99.0])
    assert len(ax.collections) >= 3  # at least one band + the seed dots


def test_training_size_points_increase_within_train_size():
    tiny = get_preset("tiny")
    assert analysis.training_size_points(tiny) == [2, 2 * tiny.data.pairs[0]]
    for name in ("cpu", "faces", "paper"):
        preset = get_preset(name)
        pts = analysis.training_size_points(preset)
        total = 2 * preset.data.pairs[0]
        assert pts == sorted(set(pts)) and len(pts) >= 3
        assert pts[0] >= 1 and pts[-1] == total
    assert analysis.training_size_points(get_preset("paper"))[0] == 10
    assert len(analysis.training_size_points(get_preset("cpu"), n_points=3)) == 3
    one = Preset("one", data=DataConfig(pairs=(1, 1, 1)))
    assert analysis.training_size_points(one) == [2]


def test_training_size_plan_cells():
    assert analysis.training_size_plan(get_preset("tiny"))["cells"] == [("Face2Face", "c23")]
    plan = analysis.training_size_plan(get_preset("faces"))
    assert plan["cells"] == [("Face2Face", "c23"), ("NeuralTextures", "c23")]
    assert len(plan["seeds"]) >= 3
    cpu = analysis.training_size_plan(get_preset("cpu"))  # the preset asks for one panel and three sizes
    assert cpu["cells"] == [("Face2Face", "c23")] and len(cpu["points"]) == 3


def _fake_pred(rng, n=40, pixels=64, shift=1.0):
    label = rng.integers(0, 2, n)
    label[:2] = [0, 1]
    prob = 1 / (1 + np.exp(-(rng.normal(size=n) + shift * (2 * label - 1))))
    pix_label = rng.integers(0, 2, n * pixels).astype(np.uint8)
    pix_score = np.clip(rng.normal(0.5, 0.3, n * pixels) + 0.2 * shift * (2 * pix_label.astype(float) - 1), 0, 1)
    return {"prob": prob, "label": label, "method": np.array(["Face2Face"] * n), "compression": np.array(["c23"] * n),
            "video": np.array([f"{i:03d}" for i in range(n)]), "frame": np.zeros(n, np.int64),
            "pixel_score": pix_score, "pixel_label": pix_label, "pixel_image": np.repeat(np.arange(n), pixels)}


def test_roc_figure_legend_has_sklearn_auc(tmp_path):
    rng = np.random.default_rng(0)
    paths = study_paths("tiny", tmp_path / "data", tmp_path / "results")
    preds = {}
    for system, shift in (("EMD", 1.5), ("XceptionNet (seg)", 0.5)):
        run = run_name(system, "Face2Face", "c23")
        (paths.runs / run).mkdir(parents=True)
        np.savez_compressed(paths.runs / run / "predictions.npz", **_fake_pred(rng, shift=shift))
        preds[system] = load_predictions(paths, run)
    fig = analysis.roc_figure(preds, title="Fig. 4")
    texts = analysis.legend_texts(fig)
    for system, p in preds.items():
        cls = roc_auc_score(p["label"], p["prob"])
        seg = roc_auc_score(p["pixel_label"], p["pixel_score"])
        assert any(t.startswith(system) and t.endswith(f"AUC = {cls:.3f}") for t in
                   [x.get_text() for x in fig.axes[0].get_legend().get_texts()])
        assert any(t.startswith(system) and t.endswith(f"AUC = {seg:.3f}") for t in
                   [x.get_text() for x in fig.axes[1].get_legend().get_texts()])
    assert len(texts) == 4
    styles = {line.get_label().split(" (with")[0]: line.get_linestyle() for line in fig.axes[0].get_lines()
              if "AUC" in line.get_label()}
    assert styles == {"EMD": "-", "XceptionNet (seg)": ":"}  # solid with FER, dotted without (as the paper)
    assert analysis.roc_figure_name("Face2Face") == "fig4_roc_face2face.png"
    assert analysis.roc_figure_name("NeuralTextures") == "fig5_roc_neuraltextures.png"


def test_roc_figure_one_class_is_na():
    pred = _fake_pred(np.random.default_rng(1))
    pred["label"] = np.zeros_like(pred["label"])
    fig = analysis.roc_figure({"EMD": pred})
    assert "AUC n/a" in fig.axes[0].get_legend().get_texts()[0].get_text()


def test_ablation_table_values_and_paper_columns(tmp_path):
    results = tmp_path / "tiny"
    for i, system in enumerate(analysis.ABLATION_SYSTEMS):
        for seed in (0, 1):
            _record(results, system, "Face2Face", "c23", seed, None, 0.5 + 0.1 * i + 0.02 * seed, 0.9)
    _record(results, "EMD", "Face2Face", "c23", 0, 2, 0.0, 0.0)  # training-size run: excluded
    table = analysis.ablation_table(load_run_records(results))
    assert list(table.index) == list(analysis.ABLATION_SYSTEMS)
    assert table.loc["EMD", ("F2F c23", "Cls", "ours")] == pytest.approx(100 * (0.8 + 0.01))
    assert table.loc["MultiTask+SimFER", ("F2F c23", "Seg", "ours")] == pytest.approx(90.0)
    assert table.loc["EMD", ("F2F c23", "Cls", "paper")] == TABLE_V["EMD"][("Face2Face", "cls")]


def test_paper_cells():
    assert analysis.paper_cells(get_preset("paper")) == [("Face2Face", "c23"), ("NeuralTextures", "c23")]
    assert analysis.paper_cells(get_preset("tiny")) == [("Face2Face", "c23")]
    with pytest.raises(ValueError, match="no Face2Face"):
        analysis.paper_cells(Preset("x", emd=EMDConfig(cells=(("Deepfakes", "c23"),))))


def _sample(rng, s=8, fake=True, cam=True):
    return analysis.MaskCamSample(image=rng.random((s, s, 3)), mask=(rng.random((s, s)) > 0.5).astype(np.float32),
                                  pred_mask=rng.random((s, s)), cam=rng.random((s, s)) if cam else None,
                                  original=rng.random((s, s, 3)) if fake else None, title="x", prob=0.7)


def test_fig7_layout_and_grid_panels():
    layout = analysis.fig7_layout(2, 3)
    assert len(layout) == 3 and all(len(r) == 10 for r in layout)
    assert layout[0] == list(analysis.FIG7_FAKE_COLUMNS) + [None] + list(analysis.FIG7_REAL_COLUMNS)
    assert layout[2][:6] == [None] * 6 and layout[2][6:] == list(analysis.FIG7_REAL_COLUMNS)
    assert analysis.fig7_layout(2, 0) == [list(analysis.FIG7_FAKE_COLUMNS)] * 2
    rng = np.random.default_rng(0)
    fakes = [_sample(rng) for _ in range(2)]
    reals = [_sample(rng, fake=False) for _ in range(2)] + [_sample(rng, fake=False, cam=False)]
    fig = analysis.fig7_grid(fakes, reals)
    panels = {ax.get_label(): ax for ax in fig.axes if ax.axison}
    assert len(panels) == 5 * 2 + 4 * 3
    np.testing.assert_allclose(panels["1:original"].images[0].get_array(), fakes[1].original.astype(np.float32))
    np.testing.assert_allclose(panels["1:manipulated"].images[0].get_array(), fakes[1].image.astype(np.float32))
    np.testing.assert_allclose(panels["0:GT mask"].images[0].get_array(), fakes[0].mask)
    np.testing.assert_allclose(panels["2:real predicted mask"].images[0].get_array(),
                               reals[2].pred_mask.astype(np.float32))
    assert len(panels["0:CAM"].images) == 2  # face + CAM overlay
    np.testing.assert_allclose(panels["0:CAM"].images[1].get_array(), fakes[0].cam.astype(np.float32))
    assert len(panels["2:real CAM"].images) == 0  # no CAM for this sample: "n/a"
    assert "p(fake)=0.70" in panels["0:predicted mask"].get_title()
    with pytest.raises(ValueError):
        analysis.fig7_grid([], [])


def test_fig7_original_is_the_pristine_frame_of_the_target():
    samples = [("original", "c23", "008", 3, 0), ("original", "c23", "008", 9, 1), ("original", "c40", "009", 3, 0),
               ("original", "c23", "009", 9, 0), ("Face2Face", "c23", "009_008", 3, 0)]
    assert analysis._pristine_index(samples, "Face2Face", "c23", "008_009", 9) == 1
    assert analysis._pristine_index(samples, "Face2Face", "c23", "009_008", 3) == 3  # frame 3 skipped: nearest (9)
    assert analysis._pristine_index(samples, "Face2Face", "c40", "010_008", 3) is None
