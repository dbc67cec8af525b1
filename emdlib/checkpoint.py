"""Checkpoints: safetensors tensors plus a JSON sidecar, nothing that needs unpickling.

``save_checkpoint(path, state_dict, meta)`` writes ``path`` (``*.safetensors``) and ``path.with_suffix('.json')``
(config, class names, input convention, metrics, ...). Third-party ``.pt`` files are read with
:func:`load_torch_state_dict`, which always uses ``torch.load(weights_only=True)``.

The weights and the sidecar are one unit even though they are two files:

* the sidecar records the sha256 of the weights file, and :func:`load_checkpoint` checks it, so a sidecar is never
  paired with weights it was not written for;
* the weights file carries its own copy of the metadata in the safetensors header (``__metadata__["emdlib"]``), and
  the weights file is written first. A run killed between the two writes leaves new weights and an old (or no)
  sidecar: :func:`load_checkpoint` notices the sha256 mismatch, warns, and returns the metadata the weights were
  written with, so nothing downstream ever describes weights with another file's numbers.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from emdlib.io import atomic_path, read_json, sha256_file, to_json, write_json

log = logging.getLogger(__name__)

#: Key of the metadata copy in the safetensors header (its ``__metadata__`` values must be strings).
HEADER_KEY = "emdlib"
#: Keys every sidecar written by :func:`save_checkpoint` has.
SIDECAR_KEYS: tuple[str, ...] = ("sha256",)


class CheckpointError(ValueError):
    """A checkpoint file or its sidecar is unreadable, malformed, or the two do not belong together."""


def sidecar_path(path: str | os.PathLike) -> Path:
    """The JSON sidecar that belongs to a ``.safetensors`` checkpoint."""
    return Path(path).with_suffix(".json")


def save_checkpoint(path: str | os.PathLike, state_dict: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> str:
    """Write tensors (safetensors, with ``meta`` in its header) then the JSON sidecar, each atomically.

    ``meta`` must be JSON-serialisable (numpy scalars, tuples and paths are converted). The sidecar holds ``meta``
    plus ``sha256``, the hex digest of the weights file, which is returned. Raises ``TypeError`` for metadata that
    cannot be written as JSON (before anything is written).
    """
    path = Path(path)
    header = to_json(dict(meta), indent=None)  # fails before any file is touched
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    with atomic_path(path, suffix=".safetensors") as tmp:
        save_file(tensors, str(tmp), metadata={HEADER_KEY: header})
    digest = sha256_file(path)
    write_json(sidecar_path(path), {**json.loads(header), "sha256": digest})
    return digest


def header_meta(path: str | os.PathLike) -> dict | None:
    """The metadata copy stored in a checkpoint's safetensors header, or None (a file written before it existed).

    Raises :class:`CheckpointError` naming the file when it is not a readable safetensors file (truncated, another
    format, a pickle: safetensors never executes anything it reads).
    """
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            header = (f.metadata() or {}).get(HEADER_KEY)
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(f"{path}: not a readable safetensors checkpoint (truncated, or another format; {e})") \
            from e
    if header is None:
        return None
    try:
        meta = json.loads(header)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: metadata in the safetensors header is not valid JSON ({e})") from e
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: metadata in the safetensors header is a JSON {type(meta).__name__}, "
                              "expected an object")
    return meta


def read_sidecar(path: str | os.PathLike, required: Sequence[str] = SIDECAR_KEYS) -> dict:
    """Read a checkpoint's JSON sidecar and check its shape: a JSON object with the ``required`` keys.

    ``path`` is the checkpoint (``.safetensors``) or the sidecar itself. Raises ``FileNotFoundError`` (no sidecar)
    or :class:`CheckpointError` (not JSON, not an object, keys missing), naming the sidecar.
    """
    side = sidecar_path(path)
    meta = read_json(side)  # FileNotFoundError / ValueError naming the file
    if not isinstance(meta, dict):
        raise CheckpointError(f"{side}: checkpoint sidecar must be a JSON object, found a JSON "
                              f"{_json_type(meta)} ({_preview(meta)})")
    absent = [k for k in required if k not in meta]
    if absent:
        raise CheckpointError(f"{side}: checkpoint sidecar lacks {absent} (found keys {sorted(meta)[:10]})")
    return meta


def load_meta(path: str | os.PathLike, required: Sequence[str] = ()) -> dict:
    """The metadata that belongs to the weights in ``path``, checked against them (no tensors are loaded).

    * the sidecar exists, is a JSON object with ``sha256`` and the ``required`` keys, and its ``sha256`` is the
      weights file's: the sidecar;
    * the sidecar is missing, or valid but written for other weights (a run killed between writing the weights and
      the sidecar), and the weights carry their own metadata copy: that copy, with ``sha256`` set, and a warning;
    * otherwise :class:`CheckpointError` / ``FileNotFoundError`` naming the file and the problem.

    A sidecar that is not JSON or not an object is always an error (it was edited or damaged, not left behind).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    embedded = header_meta(path)
    side = sidecar_path(path)
    digest = sha256_file(path)
    if side.is_file():
        meta = read_sidecar(path)
        if meta["sha256"] == digest:
            _check_required(meta, required, side)
            return meta
        if embedded is None:
            recorded = str(meta["sha256"])[:12]
            raise CheckpointError(f"{side}: sidecar does not belong to {path.name} (sha256 {recorded}… recorded, "
                                  f"{digest[:12]}… on disk); the two were written by different runs")
        log.warning("%s: sidecar was written for other weights than %s (a run interrupted between the two "
                    "writes?); using the metadata stored in the weights file", side, path.name)
    elif embedded is None:
        raise FileNotFoundError(f"{side}: sidecar of checkpoint {path.name} not found (copy the .json with the "
                                ".safetensors)")
    else:
        log.warning("%s: sidecar missing; using the metadata stored in %s", side, path.name)
    meta = {**embedded, "sha256": digest}
    _check_required(meta, required, path)
    return meta


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu",
                    required: Sequence[str] = ()) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a checkpoint written by :func:`save_checkpoint`: ``(state_dict, meta)``, the two verified together.

    ``meta`` comes from :func:`load_meta` (sidecar checked against the weights' sha256, header copy as fallback);
    ``required`` names sidecar keys the caller needs. Raises ``FileNotFoundError`` or :class:`CheckpointError`
    (a ``ValueError``) naming the file and the problem: missing, truncated or not safetensors (a pickle is refused
    without being run), sidecar missing, not a JSON object, lacking keys, or written for other weights.
    """
    path = Path(path)
    meta = load_meta(path, required)
    try:
        tensors = load_file(str(path), device=str(device))
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(f"{path}: not a readable safetensors checkpoint ({e})") from e
    return tensors, meta


def repair_sidecar(path: str | os.PathLike) -> bool:
    """Rewrite a checkpoint's sidecar that is missing or was written for other weights, from the weights' header.

    For a run folder that a killed run left with new weights and an old sidecar: afterwards every reader sees the
    pair verified without a warning. A sidecar that is not a JSON object is left alone (it was damaged or edited, not
    left behind; :func:`load_meta` reports it). Returns True when the sidecar was rewritten.
    """
    path = Path(path)
    side = sidecar_path(path)
    digest = sha256_file(path)
    if side.is_file():
        try:
            current = read_json(side)
        except ValueError:
            return False
        if not isinstance(current, dict) or current.get("sha256") == digest:
            return False
    embedded = header_meta(path)
    if embedded is None:
        return False
    write_json(side, {**embedded, "sha256": digest})
    log.warning("%s: sidecar rewritten from the metadata stored in %s (the run that wrote them was interrupted "
                "between the two files)", side, path.name)
    return True


def _check_required(meta: Mapping[str, Any], required: Sequence[str], source: Path) -> None:
    absent = [k for k in required if k not in meta]
    if absent:
        raise CheckpointError(f"{source}: checkpoint metadata lacks {absent} (found keys {sorted(meta)[:10]})")


def _json_type(obj: Any) -> str:
    return {list: "array", str: "string", int: "number", float: "number", bool: "boolean",
            type(None): "null"}.get(type(obj), type(obj).__name__)


def _preview(obj: Any, limit: int = 40) -> str:
    text = json.dumps(obj)
    return text if len(text) <= limit else text[: limit - 1] + "…"


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
