"""Checkpoints: safetensors tensors plus a JSON sidecar, nothing that needs unpickling.

``save_checkpoint(path, state_dict, meta)`` writes ``path`` (``*.safetensors``) and ``path.with_suffix('.json')``
(config, class names, input convention, metrics, ...). Third-party ``.pt`` files are read with
:func:`load_torch_state_dict`, which always uses ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors.torch import load_file, save_file

from emdlib.io import atomic_path, read_json, sha256_file, write_json


def sidecar_path(path: str | os.PathLike) -> Path:
    """The JSON sidecar that belongs to a ``.safetensors`` checkpoint."""
    return Path(path).with_suffix(".json")


def save_checkpoint(path: str | os.PathLike, state_dict: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> str:
    """Write tensors (safetensors) and ``meta`` (JSON sidecar) atomically; return the tensors' sha256.

    The sidecar also records the sha256 so a reader can tell a sidecar from another run's tensors.
    """
    path = Path(path)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    with atomic_path(path, suffix=".safetensors") as tmp:
        save_file(tensors, str(tmp))
    digest = sha256_file(path)
    write_json(sidecar_path(path), {**dict(meta), "sha256": digest})
    return digest


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], dict]:
    """Read a checkpoint written by :func:`save_checkpoint`: ``(state_dict, meta)``.

    Raises a clear error naming the file when either part is missing or unreadable.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        tensors = load_file(str(path), device=str(device))
    except Exception as e:  # safetensors raises its own error types
        raise ValueError(f"{path}: not a readable safetensors checkpoint ({e})") from e
    side = sidecar_path(path)
    meta = read_json(side) if side.is_file() else {}
    return tensors, meta


def load_torch_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a third-party PyTorch state dict safely (``weights_only=True``), naming the file on failure."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: weights file not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path}: cannot be loaded as a state dict with weights_only=True ({e})") from e
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: expected a state dict, found {type(obj).__name__}")
    return dict(obj)
