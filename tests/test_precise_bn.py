"""BatchNorm population statistics (emdlib.train.recompute_bn_statistics; Ioffe & Szegedy 2015, Algorithm 2) and the
``emd.baseline_precise_bn`` preset setting: hand-computed statistics, a frozen stream left alone, training unchanged,
the setting reaching the baselines only, and EMD runs staying reusable when only a baseline setting changes."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import torch.nn as nn

from emdlib.models.detector import DetectorNet, DetectorOutput
from emdlib.presets import get_preset
from emdlib.recipes import recipe_for
from emdlib.study import experiments
from emdlib.train import TrainConfig, fit, recompute_bn_statistics

torch.set_num_threads(1)


class Frozen(nn.Module):
    """A stand-in FER stream: kept in eval mode by its owner, as EMD and MultiTask+EnsFER keep theirs."""

    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm1d(2)

    def forward(self, x):
        return self.bn(x)


class Toy(DetectorNet):
    """x (N, 2) → BN → linear (N, 2); the frozen stream runs beside it."""

    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm1d(2, momentum=0.1)
        self.fc = nn.Linear(2, 2)
        self.fer = Frozen()
        self.fer.requires_grad_(False)

    def train(self, mode: bool = True) -> "Toy":
        super().train(mode)
        self.fer.eval()
        return self

    def forward(self, image, fer_image=None):
        self.fer(image)
        return DetectorOutput(logits=self.fc(self.bn(image)))


def batches(values: list[list[list[float]]]) -> list[dict]:
    return [{"image": torch.tensor(b), "label": torch.zeros(len(b), dtype=torch.long)} for b in values]


def test_population_statistics_are_the_mean_of_minibatch_statistics() -> None:
    model = Toy()
    model.bn.running_mean.fill_(100.0)  # stale running averages, as after a short run
    model.bn.running_var.fill_(50.0)
    model.fer.bn.running_mean.fill_(7.0)
    # batch 1: feature 0 = 1, 3 (mean 2, unbiased var 2); batch 2: feature 0 = 4, 6, 8 (mean 6, var 4)
    data = batches([[[1.0, 0.0], [3.0, 2.0]], [[4.0, 1.0], [6.0, 1.0], [8.0, 1.0]]])
    model.eval()
    assert recompute_bn_statistics(model, data, torch.device("cpu")) == 1  # the frozen stream's BN is not counted
    # Algorithm 2: E[x] = mean of the batch means, Var[x] = mean of the unbiased batch variances (per batch, not per image)
    assert model.bn.running_mean.tolist() == pytest.approx([(2 + 6) / 2, (1 + 1) / 2])
    assert model.bn.running_var.tolist() == pytest.approx([(2 + 4) / 2, (2 + 0) / 2])
    assert model.bn.momentum == 0.1 and not model.training  # restored
    assert model.fer.bn.running_mean.tolist() == [7.0, 7.0]  # the frozen stream keeps its own statistics
    assert int(model.bn.num_batches_tracked) == 2


def test_max_batches_caps_the_batches_read_and_a_bn_free_network_is_left_alone() -> None:
    model = Toy()
    data = batches([[[1.0, 0.0], [3.0, 0.0]], [[101.0, 0.0], [103.0, 0.0]]])
    recompute_bn_statistics(model, data, torch.device("cpu"), max_batches=1)
    assert model.bn.running_mean[0].item() == pytest.approx(2.0)
    plain = nn.Sequential(nn.Linear(2, 2))

    class NoBN(DetectorNet):
        def __init__(self):
            super().__init__()
            self.net = plain

        def forward(self, image, fer_image=None):
            return DetectorOutput(logits=self.net(image))

    before = [p.clone() for p in plain.parameters()]
    assert recompute_bn_statistics(NoBN(), data, torch.device("cpu")) == 0
    assert all(torch.equal(a, b) for a, b in zip(before, plain.parameters()))


def _toy_items(n: int = 12) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 2, generator=g) * 3 + 5
    y = (x[:, 0] > 5).long()
    return [{"image": x[i], "label": y[i]} for i in range(n)]


def test_training_is_unchanged_and_only_the_running_statistics_differ(tmp_path) -> None:
    items = _toy_items()
    runs = {}
    for precise in (False, True):
        torch.manual_seed(0)
        model = Toy()
        cfg = TrainConfig(warmup_epochs=0, epochs=2, batch_size=4, lr=1e-2, precise_bn=precise)
        summary = fit(model, items, items, tmp_path / str(precise), cfg, resume=False)
        runs[precise] = (model, summary)
    (plain, s0), (precise, s1) = runs[False], runs[True]
    # training-mode BatchNorm never reads running statistics: the same losses and weights either way
    assert [h["train_loss"] for h in s0["history"]] == [h["train_loss"] for h in s1["history"]]
    assert torch.equal(plain.fc.weight, precise.fc.weight)
    # population statistics of the training split under the final weights (3 batches of 4, no shuffle)
    x = torch.stack([it["image"] for it in items])
    assert precise.bn.running_mean.tolist() == pytest.approx(x.mean(0).tolist(), abs=1e-5)
    assert not torch.allclose(plain.bn.running_mean, precise.bn.running_mean)


def test_the_setting_reaches_the_baselines_only() -> None:
    cpu, paper = get_preset("cpu"), get_preset("paper")
    assert cpu.emd.baseline_precise_bn and not paper.emd.baseline_precise_bn
    assert experiments.train_config(experiments.SYSTEMS["XceptionNet"], cpu).precise_bn
    assert not experiments.train_config(experiments.SYSTEMS["XceptionNet"], paper).precise_bn
    assert not experiments.train_config(experiments.SYSTEMS["EMD"], cpu).precise_bn
    assert not experiments.train_config(experiments.SYSTEMS["XceptionNet (seg)"], cpu).precise_bn


def recipe(kind: str) -> dict:
    return json.loads(json.dumps(recipe_for(kind).summary()))


def test_an_emd_run_stays_reusable_when_only_a_baseline_setting_changes(tmp_path) -> None:
    cpu = get_preset("cpu")
    ckpt = tmp_path / "best.safetensors"
    ckpt.write_bytes(b"weights")
    before = json.loads(json.dumps(cpu.to_dict()))
    del before["emd"]["baseline_precise_bn"]  # a record made before the setting existed
    changed = dataclasses.replace(cpu, emd=dataclasses.replace(cpu.emd, baseline_bn_momentum=0.5))
    for name in ("EMD", "XceptionNet (seg)"):
        record = {"system": name, "config": {"preset": before}, "checkpoint": str(ckpt), "recipe": recipe("emd")}
        assert experiments.why_not_reusable(record, cpu) is None, name
        assert experiments.why_not_reusable(record, changed) is None, name
    record = {"system": "XceptionNet", "config": {"preset": before}, "checkpoint": str(ckpt),
              "recipe": recipe("xception")}
    assert "another preset" in experiments.why_not_reusable(record, cpu)  # a baseline trains again
    epochs = dataclasses.replace(cpu, emd=dataclasses.replace(cpu.emd, epochs=2))
    assert "another preset" in experiments.why_not_reusable(
        {"system": "EMD", "config": {"preset": cpu.to_dict()}, "checkpoint": str(ckpt), "recipe": recipe("emd")},
        epochs)


def test_sync_bn_is_a_preset_setting_every_system_reads() -> None:
    cpu = get_preset("cpu")
    assert not cpu.emd.sync_bn
    on = dataclasses.replace(cpu, emd=dataclasses.replace(cpu.emd, sync_bn=True))
    for name in ("EMD", "XceptionNet", "MultiTask"):
        assert experiments.train_config(experiments.SYSTEMS[name], on).sync_bn, name
    recorded = json.loads(json.dumps(cpu.to_dict()))
    del recorded["emd"]["sync_bn"]  # a record from before the setting: read as made without SyncBatchNorm
    assert experiments._same_protocol(recorded, cpu.to_dict())
    assert not experiments._same_protocol(recorded, on.to_dict())


def test_cudnn_autotuning_is_a_preset_setting() -> None:
    paper, cpu = get_preset("paper"), get_preset("cpu")
    assert paper.emd.cudnn_benchmark and not cpu.emd.cudnn_benchmark
    assert experiments.train_config(experiments.SYSTEMS["EMD"], paper).cudnn_benchmark
    assert experiments.train_config(experiments.SYSTEMS["MesoNet"], paper).cudnn_benchmark
    recorded = json.loads(json.dumps(cpu.to_dict()))
    del recorded["emd"]["cudnn_benchmark"]  # the committed cpu records predate the setting: still the same protocol
    assert experiments._same_protocol(recorded, cpu.to_dict())
