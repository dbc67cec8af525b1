"""Training protocol (paper Eqs. 6–8, §IV-B): warm-up freezing, overfitting, resumable deterministic runs, records."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from emdlib import metrics
from emdlib.models.detector import DetectorOutput, manipulation_loss
from emdlib.models.emd import EMD
from emdlib.study.records import load_run_records, write_run_record
from emdlib.train import (TrainConfig, fit, is_better, load_training_state, predict,
                          set_trainable, train_step)

torch.set_num_threads(1)
S = 32  # tiny inputs keep each test a few seconds on a shared CPU


class TinyFER(nn.Module):
    """Stand-in with the ESR contract: ``select_branch(x) -> (fer_map (N,512,h,w), branch, cls)``."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 512, 16, stride=16)
        self.bn = nn.BatchNorm2d(512)

    def select_branch(self, x):
        n = x.shape[0]
        return self.bn(self.conv(x)), torch.zeros(n, dtype=torch.long), torch.zeros(n, dtype=torch.long)


def tiny_items(n: int = 8, size: int = S, seed: int = 0) -> list[dict]:
    """ManipulationDataset-like items: fakes carry a bright square whose region is the mask; reals are plain."""
    g = torch.Generator().manual_seed(seed)
    items = []
    for i in range(n):
        fake = i % 2
        img = torch.rand(3, size, size, generator=g) * 0.4 - 0.2
        mask = torch.zeros(1, size, size)
        if fake:
            y, x = 4 * int(torch.randint(0, 3, (1,), generator=g)), 4 * int(torch.randint(0, 3, (1,), generator=g))
            img[:, y : y + 16, x : x + 16] += 0.8
            mask[:, y : y + 16, x : x + 16] = 1.0
        items.append({"image": img, "fer_image": torch.rand(3, 96, 96, generator=g), "mask": mask,
                      "label": torch.tensor(fake), "method": "Face2Face" if fake else "original",
                      "compression": "c23", "video": f"{i // 2:03d}" + ("_x" if fake else ""), "frame": i})
    return items


def _model(seed: int = 0, fer: bool = True) -> EMD:
    torch.manual_seed(seed)
    return EMD(TinyFER() if fer else None, encoder="xception41")


def _batch(items):
    return torch.utils.data.default_collate(items)


def test_loss_is_eq8_ce_plus_bce():
    out = DetectorOutput(logits=torch.tensor([[2.0, 0.0], [0.0, 1.0]]), mask_logits=torch.zeros(2, 1, 2, 2))
    batch = {"label": torch.tensor([0, 1]), "mask": torch.ones(2, 1, 2, 2)}
    loss, parts = manipulation_loss(out, batch)
    ce = (math.log(1 + math.exp(-2)) + math.log(1 + math.exp(-1))) / 2
    assert parts["loss_cls"] == pytest.approx(ce, rel=1e-5)
    assert parts["loss_seg"] == pytest.approx(math.log(2), rel=1e-5)  # BCE(sigmoid(0)=.5, 1)
    assert float(loss) == pytest.approx(ce + math.log(2), rel=1e-5)


def test_model_selection_breaks_accuracy_ties_by_validation_loss():
    # epoch histories as (val accuracy, val loss): the tie at 0.646 goes to the later epoch with the lower loss
    history = [(0.646, 2.50), (0.646, 2.17), (0.562, 1.86), (0.646, 1.60), (0.583, 1.58)]
    best = (-math.inf, math.inf, None)
    for epoch, (acc, loss) in enumerate(history, 1):
        if is_better(acc, loss, best[0], best[1]):
            best = (acc, loss, epoch)
    assert best == (0.646, 1.60, 4)
    assert not is_better(None, 0.1, 0.5, 1.0)  # no validation accuracy: never "better"
    assert not is_better(0.5, 1.0, 0.5, 1.0)  # an exact tie keeps the earlier epoch


