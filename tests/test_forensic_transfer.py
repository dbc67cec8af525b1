"""FT-res (emdlib.baselines.forensic_transfer): the residual input, the activations, the half selection and the loss
by hand, the output contract and decision, the parameter count, a tiny batch overfitted by emdlib.train, the registry
round trip and the study's recipe and system entries."""

from __future__ import annotations

import math

import pytest
import torch

from emdlib.baselines import build_baseline
from emdlib.baselines.forensic_transfer import (ForensicTransfer, activation_loss, activations,
                                                activations_to_logits, forensic_transfer_loss, residual, select_half)
from emdlib.models.detector import DetectorOutput
from emdlib.train import recompute_bn_statistics, train_step
from test_baselines import make_batch

torch.set_num_threads(1)


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# --- the residual input ------------------------------------------------------------------------------------------


def test_residual_by_hand():
    # one row 0, 3, 9, 30, 12 (every row the same, one channel): reflect-padded 3 | 0 3 9 30 12 | 30 9
    # r_h[j] = (x[j-1] - 3x[j] + 3x[j+1] - x[j+2]) / 3
    row = torch.tensor([0.0, 3.0, 9.0, 30.0, 12.0])
    x = row.view(1, 1, 1, 5).expand(1, 1, 4, 5).contiguous()
    r = residual(x)
    assert r.shape == (1, 2, 4, 5)
    expected_h = torch.tensor([(3 - 0 + 9 - 9) / 3, (0 - 9 + 27 - 30) / 3, (3 - 27 + 90 - 12) / 3,
                               (9 - 90 + 36 - 30) / 3, (30 - 36 + 90 - 9) / 3])
    torch.testing.assert_close(r[0, 0], expected_h.expand(4, 5))
    torch.testing.assert_close(r[0, 1], torch.zeros(4, 5))  # no vertical variation
    # the vertical residual is the horizontal one of the transposed image; channels are [R_h, G_h, B_h, R_v, ...]
    rgb = torch.rand(2, 3, 7, 6, generator=torch.Generator().manual_seed(0)) * 255
    r = residual(rgb)
    torch.testing.assert_close(r[:, 3:], residual(rgb.transpose(2, 3))[:, :3].transpose(2, 3))
    torch.testing.assert_close(r[:, 1:2], residual(rgb[:, 1:2])[:, :1])


def test_residual_removes_quadratic_ramps_away_from_the_borders():
    i = torch.arange(10.0)
    ramp = (0.5 * i**2 - 3 * i + 7).view(1, 1, 10, 1) + (2 * i).view(1, 1, 1, 10)  # quadratic in y, linear in x
    r = residual(ramp)
    torch.testing.assert_close(r[0, :, 1:-2, 1:-2], torch.zeros(2, 7, 7), atol=1e-4, rtol=0)
    assert r[0, 1, 0].abs().max() > 0.1  # the reflected border is not a ramp


def test_residual_errors():
    with pytest.raises(ValueError, match=r"at least 3×3 pixels .*got 2×8"):
        residual(torch.zeros(1, 3, 2, 8))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\) images, got shape \(3, 8, 8\)"):
        residual(torch.zeros(3, 8, 8))


def test_input_is_the_residual_of_the_resized_face():
    image = make_batch(2, 64)["image"]
    model = ForensicTransfer(input_size=32)
    rgb255 = torch.nn.functional.interpolate(image * 0.5 + 0.5, size=(32, 32), mode="bilinear",
                                             align_corners=False, antialias=True) * 255
    torch.testing.assert_close(model.prepare(image), residual(rgb255))
    assert ForensicTransfer(input_size=64).prepare(image).shape == (2, 6, 64, 64)
    plain = ForensicTransfer(input_size=64, residual=False)
    assert torch.equal(plain.prepare(image), image)  # plain ForensicTransfer: the shared [-1, 1] RGB


# --- activations, halves, loss ----------------------------------------------------------------------------------


