"""FER training (Eq. 1), evaluation, checkpoints, and the expression-set loaders (AffectNet CSV, CK+ folders)."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from emdlib.checkpoint import sidecar_path
from emdlib.data.expressions import (
    CKPLUS_CLASSES,
    EXPRESSIONS,
    ExpressionDataset,
    ExpressionSample,
    affectnet_samples,
    class_index,
    folder_samples,
    subject_id,
    subject_split,
)
from emdlib.io import read_json
from emdlib.models.esr import ESR, FERStream
from emdlib.models.simfer import SimFER
from emdlib.registry import model_from_checkpoint
from emdlib.train_fer import FERTrainConfig, evaluate, fer_augmentation, fer_loss, train_fer

# ---------------------------------------------------------------- Eq. 1 and evaluation


def test_fer_loss_is_sum_of_branch_cross_entropies():
    logits = torch.zeros(4, 3, 8)  # uniform: each branch CE = ln 8
    assert math.isclose(fer_loss(logits, torch.arange(4)).item(), 3 * math.log(8), rel_tol=1e-6)
    logits = torch.randn(5, 2, 8)
    y = torch.randint(0, 8, (5,))
    ref = sum(torch.nn.functional.cross_entropy(logits[:, b], y) for b in range(2))
    assert torch.allclose(fer_loss(logits, y), ref)


class TableModel(FERStream):
    """Returns fixed logits looked up by the index written in pixel (0, 0, 0) of each input."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = table
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    @property
    def num_branches(self) -> int:
        return self.table.shape[1]

    def branch_outputs(self, x):
        logits = self.table[x[:, 0, 0, 0].long()]
        return torch.zeros(len(x), self.num_branches, 1, 1, 1), logits


def test_evaluate_per_branch_ensemble_and_confusion():
    onehot = torch.eye(8) * 5
    # 3 branches; (votes) -> ensemble: (1,1,2)->1, (0,3,3)->3, (5,4,6)->4 (3-way tie, lowest index), (2,2,2)->2
    votes = [(1, 1, 2), (0, 3, 3), (5, 4, 6), (2, 2, 2)]
    table = torch.stack([torch.stack([onehot[v] for v in row]) for row in votes])
    labels = torch.tensor([1, 3, 5, 0])
    x = torch.zeros(4, 3, 2, 2)
    x[:, 0, 0, 0] = torch.arange(4).float()
    m = evaluate(TableModel(table), TensorDataset(x, labels), batch_size=3)
    assert m["n"] == 4
    assert m["branch_accuracy"] == [0.5, 0.5, 0.25]  # branch 0: 1, 5 right; branch 1: 1, 3; branch 2: 3
    assert m["ensemble_accuracy"] == 0.5  # 1 and 3 right, 4 != 5, 2 != 0
    cm = np.array(m["confusion"])
    assert cm.shape == (8, 8) and cm.sum() == 4
    assert cm[1, 1] == cm[3, 3] == cm[5, 4] == cm[0, 2] == 1
    assert m["class_names"] == list(EXPRESSIONS)


# ---------------------------------------------------------------- loaders


def test_class_names_map_to_affectnet_indices():
    assert CKPLUS_CLASSES == {"anger": 6, "contempt": 7, "disgust": 5, "fear": 4, "happy": 1, "sadness": 2,
                              "surprise": 3}
    assert [class_index(n) for n in ("angry", "sad", "Neutral", "surprised")] == [6, 2, 0, 3]
    with pytest.raises(KeyError, match="unknown expression class"):
        class_index("bored")


def test_ckplus_folder_loader_and_subject_split(shared):
    root = shared / "data" / "ckplus48"
    if not root.is_dir():
        pytest.skip(f"{root} not found")
    samples = folder_samples(root)
    for s in samples:
        assert s.label == CKPLUS_CLASSES[s.path.parent.name]
    counts = np.bincount([s.label for s in samples], minlength=8)
    for name, idx in CKPLUS_CLASSES.items():
        assert counts[idx] == len(list((root / name).glob("*.png")))
    assert counts[0] == 0  # CK+ folders have no neutral class
    assert subject_id(Path("S010_004_00000017.png")) == "S010"

    parts = subject_split(samples, (0.7, 0.15, 0.15), seed=3)
    subjects = {k: {subject_id(s.path) for s in v} for k, v in parts.items()}
    assert not subjects["train"] & subjects["val"] and not subjects["train"] & subjects["test"]
    assert not subjects["val"] & subjects["test"]
    assert sum(len(v) for v in parts.values()) == len(samples) and all(parts.values())
    n_sub = len(set().union(*subjects.values()))
    assert abs(len(subjects["train"]) - 0.7 * n_sub) <= 1
    assert subject_split(samples, seed=3) == parts  # deterministic

    ds = ExpressionDataset(parts["test"][:5])
    x, y = ds[0]
    assert x.shape == (3, 96, 96) and x.dtype == torch.float32 and y.dtype == torch.long
    assert 0 <= x.min() and x.max() <= 1
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])  # 48 px grey -> 3 equal channels


def test_folder_loader_rejects_unknown_class(tmp_path):
    (tmp_path / "bored").mkdir()
    cv2.imwrite(str(tmp_path / "bored" / "a.png"), np.zeros((8, 8), np.uint8))
    with pytest.raises(ValueError, match="bored"):
        folder_samples(tmp_path)
    with pytest.raises(ValueError, match="no images"):
        folder_samples(tmp_path, ignore_unknown=True)


