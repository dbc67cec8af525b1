"""Two-stream (Zhou et al., CVPRW 2017): the patch grid and its features, the in-batch triplets and their loss worked
by hand, the patch SVM, the output contract and the fusion, training on a tiny batch, the fitted classifier's
checkpoint round trip and the study's recipe and arguments."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from emdlib.baselines import patch_triplet
from emdlib.models.detector import DetectorOutput

torch.set_num_threads(1)


def _batch(n: int = 4, size: int = 64, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {"image": torch.rand(n, 3, size, size, generator=gen) * 2 - 1, "label": torch.arange(n) % 2}


# ---------------------------------------------------------------------------------------------- patch stream

def test_patch_grid_cuts_a_centred_row_major_grid() -> None:
    # a 1 × 16 × 14 image, values = 100·row + col; patch_size 128 → p = min(128, 14 // 2) = 7, grid 16 // 7 = 2 rows
    # × 2 columns, centred: top offset (16 − 14) // 2 = 1, left offset 0
    img = (100 * np.arange(16)[:, None] + np.arange(14)[None, :]).reshape(1, 16, 14, 1)
    patches = patch_triplet.patch_grid(img)
    assert patches.shape == (1, 4, 7, 7, 1)
    assert patches[0, :, 0, 0, 0].tolist() == [100, 107, 800, 807]  # top-left pixels, row-major
    assert patches[0, :, -1, -1, 0].tolist() == [706, 713, 1406, 1413]  # bottom-right pixels
    assert patch_triplet.patch_grid(np.zeros((2, 299, 299, 3)), 128).shape == (2, 4, 128, 128, 3)
    assert patch_triplet.patch_side(64) == 32 and patch_triplet.patch_side(299) == 128


def test_patches_too_small_are_refused() -> None:
    with pytest.raises(ValueError, match=r"faces of 12 px give patches of 6 px; .* at least 14 px"):
        patch_triplet.patch_side(12)
    with pytest.raises(ValueError, match=r"expected images \(N, H, W, C\)"):
        patch_triplet.patch_grid(np.zeros((8, 8, 3)))


def test_torch_histograms_equal_the_numpy_reference() -> None:
    from emdlib.baselines.steganalysis import steg_features

    grey = np.random.default_rng(0).integers(0, 256, (5, 20, 17)).astype(np.float64)
    ours = patch_triplet.steg_histograms(torch.from_numpy(grey))
    assert ours.dtype == torch.float64 and ours.shape == (5, 162)
    assert np.array_equal(ours.numpy(), steg_features(grey, crop=None))  # bit for bit
    with pytest.raises(ValueError, match=r"at least 7 px, got shape \(2, 6, 9\)"):
        patch_triplet.steg_histograms(torch.zeros(2, 6, 9, dtype=torch.float64))


def test_patch_features_are_the_steganalysis_features_of_each_patch() -> None:
    from emdlib.baselines.steganalysis import shared_input_to_uint8, steg_features

    image = _batch(2)["image"]
    feats = patch_triplet.patch_features(image)
    assert feats.shape == (2, 4, 162) and feats.dtype == torch.float32
    torch.testing.assert_close(feats[..., :81].sum(-1), torch.ones(2, 4))  # each 81-bin histogram sums to 1
    rgb = shared_input_to_uint8(image)  # the reference path: uint8 RGB on the host, NumPy features per patch
    reference = steg_features(patch_triplet.patch_grid(rgb, 128).reshape(8, 32, 32, 3), crop=None)
    assert np.array_equal(feats.reshape(8, 162).numpy(), reference.astype(np.float32))
    bottom_right = steg_features(rgb[1:2, 32:, 32:], crop=None)[0]  # image 1, patch 3
    assert np.array_equal(feats[1, 3].numpy(), bottom_right.astype(np.float32))


def test_in_batch_triplets_and_their_loss_worked_by_hand() -> None:
    # 2 faces × 2 patches of 1-D embeddings: face 0 = (0, 1), face 1 = (3, 5)
    e = torch.tensor([[[0.0], [1.0]], [[3.0], [5.0]]])
    a, p, n = patch_triplet.in_batch_triplets(e)
    assert a.flatten().tolist() == [0, 1, 3, 5]
    assert p.flatten().tolist() == [1, 0, 5, 3]  # the next patch of the same face
    assert n.flatten().tolist() == [3, 5, 0, 1]  # the same patch of the next face
    # d(a, p) = 1, 1, 2, 2; d(a, n) = 3, 4, 3, 4; margin 2.5: max(0, 1 − 3 + 2.5) = 0.5, max(0, 1 − 4 + 2.5) = 0,
    # max(0, 2 − 3 + 2.5) = 1.5, max(0, 2 − 4 + 2.5) = 0.5 → mean 2.5 / 4
    loss = patch_triplet.triplet_loss(e, margin=2.5)
    assert loss.item() == pytest.approx(2.5 / 4, abs=1e-5)  # PyTorch's eps = 1e-6 inside the distance
    single = torch.ones(1, 4, 3, requires_grad=True)
    assert patch_triplet.triplet_loss(single).item() == 0.0
    with pytest.raises(ValueError, match="at least 2 images of at least 2 patches, got 3 × 1"):
        patch_triplet.in_batch_triplets(torch.zeros(3, 1, 2))


def test_the_embedding_is_unit_norm() -> None:
    net = patch_triplet.PatchTripletNet()
    out = net(torch.randn(2, 4, 162))
    assert out.shape == (2, 4, 128)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(2, 4))
    # BatchNorm's scale and shift, then the three layers
    assert sum(p.numel() for p in net.parameters()) == 2 * 162 + (162 * 256 + 256) + (256 * 256 + 256) + (256 * 128 + 128)


def test_calibrated_svm_gives_the_log_odds_of_calibratedclassifiercv_and_refuses_bad_labels() -> None:
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.svm import LinearSVC

    rng = np.random.default_rng(0)
    y = np.arange(60) % 2
    x = rng.normal(size=(60, 5)) + np.where(y[:, None] == 1, 0.8, -0.8)
    w, b = patch_triplet.fit_calibrated_svm(x, y, c=1.0, seed=0)
    assert w.shape == (5,) and w.dtype == np.float32
    # the same fit through scikit-learn's own API: our linear log-odds are logit(predict_proba)
    ref = CalibratedClassifierCV(LinearSVC(C=1.0, dual="auto", max_iter=10_000, random_state=0), method="sigmoid",
                                 cv=3, ensemble=False).fit(x, y)
    p = ref.predict_proba(x)[:, 1]
    np.testing.assert_allclose(x @ w + b, np.log(p / (1 - p)), rtol=1e-4, atol=1e-4)
    assert ((x @ w + b > 0) == y).mean() > 0.85  # a well-separated toy set
    with pytest.raises(ValueError, match=r"patches of both classes, got classes \[1\]"):
        patch_triplet.fit_calibrated_svm(x, np.ones(60, dtype=int))
    with pytest.raises(ValueError, match=r"at least 3 patches of each class, got \{0: 58, 1: 2\}"):
        patch_triplet.fit_calibrated_svm(x, (np.arange(60) >= 58).astype(int))


# ---------------------------------------------------------------------------------------------------- TwoStream

@pytest.fixture(scope="module")
def model():
    from emdlib.baselines.two_stream import TwoStream

    torch.manual_seed(0)
    return TwoStream(input_size=64, max_svm_patches=12)


def test_parameter_counts() -> None:
    from emdlib.baselines.two_stream import parameter_counts

    # torchvision's Inception-v3 (no count from the paper is known); our face stream drops the auxiliary classifier and
    # replaces fc (2048·1000 + 1000) with a 2-class one (2048·2 + 2)
    assert parameter_counts() == {"inception_v3": 27_161_264, "inception_v3_no_aux": 23_834_568,
                                  "face_stream": 23_834_568 - 2_049_000 + 4_098, "patch_triplet": 140_740}


def test_output_contract_before_the_svm_is_fitted(model) -> None:
    model.eval()
    with torch.no_grad():
        out = model(_batch()["image"])
    assert isinstance(out, DetectorOutput) and out.mask_logits is None and out.logits.shape == (4, 2)
    assert out.extras["patch_embeddings"].shape == (4, 4, 128) and "patch_scores" not in out.extras
    torch.testing.assert_close(out.logits, out.extras["face_logits"])
    assert not model.classifier_fitted and model.face_size == 75  # 64-px faces upsampled to Inception's minimum
    assert model.face_input(_batch()["image"]).shape == (4, 3, 75, 75)
    assert sum(p.numel() for p in model.parameters()) == 21_789_666 + 140_740


def test_fusion_sums_the_face_log_odds_and_the_mean_patch_svm_score(model) -> None:
    from emdlib.baselines.two_stream import TwoStream

    fused = TwoStream(input_size=64).eval()
    fused.load_state_dict(model.state_dict())
    w = torch.zeros(128)
    w[0] = 2.0
    fused.svm_weight.copy_(w)
    fused.svm_bias.fill_(-0.5)
    fused.svm_fitted.fill_(True)
    image = _batch(seed=5)["image"]
    with torch.no_grad():
        out = fused(image)
        emb = fused.embed_patches(image)
    scores = 2.0 * emb[..., 0] - 0.5  # w·e + b, by hand
    torch.testing.assert_close(out.extras["patch_scores"], scores)
    f = out.extras["face_logits"]
    z = f[:, 1] - f[:, 0] + scores.mean(1)
    torch.testing.assert_close(out.logits, torch.stack([-z / 2, z / 2], 1))
    torch.testing.assert_close(out.prob, torch.sigmoid(z))


def test_training_overfits_a_tiny_batch() -> None:
    from emdlib.baselines.two_stream import TwoStream
    from emdlib.train import make_optimizer, train_step

    torch.manual_seed(0)
    model = TwoStream(input_size=32).train()
    model.face_stream.dropout.p = 0.0  # memorising 4 faces is the point here
    batch = _batch(4, size=32)
    batch["image"] = 0.3 * batch["image"] + (batch["label"].float() - 0.5).view(-1, 1, 1, 1)  # fakes brighter
    opt = make_optimizer(model.trainable_parameters(), "adam", 1e-3)
    first = train_step(model, batch, opt)
    for _ in range(7):
        last = train_step(model, batch, opt)
    assert set(first) == {"loss", "loss_face", "loss_triplet"}
    assert last["loss_face"] < 0.6 * first["loss_face"], (first, last)
    assert last["loss_triplet"] < first["loss_triplet"], (first, last)
    with torch.no_grad():
        out = model(batch["image"])  # train mode: the batch statistics it was trained with
    assert torch.equal(out.extras["face_logits"].argmax(1), batch["label"])


def test_fit_classifier_caps_the_patches_and_the_fitted_model_round_trips(model, tmp_path) -> None:
    from emdlib.baselines.two_stream import TwoStream
    from emdlib.registry import model_from_checkpoint, model_spec, save_detector

    batches = [_batch(4, seed=1), _batch(4, seed=2)]  # 8 faces × 4 patches = 32 > max_svm_patches = 12
    assert model.fit_classifier(batches) is True and model.classifier_fitted
    assert model.svm_weight.abs().sum() > 0
    model.eval()
    image = _batch(seed=3)["image"]
    with torch.no_grad():
        out = model(image)
    assert out.extras["patch_scores"].shape == (4, 4)
    spec = model_spec("two_stream", input_size=64, max_svm_patches=12)
    path = tmp_path / "two_stream.safetensors"
    save_detector(path, model, 64, spec=spec)
    rebuilt, meta = model_from_checkpoint(path)
    assert meta["model"]["name"] == "two_stream" and rebuilt.classifier_fitted
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(image).logits, out.logits, rtol=0, atol=0)
    assert not TwoStream(input_size=64).classifier_fitted
    with pytest.raises(ValueError, match="patches of both classes"):
        model.fit_classifier([{"image": image, "label": torch.zeros(4, dtype=torch.long)}])
    with pytest.raises(ValueError, match="needs training images, got none"):
        model.fit_classifier([])


def test_bad_arguments_and_offline_weights_fail_clearly(monkeypatch, tmp_path) -> None:
    from torchvision.models._api import WeightsEnum

    from emdlib.baselines.two_stream import TwoStream

    with pytest.raises(ValueError, match="margin, svm_c > 0; got 64, 128, 10, 0.0, 1.0"):
        TwoStream(input_size=64, max_svm_patches=10, margin=0.0)
    with pytest.raises(FileNotFoundError, match="inception_v3"):
        TwoStream(input_size=64, pretrained=str(tmp_path))

    def offline(self, *args, **kwargs):
        raise OSError("offline")

    monkeypatch.setattr(WeightsEnum, "get_state_dict", offline)
    with pytest.raises(RuntimeError, match=r"torchvision 'inception_v3' could not be downloaded \(OSError: offline\)"):
        TwoStream(input_size=64, pretrained=True)


# --------------------------------------------------------------------------------------------------- the study

def test_the_study_builds_two_stream_from_its_recipe_and_the_preset() -> None:
    from emdlib.presets import get_preset
    from emdlib.recipes import RECIPES, scale_epochs
    from emdlib.study.experiments import SYSTEMS, baseline_kwargs, initial_weights

    system = SYSTEMS["Two-stream"]
    assert system.kind == "two_stream" and system.fer is None
    svm = {"svm_c": 1.0, "max_svm_patches": 200_000, "patch_size": 128}
    assert baseline_kwargs(system, get_preset("cpu")) == {"input_size": 64, **svm, "pretrained": False}
    assert baseline_kwargs(system, get_preset("paper")) == {"input_size": 299, **svm, "pretrained": True}
    assert initial_weights(get_preset("paper"), system) == {"source": "torchvision",
                                                             "weights": "Inception_V3_Weights.IMAGENET1K_V1"}
    assert initial_weights(get_preset("cpu"), system) == {"source": "random"}
    recipe = RECIPES["two_stream"]
    assert recipe.sized_input and recipe.optimizer_settings() == {
        "optimizer": "adam", "lr": 2e-4, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0}
    assert scale_epochs(recipe, get_preset("cpu").emd) == (0, 6)
    assert math.isclose(recipe.classifier.value["svm_c"], 1.0)
