"""LAE (Du et al., CIKM 2020; EMD Table III): output contract, the losses and Grad-CAM by hand, the active-learning
selection and its hook in the training loop, overfitting a tiny batch, the registry round trip and the recipe."""

from __future__ import annotations

import math

import pytest
import torch

from emdlib.baselines.forensic_transfer import (Decoder, Encoder, ForensicTransfer, activation_loss, activations,
                                                select_half)
from emdlib.baselines.lae import (LAE, binary_entropy, choose_uncertain, gradcam_map, lae_loss, locality_loss,
                                  sample_keys, selection_epochs)
from emdlib.models.detector import DetectorNet, DetectorOutput
from emdlib.train import TrainConfig, fit, recompute_bn_statistics, train_step

torch.set_num_threads(1)


def make_items(n: int, size: int = 16, seed: int = 0) -> list[dict]:
    """``n`` dataset items alternating real/fake; a fake's mask is its centre square, a real's is empty."""
    gen = torch.Generator().manual_seed(seed)
    items = []
    for i in range(n):
        fake = i % 2
        mask = torch.zeros(1, size, size)
        if fake:
            mask[:, size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 1
        image = torch.rand(3, size, size, generator=gen) * 2 - 1
        if fake:
            image = image * 0.3 + 0.5 * mask  # a visible forgery region
        items.append({"image": image, "label": torch.tensor(fake), "mask": mask,
                      "method": "Face2Face" if fake else "original", "compression": "c23",
                      "video": f"{i:03d}_{i + 1:03d}" if fake else f"{i:03d}", "frame": i % 3})
    return items


def collate(items: list[dict]) -> dict:
    from torch.utils.data import default_collate

    return default_collate(items)


# ------------------------------------------------------------------------------------------ output contract


def test_output_contract_and_parameter_count() -> None:
    model = LAE(input_size=32).eval()
    batch = collate(make_items(4, 32))
    out = model(batch["image"])
    assert isinstance(out, DetectorOutput) and out.mask_logits is None
    assert out.logits.shape == (4, 2) and out.extras["latent"].shape == (4, 128, 2, 2)
    assert out.extras["reconstructions"].shape == (4, 2, 3, 32, 32) and out.extras["input"].shape == (4, 3, 32, 32)
    assert out.extras["reconstructions"].abs().max() <= 1  # tanh: the input's range
    torch.testing.assert_close(out.logits, activations(out.extras["latent"]))
    # FT-res's autoencoder on RGB (the paper gives no parameter count; its body could not be read), independent of
    # the input size: encoder 3·8·9 + 8·16·9 + 16·32·9 + 32·64·9 + 64·128·9 = 98,136 conv weights + 248 biases +
    # 2·248 = 496 BN; decoder 128·64·9 + 64·32·9 + 32·16·9 + 16·8·9 = 97,920 conv weights + 120 biases + 2·120 = 240
    # BN; to RGB 8·3·9 + 3 = 219
    lae = LAE()
    assert isinstance(lae.encoder, Encoder) and isinstance(lae.decoder, Decoder)
    assert sum(p.numel() for p in lae.parameters()) == 98_136 + 248 + 496 + 97_920 + 120 + 240 + 219 == 197_379
    plain = ForensicTransfer(residual=False).state_dict()
    assert {k: v.shape for k, v in lae.state_dict().items() if k.startswith(("encoder.", "decoder."))} == {
        k: v.shape for k, v in plain.items()}  # plain ForensicTransfer's layers, nothing else
    # the shared (x − 0.5)/0.5 input is resized, not renormalised: it is also the reconstruction target
    torch.testing.assert_close(LAE(input_size=16).normalise(batch["image"]), torch.nn.functional.interpolate(
        batch["image"], size=(16, 16), mode="bilinear", align_corners=False, antialias=True))
    with pytest.raises(ValueError, match="multiple of 16"):
        LAE(input_size=40)
    with pytest.raises(ValueError, match=r"mask_fraction must lie in \[0, 1\], got 1.5"):
        LAE(mask_fraction=1.5)


# ------------------------------------------------------------------------------------------- losses by hand


def test_each_reconstruction_is_decoded_from_one_latent_half() -> None:
    # the activations and their loss are ForensicTransfer's, tested by hand in test_forensic_transfer.py; here: LAE
    # decodes every image twice, from its real half (channels 0–63) and from its fake half (64–127)
    torch.manual_seed(0)
    model = LAE(input_size=16).eval()  # BatchNorm in eval mode: each decoding independent of the batch
    image = collate(make_items(3, 16))["image"]
    with torch.no_grad():
        out = model(image)
        latent, rec = out.extras["latent"], out.extras["reconstructions"]
        for c in (0, 1):
            keep = torch.full((3,), c)
            torch.testing.assert_close(rec[:, c], model.decoder(select_half(latent, keep)))
        only_real = latent.clone()
        only_real[:, 64:] = 0
        torch.testing.assert_close(rec[:, 0], model.decoder(only_real))
    assert not torch.allclose(rec[:, 0], rec[:, 1])


def test_gradcam_is_autograds_and_matches_a_hand_computed_map() -> None:
    # K = 2 channels on a 1×2 grid: h^0 = (2, 0), h^1 = (1, 3). a_1 = mean |h| = 6/4, ∂a_1/∂h = sign(h)/4:
    # α_0 = mean(1/4, 0) = 1/8, α_1 = mean(1/4, 1/4) = 1/4 → A = (2/8 + 1/4, 0 + 3/4) = (0.5, 0.75) → Â = (2/3, 1)
    h = torch.tensor([[[[2.0, 0.0]], [[1.0, 3.0]]]])
    torch.testing.assert_close(gradcam_map(h), torch.tensor([[[[2 / 3, 1.0]]]]))
    # against autograd on random latents (Grad-CAM: α = spatial mean of the gradient)
    h = torch.relu(torch.randn(3, 5, 4, 4, generator=torch.Generator().manual_seed(1))).requires_grad_()
    score = h.abs().flatten(1).mean(1)
    (grad,) = torch.autograd.grad(score.sum(), h)
    cam = torch.relu((grad.mean((2, 3), keepdim=True) * h).sum(1, keepdim=True))
    torch.testing.assert_close(gradcam_map(h), cam / cam.flatten(1).amax(1)[:, None, None, None])
    up = gradcam_map(h, 16)
    assert up.shape == (3, 1, 16, 16) and up.min() >= 0 and torch.allclose(up.flatten(1).amax(1), torch.ones(3))
    up.sum().backward()  # differentiable in the latent
    assert h.grad is not None and h.grad.abs().sum() > 0


def test_locality_loss_by_hand() -> None:
    attention = torch.tensor([[[[1.0, 0.5], [0.0, 1.0]]], [[[1.0, 1.0], [1.0, 1.0]]]])
    mask = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]], [[[1.0, 1.0], [1.0, 1.0]]]])
    # image 0: outside the mask 0.5 + 0 + 1 over 4 pixels = 0.375; image 1: all inside → 0
    assert locality_loss(attention, mask, torch.tensor([True, True])).item() == pytest.approx(0.375 / 2)
    assert locality_loss(attention, mask, torch.tensor([True, False])).item() == pytest.approx(0.375)
    assert locality_loss(attention, mask, torch.tensor([False, False])).item() == 0
    with pytest.raises(ValueError, match="differ in shape"):
        locality_loss(attention, mask[:, :, :1], torch.tensor([True, True]))


