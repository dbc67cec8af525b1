"""Face X-ray (emdlib.baselines.face_xray) and its blended faces (emdlib.data.blending): the X-ray and blend maths by
hand, the hull kinds, deformation and feathering, the landmark neighbours, the training set made from real faces
(keys, labels, determinism, DataLoader workers, faces without landmarks), the network's output contract and sizes,
the loss by hand, a tiny batch overfitted by emdlib.train, the registry round trip, the recipe, the preset's
backbone, and the generic ``training_data`` hook the study trains through."""

from __future__ import annotations

import math
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from emdlib.baselines.face_xray import (BACKBONE, LAMBDA, SMALL_BACKBONE, FaceXray, XrayClassifier, backbone_for,
                                        xray_loss)
from emdlib.data import blending
from emdlib.data.blending import (BLENDED, HULL_KINDS, BlendedFaces, blend, deform_mask, face_xray, feather_mask,
                                  hull_region, nearest_faces)
from emdlib.data.synth import expression_params, render_face, sample_identity
from emdlib.data.transforms import esr_input, to_tensor, xception_input
from emdlib.models.detector import DetectorNet, DetectorOutput
from test_baselines import make_batch

torch.set_num_threads(1)
SIZE = 64


def synth_face(identity: int, expression: str = "neutral") -> tuple[np.ndarray, np.ndarray]:
    """A rendered 64-px face and its 68 landmarks (emdlib.data.synth)."""
    ident = sample_identity(np.random.default_rng(identity))
    return render_face(ident, expression_params(expression), SIZE)


class Faces(Dataset):
    """ManipulationDataset-like items of rendered faces: ``videos`` name the identities; a ``None`` video is a fake;
    ``"blank"`` a real frame without a face."""

    def __init__(self, videos, augment=False):
        self.videos, self.augment = list(videos), augment
        self.labels = np.array([1 if v is None else 0 for v in self.videos])

    def __len__(self):
        return len(self.videos)

    def __getitem__(self, i):
        v = self.videos[i]
        if v == "blank":
            image = np.full((SIZE, SIZE, 3), 128, np.uint8)
        else:
            image = synth_face(int(v or 0), ("neutral", "happy")[i % 2])[0]
        rgb01 = to_tensor(image)
        return {"image": xception_input(rgb01), "fer_image": esr_input(rgb01), "mask": torch.zeros(1, SIZE, SIZE),
                "label": torch.tensor(int(v is None)), "method": "Face2Face" if v is None else "original",
                "compression": "c23", "video": str(v), "frame": i}


# --- the X-ray, the blend, the masks ---------------------------------------------------------------------------


def test_xray_is_4m_1_minus_m():
    np.testing.assert_allclose(face_xray(np.array([0.0, 0.25, 0.5, 1.0])), [0.0, 0.75, 1.0, 0.0])


def test_blend_by_hand():
    fg, bg = np.full((2, 2, 3), 200, np.uint8), np.full((2, 2, 3), 100, np.uint8)
    m = np.array([[0.0, 0.25], [0.5, 1.0]], np.float32)
    np.testing.assert_array_equal(blend(fg, bg, m)[..., 0], [[100, 125], [150, 200]])
    with pytest.raises(ValueError, match="must match"):
        blend(fg, bg, np.zeros((3, 3), np.float32))


def test_hull_kinds_nest_as_described():
    _, lms = synth_face(1)
    shape = (SIZE, SIZE)
    masks = {k: hull_region(lms, shape, k) > 0 for k in HULL_KINDS}
    assert all(m.sum() > 20 for m in masks.values())
    outside = lambda a, b: (masks[a] & ~masks[b]).sum() / masks[a].sum()  # noqa: E731 (share of a outside b)
    assert outside("face", "extended") < 0.02 and masks["extended"].sum() > masks["face"].sum()
    assert outside("inner", "face") < 0.02 and outside("components", "inner") < 0.05
    assert masks["components"].sum() < masks["inner"].sum() < masks["face"].sum()
    with pytest.raises(ValueError, match="unknown hull kind 'ears'"):
        hull_region(lms, shape, "ears")
    with pytest.raises(ValueError, match=r"expected \(68, 2\) landmarks"):
        hull_region(lms[:5], shape, "face")


