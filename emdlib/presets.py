"""Study presets (design.md "Presets"): how much data, at what input size, with which model sizes.

A preset may shrink data, input size, epochs and the number of ESR branches; it never changes an architecture's
design. Each numbered notebook takes ``preset`` in its ``parameters`` cell and reads the rest from here, so
``emd reproduce --preset NAME`` and a reader running a notebook by hand get the same configuration.

| preset | data | purpose |
|---|---|---|
| ``tiny`` | synth, a handful of videos | CI notebook smoke tests, minutes on 2 CPU cores; numbers mean nothing |
| ``cpu`` | synth | the whole study end to end on a laptop CPU; models actually learn |
| ``faces`` | forge on a folder of face photos (default: the London set) | realistic study without FF++ |
| ``paper`` | the user's FF++ + AffectNet (or official ESR-9 weights) | the paper's protocol on a GPU |
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import os
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

METHODS: tuple[str, ...] = ("Deepfakes", "Face2Face", "NeuralTextures")
COMPRESSIONS: tuple[str, ...] = ("c23", "c40")


@dataclass(frozen=True)
class DataConfig:
    """Where the FF++-layout data comes from and how much of it to make (synth / forge)."""

    world: str = "synth"  # synth | faces | ffpp
    pairs: tuple[int, int, int] = (3, 1, 1)  # train / val / test pairs, as FF++ splits (each pair = 2 ids)
    frames_per_clip: int = 12
    frame_size: int = 128  # side of rendered frames (synth) or of clip frames made from photos (forge)
    expression_images_per_class: int = 20  # synth expression set (the AffectNet stand-in)
    expression_size: int = 96
    methods: tuple[str, ...] = METHODS
    compressions: tuple[str, ...] = COMPRESSIONS
    seed: int = 0
    synth_expressions_per_clip: int = 3  # key expressions each pristine synth clip morphs through


#: Face-cache formats ``prepare`` writes (:mod:`emdlib.data.crop_codec`): raw uint8, JPEG q95, lossless PNG.
CACHE_FORMATS: tuple[str, ...] = ("npy", "jpeg", "png")


@dataclass(frozen=True)
class PrepareConfig:
    """Frame sampling and face crops (paper §IV-A: 200 train frames, 10 val/test frames per video)."""

    train_frames: int = 4
    eval_frames: int = 2
    crop_size: int = 64  # side of the cached uint8 crops
    workers: int = 2
    cache_format: str = "npy"  # npy (raw uint8, decode-free) | jpeg (q95) | png (lossless): emdlib.data.crop_codec

    def __post_init__(self) -> None:
        if self.cache_format not in CACHE_FORMATS:
            raise ValueError(f"unknown cache format {self.cache_format!r}; choose one of {CACHE_FORMATS}")


#: FER training schedules (:class:`FERConfig`, :mod:`emdlib.train_fer`).
FER_SCHEDULES: tuple[str, ...] = ("joint", "grow")


@dataclass(frozen=True)
class FERConfig:
    """FER stream (paper §III-C): ESR with B branches and SimFER, trained on the expression set (Eq. 1) — AffectNet
    when the study has an ``affectnet_root``, else the rendered synth set — by :func:`emdlib.train_fer.train_fer`
    (:meth:`emdlib.train_fer.FERTrainConfig.from_preset` reads every field but ``branches`` and ``esr_weights``).

    ``schedule``: ``joint`` (all branches from the start for ``epochs``) or ``grow`` (the official ESR schedule,
    reference-facts §A.5: ``first_epochs`` for base + branch 1 at ``lr``, then ``branch_epochs`` per added branch, the
    newest at ``lr`` and the rest at ``later_lr``; SimFER, which has no branches, trains ``first_epochs``).
    ``val_every``: validation interval in epochs (official 2); ``max_per_class``: a fresh sample of at most this many
    training images per class for each phase (official 5000; None: all); ``workers``: data-loader processes.
    """

    branches: int = 2
    epochs: int = 2  # joint schedule
    batch_size: int = 32
    lr: float = 0.1
    esr_weights: str | None = None  # folder with the official ESR-9 .pt files; skips training when given
    optimizer: str = "sgd"  # sgd (official, momentum 0.9) | adam; see emdlib.train_fer.FERTrainConfig
    schedule: str = "joint"  # joint | grow (official)
    first_epochs: int = 50  # grow: base + branch 1 (and SimFER)
    branch_epochs: int = 20  # grow: each further branch
    later_lr: float = 0.01  # grow: base and older branches after phase 1
    val_every: int = 1
    max_per_class: int | None = None
    workers: int = 0

    def __post_init__(self) -> None:
        if self.schedule not in FER_SCHEDULES:
            raise ValueError(f"fer.schedule {self.schedule!r}: choose one of {FER_SCHEDULES}")
        for name in ("branches", "epochs", "first_epochs", "branch_epochs", "val_every", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"fer.{name} {getattr(self, name)}: must be at least 1")
        if self.max_per_class is not None and self.max_per_class < 1:
            raise ValueError(f"fer.max_per_class {self.max_per_class}: must be at least 1, or null for all images")


@dataclass(frozen=True)
class EMDConfig:
    """Manipulation stream (paper §III-D, §IV-B)."""

    encoder: str = "xception41"
    image_size: int = 64
    warmup_epochs: int = 1
    epochs: int = 1
    batch_size: int = 8
    lr: float = 1e-3
    pretrained: bool | str = False  # ImageNet start: False, True (timm hub) or a local file (study imagenet_weights)
    max_batches: int | None = None  # cap on training batches per epoch (smoke-test presets only)
    curve_points: int | None = None  # Fig. 6: number of training-set sizes (None: emdlib.study.experiments default)
    curve_cells: int = 2  # Fig. 6: panels (F2F, then NT or DF), as the paper
    cells: tuple[tuple[str, str], ...] = (("Face2Face", "c23"),)
    # seeds of EMD and of the same network without FER on the expression cells (F2F, NT at c23): the paper's central
    # comparison, repeated so that its conclusion is not one seed's (notebook 02; emdlib.stats.fer_effect_over_seeds)
    comparison_seeds: tuple[int, ...] = (0,)
    # BatchNorm momentum of MesoNet (PyTorch convention; None = Keras' 0.99, i.e. 0.01): short runs need a shorter
    # running average, or evaluation uses statistics that have barely moved from their initial values
    baseline_bn_momentum: float | None = None
    # the baselines' BatchNorm population statistics recomputed over the training split before each validation
    # (emdlib.train.recompute_bn_statistics): their recipes' large batches give them few steps on small presets
    # (XceptionNet 60 at cpu), too few for the running averages to follow the weights, and eval-mode outputs collapse
    baseline_precise_bn: bool = False
    # data-parallel training (emd reproduce --nproc N, torchrun) on CUDA: BatchNorm statistics over the global batch
    # (torch.nn.SyncBatchNorm) instead of each process's share; False: each GPU normalises its own share, as DDP does
    sync_bn: bool = False
    # cuDNN autotuning (torch.backends.cudnn.benchmark) on CUDA: the fastest convolution algorithms for the run's
    # fixed input sizes, chosen among deterministic ones; runs are then no longer bit-identical across processes
    cudnn_benchmark: bool = False
    # where the training flips are drawn (FLIP_RNGS): "global" in ManipulationDataset.__getitem__ from the global torch
    # RNG of the loading process (the committed tiny/cpu results; batches depend on the number of loader workers,
    # which are re-created every epoch to re-seed them); "sampler" in the main process by
    # emdlib.data.datasets.FlipSampler from (seed, epoch): the same batches with any number of workers, kept alive
    # across epochs (persistent_workers)
    flip_rng: str = "global"

    def __post_init__(self) -> None:
        if self.flip_rng not in FLIP_RNGS:
            raise ValueError(f"emd.flip_rng {self.flip_rng!r}: choose one of {FLIP_RNGS}")


#: Where training flips are drawn (:attr:`EMDConfig.flip_rng`, :class:`emdlib.train.TrainConfig` ``flip_rng``).
FLIP_RNGS: tuple[str, ...] = ("global", "sampler")


@dataclass(frozen=True)
class Preset:
    name: str
    data: DataConfig = field(default_factory=DataConfig)
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    fer: FERConfig = field(default_factory=FERConfig)
    emd: EMDConfig = field(default_factory=EMDConfig)
    note: str = ""

    def __post_init__(self) -> None:
        """Raises ValueError when ``emd.cells`` name a method or compression outside ``data.methods`` ×
        ``data.compressions`` (their training sets would be empty), with the ``--set`` that keeps the others."""
        have = {(m, c) for m in self.data.methods for c in self.data.compressions}
        bad = [tuple(c) for c in self.emd.cells if tuple(c) not in have]
        if bad:
            keep = json.dumps([list(c) for c in self.emd.cells if tuple(c) in have]
                              or [[m, c] for m in self.data.methods for c in self.data.compressions])
            raise ValueError(
                f"preset {self.name!r}: emd.cells {bad} are not in the data (data.methods={list(self.data.methods)}, "
                f"data.compressions={list(self.data.compressions)}): set cells of the data, e.g. "
                f"--set emd.cells='{keep}'")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_ALL_CELLS = tuple((m, c) for m in METHODS for c in COMPRESSIONS)
_C23_CELLS = tuple((m, "c23") for m in METHODS)

PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        name="tiny",
        fer=FERConfig(optimizer="adam", lr=1e-3),
        emd=EMDConfig(max_batches=2, baseline_bn_momentum=0.1, baseline_precise_bn=True),
        note="Smoke-test size: a handful of synthetic videos; its numbers show that the pipeline runs, nothing more.",
    ),
    "cpu": Preset(
        name="cpu",
        data=DataConfig(pairs=(10, 5, 5), frames_per_clip=24, frame_size=128, expression_images_per_class=100),
        prepare=PrepareConfig(train_frames=8, eval_frames=4, crop_size=64),
        fer=FERConfig(branches=3, epochs=6, optimizer="adam", lr=1e-3),
        emd=EMDConfig(image_size=64, warmup_epochs=1, epochs=6, batch_size=16, cells=_ALL_CELLS, curve_points=3,
                      curve_cells=1, baseline_bn_momentum=0.1, baseline_precise_bn=True,
                      comparison_seeds=(0, 1, 2)),
        note="Synthetic data on a 2-core CPU: 40 identities, 64-px faces, all six cells (c23 and c40), a few epochs "
        "from scratch (no ImageNet weights offline); EMD against the same network without FER over three seeds on "
        "the expression cells. Large enough that models learn; far too small and too easy to compare with the "
        "paper's FF++ numbers, which are listed beside ours only for orientation.",
    ),
    "faces": Preset(
        name="faces",
        data=DataConfig(world="faces", pairs=(72, 15, 15), frames_per_clip=48, frame_size=320),
        prepare=PrepareConfig(train_frames=24, eval_frames=10, crop_size=299, cache_format="jpeg"),
        fer=FERConfig(branches=9, epochs=20),
        emd=EMDConfig(encoder="xception65", image_size=299, warmup_epochs=3, epochs=20, batch_size=16, cells=_ALL_CELLS,
                      flip_rng="sampler"),
        note="Forged manipulations of real photographs (London set): realistic faces, but only ~100 identities.",
    ),
    "paper": Preset(
        name="paper",
        data=DataConfig(world="ffpp", pairs=(360, 70, 70)),
        # JPEG q95 crops + PNG masks: ~29 GB instead of ~390 GB raw, ~600-800 crops/s per decoding process
        # (benchmarks/cache_formats.py); cpu and tiny keep the raw, decode-free cache (64-px crops, MBs)
        prepare=PrepareConfig(train_frames=200, eval_frames=10, crop_size=299, workers=8, cache_format="jpeg"),
        # the official ESR schedule (reference-facts §A.5): 50 + 20 epochs per branch, SGD 0.9, lr 0.1 / 0.01,
        # StepLR(10, 0.5), batch 32, validation every 2 epochs, <= 5000 images per class re-sampled per branch
        fer=FERConfig(branches=9, epochs=50, schedule="grow", first_epochs=50, branch_epochs=20, lr=0.1,
                      later_lr=0.01, val_every=2, max_per_class=5000, workers=8),
        emd=EMDConfig(encoder="xception65", image_size=299, warmup_epochs=3, epochs=20, batch_size=16, pretrained=True,
                      cells=_ALL_CELLS, cudnn_benchmark=True, flip_rng="sampler",
                      # on N GPUs BatchNorm keeps the one-GPU protocol's statistics over the batch of 16 (without,
                      # each of 8 GPUs would normalise 2 images); one process or the CPU: no effect / refused
                      sync_bn=True),
        note="The paper's protocol: FF++ c23/c40 and AffectNet (or the official ESR-9 weights) on a GPU.",
    ),
}


def with_defaults(config: Mapping[str, Any]) -> dict[str, Any]:
    """A recorded preset configuration (``Preset.to_dict()`` as a run record holds it) with every setting added
    since it was recorded filled in at its declared default — the value the code behaved as before the setting
    existed — so that adding a setting does not make every earlier run look as if it had another configuration."""
    out = json.loads(json.dumps(dict(config)))
    for section in SECTIONS:
        if isinstance(out.get(section), dict):
            for f in dataclasses.fields(_section_type(section)):
                if f.name not in out[section]:
                    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
                    out[section][f.name] = json.loads(json.dumps(default))
    return out


def get_preset(name: str) -> Preset:
    """The preset called ``name``; a clear error lists the known ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None



