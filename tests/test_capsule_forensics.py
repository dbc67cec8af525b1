"""Capsule-Forensics v1 (emdlib.baselines.capsule_forensics): the port equals the official model.py on every official
checkpoint, strict weights_only loading, the output contract and label mapping, squash / statistics pooling /
routing / loss by hand, the parameter count against the paper's, and a tiny batch overfitted by emdlib.train."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import shared_path
from emdlib.baselines import build_baseline
from emdlib.baselines.capsule_forensics import (OFFICIAL_LAYERS, CapsuleForensics, DynamicRouting,
                                                capsule_loss, describe_vgg_weights, load_capsule_forensics,
                                                official_scores, official_to_logits, squash, statistics_pooling,
                                                vgg_features_state, vgg19_to_pool3)
from emdlib.checkpoint import load_torch_state_dict
from emdlib.models.detector import DetectorOutput
from emdlib.train import recompute_bn_statistics, train_step
from test_baselines import make_batch

torch.set_num_threads(1)

# Reference outputs of the OFFICIAL model, made once in a throwaway environment (never part of this repository):
#   git show b1fdda012a6939f8a0be10f9b2e1f698185b8256:model.py > /tmp/capsule-official/model.py
#   (nii-yamagishilab/Capsule-Forensics; the checkpoints' files are unchanged since 699dcd75), then with torch
#   2.14.1 (CPU, 1 thread):
#     torch.manual_seed(0); x = torch.randn(2, 256, 16, 16)        # a pool3-shaped input (128-px faces)
#     net = model.CapsuleNet(gpu_id=-1)
#     net.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=True)); net.eval()
#     z = net.routing_stats(net.fea_ext(x), random=False)           # (2, 4, 2): [image][output dim][capsule]
#     classes, class_ = net(x, random=False)                        # class_ (2, 2): official scores
# printed to 7 decimals. The input's sum and absolute sum guard against a change of torch's generator.
INPUT_SUM, INPUT_ABS_SUM = -523.396118, 104765.492188
OFFICIAL = {
    "face2face/c0/capsule_29.pt": (
        [[[0.3890567, -0.6856775], [0.3248947, -0.1625683], [0.5968508, -0.2639799], [0.6091908, -0.6422455]],
         [[0.3891062, -0.6795542], [0.346125, -0.1797745], [0.5975759, -0.2715215], [0.5976085, -0.6423532]]],
        [[0.7113468, 0.2886532], [0.7132459, 0.2867541]]),
    "face2face/c23/capsule_35.pt": (
        [[[0.6927011, -0.3160222], [0.3567965, -0.1409864], [0.3154717, -0.8378587], [0.5282375, -0.3569021]],
         [[0.6874925, -0.315855], [0.3795773, -0.2006986], [0.3400718, -0.8265946], [0.5032742, -0.3554493]]],
        [[0.7056783, 0.2943217], [0.7094457, 0.2905543]]),
    "face2face/c40/capsule_54.pt": (
        [[[0.2481854, -0.4831431], [0.791972, -0.1326617], [0.1810427, -0.7323818], [0.4444522, -0.4351125]],
         [[0.200415, -0.4869159], [0.8024858, -0.1391936], [0.1334953, -0.7247841], [0.4637839, -0.4426983]]],
        [[0.7028787, 0.2971214], [0.6998481, 0.3001519]]),
    "deepfakes/capsule_95.pt": (
        [[[-0.2510938, -0.1203395], [0.5805967, 0.24522], [0.5310277, -0.5366132], [0.0258182, 0.4872048]],
         [[-0.0470509, -0.1940166], [0.6173954, 0.0121143], [0.5838383, -0.6060838], [0.3971802, 0.4283613]]],
        [[0.5453075, 0.4546925], [0.6106179, 0.3893821]]),
}
#: The v1 paper's parameter count as recalled (Nguyen et al., ICASSP 2019, VGG-19 part up to pool3 included);
#: the paper could not be re-read offline. Our count is the modules' own.
PAPER_PARAMETERS = 2_796_889


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def to_official_names(head_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our CapsuleHead state dict under the official CapsuleNet names (the inverse of official_to_ours)."""
    index = {name: i for i, name in OFFICIAL_LAYERS.items()}
    out = {}
    for key, value in head_state.items():
        if key.endswith("num_batches_tracked"):
            continue
        if key == "routing.route_weights":
            out["routing_stats.route_weights"] = value
            continue
        _, k, layer, p = key.split(".")
        out[f"fea_ext.ext_{int(k) + 1}.{index[layer]}.{p}"] = value
    return out


# --- the port against the official code ---------------------------------------------------------------------


