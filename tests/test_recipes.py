"""emdlib.recipes (issue 13, deliverable 3): every system has a cited recipe; a preset scales epochs only; the loop
builds the recipe's optimiser; EMD's defaults stay §IV-B."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from emdlib import recipes
from emdlib.presets import EMDConfig, get_preset
from emdlib.recipes import RECIPES, STATUSES, Cited, recipe_for, recipes_markdown, scale_epochs
from emdlib.study import experiments
from emdlib.train import TrainConfig, make_optimizer


def test_every_system_has_a_recipe() -> None:
    kinds = {s.kind for s in experiments.SYSTEMS.values()}
    missing = kinds - set(RECIPES)
    assert not missing, f"systems without a training recipe: {sorted(missing)}"
    assert set(RECIPES) == kinds  # and no recipe for a kind that is not a system
    with pytest.raises(KeyError, match="no training recipe for system kind 'resnet'"):
        recipe_for("resnet")


def test_every_value_is_cited_with_a_status() -> None:
    for kind, r in RECIPES.items():
        assert r.kind == kind
        cited = r.cited()
        assert {"optimizer", "augmentation", "input_size", "loss", "model_selection"} <= set(cited), kind
        for name, c in cited.items():
            assert isinstance(c, Cited), (kind, name)
            assert c.status in STATUSES and c.source.strip(), (kind, name)
            assert c.status != "inferred" or c.reason.strip(), (kind, name)
        if r.optimizer.value in ("adam", "sgd"):
            assert {"lr", "batch_size", "warmup_epochs", "epochs", "weight_decay"} <= set(cited), kind
            assert ("betas" in cited and "eps" in cited) if r.optimizer.value == "adam" else "momentum" in cited


def test_a_value_without_provenance_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown status 'recalled'"):
        Cited(1e-3, "recalled", "somewhere")
    with pytest.raises(ValueError, match="has no reason"):
        Cited(1e-3, "inferred", "FF++ appendix")
    with pytest.raises(ValueError, match="has no source"):
        Cited(1e-3, "paper", " ")
    with pytest.raises(ValueError, match="needs \\['lr'\\]"):
        dataclasses.replace(RECIPES["mesonet"], lr=None)
    with pytest.raises(ValueError, match="unknown augmentation 'rot90'"):
        dataclasses.replace(RECIPES["mesonet"], augmentation=Cited("rot90", "paper", "x"))


def test_emd_recipe_is_section_iv_b_and_the_paper_preset_and_train_defaults_match_it() -> None:
    emd = RECIPES["emd"]
    assert (emd.optimizer.value, emd.lr.value, emd.betas.value, emd.eps.value) == ("adam", 1e-3, (0.9, 0.999), 1e-8)
    assert (emd.batch_size.value, emd.warmup_epochs.value, emd.epochs.value) == (16, 3, 20)
    assert all(emd.cited()[f].status == "paper" for f in ("optimizer", "lr", "betas", "eps", "batch_size",
                                                           "warmup_epochs", "epochs", "loss", "model_selection"))
    paper = get_preset("paper").emd
    assert (paper.lr, paper.batch_size, paper.warmup_epochs, paper.epochs) == (1e-3, 16, 3, 20)
    default = TrainConfig()
    assert (default.optimizer, default.lr, default.betas, default.eps, default.weight_decay) == \
        ("adam", 1e-3, (0.9, 0.999), 1e-8, 0.0)
    assert (default.batch_size, default.warmup_epochs, default.epochs) == (16, 3, 20)


def test_recipes_read_from_their_sources() -> None:
    """Spot checks against the official code (reference-facts §B.5, §D): a value edited by mistake fails here."""
    mt = RECIPES["multitask"]
    assert (mt.lr.value, mt.eps.value, mt.weight_decay.value, mt.batch_size.value, mt.epochs.value,
            mt.input_size.value, mt.augmentation.value) == (1e-3, 1e-7, 5e-4, 64, 100, 256, "none")
    xc = RECIPES["xception"]
    assert (xc.lr.value, xc.batch_size.value, xc.warmup_epochs.value, xc.epochs.value) == (2e-4, 32, 3, 15)
    assert (xc.augmentation.status, xc.input_size.value) == ("official code", 299)
    assert RECIPES["mesonet"].loss.value.startswith("mean squared error")
    assert (RECIPES["rahmouni"].lr.value, RECIPES["rahmouni"].batch_size.value) == (1e-4, 50)
    assert RECIPES["steg_features_svm"].svm_c.value == 1.0 and RECIPES["steg_features_svm"].epochs is None


def test_scaling_rule_on_hand_computed_cases() -> None:
    paper, cpu, tiny = (get_preset(n).emd for n in ("paper", "cpu", "tiny"))
    # the paper preset (3 + 20, EMD's own budget) leaves every recipe as it is
    for r in RECIPES.values():
        if r.epochs is not None:
            assert scale_epochs(r, paper) == (r.warmup_epochs.value, r.epochs.value), r.kind
    # cpu: warm-up × 1/3, full × 6/20, halves rounded up, at least 1 where the recipe has the phase
    assert scale_epochs(RECIPES["emd"], cpu) == (1, 6)
    assert scale_epochs(RECIPES["xception"], cpu) == (1, 5)  # 3·1/3 = 1; 15·6/20 = 4.5 → 5
    assert scale_epochs(RECIPES["multitask"], cpu) == (0, 30)  # no warm-up stays none; 100·6/20 = 30
    assert scale_epochs(RECIPES["mesonet"], cpu) == (0, 6)
    # tiny: 1 + 1 → every phase the recipe has gets at least one epoch
    assert scale_epochs(RECIPES["xception"], tiny) == (1, 1)  # 15/20 = 0.75 → 1
    assert scale_epochs(RECIPES["multitask"], tiny) == (0, 5)
    assert scale_epochs(RECIPES["cozzolino"], tiny) == (1, 1)
    # a preset without a warm-up phase removes it everywhere; a bigger budget scales up
    assert scale_epochs(RECIPES["xception"], EMDConfig(warmup_epochs=0, epochs=40)) == (0, 30)
    assert scale_epochs(RECIPES["emd"], EMDConfig(warmup_epochs=2, epochs=7)) == (2, 7)  # EMD: the preset's own
    with pytest.raises(ValueError, match="steg_features_svm has no epochs"):
        scale_epochs(RECIPES["steg_features_svm"], cpu)


def test_train_config_is_the_recipe_scaled_and_emd_keeps_the_preset() -> None:
    cpu, tiny = get_preset("cpu"), get_preset("tiny")
    emd = experiments.train_config(experiments.SYSTEMS["EMD"], tiny, seed=3)
    assert emd == TrainConfig.from_preset(tiny.emd, seed=3)  # unchanged: EMD's runs stay bit-identical
    xc = experiments.train_config(experiments.SYSTEMS["XceptionNet"], cpu, seed=1)
    assert (xc.optimizer, xc.lr, xc.batch_size, xc.warmup_epochs, xc.epochs, xc.seed) == ("adam", 2e-4, 32, 1, 5, 1)
    assert xc.image_size == cpu.emd.image_size and xc.max_batches == cpu.emd.max_batches
    mt = experiments.train_config(experiments.SYSTEMS["MultiTask"], tiny)
    assert (mt.lr, mt.eps, mt.weight_decay, mt.batch_size, mt.epochs) == (1e-3, 1e-7, 5e-4, 64, 5)
    assert mt.max_batches == 2  # the smoke-test cap still applies
    with pytest.raises(ValueError, match="steg_features_svm has no epochs"):
        experiments.train_config(experiments.SYSTEMS["Steg.Features+SVM"], cpu)
    with pytest.raises(ValueError, match="not trained by the gradient loop"):
        RECIPES["steg_features_svm"].optimizer_settings()


def test_input_sizes_come_from_the_recipe_table() -> None:
    paper, cpu = get_preset("paper"), get_preset("cpu")
    for name, system in experiments.SYSTEMS.items():
        r = recipe_for(system.kind)
        kwargs = experiments.baseline_kwargs(system, paper) if system.kind != "emd" else {}
        if r.sized_input:
            assert kwargs["input_size"] == r.input_size.value, name  # 299-px faces: the native size
            assert experiments.baseline_kwargs(system, cpu)["input_size"] == min(r.input_size.value, 64), name
        else:
            assert "input_size" not in kwargs, name


def test_recipe_summary_is_json_and_tells_a_changed_recipe(tmp_path) -> None:
    summary = RECIPES["xception"].summary()
    assert json.loads(json.dumps(summary))["values"]["lr"] == 2e-4 and summary["id"] == "xception"
    cpu = get_preset("cpu")
    record = {"config": {"preset": cpu.to_dict(), "system": "XceptionNet"}, "checkpoint": None,
              "recipe": json.loads(json.dumps(summary))}
    assert experiments.why_not_reusable(record, cpu) is None
    assert "another training recipe" in experiments.why_not_reusable({**record, "recipe": None}, cpu)
    stale = json.loads(json.dumps(RECIPES["emd"].summary()))
    assert "another training recipe" in experiments.why_not_reusable({**record, "recipe": stale}, cpu)


@pytest.mark.parametrize("name", ["adam", "sgd"])
def test_make_optimizer_builds_the_given_optimiser(name: str) -> None:
    params = [torch.nn.Parameter(torch.zeros(3))]
    opt = make_optimizer(params, name, 0.05, betas=(0.5, 0.9), eps=1e-6, momentum=0.8, weight_decay=1e-4)
    group = opt.param_groups[0]
    assert (group["lr"], group["weight_decay"]) == (0.05, 1e-4)
    if name == "adam":
        assert isinstance(opt, torch.optim.Adam) and (group["betas"], group["eps"]) == ((0.5, 0.9), 1e-6)
    else:
        assert isinstance(opt, torch.optim.SGD) and group["momentum"] == 0.8
    with pytest.raises(ValueError, match="unknown optimizer 'rmsprop'"):
        make_optimizer(params, "rmsprop")
    with pytest.raises(ValueError, match="unknown optimizer 'rmsprop'"):
        TrainConfig(optimizer="rmsprop")


def test_default_optimiser_is_emd_adam_and_steps_as_before() -> None:
    """The default TrainConfig gives exactly the optimiser fit built before recipes: Adam(1e-3, (0.9, 0.999), 1e-8)."""
    torch.manual_seed(0)
    a = torch.nn.Linear(4, 2)
    b = torch.nn.Linear(4, 2)
    b.load_state_dict(a.state_dict())
    cfg = TrainConfig()
    ours = make_optimizer(b.parameters(), cfg.optimizer, cfg.lr, betas=cfg.betas, eps=cfg.eps,
                          momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    before = torch.optim.Adam(a.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8)
    assert isinstance(ours, torch.optim.Adam)
    assert {k: v for k, v in ours.param_groups[0].items() if k != "params"} == \
        {k: v for k, v in before.param_groups[0].items() if k != "params"}
    x = torch.randn(8, 4)
    for opt, net in ((before, a), (ours, b)):
        for _ in range(3):
            opt.zero_grad()
            net(x).square().mean().backward()
            opt.step()
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)


def test_markdown_lists_every_recipe_and_every_inferred_reason() -> None:
    md = recipes_markdown()
    for kind, r in RECIPES.items():
        assert f"| `{kind}` |" in md and f"* **`{kind}`**" in md
        for c in r.cited().values():
            assert c.source in md
            assert c.reason is None or c.reason in md
    assert md.count("\n| `") == len(RECIPES)
    assert recipes.AUGMENTATIONS == ("hflip", "none")
