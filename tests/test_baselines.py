"""Baselines of Tables II–IV (emdlib.baselines): shapes, parameter counts, the hand-computed steganalysis
feature, the Cozzolino CNN = the feature, Bayar's constraint, label mappings, and a few training steps each."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from emdlib.baselines import BASELINES, build_baseline
from emdlib.baselines.bayar import BayarStamm
from emdlib.baselines.classnseg import MultiTask, MultiTaskEnsFER
from emdlib.baselines.cozzolino import Cozzolino
from emdlib.baselines.mesonet import Meso4, MesoInception4, official_to_logits
from emdlib.baselines.rahmouni import Rahmouni
from emdlib.baselines.steganalysis import (StegFeatures, cooccurrence, quantise, residuals, steg_features,
                                           steg_svm_pipeline)
from emdlib.models.detector import DetectorOutput


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


class StandInESR(nn.Module):
    """Same API as emdlib.models.esr.ESR.select_branch: (fer_map (N,512,h,w), branch (N,), class (N,))."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 512, 5, stride=16)
        self.bn = nn.BatchNorm2d(512)

    def select_branch(self, x):
        fmap = torch.relu(self.bn(self.conv(x)))
        n = x.shape[0]
        return fmap, torch.zeros(n, dtype=torch.long), torch.zeros(n, dtype=torch.long)


def make_batch(n: int = 4, size: int = 64, seed: int = 0) -> dict:
    """Half real, half fake (a brighter noisy square, also the mask)."""
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(n, 3, size, size, generator=g) * 0.2 + 0.4
    mask = torch.zeros(n, 1, size, size)
    label = torch.tensor([i % 2 for i in range(n)])
    q = size // 4
    for i in range(n):
        if label[i] == 1:
            image[i, :, q : 3 * q, q : 3 * q] += 0.3 * torch.rand(3, 2 * q, 2 * q, generator=g)
            mask[i, :, q : 3 * q, q : 3 * q] = 1
    return {"image": (image.clamp(0, 1) - 0.5) / 0.5, "fer_image": torch.rand(n, 3, 96, 96, generator=g),
            "mask": mask, "label": label}


# --- shapes and parameter counts ------------------------------------------------------------------------------


@pytest.mark.parametrize("ctor, expected", [(Meso4, 27_977), (MesoInception4, 28_615), (Rahmouni, 284_034)])
def test_parameter_counts(ctor, expected):
    assert n_params(ctor()) == expected


def test_classnseg_parameter_counts():
    m = MultiTask()
    assert n_params(m.encoder) == 148_200
    assert n_params(m.decoder) == 156_749


def test_classnseg_runs_at_the_preset_size_with_the_same_weights():
    official = MultiTask().eval()
    small = MultiTask(input_size=64).eval()
    assert n_params(small) == n_params(official)
    small.load_state_dict(official.state_dict())  # fully convolutional: one set of weights for every size
    x = make_batch(2, 64)["image"]
    out = small(x)
    assert out.extras["latent"].shape == (2, 128, 4, 4) and out.extras["normalised_input"].shape[-1] == 64
    assert out.mask_logits.shape == (2, 1, 64, 64)
    assert official(x).extras["latent"].shape == (2, 128, 16, 16)  # the official size upsamples the 64-px face to 256
    with pytest.raises(ValueError, match="multiple of 16"):
        MultiTask(input_size=72)


def test_xception_parameter_count_and_warmup():
    m = BASELINES["xception"](pretrained=False)
    assert n_params(m) == 20_811_050
    warm = list(m.warmup_parameters())
    assert sum(p.numel() for p in warm) == 2048 * 2 + 2
    out = m.eval()(make_batch(2, 96)["image"])
    assert out.logits.shape == (2, 2) and out.mask_logits is None


@pytest.mark.parametrize("name", ["cozzolino", "bayar_stamm", "rahmouni", "mesonet", "meso4", "multitask"])
@pytest.mark.parametrize("size", [64, 160])
def test_output_contract(name, size):
    model = build_baseline(name).eval()
    batch = make_batch(2, size)
    with torch.no_grad():
        out = model(batch["image"], batch["fer_image"])
    assert out.logits.shape == (2, 2)
    assert torch.isfinite(out.logits).all()
    if name == "multitask":
        assert out.mask_logits.shape == (2, 1, size, size)
    else:
        assert out.mask_logits is None


