"""The FER-stream stage (notebook 01, paper §III-C): the study's ESR and SimFER, trained on one expression set or
(ESR) loaded from the official ESR-9 files, saved as ``checkpoints/esr.safetensors`` and
``checkpoints/simfer.safetensors``.

The expression set (:func:`fer_data`) is AffectNet when the study has an ``affectnet_root`` (:func:`affectnet_sets`:
train on ``training.csv``, select and report on ``validation.csv``), else the rendered synth set (:func:`synth_sets`);
ESR and SimFER train on the same images, with the preset's schedule (``paper``: the official branch-growing one).
:func:`ensure_fer_streams` makes them (idempotent: a checkpoint that fits the preset and the data is reused); the
experiments load them with :func:`load_fer_stream`, which never trains: a missing or mismatched checkpoint is an
error naming the notebook or command that makes it (issue 12: an EMD cell no longer renders data and trains a FER
stream inside itself). Each checkpoint records its ``source`` and ``data``; :func:`fer_stream_record` puts them into
every run record and :func:`describe_fer_streams` into the report.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
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

#: The name of the rendered synth expression set in data descriptions (records, report).
SYNTH_SET = "synth expression set"
#: How the FER data is described when the ESR is the official ESR-9 (trained by Siqueira et al. on AffectNet).
OFFICIAL_DATA: dict[str, Any] = {"name": "AffectNet (official ESR-9 weights, Siqueira et al., AAAI 2020)"}


@dataclass(frozen=True)
class FERData:
    """The FER stage's expression data: ``sets`` (``train``, ``val``, ``test`` :class:`ExpressionDataset` s) and
    ``description`` (plain data for checkpoints, run records and the report: ``name``, ``root``, image counts and,
    for AffectNet, the rows kept and dropped per CSV)."""

    sets: dict[str, ExpressionDataset]
    description: dict[str, Any]


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


def affectnet_sets(root: str | os.PathLike) -> FERData:
    """AffectNet as the FER stage uses it (paper §III-C, the official ESR protocol of reference-facts §A.5).

    ``train``: the usable rows of ``training.csv`` (expressions 0–7; read lazily from disk, since AffectNet has
    ~290k of them; the trainer draws its per-phase class-capped sample, ``fer.max_per_class``). ``val`` and
    ``test``: the same dataset, ``validation.csv`` (preloaded once): the official code selects the checkpoint on
    the validation set and AffectNet's test set is not public, so the FER accuracies the stage reports are on the
    validation set that also chose the checkpoint, as Siqueira et al. report theirs. Layout:
    :func:`emdlib.data.affectnet.affectnet_layout`; rows: :func:`emdlib.data.expressions.read_affectnet_csv`
    (which raises ValueError naming the CSV for a missing column or no usable row).
    """
    from emdlib.data.affectnet import affectnet_layout
    from emdlib.data.expressions import read_affectnet_csv

    layout = affectnet_layout(root)
    train, train_counts = read_affectnet_csv(layout.training_csv, layout.images)
    val, val_counts = read_affectnet_csv(layout.validation_csv, layout.images)
    val_set = ExpressionDataset(val, preload=True)
    description = {
        "name": "AffectNet", "root": str(layout.root),
        "training_csv": str(layout.training_csv), "validation_csv": str(layout.validation_csv),
        "kept": {"train": train_counts["kept"], "val": val_counts["kept"]},
        "dropped": {part: {k: v for k, v in c.items() if k not in ("rows", "kept")}
                    for part, c in (("train", train_counts), ("val", val_counts))},
        "test": "validation.csv (AffectNet's test set is not public; it also selects the checkpoint)",
    }
    return FERData({"train": ExpressionDataset(train), "val": val_set, "test": val_set}, description)


def synth_sets(study: Study) -> FERData:
    """The study's synth expression set (rendered when missing) split 70/15/15 per class with the preset's seed."""
    ensure_expression_set(study)
    seed = study.preset.data.seed
    sets = expression_splits(study.paths.expressions, seed=seed)
    return FERData(sets, _synth_description(study, {k: len(v) for k, v in sets.items()}))


def _synth_description(study: Study, images: dict[str, int] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"name": SYNTH_SET, "root": str(study.paths.expressions)}
    if images is not None:
        out["images"] = images
        out["split"] = f"stratified 70/15/15 per class, seed {study.preset.data.seed}"
    return out


def fer_data(study: Study) -> FERData:
    """The FER stage's data: AffectNet when the study has an AffectNet root (``affectnet_root``,
    :func:`affectnet_sets`), else the synth expression set (:func:`synth_sets`). ESR and SimFER train on the same
    images either way, so Table V compares the two FER architectures on the same data."""
    root = getattr(study.paths, "affectnet", None)
    if root is not None:
        return affectnet_sets(root)
    if study.preset.data.world == "ffpp":
        log.warning("preset %r without an AffectNet root: the FER stage trains on the %s, not on AffectNet as the "
                    "paper (pass affectnet_root, or esr_weights for ESR)", study.name, SYNTH_SET)
    return synth_sets(study)


def expression_sets(study: Study) -> dict[str, ExpressionDataset]:
    """The FER stage's ``train`` / ``val`` / ``test`` sets (:func:`fer_data`)."""
    return fer_data(study).sets