def test_deformation_is_seeded_and_feathering_is_soft():
    _, lms = synth_face(2)
    region = hull_region(lms, (SIZE, SIZE), "face")
    a, b = (deform_mask(region, np.random.default_rng(7)) for _ in range(2))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, deform_mask(region, np.random.default_rng(8)))
    assert 0.5 < (a > 0).sum() / (region > 0).sum() < 1.5
    empty = np.zeros_like(region)
    assert deform_mask(empty, np.random.default_rng(0)) is empty
    m = feather_mask(region, np.random.default_rng(0))
    assert m.dtype == np.float32 and m.min() >= 0 and m.max() <= 1
    cy, cx = np.argwhere(region > 0).mean(0).round().astype(int)
    assert m[cy, cx] > 0.99 and m[0, 0] == 0  # inside: the foreground; far outside: the background
    xray = face_xray(m)
    assert xray.max() > 0.9 and xray[cy, cx] < 0.05  # the boundary, not the region


def test_nearest_faces_skip_the_same_video():
    lms = np.zeros((4, 68, 2))
    lms += np.array([0.0, 1.0, 3.0, 10.0])[:, None, None]  # every coordinate shifted: distances |a − b|·√136
    out = nearest_faces(lms, ["a", "a", "b", "b"], k=3)
    np.testing.assert_array_equal(out, [[2, 3, -1], [2, 3, -1], [1, 0, -1], [1, 0, -1]])
    np.testing.assert_array_equal(nearest_faces(lms, ["a", "b", "c", "d"], k=1, chunk=3), [[1], [0], [1], [2]])


# --- the training set of blended real faces ------------------------------------------------------------------


@pytest.fixture(scope="module")
def blended():
    real = Faces(["1", "1", "2", "2", None, "3", "blank", "3"])
    return real, BlendedFaces(real, seed=0)


def test_blended_faces_keep_the_items_contract(blended):
    real, data = blended
    assert data.skipped == [{"index": 6, "video": "blank", "frame": 6}]  # dlib found no face: recorded, left out
    assert len(data) == 6 and data.labels.sum() == 3  # the fake (index 4) is not used; half blended
    np.testing.assert_array_equal(data.index, [0, 1, 2, 3, 5, 7])
    for i in range(len(data)):
        item, base = data[i], real[int(data.index[i])]
        assert item.keys() == base.keys()
        assert item["image"].shape == base["image"].shape and item["fer_image"].shape == base["fer_image"].shape
        assert item["mask"].shape == (1, SIZE, SIZE) and 0 <= item["mask"].min() and item["mask"].max() <= 1
        if data.blended[i]:
            assert int(item["label"]) == 1 and item["method"] == BLENDED and item["video"] == base["video"]
            assert item["mask"].max() > 0.5 and not torch.equal(item["image"], base["image"])
        else:
            assert int(item["label"]) == 0 and item["mask"].max() == 0 and torch.equal(item["image"], base["image"])


def test_blended_faces_depend_only_on_seed_and_index(blended):
    real, data = blended
    i = int(np.flatnonzero(data.blended)[0])
    again = BlendedFaces(real, seed=0)
    assert torch.equal(data[i]["image"], again[i]["image"]) and torch.equal(data[i]["mask"], again[i]["mask"])
    other = BlendedFaces(real, seed=1)
    assert not np.array_equal(other.blended, data.blended) or not torch.equal(other[i]["mask"], data[i]["mask"])
    loaded = next(iter(DataLoader(data, batch_size=len(data), num_workers=1)))  # items pickled to a worker
    assert torch.equal(loaded["image"], torch.stack([data[k]["image"] for k in range(len(data))]))
    in_workers = BlendedFaces(real, seed=0, workers=2)  # the landmark pass in DataLoader workers
    np.testing.assert_array_equal(in_workers.landmarks, data.landmarks)
    assert in_workers.skipped == data.skipped and np.array_equal(in_workers.index, data.index)


def test_blended_faces_refuse_flipped_or_single_video_sets(monkeypatch):
    with pytest.raises(ValueError, match="must not be flipped"):
        BlendedFaces(Faces(["1", "2"], augment=True))
    with pytest.raises(ValueError, match="fraction 2"):
        BlendedFaces(Faces(["1", "2"]), fraction=2)
    monkeypatch.setattr(blending, "detect_landmarks", lambda image: synth_face(1)[1])
    with pytest.raises(ValueError, match=r"at least two videos with landmarks, got 2 faces of 1 video"):
        BlendedFaces(Faces(["1", "1"]))


