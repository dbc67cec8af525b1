"""Every numbered notebook, executed the way users run them (``emd reproduce``: papermill), on the ``tiny`` preset.

The notebooks' ``parameters`` default to the README's main study (``cpu``, about three hours on a 2-core CPU), so
they are not run as stored (nbmake would run that study); this runs all eight with ``preset="tiny"`` injected, as
``emd reproduce --preset tiny`` does, and checks what each is for: the data, the FER streams, every table, every
figure and the report.
"""

from __future__ import annotations

from pathlib import Path

import pytest

NOTEBOOKS = ("00_data_prep", "01_fer_training", "02_emd_training", "03_baselines", "04_ablation",
             "05_training_size", "06_roc_cam", "07_report")


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_every_notebook_runs_on_the_tiny_preset(tmp_path: Path) -> None:
    from emdlib.reproduce import reproduce

    timings = reproduce("tiny", tmp_path / "data", tmp_path / "results", progress=False)
    assert list(timings) == [f"{n}.ipynb" for n in NOTEBOOKS]
    results = tmp_path / "results" / "tiny"
    for n in NOTEBOOKS:
        assert (results / "notebooks" / f"{n}.ipynb").is_file(), n
    tables = {p.name for p in (results / "tables").glob("*.md")}
    assert {"table_II.md", "table_III.md", "table_IV.md", "table_V.md"} <= tables, tables
    figures = {p.stem for p in (results / "figures").glob("*.png")}
    assert {"fig3_synth", "fig4_roc_face2face", "fig6_training_size", "fig7_masks_cams"} <= figures, figures
    report = (results / "REPORT.md").read_text()
    assert "Deviations from the paper" in report and "Table II" in report