# ------------------------------------------------------------------------------------------- typed overrides

#: The sections of a preset that ``--set SECTION.FIELD=VALUE`` may change (``name`` and ``note`` are not settings).
SECTIONS: tuple[str, ...] = ("data", "prepare", "fer", "emd")


class SettingError(ValueError):
    """A ``--set KEY=VALUE`` (or config-file entry) with an unknown key or a value of the wrong type."""


def setting_keys() -> list[str]:
    """Every key ``--set`` accepts, e.g. ``emd.epochs`` (``SECTION.FIELD`` of :data:`SECTIONS`)."""
    return [f"{s}.{f.name}" for s in SECTIONS for f in dataclasses.fields(_section_type(s))]


def _section_type(section: str) -> type:
    return typing.get_type_hints(Preset)[section]


def _field_type(key: str) -> Any:
    """The declared type of ``SECTION.FIELD``; SettingError naming the key (and the nearest known ones) if unknown."""
    section, _, name = key.partition(".")
    hints = typing.get_type_hints(_section_type(section)) if section in SECTIONS else {}
    if name not in hints or "." in name:
        near = difflib.get_close_matches(key, setting_keys(), n=3)
        hint = f"; did you mean {' or '.join(near)}?" if near else f"; known keys: {', '.join(setting_keys())}"
        raise SettingError(f"unknown setting {key!r}{hint}")
    return hints[name]