def test_warmup_gradients_only_in_last_conv_aspp_decoder_fc():
    model = _model()
    model.train()
    trainable = list(model.trainable_parameters())
    batch = _batch(tiny_items(4))
    opt = torch.optim.Adam(trainable, lr=1e-3)
    names = {id(p): n for n, p in model.named_parameters()}
    warm_prefixes = ("last_conv.", "aspp.", "decoder.", "fc.")

    set_trainable(model, trainable, warmup=True)
    train_step(model, batch, opt)
    got = {names[id(p)] for p in model.parameters() if p.grad is not None}
    expected = {n for n, _ in model.named_parameters() if n.startswith(warm_prefixes)}
    assert got == expected and any(n.startswith("last_conv.conv") for n in got)

    set_trainable(model, trainable, warmup=False)
    train_step(model, batch, opt)
    got = {names[id(p)] for p in model.parameters() if p.grad is not None}
    assert got == {n for n, _ in model.named_parameters() if not n.startswith("fer.")}
    assert any(n.startswith("encoder.stem") for n in got)


def test_warmup_epoch_leaves_encoder_and_fer_weights_unchanged(tmp_path):
    model = _model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    fit(model, tiny_items(4), None, tmp_path, TrainConfig(warmup_epochs=1, epochs=0, batch_size=4, device="cpu"))
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p)}
    assert changed and all(n.startswith(("last_conv.", "aspp.", "decoder.", "fc.")) for n in changed)
    assert "last_conv.conv.weight" in changed and "fc.weight" in changed
    assert all(p.requires_grad for p in model.trainable_parameters())  # restored after fit


def test_emd_overfits_a_tiny_batch():
    model = _model()
    model.train()
    batch = _batch(tiny_items(4))
    opt = torch.optim.Adam(list(model.trainable_parameters()), lr=1e-3, betas=(0.9, 0.999), eps=1e-8)
    first = train_step(model, batch, opt)
    for _ in range(40):  # ~18 steps on this setup
        last = train_step(model, batch, opt)
        if last["loss_cls"] < 0.1 * first["loss_cls"] and last["loss_seg"] < 0.1 * first["loss_seg"]:
            break
    assert last["loss_cls"] < 0.1 * first["loss_cls"], (first, last)
    assert last["loss_seg"] < 0.1 * first["loss_seg"], (first, last)


class _Stop(Exception):
    pass


def test_resume_ends_where_an_uninterrupted_run_does(tmp_path):
    train, val = tiny_items(8, seed=1), tiny_items(4, seed=2)
    cfg = TrainConfig(warmup_epochs=1, epochs=1, batch_size=4, seed=7, device="cpu", image_size=S)

    model_a = _model(3)
    res_a = fit(model_a, train, val, tmp_path / "a", cfg)

    def crash_after_first(record):
        if record["epoch"] == 1:
            raise _Stop

    model_b = _model(3)
    with pytest.raises(_Stop):
        fit(model_b, train, val, tmp_path / "b", cfg, on_epoch_end=crash_after_first)
    model_b = _model(99)  # a fresh process: different init, everything must come from the checkpoint
    res_b = fit(model_b, train, val, tmp_path / "b", cfg)

    sa, sb = model_a.state_dict(), model_b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert res_a["history"] == [
        {**r, "seconds": ra["seconds"]} for r, ra in zip(res_b["history"], res_a["history"])
    ]
    assert res_a["best_epoch"] == res_b["best_epoch"] and res_a["best_val_accuracy"] == res_b["best_val_accuracy"]
    pa, pb = predict(model_a, val, device="cpu"), predict(model_b, val, device="cpu")
    assert np.array_equal(pa["prob"], pb["prob"]) and np.array_equal(pa["pixel_score"], pb["pixel_score"])
    # the final training state also matches (optimizer moments included)
    opt = torch.optim.Adam(list(model_a.trainable_parameters()), lr=1e-3)
    meta = load_training_state(tmp_path / "b" / "last.safetensors", _model(5), opt)
    assert meta["epoch"] == 2 and len(meta["history"]) == 2
    # into a channels_last model (the GPU path): Adam's moments take each parameter's layout, values unchanged
    cl = _model(5).to(memory_format=torch.channels_last)
    opt_cl = torch.optim.Adam(list(cl.trainable_parameters()), lr=1e-3)
    load_training_state(tmp_path / "b" / "last.safetensors", cl, opt_cl)
    moments = [(p, opt_cl.state[p]["exp_avg"], opt.state[q]["exp_avg"])
               for p, q in zip(cl.trainable_parameters(), model_a.trainable_parameters()) if p.ndim == 4]
    assert moments and any(not p.is_contiguous() for p, _, _ in moments)
    assert all(m.stride() == p.stride() and torch.equal(m, m0) for p, m, m0 in moments)
    # resuming with another seed is refused, naming the checkpoint
    with pytest.raises(ValueError, match="last.safetensors.*seed"):
        fit(_model(5), train, val, tmp_path / "b", dataclasses.replace(cfg, seed=8))


