"""emdlib.report: Tables II–V from run records, REPORT.md and the FER-effect bootstrap (no training)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from emdlib import paper, report
from emdlib.experiments import run_name
from emdlib.presets import get_preset
from emdlib.runs import write_run_record
from emdlib.study import study_paths

PRESET = get_preset("tiny")  # cells: Face2Face c23 only


@pytest.fixture
def paths(tmp_path: Path):
    return study_paths("tiny", tmp_path / "data", tmp_path / "results")


def fake_run(paths, system: str, method: str, compression: str, accuracy: float, pixel_accuracy: float | None = None,
             seed: int = 0, n_train_videos: int | None = None) -> str:
    name = run_name(system, method, compression, seed, n_train_videos)
    metrics = {"accuracy": accuracy, "auc": 0.5}
    if pixel_accuracy is not None:
        metrics["pixel_accuracy"] = pixel_accuracy
    config = {"system": system, "method": method, "compression": compression, "n_train_videos": n_train_videos,
              "n_test_images": 20, "preset": PRESET.to_dict()}
    write_run_record(paths.results, name, metrics, config, seed, wall_time_s=1.5, preset="tiny",
                     extra={"system": system, "method": method, "compression": compression,
                            "n_train_videos": n_train_videos})
    return name


def cell(table: pd.DataFrame, row: str, column: str) -> pd.Series:
    sel = table[(table["row"] == row) & (table["column"] == column)]
    assert len(sel) == 1, (row, column)
    return sel.iloc[0]


def test_table_ii_reads_run_records_and_paper(paths):
    fake_run(paths, "EMD", "Face2Face", "c23", 0.8125)
    fake_run(paths, "MesoNet", "Face2Face", "c23", 0.5)
    t = report.build_table("II", paths, PRESET)
    emd = cell(t, "EMD", "F2F HQ")
    assert emd["status"] == "ours" and emd["ours"] == pytest.approx(81.25)
    assert emd["paper"] == paper.TABLE_II["EMD"][("Face2Face", "c23")]
    assert emd["diff"] == pytest.approx(81.25 - 99.03)
    assert emd["runs"] == run_name("EMD", "Face2Face", "c23", 0)
    # every paper cell equals emdlib.paper
    for _, r in t.iterrows():
        assert r["paper"] == paper.TABLE_II[r["row"]][(r["method"], r["compression"])]
    assert len(t) == 9 * 6
    # a changed run record changes the table: the number is read, not typed
    fake_run(paths, "EMD", "Face2Face", "c23", 0.25)
    assert cell(report.build_table("II", paths, PRESET), "EMD", "F2F HQ")["ours"] == pytest.approx(25.0)


def test_missing_cells_and_seed_mean(paths):
    fake_run(paths, "EMD", "Face2Face", "c23", 0.6, seed=0)
    fake_run(paths, "EMD", "Face2Face", "c23", 0.8, seed=1)
    fake_run(paths, "EMD", "Face2Face", "c23", 0.1, n_train_videos=2)  # Fig. 6 run: not a table number
    t = report.build_table("II", paths, PRESET)
    emd = cell(t, "EMD", "F2F HQ")
    assert emd["ours"] == pytest.approx(70.0) and emd["n_runs"] == 2 and emd["seeds"] == "0,1"
    assert cell(t, "EMD", "DF HQ")["status"] == "not run (preset)"  # the tiny preset has only F2F c23
    assert math.isnan(cell(t, "EMD", "DF HQ")["ours"]) and math.isnan(cell(t, "EMD", "DF HQ")["diff"])
    assert cell(t, "MesoNet", "F2F HQ")["status"] == "not run"  # in the preset, no record yet
    w = report.wide(t)
    assert w.loc["EMD", "F2F HQ ours"] == "70.00 (n=2)"
    assert w.loc["EMD", "DF LQ ours"] == "not run (preset)"
    assert w.loc["MesoNet", "F2F HQ ours"] == "not run"
    assert w.loc["EMD", "F2F HQ diff"] == f"{70.0 - 99.03:+.2f}"


def test_tables_iii_iv_v(paths):
    fake_run(paths, "XceptionNet (seg)", "Face2Face", "c23", 0.7, pixel_accuracy=0.9)
    fake_run(paths, "EMD", "Face2Face", "c23", 0.75, pixel_accuracy=0.95)
    t3 = report.build_table("III", paths, PRESET)
    assert cell(t3, "Face X-ray", "HQ")["status"] == "not reproduced"
    assert cell(t3, "Face X-ray", "HQ")["paper"] == 97.73 and math.isnan(cell(t3, "Face X-ray", "LQ")["paper"])
    assert cell(t3, "EMD", "HQ")["ours"] == pytest.approx(75.0)
    assert report.wide(t3).loc["LAE", "LQ paper"] == "–"
    t4 = report.build_table("IV", paths, PRESET)
    xs = cell(t4, "XceptionNet (seg)", "F2F HQ")  # our row, the paper's "XceptionNet" number
    assert xs["ours"] == pytest.approx(90.0) and xs["paper"] == paper.TABLE_IV["XceptionNet"][("Face2Face", "c23")]
    t5 = report.build_table("V", paths, PRESET)
    assert cell(t5, "EMD", "F2F Seg")["ours"] == pytest.approx(95.0)
    assert cell(t5, "EMD", "F2F Cls")["ours"] == pytest.approx(75.0)
    assert cell(t5, "EMD", "F2F Cls")["diff"] == pytest.approx(75.0 - paper.TABLE_V["EMD"][("Face2Face", "cls")])
    assert cell(t5, "XceptionNet+SimFER", "F2F Cls")["status"] == "not run"  # notebook 04 has not run
    assert cell(t5, "EMD", "NT Cls")["status"] == "not run (preset)"


def test_write_tables_csv_and_markdown(paths):
    name = fake_run(paths, "EMD", "Face2Face", "c23", 0.5)
    tables = report.write_tables(paths, PRESET)
    for n in ("II", "III", "IV", "V"):
        assert (paths.tables / f"table_{n}.csv").is_file() and (paths.tables / f"table_{n}.md").is_file()
    csv = pd.read_csv(paths.tables / "table_II.csv")
    assert csv.loc[(csv["row"] == "EMD") & (csv["column"] == "F2F HQ"), "ours"].item() == pytest.approx(50.0)
    assert len(csv) == len(tables["II"])
    md = (paths.tables / "table_II.md").read_text()
    assert "Table II" in md and "| EMD | " in md and "not run (preset)" in md and "50.00" in md
    assert f"../runs/{name}/metrics.json" in md  # provenance link, relative to tables/


def write_predictions(paths, run: str, correct: np.ndarray, pix: np.ndarray, videos: np.ndarray,
                      labels: np.ndarray) -> None:
    prob = np.where(correct.astype(bool), labels, 1 - labels).astype(float) * 0.8 + 0.1
    folder = paths.runs / run
    folder.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(folder / "predictions.npz", prob=prob, label=labels,
                        method=np.where(labels == 1, "Face2Face", "original"), compression=np.full(len(labels), "c23"),
                        video=videos, frame=np.arange(len(labels)) % 2, pixel_accuracy=pix)


def test_fer_effect_point_estimate_and_interval(paths):
    # 6 videos × 2 frames; EMD gets 10/12 right, XceptionNet (seg) 6/12 → +33.33 points
    videos = np.repeat([f"v{i}" for i in range(6)], 2)
    labels = np.repeat([1, 1, 1, 0, 0, 0], 2)
    emd_correct = np.array([1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 0, 1])
    xs_correct = np.array([1, 0, 1, 0, 0, 1, 1, 0, 1, 0, 1, 0])
    emd_pix = np.linspace(0.8, 1.0, 12)
    xs_pix = emd_pix - 0.05
    write_predictions(paths, run_name("EMD", "Face2Face", "c23"), emd_correct, emd_pix, videos, labels)
    write_predictions(paths, run_name("XceptionNet (seg)", "Face2Face", "c23"), xs_correct, xs_pix, videos, labels)
    eff = report.fer_effect(paths, [("Face2Face", "c23"), ("NeuralTextures", "c23")], n_boot=500, seed=0)
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
    again = report.fer_effect(paths, [("Face2Face", "c23")], n_boot=500, seed=0)
    assert again.iloc[0]["ci_low"] == acc["ci_low"] and again.iloc[0]["ci_high"] == acc["ci_high"]


def test_fer_effect_rejects_unpaired_predictions(paths):
    labels = np.array([1, 0])
    write_predictions(paths, run_name("EMD", "Face2Face", "c23"), np.ones(2), np.ones(2), np.array(["a", "b"]), labels)
    write_predictions(paths, run_name("XceptionNet (seg)", "Face2Face", "c23"), np.ones(2), np.ones(2),
                      np.array(["a", "c"]), labels)
    with pytest.raises(ValueError, match="not on the same test images"):
        report.fer_effect(paths, [("Face2Face", "c23")], n_boot=10)


def test_write_report(paths):
    for system, acc, pix in (("EMD", 0.75, 0.9), ("XceptionNet (seg)", 0.5, 0.8), ("MesoNet", 0.6, None)):
        fake_run(paths, system, "Face2Face", "c23", acc, pix)
    (paths.figures / "fig4_roc_f2f.png").write_bytes(b"\x89PNG fake")
    (paths.figures / "fig3_synth.png").write_bytes(b"\x89PNG fake")
    (paths.results / "timings.json").write_text('{"03_baselines.ipynb": 12.5}')
    path = report.write_report(paths, PRESET, n_boot=50)
    assert path == paths.results / "REPORT.md"
    text = path.read_text()
    for name in ("Table II", "Table III", "Table IV", "Table V"):
        assert name in text
    assert "](figures/fig3_synth.png)" in text and "](figures/fig4_roc_f2f.png)" in text
    assert text.index("fig3_synth.png") < text.index("fig4_roc_f2f.png")
    assert PRESET.note in text and "Cannot show" in text
    assert "Does the FER stream help?" in text and "not run" in text  # no predictions stored by fake_run
    assert "03_baselines.ipynb" in text and "12.50" in text and "| total |" in text
    assert run_name("MesoNet", "Face2Face", "c23") in text and "75.00" in text
    assert "](runs/emd__Face2Face__c23__s0/metrics.json)" in text  # provenance link, relative to REPORT.md


def test_chance_levels(paths):
    name = fake_run(paths, "EMD", "Face2Face", "c23", 0.5, 0.9)
    folder = paths.runs / name
    # 3 fakes, 1 real; image pixel counts (tp, fp, fn, tn) of a 10-pixel mask
    np.savez_compressed(folder / "predictions.npz", prob=np.full(4, 0.6), label=np.array([1, 1, 1, 0]),
                        method=np.array(["Face2Face"] * 3 + ["original"]), compression=np.full(4, "c23"),
                        video=np.array(["a", "b", "c", "d"]), frame=np.zeros(4, int),
                        pixel_tp=np.array([1, 0, 2, 0]), pixel_fp=np.array([0, 1, 0, 0]),
                        pixel_fn=np.array([1, 4, 0, 0]), pixel_tn=np.array([8, 5, 8, 10]),
                        pixel_accuracy=np.array([0.9, 0.5, 1.0, 1.0]))
    c = report.chance_levels(paths).iloc[0]
    assert c["majority_accuracy"] == pytest.approx(75.0)
    # empty mask: fraction of ground-truth-negative pixels per image = (fp + tn) / 10
    assert c["empty_mask_pixel_accuracy"] == pytest.approx(100 * np.mean([0.8, 0.6, 0.8, 1.0]))
    assert c["run"] == name