def test_lae_loss_reconstructs_from_the_labels_half_and_regularises_only_chosen_fakes() -> None:
    torch.manual_seed(0)
    model = LAE(input_size=16)
    batch = collate(make_items(4, 16))
    out = model(batch["image"])
    chosen = torch.tensor([False, True, False, False])
    loss, parts = lae_loss(out, batch, chosen)
    x, rec = out.extras["input"], out.extras["reconstructions"]
    expected_rec = torch.stack([(rec[i, int(y)] - x[i]).abs().mean() for i, y in enumerate(batch["label"])]).mean()
    torch.testing.assert_close(parts["loss_rec"], expected_rec.detach())
    torch.testing.assert_close(parts["loss_act"], activation_loss(out.logits, batch["label"]).detach())
    attention = gradcam_map(out.extras["latent"][1:2, 64:], 16)
    expected_loc = (attention * (1 - batch["mask"][1:2])).mean()
    torch.testing.assert_close(parts["loss_locality"], expected_loc.detach())
    assert parts["mask_fraction"].item() == 0.25
    torch.testing.assert_close(loss.detach(), expected_rec + parts["loss_act"] + expected_loc.detach())
    _, none = lae_loss(out, batch, torch.zeros(4, dtype=torch.bool))
    assert none["loss_locality"].item() == 0 and none["mask_fraction"].item() == 0


