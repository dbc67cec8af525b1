"""benchmarks/gpu.sh and benchmarks/gpu_throughput.py (issue 14, deliverable 7), on the CPU: the script runs its quick
mode end to end and records each step; FLOPs are counted as hand-computed; the throughput record is consistent."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]


def _module():
    spec = importlib.util.spec_from_file_location("gpu_throughput", REPO / "benchmarks" / "gpu_throughput.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_forward_flops_counts_two_per_multiply_add() -> None:
    gt = _module()
    linear = nn.Linear(3, 4)
    assert gt.forward_flops(lambda: linear(torch.zeros(1, 3))) == 2 * 3 * 4
    conv = nn.Conv2d(1, 2, 3, bias=False)  # 5x5 input → 3x3 output, 9 multiply-adds per output value, 2 channels
    assert gt.forward_flops(lambda: conv(torch.zeros(1, 1, 5, 5))) == 2 * 9 * (3 * 3) * 2


@pytest.mark.timeout(600)
def test_gpu_script_quick_mode_runs_on_the_cpu(tmp_path) -> None:
    env = {**os.environ, "DEVICE": "cpu", "QUICK": "1", "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu.sh"), str(tmp_path)], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=540)
    assert done.returncode == 0, done.stderr[-2000:] + (tmp_path / "logs" / "throughput.log").read_text()[-2000:]
    run = json.loads((tmp_path / "gpu_run.json").read_text())
    assert run["device_requested"] == "cpu" and run["steps"]["throughput"]["exit"] == 0
    (record,) = json.loads((tmp_path / "gpu_throughput.json").read_text()).values()
    assert record["image_size"] == 64 and record["batch"] == 2 and record["dtype"] == "float32"
    for key in ("emd_bare_images_per_s", "emd_loop_images_per_s", "timm_bare_images_per_s", "emd_forward_gflop",
                "timm_forward_gflop"):
        assert record[key] > 0, key
    assert record["emd_forward_gflop"] > record["timm_forward_gflop"]  # EMD = encoder + decoder + FER stream
    ratio = record["emd_tflop_per_s"] / record["timm_tflop_per_s"]
    assert record["emd_over_timm_flop_per_s"] == pytest.approx(ratio, rel=0.02)
    assert "met_images_per_s" not in record["targets"]  # targets are judged only on CUDA at 299 px


def test_gpu_script_records_a_failing_step_and_exits_1(tmp_path) -> None:
    env = {**os.environ, "DEVICE": "no-such-device", "QUICK": "1", "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu.sh"), str(tmp_path)], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    run = json.loads((tmp_path / "gpu_run.json").read_text())
    assert run["steps"]["throughput"]["exit"] != 0
    assert "no-such-device" in (tmp_path / "logs" / "throughput.log").read_text()