@pytest.mark.parametrize("checkpoint", list(OFFICIAL))
def test_official_checkpoint_gives_the_official_outputs(checkpoint):
    path = shared_path("weights", "capsule-forensics", *checkpoint.split("/"))
    torch.manual_seed(0)
    x = torch.randn(2, 256, 16, 16)
    assert x.sum().item() == pytest.approx(INPUT_SUM, abs=1e-3)
    assert x.abs().sum().item() == pytest.approx(INPUT_ABS_SUM, rel=1e-6)
    model = load_capsule_forensics(CapsuleForensics(), path).eval()
    with torch.no_grad():
        capsules = model.capsules(x)  # (2, 2, 4): [image][capsule][dim]
    z, scores = OFFICIAL[checkpoint]
    torch.testing.assert_close(capsules.transpose(1, 2), torch.tensor(z), atol=1e-4, rtol=0)
    torch.testing.assert_close(official_scores(capsules), torch.tensor(scores), atol=1e-4, rtol=0)


def test_official_checkpoint_loads_with_weights_only_and_every_tensor_used():
    path = shared_path("weights", "capsule-forensics", "face2face", "c23", "capsule_35.pt")
    state = load_torch_state_dict(path)  # torch.load(weights_only=True)
    assert len(state) == 73  # 3 capsules × (4 convs × 2 + 4 BNs × 4) + the routing matrix
    model = load_capsule_forensics(CapsuleForensics(), path)
    assert to_official_names(model.capsules.state_dict()).keys() == state.keys()
    assert all(torch.equal(v, state[k]) for k, v in to_official_names(model.capsules.state_dict()).items())


def test_loading_is_strict_and_names_the_file(tmp_path):
    torch.manual_seed(0)
    official = to_official_names(CapsuleForensics(input_size=32).capsules.state_dict())
    model = CapsuleForensics(input_size=32)
    good = tmp_path / "capsule_1.pt"
    torch.save(official, good)
    load_capsule_forensics(model, good)
    assert all(torch.equal(to_official_names(model.capsules.state_dict())[k], v) for k, v in official.items())

    missing = tmp_path / "missing.pt"
    torch.save({k: v for k, v in official.items() if k != "fea_ext.ext_2.4.running_var"}, missing)
    with pytest.raises(ValueError, match=r"missing\.pt: not a Capsule-Forensics v1 checkpoint \(missing "
                                         r"\['primary\.1\.bn2\.running_var'\]"):
        load_capsule_forensics(model, missing)
    extra = tmp_path / "extra.pt"
    torch.save({**official, "fea_ext.ext_1.2.weight": torch.zeros(1)}, extra)  # index 2 is a ReLU
    with pytest.raises(ValueError, match=r"extra\.pt: 'fea_ext\.ext_1\.2\.weight' is not a Capsule-Forensics v1"):
        load_capsule_forensics(model, extra)
    shape = tmp_path / "shape.pt"
    torch.save({**official, "routing_stats.route_weights": torch.zeros(2, 3, 8, 4)}, shape)
    with pytest.raises(ValueError, match=r"shape\.pt: routing\.route_weights has shape \(2, 3, 8, 4\) in the file"):
        load_capsule_forensics(model, shape)
    pickled = tmp_path / "pickled.pt"
    torch.save({"model": CapsuleForensics(input_size=32).capsules}, pickled)  # a module: code, not tensors
    with pytest.raises(ValueError, match=r"pickled\.pt: cannot be loaded as a state dict with weights_only=True"):
        load_capsule_forensics(model, pickled)
    with pytest.raises(FileNotFoundError, match="nothing.pt"):
        load_capsule_forensics(model, tmp_path / "nothing.pt")


# --- structure ---------------------------------------------------------------------------------------------------


def test_parameter_count_equals_the_papers():
    model = CapsuleForensics()
    assert n_params(model.features) == 2_325_568  # VGG-19 conv1_1 … conv3_4
    # conv 256→64 (147,520) + BN (128) + conv 64→16 (9,232) + BN (32) + conv1d 2→8 (88) + BN (16) + conv1d 8→1 (25)
    # + BN (2)
    assert n_params(model.capsules.primary[0]) == 157_043
    assert n_params(model.capsules.routing) == 2 * 3 * 4 * 8
    assert n_params(model) == 2_325_568 + 3 * 157_043 + 192 == PAPER_PARAMETERS


def test_vgg_part_is_torchvisions_layout():
    from torchvision.models.vgg import cfgs, make_layers

    ours = vgg19_to_pool3()
    full = make_layers(cfgs["E"])  # torchvision's vgg19().features
    assert [type(m) for m in ours] == [type(m) for m in full[:19]]
    assert {k: v.shape for k, v in ours.state_dict().items()} == {
        k: v.shape for k, v in full[:19].state_dict().items()}
    assert ours(torch.zeros(1, 3, 40, 40)).shape == (1, 256, 5, 5)