# ---------------------------------------------------------------------------------------------------- the stage

def _same_data(recorded: dict[str, Any] | None, study: Study, want: dict[str, Any]) -> bool:
    """Whether a checkpoint's recorded data (None: made before the data was recorded, i.e. on the synth set) is the
    data the stage would train on now: same name and root, and for AffectNet the same rows kept."""
    recorded = recorded or _synth_description(study)
    keys = ("name", "root", "kept") if "kept" in want else ("name", "root")
    return all(recorded.get(k) == want.get(k) for k in keys)


#: :class:`~emdlib.train_fer.FERTrainConfig` fields that do not change what a FER stream learns.
_NOT_TRAINING = ("device", "num_workers")


def _training_changes(recorded: dict[str, Any] | None, study: Study) -> dict[str, tuple[Any, Any]]:
    """``{field: (in the checkpoint, in the preset now)}`` for each FER training setting (schedule, epochs, lr, …,
    from ``--set fer.*``) a checkpoint was trained under that the preset now sets otherwise; empty when they agree
    or the checkpoint recorded none (made before the settings were recorded)."""
    if not recorded:
        return {}
    want = asdict(FERTrainConfig.from_preset(study.preset.fer))
    return {k: (recorded[k], v) for k, v in want.items() if k not in _NOT_TRAINING and k in recorded
            and recorded[k] != v}


def _wanted_data(study: Study) -> dict[str, Any]:
    """The identity of the data :func:`fer_data` would use (without loading it)."""
    root = getattr(study.paths, "affectnet", None)
    if root is None:
        return _synth_description(study)
    from emdlib.data.affectnet import affectnet_layout

    return {"name": "AffectNet", "root": str(affectnet_layout(root).root)}


def ensure_fer_stream(study: Study, kind: str, data: FERData | None = None,
                      retrain: bool = False) -> tuple[FERStream, dict[str, Any]]:
    """One FER stream of the study: the official ESR-9 weights when the study has ``esr_weights`` (ESR), else its
    checkpoint when it exists and fits the preset (:func:`fer_spec`), the data (:func:`fer_data`: same set, same
    root) and the preset's FER training settings (schedule, epochs, learning rates, …: a smoke run's 1-epoch stream
    is not reused by the real run), else trained now on that data (:func:`emdlib.train_fer.train_fer`, Eq. 1, the
    preset's schedule) and
    saved; the checkpoint's metadata records ``source`` and ``data`` (:func:`fer_stream_record` reads them).

    ``data``: the expression data (default :func:`fer_data`). Returns ``(model in eval mode, info)``;
    ``info["source"]`` is ``"official"``, ``"checkpoint"`` or ``"trained"`` and ``info["data"]`` describes the data.
    """
    checkpoint = fer_checkpoint(study, kind)
    want = fer_spec(study, kind)
    if kind == "ESR" and study.preset.fer.esr_weights:
        from emdlib.models.esr import load_official_esr

        model = build_model("esr", num_branches=9)
        report = load_official_esr(model, study.preset.fer.esr_weights)
        info = {"source": "official", "folder": str(study.preset.fer.esr_weights),
                "loaded": [p.name for p in report.loaded]}
        save_fer_stream(checkpoint, model, {"source": info, "data": OFFICIAL_DATA})
        return model.eval(), {**info, "data": OFFICIAL_DATA}
    if checkpoint.is_file() and not retrain:
        model, meta = model_from_checkpoint(checkpoint)
        wanted_data = data.description if data is not None else _wanted_data(study)
        changes = _training_changes(meta.get("train_config"), study)
        if meta.get("model") == want and _same_data(meta.get("data"), study, wanted_data) and not changes:
            log.info("%s: using the existing %s checkpoint", checkpoint, kind)
            return model, {"source": "checkpoint", "checkpoint": str(checkpoint), "metrics": meta.get("metrics"),
                           "data": meta.get("data") or _synth_description(study)}
        if changes:
            log.warning("%s: trained with %s; the preset now sets %s: retraining", checkpoint,
                        {k: a for k, (a, _) in changes.items()}, {k: b for k, (_, b) in changes.items()})
        else:
            log.info("%s: checkpoint is %s on %s, wanted %s on %s: retraining", checkpoint, meta.get("model"),
                     (meta.get("data") or {}).get("name", SYNTH_SET), want, wanted_data.get("name"))
    data = data if data is not None else fer_data(study)
    device = getattr(study, "device", None)
    cfg = FERTrainConfig.from_preset(study.preset.fer, **({"device": device} if device else {}))
    torch.manual_seed(cfg.seed)
    model = build_model(want["name"], **want["kwargs"])
    summary = train_fer(model, data.sets["train"], data.sets["val"], cfg, checkpoint=checkpoint,
                        extra_meta={"source": {"source": "trained"}, "data": data.description})
    return model.eval(), {"source": "trained", **summary, "data": data.description}


