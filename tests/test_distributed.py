"""Data-parallel training (issue 14): 2 gloo processes on CPU started by torchrun, against one process.

* a 2-process fit + predict gives exactly the test predictions of a 1-process evaluation of its best checkpoint;
* 2 processes × batch B take the optimisation step of 1 process × batch 2B (BN-free toy network, float tolerance);
* a 2-process run killed mid-epoch resumes and ends where an uninterrupted 2-process run ends;
* the helpers of :mod:`emdlib.distributed` in a single process.

This file is also the torchrun worker: ``python -m torch.distributed.run --standalone --nproc_per_node=2
tests/test_distributed.py MODE OUT RUN`` (see :func:`_worker`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parent))  # test_train's toy items and model, also in the workers

from test_train import _model, tiny_items  # noqa: E402

from emdlib import distributed  # noqa: E402
from emdlib.checkpoint import load_checkpoint  # noqa: E402
from emdlib.models.detector import DetectorNet, DetectorOutput  # noqa: E402
from emdlib.train import TrainConfig, fit, predict  # noqa: E402

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
#: The EMD toy cell: 12 training images (6 per rank), 5 validation images (3 + 2: uneven shards), 7 test images.
CELL = TrainConfig(warmup_epochs=1, epochs=2, batch_size=4, device="cpu", seed=3)
KILL_ENV = "EMD_TEST_KILL_AFTER_READS"  # rank 1 exits after this many training-item reads (a process killed)


class BNFree(DetectorNet):
    """Toy detector without BatchNorm: a 1×1 conv gives the mask logits, a linear layer on its pooled input the
    class logits (every parameter is used, so the step is comparable across batch splits)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.seg = nn.Conv2d(3, 1, 1)
        self.fc = nn.Linear(3, 2)

    def forward(self, image, fer_image=None):
        return DetectorOutput(logits=self.fc(image.mean((2, 3))), mask_logits=self.seg(image))


class KillAfter(torch.utils.data.Dataset):
    """``items`` as a dataset; in rank 1, ``os._exit(1)`` at read number ``kill_after`` (a process killed
    mid-epoch, no clean-up)."""

    def __init__(self, items, kill_after: int | None):
        self.items, self.kill_after, self.reads = items, kill_after, 0

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        self.reads += 1
        if self.kill_after is not None and distributed.rank() == 1 and self.reads > self.kill_after:
            os._exit(1)
        return self.items[i]


def _numeric(pred: dict) -> dict:
    return {k: v for k, v in pred.items() if v.dtype != object}


def _worker(mode: str, out: Path, run: Path) -> None:
    """One torchrun process: ``cell`` fits the EMD toy cell and predicts its test set; ``step`` fits the BN-free toy
    one step on 8 images (global batch 8). Rank 0 writes ``out.npz`` (numeric prediction columns) and
    ``out.json`` (history, best epoch)."""
    torch.set_num_threads(1)
    distributed.init_from_env()
    if mode == "cell":
        kill = os.environ.get(KILL_ENV)
        model = _model(0)
        res = fit(model, KillAfter(tiny_items(12, seed=1), int(kill) if kill else None), tiny_items(5, seed=2),
                  run, CELL)
        pred = predict(model, tiny_items(7, seed=3), batch_size=1, seed=1)  # same batch shapes as 1 process
    else:
        res = fit(BNFree(), tiny_items(8, seed=1), None, run,
                  TrainConfig(warmup_epochs=0, epochs=1, batch_size=8, device="cpu", seed=0))
        pred = {}
    if distributed.is_main():
        np.savez(out.with_suffix(".npz"), **_numeric(pred))
        hist = [{k: v for k, v in r.items() if k != "seconds"} for r in res["history"]]
        out.with_suffix(".json").write_text(json.dumps({"history": hist, "best_epoch": res["best_epoch"]}))


def _torchrun(mode: str, out: Path, run: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "--max-restarts=0",
           __file__, mode, str(out), str(run)]
    full_env = {k: v for k, v in os.environ.items() if k != KILL_ENV}
    full_env.update(OMP_NUM_THREADS="1", PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
                    **(env or {}))
    return subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=240)


def _ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stderr[-4000:]


@pytest.fixture(scope="module")
def two_process_cell(tmp_path_factory):
    """The uninterrupted 2-process run of the EMD toy cell: ``(out, run_dir)``."""
    tmp = tmp_path_factory.mktemp("ddp")
    _ok(_torchrun("cell", tmp / "a", tmp / "run_a"))
    return tmp / "a", tmp / "run_a"