def test_affectnet_csv_loader_keeps_eight_classes_and_crops_the_box(tmp_path):
    h, w = 40, 60
    rgb = np.zeros((h, w, 3), np.uint8)
    rgb[...] = (0, 255, 0)  # green background
    box = dict(face_x=10, face_y=5, face_width=20, face_height=30)  # x = column, y = row
    rgb[5:35, 10:30] = (255, 0, 0)  # red face
    (tmp_path / "imgs" / "1").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "imgs" / "1" / "a.jpg"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                [cv2.IMWRITE_JPEG_QUALITY, 100])
    rows = ["subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,expression,valence,arousal"]
    for expr in (0, 7, 8, 9, 10, 3):
        rows.append(f'1/a.jpg,{box["face_x"]},{box["face_y"]},{box["face_width"]},{box["face_height"]},'
                    f'"1.0;2.0",{expr},0.1,-0.2')
    csv = tmp_path / "training.csv"
    csv.write_text("\n".join(rows) + "\n")
    samples = affectnet_samples(csv, tmp_path / "imgs")
    assert [s.label for s in samples] == [0, 7, 3]
    x, y = ExpressionDataset(samples)[1]
    assert y.item() == 7 and x.shape == (3, 96, 96)
    inner = x[:, 8:-8, 8:-8]  # away from JPEG ringing at the border
    assert inner[2].min() > 0.9  # red lands in channel 2: BGR
    assert inner[1].max() < 0.1 and inner[0].max() < 0.1  # no green background: the box was cropped

    bad = tmp_path / "bad.csv"
    bad.write_text("subDirectory_filePath,expression\n1/a.jpg,1\n")
    with pytest.raises(ValueError, match="bad.csv.*face_x"):
        affectnet_samples(bad, tmp_path)
    with pytest.raises(ValueError, match="missing.jpg"):
        ExpressionDataset([ExpressionSample(tmp_path / "missing.jpg", 1)])[0]


# ---------------------------------------------------------------- training and checkpoints


def make_folder_set(root: Path, per_class: int = 3, size: int = 32) -> Path:
    """A tiny class-per-folder set: class k is a bright horizontal band at row 4k (learnable, cheap)."""
    rng = np.random.default_rng(0)
    for k, name in enumerate(EXPRESSIONS):
        d = root / name
        d.mkdir(parents=True)
        for i in range(per_class):
            img = (rng.random((size, size)) * 60).astype(np.uint8)
            img[4 * k:4 * k + 4] = 255
            cv2.imwrite(str(d / f"S{i:03d}_{k}.png"), img)
    return root


def test_augmentation_keeps_shape_and_range():
    torch.manual_seed(0)
    x = torch.rand(3, 96, 96)
    y = fer_augmentation()(x)
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1 and not torch.equal(x, y)


def test_trained_esr_checkpoint_round_trip(tmp_path):
    root = make_folder_set(tmp_path / "set")
    ds = ExpressionDataset(folder_samples(root), size=64, preload=True)
    torch.manual_seed(0)
    model = ESR(num_branches=2)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = FERTrainConfig(epochs=2, batch_size=12, lr=0.01, device="cpu")
    ckpt = tmp_path / "ckpt" / "esr.safetensors"
    summary = train_fer(model, ds, ds, cfg, checkpoint=ckpt)
    assert ds.transform is None  # augmentation was set for training only
    assert [r["epoch"] for r in summary["history"]] == [1, 2]
    assert not torch.equal(model.state_dict()["branches.1.fc.weight"], init["branches.1.fc.weight"])
    meta = read_json(sidecar_path(ckpt))
    assert meta["model"] == {"name": "esr", "kwargs": {"num_branches": 2, "num_classes": 8}}
    assert meta["class_names"] == list(EXPRESSIONS) and meta["input_convention"]["channels"] == "BGR"
    assert 0 <= meta["metrics"]["ensemble_accuracy"] <= 1 and len(meta["metrics"]["branch_accuracy"]) == 2
    loaded, meta2 = model_from_checkpoint(ckpt)
    model.eval()
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    x = torch.stack([ds[i][0] for i in range(4)])
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert evaluate(loaded, ds)["ensemble_accuracy"] == meta["metrics"]["ensemble_accuracy"]


def test_grow_schedule_trains_branches_in_phases(tmp_path):
    root = make_folder_set(tmp_path / "set", per_class=2)
    ds = ExpressionDataset(folder_samples(root), size=64, preload=True)
    torch.manual_seed(0)
    model = ESR(num_branches=2)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = FERTrainConfig(schedule="grow", first_epochs=1, branch_epochs=1, batch_size=16, lr=0.01, device="cpu")
    summary = train_fer(model, ds, ds, cfg)
    assert [r["phase"] for r in summary["history"]] == ["branch 1/2", "branch 2/2"]
    assert len(summary["history"][0]["val_branch_accuracy"]) == 1  # phase 1 validates branch 1 alone
    assert len(summary["best_val"]["branch_accuracy"]) == 2
    for k in ("base.conv1.weight", "branches.0.conv1.weight", "branches.1.conv1.weight"):
        assert not torch.equal(model.state_dict()[k], init[k]), k


def test_simfer_trains_and_round_trips(tmp_path):
    root = make_folder_set(tmp_path / "set", per_class=2)
    ds = ExpressionDataset(folder_samples(root), size=96, preload=True)
    torch.manual_seed(0)
    model = SimFER()
    ckpt = tmp_path / "simfer.safetensors"
    train_fer(model, ds, ds, FERTrainConfig(epochs=1, batch_size=8, lr=0.01, device="cpu"), checkpoint=ckpt)
    loaded, meta = model_from_checkpoint(ckpt)
    assert isinstance(loaded, SimFER) and meta["model"] == {"name": "simfer", "kwargs": {"num_classes": 8}}
    x = torch.stack([ds[i][0] for i in range(3)])
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