def ensure_fer_streams(study: Study, data: FERData | None = None
                       ) -> dict[str, tuple[FERStream, dict[str, Any]]]:
    """The whole FER stage: :func:`ensure_fer_stream` for ESR then SimFER on the same data (``{kind: (model,
    info)}``). The data is loaded only when a stream has to be trained."""
    out = {}
    for kind in FER_KINDS:
        need = data is None and not (kind == "ESR" and study.preset.fer.esr_weights) and not _reusable(study, kind)
        if need:
            data = fer_data(study)
        out[kind] = ensure_fer_stream(study, kind, data)
    return out


def _reusable(study: Study, kind: str) -> bool:
    """Whether :func:`ensure_fer_stream` would reuse the checkpoint of ``kind`` (read from its metadata only)."""
    from emdlib.checkpoint import load_meta

    checkpoint = fer_checkpoint(study, kind)
    if not checkpoint.is_file():
        return False
    try:
        meta = load_meta(checkpoint)
    except (OSError, ValueError):  # unreadable: ensure_fer_stream loads it and raises the error that names it
        return False
    return (meta.get("model") == fer_spec(study, kind) and _same_data(meta.get("data"), study, _wanted_data(study))
            and not _training_changes(meta.get("train_config"), study))


# ---------------------------------------------------------------------------------------------- what a run used

def fer_stream_record(study: Study, kind: str | None) -> dict[str, Any] | None:
    """The compact ``fer_stream`` entry of a run record: which FER stream ``kind`` (``"ESR"``, ``"SimFER"``; None
    for a system without one → None) the run loaded — ``source`` (``trained`` by the FER stage or ``official``
    ESR-9 weights), ``data`` (name, root and, for AffectNet, rows kept and dropped), the checkpoint and its sha256.
    Read from the checkpoint's metadata (:func:`emdlib.checkpoint.load_meta`, which checks the sha256); raises
    FileNotFoundError naming the notebook that makes a missing checkpoint."""
    if kind is None:
        return None
    from emdlib.checkpoint import load_meta

    checkpoint = fer_checkpoint(study, kind)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"{checkpoint}: the {kind} FER stream of preset {study.name!r} is missing; make it "
                                "with " + MAKES_FER.format(preset=study.name))
    meta = load_meta(checkpoint)
    source = meta.get("source")
    data = meta.get("data") or _synth_description(study)
    return {"kind": kind, "model": meta.get("model"),
            "source": source.get("source", "trained") if isinstance(source, dict) else "trained",
            "data": {k: v for k, v in data.items() if k in ("name", "root", "kept", "dropped", "images")},
            "checkpoint": str(checkpoint), "checkpoint_sha256": meta.get("sha256")}


def describe_fer_streams(entries: Sequence[dict[str, Any] | None]) -> str:
    """One sentence naming the FER data and weights of ``entries`` (``fer_stream`` entries of run records,
    :func:`fer_stream_record`): e.g. "ESR (trained here, checkpoint sha256 1a2b3c4d5e6f…) and SimFER (…) on
    AffectNet at /data/affectnet (training.csv: 287,651 rows kept, 126,148 dropped; validation.csv: 4,000 kept,
    1,500 dropped)". Several data sets (runs made at different times) are listed one after another."""
    seen: dict[tuple, list[str]] = {}
    for e in entries:
        if not e:
            continue
        data = e.get("data") or {}
        key = (data.get("name"), data.get("root"), _counts_text(data))
        sha = str(e.get("checkpoint_sha256") or "")[:12]
        who = f"{e.get('kind')} ({'official weights' if e.get('source') == 'official' else 'trained here'}" + \
              (f", checkpoint sha256 {sha}…)" if sha else ")")
        if who not in seen.setdefault(key, []):
            seen[key].append(who)
    if not seen:
        return "not recorded (no run record names its FER stream, and no FER checkpoint of the study is here)"
    parts = []
    for (name, root, counts), who in seen.items():
        where = f" at `{root}`" if root and name != OFFICIAL_DATA["name"] else ""
        name = f"the {name}" if name == SYNTH_SET else name
        parts.append(f"{' and '.join(who)} on {name}{where}{f' ({counts})' if counts else ''}")
    return "; ".join(parts)


def _counts_text(data: dict[str, Any]) -> str:
    kept, dropped = data.get("kept"), data.get("dropped")
    if isinstance(kept, dict):
        csv = {"train": "training.csv", "val": "validation.csv"}
        return "; ".join(f"{csv.get(part, part)}: {n:,} rows kept, "
                         f"{sum((dropped or {}).get(part, {}).values()):,} dropped" for part, n in kept.items())
    images = data.get("images")
    if isinstance(images, dict):
        return ", ".join(f"{n:,} {part}" for part, n in images.items()) + " images"
    return ""


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