def test_two_processes_predict_what_one_process_predicts_from_the_checkpoint(two_process_cell):
    out, run = two_process_cell
    got = np.load(out.with_suffix(".npz"))
    state, meta = load_checkpoint(run / "best.safetensors")
    assert meta["world_size"] == 2 and not any(k.startswith("module.") for k in state)  # unwrapped module
    model = _model(7)
    model.load_state_dict(state)
    want = _numeric(predict(model, tiny_items(7, seed=3), device="cpu", batch_size=1, seed=1))
    assert sorted(got.files) == sorted(want) and len(want["prob"]) == 7  # each test image once
    assert np.array_equal(got["frame"], np.arange(7)) and np.array_equal(got["pixel_image"], want["pixel_image"])
    for k in want:
        assert np.array_equal(got[k], want[k]), k
    history = json.loads(out.with_suffix(".json").read_text())["history"]
    assert [r["train_images"] for r in history] == [12, 12, 12]  # 2 ranks × 6 images (4+2), none dropped
    assert all(r["val_accuracy"] * 5 == round(r["val_accuracy"] * 5) for r in history)  # over all 5 images


def test_two_processes_times_b_take_the_step_of_one_process_times_2b(tmp_path):
    _ok(_torchrun("step", tmp_path / "s", tmp_path / "two"))
    cfg = TrainConfig(warmup_epochs=0, epochs=1, batch_size=8, device="cpu", seed=0)
    fit(BNFree(), tiny_items(8, seed=1), None, tmp_path / "one", cfg)
    two, _ = load_checkpoint(tmp_path / "two" / "last.safetensors")
    one, _ = load_checkpoint(tmp_path / "one" / "last.safetensors")
    start = BNFree().state_dict()
    for k, v in start.items():
        assert not torch.equal(one[f"model/{k}"], v)  # the step moved every parameter
        torch.testing.assert_close(two[f"model/{k}"], one[f"model/{k}"], rtol=1e-5, atol=1e-7)
    for k in one:
        if k.startswith("optimizer/"):
            torch.testing.assert_close(two[k], one[k], rtol=1e-5, atol=1e-9)  # Adam moments of the same gradient
    h2 = json.loads((tmp_path / "s.json").read_text())["history"][0]
    h1 = json.loads((tmp_path / "one" / "last.json").read_text())["history"][0]
    assert h2["train_images"] == 8 and h2["train_loss"] == pytest.approx(h1["train_loss"], rel=1e-6)


