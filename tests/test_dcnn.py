"""DCNN (Raghavendra et al., CVPRW 2017) and its ProCRC classifier: ProCRC on a case worked by hand, the DCNN output
contract, fine-tuning, the fitted classifier, the checkpoint round trip and the study's hook."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from emdlib.baselines.procrc import procrc_log_prob, procrc_projection, procrc_residuals
from emdlib.models.detector import DetectorNet, DetectorOutput

torch.set_num_threads(1)


# --------------------------------------------------------------------------------------------------------- ProCRC

def test_procrc_on_a_case_worked_by_hand() -> None:
    # Dictionary (one atom a row): class 0: x1 = (1, 0), x2 = (0, 1); class 1: x3 = (1, 1), x4 = (1, -1); λ = γ = 1.
    # Gram XXᵀ = [[1,0,1,1],[0,1,1,-1],[1,1,2,0],[1,-1,0,2]]; class blocks: diag(1, 1) and diag(2, 2); K = 2, so the
    # system matrix is XXᵀ + γ·blockdiag + λI = [[3,0,1,1],[0,3,1,-1],[1,1,5,0],[1,-1,0,5]].
    # y = (1, 0): Xy = (1, 0, 1, 1). With s = α3 + α4, d = α3 − α4: rows 1–2 give α1 = (1 − s)/3, α2 = −d/3; rows 3 ± 4
    # give 2α1 + 5s = 2 → s = 4/13 and 2α2 + 5d = 0 → d = 0. So α̂ = (3/13, 0, 2/13, 2/13).
    # Class 0's part: 3/13·x1 = (3/13, 0); class 1's: 2/13·(x3 + x4) = (4/13, 0).
    # r_0 = ‖Xᵀα̂ − X_0ᵀα̂_0‖² = ‖class 1's part‖² = 16/169; r_1 = 9/169 → class 1; P(1) = 1 / (1 + e^(−7/169)).
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1])
    proj = procrc_projection(x, labels, 2, lam=1.0, gamma=1.0)
    y = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(y @ proj.T, torch.tensor([[3 / 13, 0.0, 2 / 13, 2 / 13]], dtype=torch.float64))
    r = procrc_residuals(y, x, labels, proj, 2)
    torch.testing.assert_close(r, torch.tensor([[16 / 169, 9 / 169]], dtype=torch.float64))
    p = procrc_log_prob(r).exp()
    assert p[0, 1].item() == pytest.approx(1 / (1 + math.exp(-7 / 169)), abs=1e-12)


def test_procrc_solves_the_objective_with_every_class_term_and_probabilities_sum_to_one() -> None:
    # the official block-diagonal form equals the normal equations of ‖y − Xᵀα‖² + λ‖α‖² + γ Σ_k ‖X̄_kᵀα‖², K = 3
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(9, 5, generator=gen, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2])
    lam, gamma = 0.3, 0.7
    system = x @ x.T + lam * torch.eye(9, dtype=torch.float64)
    for k in range(3):
        xk = x * (labels != k)[:, None]  # X̄_k: the atoms of class k set to zero
        system += gamma * xk @ xk.T
    y = torch.randn(4, 5, generator=gen, dtype=torch.float64)
    expected = torch.linalg.solve(system, x @ y.T).T
    proj = procrc_projection(x, labels, 3, lam, gamma)
    torch.testing.assert_close(y @ proj.T, expected)
    logp = procrc_log_prob(procrc_residuals(y, x, labels, proj, 3))
    torch.testing.assert_close(logp.exp().sum(1), torch.ones(4, dtype=torch.float64))


def test_procrc_classifies_a_separable_toy_set_perfectly() -> None:
    gen = torch.Generator().manual_seed(1)
    centres = torch.randn(2, 16, generator=gen) * 3

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.arange(n) % 2
        return F.normalize(centres[y] + 0.3 * torch.randn(n, 16, generator=gen), dim=1), y

    x_tr, y_tr = draw(40)
    x_te, y_te = draw(30)
    proj = procrc_projection(x_tr, y_tr, 2, 1e-2, 1e-2)
    pred = procrc_residuals(x_te, x_tr, y_tr, proj, 2).argmin(1)
    assert torch.equal(pred, y_te)


def test_procrc_refuses_bad_input() -> None:
    x = torch.ones(3, 2)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 1\], got \[0, 2\]"):
        procrc_projection(x, torch.tensor([0, 1, 2]), 2, 1e-2, 1e-2)
    with pytest.raises(ValueError, match="lambda > 0"):
        procrc_projection(x, torch.tensor([0, 1, 1]), 2, 0.0, 1e-2)
    with pytest.raises(ValueError, match=r"labels must be \(3,\)"):
        procrc_projection(x, torch.tensor([0, 1]), 2, 1e-2, 1e-2)


# ----------------------------------------------------------------------------------------------------------- DCNN

@pytest.fixture(scope="module")
def dcnn():
    from emdlib.baselines.dcnn import DCNN

    torch.manual_seed(0)
    return DCNN(input_size=64, max_dictionary=3)


def _batch(n: int = 4, size: int = 64, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {"image": torch.rand(n, 3, size, size, generator=gen) * 2 - 1, "label": torch.arange(n) % 2}


def test_published_parameter_counts() -> None:
    from emdlib.baselines.dcnn import parameter_counts

    counts = parameter_counts()
    assert counts == {"alexnet": 61_100_840, "vgg19": 143_667_240}
    assert [round(c / 1e6, 1) for c in counts.values()] == [61.1, 143.7]  # AlexNet and VGG-19 as published


def test_dcnn_output_contract_before_the_classifier_is_fitted(dcnn) -> None:
    dcnn.eval()
    with torch.no_grad():
        out = dcnn(_batch()["image"])
    assert isinstance(out, DetectorOutput) and out.mask_logits is None and out.logits.shape == (4, 2)
    a, v = out.extras["alexnet_logits"], out.extras["vgg19_logits"]
    assert a.shape == v.shape == (4, 2)
    torch.testing.assert_close(out.logits, (F.log_softmax(a, 1) + F.log_softmax(v, 1)) / 2)
    assert not dcnn.classifier_fitted and dcnn.spec()["kwargs"]["dictionary_size"] == 0
    # the published networks less their 1000-class FC-8 (4096·1000 + 1000) plus 2-class heads (4096·2 + 2)
    heads = -4_097_000 + 8_194
    assert sum(p.numel() for p in dcnn.parameters()) == (61_100_840 + heads) + (143_667_240 + heads)
    feats = dcnn.features(_batch()["image"])
    assert feats.shape == (4, 8192)
    torch.testing.assert_close(feats.norm(dim=1), torch.ones(4))


def test_fine_tuning_overfits_a_tiny_batch() -> None:
    from emdlib.baselines.dcnn import DCNN
    from emdlib.train import compute_loss, forward, make_optimizer, train_step

    torch.manual_seed(0)
    model = DCNN(input_size=64).train()
    for m in model.modules():  # no dropout: memorising 4 images is the point here
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    batch = _batch()
    batch["image"] = 0.3 * batch["image"] + (batch["label"].float() - 0.5).view(-1, 1, 1, 1)  # fakes brighter
    opt = make_optimizer(model.trainable_parameters(), "adam", 1e-4)
    first = train_step(model, batch, opt)
    for _ in range(5):
        train_step(model, batch, opt)
    with torch.no_grad():
        out = forward(model, batch)
        last = compute_loss(model, out, batch)[1]
    # both networks learn (random-init VGG-19, with no BatchNorm, the slower); AlexNet already fits the batch
    assert last["loss"] < 0.7 * first["loss"], (first, last)
    assert last["loss_alexnet"] < 0.5 * first["loss_alexnet"] and last["loss_vgg19"] < first["loss_vgg19"]
    assert torch.equal(out.extras["alexnet_logits"].argmax(1), batch["label"])


def test_fit_classifier_caps_the_dictionary_and_forward_then_uses_procrc(dcnn) -> None:
    batches = [_batch(4, seed=1), _batch(4, seed=2)]  # 4 images of each class; max_dictionary = 3
    assert dcnn.fit_classifier(batches) is True
    assert dcnn.dictionary.shape == (6, 8192)
    assert torch.equal(torch.bincount(dcnn.dictionary_labels), torch.tensor([3, 3]))
    assert dcnn.spec()["kwargs"]["dictionary_size"] == 6
    dcnn.eval()
    with torch.no_grad():
        out = dcnn(_batch(seed=3)["image"])
    r = out.extras["procrc_residuals"]
    assert r.shape == (4, 2)
    torch.testing.assert_close(out.logits, procrc_log_prob(r))
    torch.testing.assert_close(out.prob + torch.softmax(out.logits, 1)[:, 0], torch.ones(4))
    with pytest.raises(ValueError, match="both classes"):
        dcnn.fit_classifier([{"image": _batch()["image"], "label": torch.zeros(4, dtype=torch.long)}])


def test_a_fitted_dcnn_round_trips_through_the_registry(dcnn, tmp_path) -> None:
    from emdlib.registry import model_from_checkpoint, save_detector

    if not dcnn.classifier_fitted:
        dcnn.fit_classifier([_batch(4, seed=1)])
    path = tmp_path / "dcnn.safetensors"
    save_detector(path, dcnn, 64, spec=dcnn.spec())
    rebuilt, meta = model_from_checkpoint(path)
    assert meta["model"]["kwargs"]["dictionary_size"] == dcnn.dictionary.shape[0] and rebuilt.classifier_fitted
    dcnn.eval()
    image = _batch(seed=4)["image"]
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(image).logits, dcnn(image).logits, rtol=0, atol=0)
    # a model built before fitting (as the training loop's) takes the fitted state too, resizing the classifier
    from emdlib.baselines.dcnn import DCNN

    fresh = DCNN(input_size=64).eval()
    fresh.load_state_dict(dcnn.state_dict())
    assert fresh.classifier_fitted and torch.equal(fresh.projection, dcnn.projection)


def test_pretrained_weights_from_a_folder_must_fit(tmp_path) -> None:
    from emdlib.baselines.dcnn import DCNN

    with pytest.raises(FileNotFoundError, match="alexnet"):
        DCNN(input_size=64, pretrained=str(tmp_path))


# ------------------------------------------------------------------------------------------- the study calls it

class _Fitted(DetectorNet):
    """A tiny detector whose classifier 'fit' counts the images it is given (into a tensor of its state)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2)
        self.register_buffer("fitted_on", torch.zeros(()))
        self.flipped: list[bool] = []

    def forward(self, image, fer_image=None):
        return DetectorOutput(logits=self.lin(image.mean((2, 3))))

    def fit_classifier(self, batches) -> bool:
        for b in batches:
            self.fitted_on += len(b["label"])
            self.flipped.append(bool(b["flipped"].any()))
        return True

    def spec(self):
        return {"name": "fake", "kwargs": {"fitted_on": int(self.fitted_on)}}


