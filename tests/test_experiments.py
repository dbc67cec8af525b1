"""emdlib.study.experiments: every paper row maps to a system we build; run ids; protocol checks on reuse; which runs
Table V and Figs. 4–7 use; the FER stream comes from its own stage."""

from __future__ import annotations

import pytest

from emdlib import paper
from emdlib.presets import DataConfig, EMDConfig, Preset, get_preset
from emdlib.study import experiments


def test_every_reproduced_paper_row_has_a_system() -> None:
    for row in paper.TABLE_II:
        assert row in experiments.SYSTEMS or row == "EMD", row
    for row in paper.TABLE_V:
        assert row in experiments.SYSTEMS, row
    assert experiments.SYSTEMS["XceptionNet (seg)"].fer is None  # Table IV's XceptionNet = EMD without FER
    assert experiments.SYSTEMS["EMD"].fer == "ESR" and experiments.SYSTEMS["XceptionNet+SimFER"].fer == "SimFER"


def test_run_names_are_safe_and_distinct() -> None:
    a = experiments.run_name("XceptionNet (seg)", "Face2Face", "c23", 0)
    b = experiments.run_name("XceptionNet+SimFER", "Face2Face", "c23", 0)
    assert a == "xceptionnet-seg__Face2Face__c23__s0" and a != b
    assert experiments.run_name("EMD", "Face2Face", "c40", 2, n_train_videos=10) == "emd__Face2Face__c40__s2__n10"
    assert "/" not in experiments.run_name("Bayar and Stamm", "Deepfakes", "c23")


def test_a_record_is_reused_only_under_the_same_preset_configuration() -> None:
    cpu, tiny = get_preset("cpu").to_dict(), get_preset("tiny").to_dict()
    import json

    stored = json.loads(json.dumps(cpu))  # what a run record holds after the JSON round trip
    assert experiments._same_protocol(stored, cpu)
    assert not experiments._same_protocol(stored, tiny)
    assert not experiments._same_protocol(None, cpu)


def test_a_record_without_its_checkpoint_is_trained_again(tmp_path) -> None:
    cpu = get_preset("cpu")
    ckpt = tmp_path / "best.safetensors"
    record = {"config": {"preset": cpu.to_dict()}, "checkpoint": str(ckpt)}
    assert "not on this machine" in experiments.why_not_reusable(record, cpu)  # e.g. a fresh clone of results/
    ckpt.write_bytes(b"weights")
    assert experiments.why_not_reusable(record, cpu) is None
    assert experiments.why_not_reusable({**record, "checkpoint": None}, cpu) is None  # the SVM keeps no checkpoint
    assert "another preset" in experiments.why_not_reusable(record, get_preset("tiny"))


def test_baselines_take_their_input_size_and_weights_from_the_preset() -> None:
    tiny, paper = get_preset("tiny"), get_preset("paper")
    multitask = experiments.SYSTEMS["MultiTask"]
    assert experiments.baseline_kwargs(multitask, tiny) == {"input_size": 64}  # 64-px faces are not upsampled
    assert experiments.baseline_kwargs(multitask, paper) == {"input_size": 256}  # the official size
    xception = experiments.SYSTEMS["XceptionNet"]
    assert experiments.baseline_kwargs(xception, paper) == {"pretrained": True}
    assert experiments.baseline_kwargs(experiments.SYSTEMS["MesoNet"], tiny) == {"input_size": 64, "bn_momentum": 0.1}
    assert experiments.baseline_kwargs(experiments.SYSTEMS["MesoNet"], paper) == {"input_size": 256}  # Keras' 0.99
    assert experiments.baseline_kwargs(experiments.SYSTEMS["Bayar and Stamm"], paper) == {"input_size": 128}
    assert experiments.baseline_kwargs(experiments.SYSTEMS["Rahmouni et al."], tiny) == {}