def test_two_process_run_killed_mid_epoch_resumes_to_the_same_end(two_process_cell, tmp_path):
    out_a, run_a = two_process_cell
    # each rank reads 6 training items per epoch; rank 1 dies at its 9th read: epoch 2, after epoch 1's checkpoint
    killed = _torchrun("cell", tmp_path / "b", tmp_path / "run_b", env={KILL_ENV: "8"})
    assert killed.returncode != 0
    assert json.loads((tmp_path / "run_b" / "last.json").read_text())["epoch"] == 1
    _ok(_torchrun("cell", tmp_path / "b", tmp_path / "run_b"))
    a, b = np.load(out_a.with_suffix(".npz")), np.load((tmp_path / "b").with_suffix(".npz"))
    for k in a.files:
        assert np.array_equal(a[k], b[k]), k
    assert (json.loads(out_a.with_suffix(".json").read_text())
            == json.loads((tmp_path / "b").with_suffix(".json").read_text()))
    wa, _ = load_checkpoint(run_a / "best.safetensors")
    wb, _ = load_checkpoint(tmp_path / "run_b" / "best.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_resume_under_another_number_of_processes_is_refused(two_process_cell, tmp_path):
    _, run = two_process_cell
    import shutil

    shutil.copytree(run, tmp_path / "run")
    with pytest.raises(ValueError, match="trained on 2 processes but 1 now"):
        fit(_model(0), tiny_items(12, seed=1), tiny_items(5, seed=2), tmp_path / "run",
            TrainConfig(**{**CELL.to_dict(), "epochs": 3}))


def _launched(run: str) -> dict:
    """A process started by :func:`emdlib.distributed.launch`: fit the BN-free toy (global batch 4 over 2 ranks) and
    predict 5 images; rank 0's value comes back."""
    torch.set_num_threads(1)
    distributed.init_from_env()
    model = BNFree()
    fit(model, tiny_items(8, seed=1), tiny_items(3, seed=2), run,
        TrainConfig(warmup_epochs=0, epochs=1, batch_size=4, device="cpu", seed=0))
    pred = predict(model, tiny_items(5, seed=3), batch_size=2, seed=1)
    return {"world": distributed.world_size(), "ranks": distributed.gather(distributed.rank()), **_numeric(pred)}


def test_launch_trains_on_two_processes_and_returns_rank_0s_gathered_predictions(tmp_path, monkeypatch):
    import signal

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    before = signal.getsignal(signal.SIGTERM)
    got = distributed.launch(_launched, 2, str(tmp_path / "run"))
    assert got["world"] == 2 and got["ranks"] == [0, 1]
    assert signal.getsignal(signal.SIGTERM) is before  # not the launcher's (a notebook kernel's exit traceback)
    state, meta = load_checkpoint(tmp_path / "run" / "best.safetensors")
    assert meta["world_size"] == 2
    model = BNFree()
    model.load_state_dict(state)
    want = _numeric(predict(model, tiny_items(5, seed=3), device="cpu", batch_size=2, seed=1))
    for k in want:
        assert np.array_equal(got[k], want[k]), k


def _fails_on_rank_1() -> int:
    import logging

    distributed.init_from_env()
    logging.getLogger("emdlib.test").info("rank %d says hello", distributed.rank())
    if distributed.rank() == 1:
        raise ValueError("training set is empty")
    distributed.barrier()  # rank 0 waits for rank 1, which never comes: the launcher stops it
    return 0


def test_a_failed_process_is_reported_by_its_own_error_and_processes_log_like_the_launcher(monkeypatch, capfd):
    import logging

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))  # the notebooks' format
    root, emd = logging.getLogger(), logging.getLogger("emdlib")
    monkeypatch.setattr(root, "handlers", [handler])
    monkeypatch.setattr(emd, "level", logging.INFO)
    with pytest.raises(distributed.ProcessFailed,
                       match="_fails_on_rank_1 failed on rank 1 of 2: ValueError: training set is empty") as info:
        distributed.launch(_fails_on_rank_1, 2)
    assert any('raise ValueError("training set is empty")' in note for note in info.value.__notes__)
    err = capfd.readouterr().err
    assert "INFO emdlib.test: rank 0 says hello" in err  # rank 0 logs in the launcher's format and level
    assert "rank 1 says hello" not in err  # the other ranks: warnings and errors only


def test_gathering_shards_restores_dataset_order():
    from emdlib.train import _gather_predictions

    # one process standing for rank 1 of 2 (images 1, 3): its columns come back as they are, in dataset order
    shard = {"prob": np.array([0.1, 0.3]), "pixel_image": np.array([1, 1, 3, 3]), "pixel_score": np.arange(4.0)}
    got = _gather_predictions(shard, np.array([1, 3]))
    assert all(np.array_equal(got[k], v) for k, v in shard.items())
    model = BNFree()
    items = tiny_items(5, seed=3)
    a = predict(model, items, device="cpu", batch_size=2, seed=1, pixels_per_image=3)
    b = predict(model, items, device="cpu", batch_size=2, seed=1, pixels_per_image=3, shard=True)
    assert sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)