class _Faces(torch.utils.data.Dataset):
    def __init__(self, n: int, augment: bool = False) -> None:
        self.n, self.augment = n, augment

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        return {"image": torch.full((3, 8, 8), float(i % 2)), "label": i % 2, "flipped": self.augment,
                "method": "Face2Face", "compression": "c23", "video": f"{i:03d}", "frame": i}


def test_run_torch_fits_the_classifier_on_the_unaugmented_split_and_resaves_the_best_checkpoint(monkeypatch,
                                                                                                 tmp_path) -> None:
    from emdlib import registry
    from emdlib.checkpoint import load_checkpoint
    from emdlib.study import experiments
    from emdlib.train import TrainConfig

    # the re-saved spec is checked against the registry as any sidecar is
    monkeypatch.setitem(registry.MODELS, "fake", registry.Entry("tests.test_dcnn:_Fitted", {"fitted_on": registry.INT}))
    model = _Fitted()
    monkeypatch.setattr(experiments, "build_system", lambda study, system: (model, {"name": "fake", "kwargs": {}}))
    monkeypatch.setattr(experiments, "train_config", lambda system, preset, seed=0: TrainConfig(
        warmup_epochs=0, epochs=1, batch_size=4, optimizer="sgd", lr=0.1, image_size=8))
    study = SimpleNamespace(preset=None, device="cpu", paths=SimpleNamespace(run_checkpoints=tmp_path))
    train = _Faces(6, augment=True)
    sets = {"train": train, "val": _Faces(4), "test": _Faces(4)}
    pred, info, ckpt = experiments._run_torch(study, experiments.SYSTEMS["DCNN"], sets, "run", 0)
    assert model.flipped == [False, False] and train.augment  # a copy without flips; the split itself untouched
    state, meta = load_checkpoint(ckpt)
    assert state["fitted_on"].item() == 6 and meta["model"] == {"name": "fake", "kwargs": {"fitted_on": 6}}
    assert meta["kind"] == "best" and meta["epoch"] == 1  # the sidecar's training metadata is kept
    assert len(pred["prob"]) == 4


