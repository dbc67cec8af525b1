"""``emd check`` (issue 13, deliverable 1): a preflight that names every missing or malformed input of a study.

A miniature FF++ in the official layout (the synth world: originals, Deepfakes / Face2Face / NeuralTextures at c23
and c40, masks, split JSON), a miniature AffectNet in the official CSV layout, the ten ESR-9 files and ImageNet
weights files are written once per module; each test breaks a copy on purpose and checks that the finding names it.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from emdlib import check
from emdlib.check import ERROR, WARNING, Finding, check_affectnet, check_esr_weights, check_imagenet, check_study
from emdlib.data.expressions import AFFECTNET_COLUMNS
from emdlib.data.ffpp import FFPP, split_file
from emdlib.presets import PRESETS, DataConfig, EMDConfig
from emdlib.study import Study

ENCODER = "xception41"  # the smallest aligned Xception: the ImageNet check loads a real file into it


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """Complete inputs: ``ffpp`` (synth world, 1/1/1 pairs), ``esr`` (ESR-9 files), ``imagenet`` (a folder with
    the encoder's and XceptionNet's weights), ``affectnet`` (eight classes, official CSV columns)."""
    import timm
    from safetensors.torch import save_file

    from emdlib.data.synth import build_synth_world
    from emdlib.models.esr import write_official_esr
    from emdlib.registry import build_model

    base = tmp_path_factory.mktemp("check")
    build_synth_world(base / "ffpp", DataConfig(pairs=(1, 1, 1), frames_per_clip=3, frame_size=48), seed=0)
    write_official_esr(build_model("esr", num_branches=9), base / "esr")
    for name in check.imagenet_models(EMDConfig(encoder=ENCODER)):
        state = {k: v.contiguous() for k, v in timm.create_model(name, pretrained=False).state_dict().items()}
        (base / "imagenet").mkdir(exist_ok=True)
        save_file(state, str(base / "imagenet" / f"{name}.safetensors"))
    write_affectnet(base / "affectnet")
    return {k: base / k for k in ("ffpp", "esr", "imagenet", "affectnet")}


def write_affectnet(root: Path) -> None:
    """``Manually_Annotated_file_lists/{training,validation}.csv`` with AffectNet's columns: one 32-px image per
    class (0..7) under ``Manually_Annotated_Images/<sub>/``, plus a row of code 9 (Uncertain: dropped by the reader,
    not a problem)."""
    rng = np.random.default_rng(0)
    (root / "Manually_Annotated_file_lists").mkdir(parents=True)
    for csv in ("training.csv", "validation.csv"):
        rows = [",".join(AFFECTNET_COLUMNS)]
        for code in [*range(8), 9]:
            rel = f"{code}/{csv[:5]}_{code}.png"
            path = root / "Manually_Annotated_Images" / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(path), rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
            rows.append(f'{rel},0,0,32,32,"1.0;2.0",{code},0.1,-0.2')
        (root / "Manually_Annotated_file_lists" / csv).write_text("\n".join(rows) + "\n")


def paper_study(tmp: Path, ffpp: Path, **overrides) -> Study:
    """The ``paper`` preset at the miniature world's size (1/1/1 pairs) with ``ENCODER`` as EMD's encoder; without
    ``imagenet_weights``, from random weights (the FF++ tests leave the weights checks out: they take seconds)."""
    paper = PRESETS["paper"]
    emd = dataclasses.replace(paper.emd, encoder=ENCODER, pretrained="imagenet_weights" in overrides)
    preset = dataclasses.replace(paper, data=dataclasses.replace(paper.data, pairs=(1, 1, 1)), emd=emd)
    return Study.open(preset, tmp / "data", tmp / "results", ffpp_root=ffpp, **overrides)


@pytest.fixture
def ffpp(inputs, tmp_path) -> Path:
    """A copy of the miniature FF++ to break."""
    return Path(shutil.copytree(inputs["ffpp"], tmp_path / "ffpp"))


def problems(findings: list[Finding], severity: str = ERROR) -> list[str]:
    return [f.problem for f in findings if f.severity == severity]


# ------------------------------------------------------------------------------------------------------ complete
def test_complete_inputs_report_nothing(inputs, tmp_path):
    study = paper_study(tmp_path, inputs["ffpp"], esr_weights=inputs["esr"], imagenet_weights=inputs["imagenet"],
                        affectnet_root=inputs["affectnet"])
    assert check_study(study) == []
    esr_only = check.check_fer_data(paper_study(tmp_path, inputs["ffpp"], esr_weights=inputs["esr"]))
    assert problems(esr_only, WARNING) == ["no AffectNet root: SimFER (Table V) would be trained on the synthetic "
                                           "expression set, not on AffectNet as in the paper"]
    assert check.format_findings([]) == "no problems found"


# -------------------------------------------------------------------------------------------------------- FF++
def test_each_missing_or_broken_video_mask_and_id_is_named(inputs, ffpp, tmp_path):
    reader = FFPP(ffpp)
    c40_original = reader.video("original", "c40", "000")
    c40_original.unlink()
    reader.mask("Face2Face", "002_003").unlink()
    empty = reader.video("NeuralTextures", "c23", "004_005")
    empty.write_bytes(b"")
    first_df = reader.videos("train", "Deepfakes", "c23")[0][1]  # the one the check decodes
    first_df.write_bytes(b"this is no video " * 64)
    test_json = split_file(ffpp / "splits", "test")
    test_json.write_text(json.dumps(json.loads(test_json.read_text()) + [["900", "901"]]))

    findings = check_study(paper_study(tmp_path, ffpp))
    errs = problems(findings)
    assert "c40: original videos: 3 of 8 missing (train 1, test 2; first: 000, 900, 901)" in errs
    assert "Face2Face masks: 3 of 8 missing (val 1, test 2; first: 002_003, 900_901, 901_900)" in errs
    assert f"c23: NeuralTextures videos: 1 of 8 cannot be read: empty file (0 bytes) (first: {empty})" in errs
    assert "2 id(s) of the split files have no video at all in the FF++ root (first: 900 (test), 901 (test))" in errs
    assert any(p.startswith(f"c23 Deepfakes videos: {first_df}: not a video") for p in errs), errs
    # the new ids also lack their originals, fakes and masks everywhere, counted per folder
    assert "c23: original videos: 2 of 8 missing (test 2; first: 900, 901)" in errs
    assert "Deepfakes masks: 2 of 8 missing (test 2; first: 900_901, 901_900)" in errs
    missing_c40 = next(f for f in findings if f.problem.startswith("c40: original videos"))
    assert missing_c40.path == c40_original.parent
    assert "-d original -c c40 -t videos" in missing_c40.fix
    assert problems(findings, WARNING) == [
        "the split files hold 1/1/2 train/val/test pairs; the preset expects 1/1/1",
        "no AffectNet root: ESR and SimFER would be trained on the synthetic expression set, not on AffectNet as in "
        "the paper"]


def test_a_missing_compression_folder_is_one_finding(inputs, ffpp, tmp_path):
    shutil.rmtree(ffpp / "manipulated_sequences" / "Face2Face" / "c40")
    findings = check_study(paper_study(tmp_path, ffpp))
    assert problems(findings) == ["c40: Face2Face videos: folder missing (all 6 expected)",
                                  "cell Face2Face c40 cannot train and be evaluated: usable videos (train: 2 real, "
                                  "0 fake; val: 2 real, 0 fake; test: 2 real, 0 fake) — a fake needs its video, its "
                                  "mask and its original"]  # which of the gaps stops a cell, and where
    assert findings[0].path == ffpp / "manipulated_sequences" / "Face2Face" / "c40" / "videos"
    assert "--set emd.cells" in findings[1].fix


@pytest.mark.parametrize("content, message", [
    ('{"train": []}', "val.json: expected a JSON list of [id, id] pairs, got dict"),
    ('[["2", "003"]]', "val.json: entry 0 ['2', '003'] is not a pair of 3-digit id strings like ['071', '054']"),
    ('[["002", "003"', "val.json"),
])
def test_a_malformed_split_file_is_named_and_stops_the_video_checks(inputs, ffpp, tmp_path, content, message):
    (ffpp / "splits" / "val.json").write_text(content)
    findings = check.errors(check_study(paper_study(tmp_path, ffpp)))
    assert len(findings) == 1 and findings[0].topic == "splits"
    assert message in findings[0].problem
    assert "-p splits_dir" in findings[0].fix


def test_the_paper_split_sizes_and_a_missing_root(inputs, tmp_path):
    study = Study.open("paper", tmp_path / "data", tmp_path / "results", ffpp_root=inputs["ffpp"],
                       esr_weights=inputs["esr"], imagenet_weights=inputs["imagenet"])
    found, _ = check.check_ffpp(study.paths.world, study.paths.splits, ("Deepfakes",), ("c23",),
                                expected_pairs=study.preset.data.pairs)
    assert problems(found, WARNING) == ["the split files hold 1/1/1 train/val/test pairs; the preset expects "
                                        "360/70/70"]
    found, _ = check.check_ffpp(tmp_path / "nowhere", inputs["ffpp"] / "splits", ("Deepfakes",), ("c23",))
    assert problems(found) == [f"{tmp_path / 'nowhere'}: FaceForensics++ root folder not found"]
    photos = tmp_path / "photos"  # a folder that exists but is not FF++: one finding, not one per video folder
    (photos / "neutral").mkdir(parents=True)
    found, splits = check.check_ffpp(photos, inputs["ffpp"] / "splits", ("Deepfakes",), ("c23",))
    assert problems(found) == [f"{photos}: not a FaceForensics++ root (it holds neither original_sequences/ nor "
                               "manipulated_sequences/)"] and splits is not None
    found, _ = check.check_ffpp(photos, photos / "splits", ("Deepfakes",), ("c23",))  # and without split files:
    assert [f.topic for f in found if f.severity == ERROR] == ["ffpp", "splits"]  # the root is named first


# ---------------------------------------------------------------------------------------------------- AffectNet
def test_affectnet_missing_column_and_missing_image_are_named(inputs, tmp_path):
    root = Path(shutil.copytree(inputs["affectnet"], tmp_path / "affectnet"))
    lists = root / "Manually_Annotated_file_lists"
    training = lists / "training.csv"
    lines = training.read_text().splitlines()
    drop = lines[0].split(",").index("expression")
    training.write_text("\n".join(",".join(c for i, c in enumerate(line.split(",")) if i != drop) for line in lines))
    gone = root / "Manually_Annotated_Images" / "3" / "valid_3.png"
    gone.unlink()
    findings = check_affectnet(root)
    assert [f.severity for f in findings] == [ERROR, WARNING]
    assert findings[0].problem.startswith(f"{training}: missing AffectNet columns ['expression']")
    assert findings[1].problem == (f"{lists / 'validation.csv'}: 1 of 8 images missing (first: {gone}); their "
                                   "rows would be dropped")


def test_affectnet_without_images_or_a_csv_is_an_error(inputs, tmp_path):
    root = Path(shutil.copytree(inputs["affectnet"], tmp_path / "affectnet"))
    images = root / "Manually_Annotated_Images"
    for sub in images.iterdir():  # the folder is there, its images are not
        shutil.rmtree(sub)
    findings = check_affectnet(root)
    assert [f.severity for f in findings] == [ERROR, ERROR]
    assert findings[0].problem.startswith(f"{root / 'Manually_Annotated_file_lists' / 'training.csv'}: none of its 8 "
                                          f"images is under {images} (first: ")
    shutil.rmtree(images)
    (root / "Manually_Annotated_file_lists" / "validation.csv").unlink()
    findings = check_affectnet(root)
    assert len(findings) == 1
    assert findings[0].problem == (f"{root}: AffectNet validation.csv not found (looked for "
                                   f"{root / 'Manually_Annotated_file_lists' / 'validation.csv'} and "
                                   f"{root / 'validation.csv'})")


# -------------------------------------------------------------------------------------------------- ESR, ImageNet
def test_esr_folder_without_a_branch_names_it(inputs, tmp_path):
    folder = tmp_path / "esr9"
    folder.mkdir()
    for f in inputs["esr"].iterdir():
        if f.name != "Net-Branch_3.pt":
            (folder / f.name).symlink_to(f)
    findings = check_esr_weights(folder)
    assert len(findings) == 1 and findings[0].severity == ERROR and findings[0].topic == "esr"
    assert findings[0].problem.startswith(f"{folder}: official ESR-9 file(s) missing: Net-Branch_3.pt (the folder")


def test_imagenet_file_that_is_not_a_checkpoint_names_it(tmp_path):
    bad = tmp_path / "weights.pth"
    bad.write_text("not a checkpoint\n")
    findings = check_imagenet(EMDConfig(encoder=ENCODER, pretrained=str(bad)))
    assert [f.severity for f in findings] == [ERROR, ERROR]  # EMD's encoder and XceptionNet both start from it
    assert findings[0].problem.startswith(f"{bad}: cannot be loaded with torch.load(weights_only=True)")
    assert "-p imagenet_weights" in findings[0].fix


def test_imagenet_file_of_another_network_is_an_error(inputs):
    other = inputs["imagenet"] / "legacy_xception.safetensors"  # XceptionNet's weights given for EMD's encoder too
    findings = check_imagenet(EMDConfig(encoder=ENCODER, pretrained=str(other)))
    assert len(findings) == 1
    assert findings[0].problem.startswith(f"{other}: does not hold ImageNet weights for timm model '{ENCODER}'")


def test_timm_weights_not_cached_is_a_warning_saying_how_to_give_a_file(monkeypatch):
    monkeypatch.setattr(check, "timm_weights_cached", lambda name: name == "legacy_xception")
    findings = check_imagenet(EMDConfig(encoder="xception65", pretrained=True))
    assert len(findings) == 1 and findings[0].severity == WARNING
    assert findings[0].problem == ("ImageNet weights for timm model 'xception65' are not in the local cache: the run "
                                   "downloads them (needs the network)")
    assert "`emd reproduce -p imagenet_weights /path/to/xception65.safetensors`" in findings[0].fix
    assert check_imagenet(EMDConfig(pretrained=False)) == []


# --------------------------------------------------------------------------------------------------------- disk
def test_cache_estimate_and_disk_warning(tmp_path, monkeypatch):
    paper = PRESETS["paper"]
    raw = dataclasses.replace(paper, prepare=dataclasses.replace(paper.prepare, cache_format="npy"))
    one_pair = {s: [("000", "001")] for s in ("train", "val", "test")}
    # per compression: 2 originals × 3 bytes + 3 methods × 2 fakes × (3 + 1 mask) bytes = 30 bytes per pixel-frame
    # of 299² px; train 200 frames, val and test 10; two compressions
    assert check.cache_bytes(raw, one_pair) == 30 * 299 * 299 * (200 + 10 + 10) * 2 == 1_180_093_200
    # the paper preset's JPEG cache: 2 × 0.31 + 6 × (0.31 + 0.02) = 2.6 bytes per pixel-frame
    assert check.cache_bytes(paper, one_pair) == round(2.6 * 299 * 299 * (200 + 10 + 10) * 2)
    monkeypatch.setattr(check.shutil, "disk_usage", lambda p: SimpleNamespace(free=5 * 10**8))
    findings = check.check_disk(raw, tmp_path / "cache", one_pair)
    assert problems(findings, WARNING) == ["the face cache needs up to 1.2 GB (200/10 train/eval frames per video, "
                                           "299-px crops, npy cache); 0.5 GB free"]
    assert findings[0].path == tmp_path
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "summary.json").write_text("{}")  # prepare finished: nothing more is needed
    assert check.check_disk(raw, tmp_path / "cache", one_pair) == []


# ---------------------------------------------------------------------------------------------------------- CLI
def test_cli_exit_status_and_relative_paths(inputs, ffpp, tmp_path, monkeypatch, capsys):
    from emdlib.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(check, "timm_weights_cached", lambda name: False)
    monkeypatch.setattr(check.shutil, "disk_usage", lambda p: SimpleNamespace(free=10**12))
    args = ["check", "--preset", "paper", "--data-root", "data", "--results", "results", "-p", "ffpp_root", "ffpp",
            "-p", "esr_weights", str(inputs["esr"]), "-p", "affectnet_root", "affectnet"]
    shutil.copytree(inputs["affectnet"], tmp_path / "affectnet")
    assert main(args) == 0  # warnings only: 1/1/1 pairs, ImageNet weights not cached
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"emd check --preset paper: FF++ {ffpp}, splits {ffpp / 'splits'}"
    assert out.splitlines()[-1] == "0 errors, 3 warnings"
    FFPP(ffpp).mask("Deepfakes", "000_001").unlink()
    assert main(args) == 1
    out = capsys.readouterr().out
    assert "ERROR   [ffpp] Deepfakes masks: 1 of 6 missing (train 1; first: 000_001)" in out
    assert out.splitlines()[-1] == "1 error, 3 warnings"
    (tmp_path / "affectnet" / "Manually_Annotated_Images" / "0" / "valid_0.png").unlink()
    assert main(args) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == "1 error, 4 warnings" and any(
        line.startswith(f"WARNING [affectnet] {tmp_path / 'affectnet'}") and "1 of 8 images missing" in line
        for line in lines)  # the relative -p affectnet_root was taken in the working directory
    assert main(args + ["--set", 'data.methods=["Face2Face", "NeuralTextures"]']) == 0  # Deepfakes not checked
    assert "Deepfakes" not in capsys.readouterr().out
    assert main(args + ["--set", "data.no_such_setting=1"]) == 2
    assert main(args + ["-p", "no_such_parameter", "1"]) == 2
    assert main(args + ["-p", "ffpp_root", "other"]) == 2  # given twice
