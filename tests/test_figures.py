"""emdlib.figures: Figs. 4–7 rendered from run records and predictions (no training, no plotting backend)."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.figure import Figure
from sklearn.metrics import roc_auc_score

from emdlib import tables
from emdlib.figures import legend_texts, masks_cams, roc
from emdlib.figures.training_size import training_size_figure
from emdlib.study.experiments import run_name
from emdlib.study.records import load_predictions, load_run_records


def test_training_size_figure_draws_mean_and_band(size_records):
    df = tables.training_size_table(load_run_records(size_records))
    fig = training_size_figure(df)
    assert isinstance(fig, Figure) and fig.canvas.manager is None  # built without pyplot
    ax = fig.axes[0]
    means = [line for line in ax.get_lines() if line.get_marker() == "o"]
    assert len(means) == 2
    np.testing.assert_allclose(means[0].get_ydata(), [70.0, 99.0])
    assert len(ax.collections) >= 3  # at least one band + the seed dots


def _fake_pred(rng, n=40, pixels=64, shift=1.0):
    label = rng.integers(0, 2, n)
    label[:2] = [0, 1]
    prob = 1 / (1 + np.exp(-(rng.normal(size=n) + shift * (2 * label - 1))))
    pix_label = rng.integers(0, 2, n * pixels).astype(np.uint8)
    pix_score = np.clip(rng.normal(0.5, 0.3, n * pixels) + 0.2 * shift * (2 * pix_label.astype(float) - 1), 0, 1)
    return {"prob": prob, "label": label, "method": np.array(["Face2Face"] * n), "compression": np.array(["c23"] * n),
            "video": np.array([f"{i:03d}" for i in range(n)]), "frame": np.zeros(n, np.int64),
            "pixel_score": pix_score, "pixel_label": pix_label, "pixel_image": np.repeat(np.arange(n), pixels)}


def test_roc_figure_legend_has_sklearn_auc(study):
    rng = np.random.default_rng(0)
    runs = study.paths.runs
    preds = {}
    for system, shift in (("EMD", 1.5), ("XceptionNet (seg)", 0.5)):
        run = run_name(system, "Face2Face", "c23")
        (runs / run).mkdir(parents=True)
        np.savez_compressed(runs / run / "predictions.npz", **_fake_pred(rng, shift=shift))
        preds[system] = load_predictions(runs, run)
    fig = roc.roc_figure(preds, title="Fig. 4")
    texts = legend_texts(fig)
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
    assert roc.roc_figure_name("Face2Face") == "fig4_roc_face2face.png"
    assert roc.roc_figure_name("NeuralTextures") == "fig5_roc_neuraltextures.png"
    assert roc.roc_title("NeuralTextures", "c23").startswith("Fig. 5 (ours)")


def test_roc_figure_one_class_is_na():
    pred = _fake_pred(np.random.default_rng(1))
    pred["label"] = np.zeros_like(pred["label"])
    fig = roc.roc_figure({"EMD": pred})
    assert "AUC n/a" in fig.axes[0].get_legend().get_texts()[0].get_text()


def _sample(rng, s=8, fake=True, cam=True):
    return masks_cams.MaskCamSample(image=rng.random((s, s, 3)), mask=(rng.random((s, s)) > 0.5).astype(np.float32),
                                  pred_mask=rng.random((s, s)), cam=rng.random((s, s)) if cam else None,
                                  original=rng.random((s, s, 3)) if fake else None, title="x", prob=0.7)


def test_fig7_layout_and_grid_panels():
    layout = masks_cams.fig7_layout(2, 3)
    assert len(layout) == 3 and all(len(r) == 10 for r in layout)
    assert layout[0] == list(masks_cams.FIG7_FAKE_COLUMNS) + [None] + list(masks_cams.FIG7_REAL_COLUMNS)
    assert layout[2][:6] == [None] * 6 and layout[2][6:] == list(masks_cams.FIG7_REAL_COLUMNS)
    assert masks_cams.fig7_layout(2, 0) == [list(masks_cams.FIG7_FAKE_COLUMNS)] * 2
    rng = np.random.default_rng(0)
    fakes = [_sample(rng) for _ in range(2)]
    reals = [_sample(rng, fake=False) for _ in range(2)] + [_sample(rng, fake=False, cam=False)]
    fig = masks_cams.fig7_grid(fakes, reals)
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
        masks_cams.fig7_grid([], [])


def test_fig7_original_is_the_pristine_frame_of_the_target():
    samples = [("original", "c23", "008", 3, 0), ("original", "c23", "008", 9, 1), ("original", "c40", "009", 3, 0),
               ("original", "c23", "009", 9, 0), ("Face2Face", "c23", "009_008", 3, 0)]
    assert masks_cams._pristine_index(samples, "Face2Face", "c23", "008_009", 9) == 1
    assert masks_cams._pristine_index(samples, "Face2Face", "c23", "009_008", 3) == 3  # frame 3 skipped: nearest (9)
    assert masks_cams._pristine_index(samples, "Face2Face", "c40", "010_008", 3) is None


def test_fig3_shows_a_partial_ffpp_copy(tmp_path):
    from emdlib.figures.data import fig3_grid, fig3_pairs
    from test_prepare import PAIRS, make_world  # one bad input of each kind; needs ../shared's London photos

    make_world(tmp_path)
    pairs = fig3_pairs(tmp_path, PAIRS, ["Face2Face"], "c23", rows=5)
    # test, val, then train; pairs with every file first, then 008_009 whose original 008 is absent
    assert pairs == [("006", "007"), ("004", "005"), ("000", "001"), ("002", "003"), ("008", "009")]
    fig = fig3_grid(tmp_path, pairs, ["Face2Face"], "c23")
    titles = [ax.get_title() for ax in fig.axes]
    assert titles.count("pristine 008: missing") == 1 and "Face2Face 008_009" in titles
    assert "Face2Face 006_007: missing" in titles  # on disk, but truncated: its panel is empty, not a crash
    assert sum(bool(ax.get_images()) for ax in fig.axes) == 5 * 3 - 2  # every panel drawn but those two
    with pytest.raises(FileNotFoundError, match="no video of any split pair at c40"):
        fig3_pairs(tmp_path, PAIRS, ["Face2Face"], "c40")
