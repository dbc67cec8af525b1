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
