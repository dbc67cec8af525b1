"""ImageNet weights for the timm networks of the study (EMD's aligned-Xception encoder, FF++'s XceptionNet).

One loader, :func:`create_timm_model`, serves every place that can start from ImageNet weights. ``weights`` is

* ``False`` / ``None``: random initialisation;
* ``True``: timm's default pretrained weights (Hugging Face hub; needs the network once, then timm's cache);
* a local file or folder (the study parameter :data:`STUDY_PARAMETER`, ``emd reproduce -p imagenet_weights PATH``).
  A file serves every timm network built from it; a folder holds one file per timm model, named
  ``<timm name><suffix>`` (:data:`SUFFIXES`, e.g. ``xception65.safetensors`` and ``legacy_xception.safetensors``),
  which a study needs when EMD's encoder and XceptionNet both start from ImageNet (the ``paper`` preset). A file is
  a ``.safetensors`` file, or a PyTorch ``.pth``/``.pt``/``.bin``/``.pth.tar`` file read with
  ``torch.load(weights_only=True)`` (a pickle payload with code is refused), holding a plain state dict or a timm
  training checkpoint (``state_dict_ema`` / ``model_ema`` / ``state_dict`` / ``model``; ``module.`` prefixes are
  stripped, as timm's own ``load_state_dict`` does). The state dict goes through timm's ``load_pretrained`` (its
  classifier is dropped when the model has another number of classes, e.g. ``num_classes=0``) and must then match
  the model key for key.

Errors name the file and the problem; offline without a file, the error says how to give one.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

#: The study parameter (``emd reproduce -p imagenet_weights FILE``, :class:`emdlib.study.Study`) that gives a file.
STUDY_PARAMETER = "imagenet_weights"
#: The wrappers a timm training checkpoint may keep its weights under, in timm's order of preference.
CHECKPOINT_KEYS: tuple[str, ...] = ("state_dict_ema", "model_ema", "state_dict", "model")
_PREFIXES: tuple[str, ...] = ("_orig_mod.", "module.")
#: The file names a weights folder is searched for, after the timm model name, in this order.
SUFFIXES: tuple[str, ...] = (".safetensors", ".pth", ".pt", ".bin", ".pth.tar")


def weights_file(weights: str | os.PathLike, name: str) -> Path:
    """The file that holds timm model ``name``'s weights: ``weights`` itself when it is a file, else
    ``weights/<name><suffix>`` for the first of :data:`SUFFIXES` that exists.

    Raises FileNotFoundError naming what was looked for (and the study parameter that sets it).
    """
    path = Path(weights)
    if path.is_dir():
        for suffix in SUFFIXES:
            if (path / f"{name}{suffix}").is_file():
                return path / f"{name}{suffix}"
        raise FileNotFoundError(f"{path}: no ImageNet weights for timm model {name!r} in this folder (looked for "
                                f"{', '.join(name + s for s in SUFFIXES)}; study parameter {STUDY_PARAMETER})")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: ImageNet weights file not found (study parameter {STUDY_PARAMETER})")
    return path


def read_weights_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict from a local weights file, without unpickling code.

    ``.safetensors`` → ``safetensors.torch.load_file``; anything else → ``torch.load(weights_only=True)``, unwrapped
    from a timm training checkpoint (:data:`CHECKPOINT_KEYS`) and cleaned of ``module.``/``_orig_mod.`` prefixes.
    Raises FileNotFoundError when ``path`` is not a file, ValueError naming ``path`` when it cannot be read that way
    (e.g. a pickle with objects other than tensors and containers) or holds no tensor state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: ImageNet weights file not found (study parameter {STUDY_PARAMETER})")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            obj: Any = load_file(str(path), device="cpu")
        except Exception as e:
            raise ValueError(f"{path}: cannot be read as safetensors ({type(e).__name__}: {e})") from e
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ValueError(f"{path}: cannot be loaded with torch.load(weights_only=True) — only plain state dicts "
                             f"and timm checkpoints are read, never pickled code ({type(e).__name__}: {e})") from e
        if isinstance(obj, Mapping):
            key = next((k for k in CHECKPOINT_KEYS if isinstance(obj.get(k), Mapping)), None)
            if key is not None:
                log.info("%s: using the checkpoint's %r weights", path, key)
                obj = obj[key]
    if not isinstance(obj, Mapping) or not obj:
        raise ValueError(f"{path}: expected a non-empty state dict, found {type(obj).__name__}")
    state: dict[str, torch.Tensor] = {}
    for k, v in obj.items():
        if not isinstance(v, torch.Tensor):
            raise ValueError(f"{path}: entry {k!r} is a {type(v).__name__}, not a tensor")
        for prefix in _PREFIXES:
            if k.startswith(prefix):
                k = k[len(prefix):]
        state[k] = v
    return state


def offline_help(name: str) -> str:
    """How to give ``name``'s ImageNet weights without the network (the end of the offline error)."""
    return (f"Give a local file instead: `emd reproduce -p {STUDY_PARAMETER} /path/to/{name}.safetensors` (study "
            f"parameter {STUDY_PARAMETER}; in code pretrained='/path/to/file'): the timm {name!r} ImageNet weights as "
            f".safetensors (e.g. model.safetensors of timm/{name}.* on the Hugging Face hub), a timm checkpoint or a "
            f".pth state dict — or a folder holding {name}.safetensors beside the other networks' files; or start "
            f"from random weights (pretrained=False).")


