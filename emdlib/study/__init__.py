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
from pathlib import Path
from typing import Any

from emdlib.presets import PRESETS, Preset, get_preset
from emdlib.study.paths import StudyPaths

log = logging.getLogger(__name__)

#: What may change a study besides its preset and roots (:meth:`Study.open`'s keyword arguments).
STUDY_OVERRIDES: tuple[str, ...] = ("ffpp_root", "faces_dir", "splits_dir", "esr_weights", "imagenet_weights")
#: The notebook parameters that open a study (every numbered notebook declares them; ``emd reproduce`` passes them).
STUDY_PARAMETERS: tuple[str, ...] = ("preset", "data_root", "results_root", *STUDY_OVERRIDES)
#: The numbered notebooks that run a stage later notebooks need (prefix → stage).
STAGE_NOTEBOOKS: dict[str, str] = {"00": "data", "01": "FER stream"}


@dataclass(frozen=True)
class Study:
    """One preset's study: ``preset`` is the effective configuration (with this study's overrides, e.g. the official
    ESR-9 weights), ``paths`` its folders. Make it with :meth:`open`."""

    preset: Preset
    paths: StudyPaths

    @classmethod
    def open(cls, preset: str | Preset, data_root: str | Path = "data", results_root: str | Path = "results", *,
             ffpp_root: str | Path | None = None, faces_dir: str | Path | None = None,
             splits_dir: str | Path | None = None, esr_weights: str | Path | None = None,
             imagenet_weights: str | Path | None = None) -> "Study":
        """The study of ``preset`` (a name from :data:`emdlib.presets.PRESETS`, or a :class:`Preset`) under
        ``data_root`` / ``results_root``; its folders are created.

        ``ffpp_root``: the user's FaceForensics++ root (``paper``); ``splits_dir``: its split files (default
        ``<world>/splits``); ``faces_dir``: the face photos of the ``faces`` preset; ``esr_weights``: a folder with
        the official ESR-9 files, which then replace the preset's trained ESR (recorded in the configuration);
        ``imagenet_weights``: a local ImageNet weights file for the timm networks that start from ImageNet (EMD's
        encoder, XceptionNet; :mod:`emdlib.pretrained`) — it becomes the preset's ``emd.pretrained`` (so it is in the
        configuration every run records), also for a preset that would otherwise start from random weights.
        Relative paths are resolved in the directory the command runs in (the notebooks' kernels run in notebooks/).
        Raises KeyError for an unknown preset name and ValueError for an override of another data world (e.g.
        ``ffpp_root`` with a synthetic preset, which would otherwise be half applied).
        """
        cfg = preset if isinstance(preset, Preset) else get_preset(preset)
        world = cfg.data.world
        for option, value, needs in (("ffpp_root", ffpp_root, "ffpp"), ("splits_dir", splits_dir, "ffpp"),
                                     ("faces_dir", faces_dir, "faces")):
            if value is not None and world != needs:
                users = ", ".join(sorted(n for n, p in PRESETS.items() if p.data.world == needs))
                raise ValueError(f"{option} {value}: preset {cfg.name!r} builds its own {world} world, so it would "
                                 f"be ignored; {option} is for the {needs} world (preset {users})")
        if esr_weights is not None:
            esr_weights = Path(esr_weights).resolve()
            cfg = dataclasses.replace(cfg, fer=dataclasses.replace(cfg.fer, esr_weights=str(esr_weights)))
        if imagenet_weights is not None:
            imagenet_weights = Path(imagenet_weights).resolve()
            cfg = dataclasses.replace(cfg, emd=dataclasses.replace(cfg.emd, pretrained=str(imagenet_weights)))
        paths = StudyPaths.under(cfg.name, data_root, results_root, ffpp_root=ffpp_root, splits_dir=splits_dir,
                                 faces_dir=faces_dir)
        return cls(preset=cfg, paths=paths.ensure_dirs())

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
            "esr_weights": self.preset.fer.esr_weights,
            "imagenet_weights": pretrained if isinstance(pretrained := self.preset.emd.pretrained, str) else None,
        }

    def __repr__(self) -> str:
        return f"Study({self.name!r}, data={str(self.paths.data)!r}, results={str(self.paths.results)!r})"


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


__all__ = ["STAGE_NOTEBOOKS", "STUDY_OVERRIDES", "STUDY_PARAMETERS", "Study", "StudyPaths", "ensure_stages"]