def parse_setting(key: str, value: Any) -> Any:
    """``value`` as the type of setting ``key`` declares (pydantic validates it against the dataclass annotation).

    Text (from the command line) is read as JSON first, strictly (``1`` is an int, ``1e-3`` a float, ``true`` a
    bool, ``[["Face2Face", "c23"]]`` a list, ``null`` None) and, when that does not fit the declared type but the
    type admits a string, taken as the string it is — so a folder named ``2024`` given to ``fer.esr_weights`` stays
    ``"2024"``, while ``emd.epochs=2024`` is the integer. Other values (from a config file or Python) are checked
    the same way after a JSON round trip. Lists become tuples where the field is a tuple. Raises
    :class:`SettingError` naming the key, the value and the declared type.
    """
    from pydantic import TypeAdapter, ValidationError

    declared = _field_type(key)
    adapter = TypeAdapter(declared)
    text = value if isinstance(value, str) else json.dumps(value)
    try:
        return adapter.validate_json(text, strict=True)
    except (ValidationError, ValueError):
        pass
    # a string-typed setting given something that reads as a number (a YAML `esr_weights: 2024`): its text
    as_text = value if isinstance(value, str) else str(value) if type(value) in (int, float) else None
    try:
        if as_text is not None:
            return adapter.validate_python(as_text, strict=True)
    except ValidationError:
        pass
    shown = declared.__name__ if isinstance(declared, type) else str(declared).replace("typing.", "")
    raise SettingError(f"--set {key}={text}: {key} is declared {shown}; {text!r} is not one")


