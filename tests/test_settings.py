"""Typed preset settings: ``emd reproduce --set KEY=VALUE`` / ``--config FILE`` (issue 13, deliverable 1)."""

from __future__ import annotations

from pathlib import Path

import pytest

from emdlib.presets import (SettingError, get_preset, override_preset, parse_set_options, parse_setting,
                            read_settings_file, setting_keys)


@pytest.mark.parametrize("key,text,expected", [
    ("emd.epochs", "1", 1), ("emd.lr", "1e-3", 1e-3), ("emd.lr", "2", 2.0), ("emd.max_batches", "null", None),
    ("emd.pretrained", "true", True), ("emd.pretrained", "2024", "2024"), ("emd.pretrained", "/w/x.pth", "/w/x.pth"),
    ("fer.esr_weights", "2024", "2024"), ("data.pairs", "[2, 1, 1]", (2, 1, 1)),
    ("emd.cells", '[["Face2Face", "c23"], ["Face2Face", "c40"]]', (("Face2Face", "c23"), ("Face2Face", "c40"))),
    ("data.world", "ffpp", "ffpp"),
])
def test_a_setting_is_typed_by_its_declaration(key: str, text: str, expected) -> None:
    value = parse_setting(key, text)
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize("key,text", [("emd.epochs", "abc"), ("emd.epochs", "1.5"), ("emd.epochs", "true"),
                                      ("data.pairs", "[1, 2]"), ("emd.cells", "[1]"), ("emd.lr", "fast")])
def test_a_value_of_the_wrong_type_is_refused_naming_key_and_type(key: str, text: str) -> None:
    with pytest.raises(SettingError, match=rf"--set {key}=.*: {key} is declared "):
        parse_setting(key, text)


def test_an_unknown_key_is_refused_by_name_with_the_nearest_keys() -> None:
    with pytest.raises(SettingError, match=r"unknown setting 'emd\.epoch'; did you mean emd\.epochs"):
        parse_set_options(["emd.epoch=1"])
    with pytest.raises(SettingError, match="unknown setting 'name'"):
        parse_set_options(["name=x"])
    with pytest.raises(SettingError, match="expected KEY=VALUE"):
        parse_set_options(["emd.epochs"])
    with pytest.raises(SettingError, match="given twice"):
        parse_set_options(["emd.epochs=1", "emd.epochs=2"])
    assert "emd.epochs" in setting_keys() and "fer.esr_weights" in setting_keys()


def test_override_preset_changes_only_the_keys_given() -> None:
    paper = get_preset("paper")
    small = override_preset(paper, {"emd.epochs": "1", "emd.batch_size": 8, "prepare.train_frames": "4"})
    assert (small.emd.epochs, small.emd.batch_size, small.prepare.train_frames) == (1, 8, 4)
    assert small.emd.encoder == paper.emd.encoder and small.fer == paper.fer and small.name == "paper"


def test_cells_follow_narrower_data_unless_given() -> None:
    paper = get_preset("paper")
    c23 = override_preset(paper, {"data.compressions": '["c23"]'})  # a copy of FF++ without c40
    assert c23.emd.cells == (("Deepfakes", "c23"), ("Face2Face", "c23"), ("NeuralTextures", "c23"))
    two = override_preset(paper, {"data.methods": '["Face2Face", "NeuralTextures"]'})
    assert {m for m, _ in two.emd.cells} == {"Face2Face", "NeuralTextures"} and len(two.emd.cells) == 4
    given = override_preset(paper, {"data.compressions": '["c23"]', "emd.cells": '[["Face2Face", "c23"]]'})
    assert given.emd.cells == (("Face2Face", "c23"),)  # given cells are kept as given
    fit = r"""\[\["Deepfakes", "c23"\], \["Face2Face", "c23"\], \["NeuralTextures", "c23"\]\]"""
    with pytest.raises(ValueError, match=r"emd.cells \[\('Face2Face', 'c40'\)\] are not in the data .*"
                                         rf"--set emd.cells='{fit}'"):
        override_preset(paper, {"data.compressions": '["c23"]', "emd.cells": '[["Face2Face", "c40"]]'})


def test_a_settings_file_nested_or_dotted(tmp_path: Path) -> None:
    f = tmp_path / "s.yaml"
    f.write_text("emd:\n  epochs: 2\n  cells: [[Face2Face, c23]]\nfer.esr_weights: 2024\n")
    flat = read_settings_file(f)
    assert flat == {"emd.epochs": 2, "emd.cells": [["Face2Face", "c23"]], "fer.esr_weights": 2024}
    preset = override_preset(get_preset("cpu"), flat)
    assert preset.emd.epochs == 2 and preset.emd.cells == (("Face2Face", "c23"),)
    assert preset.fer.esr_weights == "2024"  # an unquoted YAML number for a path stays the folder's name
    (tmp_path / "bad.yaml").write_text("emd: {epoch: 2}\n")
    with pytest.raises(SettingError, match=r"bad\.yaml: unknown setting 'emd\.epoch'"):
        read_settings_file(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(SettingError, match="expected a mapping"):
        read_settings_file(tmp_path / "list.yaml")


def test_cli_set_errors_are_usage_errors_before_anything_runs(tmp_path: Path, caplog) -> None:
    from emdlib import cli

    code = cli.main(["reproduce", "--preset", "tiny", "--data-root", str(tmp_path / "d"), "--results",
                     str(tmp_path / "r"), "--set", "emd.epoch=1"])
    assert code == 2 and "unknown setting 'emd.epoch'" in caplog.text
    assert not (tmp_path / "r").exists()


def test_settings_reach_the_run_record_configuration(tmp_path: Path) -> None:
    from emdlib.study import Study

    study = Study.open("tiny", tmp_path / "d", tmp_path / "r", settings={"emd.epochs": "3"})
    assert study.config()["emd"]["epochs"] == 3 and study.settings == {"emd.epochs": 3}
    assert Study.open(**study.parameters()) == study