def test_a_one_process_group_changes_nothing(tmp_path, monkeypatch):
    """WORLD_SIZE=1 (and even an initialised group of one process) trains and predicts as no group does."""
    import torch.distributed as dist

    cfg = TrainConfig(warmup_epochs=1, epochs=1, batch_size=3, device="cpu", seed=2)
    runs = {}
    for name in ("plain", "group"):
        if name == "group":
            monkeypatch.setenv("WORLD_SIZE", "1")
            assert distributed.init_from_env() is False
            dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
        try:
            model = BNFree()
            res = fit(model, tiny_items(7, seed=1), tiny_items(3, seed=2), tmp_path / name, cfg)
            runs[name] = (res["history"], predict(model, tiny_items(4, seed=3), device="cpu", batch_size=2))
        finally:
            if dist.is_initialized():
                dist.destroy_process_group()
    (h1, p1), (h2, p2) = runs["plain"], runs["group"]
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in h1] == \
        [{k: v for k, v in r.items() if k != "seconds"} for r in h2]
    assert all(np.array_equal(p1[k], p2[k]) for k in p1)
    a, _ = load_checkpoint(tmp_path / "plain" / "last.safetensors")
    b, _ = load_checkpoint(tmp_path / "group" / "last.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert "world_size" not in json.loads((tmp_path / "group" / "last.json").read_text())


def test_loader_workers(monkeypatch):
    from emdlib.train import loader_workers

    assert loader_workers(torch.device("cpu")) == 0
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert loader_workers(torch.device("cuda"), cap=64) == max(1, len(os.sched_getaffinity(0)) // 2)
    assert loader_workers(torch.device("cuda"), cap=1) == 1


def test_single_process_helpers():
    assert not distributed.is_distributed() and distributed.world_size() == 1 and distributed.is_main()
    assert distributed.gather({"a": 1}) == [{"a": 1}] and distributed.all_sum([1, 2.5]) == [1.0, 2.5]
    assert [list(distributed.shard_indices(7, r, 3)) for r in range(3)] == [[0, 3, 6], [1, 4], [2, 5]]
    assert list(distributed.shard_indices(1, 1, 2)) == []
    assert distributed.per_rank_batch(16, 4) == 4
    assert [distributed.processes_for_batch(b, 8) for b in (16, 75, 50, 64, 7, 3)] == [8, 5, 5, 8, 7, 3]
    with pytest.raises(ValueError, match="batch size 6 is the global batch and must be divisible by the 4"):
        distributed.per_rank_batch(6, 4)
    with pytest.raises(ValueError, match="cannot shard 3 items for rank 2 of 2"):
        distributed.shard_indices(3, 2, 2)
    with pytest.raises(ValueError, match="nproc must be >= 1"):
        distributed.launch(print, 0)
    assert distributed.launch(sum, 1, [1, 2]) == 3


def test_reproduce_nproc_reaches_the_notebooks_and_is_checked(tmp_path, monkeypatch):
    from test_cli import write_notebook

    from emdlib import cli
    from emdlib.study.experiments import NPROC_ENV, default_nproc

    monkeypatch.delenv(NPROC_ENV, raising=False)
    nbs = tmp_path / "nbs"
    write_notebook(nbs, "00_env.ipynb", 'preset = "x"\nresults_root = "."\n',
                   "import os, pathlib\n"
                   f"pathlib.Path(results_root, preset, 'nproc.txt').write_text(os.environ['{NPROC_ENV}'])")
    args = ["reproduce", "--preset", "tiny", "--notebooks", str(nbs), "--results", str(tmp_path / "res"),
            "--data-root", str(tmp_path / "data")]
    assert cli.main([*args, "--nproc", "0"]) == cli.EXIT_USAGE
    assert cli.main([*args, "--nproc", "3"]) == 0
    assert (tmp_path / "res" / "tiny" / "nproc.txt").read_text() == "3"
    assert NPROC_ENV not in os.environ and default_nproc() == 1  # restored after the run
    monkeypatch.setenv(NPROC_ENV, "x")
    with pytest.raises(ValueError, match="EMD_NPROC='x': must be a positive integer"):
        default_nproc()


def test_init_from_env_without_torchrun(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.init_from_env() is False
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert distributed.init_from_env() is False
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE='two' is not an integer"):
        distributed.init_from_env()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(ValueError, match="WORLD_SIZE=2 but RANK is not set"):
        distributed.init_from_env()



def test_backend_and_device_follow_the_study_device(monkeypatch):
    assert distributed.backend_for("cpu") == "gloo"  # a CPU study on a GPU node: NCCL would refuse CPU tensors
    assert distributed.backend_for("cuda") == distributed.backend_for("cuda:0") == "nccl"
    assert distributed.backend_for(None) == ("nccl" if torch.cuda.is_available() else "gloo")
    monkeypatch.setattr(distributed, "is_distributed", lambda: True)
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert distributed.local_device("cuda") == torch.device("cuda", 1)
    assert distributed.local_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="device 'cuda:3' names one GPU, but 2 processes train"):
        distributed.local_device("cuda:3")  # every process would take GPU 3


def test_nproc_is_capped_at_the_visible_gpus(study, monkeypatch, caplog):
    from emdlib.study import experiments

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    import dataclasses

    emd = experiments.SYSTEMS["EMD"]
    assert experiments._processes(emd, dataclasses.replace(study, device="cuda"), 0, 8, "run") == 2
    assert "8 processes asked for, 2 GPUs visible" in caplog.text
    batch = experiments.train_config(emd, study.preset, 0).batch_size
    cpu = dataclasses.replace(study, device="cpu")
    assert experiments._processes(emd, cpu, 0, 8, "run") == distributed.processes_for_batch(batch, 8)  # no cap


if __name__ == "__main__":
    _worker(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]))
