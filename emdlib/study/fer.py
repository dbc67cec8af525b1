"""The FER-stream stage (notebook 01, paper §III-C): the study's ESR and SimFER, trained on the expression set or
loaded from the official ESR-9 files, saved as ``checkpoints/esr.safetensors`` and ``checkpoints/simfer.safetensors``.

:func:`ensure_fer_streams` makes them (idempotent: a checkpoint that fits the preset is reused); the experiments
load them with :func:`load_fer_stream`, which never trains: a missing or mismatched checkpoint is an error naming
the notebook or command that makes it (issue 12: an EMD cell no longer renders data and trains a FER stream inside
itself).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from emdlib.data.expressions import EXPRESSIONS, ExpressionDataset, folder_samples, stratified_split, subject_split
from emdlib.models.esr import FERStream
from emdlib.registry import build_model, model_from_checkpoint, save_fer_stream
from emdlib.study import Study
from emdlib.train_fer import FERTrainConfig, train_fer

log = logging.getLogger(__name__)

#: The FER streams of a study: ``kind`` (a system's ``fer``) → registry name.
FER_KINDS: dict[str, str] = {"ESR": "esr", "SimFER": "simfer"}
MAKES_FER = "notebook 01_fer_training (or `emd reproduce --preset {preset} --only 01`)"


def fer_checkpoint(study: Study, kind: str) -> Path:
    """``checkpoints/esr.safetensors`` or ``checkpoints/simfer.safetensors``."""
    if kind not in FER_KINDS:
        raise ValueError(f"unknown FER stream {kind!r}; choose one of {sorted(FER_KINDS)}")
    return study.paths.checkpoints / f"{kind.lower()}.safetensors"


def fer_spec(study: Study, kind: str) -> dict[str, Any]:
    """The registry spec the preset asks for: ESR with the preset's branches (9 with the official weights), or
    SimFER; both over the eight AffectNet expressions. (Written out, not read off a built model: building one would
    draw from torch's RNG, and the cells' initialisation depends on what was drawn before.)"""
    if kind not in FER_KINDS:
        raise ValueError(f"unknown FER stream {kind!r}; choose one of {sorted(FER_KINDS)}")
    if kind == "SimFER":
        return {"name": "simfer", "kwargs": {"num_classes": len(EXPRESSIONS)}}
    branches = 9 if study.preset.fer.esr_weights else study.preset.fer.branches
    return {"name": "esr", "kwargs": {"num_branches": branches, "num_classes": len(EXPRESSIONS)}}


# ------------------------------------------------------------------------------------------------ expression set

def ensure_expression_set(study: Study) -> dict[str, int]:
    """Render the preset's synth expression set (the AffectNet stand-in) unless complete; images per class."""
    from emdlib.data.synth import render_expression_set

    cfg, out_dir = study.preset.data, study.paths.expressions
    n = cfg.expression_images_per_class
    counts = {name: len(list((out_dir / name).glob("*.png"))) for name in EXPRESSIONS}
    if all(c >= n for c in counts.values()):
        return counts
    return render_expression_set(out_dir, n, size=cfg.expression_size, seed=cfg.seed)


def expression_splits(root: str | os.PathLike, by_subject: bool = False,
                      fractions: Sequence[float] = (0.7, 0.15, 0.15), seed: int = 0,
                      size: int = 96) -> dict[str, ExpressionDataset]:
    """Train / val / test :class:`ExpressionDataset` s of a class-per-folder set (preloaded; small sets).

    ``by_subject``: subject-disjoint (CK+ names); otherwise stratified per class (synth: one identity per image).
    Raises ValueError naming ``root`` when a split would be empty.
    """
    samples = folder_samples(root)
    split = subject_split if by_subject else stratified_split
    parts = split(samples, fractions, seed=seed)
    empty = [k for k, v in parts.items() if not v]
    if empty:
        raise ValueError(f"{root}: too few images for a {tuple(fractions)} split ({empty} empty)")
    return {k: ExpressionDataset(v, size=size, preload=True) for k, v in parts.items()}