def test_activations_and_half_selection_by_hand():
    latent = torch.zeros(2, 4, 1, 2)
    latent[0, :2] = torch.tensor([[[1.0, 3.0]], [[-2.0, 2.0]]])  # half 0 of image 0: mean |h| = 8/4 = 2
    latent[0, 2:] = 0.5  # half 1: 0.5
    latent[1, 2:] = torch.tensor([[[4.0, 0.0]], [[0.0, 0.0]]])  # image 1: half 0 → 0, half 1 → 1
    act = activations(latent)
    torch.testing.assert_close(act, torch.tensor([[2.0, 0.5], [0.0, 1.0]]))
    kept = select_half(latent, torch.tensor([1, 0]))
    assert torch.equal(kept[0, :2], torch.zeros(2, 1, 2)) and torch.equal(kept[0, 2:], latent[0, 2:])
    assert torch.equal(kept[1], torch.zeros(4, 1, 2))  # image 1 keeps its (empty) half 0
    with pytest.raises(ValueError, match="3 channels do not split into 2 halves"):
        activations(torch.zeros(1, 3, 2, 2))


def test_loss_by_hand():
    act = torch.tensor([[1.0, 0.0], [0.2, 0.7], [0.4, 0.4]])
    label = torch.tensor([0, 1, 0])
    # |a1 - y| + |a0 - (1 - y)|: 0 + 0; 0.3 + 0.2; 0.4 + 0.6 → mean 1.5 / 3
    assert activation_loss(act, label).item() == pytest.approx(0.5)
    target = torch.zeros(3, 2, 2, 2)
    rec = torch.full((3, 2, 2, 2), 0.25)
    rec[0] = -1.0  # |−1| on 8 of 24 elements, 0.25 on the other 16 → L_rec = (8 + 4) / 24
    loss, l_act, l_rec = forensic_transfer_loss(act, rec, target, label)
    assert (l_act.item(), l_rec.item(), loss.item()) == pytest.approx((0.5, 0.5, 1.0))
    assert forensic_transfer_loss(act, rec, target, label, gamma=3.0)[0].item() == pytest.approx(2.0)
    with pytest.raises(ValueError, match=r"reconstruction \(3, 2, 2, 2\) and input \(3, 2, 2, 1\) differ"):
        forensic_transfer_loss(act, rec, target[..., :1], label)


# --- the network -------------------------------------------------------------------------------------------------


def test_parameter_count_by_hand():
    model = ForensicTransfer()
    # convs 6→8 (440), 8→16 (1,168), 16→32 (4,640), 32→64 (18,496), 64→128 (73,856) + BN 2·(8+16+32+64+128) = 496
    assert n_params(model.encoder) == 99_096
    # convs 128→64 (73,792), 64→32 (18,464), 32→16 (4,624), 16→8 (1,160), 8→6 (438) + BN 2·(64+32+16+8) = 240
    assert n_params(model.decoder) == 98_718
    assert n_params(model) == 197_814
    assert n_params(ForensicTransfer(residual=False)) == 197_814 - 3 * 8 * 9 - 3 * 8 * 9 - 3  # 3 channels in and out