def test_best_checkpoint_rebuilds_and_run_record_round_trip(tmp_path):
    from emdlib.registry import model_from_checkpoint

    model = _model(0, fer=False)
    val = tiny_items(4, seed=2)
    res = fit(model, tiny_items(4), val, tmp_path / "ck",
              TrainConfig(warmup_epochs=1, epochs=0, batch_size=4, device="cpu", image_size=S))
    rebuilt, meta = model_from_checkpoint(res["best_checkpoint"])
    assert meta["image_size"] == S and meta["model"]["name"] == "emd"
    x = torch.randn(2, 3, S, S)
    with torch.no_grad():
        assert torch.allclose(rebuilt(x).logits, model.eval()(x).logits, atol=1e-6)

    pred = predict(model, val, device="cpu")
    m = metrics.evaluate(pred)
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("video,frame\n000,0\n")
    path = write_run_record(tmp_path / "results" / "tiny", "emd-Face2Face-c23", m, {"name": "tiny", "emd": {}},
                            seed=0, manifest=manifest, checkpoint=res["best_checkpoint"], device=res["device"],
                            wall_time_s=res["wall_time_s"])
    assert path == tmp_path / "results" / "tiny" / "runs" / "emd-Face2Face-c23" / "metrics.json"
    df = load_run_records(tmp_path / "results")
    assert len(df) == 1 and df.loc[0, "preset"] == "tiny" and df.loc[0, "run"] == "emd-Face2Face-c23"
    assert df.loc[0, "accuracy"] == pytest.approx(m["accuracy"])
    assert len(df.loc[0, "checkpoint_sha256"]) == 64 and len(df.loc[0, "data_manifest_sha256"]) == 64
    assert df.loc[0, "git_commit"]


class _Kill(BaseException):
    """Stands for kill -9 at a chosen point: nothing after it runs (not even ``except Exception`` handlers)."""


def _kill_at_sidecar(monkeypatch, name: str, epoch: int) -> None:
    """Make the write of sidecar ``name`` for ``epoch`` die after its weights file was written."""
    import emdlib.checkpoint as ck

    real = ck.write_json

    def write_json(path, obj):
        if path.name == name and obj.get("epoch") == epoch:
            raise _Kill
        return real(path, obj)

    monkeypatch.setattr(ck, "write_json", write_json)