@pytest.mark.parametrize("size, input_size", [(64, 128), (32, 32), (299, 128)])
def test_output_contract(size, input_size):
    torch.manual_seed(0)
    model = CapsuleForensics(input_size=input_size).eval()
    image = torch.rand(3, 3, size, size) * 2 - 1
    with torch.no_grad():
        out = model(image)
    assert isinstance(out, DetectorOutput) and out.mask_logits is None
    assert out.logits.shape == (3, 2) and out.extras["capsules"].shape == (3, 2, 4)
    scores = out.extras["official_scores"]  # official: index 0 = fake, 1 = real
    torch.testing.assert_close(out.prob, scores[:, 0])
    torch.testing.assert_close(scores.sum(1), torch.ones(3))
    assert (out.extras["capsules"].norm(dim=2) < 1).all()
    with torch.no_grad():
        assert torch.equal(model(image).logits, out.logits)  # evaluation: no routing noise


def test_routing_noise_only_in_training():
    torch.manual_seed(0)
    model = CapsuleForensics(input_size=32)
    image = torch.rand(4, 3, 32, 32) * 2 - 1
    model.train()
    with torch.no_grad():
        a, b = model(image).logits, model(image).logits
    assert not torch.equal(a, b)
    model.capsules.routing.noise_std = 0.0
    with torch.no_grad():
        assert torch.equal(model(image).logits, model(image).logits)


def test_input_is_normalised_as_the_official_transform():
    model = CapsuleForensics(input_size=32)
    grey = torch.full((1, 3, 32, 32), 0.5)  # RGB 0.75 in the shared (x - 0.5) / 0.5 convention
    expected = (0.75 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(model.normalise(grey)[0, :, 0, 0], expected)
    assert model.normalise(torch.zeros(2, 3, 64, 64)).shape == (2, 3, 32, 32)
    with pytest.raises(ValueError, match="at least 16 px"):
        CapsuleForensics(input_size=8)


# --- the maths by hand -------------------------------------------------------------------------------------------


def test_squash_by_hand():
    v = squash(torch.tensor([[3.0, 4.0]]), dim=1)  # ‖s‖² = 25 → 25/26 · s/5
    torch.testing.assert_close(v, torch.tensor([[25 / 26 * 3 / 5, 25 / 26 * 4 / 5]]))
    assert v.norm().item() == pytest.approx(25 / 26)
    # along another axis: each column squashed on its own
    cols = squash(torch.tensor([[1.0, 0.0], [0.0, 2.0]]), dim=0)
    torch.testing.assert_close(cols, torch.tensor([[0.5, 0.0], [0.0, 0.8]]))


def test_statistics_pooling_by_hand():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 2, 2)
    torch.testing.assert_close(statistics_pooling(x), torch.tensor([[[2.5], [math.sqrt(5 / 3)]]]))  # unbiased std
    with pytest.raises(ValueError, match="at least 2 positions"):
        statistics_pooling(torch.ones(1, 1, 1, 1))


def test_routing_by_hand():
    torch.manual_seed(0)
    routing = DynamicRouting(iterations=2).eval()
    u = torch.randn(1, 3, 8)
    w = routing.route_weights.detach()
    priors = [[w[j, i] @ u[0, i] for i in range(3)] for j in range(2)]  # û_{j|i}, 4 dims each
    # iteration 1: equal coupling 1/3; b += û ⊙ v (per dim); iteration 2: coupling softmax over i per dim
    v1 = [squash(sum(p / 3 for p in priors[j]), dim=0) for j in range(2)]
    b = [[priors[j][i] * v1[j] for i in range(3)] for j in range(2)]
    v2 = []
    for j in range(2):
        c = torch.softmax(torch.stack(b[j]), dim=0)  # (3, 4)
        v2.append(squash(sum(c[i] * priors[j][i] for i in range(3)), dim=0))
    with torch.no_grad():
        torch.testing.assert_close(routing(u)[0], torch.stack(v2))
        routing.iterations = 1
        torch.testing.assert_close(routing(u)[0], torch.stack(v1))


def test_label_mapping_and_loss_by_hand():
    # capsule 0 (official fake) long along every dim: the official scores favour fake
    v = torch.tensor([[[0.5, 0.5, 0.5, 0.5], [-0.5, -0.5, -0.5, -0.5]]])
    scores = official_scores(v)
    p_fake = 1 / (1 + math.exp(-1.0))  # per-dim softmax of (0.5, -0.5)
    torch.testing.assert_close(scores, torch.tensor([[p_fake, 1 - p_fake]]))
    torch.testing.assert_close(torch.softmax(official_to_logits(scores), 1), torch.tensor([[1 - p_fake, p_fake]]))
    # the official loss: cross-entropy of the probabilities, summed over the 4 dims; our label 1 = fake
    fake = capsule_loss(v, torch.tensor([1]))
    real = capsule_loss(v, torch.tensor([0]))
    assert fake.item() == pytest.approx(4 * math.log(1 + math.exp(-math.tanh(0.5))), abs=1e-6)  # the infimum
    assert real.item() == pytest.approx(4 * math.log(1 + math.exp(math.tanh(0.5))), abs=1e-6)
    assert capsule_loss(torch.zeros(2, 2, 4) + 0.1, torch.tensor([0, 1])).item() == pytest.approx(4 * math.log(2))
    model = CapsuleForensics(input_size=32)
    loss, parts = model.compute_loss(DetectorOutput(logits=official_to_logits(scores), extras={"capsules": v}),
                                     {"label": torch.tensor([1])})
    assert loss.item() == pytest.approx(fake.item()) and parts["loss_cls"].item() == pytest.approx(fake.item())