def expression_sets(study: Study) -> dict[str, ExpressionDataset]:
    """The study's expression set (rendered when missing) split 70/15/15 per class with the preset's seed."""
    ensure_expression_set(study)
    return expression_splits(study.paths.expressions, seed=study.preset.data.seed)


# ---------------------------------------------------------------------------------------------------- the stage

def ensure_fer_stream(study: Study, kind: str, sets: dict[str, ExpressionDataset] | None = None,
                      retrain: bool = False) -> tuple[FERStream, dict[str, Any]]:
    """One FER stream of the study: the official ESR-9 weights when the study has ``esr_weights`` (ESR), else its
    checkpoint when it exists and fits the preset (:func:`fer_spec`), else trained now on the expression set
    (:func:`emdlib.train_fer.train_fer`, Eq. 1) and saved.

    ``sets``: the expression splits (default :func:`expression_sets`). Returns ``(model in eval mode, info)``;
    ``info["source"]`` is ``"official"``, ``"checkpoint"`` or ``"trained"``.
    """
    checkpoint = fer_checkpoint(study, kind)
    want = fer_spec(study, kind)
    if kind == "ESR" and study.preset.fer.esr_weights:
        from emdlib.models.esr import load_official_esr

        model = build_model("esr", num_branches=9)
        report = load_official_esr(model, study.preset.fer.esr_weights)
        info = {"source": "official", "folder": str(study.preset.fer.esr_weights),
                "loaded": [p.name for p in report.loaded]}
        save_fer_stream(checkpoint, model, {"source": info})
        return model.eval(), info
    if checkpoint.is_file() and not retrain:
        model, meta = model_from_checkpoint(checkpoint)
        if meta.get("model") == want:
            log.info("%s: using the existing %s checkpoint", checkpoint, kind)
            return model, {"source": "checkpoint", "checkpoint": str(checkpoint), "metrics": meta.get("metrics")}
        log.info("%s: checkpoint is %s, wanted %s: retraining", checkpoint, meta.get("model"), want)
    sets = sets if sets is not None else expression_sets(study)
    cfg = FERTrainConfig.from_preset(study.preset.fer)
    torch.manual_seed(cfg.seed)
    model = build_model(want["name"], **want["kwargs"])
    summary = train_fer(model, sets["train"], sets["val"], cfg, checkpoint=checkpoint)
    return model.eval(), {"source": "trained", **summary}


def ensure_fer_streams(study: Study, sets: dict[str, ExpressionDataset] | None = None
                       ) -> dict[str, tuple[FERStream, dict[str, Any]]]:
    """The whole FER stage: :func:`ensure_fer_stream` for ESR then SimFER (``{kind: (model, info)}``)."""
    sets = sets if sets is not None else expression_sets(study)
    return {kind: ensure_fer_stream(study, kind, sets) for kind in FER_KINDS}


def load_fer_stream(study: Study, kind: str) -> FERStream:
    """The study's trained FER stream ``kind`` (eval mode), as the FER stage saved it. Never trains.

    Raises FileNotFoundError when the checkpoint is missing and ValueError when it was made for another
    configuration (e.g. another number of ESR branches); both name the notebook or command that makes it.
    """
    checkpoint = fer_checkpoint(study, kind)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"{checkpoint}: the {kind} FER stream of preset {study.name!r} is missing; make it "
                                "with " + MAKES_FER.format(preset=study.name))
    model, meta = model_from_checkpoint(checkpoint)
    want = fer_spec(study, kind)
    if meta.get("model") != want:
        raise ValueError(f"{checkpoint}: holds {meta.get('model')}, but preset {study.name!r} needs {want}; make it "
                         "again with " + MAKES_FER.format(preset=study.name))
    return model
