"""Model registry: rebuild any trained detector from its checkpoint sidecar.

Every checkpoint that emdlib writes for a detector records ``{"model": {"name": NAME, "kwargs": {...}},
"image_size": S}`` in its JSON sidecar; :func:`model_from_checkpoint` constructs ``NAME(**kwargs)`` (never
downloading weights) and loads the safetensors tensors strictly. This is what ``emd detect`` and the analysis
notebooks use, so every model — EMD, its variants and every baseline — is loaded the same way.

Names are resolved in this order:

1. constructors registered with the :func:`register_model` decorator (e.g. ``"emd"`` in :mod:`emdlib.models.emd`);
2. the lazy ``name → "module:attribute"`` table :data:`LAZY_MODELS` (the FER streams and EMD), imported on first use;
3. the baselines' own table :data:`emdlib.baselines.BASELINES` (``mesonet``, ``meso4``, ``xception``,
   ``multitask``, ``multitask_ensfer``, ``cozzolino``, ``bayar_stamm``, ``rahmouni``).

So a new model needs no change here as long as it is reachable from one of them. A FER stream described in the
format of :func:`emdlib.fer.model_spec` (``{"kind": "ESR", "num_branches": B, "num_classes": C}``) is accepted
wherever a nested spec is expected and normalised to ``{"name": "esr", "kwargs": {...}}``.

:func:`save_detector` writes a checkpoint that :meth:`emdlib.detect.Detector.from_checkpoint` reads, and
:func:`mesonet_from_h5` builds the right MesoNet variant for an official Keras weights file (reference-facts §D.5).
"""

from __future__ import annotations

import importlib
import logging
import os
from pathlib import Path
from typing import Any, Callable, Mapping

import torch.nn as nn

from emdlib.checkpoint import load_checkpoint, save_checkpoint

log = logging.getLogger(__name__)

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}

#: name → "module:attribute", imported only when the name is built.
LAZY_MODELS: dict[str, str] = {
    "emd": "emdlib.models.emd:emd_from_spec",
    "esr": "emdlib.models.esr:ESR",
    "simfer": "emdlib.models.simfer:SimFER",
}


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: make a constructor buildable by name from a checkpoint sidecar."""

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _REGISTRY[name] = fn
        return fn

    return deco


def _baselines() -> dict[str, Callable[..., Any]]:
    try:
        from emdlib.baselines import BASELINES
    except ImportError as e:  # pragma: no cover - baselines are part of the package
        log.debug("registry: emdlib.baselines not importable (%s)", e)
        return {}
    return dict(BASELINES)


def known_models() -> list[str]:
    """Every name :func:`build_model` accepts."""
    return sorted(set(_REGISTRY) | set(LAZY_MODELS) | set(_baselines()))


def resolve(name: str) -> Callable[..., nn.Module]:
    """The constructor behind ``name`` (registered, lazy table, or baseline); ``KeyError`` naming the known ones."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name in LAZY_MODELS:
        module, attr = LAZY_MODELS[name].split(":")
        fn = getattr(importlib.import_module(module), attr)
        return _REGISTRY.get(name, fn)  # importing may have registered it (decorator); either is the same function
    baselines = _baselines()
    if name in baselines:
        return baselines[name]
    raise KeyError(f"unknown model {name!r}; known: {known_models()}")