def test_multitask_ensfer_output_and_frozen_fer():
    fer = StandInESR()
    model = MultiTaskEnsFER(fer=fer).eval()
    batch = make_batch(2, 64)
    out = model(batch["image"], batch["fer_image"])
    assert out.logits.shape == (2, 2) and out.mask_logits.shape == (2, 1, 64, 64)
    assert all(not p.requires_grad for p in fer.parameters())
    model.train()
    assert not fer.training  # stays in eval mode (frozen BN statistics)
    new_layers = [*model.fer_norm.parameters(), *model.fusion.parameters()]
    assert {id(p) for p in model.warmup_parameters()} == {id(p) for p in new_layers}
    with pytest.raises(ValueError, match="fer_image"):
        model(batch["image"])


def test_multitask_ensfer_starts_as_multitask():
    """Identity-initialised fusion: with the same encoder/decoder, EnsFER's outputs equal MultiTask's."""
    torch.manual_seed(0)
    base = MultiTask().eval()
    ens = MultiTaskEnsFER(fer=StandInESR()).eval()
    ens.encoder.load_state_dict(base.encoder.state_dict())
    ens.decoder.load_state_dict(base.decoder.state_dict())
    batch = make_batch(2, 64)
    with torch.no_grad():
        a, b = base(batch["image"]), ens(batch["image"], batch["fer_image"])
    torch.testing.assert_close(a.logits, b.logits)
    torch.testing.assert_close(a.mask_logits, b.mask_logits)


def test_registry_unknown_name():
    with pytest.raises(KeyError, match="unknown baseline"):
        build_baseline("nope")
    assert set(BASELINES) >= {"steg_features_svm", "cozzolino", "bayar_stamm", "rahmouni", "mesonet", "xception",
                              "multitask", "multitask_ensfer"}


# --- label conventions ----------------------------------------------------------------------------------------


def test_mesonet_logits_mean_fake():
    z = torch.tensor([-3.0, 0.0, 2.0])  # official: sigmoid(z) = P(real)
    p_fake = official_to_logits(z).softmax(1)[:, 1]
    torch.testing.assert_close(p_fake, 1 - torch.sigmoid(z))


def test_mesonet_mse_loss_against_official_target():
    m = Meso4()
    out = DetectorOutput(logits=torch.zeros(2, 2), extras={"official_output": torch.tensor([0.9, 0.2])})  # P(real)
    loss, parts = m.compute_loss(out, {"label": torch.tensor([0, 1])})  # real, fake → official targets 1, 0
    assert loss.item() == pytest.approx(((0.9 - 1) ** 2 + (0.2 - 0) ** 2) / 2)


def test_multitask_logits_mean_fake():
    """Group 0 is the official 'fake' group: more activation there ⇒ P(fake) > 0.5 and predicted 'fake'."""
    m = MultiTask().eval()
    with torch.no_grad():
        for c in m.decoder.parameters():
            c.zero_()
    act = torch.tensor([[0.9, 0.1], [0.1, 0.8]])
    from emdlib.baselines.classnseg import official_to_logits as cns_logits

    p_fake = cns_logits(act[:, 0], act[:, 1]).softmax(1)[:, 1]
    torch.testing.assert_close(p_fake, act.softmax(1)[:, 0])
    assert p_fake[0] > 0.5 > p_fake[1]


def test_multitask_training_decodes_ground_truth_group():
    torch.manual_seed(0)
    m = MultiTask().train()
    batch = make_batch(4, 64)
    out = m(batch["image"])
    loss, parts = m.compute_loss(out, batch)
    out_gt = m(batch["image"], label=batch["label"])
    assert torch.equal(out_gt.extras["selected"], 1 - batch["label"])
    # the re-decoded loss equals the loss of a forward pass that selected the ground truth directly
    loss_gt, _ = m.compute_loss(out_gt, batch)
    assert loss.item() == pytest.approx(loss_gt.item(), rel=1e-4)
    assert set(parts) == {"loss_cls", "loss_seg", "loss_rec"}


# --- steganalysis feature -------------------------------------------------------------------------------------


def _bin(pattern):
    """Documented bin index: 27·d0 + 9·d1 + 3·d2 + d3 with d = level + 1."""
    d = [p + 1 for p in pattern]
    return 27 * d[0] + 9 * d[1] + 3 * d[2] + d[3]