@pytest.mark.parametrize("size, input_size", [(64, 64), (64, 32)])
def test_output_contract(size, input_size):
    torch.manual_seed(0)
    model = ForensicTransfer(input_size=input_size).eval()
    image = make_batch(3, size)["image"]
    with torch.no_grad():
        out = model(image)
    assert isinstance(out, DetectorOutput) and out.mask_logits is None
    assert out.logits.shape == (3, 2)
    act = out.extras["activations"]
    assert torch.equal(out.logits, activations_to_logits(act)) and torch.equal(out.logits, act)
    assert (act >= 0).all()
    assert out.extras["latent"].shape == (3, 128, input_size // 16, input_size // 16)
    assert torch.equal(out.extras["selected"], act.argmax(1))  # the predicted half is decoded
    assert out.extras["reconstruction"].shape == out.extras["input"].shape == (3, 6, input_size, input_size)
    torch.testing.assert_close(out.prob, torch.sigmoid(act[:, 1] - act[:, 0]))
    with pytest.raises(ValueError, match="positive multiple of 16.*got 40"):
        ForensicTransfer(input_size=40)


def test_the_loss_decodes_the_true_half():
    torch.manual_seed(0)
    model = ForensicTransfer(input_size=32)
    batch = make_batch(4, 32)
    for training in (True, False):
        model.train(training)
        with torch.no_grad():
            out = model(batch["image"])  # decodes the predicted half, as evaluation does
            assert torch.equal(out.extras["selected"], out.extras["activations"].argmax(1))
            for label in (out.extras["selected"], 1 - out.extras["selected"]):  # decoded again only when they differ
                loss, parts = model.compute_loss(out, {**batch, "label": label})
                rec = model.decoder(select_half(out.extras["latent"], label))
                expected, l_act, l_rec = forensic_transfer_loss(out.extras["activations"], rec, out.extras["input"],
                                                                label)
                torch.testing.assert_close(loss, expected)
                torch.testing.assert_close(parts["loss_cls"], l_act)
                torch.testing.assert_close(parts["loss_rec"], l_rec)
    labelled = model(batch["image"], label=batch["label"])
    assert torch.equal(labelled.extras["selected"], batch["label"])


def test_overfits_a_tiny_batch():
    torch.manual_seed(0)
    model = ForensicTransfer(input_size=32)
    batch = make_batch(8, 32)
    opt = torch.optim.Adam(model.trainable_parameters(), lr=1e-3)  # the recipe's
    model.train()
    parts = [train_step(model, batch, opt) for _ in range(15)]
    assert parts[-1]["loss_cls"] < 0.25 * parts[0]["loss_cls"], [p["loss_cls"] for p in parts]
    assert parts[-1]["loss_rec"] < parts[0]["loss_rec"]
    assert recompute_bn_statistics(model, [batch], torch.device("cpu")) == 9
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(batch["image"]).logits.argmax(1), batch["label"])


# --- registry, recipe, study -------------------------------------------------------------------------------------


def test_round_trips_through_the_registry(tmp_path):
    from emdlib.registry import build_model, model_from_checkpoint, model_spec, save_detector

    torch.manual_seed(0)
    model = build_model("forensic_transfer", input_size=32)
    assert isinstance(model, ForensicTransfer) and isinstance(build_baseline("forensic_transfer", input_size=32),
                                                              ForensicTransfer)
    path = tmp_path / "ft.safetensors"
    save_detector(path, model, 32, spec=model_spec("forensic_transfer", input_size=32, residual=True))
    rebuilt, meta = model_from_checkpoint(path)
    assert meta["model"] == {"name": "forensic_transfer", "kwargs": {"input_size": 32, "residual": True}}
    image = make_batch(2, 32)["image"]
    model.eval()
    rebuilt.eval()
    with torch.no_grad():
        assert torch.equal(rebuilt(image).logits, model(image).logits)
    with pytest.raises(ValueError, match="residual"):
        model_spec("forensic_transfer", residual="yes")


def test_study_builds_it_from_the_recipe():
    from emdlib.paper import TABLE_III
    from emdlib.presets import get_preset
    from emdlib.recipes import recipe_for, scale_epochs
    from emdlib.study import experiments

    system = experiments.SYSTEMS["FT-res"]
    assert system.name in TABLE_III and system.kind == "forensic_transfer" and system.fer is None
    recipe = recipe_for(system.kind)
    assert recipe.sized_input and recipe.input_size.value == 256
    assert all(c.status == "inferred" and c.reason for c in recipe.cited().values())
    assert experiments.baseline_kwargs(system, get_preset("cpu")) == {"input_size": 64}
    assert experiments.baseline_kwargs(system, get_preset("paper")) == {"input_size": 256}
    assert experiments.initial_weights(get_preset("paper"), system) == {"source": "random"}
    assert scale_epochs(recipe, get_preset("paper").emd) == (0, 100)
    assert scale_epochs(recipe, get_preset("cpu").emd) == (0, 30)
    cfg = experiments.train_config(system, get_preset("cpu"))
    assert (cfg.optimizer, cfg.lr, cfg.batch_size, cfg.warmup_epochs, cfg.epochs) == ("adam", 1e-3, 64, 0, 30)
    assert math.isclose(cfg.eps, 1e-8) and tuple(cfg.betas) == (0.9, 0.999)
