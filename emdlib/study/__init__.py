"""The study: one preset's configuration and folders, opened once and handed to every stage.

The stages, in the order ``emd reproduce`` and the numbered notebooks run them; each reads what the one before it
wrote and none reaches back up:

| stage | module | notebook | writes |
|---|---|---|---|
| data | :mod:`emdlib.study.data` | 00 | the FF++-layout world, the face cache + manifest |
| FER stream | :mod:`emdlib.study.fer` | 01 | ``checkpoints/{esr,simfer}.safetensors`` |
| experiments | :mod:`emdlib.study.experiments` | 02–05 | ``runs/<run>/{metrics.json,predictions.npz}`` (:mod:`emdlib.study.records`) |
| tables, figures | :mod:`emdlib.tables`, :mod:`emdlib.stats`, :mod:`emdlib.figures` | 02–06 | ``tables/``, ``figures/`` (read runs, never train) |
| report | :mod:`emdlib.report` | 07 | ``REPORT.md`` |

:class:`Study` is the one object that travels: the effective configuration (the preset with this study's
overrides) and the folders (:class:`~emdlib.study.paths.StudyPaths`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from emdlib.presets import PRESETS, Preset, get_preset, override_preset
from emdlib.study.paths import StudyPaths

log = logging.getLogger(__name__)

#: The repository: relative paths given to :meth:`Study.open` (a notebook's ``data_root = "data"``) are read from
#: here, not from the directory a kernel happens to run in.
REPO_ROOT: Path = Path(__file__).resolve().parents[2]
#: Folders and files that may change a study besides its preset and roots (:meth:`Study.open`'s path arguments).
STUDY_PATHS: tuple[str, ...] = ("ffpp_root", "faces_dir", "splits_dir", "affectnet_root", "esr_weights",
                                "imagenet_weights")
#: Everything that may change a study besides its preset and roots (:meth:`Study.open`'s keyword arguments):
#: the paths, typed preset ``settings`` (``{"emd.epochs": 1}``, :func:`emdlib.presets.override_preset`), the
#: ``device`` to train on and the number of ``workers`` for ``prepare``.
STUDY_OVERRIDES: tuple[str, ...] = (*STUDY_PATHS, "settings", "device", "workers")
#: The notebook parameters that open a study (every numbered notebook declares them; ``emd reproduce`` passes them).
STUDY_PARAMETERS: tuple[str, ...] = ("preset", "data_root", "results_root", *STUDY_OVERRIDES)
#: The numbered notebooks that run a stage later notebooks need (prefix → stage).
STAGE_NOTEBOOKS: dict[str, str] = {"00": "data", "01": "FER stream"}


def from_repo(path: str | Path) -> Path:
    """``path`` made absolute: as it is when absolute, else under :data:`REPO_ROOT`."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else REPO_ROOT / path