# --- the network and its loss ----------------------------------------------------------------------------------


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_output_contract_at_the_shared_input_size():
    model = FaceXray(SMALL_BACKBONE, input_size=32).eval()  # the network at 32 px, the shared input at 64
    with torch.no_grad():
        out = model(make_batch(2, SIZE)["image"])
    assert isinstance(out, DetectorOutput) and out.logits.shape == (2, 2)
    assert out.mask_logits.shape == (2, 1, SIZE, SIZE) and out.extras["xray"].shape == (2, 1, SIZE, SIZE)
    torch.testing.assert_close(out.extras["xray"], torch.sigmoid(out.mask_logits))
    with pytest.raises(ValueError, match="at least 32 px"):
        FaceXray(SMALL_BACKBONE, input_size=16)
    model.train()
    batch = make_batch(2, SIZE)
    model.compute_loss(model(batch["image"]), batch)[0].backward()  # data parallel needs no unused parameters
    assert [n for n, p in model.named_parameters() if p.grad is None] == []


def test_landmarks_of_small_and_large_crops():
    image, truth = synth_face(3)
    found = blending.detect_landmarks(image)  # 64 px: one up-sampling
    assert found.shape == (68, 2) and np.abs(found - truth).mean() < 3
    big = cv2.resize(image, (192, 192), interpolation=cv2.INTER_LINEAR)  # ≥ NO_UPSAMPLE_CROP: none
    assert np.abs(blending.detect_landmarks(big) - truth * 3).mean() < 9
    assert blending.detect_landmarks(np.full((SIZE, SIZE, 3), 128, np.uint8)) is None


def test_parameter_counts():
    small = FaceXray(SMALL_BACKBONE, input_size=SIZE)
    # 1×1 conv over 16 + 32 + 64 + 128 = 240 channels (+ bias), FC 1 → 2
    assert n_params(small.head) == 241 and n_params(small.classifier) == 4
    assert n_params(small) == 1_477_920 + 245
    paper = FaceXray(BACKBONE)
    assert n_params(paper.head) == 48 + 96 + 192 + 384 + 1
    assert n_params(paper) == 65_325_120 + 725  # timm hrnet_w48's four branches + the heads


def test_classifier_reads_the_mean_xray():
    head = XrayClassifier()
    with torch.no_grad():
        head.fc.weight.copy_(torch.tensor([[0.0], [2.0]]))
        head.fc.bias.copy_(torch.tensor([0.0, -1.0]))
    xray = torch.zeros(1, 1, 4, 4)
    xray[0, 0, :2] = 1.0  # mean 0.5
    torch.testing.assert_close(head(xray), torch.tensor([[0.0, 0.0]]))


def test_loss_by_hand():
    a, b = 0.7, 0.25  # X-ray logit everywhere, X-ray target everywhere
    out = DetectorOutput(logits=torch.tensor([[0.0, 0.0], [1.0, -1.0]]), mask_logits=torch.full((2, 1, 3, 3), a))
    batch = {"label": torch.tensor([1, 0]), "mask": torch.full((2, 1, 3, 3), b)}
    loss, parts = xray_loss(out, batch)
    s = 1 / (1 + math.exp(-a))
    cls = (math.log(2) + math.log(1 + math.exp(-2))) / 2
    bce = -(b * math.log(s) + (1 - b) * math.log(1 - s))
    assert float(parts["loss_cls"]) == pytest.approx(cls, rel=1e-6)
    assert float(parts["loss_xray"]) == pytest.approx(bce, rel=1e-6)
    assert float(loss) == pytest.approx(cls + LAMBDA * bce, rel=1e-6)
    with pytest.raises(ValueError, match=r"X-ray target shape \(2, 1, 2, 2\)"):
        xray_loss(out, {**batch, "mask": torch.zeros(2, 1, 2, 2)})


