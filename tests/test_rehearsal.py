"""The paper's protocol rehearsed end to end (issue 13, deliverable 6): ``emd reproduce --preset paper`` on a
miniature FaceForensics++ and a miniature AffectNet, both in their official layouts and made of real photographs.

* FF++: ``emd forge`` on the London set — original, Deepfakes, Face2Face and NeuralTextures at c23 and c40, masks,
  split JSON in the official format (2 / 1 / 1 pairs of identities, 6 frames a clip);
* AffectNet: ``emd forge-affectnet`` from the CK+ crops (seven expressions) and the London neutral photos — eight
  classes, ``training.csv`` / ``validation.csv`` with face boxes, images under ``Manually_Annotated_Images``.

Then all eight notebooks run with the ``paper`` preset and only size settings (``--set``): fewer frames, 64-px faces,
one epoch per phase and one batch per epoch, no ImageNet download (offline). Everything else is the paper
protocol: xception65 EMD with ESR-9 grown branch by branch on the AffectNet CSVs, every cell c23 and c40, every
system's own recipe. The test checks that every cell of Tables II, IV and V and every Table III row we build is
filled (no "not run"), that every figure is written, that the FER stage trained on the AffectNet root, and that the
report names its data. The paths are given relative to the directory the command runs in, as a user would.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

#: Size settings only: the rehearsal's data is tiny, the protocol is the paper's.
SIZE_SETTINGS = ("data.pairs=[2, 1, 1]", "prepare.train_frames=2", "prepare.eval_frames=1", "prepare.crop_size=64",
                 "fer.first_epochs=1", "fer.branch_epochs=1", "fer.val_every=1", "fer.max_per_class=2",
                 "emd.image_size=64", "emd.warmup_epochs=1", "emd.epochs=1", "emd.batch_size=4", "emd.max_batches=1",
                 "emd.pretrained=false", "emd.curve_points=2")
FIGURES = ("fig3", "fig4_roc_face2face", "fig5_roc_neuraltextures", "fig6_training_size", "fig7_masks_cams")


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_reproduce_paper_on_miniature_ffpp_and_affectnet(shared, tmp_path: Path, monkeypatch) -> None:
    from emdlib import cli

    london = shared / "data" / "london-faces"
    monkeypatch.chdir(tmp_path)
    assert cli.main(["forge", "--faces", str(london), "--out", "ffpp", "--pairs", "2", "1", "1", "--frames", "6",
                     "--size", "112"]) == 0
    assert cli.main(["forge-affectnet", "affectnet", "--ckplus", str(shared / "data" / "ckplus48"),
                     "--neutral", str(london / "neutral"), "--train", "6", "--val", "2"]) == 0
    argv = ["reproduce", "--preset", "paper", "--data-root", "data", "--results", "results",
            "-p", "ffpp_root", "ffpp", "-p", "affectnet_root", "affectnet", "-p", "workers", "1"]
    for setting in SIZE_SETTINGS:
        argv += ["--set", setting]
    assert cli.main(argv) == 0

    results = tmp_path / "results" / "paper"
    timings = json.loads((results / "timings.json").read_text())
    assert len(timings) == 8, timings
    for name in ("II", "III", "IV", "V"):
        table = pd.read_csv(results / "tables" / f"table_{name}.csv")
        ours = table[table["status"] != "not reproduced"]  # Table III's rows of systems the study has not built
        assert len(ours) and (ours["status"] == "ours").all(), ours[ours["status"] != "ours"][["row", "column"]]
        if name != "V":  # Table V is HQ only, as the paper's
            assert {"HQ", "LQ"} <= set(ours["quality"]), name
    assert set(pd.read_csv(results / "tables" / "table_II.csv")["method"]) == {"Deepfakes", "Face2Face",
                                                                              "NeuralTextures"}
    figures = {p.stem for p in (results / "figures").glob("*.png")}
    assert all(any(f.startswith(want) for f in figures) for want in FIGURES), figures

    fer = json.loads((results / "fer" / "metrics.json").read_text())
    assert str(tmp_path / "affectnet") in json.dumps(fer), "the FER stage did not train on the AffectNet root"
    record = json.loads(next((results / "runs").glob("emd__Face2Face__c40__s0/metrics.json")).read_text())
    assert record["config"]["preset"]["emd"]["encoder"] == "xception65"
    assert record["config"]["preset"]["fer"]["schedule"] == "grow"
    assert str(tmp_path / "affectnet") in json.dumps(record["fer_stream"])
    report = (results / "REPORT.md").read_text()
    assert str(tmp_path / "affectnet") in report and str(tmp_path / "ffpp") in report
