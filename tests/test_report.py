"""emdlib.report: REPORT.md from run records, figures and timings (no training, no drawing)."""

from __future__ import annotations

from emdlib import report
from emdlib.study.experiments import run_name


def test_write_report(study, fake_run):
    for system, acc, pix in (("EMD", 0.75, 0.9), ("XceptionNet (seg)", 0.5, 0.8), ("MesoNet", 0.6, None)):
        fake_run(system, "Face2Face", "c23", acc, pix)
    paths = study.paths
    (paths.figures / "fig4_roc_f2f.png").write_bytes(b"\x89PNG fake")
    (paths.figures / "fig3_synth.png").write_bytes(b"\x89PNG fake")
    (paths.results / "timings.json").write_text('{"03_baselines.ipynb": 12.5}')
    path = report.write_report(study, n_boot=50)
    assert path == paths.results / "REPORT.md"
    text = path.read_text()
    for name in ("Table II", "Table III", "Table IV", "Table V"):
        assert name in text
    assert "](figures/fig3_synth.png)" in text and "](figures/fig4_roc_f2f.png)" in text
    assert text.index("fig3_synth.png") < text.index("fig4_roc_f2f.png")
    assert study.preset.note in text and "Cannot show" in text
    assert "Does the FER stream help?" in text and "not run" in text  # no predictions stored by fake_run
    assert "03_baselines.ipynb" in text and "12.50" in text and "| total |" in text
    assert run_name("MesoNet", "Face2Face", "c23") in text and "75.00" in text
    assert "](runs/emd__Face2Face__c23__s0/metrics.json)" in text  # provenance link, relative to REPORT.md


def test_cells_not_above_chance_are_named():
    import math

    import pandas as pd

    chance = pd.DataFrame({"method": ["Face2Face", "Face2Face"], "compression": ["c23", "c40"],
                           "majority_accuracy": [50.0, 62.5]})
    table = pd.DataFrame({
        "row": ["A", "A", "B", "B", "C"], "column": ["HQ", "LQ", "HQ", "LQ", "HQ"],
        "method": ["Face2Face"] * 5, "compression": ["c23", "c40", "c23", "c40", "c23"],
        "metric": ["accuracy"] * 5, "status": ["ours", "ours", "ours", "ours", "not run"],
        "ours": [50.0, 62.6, 49.0, 62.5, math.nan]})
    # A HQ equals chance, B HQ is below it, B LQ equals the LQ cell's own majority share; A LQ is above; C has no run
    assert report.not_above_chance(table, chance) == ["A (HQ)", "B (HQ)", "B (LQ)"]
    assert report.not_above_chance(table.assign(metric="pixel_accuracy"), chance) == []


def test_preset_scope_resolution_and_what_it_can_show():
    import pandas as pd

    from emdlib.presets import get_preset

    def scope(n_test: int) -> str:
        runs = pd.DataFrame({"config": [{"n_test_images": n_test}, {"n_test_images": 2 * n_test}]})
        return "\n".join(report.preset_scope(get_preset("cpu"), runs))

    text = scope(80)  # the cpu cells: 80 test images, 100/80 = 1.25 points
    assert "one image moves an accuracy by 1.25 points" in text and "the ordering of the systems" in text
    assert "1 warm-up + 6 full epochs" in text
    text = scope(8)  # tiny's 8 test images: 12.5 points, and no ordering offered
    assert "by 12.5 points" in text and "not even an ordering of the systems" in text
    assert "10/5/5 train/val/test pairs (each pair" in text
    # a user's FF++ copy: the official splits, and what the copy's frames gave the runs
    runs = pd.DataFrame({"config": [{"n_train_images": 4, "n_test_images": 2}, {"n_train_images": 6}]})
    text = "\n".join(report.preset_scope(get_preset("paper"), runs))
    assert ("the official splits (360/70/70 train/val/test pairs; the copy's usable frames gave the runs 4–6 "
            "training images per cell)") in text


def test_training_time_sums_each_systems_run_records():
    import pandas as pd

    runs = pd.DataFrame({"system": ["EMD", "EMD", "MesoNet", "MesoNet"], "wall_time_s": [100.0, 50.5, 7.0, None]})
    lines = report.training_time_markdown(runs)
    table = lines[2]
    assert "| EMD | 2 | 150.50 |" in table  # 100 + 50.5
    assert "| MesoNet | 2 | 7.00 |" in table  # a record without a wall time counts as a run, adds nothing
    assert "| total | 4 | 157.50 |" in table
    assert table.index("| EMD |") < table.index("| MesoNet |")  # longest first
    assert report.training_time_markdown(pd.DataFrame()) == []
