"""Metrics against hand-computed cases (reference-facts §E), including degenerate inputs."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch

from emdlib import metrics as M
from emdlib.models.detector import DetectorNet, DetectorOutput
from emdlib.train import predict


def test_accuracy_threshold_and_ties():
    # predictions: 0.1→real, 0.6→fake, 0.4→real, 0.9→fake, 0.5→real (tie goes to class 0, as arg-max)
    assert M.accuracy([0, 0, 1, 1, 0], [0.1, 0.6, 0.4, 0.9, 0.5]) == pytest.approx(3 / 5)


def test_auc_ap_eer_hand_computed():
    y, s = [0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]
    # AUC: positive/negative pairs ranked correctly: (0.35>0.1), (0.8>0.1), (0.8>0.4); wrong: (0.35<0.4) → 3/4
    assert M.roc_auc(y, s) == pytest.approx(0.75)
    # AP: ranking 0.8(+) 0.4(-) 0.35(+) 0.1(-): precision 1 at recall .5, 2/3 at recall 1 → .5·1 + .5·2/3
    assert M.average_precision(y, s) == pytest.approx(0.5 + 1 / 3)
    # EER: at threshold 0.4, FPR = FNR = 0.5 exactly
    assert M.eer(y, s) == pytest.approx(0.5)


def test_eer_interpolated_and_perfect():
    # ROC points (FPR, TPR): (0,0) (1/3,0) (1/3,1) (2/3,1) (1,1); FNR falls 1→0 while FPR stays 1/3 → EER = 1/3
    assert M.eer([0, 0, 0, 1], [0.1, 0.2, 0.9, 0.5]) == pytest.approx(1 / 3)
    assert M.eer([0, 1, 0, 1], [0.2, 0.8, 0.3, 0.7]) == pytest.approx(0.0)
    assert M.eer([0, 1], [0.8, 0.2]) == pytest.approx(1.0)  # perfectly inverted scores


def test_single_class_gives_nan_with_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="emdlib.metrics"):
        out = M.classification_metrics([1, 1, 1], [0.2, 0.7, 0.9])
    assert out["accuracy"] == pytest.approx(2 / 3)
    assert math.isnan(out["auc"]) and math.isnan(out["ap"]) and math.isnan(out["eer"])
    assert "single class" in caplog.text
    assert math.isnan(M.roc_auc([], []))


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="labels"):
        M.roc_auc([0, 1], [0.5])


def _pred():
    # 4 frames of 2 videos (real "000", fake "000_001") + per-image pixel counts for 2×2 masks
    return {
        "prob": np.array([0.2, 0.4, 0.7, 0.9]),
        "label": np.array([0, 0, 1, 1]),
        "method": np.array(["original", "original", "Face2Face", "Face2Face"], dtype=object),
        "compression": np.array(["c23"] * 4, dtype=object),
        "video": np.array(["000", "000", "000_001", "000_001"], dtype=object),
        "frame": np.array([0, 1, 0, 1]),
        # real 0: one false positive of 4 pixels; real 1: perfect; fake 2: tp1 fp1 fn1 tn1; fake 3: tp2 tn2
        "pixel_tp": np.array([0, 0, 1, 2]),
        "pixel_fp": np.array([1, 0, 1, 0]),
        "pixel_fn": np.array([0, 0, 1, 0]),
        "pixel_tn": np.array([3, 4, 1, 2]),
        "pixel_accuracy": np.array([0.75, 1.0, 0.5, 1.0]),
        "pixel_score": np.array([0.9, 0.1, 0.8, 0.3, 0.6, 0.2]),
        "pixel_label": np.array([0, 0, 1, 0, 1, 1]),
        "pixel_image": np.array([0, 1, 2, 2, 3, 3]),
    }


def test_video_scores_mean_frame_probability():
    v = M.video_scores(_pred())
    assert list(v["video"]) == ["000_001", "000"]  # sorted by method first: Face2Face < original
    assert v.set_index("video").loc["000", "prob"] == pytest.approx(0.3)
    assert v.set_index("video").loc["000_001", "prob"] == pytest.approx(0.8)
    assert list(v["frames"]) == [2, 2]


def test_pixel_metrics_hand_computed():
    out = M.pixel_metrics(_pred())
    assert out["pixel_accuracy"] == pytest.approx((0.75 + 1 + 0.5 + 1) / 4)  # reals included (§E.2)
    assert out["iou"] == pytest.approx((1 / 3 + 1) / 2)  # fakes only
    assert out["f1"] == pytest.approx((2 / 4 + 1) / 2)
    assert out["iou_pooled"] == pytest.approx(3 / 5)
    assert out["f1_pooled"] == pytest.approx(6 / 8)
    # pixel AUC on the sample: positives .8 .6 .2; negatives .9 .1 .3 → 5 of 9 pairs correct
    assert out["pixel_auc"] == pytest.approx(5 / 9)


def test_pixel_metrics_without_fakes_is_nan(caplog):
    p = M.subset(_pred(), np.array([True, True, False, False]))
    assert list(p["pixel_image"]) == [0, 1]
    with caplog.at_level(logging.WARNING, logger="emdlib.metrics"):
        out = M.pixel_metrics(p)
    assert out["pixel_accuracy"] == pytest.approx(0.875)
    assert math.isnan(out["iou"]) and math.isnan(out["f1"]) and math.isnan(out["pixel_auc"])


def test_evaluate_all_levels_and_by_method():
    out = M.evaluate(_pred())
    assert out["accuracy"] == 1.0 and out["auc"] == 1.0 and out["eer"] == 0.0
    assert out["video_n"] == 2 and out["video_accuracy"] == 1.0
    assert math.isnan(out["video_auc"]) is False
    by = M.evaluate_by_method(_pred())
    assert list(by["method"]) == ["Face2Face"] and by.loc[0, "n"] == 4


class _MaskFromImage(DetectorNet):
    """Stand-in detector: P(fake) from the mean of channel 0, mask logit = ±10 by the sign of channel 0."""

    def forward(self, image, fer_image=None):
        m = image[:, 0].mean((1, 2))
        return DetectorOutput(logits=torch.stack([-m, m], 1), mask_logits=torch.sign(image[:, :1]) * 10.0)


def test_predict_then_metrics_with_empty_real_masks():
    S = 4
    items = []
    # real: predicted mask has 4 of 16 pixels on, GT empty → accuracy 12/16
    img = -torch.ones(3, S, S)
    img[0, :2, :2] = 1.0
    items.append({"image": img, "mask": torch.zeros(1, S, S), "label": torch.tensor(0), "method": "original",
                  "compression": "c23", "video": "000", "frame": 0})
    # fake: GT left half (8 px), prediction top half (8 px): tp 4, fp 4, fn 4, tn 4
    img = -torch.ones(3, S, S)
    img[0, :2, :] = 1.0
    gt = torch.zeros(1, S, S)
    gt[0, :, :2] = 1.0
    items.append({"image": img, "mask": gt, "label": torch.tensor(1), "method": "Face2Face",
                  "compression": "c23", "video": "000_001", "frame": 0})
    pred = predict(_MaskFromImage(), items, device="cpu", batch_size=2, pixels_per_image=16)
    assert list(pred["pixel_tp"]) == [0, 4] and list(pred["pixel_fp"]) == [4, 4] and list(pred["pixel_fn"]) == [0, 4]
    out = M.pixel_metrics(pred)
    assert out["pixel_accuracy"] == pytest.approx((12 / 16 + 8 / 16) / 2)
    assert out["iou"] == pytest.approx(4 / 12) and out["f1"] == pytest.approx(8 / 16)
    assert len(pred["pixel_score"]) == 32 and set(pred["pixel_image"]) == {0, 1}
    assert list(pred["method"]) == ["original", "Face2Face"] 
    assert pred["prob"][0] < 0.5 and pred["prob"][1] == pytest.approx(0.5)  # channel-0 means -0.5 and 0