@pytest.mark.parametrize("sidecar", ["last.json", "best.json"])
def test_resume_after_a_kill_between_weights_and_sidecar(tmp_path, monkeypatch, sidecar):
    """Killed between a checkpoint's two writes: the resumed run ends as an uninterrupted one, and the best epoch it
    reports is the epoch of the weights it loads (never an older sidecar's)."""
    from emdlib.checkpoint import load_meta
    from emdlib.io import read_json, sha256_file

    train, val = tiny_items(8, seed=1), tiny_items(4, seed=2)
    cfg = TrainConfig(warmup_epochs=1, epochs=1, batch_size=4, seed=7, device="cpu", image_size=S)
    model_a = _model(3)
    res_a = fit(model_a, train, val, tmp_path / "a", cfg)
    best_a = read_json(tmp_path / "a" / "best.json")["epoch"]
    assert res_a["best_epoch"] == best_a

    run = tmp_path / "b"
    with monkeypatch.context() as m:
        # epoch 2 writes best first (when it is the best so far), then last: kill inside one of the pairs
        _kill_at_sidecar(m, sidecar, 2)
        if sidecar == "best.json" and best_a != 2:
            pytest.skip("epoch 2 is not a best epoch with this seed")
        with pytest.raises(_Kill):
            fit(_model(3), train, val, run, cfg)
    stale = read_json(run / sidecar)
    assert stale["epoch"] == 1 and stale["sha256"] != sha256_file(run / sidecar.replace(".json", ".safetensors"))
    (run / ".last.k1ll3d_9.tmp.safetensors").write_bytes(b"half")  # what a kill inside save_file leaves

    if sidecar == "best.json":
        # stopping here (no epoch left to run) loads best.safetensors: the best epoch reported is that file's epoch
        # (2, validated before the kill), not the one last.json recorded (1)
        assert read_json(run / "last.json")["best_epoch"] == 1
        res_short = fit(_model(98), train, val, run, dataclasses.replace(cfg, epochs=0))
        assert res_short["best_epoch"] == 2 == load_meta(run / "best.safetensors")["epoch"]

    model_b = _model(99)
    res_b = fit(model_b, train, val, run, cfg)
    sa, sb = model_a.state_dict(), model_b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert [r["val_accuracy"] for r in res_b["history"]] == [r["val_accuracy"] for r in res_a["history"]]
    assert res_b["best_epoch"] == best_a == load_meta(run / "best.safetensors")["epoch"]
    assert not [p.name for p in run.iterdir() if ".tmp" in p.name]
    for name in ("last", "best"):  # both pairs verified again (sidecars repaired)
        assert read_json(run / f"{name}.json")["sha256"] == sha256_file(run / f"{name}.safetensors")


def test_a_non_finite_loss_stops_training_before_any_checkpoint(tmp_path):
    # the loop reads the loss from the device once per log interval and at the epoch's end, then checks it
    from emdlib.models.detector import DetectorNet

    class Net(DetectorNet):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 2)

        def forward(self, image, fer_image=None):
            return DetectorOutput(logits=self.fc(image.mean((2, 3))) * float("nan"), mask_logits=None)

    with pytest.raises(FloatingPointError, match=r"^non-finite training loss in epoch 1: per-image sums"):
        fit(Net(), tiny_items(4), None, tmp_path, TrainConfig(warmup_epochs=0, epochs=1, batch_size=2, device="cpu"))
    assert not (tmp_path / "last.safetensors").exists() and not (tmp_path / "best.safetensors").exists()


def test_an_epoch_tells_its_progress_in_the_log(tmp_path, monkeypatch, caplog):
    import logging

    from emdlib import train
    from emdlib.models.detector import DetectorNet

    class Net(DetectorNet):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 2)

        def forward(self, image, fer_image=None):
            return DetectorOutput(logits=self.fc(image.mean((2, 3))), mask_logits=None)

    monkeypatch.setattr(train, "LOG_EVERY", 1)  # every step is a log interval
    monkeypatch.setattr(train, "PROGRESS_SECONDS", 0.0)  # and each one old enough for a line
    with caplog.at_level(logging.INFO, logger="emdlib.train"):
        fit(Net(), tiny_items(8), None, tmp_path, TrainConfig(warmup_epochs=0, epochs=1, batch_size=2, device="cpu"))
    lines = [r.getMessage() for r in caplog.records if ": batch " in r.getMessage()]
    assert [line.split(",")[0] for line in lines] == [f"epoch 1/1: batch {b}/4" for b in (1, 2, 3, 4)]
    assert all("img/s, about " in line and line.endswith("min left in the epoch") for line in lines)