def test_steg_feature_hand_computed_8x8():
    """An 8×8 black image with one grey level 1 at (row 3, col 4).

    Residual [1,-3,3,-1] along row 3, j = 0..4: r_h = [0, -1, 3, -3, 1]; /3 and round → [0, 0, 1, -1, 0].
    Along column 4, i = 0..4: r_v = [-1, 3, -3, 1, 0] → [0, 1, -1, 0, 0]. All other residuals are 0.

    "h" (parallel scans): h-scan of q_h: 8 rows × 2 windows = 16: row 3 gives [0,0,1,-1] and [0,1,-1,0], 14 zero
    patterns; v-scan of q_v: 8 columns × 2 = 16: column 4 gives [0,1,-1,0] and [1,-1,0,0], 14 zeros.
    → 32 patterns: zeros 28, [0,0,1,-1] 1, [0,1,-1,0] 2, [1,-1,0,0] 1.

    "v" (orthogonal): v-scan of q_h (5 columns × 5 windows = 25): column 2 holds a single 1 at row 3, seen at
    window positions 3, 2, 1, 0 → [0,0,0,1], [0,0,1,0], [0,1,0,0], [1,0,0,0]; column 3 the same with -1; 17 zeros.
    h-scan of q_v (5 rows × 5 windows = 25): row 1 has 1 at column 4, row 2 has -1: the same 8 patterns, 17 zeros.
    → 50 patterns: zeros 34, each single-±1 pattern 2.
    """
    img = np.zeros((8, 8), dtype=np.uint8)
    img[3, 4] = 1
    r_h, r_v = residuals(img[None])
    np.testing.assert_array_equal(r_h[0, 3], [0, -1, 3, -3, 1])
    np.testing.assert_array_equal(r_v[0, :, 4], [-1, 3, -3, 1, 0])
    np.testing.assert_array_equal(quantise(r_h)[0, 3], [0, 0, 1, -1, 0])
    np.testing.assert_array_equal(quantise(r_v)[0, :, 4], [0, 1, -1, 0, 0])

    h = np.zeros(81)
    h[_bin([0, 0, 0, 0])] = 28
    h[_bin([0, 0, 1, -1])] = 1
    h[_bin([0, 1, -1, 0])] = 2
    h[_bin([1, -1, 0, 0])] = 1
    v = np.zeros(81)
    v[_bin([0, 0, 0, 0])] = 34
    for s in (1, -1):
        for k in range(4):
            p = [0, 0, 0, 0]
            p[k] = s
            v[_bin(p)] = 2
    expected = np.concatenate([h / 32, v / 50])
    np.testing.assert_allclose(steg_features(img[None]), expected[None], atol=1e-12)
    assert _bin([0, 0, 0, 0]) == 40