def normalise_spec(spec: Any) -> Any:
    """Return ``spec`` with every nested FER description in :func:`emdlib.fer.model_spec` form
    (``{"kind": ..., ...}``) turned into a registry spec (``{"name": ..., "kwargs": ...}``)."""
    if isinstance(spec, Mapping):
        if "name" not in spec and isinstance(spec.get("kind"), str):
            kwargs = {k: v for k, v in spec.items() if k != "kind"}
            return {"name": spec["kind"].lower(), "kwargs": normalise_spec(kwargs)}
        return {k: normalise_spec(v) for k, v in spec.items()}
    return spec


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Construct a model by name (see the module docstring for the lookup order); never downloads weights."""
    return resolve(name)(**normalise_spec(kwargs))


def model_spec(name: str, **kwargs: Any) -> dict[str, Any]:
    """The sidecar entry that lets :func:`model_from_checkpoint` rebuild a model."""
    return {"name": name, "kwargs": kwargs}


def build_from_spec(spec: Mapping[str, Any], source: str | os.PathLike = "spec") -> nn.Module:
    """``build_model(spec["name"], **spec["kwargs"])`` with errors naming ``source``."""
    spec = normalise_spec(spec)
    if not isinstance(spec, Mapping) or not isinstance(spec.get("name"), str):
        raise ValueError(f"{source}: sidecar has no 'model' entry (name, kwargs); cannot rebuild the network")
    try:
        model = build_model(spec["name"], **(spec.get("kwargs") or {}))
    except KeyError as e:
        raise ValueError(f"{source}: {e.args[0] if e.args else e}") from e
    except TypeError as e:
        raise ValueError(f"{source}: model {spec['name']!r} cannot be built from kwargs "
                         f"{spec.get('kwargs')} ({e})") from e
    if not isinstance(model, nn.Module):
        raise ValueError(f"{source}: model {spec['name']!r} is a {type(model).__name__}, not a torch network")
    return model


def _load_strict(model: nn.Module, state: Mapping[str, Any], source: str | os.PathLike, name: str) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{source}: weights do not match model {name!r} "
                         f"(missing {missing[:5]}{'…' if len(missing) > 5 else ''}, "
                         f"unexpected {unexpected[:5]}{'…' if len(unexpected) > 5 else ''})")
    bad = [k for k in expected if tuple(expected[k].shape) != tuple(state[k].shape)]
    if bad:
        k = bad[0]
        raise ValueError(f"{source}: {len(bad)} tensors have the wrong shape for model {name!r}, e.g. {k}: "
                         f"{tuple(state[k].shape)} in the file, {tuple(expected[k].shape)} in the model")
    model.load_state_dict(state, strict=True)


def model_from_checkpoint(path: str | os.PathLike, device: str = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild a detector from ``path`` (safetensors + sidecar); returns ``(model in eval mode, sidecar)``."""
    state, meta = load_checkpoint(path, device="cpu")
    spec = normalise_spec(meta.get("model"))  # FER checkpoints (emdlib.fer) store {"kind": ...}
    model = build_from_spec(spec if isinstance(spec, Mapping) else {}, path)
    _load_strict(model, state, path, spec["name"])
    return model.to(device).eval(), meta


def save_detector(
    path: str | os.PathLike,
    model: nn.Module,
    image_size: int,
    spec: Mapping[str, Any] | None = None,
    meta: Mapping[str, Any] | None = None,
    verify: bool = True,
) -> str:
    """Write ``model`` as a detector checkpoint (safetensors + sidecar) that ``emd detect`` can load.

    The sidecar holds ``{"model": spec, "image_size": image_size, **meta}``. ``spec`` defaults to ``model.spec()``
    (EMD has one); baselines pass e.g. ``model_spec("meso4")``. With ``verify`` the spec is rebuilt once and its
    tensor names and shapes compared with ``model``'s, so a checkpoint that could not be loaded is never written.
    Returns the tensors' sha256.
    """
    if spec is None:
        if not callable(getattr(model, "spec", None)):
            raise ValueError(f"{path}: {type(model).__name__} has no spec(); pass spec=model_spec(name, **kwargs)")
        spec = model.spec()
    spec = normalise_spec(dict(spec))
    if int(image_size) <= 0:
        raise ValueError(f"{path}: image_size must be positive, got {image_size}")
    state = model.state_dict()
    if verify:
        _load_strict(build_from_spec(spec, path), state, path, spec["name"])
    side = {**dict(meta or {}), "model": spec, "image_size": int(image_size)}
    return save_checkpoint(path, state, side)


MESONET_INPUT_SIZE = 256


def mesonet_from_h5(path: str | os.PathLike) -> nn.Module:
    """The MesoNet variant an official Keras weights file holds (Meso-4: 4 conv layers; MesoInception-4: 16),
    with the file's weights loaded (:func:`emdlib.baselines.mesonet.load_mesonet_h5`), in eval mode."""
    import h5py

    from emdlib.baselines.mesonet import Meso4, MesoInception4, load_mesonet_h5

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: MesoNet weights file not found")
    try:
        with h5py.File(path, "r") as f:
            root = f["model_weights"] if "model_weights" in f else f
            n_conv = sum(1 for k in root.keys() if k.startswith("conv2d"))
    except OSError as e:
        raise ValueError(f"{path}: not a readable HDF5 file ({e})") from e
    if n_conv == 4:
        model = Meso4()
    elif n_conv == 16:
        model = MesoInception4()
    else:
        raise ValueError(f"{path}: {n_conv} conv layers; neither Meso-4 (4) nor MesoInception-4 (16) weights")
    return load_mesonet_h5(model, path).eval()
