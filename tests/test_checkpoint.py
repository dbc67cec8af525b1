"""Checkpoints as one unit: weights + sidecar verified by sha256, the header copy as the fallback, leftovers cleaned."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from emdlib.checkpoint import (CheckpointError, header_meta, load_checkpoint, load_meta, repair_sidecar,
                               save_checkpoint, sidecar_path)
from emdlib.io import atomic_path, is_temp_name, read_json, remove_stale_temps, sha256_file


def _save(path: Path, value: float, meta: dict) -> str:
    return save_checkpoint(path, {"w": torch.full((2, 3), value)}, meta)


def test_header_carries_the_metadata_and_the_sidecar_its_sha256(tmp_path):
    path = tmp_path / "m.safetensors"
    digest = _save(path, 1.0, {"epoch": 3, "val": {"accuracy": 0.5}, "shape": (2, 3)})
    assert header_meta(path) == {"epoch": 3, "val": {"accuracy": 0.5}, "shape": [2, 3]}
    assert read_json(sidecar_path(path)) == {"epoch": 3, "val": {"accuracy": 0.5}, "shape": [2, 3], "sha256": digest}
    assert digest == sha256_file(path)
    with pytest.raises(TypeError, match="not JSON serialisable"):
        save_checkpoint(tmp_path / "bad.safetensors", {"w": torch.zeros(1)}, {"x": object()})
    assert not list(tmp_path.glob("bad*"))  # refused before anything was written


def test_new_weights_beside_an_old_sidecar_use_their_own_metadata(tmp_path, caplog):
    """A run killed between the two writes: the sidecar is the previous epoch's, the weights the new ones."""
    path = tmp_path / "last.safetensors"
    _save(path, 1.0, {"epoch": 1})
    old_side = sidecar_path(path).read_text()
    _save(path, 2.0, {"epoch": 2})
    sidecar_path(path).write_text(old_side)  # as if killed before the sidecar's rename
    with caplog.at_level(logging.WARNING):
        tensors, meta = load_checkpoint(path)
    assert float(tensors["w"][0, 0]) == 2.0 and meta["epoch"] == 2 and meta["sha256"] == sha256_file(path)
    assert "last.json: sidecar was written for other weights" in caplog.text
    assert repair_sidecar(path) is True and read_json(sidecar_path(path))["epoch"] == 2
    assert repair_sidecar(path) is False  # consistent now: nothing to do
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert load_meta(path)["epoch"] == 2
    assert caplog.text == ""


def test_missing_sidecar_falls_back_to_the_header_copy(tmp_path):
    path = tmp_path / "m.safetensors"
    _save(path, 1.0, {"image_size": 64})
    sidecar_path(path).unlink()
    assert load_meta(path, required=("image_size",))["image_size"] == 64
    with pytest.raises(CheckpointError, match=r"m.safetensors: checkpoint metadata lacks \['model'\]"):
        load_meta(path, required=("model",))


def test_weights_without_header_copy_need_a_matching_sidecar(tmp_path):
    """Files written before the header copy existed (or by other tools): the sidecar is the only metadata."""
    path = tmp_path / "old.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(FileNotFoundError, match=r"old.json: sidecar of checkpoint old.safetensors not found"):
        load_checkpoint(path)
    sidecar_path(path).write_text(json.dumps({"epoch": 1, "sha256": "0" * 64}))
    with pytest.raises(CheckpointError, match=r"old.json: sidecar does not belong to old.safetensors"):
        load_checkpoint(path)
    assert repair_sidecar(path) is False  # nothing to repair it from
    sidecar_path(path).write_text(json.dumps({"epoch": 1, "sha256": sha256_file(path)}))
    assert load_checkpoint(path)[1]["epoch"] == 1


def test_temp_files_of_a_killed_writer_are_recognised_and_removed(tmp_path):
    (tmp_path / "sub").mkdir()
    with atomic_path(tmp_path / "sub" / "0001.crops.npy", suffix=".npy") as tmp:
        tmp.write_bytes(b"half")
        name = tmp.name  # what a writer killed at this point leaves behind
    assert is_temp_name(name) and not (tmp_path / "sub" / name).exists()
    leftovers = [tmp_path / "sub" / name, tmp_path / ".last.a1b2c3d4.tmp.safetensors"]
    keep = [tmp_path / ".hidden", tmp_path / "notes.tmp", tmp_path / "a.tmp.npy", tmp_path / "sub" / "0001.crops.npy"]
    for p in leftovers + keep:
        p.write_bytes(b"x")
    assert remove_stale_temps(tmp_path / "sub", recursive=False) == [leftovers[0]]
    assert remove_stale_temps(tmp_path) == [leftovers[1]]
    assert all(p.exists() for p in keep)
    assert remove_stale_temps(tmp_path / "absent") == []
