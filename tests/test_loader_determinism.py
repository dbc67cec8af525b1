"""Deterministic DataLoader workers (issue 14, deliverable 3), on the CPU.

With ``flip_rng="sampler"`` the flips are drawn in the main process (:class:`emdlib.data.datasets.FlipSampler`): the
training batches of two epochs (images, masks, labels, flips) and a short fit (history, checkpoint, predictions) are
the same with 0 and 2 persistent workers, and a resumed run ends where an uninterrupted one does. With ``"global"``
(tiny, cpu: the committed results) the batches are those the code gave before the setting existed.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from torch.utils.data import DistributedSampler

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_distributed import BNFree  # noqa: E402
from test_datasets import cache  # noqa: E402,F401  (fixture: the tiny tree's face cache, Face2Face c23: 15 training
# images, 9 real and 6 fake, and 2 validation ones)
from test_prepare import CFG  # noqa: E402  (the tiny London-photo FF++ tree, crop_size 48)

from emdlib.checkpoint import load_checkpoint  # noqa: E402
from emdlib.data.datasets import FlipSampler, ManipulationDataset  # noqa: E402
from emdlib.presets import EMDConfig, get_preset  # noqa: E402
from emdlib.study import experiments  # noqa: E402
from emdlib.train import TrainConfig, fit, flip_sampler, make_loader, predict  # noqa: E402

torch.set_num_threads(1)
S = CFG.crop_size  # 48: no resizing, so a flipped item is exactly the plain item flipped

#: (dataset index, flipped) of every training image of 2 epochs of ``_fit(..., flip_rng="global")``, recorded at
#: commit accd875 (before ``flip_rng`` existed): the "global" path must keep giving these batches.
GLOBAL_AT_ACCD875 = [
    (1, 1), (2, 0), (7, 1), (11, 1), (9, 0), (3, 0), (0, 0), (4, 1), (12, 0), (8, 1), (10, 0), (6, 0), (14, 1),
    (5, 1), (13, 1), (7, 1), (13, 1), (14, 1), (8, 1), (12, 1), (9, 0), (5, 1), (2, 1), (3, 1), (4, 0), (11, 0),
    (0, 1), (6, 0), (10, 1), (1, 1),
]


class Recording(BNFree):
    """The BN-free toy detector behind a BatchNorm of its input, keeping every training batch its loss sees (images,
    masks, labels, names) and the images of the BatchNorm statistics passes (``precise_bn``)."""

    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(3)
        self.batches: list[dict] = []
        self.bn_images: list[torch.Tensor] = []

    def forward(self, image, fer_image=None):
        if self.training and not torch.is_grad_enabled():  # emdlib.train.recompute_bn_statistics
            self.bn_images.append(image.clone())
        return super().forward(self.bn(image), fer_image)

    def compute_loss(self, output, batch):
        if self.training:
            self.batches.append({k: v.detach().clone() if torch.is_tensor(v) else list(v)
                                 for k, v in batch.items() if k in ("image", "mask", "label", "video", "frame")})
        return super().compute_loss(output, batch)


def _sets(cache: Path) -> tuple[ManipulationDataset, ManipulationDataset, ManipulationDataset]:
    """Augmented train split (15 images), the same unaugmented, and the val split."""
    train = ManipulationDataset(cache, "train", ["Face2Face"], ["c23"], image_size=S, augment=True)
    plain = ManipulationDataset(cache, "train", ["Face2Face"], ["c23"], image_size=S)
    return train, plain, ManipulationDataset(cache, "val", ["Face2Face"], ["c23"], image_size=S)


def _pairs(images: torch.Tensor, plain: ManipulationDataset) -> list[tuple[int, int]]:
    """``(index, flipped)`` of each image, found among the plain items and their mirror images."""
    ref = [plain[i]["image"] for i in range(len(plain))]
    out = []
    for img in images:
        hits = [(i, f) for i, r in enumerate(ref) for f in (0, 1) if torch.equal(img, r.flip(-1) if f else r)]
        assert len(hits) == 1, hits
        out.append(hits[0])
    return out


def _fit(cache: Path, out: Path, epochs: int = 2, **cfg) -> tuple[Recording, dict]:
    train, _, val = _sets(cache)
    model = Recording()
    config = TrainConfig(warmup_epochs=0, epochs=epochs, batch_size=4, device="cpu", seed=5, **cfg)
    return model, fit(model, train, val, out, config)


def _history(res: dict) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in res["history"]]


def test_flip_sampler_draws_from_seed_epoch_and_index():
    n = 64

    def pairs(seed: int, epoch: int, replicas: int = 1, rank: int = 0) -> list[tuple[int, bool]]:
        base = DistributedSampler(range(n), num_replicas=replicas, rank=rank, shuffle=True, seed=seed)
        sampler = FlipSampler(base, n, seed)
        sampler.set_epoch(epoch)  # passed on to the DistributedSampler: the order changes too
        return list(sampler)

    a = pairs(0, 0)
    assert a == pairs(0, 0) and sorted(i for i, _ in a) == list(range(n))  # a pure function of (seed, epoch)
    flips = dict(a)
    assert 16 < sum(flips.values()) < 48
    assert dict(pairs(0, 1)) != flips and dict(pairs(1, 0)) != flips  # other epoch, other seed: other flips
    assert [i for i, _ in pairs(0, 1)] != [i for i, _ in a]
    both = pairs(0, 0, 2, 0) + pairs(0, 0, 2, 1)  # two ranks share the indices; each index keeps its flip
    assert len(both) == n and dict(both) == flips
    never = FlipSampler(range(n), n, 0, p=0.0)
    always = FlipSampler(range(n), n, 0, p=1.0)
    assert not any(f for _, f in never) and all(f for _, f in always) and len(always) == n
    for bad in (dict(size=-1, seed=0), dict(size=3, seed=-1), dict(size=3, seed=0, p=1.5)):
        with pytest.raises(ValueError, match="FlipSampler"):
            FlipSampler(range(3), **bad)


def test_an_index_pair_flips_exactly_when_asked(cache):
    train, plain, _ = _sets(cache)
    i = next(k for k, s in enumerate(plain.samples) if s[0] == "Face2Face")
    base = plain[i]
    torch.manual_seed(0)
    state = torch.get_rng_state()
    for flip in (True, False):
        for ds in (train, plain):  # the pair decides, augment or not
            item = ds[(i, flip)]
            for key in ("image", "mask", "fer_image"):
                want = base[key].flip(-1) if flip else base[key]
                torch.testing.assert_close(item[key], want, atol=1e-6, rtol=0)
    assert torch.equal(torch.get_rng_state(), state)  # a pair draws nothing from the global RNG
    train[i]
    assert not torch.equal(torch.get_rng_state(), state)  # an int index with augment does ("global")


def test_same_batches_with_0_and_2_persistent_workers(cache):
    train, plain, _ = _sets(cache)
    epochs = {}
    for workers in (0, 2):
        sampler = flip_sampler(train, DistributedSampler(train, num_replicas=1, rank=0, shuffle=True, seed=3), 3)
        loader = make_loader(train, 4, True, 3, workers, sampler=sampler, persistent=True)
        assert loader.persistent_workers == (workers > 0)
        epochs[workers], iterators = [], []
        for epoch in range(2):
            sampler.set_epoch(epoch)
            epochs[workers].append(list(loader))
            iterators.append(loader._iterator)
        if workers:  # the same worker processes served both epochs
            assert iterators[0] is iterators[1] and iterators[0]._workers[0].is_alive()
        del loader
    for e0, e2 in zip(epochs[0], epochs[2]):
        assert len(e0) == len(e2) == 4
        for b0, b2 in zip(e0, e2):
            for key in ("image", "mask", "fer_image", "label", "frame"):
                assert torch.equal(b0[key], b2[key]), key
            assert b0["video"] == b2["video"]
    # the flips are those of the sampler: epoch e's pairs, and they change from one epoch to the next
    seen = [_pairs(torch.cat([b["image"] for b in e]), plain) for e in epochs[0]]
    for epoch, got in enumerate(seen):
        sampler.set_epoch(epoch)
        assert got == [(i, int(f)) for i, f in sampler]
    assert dict(seen[0]) != dict(seen[1])


def test_same_fit_with_0_and_2_workers_and_resume(cache, tmp_path):
    runs = {}
    for workers in (0, 2):
        model, res = _fit(cache, tmp_path / f"w{workers}", flip_rng="sampler", num_workers=workers, precise_bn=True)
        pred = predict(model, _sets(cache)[2], device="cpu", batch_size=4)
        runs[workers] = (model, res, pred)
    (m0, r0, p0), (m2, r2, p2) = runs[0], runs[2]
    assert _history(r0) == _history(r2) and r0["best_epoch"] == r2["best_epoch"]
    assert len(m0.batches) == len(m2.batches) == 8
    for b0, b2 in zip(m0.batches, m2.batches):
        assert all(torch.equal(b0[k], b2[k]) if torch.is_tensor(b0[k]) else b0[k] == b2[k] for k in b0)
    for k in p0:
        assert np.array_equal(p0[k], p2[k]), k
    a, _ = load_checkpoint(tmp_path / "w0" / "last.safetensors")
    b, _ = load_checkpoint(tmp_path / "w2" / "last.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # RNG states included
    # the flips the fit trained on: the sampler's, different in its two epochs
    plain = _sets(cache)[1]
    per_epoch = [_pairs(torch.cat([b["image"] for b in m0.batches[e * 4:(e + 1) * 4]]), plain) for e in (0, 1)]
    assert dict(per_epoch[0]) != dict(per_epoch[1])
    # precise_bn read the training split in order, each image as that epoch's training saw it
    assert [_pairs(torch.cat(m0.bn_images[e * 4:(e + 1) * 4]), plain) for e in (0, 1)] == \
        [sorted(p) for p in per_epoch]
    assert all(torch.equal(x, y) for x, y in zip(m0.bn_images, m2.bn_images)) and len(m2.bn_images) == 8
    assert not torch.equal(a["model/bn.running_mean"], torch.zeros(3))
    # killed after epoch 1 (2 workers), resumed in a fresh process (0 workers): the end of the uninterrupted run
    _fit(cache, tmp_path / "r", epochs=1, flip_rng="sampler", num_workers=2, precise_bn=True)
    m, res = _fit(cache, tmp_path / "r", flip_rng="sampler", precise_bn=True)
    assert _history(res) == _history(r0) and len(m.batches) == 4
    assert all(torch.equal(x["image"], y["image"]) for x, y in zip(m.batches, m0.batches[4:]))
    c, _ = load_checkpoint(tmp_path / "r" / "last.safetensors")
    assert a.keys() == c.keys() and all(torch.equal(a[k], c[k]) for k in a)
    with pytest.raises(ValueError, match="cannot resume, flip_rng='sampler' in the checkpoint but 'global'"):
        _fit(cache, tmp_path / "r", epochs=3, flip_rng="global")


def test_global_flips_are_those_before_the_setting(cache, tmp_path):
    model, _ = _fit(cache, tmp_path / "g")
    plain = _sets(cache)[1]
    assert _pairs(torch.cat([b["image"] for b in model.batches]), plain) == GLOBAL_AT_ACCD875


def test_flip_rng_is_a_preset_setting():
    tiny, cpu, faces, paper = (get_preset(n) for n in ("tiny", "cpu", "faces", "paper"))
    assert tiny.emd.flip_rng == cpu.emd.flip_rng == "global"
    assert faces.emd.flip_rng == paper.emd.flip_rng == "sampler"
    for name in ("EMD", "MesoNet"):  # every system's training reads it
        assert experiments.train_config(experiments.SYSTEMS[name], paper).flip_rng == "sampler"
        assert experiments.train_config(experiments.SYSTEMS[name], cpu).flip_rng == "global"
    recorded = json.loads(json.dumps(cpu.to_dict()))
    del recorded["emd"]["flip_rng"]  # the committed cpu records predate the setting: still the same protocol
    assert experiments._same_protocol(recorded, cpu.to_dict())
    other = dataclasses.replace(cpu, emd=dataclasses.replace(cpu.emd, flip_rng="sampler"))
    assert not experiments._same_protocol(recorded, other.to_dict())
    with pytest.raises(ValueError, match="emd.flip_rng 'worker'"):
        EMDConfig(flip_rng="worker")
    with pytest.raises(ValueError, match="unknown flip_rng 'worker'"):
        TrainConfig(flip_rng="worker")
