"""emdlib.tables: Tables II–V and the study's other tables from run records (no training)."""

from __future__ import annotations

import json

import math

import numpy as np
import pandas as pd
import pytest

from emdlib import paper, tables
from emdlib.io import read_json
from emdlib.study.experiments import run_name
from emdlib.study.records import load_run_records

T_975_DF2 = 4.302652729911275  # Student t quantile 0.975 with 2 degrees of freedom (tables)


def cell(table: pd.DataFrame, row: str, column: str) -> pd.Series:
    sel = table[(table["row"] == row) & (table["column"] == column)]
    assert len(sel) == 1, (row, column)
    return sel.iloc[0]


def test_table_ii_reads_run_records_and_paper(study, fake_run):
    fake_run("EMD", "Face2Face", "c23", 0.8125)
    fake_run("MesoNet", "Face2Face", "c23", 0.5)
    t = tables.build_table("II", study, study.preset)
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
    fake_run("EMD", "Face2Face", "c23", 0.25)
    assert cell(tables.build_table("II", study, study.preset), "EMD", "F2F HQ")["ours"] == pytest.approx(25.0)


def test_missing_cells_and_seed_mean(study, fake_run):
    fake_run("EMD", "Face2Face", "c23", 0.6, seed=0)
    fake_run("EMD", "Face2Face", "c23", 0.8, seed=1)
    fake_run("EMD", "Face2Face", "c23", 0.1, n_train_videos=2)  # Fig. 6 run: not a table number
    t = tables.build_table("II", study, study.preset)
    emd = cell(t, "EMD", "F2F HQ")
    assert emd["ours"] == pytest.approx(70.0) and emd["n_runs"] == 2 and emd["seeds"] == "0,1"
    assert cell(t, "EMD", "DF HQ")["status"] == "not run (preset)"  # the tiny preset has only F2F c23
    assert math.isnan(cell(t, "EMD", "DF HQ")["ours"]) and math.isnan(cell(t, "EMD", "DF HQ")["diff"])
    assert cell(t, "MesoNet", "F2F HQ")["status"] == "not run"  # in the preset, no record yet
    w = tables.wide(t)
    assert w.loc["EMD", "F2F HQ ours"] == "70.00 (n=2)"
    assert w.loc["EMD", "DF LQ ours"] == "not run (preset)"
    assert w.loc["MesoNet", "F2F HQ ours"] == "not run"
    assert w.loc["EMD", "F2F HQ diff"] == f"{70.0 - 99.03:+.2f}"


def test_tables_iii_iv_v(study, fake_run, monkeypatch):
    fake_run("XceptionNet (seg)", "Face2Face", "c23", 0.7, pixel_accuracy=0.9)
    fake_run("EMD", "Face2Face", "c23", 0.75, pixel_accuracy=0.95)
    fake_run("Capsule-Forensics", "Face2Face", "c23", 0.625)
    t3 = tables.build_table("III", study, study.preset)
    assert list(dict.fromkeys(t3["row"])) == list(tables.TABLE_III_ROWS) and len(t3) == 8 * 2
    capsule = cell(t3, "Capsule-Forensics", "HQ")  # a further system: read from its run record, as EMD's
    assert capsule["status"] == "ours" and capsule["ours"] == pytest.approx(62.5)
    assert capsule["diff"] == pytest.approx(62.5 - paper.TABLE_III["Capsule-Forensics"]["c23"])
    assert cell(t3, "DCNN", "HQ")["status"] == "not run"  # built, in the preset, no record yet
    assert cell(t3, "DCNN", "LQ")["status"] == "not run (preset)"  # the tiny preset has only F2F c23
    assert cell(t3, "Face X-ray", "HQ")["paper"] == 97.73 and math.isnan(cell(t3, "Face X-ray", "LQ")["paper"])
    assert cell(t3, "EMD", "HQ")["ours"] == pytest.approx(75.0)
    from emdlib.study import experiments  # a row whose system the study lacks is "not reproduced", not "not run"
    monkeypatch.delitem(experiments.SYSTEMS, "Capsule-Forensics")
    gone = cell(tables.build_table("III", study, study.preset), "Capsule-Forensics", "HQ")
    assert gone["status"] == "not reproduced" and math.isnan(gone["ours"])
    assert tables.wide(t3).loc["LAE", "LQ paper"] == "–"
    t4 = tables.build_table("IV", study, study.preset)
    xs = cell(t4, "XceptionNet (seg)", "F2F HQ")  # our row, the paper's "XceptionNet" number
    assert xs["ours"] == pytest.approx(90.0) and xs["paper"] == paper.TABLE_IV["XceptionNet"][("Face2Face", "c23")]
    t5 = tables.build_table("V", study, study.preset)
    assert cell(t5, "EMD", "F2F Seg")["ours"] == pytest.approx(95.0)
    assert cell(t5, "EMD", "F2F Cls")["ours"] == pytest.approx(75.0)
    assert cell(t5, "EMD", "F2F Cls")["diff"] == pytest.approx(75.0 - paper.TABLE_V["EMD"][("Face2Face", "cls")])
    assert cell(t5, "XceptionNet+SimFER", "F2F Cls")["status"] == "not run"  # notebook 04 has not run
    assert cell(t5, "EMD", "NT Cls")["status"] == "not run (preset)"