def test_training_size_points_increase_within_train_size():
    tiny = get_preset("tiny")
    assert experiments.training_size_points(tiny) == [2, 2 * tiny.data.pairs[0]]
    for name in ("cpu", "faces", "paper"):
        preset = get_preset(name)
        pts = experiments.training_size_points(preset)
        total = 2 * preset.data.pairs[0]
        assert pts == sorted(set(pts)) and len(pts) >= 3
        assert pts[0] >= 1 and pts[-1] == total
    assert experiments.training_size_points(get_preset("paper"))[0] == 10
    assert len(experiments.training_size_points(get_preset("cpu"), n_points=3)) == 3
    one = Preset("one", data=DataConfig(pairs=(1, 1, 1)))
    assert experiments.training_size_points(one) == [2]


def test_training_size_plan_cells():
    assert experiments.training_size_plan(get_preset("tiny"))["cells"] == [("Face2Face", "c23")]
    plan = experiments.training_size_plan(get_preset("faces"))
    assert plan["cells"] == [("Face2Face", "c23"), ("NeuralTextures", "c23")]
    assert len(plan["seeds"]) >= 3
    cpu = experiments.training_size_plan(get_preset("cpu"))  # the preset asks for one panel and three sizes
    assert cpu["cells"] == [("Face2Face", "c23")] and len(cpu["points"]) == 3


def test_paper_cells():
    assert experiments.paper_cells(get_preset("paper")) == [("Face2Face", "c23"), ("NeuralTextures", "c23")]
    assert experiments.paper_cells(get_preset("tiny")) == [("Face2Face", "c23")]
    with pytest.raises(ValueError, match="no Face2Face"):
        experiments.paper_cells(Preset("x", emd=EMDConfig(cells=(("Deepfakes", "c23"),))))


def test_a_cell_without_its_fer_stream_names_the_notebook_that_makes_it(study):
    with pytest.raises(FileNotFoundError, match="esr.safetensors.*notebook 01_fer_training"):
        experiments.build_system(study, experiments.SYSTEMS["EMD"])
    assert not any(study.paths.expressions.glob("*/*.png"))  # nothing was rendered or trained instead


def test_a_cell_without_the_face_cache_names_the_notebook_that_makes_it(study):
    with pytest.raises(FileNotFoundError, match="manifest.csv.*notebook 00_data_prep"):
        experiments.cell_datasets(study, "Face2Face", "c23")


def test_a_fer_stream_of_another_configuration_is_refused(study):
    from emdlib.registry import build_model, save_fer_stream
    from emdlib.study.fer import load_fer_stream

    save_fer_stream(study.paths.checkpoints / "esr.safetensors", build_model("esr", num_branches=3))
    with pytest.raises(ValueError, match="needs .*'num_branches': 2.*notebook 01"):
        load_fer_stream(study, "ESR")  # the tiny preset's ESR has 2 branches
    save_fer_stream(study.paths.checkpoints / "esr.safetensors", build_model("esr", num_branches=2))
    assert load_fer_stream(study, "ESR").num_branches == 2


def test_baselines_record_one_spec_built_from_the_arguments_they_were_built_with(study):
    from emdlib.registry import model_from_checkpoint, save_detector

    model, spec = experiments.build_system(study, experiments.SYSTEMS["MesoNet"])
    assert spec == {"name": "mesonet", "kwargs": {"input_size": 64, "bn_momentum": 0.1}}
    assert model.input_size == 64
    save_detector(study.paths.checkpoints / "m.safetensors", model, 64, spec=spec)
    rebuilt, _ = model_from_checkpoint(study.paths.checkpoints / "m.safetensors")
    assert rebuilt.input_size == 64


def test_figures_read_finished_runs_and_never_train(study, fake_run):
    fake_run("EMD", "Face2Face", "c23", 0.5)
    with pytest.raises(FileNotFoundError, match=r"xceptionnet-seg__Face2Face__c23__s0.*notebook 02"):
        experiments.finished_runs(study, ["EMD", "XceptionNet (seg)"], [("Face2Face", "c23")],
                                  made_by="notebook 02_emd_training")
    fake_run("XceptionNet (seg)", "Face2Face", "c23", 0.4)
    recs = experiments.finished_runs(study, ["EMD", "XceptionNet (seg)"], [("Face2Face", "c23")])
    assert [r["metrics"]["accuracy"] for r in recs] == [0.5, 0.4]