# --- ImageNet weights for the VGG part ---------------------------------------------------------------------------


def test_vgg_weights_file_loads_and_freezes(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(1)
    vgg = vgg19_to_pool3()
    state = {f"features.{k}": v for k, v in vgg.state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(4, 4)  # a full VGG-19 file: the classifier is ignored
    save_file(state, tmp_path / "vgg19.safetensors")
    model = build_baseline("capsule_forensics", pretrained=str(tmp_path), input_size=32)  # a folder
    assert all(torch.equal(v, vgg.state_dict()[k]) for k, v in model.features.state_dict().items())
    assert not any(p.requires_grad for p in model.features.parameters())
    assert {id(p) for p in model.trainable_parameters()} == {id(p) for p in model.capsules.parameters()}
    model.train()
    assert not model.features.training and model.capsules.training
    assert describe_vgg_weights(str(tmp_path))["file"].endswith("vgg19.safetensors")
    assert describe_vgg_weights(False) == {"source": "random"}
    assert describe_vgg_weights(True)["source"] == "torchvision"

    del state["features.14.weight"]
    save_file(state, tmp_path / "broken.safetensors")
    with pytest.raises(ValueError, match=r"broken\.safetensors: no tensor features\.14\.weight"):
        vgg_features_state(tmp_path / "broken.safetensors")


def test_random_vgg_part_trains():
    model = CapsuleForensics(input_size=32)
    assert all(p.requires_grad for p in model.features.parameters())
    assert len(list(model.trainable_parameters())) == len(list(model.parameters()))


# --- overfitting a tiny batch through the training loop's step -----------------------------------------------


def test_overfits_a_tiny_batch():
    torch.manual_seed(0)
    model = CapsuleForensics(input_size=32)  # from scratch, as the small presets
    batch = make_batch(8, 32)
    opt = torch.optim.Adam(model.trainable_parameters(), lr=5e-4, betas=(0.9, 0.999))  # the official recipe
    model.train()
    losses = [train_step(model, batch, opt)["loss"] for _ in range(15)]
    chance, floor = 4 * math.log(2), 4 * math.log(1 + math.exp(-math.tanh(0.5)))
    assert losses[0] > chance - 0.2
    assert losses[-1] < floor + 0.25 * (chance - floor), losses  # three quarters of the way to the infimum
    # evaluation mode with the batch's population BatchNorm statistics (the baselines' precise-BN path; after 15
    # steps the running averages still hold mostly their initial values)
    assert recompute_bn_statistics(model, [batch], torch.device("cpu")) == 3 * 4
    model.eval()
    with torch.no_grad():
        assert torch.equal((model(batch["image"]).prob > 0.5).long(), batch["label"])


# --- the study builds it as the preset says ------------------------------------------------------------------


def test_study_builds_it_from_the_preset():
    from emdlib.presets import get_preset
    from emdlib.recipes import recipe_for, scale_epochs
    from emdlib.study import experiments

    system = experiments.SYSTEMS["Capsule-Forensics"]
    tiny, paper = get_preset("tiny"), get_preset("paper")
    assert experiments.baseline_kwargs(system, tiny) == {"input_size": 64, "pretrained": False}
    assert experiments.baseline_kwargs(system, paper) == {"input_size": 128, "pretrained": True}
    assert experiments.initial_weights(tiny, system) == {"source": "random"}
    assert experiments.initial_weights(paper, system) == {"source": "torchvision", "model": "vgg19",
                                                          "weights": "IMAGENET1K_V1"}
    recipe = recipe_for(system.kind)
    assert (recipe.lr.value, recipe.batch_size.value, recipe.input_size.value) == (5e-4, 100, 128)
    assert scale_epochs(recipe, paper.emd) == (0, 100) and scale_epochs(recipe, get_preset("cpu").emd) == (0, 30)
    cfg = experiments.train_config(system, tiny)
    assert (cfg.optimizer, cfg.lr, cfg.batch_size, cfg.warmup_epochs) == ("adam", 5e-4, 100, 0)
