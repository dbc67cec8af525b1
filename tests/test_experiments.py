"""The experiment registry: every paper row maps to a system we build; run ids; protocol checks on reuse."""

from __future__ import annotations

from emdlib import experiments, paper
from emdlib.presets import get_preset


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
