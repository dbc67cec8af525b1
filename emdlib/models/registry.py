"""Model registry: rebuild any trained detector from its checkpoint sidecar.

Every checkpoint that emdlib writes for a detector records ``{"model": {"name": NAME, "kwargs": {...}}}`` in its
JSON sidecar; :func:`model_from_checkpoint` constructs ``NAME(**kwargs)`` (never downloading weights) and loads the
safetensors tensors strictly. This is what ``emd detect`` and the analysis notebooks use, so every model — EMD, its
variants and every baseline — is loaded the same way.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

import torch.nn as nn

from emdlib.checkpoint import load_checkpoint

log = logging.getLogger(__name__)

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: make a constructor buildable by name from a checkpoint sidecar."""

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _REGISTRY[name] = fn
        return fn

    return deco


def _load_all() -> None:
    # importing the modules runs their @register_model decorators
    import importlib

    for mod in ("emdlib.models.emd", "emdlib.models.esr", "emdlib.models.simfer", "emdlib.baselines"):
        try:
            importlib.import_module(mod)
        except ImportError as e:  # pragma: no cover - a missing optional module must not hide the others
            log.debug("registry: %s not importable (%s)", mod, e)


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Construct a registered model by name."""
    _load_all()
    if name not in _REGISTRY:
        raise KeyError(f"unknown model {name!r}; registered: {sorted(_REGISTRY)}")
    return _REGISTRY[name](**kwargs)


def model_spec(name: str, **kwargs: Any) -> dict[str, Any]:
    """The sidecar entry that lets :func:`model_from_checkpoint` rebuild a model."""
    return {"name": name, "kwargs": kwargs}


def model_from_checkpoint(path: str | Path, device: str = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild a detector from ``path`` (safetensors + sidecar); returns ``(model in eval mode, sidecar)``."""
    state, meta = load_checkpoint(path, device=device)
    spec = meta.get("model")
    if not isinstance(spec, dict) or "name" not in spec:
        raise ValueError(f"{path}: sidecar has no 'model' entry (name, kwargs); cannot rebuild the network")
    model = build_model(spec["name"], **spec.get("kwargs", {}))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path}: weights do not match model {spec['name']!r} (missing {missing[:5]}, unexpected {unexpected[:5]})")
    return model.to(device).eval(), meta