def test_quantise_rounds_half_away_from_zero_and_truncates():
    r = np.array([-7.5, -4.5, -1.5, -1.4, 0.0, 1.4, 1.5, 4.5, 7.5])
    np.testing.assert_array_equal(quantise(r), [-1, -1, -1, 0, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(quantise(r, T=2), [-2, -2, -1, 0, 0, 0, 1, 2, 2])


def test_cooccurrence_counts_per_image():
    lv = np.array([[[1, 1, 1, 1, 1]], [[-1, 0, 1, -1, 0]]], dtype=np.int8)  # (2, 1, 5)
    c = cooccurrence(lv, "h")
    assert c.shape == (2, 81) and c.sum(1).tolist() == [2, 2]
    assert c[0, _bin([1, 1, 1, 1])] == 2
    assert c[1, _bin([-1, 0, 1, -1])] == 1 and c[1, _bin([0, 1, -1, 0])] == 1


def test_steg_feature_crops_centre_and_accepts_rgb():
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (2, 150, 140, 3), dtype=np.uint8)
    f = StegFeatures().fit_transform(rgb)
    assert f.shape == (2, 162)
    np.testing.assert_allclose(f[:, :81].sum(1), 1)
    np.testing.assert_allclose(f[:, 81:].sum(1), 1)
    grey = np.round(rgb @ np.array([0.299, 0.587, 0.114]))
    crop = grey[:, 11:139, 6:134]
    np.testing.assert_allclose(f, steg_features(crop, crop=None))
    assert len(StegFeatures().get_feature_names_out()) == 162


def _smooth_vs_noisy(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    base = np.linspace(40, 200, 48)[None, :] + np.linspace(0, 30, 48)[:, None]
    X, y = [], []
    for i in range(n):
        noise = rng.normal(0, 1.0 if i % 2 == 0 else 4.0, (48, 48))
        X.append(np.clip(np.round(base + noise), 0, 255).astype(np.uint8))
        y.append(i % 2)
    return np.stack(X), np.array(y)


def test_steg_svm_pipeline_separates_and_caches(tmp_path):
    X, y = _smooth_vs_noisy(20, 0)
    pipe = steg_svm_pipeline(memory=str(tmp_path / "cache"))
    pipe.fit(X, y)
    Xt, yt = _smooth_vs_noisy(10, 1)
    assert (pipe.predict(Xt) == yt).mean() >= 0.9
    assert any((tmp_path / "cache").rglob("output.pkl"))  # joblib memo written
    np.testing.assert_allclose(pipe.named_steps["features"].transform(X), steg_features(X))


# --- Cozzolino CNN = steganalysis feature ---------------------------------------------------------------------


def _as_shared_input(grey_u8: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(grey_u8).float().div(255.0)[:, None].repeat(1, 3, 1, 1)
    return (t - 0.5) / 0.5


@pytest.mark.parametrize("shape", [(8, 8), (140, 150)])
def test_cozzolino_hard_quantisation_equals_steg_features(shape):
    rng = np.random.default_rng(2)
    h, w = shape
    grey = np.clip(np.linspace(20, 220, w)[None, None, :] + rng.normal(0, 5, (2, h, w)), 0, 255).round()
    grey = grey.astype(np.uint8)
    expected = steg_features(grey)
    sharp = Cozzolino(temperature=1e-4).eval()
    with torch.no_grad():
        got = sharp(_as_shared_input(grey)).extras["features"].double().numpy()
    np.testing.assert_allclose(got, expected, atol=1e-6)
    soft = Cozzolino().eval()  # default τ = 0.1: still within 1 % of a bin's mass
    with torch.no_grad():
        got_soft = soft(_as_shared_input(grey)).extras["features"].double().numpy()
    np.testing.assert_allclose(got_soft, expected, atol=1e-2)


def test_cozzolino_relax_unfreezes():
    m = Cozzolino()
    fixed = list(m.fixed_parameters())
    assert fixed and all(not p.requires_grad for p in fixed)
    m.relax()
    assert all(p.requires_grad for p in fixed)
    batch = make_batch(2, 32)
    loss, _ = m.compute_loss(m.train()(batch["image"]), batch)
    loss.backward()
    assert m.residual_h.weight.grad is not None and m.thresholds.grad is not None


# --- Bayar & Stamm constraint ---------------------------------------------------------------------------------


def _check_constraint(w: torch.Tensor) -> None:
    c = w.shape[-1] // 2
    torch.testing.assert_close(w[:, :, c, c], -torch.ones(w.shape[:2]))
    others = w.sum((2, 3)) - w[:, :, c, c]
    torch.testing.assert_close(others, torch.ones(w.shape[:2]), atol=1e-5, rtol=1e-5)


def test_bayar_constraint_holds_after_step():
    torch.manual_seed(0)
    m = BayarStamm(fc_width=64).train()
    _check_constraint(m.constrained.weight.detach())
    opt = torch.optim.SGD(m.parameters(), lr=0.5)
    batch = make_batch(4, 128)
    loss, _ = m.compute_loss(m(batch["image"]), batch)
    loss.backward()
    opt.step()
    with pytest.raises(AssertionError):  # the step broke it …
        _check_constraint(m.constrained.weight.detach())
    m.after_step()  # … and the projection restores it
    _check_constraint(m.constrained.weight.detach())


def test_bayar_default_size():
    m = BayarStamm()
    assert m.classifier[1].in_features == 48 * 12 * 12 and m.classifier[1].out_features == 4096
    assert BayarStamm(input_size=64).classifier[1].in_features == 48 * 4 * 4  # 60 → 27 → 13 → 9 → 4


def test_bayar_initial_filters_are_bounded_predictors():
    # the default init divided by near-zero tap sums (filters in the hundreds) and killed the network
    for seed in range(5):
        torch.manual_seed(seed)
        w = BayarStamm(fc_width=64).constrained.weight.detach()
        _check_constraint(w)
        c = w.shape[-1] // 2
        off = w.clone()
        off[:, :, c, c] = 0
        assert off.min() >= 0 and off.max() <= 1  # a weighted average of the neighbours


def test_mesonet_at_the_preset_size():
    m = MesoInception4(input_size=64).eval()
    assert m.dense1.in_features == 16 * 2 * 2
    assert m(make_batch(2, 64)["image"]).logits.shape == (2, 2)
    with pytest.raises(ValueError, match="multiple of 32"):
        Meso4(input_size=48)
    bns = [b for b in MesoInception4(bn_momentum=0.1).modules() if isinstance(b, nn.BatchNorm2d)]
    assert len(bns) == 4 and all(b.momentum == 0.1 for b in bns)
    assert all(b.momentum == 0.01 for b in Meso4().modules() if isinstance(b, nn.BatchNorm2d))  # Keras' 0.99


# --- a few training steps each --------------------------------------------------------------------------------


def _train_steps(model: nn.Module, batch: dict, steps: int, lr: float = 1e-3, warmup: bool = False
                 ) -> tuple[float, float]:
    """Loss on ``batch`` before and after ``steps`` Adam steps on it. Both losses are measured in training mode
    with the same random seed (same dropout masks, batch-statistics BN), so only the weights differ."""

    def measure() -> float:
        torch.manual_seed(123)
        with torch.no_grad():
            return model.compute_loss(model(batch["image"], batch["fer_image"]), batch)[0].item()

    params = list(model.warmup_parameters()) if warmup else [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    model.train()
    before = measure()
    torch.manual_seed(0)
    for _ in range(steps):
        opt.zero_grad()
        out = model(batch["image"], batch["fer_image"])
        loss, parts = model.compute_loss(out, batch)
        assert "loss_cls" in parts
        loss.backward()
        opt.step()
        if hasattr(model, "after_step"):
            model.after_step()
    return before, measure()


@pytest.mark.parametrize("name, kwargs, size, steps, lr, warmup", [
    ("cozzolino", {}, 64, 15, 1e-2, True),
    ("bayar_stamm", {"fc_width": 128}, 128, 8, 1e-3, False),
    ("rahmouni", {}, 64, 20, 1e-4, False),
    ("meso4", {}, 64, 8, 1e-3, False),
    ("mesonet", {}, 64, 5, 1e-3, False),
    ("multitask", {}, 32, 4, 1e-3, False),
    ("xception", {"pretrained": False}, 72, 3, 1e-3, False),
])
def test_loss_decreases(name, kwargs, size, steps, lr, warmup):
    torch.manual_seed(0)
    model = build_baseline(name, **kwargs)
    before, after = _train_steps(model, make_batch(4, size), steps, lr, warmup)
    assert np.isfinite(after) and after < before, (before, after)


def test_multitask_ensfer_loss_decreases_and_fer_untouched():
    torch.manual_seed(0)
    fer = StandInESR()
    fer_state = {k: v.clone() for k, v in fer.state_dict().items()}
    model = MultiTaskEnsFER(fer=fer)
    before, after = _train_steps(model, make_batch(4, 32), 4)
    assert after < before, (before, after)
    for k, v in fer.state_dict().items():
        assert torch.equal(v, fer_state[k]), k


def test_multitask_ensfer_with_emdlib_esr():
    """The real ESR (emdlib.models.esr, 2 branches to stay small) plugs into MultiTask+EnsFER."""
    esr = pytest.importorskip("emdlib.models.esr")
    model = MultiTaskEnsFER(fer=esr.ESR(num_branches=2)).eval()
    batch = make_batch(2, 64)
    with torch.no_grad():
        out = model(batch["image"], batch["fer_image"])
    assert out.logits.shape == (2, 2) and out.mask_logits.shape == (2, 1, 64, 64)
    trainable = {id(p) for p in model.trainable_parameters()}
    assert not trainable & {id(p) for p in model.fer.parameters()}
    assert {id(p) for p in model.fusion.parameters()} <= trainable


def test_cozzolino_trainable_parameters_include_fixed_layers():
    """emdlib.train trains warmup_parameters() first, then trainable_parameters(): the relaxed network."""
    m = Cozzolino()
    warm = {id(p) for p in m.warmup_parameters()}
    every = {id(p) for p in m.trainable_parameters()}
    fixed = {id(p) for p in m.fixed_parameters()}
    assert fixed <= every and not fixed & warm and warm <= every