def test_overfits_a_tiny_batch():
    from emdlib.train import train_step

    torch.manual_seed(0)
    model = FaceXray(SMALL_BACKBONE, input_size=32)  # 64-px batch, 32-px network: a quarter of the compute
    batch = make_batch(4, SIZE)
    batch["mask"] = torch.from_numpy(face_xray(np.stack([feather_mask((m[0].numpy() * 255).astype(np.uint8),
                                                                      np.random.default_rng(0))
                                                         for m in batch["mask"]])))[:, None]
    # the classifier reads one number, the mean X-ray: Adam moves its weight and bias by about lr a step, so the
    # tiny batch takes a larger rate than the recipe's 2e-4 to be separated in a few steps
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = train_step(model, batch, opt)["loss"]
    for _ in range(60):
        parts = train_step(model, batch, opt)
    assert parts["loss"] < 0.1 * first
    model.eval()
    with torch.no_grad():
        out = model(batch["image"])
    assert torch.equal(out.logits.argmax(1), batch["label"])


# --- registry, recipe, presets and the study's hook -----------------------------------------------------------


def test_registry_round_trip(tmp_path):
    from emdlib.registry import build_model, model_from_checkpoint, model_spec, save_detector

    torch.manual_seed(0)
    model = build_model("face_xray", backbone=SMALL_BACKBONE, input_size=SIZE).eval()
    spec = model_spec("face_xray", backbone=SMALL_BACKBONE, input_size=SIZE)
    path = tmp_path / "best.safetensors"
    save_detector(path, model, SIZE, spec)
    again, _ = model_from_checkpoint(path)
    x = make_batch(2, SIZE)["image"]
    with torch.no_grad():
        torch.testing.assert_close(again(x).mask_logits, model(x).mask_logits)
    assert again.backbone_name == SMALL_BACKBONE and again.input_size == SIZE


def test_recipe_and_preset_arguments():
    from emdlib.presets import get_preset
    from emdlib.recipes import recipe_for, scale_epochs
    from emdlib.study import experiments

    recipe = recipe_for("face_xray")
    assert recipe.sized_input and not recipe.augments and recipe.input_size.value == 256
    assert recipe.optimizer_settings()["lr"] == 2e-4 and recipe.batch_size.value == 32
    assert scale_epochs(recipe, get_preset("cpu").emd) == (0, 6)
    system = experiments.SYSTEMS["Face X-ray"]
    assert system.kind == "face_xray" and system.fer is None
    assert experiments.baseline_kwargs(system, get_preset("cpu")) == {
        "input_size": 64, "backbone": SMALL_BACKBONE, "pretrained": False}
    assert experiments.baseline_kwargs(system, get_preset("paper")) == {
        "input_size": 256, "backbone": BACKBONE, "pretrained": True}
    assert backbone_for(299) == BACKBONE and backbone_for(255) == SMALL_BACKBONE
    assert experiments.initial_weights(get_preset("paper"), system) == {"source": "timm", "model": BACKBONE}


class _Sentinel(Exception):
    pass


def test_the_study_trains_on_the_networks_training_data(monkeypatch, tmp_path):
    from emdlib import train
    from emdlib.presets import get_preset
    from emdlib.study import experiments

    class Net(DetectorNet):
        def training_data(self, dataset, seed):
            return ("made from", dataset, seed)

    seen = {}

    def fake_fit(model, train_data, val_data, *args, **kwargs):
        seen.update(train=train_data, val=val_data)
        raise _Sentinel

    monkeypatch.setattr(experiments, "build_system", lambda study, system: (Net(), {"name": "x", "kwargs": {}}))
    monkeypatch.setattr(train, "fit", fake_fit)
    study = SimpleNamespace(device="cpu", preset=get_preset("tiny"), paths=SimpleNamespace(run_checkpoints=tmp_path))
    sets = {"train": "train split", "val": "val split", "test": "test split"}
    with pytest.raises(_Sentinel):
        experiments._run_torch(study, experiments.SYSTEMS["Face X-ray"], sets, "run", seed=3)
    assert seen == {"train": ("made from", "train split", 3), "val": "val split"}
    assert DetectorNet().training_data(sets["train"], 0) == "train split"  # every other system: the split itself


def test_face_xray_trains_on_blended_real_faces(blended):
    real, _ = blended
    data = FaceXray(SMALL_BACKBONE, input_size=SIZE).training_data(real, seed=0)
    assert isinstance(data, BlendedFaces) and data.real is real and data.seed == 0