def override_preset(preset: "Preset", settings: Mapping[str, Any]) -> "Preset":
    """``preset`` with ``settings`` (``{"emd.epochs": 1, ...}``, values typed by :func:`parse_setting`) applied.

    The preset keeps its name (its folders); every run record stores the effective configuration, so runs made
    under other settings are never mistaken for the preset's own (``emdlib.study.experiments.why_not_reusable``).
    When the settings narrow ``data.methods`` or ``data.compressions`` without giving ``emd.cells``, the cells
    outside the data are dropped (a c23-only copy: ``--set data.compressions='["c23"]'``). Raises
    :class:`SettingError` for an unknown key or a value of the wrong type, ValueError for ``emd.cells`` outside the
    data (:class:`Preset`).
    """
    changes: dict[str, dict[str, Any]] = {}
    for key, value in settings.items():
        section, _, name = key.partition(".")
        changes.setdefault(section, {})[name] = parse_setting(key, value)
    sections = {s: dataclasses.replace(getattr(preset, s), **c) for s, c in changes.items()}
    data, emd = sections.get("data", preset.data), sections.get("emd", preset.emd)
    if "data" in changes and "cells" not in changes.get("emd", {}):  # narrower data, cells not given: follow it
        kept = tuple(c for c in emd.cells if c[0] in data.methods and c[1] in data.compressions)
        if kept and kept != tuple(emd.cells):
            log.info("emd.cells follow data.methods/compressions: %s", ", ".join(f"{m} {c}" for m, c in kept))
            sections["emd"] = dataclasses.replace(emd, cells=kept)
    return dataclasses.replace(preset, **sections)


