"""Model registry: the one checkpoint-spec format, and the one way to rebuild any network emdlib trained.

It sits above :mod:`emdlib.models` and :mod:`emdlib.baselines` (they never import it), so neither package depends
on the other through it. Every checkpoint emdlib writes — a detector (EMD, its variants, every neural baseline) or a
FER stream (ESR, SimFER) — records in its JSON sidecar::

    "model": {"name": NAME, "kwargs": {...}}

:func:`model_from_checkpoint` rebuilds ``NAME(**kwargs)`` and loads the safetensors tensors strictly
(:func:`load_state_strict`); ``emd detect``, the figures and the study's FER stage all load this way.

A sidecar is outside input, so what it may ask for is checked against :data:`MODELS` before anything is built
(issue 11, "trusting a weights file before validating it"): the name must be registered, every constructor argument
must be one the entry declares (:class:`Param`) and of the declared JSON type, a nested FER stream must itself be a
valid FER spec, and ``pretrained`` is never honoured from a file — a checkpoint holds every weight, so rebuilding
never reaches the network. Each violation is a ``ValueError`` naming the file and the key.

In code (the study, tests), :func:`build_model` constructs a registered model from the same arguments plus what only
code may pass: an already loaded FER stream (``fer=`` a module) and ``pretrained`` (timm's ImageNet weights).
:func:`model_spec` turns such arguments into the sidecar entry, checked the same way, so a spec that could not be
read back is never written. :func:`save_detector` / :func:`save_fer_stream` write checkpoints; :func:`mesonet_from_h5`
builds the MesoNet variant an official Keras file holds (reference-facts §D.5).
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch.nn as nn

from emdlib.checkpoint import load_checkpoint, save_checkpoint

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Param:
    """A constructor argument a spec may set: its JSON types (``int`` also accepted where ``float`` is declared;
    ``bool`` never passes as ``int``), whether JSON ``null`` is allowed, the element type of a list, or ``"fer"`` for
    a nested FER-stream spec."""

    types: tuple[type, ...] = ()
    nullable: bool = False
    items: type | None = None
    fer: bool = False

    def check(self, value: Any) -> str | None:
        """Why ``value`` is not acceptable, or None."""
        if value is None:
            return None if self.nullable else "null is not allowed"
        if self.fer:
            return None if isinstance(value, Mapping) else f"expected a FER-stream spec, got {type(value).__name__}"
        if self.items is not None:
            if not isinstance(value, (list, tuple)):
                return f"expected a list of {self.items.__name__}, got {type(value).__name__}"
            bad = [v for v in value if not _is(v, (self.items,))]
            return f"list items must be {self.items.__name__}, got {bad[:3]}" if bad else None
        if not _is(value, self.types):
            return f"expected {' or '.join(t.__name__ for t in self.types)}, got {type(value).__name__} {value!r}"
        return None


def _is(value: Any, types: tuple[type, ...]) -> bool:
    if isinstance(value, bool):
        return bool in types
    if float in types and isinstance(value, int):
        return True
    return isinstance(value, types)


INT, FLOAT, BOOL, STR = Param((int,)), Param((float,)), Param((bool,)), Param((str,))
FER_SPEC = Param(fer=True, nullable=True)


@dataclass(frozen=True)
class Entry:
    """A registered model: ``target`` (``"module:attribute"``, imported on first use), the arguments a spec may set,
    whether it takes ``pretrained`` (code only) and whether it is a FER stream (may be nested in a detector)."""

    target: str
    params: Mapping[str, Param] = field(default_factory=dict)
    pretrained: bool = False
    fer_stream: bool = False

    def constructor(self) -> Callable[..., nn.Module]:
        module, attr = self.target.split(":")
        return getattr(importlib.import_module(module), attr)


#: Every model a checkpoint may name, with the constructor arguments it may set.
MODELS: dict[str, Entry] = {
    # FER streams (paper §III-C, Table V)
    "esr": Entry("emdlib.models.esr:ESR", {"num_branches": INT, "num_classes": INT}, fer_stream=True),
    "simfer": Entry("emdlib.models.simfer:SimFER", {"num_classes": INT}, fer_stream=True),
    # EMD and its variants (§III-D): "fer" null is the XceptionNet (seg) row of Table IV
    "emd": Entry("emdlib.models.emd:EMD", {"fer": FER_SPEC, "encoder": STR, "output_stride": INT,
                                           "aspp_rates": Param(items=int), "separable": BOOL, "fer_channels": INT},
                 pretrained=True),
    # the baselines of Tables II–V (emdlib.baselines)
    "xception": Entry("emdlib.baselines.xception:XceptionNet", {"num_classes": INT, "drop_rate": FLOAT},
                      pretrained=True),
    "mesonet": Entry("emdlib.baselines.mesonet:MesoInception4",
                     {"head_activation": BOOL, "input_size": INT, "bn_momentum": FLOAT}),
    "meso4": Entry("emdlib.baselines.mesonet:Meso4",
                   {"head_activation": BOOL, "input_size": INT, "bn_momentum": FLOAT}),
    "multitask": Entry("emdlib.baselines.classnseg:MultiTask", {"input_size": INT}),
    "multitask_ensfer": Entry("emdlib.baselines.classnseg:MultiTaskEnsFER",
                              {"fer": FER_SPEC, "fer_channels": INT, "input_size": INT}),
    "cozzolino": Entry("emdlib.baselines.cozzolino:Cozzolino",
                       {"q": FLOAT, "T": INT, "temperature": FLOAT, "crop": Param((int,), nullable=True)}),
    "bayar_stamm": Entry("emdlib.baselines.bayar:BayarStamm", {"input_size": INT, "fc_width": INT, "num_classes": INT}),
    "rahmouni": Entry("emdlib.baselines.rahmouni:Rahmouni", {"num_classes": INT, "keep_prob": FLOAT}),
    "dcnn": Entry("emdlib.baselines.dcnn:DCNN", {"input_size": INT, "max_dictionary": INT, "dictionary_size": INT,
                                                 "procrc_lambda": FLOAT, "procrc_gamma": FLOAT, "seed": INT},
                  pretrained=True),
    "capsule_forensics": Entry("emdlib.baselines.capsule_forensics:CapsuleForensics", {"input_size": INT},
                               pretrained=True),
    "lae": Entry("emdlib.baselines.lae:LAE", {"input_size": INT, "mask_fraction": FLOAT, "selection_rounds": INT,
                                           "activation_weight": FLOAT, "locality_weight": FLOAT, "max_masks": INT}),
    "face_xray": Entry("emdlib.baselines.face_xray:FaceXray", {"backbone": STR, "input_size": INT, "lam": FLOAT},
                       pretrained=True),
    "forensic_transfer": Entry("emdlib.baselines.forensic_transfer:ForensicTransfer",
                               {"input_size": INT, "residual": BOOL}),
    "two_stream": Entry("emdlib.baselines.two_stream:TwoStream",
                        {"input_size": INT, "patch_size": INT, "margin": FLOAT, "svm_c": FLOAT, "max_svm_patches": INT,
                         "seed": INT}, pretrained=True),
}


def known_models() -> list[str]:
    """Every name a spec may use."""
    return sorted(MODELS)


def _entry(name: Any, source: str | os.PathLike, fer_only: bool = False) -> Entry:
    if not isinstance(name, str) or name not in MODELS:
        raise ValueError(f"{source}: unknown model {name!r}; known: {known_models()}")
    entry = MODELS[name]
    if fer_only and not entry.fer_stream:
        raise ValueError(f"{source}: model 'fer' must be a FER stream "
                         f"({[n for n, e in MODELS.items() if e.fer_stream]}), got {name!r}")
    return entry


def check_spec(spec: Any, source: str | os.PathLike = "spec", fer_only: bool = False,
               key: str = "model") -> dict[str, Any]:
    """Validate a spec ``{"name": str, "kwargs": {...}}`` (e.g. read from a sidecar) and return a normalised copy.

    Raises ValueError naming ``source`` and the offending key when the spec is not a mapping, the name is unknown, a
    kwarg is not one the model accepts, a value has the wrong type, or ``pretrained`` is asked for (a checkpoint
    holds every weight; only ``pretrained: false`` is tolerated, and dropped). Nested FER specs are checked too.
    """
    if not isinstance(spec, Mapping) or not isinstance(spec.get("name"), str):
        raise ValueError(f"{source}: sidecar has no '{key}' entry (name, kwargs); cannot rebuild the network")
    extra = sorted(set(spec) - {"name", "kwargs"})
    if extra:
        raise ValueError(f"{source}: '{key}' has unknown entries {extra} (expected name, kwargs)")
    name = spec["name"]
    entry = _entry(name, source, fer_only)
    kwargs = spec.get("kwargs") or {}
    if not isinstance(kwargs, Mapping):
        raise ValueError(f"{source}: '{key}.kwargs' must be a JSON object, got {type(kwargs).__name__}")
    out: dict[str, Any] = {}
    for k, v in kwargs.items():
        where = f"{key}.kwargs.{k}"
        if k == "pretrained":
            if v is False:
                continue  # written by older runs; it is what rebuilding does anyway
            raise ValueError(f"{source}: '{where}' = {v!r} is not honoured from a file (a checkpoint holds every "
                             "weight, and rebuilding never downloads any); remove it")
        param = entry.params.get(k)
        if param is None:
            raise ValueError(f"{source}: '{where}' is not an argument model {name!r} accepts "
                             f"(accepted: {sorted(entry.params)})")
        why = param.check(v)
        if why:
            raise ValueError(f"{source}: '{where}': {why}")
        if param.fer and v is not None:
            v = check_spec(v, source, fer_only=True, key=where)
        elif param.items is not None:
            v = list(v)
        out[k] = v
    return {"name": name, "kwargs": out}


def model_spec(name: str, fer: nn.Module | Mapping[str, Any] | None = None, **kwargs: Any) -> dict[str, Any]:
    """The sidecar entry ``{"name": name, "kwargs": {...}}`` for a model built from these arguments.

    ``fer`` may be a FER-stream module (its :meth:`spec` is used) or a spec; ``pretrained`` is left out (a
    checkpoint holds the weights). The result is checked as :func:`check_spec` checks a file's (ValueError).
    """
    kwargs.pop("pretrained", None)
    if isinstance(fer, nn.Module):
        fer = fer.spec()
    if fer is not None:
        kwargs["fer"] = dict(fer)
    return check_spec({"name": name, "kwargs": kwargs}, source=f"spec of {name!r}")


def build_model(name: str, *, fer: nn.Module | Mapping[str, Any] | None = None, pretrained: bool | str = False,
                **kwargs: Any) -> nn.Module:
    """Construct the registered model ``name`` in code.

    ``kwargs`` are checked as a spec's are; ``fer`` is an already built (and loaded) FER stream, or a FER spec to
    build one from; ``pretrained`` (timm ImageNet weights: False, True or a local file) reaches only the models that
    take it. Raises ValueError for unknown names or arguments.
    """
    spec = check_spec({"name": name, "kwargs": kwargs}, source=f"build_model({name!r})")
    entry = MODELS[name]
    args = dict(spec["kwargs"])
    if isinstance(fer, Mapping):
        fer = build_from_spec(fer, source=f"build_model({name!r}).fer", fer_only=True)
    if fer is not None:
        if "fer" not in entry.params:
            raise ValueError(f"build_model({name!r}): the model takes no FER stream")
        args["fer"] = fer
    if entry.pretrained:
        args["pretrained"] = pretrained
    elif pretrained:
        raise ValueError(f"build_model({name!r}): the model has no pretrained weights to load")
    return _construct(entry, args, name, f"build_model({name!r})")


def build_from_spec(spec: Any, source: str | os.PathLike = "spec", fer_only: bool = False) -> nn.Module:
    """Rebuild a network from a sidecar spec (checked by :func:`check_spec`; nested FER streams built first;
    ``pretrained`` off). Errors are ValueErrors naming ``source``."""
    spec = check_spec(spec, source, fer_only)
    entry = MODELS[spec["name"]]
    args = dict(spec["kwargs"])
    if args.get("fer") is not None:
        args["fer"] = build_from_spec(args["fer"], source, fer_only=True)
    if entry.pretrained:
        args["pretrained"] = False
    return _construct(entry, args, spec["name"], source)


def _construct(entry: Entry, args: dict[str, Any], name: str, source: str | os.PathLike) -> nn.Module:
    if "aspp_rates" in args:
        args["aspp_rates"] = tuple(args["aspp_rates"])
    try:
        model = entry.constructor()(**args)
    except (TypeError, ValueError) as e:
        shown = {k: (type(v).__name__ if isinstance(v, nn.Module) else v) for k, v in args.items()}
        raise ValueError(f"{source}: model {name!r} cannot be built from {shown} ({e})") from e
    if not isinstance(model, nn.Module):
        raise ValueError(f"{source}: model {name!r} is a {type(model).__name__}, not a torch network")
    return model


def load_state_strict(model: nn.Module, state: Mapping[str, Any], source: str | os.PathLike,
                      name: str | None = None) -> nn.Module:
    """Load ``state`` into ``model`` requiring the same tensor names and shapes; ValueError naming ``source``, the
    model (``name``, the spec's registry name, else the class name) and the first differences otherwise. Returns
    ``model``."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    name = name or type(model).__name__
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
    return model


def model_from_checkpoint(path: str | os.PathLike, device: str = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild the network of a checkpoint (safetensors + sidecar): ``(model in eval mode on device, sidecar)``.

    Raises FileNotFoundError for a missing file and ValueError (naming the file) for an unreadable file, a spec the
    registry does not accept, or weights that do not fit it.
    """
    state, meta = load_checkpoint(path, device="cpu")
    spec = check_spec(meta.get("model"), path)
    model = build_from_spec(spec, path)
    load_state_strict(model, state, path, name=spec["name"])
    return model.to(device).eval(), meta


def save_detector(path: str | os.PathLike, model: nn.Module, image_size: int, spec: Mapping[str, Any] | None = None,
                  meta: Mapping[str, Any] | None = None, verify: bool = True) -> str:
    """Write ``model`` as a detector checkpoint (safetensors + sidecar) that ``emd detect`` can load.

    The sidecar holds ``{"model": spec, "image_size": image_size, **meta}``. ``spec`` defaults to ``model.spec()``
    (EMD has one); baselines pass e.g. ``model_spec("meso4")``. With ``verify`` the spec is rebuilt once and its
    tensor names and shapes compared with ``model``'s, so a checkpoint that could not be loaded is never written.
    Returns the tensors' sha256.
    """
    if spec is None:
        spec = model.spec() if callable(getattr(model, "spec", None)) else None
        if spec is None:
            raise ValueError(f"{path}: {type(model).__name__} has no spec(); pass spec=model_spec(name, **kwargs)")
    spec = check_spec(spec, path)
    if int(image_size) <= 0:
        raise ValueError(f"{path}: image_size must be positive, got {image_size}")
    state = model.state_dict()
    if verify:
        load_state_strict(build_from_spec(spec, path), state, path, name=spec["name"])
    return save_checkpoint(path, state, {**dict(meta or {}), "model": spec, "image_size": int(image_size)})


def save_fer_stream(path: str | os.PathLike, model: nn.Module, meta: Mapping[str, Any] | None = None) -> str:
    """Write a FER stream (ESR, SimFER) checkpoint: its :meth:`spec`, class names and input convention, ``meta``.

    Returns the tensors' sha256. Read it back with :func:`model_from_checkpoint`.
    """
    from emdlib.data.expressions import EXPRESSIONS
    from emdlib.models.esr import INPUT_CONVENTION

    spec = check_spec(model.spec(), path, fer_only=True)
    return save_checkpoint(path, model.state_dict(), {**dict(meta or {}), "model": spec,
                                                      "class_names": list(EXPRESSIONS),
                                                      "input_convention": INPUT_CONVENTION})


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