def test_imagenet_weights_offline_fail_clearly(monkeypatch) -> None:
    from torchvision.models._api import WeightsEnum

    from emdlib.baselines.dcnn import DCNN

    def offline(self, *args, **kwargs):
        raise OSError("offline")

    monkeypatch.setattr(WeightsEnum, "get_state_dict", offline)
    with pytest.raises(RuntimeError, match=r"torchvision 'alexnet' could not be downloaded \(OSError: offline\). "
                                           r"Give a local folder holding alexnet\.pth"):
        DCNN(input_size=64, pretrained=True)


def test_the_study_builds_dcnn_from_its_recipe_and_the_preset() -> None:
    from emdlib.presets import get_preset
    from emdlib.study.experiments import SYSTEMS, baseline_kwargs, initial_weights

    procrc = {"procrc_lambda": 1e-2, "procrc_gamma": 1e-2, "max_dictionary": 4000}
    assert baseline_kwargs(SYSTEMS["DCNN"], get_preset("tiny")) == {"input_size": 64, **procrc, "pretrained": False}
    assert baseline_kwargs(SYSTEMS["DCNN"], get_preset("paper")) == {"input_size": 224, **procrc, "pretrained": True}
    assert initial_weights(get_preset("paper"), SYSTEMS["DCNN"])["source"] == "torchvision"
