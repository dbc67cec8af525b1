"""AffectNet: the official CSV (edge cases), its layout, the miniature AffectNet, the per-phase class cap, and the
FER stage trained on AffectNet (ESR with the official grow schedule and SimFER on the same images)."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest

from emdlib.data.affectnet import (CSV_FOLDER, IMAGE_FOLDER, NOT_ANNOTATED, affectnet_layout, write_affectnet)
from emdlib.data.expressions import (AFFECTNET_COLUMNS, CKPLUS_CLASSES, EXPRESSIONS, read_affectnet_csv,
                                     subject_id)
from emdlib.io import sha256_file
from emdlib.train_fer import class_capped_indices

HEADER = ",".join(AFFECTNET_COLUMNS)


def _image(path: Path, size: int = 20) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((size, size, 3), 128, np.uint8))


# ---------------------------------------------------------------- the official CSV


def test_csv_counts_every_dropped_row_by_reason(tmp_path, caplog):
    _image(tmp_path / "imgs" / "1" / "a.jpg")
    rows = [HEADER,
            '1/a.jpg,0,0,20,20,"1;2",0,0.1,0.2',       # kept (neutral)
            '1/a.jpg,0,0,20,20,"1;2",7,0.1,0.2',       # kept (contempt)
            '1/a.jpg,0,0,20,20,"1;2",8,0.1,0.2',       # None
            '1/a.jpg,0,0,20,20,"1;2",9,-2,-2',         # Uncertain
            '1/a.jpg,0,0,20,20,"1;2",10,-2,-2',        # No-face
            '1/gone.jpg,0,0,20,20,"1;2",1,0.1,0.2',    # missing image (line 7)
            '1/a.jpg,0,0,0,20,"1;2",1,0.1,0.2',        # zero width
            '1/a.jpg,0,0,20,20,"1;2",11,0.1,0.2']      # not a code
    csv = tmp_path / "training.csv"
    csv.write_text("\n".join(rows) + "\n")
    with caplog.at_level(logging.WARNING, logger="emdlib.data.expressions"):
        samples, counts = read_affectnet_csv(csv, tmp_path / "imgs")
    assert [s.label for s in samples] == [0, 7]
    assert counts == {"rows": 8, "kept": 2, "expression_none": 1, "expression_uncertain": 1,
                      "expression_no_face": 1, "missing_image": 1, "bad_box": 1, "bad_expression": 1}
    assert "line 7: " + str(tmp_path / "imgs" / "1" / "gone.jpg") in caplog.text


def test_csv_without_header_is_read_in_the_official_order(tmp_path, caplog):
    _image(tmp_path / "imgs" / "5" / "b.png")
    csv = tmp_path / "validation.csv"
    csv.write_text('5/b.png,2,3,10,12,"1;2",3,0.5,0.5\n5/missing.png,2,3,10,12,"1;2",3,0.5,0.5\n')
    with caplog.at_level(logging.WARNING, logger="emdlib.data.expressions"):
        samples, counts = read_affectnet_csv(csv, tmp_path / "imgs")
    assert counts == {"rows": 2, "kept": 1, "missing_image": 1}  # the first line is data, not a header
    assert samples[0].label == 3 and (samples[0].box.x, samples[0].box.y) == (2, 3)
    assert "line 2: " in caplog.text  # line numbers count from the first data line


def test_csv_with_other_column_names_fails_naming_the_missing_ones(tmp_path):
    csv = tmp_path / "training.csv"
    csv.write_text("path,x,y,w,h,landmarks,expression,valence,arousal\n1/a.jpg,0,0,20,20,,1,0,0\n")
    with pytest.raises(ValueError, match=r"training.csv: missing AffectNet columns \['subDirectory_filePath', "
                                         r"'face_x', 'face_y', 'face_width', 'face_height'\]"):
        read_affectnet_csv(csv, tmp_path, check_files=False)


def test_csv_with_only_unusable_rows_fails(tmp_path):
    csv = tmp_path / "training.csv"
    csv.write_text(HEADER + '\n1/a.jpg,0,0,20,20,"",9,-2,-2\n')
    with pytest.raises(ValueError, match=r"training.csv: none of the 1 rows is usable .*expression_uncertain"):
        read_affectnet_csv(csv, tmp_path, check_files=False)


# ---------------------------------------------------------------- layout


def test_layout_finds_the_official_and_the_flat_layout(tmp_path):
    root = tmp_path / "an"
    (root / CSV_FOLDER).mkdir(parents=True)
    (root / IMAGE_FOLDER).mkdir()
    with pytest.raises(FileNotFoundError, match=r"an: AffectNet training.csv not found .*Manually_Annotated_file"):
        affectnet_layout(root)
    for name in ("training.csv", "validation.csv"):
        (root / CSV_FOLDER / name).write_text(HEADER + "\n")
    layout = affectnet_layout(root)
    assert layout.training_csv == root.resolve() / CSV_FOLDER / "training.csv"
    assert layout.images == root.resolve() / IMAGE_FOLDER

    flat = tmp_path / "flat"
    (flat / "Manually_Annotated" / IMAGE_FOLDER).mkdir(parents=True)
    (flat / "training.csv").write_text(HEADER + "\n")
    with pytest.raises(FileNotFoundError, match="validation.csv not found"):
        affectnet_layout(flat)
    (flat / "validation.csv").write_text(HEADER + "\n")
    assert affectnet_layout(flat).images == flat.resolve() / "Manually_Annotated" / IMAGE_FOLDER
    (flat / "Manually_Annotated" / IMAGE_FOLDER).rmdir()
    with pytest.raises(FileNotFoundError, match="AffectNet image folder not found"):
        affectnet_layout(flat)
    with pytest.raises(FileNotFoundError, match="AffectNet root not found"):
        affectnet_layout(tmp_path / "nowhere")


# ---------------------------------------------------------------- the per-phase class cap


def test_class_capped_indices_caps_each_class_and_draws_anew_per_seed():
    labels = np.array([0] * 6 + [1] * 2 + [2] * 5)
    idx = class_capped_indices(labels, 3, seed=(0, 1))
    assert np.bincount(labels[idx]).tolist() == [3, 2, 3]  # class 1 has fewer than the cap: taken whole
    assert list(idx) == sorted(set(idx.tolist()))
    assert np.array_equal(idx, class_capped_indices(labels, 3, seed=(0, 1)))
    draws = {tuple(class_capped_indices(labels, 3, seed=(0, k))) for k in range(1, 6)}
    assert len(draws) > 1  # a new sample per phase
    with pytest.raises(ValueError, match="max_per_class must be >= 1"):
        class_capped_indices(labels, 0)


# ---------------------------------------------------------------- the miniature AffectNet (real faces)


@pytest.fixture(scope="module")
def mini_affectnet(shared, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("affectnet") / "mini"
    counts = write_affectnet(out, shared / "data" / "ckplus48", shared / "data" / "london-faces" / "neutral",
                             train_per_class=6, val_per_class=2)
    return out, counts


def test_miniature_affectnet_round_trip(mini_affectnet, shared):
    out, counts = mini_affectnet
    assert counts == {"train": {c: 6 for c in EXPRESSIONS}, "val": {c: 2 for c in EXPRESSIONS}}
    layout = affectnet_layout(out)
    assert layout.training_csv == out / CSV_FOLDER / "training.csv" and layout.images == out / IMAGE_FOLDER
    parts = {}
    for part, csv in (("train", layout.training_csv), ("val", layout.validation_csv)):
        samples, n = read_affectnet_csv(csv, layout.images)
        assert n == {"rows": len(samples), "kept": len(samples)}
        assert np.bincount([s.label for s in samples], minlength=8).tolist() == [counts[part][c] for c in EXPRESSIONS]
        parts[part] = samples
    ckplus = {s for p in parts.values() for s in p if s.label != EXPRESSIONS.index("neutral")}
    assert all((s.box.x, s.box.y, s.box.width, s.box.height) == (0, 0, 48, 48) for s in ckplus)  # the whole crop
    neutral = [s for s in parts["train"] if s.label == 0]
    assert all(0 < s.box.width < 512 for s in neutral)  # a detected face box inside the 512² photo
    import pandas as pd

    df = pd.read_csv(layout.training_csv)
    assert list(df.columns) == list(AFFECTNET_COLUMNS)
    assert (df["valence"] == NOT_ANNOTATED).all() and (df["arousal"] == NOT_ANNOTATED).all()
    assert df["facial_landmarks"].map(lambda v: len(v.split(";"))).eq(136).all()  # 68 (x, y) points
    assert df["subDirectory_filePath"].str.fullmatch(r"\d+/[0-9a-f]{40}\.(png|jpg)").all()
    # CK+ subjects never in both splits; the copied bytes are the source's
    names = {p: {_ckplus_subject(s, shared) for s in parts[p] if s.label != 0} for p in parts}
    assert not names["train"] & names["val"]
    with pytest.raises(FileExistsError, match="not an empty folder"):
        write_affectnet(out, shared / "data" / "ckplus48", shared / "data" / "london-faces" / "neutral")


def _ckplus_subject(sample, shared) -> str:
    """The CK+ subject of a miniature image, found by its bytes among the CK+ sources."""
    digest = sha256_file(sample.path)
    folder = [k for k, v in CKPLUS_CLASSES.items() if v == sample.label][0]
    for p in sorted((shared / "data" / "ckplus48" / folder).iterdir()):
        if sha256_file(p) == digest:
            return subject_id(p)
    raise AssertionError(f"{sample.path}: not a CK+ image of class {folder}")


def test_fer_stage_trains_both_streams_on_affectnet_with_the_grow_schedule(mini_affectnet, tmp_path):
    from emdlib.checkpoint import load_meta
    from emdlib.presets import get_preset
    from emdlib.report import fer_data_line
    from emdlib.study import Study
    from emdlib.study import fer as fer_stage

    root, _ = mini_affectnet
    preset = get_preset("tiny")
    fer = dataclasses.replace(preset.fer, branches=2, schedule="grow", first_epochs=1, branch_epochs=1,
                              max_per_class=2, val_every=2, optimizer="sgd", lr=0.01)
    study = Study.open(dataclasses.replace(preset, fer=fer), tmp_path / "data", tmp_path / "results",
                       affectnet_root=root)
    streams = fer_stage.ensure_fer_streams(study)
    esr_info, simfer_info = streams["ESR"][1], streams["SimFER"][1]
    assert esr_info["source"] == simfer_info["source"] == "trained"
    assert [r["phase"] for r in esr_info["history"]] == ["branch 1/2", "branch 2/2"]
    assert esr_info["n_train_per_phase"] == [16, 16]  # 2 of the 6 images per class, drawn anew for branch 2
    assert simfer_info["n_train_per_phase"] == [16] and len(simfer_info["history"]) == 1  # first_epochs
    assert esr_info["n_val"] == simfer_info["n_val"] == 16  # validation.csv
    assert not (study.paths.expressions).exists()  # the synth set was never rendered

    record = fer_stage.fer_stream_record(study, "ESR")
    ckpt = study.paths.checkpoints / "esr.safetensors"
    assert record["source"] == "trained" and record["checkpoint_sha256"] == sha256_file(ckpt)
    assert record["data"] == {"name": "AffectNet", "root": str(root.resolve()), "kept": {"train": 48, "val": 16},
                              "dropped": {"train": {}, "val": {}}}
    assert fer_stage.fer_stream_record(study, None) is None
    import pandas as pd

    line = fer_data_line(study, pd.DataFrame())
    assert line.startswith("ESR (trained here, checkpoint sha256 " + record["checkpoint_sha256"][:12])
    assert line.endswith(f"on AffectNet at `{root.resolve()}` (training.csv: 48 rows kept, 0 dropped; "
                         "validation.csv: 16 rows kept, 0 dropped)")

    again = fer_stage.ensure_fer_streams(study)  # same data: both checkpoints reused
    assert again["ESR"][1]["source"] == again["SimFER"][1]["source"] == "checkpoint"
    synth = Study.open(study.preset, tmp_path / "data", tmp_path / "results")  # same checkpoints, other data
    assert not fer_stage._reusable(synth, "ESR")
    # the same data under other FER settings (a smoke run's checkpoint, then the real run): not reused
    longer = Study.open(dataclasses.replace(study.preset, fer=dataclasses.replace(fer, branch_epochs=2)),
                        tmp_path / "data", tmp_path / "results", affectnet_root=root)
    assert fer_stage._training_changes(load_meta(ckpt)["train_config"], longer) == {"branch_epochs": (1, 2)}
    assert not fer_stage._reusable(longer, "ESR") and fer_stage._reusable(study, "ESR")


def test_cli_forge_affectnet(mini_affectnet, shared, tmp_path, capsys):
    import json

    from emdlib import cli

    args = ["--ckplus", str(shared / "data" / "ckplus48"), "--neutral", str(shared / "data" / "london-faces" / "neutral")]
    assert cli.main(["forge-affectnet", str(tmp_path / "mini"), *args, "--train", "1", "--val", "1"]) == 0
    assert json.loads(capsys.readouterr().out) == {"train": {c: 1 for c in EXPRESSIONS},
                                                   "val": {c: 1 for c in EXPRESSIONS}}
    assert cli.main(["forge-affectnet", str(mini_affectnet[0]), *args]) == 2  # exists and is not empty
    assert cli.main(["forge-affectnet", str(tmp_path / "other"), "--ckplus", str(tmp_path / "nope"),
                     "--neutral", str(tmp_path)]) == 2
    assert not (tmp_path / "other").exists()