@dataclass(frozen=True)
class Study:
    """One preset's study: ``preset`` is the effective configuration (the named preset with this study's
    ``settings`` and overrides, e.g. the official ESR-9 weights), ``paths`` its folders, ``settings`` the typed
    ``--set`` values applied, ``device`` where networks train (None: CUDA when present), ``workers`` the processes of
    ``prepare`` (None: the preset's). Make it with :meth:`open`."""

    preset: Preset
    paths: StudyPaths
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)
    device: str | None = None
    workers: int | None = None

    @classmethod
    def open(cls, preset: str | Preset, data_root: str | Path = "data", results_root: str | Path = "results", *,
             ffpp_root: str | Path | None = None, faces_dir: str | Path | None = None,
             splits_dir: str | Path | None = None, affectnet_root: str | Path | None = None,
             esr_weights: str | Path | None = None, imagenet_weights: str | Path | None = None,
             settings: Mapping[str, Any] | None = None, device: str | None = None,
             workers: int | None = None) -> "Study":
        """The study of ``preset`` (a name from :data:`emdlib.presets.PRESETS`, or a :class:`Preset`) under
        ``data_root`` / ``results_root``; its folders are created.

        ``ffpp_root``: the user's FaceForensics++ root (``paper``); ``splits_dir``: its split files (default
        ``<world>/splits``); ``affectnet_root``: the user's AffectNet (official ``training.csv`` /
        ``validation.csv`` and images), on which the FER stage then trains; ``faces_dir``: the face photos of the
        ``faces`` preset; ``esr_weights``: a folder with the official ESR-9 files, which then replace the preset's
        trained ESR (recorded in the configuration); ``imagenet_weights``: a local ImageNet weights file for the timm
        networks that start from ImageNet (EMD's encoder, XceptionNet; :mod:`emdlib.pretrained`) — it becomes the
        preset's ``emd.pretrained`` (so it is in the configuration every run records), also for a preset that would
        otherwise start from random weights. ``settings``: typed preset values, ``{"emd.epochs": 1}`` (text is typed
        by :func:`emdlib.presets.parse_setting`). Relative paths are read from the repository (:data:`REPO_ROOT`),
        so a notebook finds the same folders whatever directory its kernel runs in; ``emd reproduce`` makes the
        paths it is given absolute in the directory it is run from.

        Raises KeyError for an unknown preset name, :class:`emdlib.presets.SettingError` for an unknown setting or a
        value of the wrong type, and ValueError for an override of another data world (e.g. ``ffpp_root`` with a
        synthetic preset, which would otherwise be half applied).
        """
        cfg = preset if isinstance(preset, Preset) else get_preset(preset)
        settings = dict(settings or {})
        if settings:
            cfg = _absolute_settings(override_preset(cfg, settings))
            settings = {k: _plain(v) for k, v in sorted(settings_values(cfg, settings).items())}
        world = cfg.data.world
        for option, value, needs in (("ffpp_root", ffpp_root, "ffpp"), ("splits_dir", splits_dir, "ffpp"),
                                     ("faces_dir", faces_dir, "faces")):
            if value is not None and world != needs:
                users = ", ".join(sorted(n for n, p in PRESETS.items() if p.data.world == needs))
                raise ValueError(f"{option} {value}: preset {cfg.name!r} builds its own {world} world, so it would "
                                 f"be ignored; {option} is for the {needs} world (preset {users})")
        if esr_weights is not None:
            cfg = dataclasses.replace(cfg, fer=dataclasses.replace(cfg.fer, esr_weights=str(from_repo(esr_weights))))
        if imagenet_weights is not None:
            cfg = dataclasses.replace(cfg, emd=dataclasses.replace(cfg.emd, pretrained=str(from_repo(imagenet_weights))))
        if workers is not None and int(workers) < 1:
            raise ValueError(f"workers {workers}: must be at least 1")

        def given(path: str | Path | None) -> Path | None:
            return None if path is None else from_repo(path)

        paths = StudyPaths.under(cfg.name, from_repo(data_root), from_repo(results_root), ffpp_root=given(ffpp_root),
                                 splits_dir=given(splits_dir), faces_dir=given(faces_dir),
                                 affectnet=given(affectnet_root))
        return cls(preset=cfg, paths=paths.ensure_dirs(), settings=settings, device=device,
                   workers=None if workers is None else int(workers))

    @property
    def name(self) -> str:
        """The preset's name (``tiny``, ``cpu``, ``faces``, ``paper``)."""
        return self.preset.name

    def config(self) -> dict[str, Any]:
        """The effective configuration as plain data (what run records store as ``config.preset``)."""
        return self.preset.to_dict()

    def parameters(self) -> dict[str, Any]:
        """The notebook parameters (:data:`STUDY_PARAMETERS`) that reopen this study with :meth:`open`."""
        paths = self.paths
        return {
            "preset": self.name,
            "data_root": str(paths.data.parent),
            "results_root": str(paths.results.parent),
            "ffpp_root": str(paths.world) if self.preset.data.world == "ffpp" else None,
            "faces_dir": str(paths.faces) if paths.faces else None,
            "splits_dir": str(paths.splits) if self.preset.data.world == "ffpp" else None,
            "affectnet_root": str(paths.affectnet) if paths.affectnet else None,
            "esr_weights": self.preset.fer.esr_weights,
            "imagenet_weights": pretrained if isinstance(pretrained := self.preset.emd.pretrained, str) else None,
            "settings": dict(self.settings) or None,
            "device": self.device,
            "workers": self.workers,
        }

    def __repr__(self) -> str:
        return f"Study({self.name!r}, data={str(self.paths.data)!r}, results={str(self.paths.results)!r})"


def settings_values(preset: Preset, settings: Mapping[str, Any]) -> dict[str, Any]:
    """The typed values ``preset`` holds for the keys of ``settings`` (what was applied, as plain data)."""
    out = {}
    for key in settings:
        section, _, name = key.partition(".")
        out[key] = getattr(getattr(preset, section), name)
    return out


#: The preset settings that name a file or folder (a string ``emd.pretrained`` is a local weights file).
PATH_SETTINGS: tuple[str, ...] = ("fer.esr_weights", "emd.pretrained")


def _absolute_settings(preset: Preset) -> Preset:
    """``preset`` with the relative paths of :data:`PATH_SETTINGS` read from the repository (:func:`from_repo`)."""
    esr, pretrained = preset.fer.esr_weights, preset.emd.pretrained
    if isinstance(esr, str):
        preset = dataclasses.replace(preset, fer=dataclasses.replace(preset.fer, esr_weights=str(from_repo(esr))))
    if isinstance(pretrained, str):
        preset = dataclasses.replace(preset, emd=dataclasses.replace(preset.emd, pretrained=str(from_repo(pretrained))))
    return preset


def _plain(value: Any) -> Any:
    """JSON-like copy (tuples → lists), so that a notebook parameter reopens the same study."""
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def ensure_stages(study: Study, notebooks: Sequence[str]) -> list[str]:
    """Run the stages (:data:`STAGE_NOTEBOOKS`: data, then FER stream) that the selected ``notebooks`` (prefixes such
    as ``"02"``) need but do not run themselves; a finished stage is only checked. Only the notebooks after the stage
    notebooks (02 on) need them. Returns the stages run.

    This is how ``emd reproduce --only 02 03`` keeps the order of the stages: the later notebooks never build an
    earlier stage themselves (they fail naming the notebook that makes it).
    """
    from emdlib.study.data import ensure_data
    from emdlib.study.fer import ensure_fer_streams

    run = {"00": ensure_data, "01": ensure_fer_streams}
    done: list[str] = []
    if not any(n > max(STAGE_NOTEBOOKS) for n in notebooks):
        return done
    for prefix, stage in STAGE_NOTEBOOKS.items():
        if prefix not in notebooks:
            log.info("notebook %s (the %s stage) is not selected: ensuring the stage first", prefix, stage)
            run[prefix](study)
            done.append(stage)
    return done


__all__ = ["PATH_SETTINGS", "REPO_ROOT", "STAGE_NOTEBOOKS", "STUDY_OVERRIDES", "STUDY_PARAMETERS", "STUDY_PATHS", "Study", "StudyPaths",
           "ensure_stages", "from_repo"]