# --------------------------------------------------------------------------------------- active learning


def test_selection_schedule_keys_entropy_and_ranking() -> None:
    assert selection_epochs(20, 3) == [5, 10, 15]
    assert selection_epochs(6, 3) == [2, 3, 5]  # 1.5 → 2, 3, 4.5 → 5
    assert selection_epochs(2, 3) == [1]  # all three rounds fall on epoch 1
    assert selection_epochs(1, 3) == [0]
    with pytest.raises(ValueError, match="at least one epoch and one round"):
        selection_epochs(0, 3)
    assert binary_entropy(torch.tensor([0.5, 0.0, 1.0])).tolist() == pytest.approx([math.log(2), 0.0, 0.0])
    keys = torch.tensor([30, 10, 20, 40])
    entropy = torch.tensor([0.1, 0.5, 0.5, 0.6], dtype=torch.float64)
    assert choose_uncertain(keys, entropy, 3).tolist() == [40, 10, 20]  # the tie 10/20 by the smaller key
    assert choose_uncertain(keys, entropy, 0).numel() == 0
    batch = collate(make_items(4))
    k = sample_keys(batch)
    assert k.dtype == torch.int64 and len(set(k.tolist())) == 4 and torch.equal(k, sample_keys(batch))
    with pytest.raises(KeyError, match=r"lacks \['video'\]"):
        sample_keys({k: v for k, v in batch.items() if k != "video"})


def test_select_samples_takes_the_most_uncertain_fakes_round_by_round() -> None:
    torch.manual_seed(0)
    model = LAE(input_size=16, mask_fraction=0.25, selection_rounds=3)
    items = make_items(24)
    batches = [collate(items[i:i + 8]) for i in range(0, 24, 8)]
    model.eval()
    with torch.no_grad():
        prob = torch.cat([model(b["image"]).prob for b in batches])
    keys = torch.cat([sample_keys(b) for b in batches])
    fake = torch.cat([b["label"] for b in batches]) == 1
    ranked = choose_uncertain(keys[fake], binary_entropy(prob[fake]), 12).tolist()
    model.train()
    model.select_samples(1, 6, batches)  # not a round of 6 epochs ([2, 3, 5]): nothing
    assert int(model.num_labelled) == 0
    model.select_samples(2, 6, batches)  # round 1 of 3: round(0.25 · 24 · 1/3) = 2 masks
    assert int(model.num_labelled) == 2 and model.labelled_keys[:2].tolist() == ranked[:2]
    assert model.training  # the pass ran in eval mode and left the mode as it was
    model.select_samples(3, 6, batches)  # round 2: 4 in all, the next most uncertain (same weights)
    assert model.labelled_keys[:4].tolist() == ranked[:4]
    model.select_samples(5, 6, batches)  # round 3: 6 = 25% of 24
    assert int(model.num_labelled) == 6 and model.labelled_keys[:6].tolist() == ranked[:6]
    chosen = torch.cat([model.chosen(b) for b in batches])
    assert int(chosen.sum()) == 6 and not bool((chosen & ~fake).any())  # fakes only
    small = LAE(input_size=16, mask_fraction=1.0, max_masks=4)
    with pytest.raises(ValueError, match="24 masks wanted .* holds 4"):
        small.select_samples(0, 1, batches)