def create_timm_model(name: str, weights: bool | str | os.PathLike | None = False, **kwargs: Any) -> nn.Module:
    """``timm.create_model(name, **kwargs)`` started from ``weights`` (False/None, True, or a local file or folder,
    :func:`weights_file`; see the module docstring). Returns the model (train mode, as timm builds it).

    Raises FileNotFoundError (no such file), ValueError (unreadable file, or weights that do not fit ``name``; both
    name the file) and RuntimeError when ``weights=True`` and timm cannot fetch them (e.g. offline): the message
    says how to give a local file (:func:`offline_help`).
    """
    import timm

    if weights is False or weights is None:
        return timm.create_model(name, pretrained=False, **kwargs)
    if weights is True:
        try:
            return timm.create_model(name, pretrained=True, **kwargs)
        except Exception as e:  # huggingface_hub / urllib raise their own (often OSError-derived) types offline
            raise RuntimeError(f"ImageNet weights for timm model {name!r} could not be downloaded "
                               f"({type(e).__name__}: {e}). " + offline_help(name)) from e
    path = weights_file(weights, name)
    state = read_weights_file(path)
    keys = set(state)  # timm pops the classifier from the dict it is given
    try:
        model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(state_dict=state), **kwargs)
    except Exception as e:
        raise ValueError(f"{path}: does not hold ImageNet weights for timm model {name!r} "
                         f"({type(e).__name__}: {e})") from e
    # timm loads non-strictly when the number of classes changes (num_classes=0 for EMD's encoder): a file of
    # another network would leave the model at random initialisation without an error
    own = [k for k in model.state_dict() if not k.endswith("num_batches_tracked")]
    missing = [k for k in own if k not in keys]
    if missing:
        raise ValueError(f"{path}: does not hold ImageNet weights for timm model {name!r} ({len(missing)} of its "
                         f"{len(own)} tensors are not in the file, e.g. {', '.join(missing[:3])})")
    log.info("%s: ImageNet weights loaded into %s", path, name)
    return model


def describe_weights(weights: bool | str | os.PathLike | None, name: str) -> dict[str, Any]:
    """What a network started from, for run records: ``{"source": "random"}``, ``{"source": "timm", "model": name}``
    or ``{"source": "file", "model": name, "file": path, "sha256": …}`` (the file hashed; FileNotFoundError as
    :func:`weights_file`)."""
    if weights is False or weights is None:
        return {"source": "random"}
    if weights is True:
        return {"source": "timm", "model": name}
    from emdlib.io import sha256_file

    path = weights_file(weights, name)
    return {"source": "file", "model": name, "file": str(path), "sha256": sha256_file(path)}