def test_table_v_rows_seed_means_and_paper_columns(study, fake_run):
    for i, system in enumerate(tables.TABLE_V_ROWS):
        for seed in (0, 1):
            fake_run(system, "Face2Face", "c23", 0.5 + 0.1 * i + 0.02 * seed, 0.9, seed=seed)
    fake_run("EMD", "Face2Face", "c23", 0.0, 0.0, n_train_videos=2)  # training-size run: excluded
    t5 = tables.build_table("V", study, study.preset)
    assert list(dict.fromkeys(t5["row"])) == list(tables.TABLE_V_ROWS)
    assert cell(t5, "EMD", "F2F Cls")["ours"] == pytest.approx(100 * (0.8 + 0.01))
    assert cell(t5, "MultiTask+SimFER", "F2F Seg")["ours"] == pytest.approx(90.0)
    assert cell(t5, "EMD", "F2F Cls")["paper"] == paper.TABLE_V["EMD"][("Face2Face", "cls")]


def test_write_tables_csv_and_markdown(study, fake_run):
    name = fake_run("EMD", "Face2Face", "c23", 0.5)
    made = tables.write_tables(study)
    paths = study.paths
    for n in ("II", "III", "IV", "V"):
        assert (paths.tables / f"table_{n}.csv").is_file() and (paths.tables / f"table_{n}.md").is_file()
    csv = pd.read_csv(paths.tables / "table_II.csv")
    assert csv.loc[(csv["row"] == "EMD") & (csv["column"] == "F2F HQ"), "ours"].item() == pytest.approx(50.0)
    assert len(csv) == len(made["II"])
    md = (paths.tables / "table_II.md").read_text()
    assert "Table II" in md and "| EMD | " in md and "not run (preset)" in md and "50.00" in md
    assert f"../runs/{name}/metrics.json" in md  # provenance link, relative to tables/


def test_metrics_table_reads_the_runs_asked_for(study, fake_run):
    fake_run("EMD", "Face2Face", "c23", 0.75, 0.9)
    fake_run("MesoNet", "Face2Face", "c23", 0.6)
    fake_run("EMD", "Face2Face", "c23", 0.1, 0.1, n_train_videos=2)
    t = tables.metrics_table(study, ["EMD"], [("Face2Face", "c23")])
    assert t["system"].tolist() == ["EMD"] and t["accuracy"].tolist() == [0.75]


def test_best_epoch_stays_an_integer_beside_records_without_one(study, fake_run):
    from emdlib.study.records import RECORD

    fake_run("EMD", "Face2Face", "c23", 0.75, 0.9)
    fake_run("Steg.Features+SVM", "Face2Face", "c23", 0.6)  # an SVM: no epochs
    emd = next(p for p in study.paths.results.rglob(RECORD) if p.parent.name.startswith("emd__"))
    emd.write_text(json.dumps({**json.loads(emd.read_text()), "best_epoch": 5}))
    t = tables.metrics_table(study, ["EMD", "Steg.Features+SVM"], [("Face2Face", "c23")])
    assert t.set_index("system")["best_epoch"].astype(object).tolist() == [5, pd.NA]
    csv = study.paths.tables / "m.csv"
    csv.parent.mkdir(parents=True, exist_ok=True)
    t.to_csv(csv, index=False)
    assert ",5," in csv.read_text() and ",5.0," not in csv.read_text()


# ---------------------------------------------------------------------------------------------- Fig. 6 numbers

def test_training_size_table_aggregates_seeds(size_records):
    df = tables.training_size_table(load_run_records(size_records))
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
    dicts = [read_json(p) for p in sorted(size_records.rglob("metrics.json"))]
    a = tables.training_size_table(dicts)
    b = tables.training_size_table(load_run_records(size_records))
    pd.testing.assert_frame_equal(a[["n_train_videos", "metric", "mean", "ci_low"]],
                                  b[["n_train_videos", "metric", "mean", "ci_low"]])


def test_training_size_table_needs_size_runs(study, fake_run):
    fake_run("EMD", "Face2Face", "c23", 0.9, 0.9)
    with pytest.raises(ValueError, match="training-size"):
        tables.training_size_table(load_run_records(study.paths.results))