def test_fit_calls_the_hook_and_the_state_keeps_the_choice(tmp_path) -> None:
    class Plain(DetectorNet):
        pass

    assert not Plain().selects_samples() and LAE(input_size=16).selects_samples()
    torch.manual_seed(0)
    model = LAE(input_size=16, mask_fraction=0.25, selection_rounds=1)
    items = make_items(16)
    cfg = TrainConfig(warmup_epochs=0, epochs=2, batch_size=8, device="cpu", image_size=16)
    summary = fit(model, items, items[:4], tmp_path / "run", cfg)
    first, second = summary["history"]
    assert first["train_mask_fraction"] == 0 and first["train_loss_locality"] == 0
    # the one round runs before epoch 2: round(0.25 · 16) = 4 of the 8 fakes
    assert second["train_mask_fraction"] == pytest.approx(4 / 16)
    assert second["train_loss_locality"] > 0
    # a run stopped after epoch 1 and resumed makes the same choice and ends where the uninterrupted one ends
    class Stop(Exception):
        pass

    def stop(record: dict) -> None:
        raise Stop

    torch.manual_seed(0)
    resumed = LAE(input_size=16, mask_fraction=0.25, selection_rounds=1)
    stopping = TrainConfig(warmup_epochs=0, epochs=2, batch_size=8, device="cpu", image_size=16)
    with pytest.raises(Stop):
        fit(resumed, items, items[:4], tmp_path / "resumed", stopping, on_epoch_end=stop)
    torch.manual_seed(1)
    again = LAE(input_size=16, mask_fraction=0.25, selection_rounds=1)
    fit(again, items, items[:4], tmp_path / "resumed", cfg)
    from emdlib.checkpoint import load_checkpoint

    ours, theirs = (load_checkpoint(d / "last.safetensors")[0] for d in (tmp_path / "run", tmp_path / "resumed"))
    assert int(ours["model/num_labelled"]) == 4
    for key in ours:
        if key.startswith("model/"):
            assert torch.equal(ours[key], theirs[key]), key
    # the choice lives in the state: the best checkpoint rebuilds through the registry with it
    from emdlib.registry import model_from_checkpoint, model_spec, save_detector

    assert summary["best_epoch"] in (1, 2)
    model.num_labelled.fill_(4)
    spec = model_spec("lae", input_size=16, mask_fraction=0.25, selection_rounds=1)
    save_detector(tmp_path / "lae.safetensors", model, 16, spec)
    again, _ = model_from_checkpoint(tmp_path / "lae.safetensors")
    assert int(again.num_labelled) == 4 and torch.equal(again.labelled_keys, model.labelled_keys)
    batch = collate(items[:8])
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(again(batch["image"]).logits, model(batch["image"]).logits)


# ----------------------------------------------------------------------------------- training, the study


def test_overfits_a_tiny_batch() -> None:
    torch.manual_seed(0)
    model = LAE(input_size=16)
    batch = collate(make_items(8))
    model.num_labelled.fill_(2)
    model.labelled_keys[:2] = sample_keys(batch)[[1, 3]]  # two fakes carry their mask
    opt = torch.optim.Adam(model.trainable_parameters(), lr=1e-3)
    model.train()
    losses = [train_step(model, batch, opt) for _ in range(60)]
    assert losses[0]["mask_fraction"] == 0.25
    assert losses[-1]["loss"] < 0.5 * losses[0]["loss"], [p["loss"] for p in losses[::10]]
    assert losses[-1]["loss_act"] < 0.3
    # evaluation mode with the batch's population BatchNorm statistics (the baselines' precise-BN path)
    assert recompute_bn_statistics(model, [batch], torch.device("cpu")) == 9
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(batch["image"]).logits.argmax(1), batch["label"])


def test_study_builds_it_from_the_recipe() -> None:
    from emdlib.presets import get_preset
    from emdlib.recipes import RECIPES, scale_epochs
    from emdlib.registry import build_model
    from emdlib.study import experiments

    system = experiments.SYSTEMS["LAE"]
    assert system.kind == "lae" and system.fer is None
    recipe = RECIPES["lae"]
    assert recipe.active_learning.value == {"mask_fraction": 0.02, "selection_rounds": 3}
    assert recipe.active_learning.status == "inferred" and "3%" in recipe.active_learning.source
    assert recipe.summary()["values"]["active_learning"]["mask_fraction"] == 0.02  # recorded with every run
    cpu, paper = get_preset("cpu"), get_preset("paper")
    assert experiments.baseline_kwargs(system, cpu) == {"input_size": 64, "mask_fraction": 0.02,
                                                        "selection_rounds": 3}
    assert experiments.baseline_kwargs(system, paper)["input_size"] == 256
    assert scale_epochs(recipe, cpu.emd) == (0, 6) and scale_epochs(recipe, paper.emd) == (0, 20)
    cfg = experiments.train_config(system, cpu)
    assert (cfg.optimizer, cfg.lr, cfg.batch_size, cfg.warmup_epochs, cfg.epochs) == ("adam", 1e-3, 64, 0, 6)
    model = build_model("lae", **experiments.baseline_kwargs(system, cpu))
    assert isinstance(model, LAE) and (model.input_size, model.mask_fraction, model.selection_rounds) == (64, 0.02, 3)