def parse_set_options(options: Iterable[str]) -> dict[str, str]:
    """``["emd.epochs=1", ...]`` (repeated ``--set``) → ``{"emd.epochs": "1"}``; SettingError for a malformed or
    repeated option or an unknown key (values are typed later, by :func:`parse_setting`)."""
    out: dict[str, str] = {}
    for option in options:
        key, sep, value = option.partition("=")
        key = key.strip()
        if not sep or not key:
            raise SettingError(f"--set {option}: expected KEY=VALUE, e.g. --set emd.epochs=1")
        if key in out:
            raise SettingError(f"--set {key} is given twice ({out[key]!r} and {value!r})")
        _field_type(key)
        out[key] = value
    return out


def read_settings_file(path: str | os.PathLike) -> dict[str, Any]:
    """Settings from a YAML or JSON file: nested (``emd: {epochs: 1}``) or dotted (``emd.epochs: 1``) keys.

    Raises FileNotFoundError, or SettingError naming the file for a file that is not a mapping of sections to
    settings (values are typed later, by :func:`parse_setting`).
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: settings file not found")
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise SettingError(f"{path}: not a YAML or JSON file ({' '.join(str(e).split())})") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise SettingError(f"{path}: expected a mapping such as 'emd: {{epochs: 1}}', got a {type(loaded).__name__}")
    flat: dict[str, Any] = {}
    for key, value in loaded.items():
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[str(key)] = value
    try:
        for key in flat:
            _field_type(key)
    except SettingError as e:
        raise SettingError(f"{path}: {e}") from None
    return flat
