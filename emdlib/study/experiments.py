"""One experiment = one system trained and tested on one method × compression cell (Tables II–V, Figs. 4–6).

:func:`run_cell` is the single path every results notebook uses: it builds the cell's datasets from the face cache,
builds the system (EMD, its variants, or a baseline) with the preset's FER stream, trains it with the §IV-B loop
(:func:`emdlib.train.fit`), predicts the test split, computes every metric (:mod:`emdlib.metrics`) and writes a run
record (:mod:`emdlib.runs`) plus the test predictions (``predictions.npz``, for ROC figures). A finished run is
never repeated: its record is read back, so notebooks can be re-run to restyle tables and figures cheaply.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from emdlib.io import atomic_path, read_json
from emdlib.presets import Preset
from emdlib.study import StudyPaths

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class System:
    """A row of the paper's tables: how to build it and which FER stream (if any) it takes."""

    name: str
    kind: str  # "emd" | a baseline name from emdlib.baselines.BASELINES
    fer: str | None = None  # None | "ESR" | "SimFER"


#: Every system of Tables II–V. "XceptionNet (seg)" is EMD without the FER stream: the paper's Table IV row.
SYSTEMS: dict[str, System] = {s.name: s for s in [
    System("EMD", "emd", "ESR"),
    System("XceptionNet (seg)", "emd", None),
    System("XceptionNet+SimFER", "emd", "SimFER"),
    System("XceptionNet", "xception"),
    System("MultiTask", "multitask"),
    System("MultiTask+EnsFER", "multitask_ensfer", "ESR"),
    System("MultiTask+SimFER", "multitask_ensfer", "SimFER"),
    System("MesoNet", "mesonet"),
    System("Bayar and Stamm", "bayar_stamm"),
    System("Rahmouni et al.", "rahmouni"),
    System("Cozzolino et al.", "cozzolino"),
    System("Steg.Features+SVM", "steg_features_svm"),
]}


def run_name(system: str, method: str, compression: str, seed: int = 0, n_train_videos: int | None = None) -> str:
    """File-system-safe run id, e.g. ``emd__Face2Face__c23__s0`` (``__n40`` for a training-size point)."""
    slug = re.sub(r"[^a-z0-9]+", "-", system.lower()).strip("-")
    return f"{slug}__{method}__{compression}__s{seed}" + (f"__n{n_train_videos}" if n_train_videos else "")


def fer_stream(paths: StudyPaths, preset: Preset, kind: str) -> torch.nn.Module:
    """The preset's trained FER stream (notebook 01), trained now when its checkpoint is missing."""
    from emdlib import fer

    ckpt = paths.checkpoints / f"{kind.lower()}.safetensors"  # written by notebook 01
    if ckpt.is_file():
        model, _ = fer.load_fer_model(ckpt)
        return model
    sets = expression_sets(paths, preset)
    cfg = fer.FERTrainConfig.from_preset(preset.fer)
    model, _ = fer.ensure_fer_model(kind, sets["train"], sets["val"], cfg, ckpt, num_branches=preset.fer.branches,
                                    esr_weights=preset.fer.esr_weights if kind == "ESR" else None)
    return model


def expression_sets(paths: StudyPaths, preset: Preset) -> dict[str, Any]:
    """Train/val/test splits of the preset's expression set (rendered on first use)."""
    from emdlib import fer

    fer.ensure_expression_set(paths.expressions, preset.data)
    return fer.expression_splits(paths.expressions, seed=preset.data.seed)


def build_system(system: System, paths: StudyPaths, preset: Preset) -> Any:
    """Construct a system with the preset's encoder and FER stream (``pretrained`` as the preset says)."""
    fer = fer_stream(paths, preset, system.fer) if system.fer else None
    if system.kind == "emd":
        from emdlib.models.emd import EMD
        from emdlib.fer import model_spec as fer_spec

        return EMD(fer=fer, encoder=preset.emd.encoder, pretrained=preset.emd.pretrained,
                   fer_spec=fer_spec(fer) if fer is not None else None)
    from emdlib.baselines import build_baseline

    return build_baseline(system.kind, **({"fer": fer} if fer is not None else {}), **baseline_kwargs(system, preset))


def baseline_kwargs(system: System, preset: Preset) -> dict[str, Any]:
    """Constructor arguments a baseline takes from the preset (recorded in its checkpoint, so it rebuilds by name).

    ``xception``: ``pretrained`` as the preset. The baselines that resize every face to a fixed size — MesoNet and
    ClassNSeg (256 px), Bayar & Stamm (a 128-px crop) — run at the preset's face size when that is smaller
    (``input_size``): upsampling a 64-px face adds no information, only compute (16× at 256 px). MesoNet takes the
    preset's ``baseline_bn_momentum`` when set (:class:`emdlib.baselines.mesonet.MesoNet`).
    """
    if system.kind == "xception":
        return {"pretrained": preset.emd.pretrained}
    from emdlib.baselines import bayar, classnseg, mesonet

    native = {"multitask": classnseg.INPUT_SIZE, "multitask_ensfer": classnseg.INPUT_SIZE,
              "mesonet": mesonet.INPUT_SIZE, "bayar_stamm": bayar.INPUT_SIZE}.get(system.kind)
    kwargs: dict[str, Any] = {"input_size": min(native, preset.emd.image_size)} if native else {}
    if system.kind == "mesonet" and preset.emd.baseline_bn_momentum is not None:
        kwargs["bn_momentum"] = preset.emd.baseline_bn_momentum
    return kwargs


def cell_datasets(paths: StudyPaths, preset: Preset, method: str, compression: str,
                  n_train_videos: int | None = None, seed: int = 0) -> dict[str, Any]:
    """Train (augmented; optionally the first ``n_train_videos`` pristine videos and their fakes), val and test."""
    from emdlib.data.datasets import ManipulationDataset

    size = preset.emd.image_size
    sets = {split: ManipulationDataset(paths.cache, split, [method], [compression], size, augment=(split == "train"))
            for split in ("train", "val", "test")}
    if n_train_videos:
        sets["train"] = sets["train"].subset_videos(n_train_videos, seed=seed)
    return sets


def run_cell(paths: StudyPaths, preset: Preset, system: str, method: str, compression: str, seed: int = 0,
             n_train_videos: int | None = None, force: bool = False) -> dict[str, Any]:
    """Train and test ``system`` on one cell; return its run record (read back when it already exists)."""
    from emdlib.runs import write_run_record

    name = run_name(system, method, compression, seed, n_train_videos)
    record_path = paths.runs / name / "metrics.json"
    if record_path.is_file() and not force:
        record = read_json(record_path)
        why = why_not_reusable(record, preset)
        if why is None:
            return record
        log.warning("%s: %s; training again", record_path, why)
        _drop_training_state(paths.checkpoints / "runs" / name)  # never resume a run of another protocol
    spec = SYSTEMS[system]
    sets = cell_datasets(paths, preset, method, compression, n_train_videos, seed)
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    if spec.kind == "steg_features_svm":
        pred, train_info, checkpoint = _run_svm(sets)
    else:
        pred, train_info, checkpoint = _run_torch(spec, paths, preset, sets, name, seed)
    from emdlib.metrics import evaluate

    metrics = evaluate(pred)
    _save_predictions(paths.runs / name / "predictions.npz", pred)
    config = {"system": system, "method": method, "compression": compression, "n_train_videos": n_train_videos,
              "n_train_images": len(sets["train"]), "n_test_images": len(sets["test"]), "preset": preset.to_dict(),
              "train": train_info.get("config", {})}
    write_run_record(paths.results, name, metrics, config, seed, manifest=paths.cache / "manifest.csv",
                     checkpoint=checkpoint, device=train_info.get("device", "cpu"),
                     wall_time_s=round(time.perf_counter() - t0, 1),
                     extra={"system": system, "method": method, "compression": compression,
                            "n_train_videos": n_train_videos, "best_epoch": train_info.get("best_epoch"),
                            "history": train_info.get("history", [])},
                     preset=preset.name)
    _drop_training_state(paths.checkpoints / "runs" / name)
    return read_json(record_path)


def why_not_reusable(record: dict, preset: Preset) -> str | None:
    """Why a stored run record cannot stand for the run now, or None when it can.

    It must have been made under the same preset configuration, and its best checkpoint must be on this machine
    (figures rebuild models from it): a fresh clone carries the committed records of ``results/`` but not the
    checkpoints under ``data/``, so there the main command trains every run again.
    """
    if not _same_protocol(record.get("config", {}).get("preset"), preset.to_dict()):
        return "recorded under another preset configuration"
    ckpt = record.get("checkpoint")
    if ckpt and not Path(ckpt).is_file():
        return f"its checkpoint {ckpt} is not on this machine"
    return None


def _same_protocol(recorded: dict | None, current: dict) -> bool:
    """Whether a stored run used the preset configuration it would get now (JSON round trip: tuples → lists)."""
    import json

    return recorded is not None and json.loads(json.dumps(recorded)) == json.loads(json.dumps(current))


def _drop_training_state(run_dir: Path) -> None:
    """A finished run needs only its best weights: drop ``last.*`` (weights + optimiser state, only for resuming)."""
    for f in ("last.safetensors", "last.json"):
        (run_dir / f).unlink(missing_ok=True)


def _run_torch(spec: System, paths: StudyPaths, preset: Preset, sets: dict, name: str, seed: int):
    from emdlib.train import TrainConfig, fit, predict

    model = build_system(spec, paths, preset)
    cfg = TrainConfig.from_emd(preset.emd, seed=seed)
    meta = {}
    if not callable(getattr(model, "spec", None)) and spec.fer is None:
        # lets emd detect / registry.model_from_checkpoint rebuild the baseline by name
        # (pretrained=False: the checkpoint holds every weight, so rebuilding needs no download)
        meta["model"] = {"name": spec.kind, "kwargs": {**baseline_kwargs(spec, preset),
                                                      **({"pretrained": False} if spec.kind == "xception" else {})}}
    summary = fit(model, sets["train"], sets["val"], paths.checkpoints / "runs" / name, cfg, meta=meta)
    pred = predict(model, sets["test"], batch_size=cfg.batch_size, seed=seed)
    info = {"config": cfg.to_dict(), "device": summary.get("device"), "best_epoch": summary.get("best_epoch"),
            "history": summary.get("history", [])}
    return pred, info, summary.get("best_checkpoint") or summary.get("last_checkpoint")


def _run_svm(sets: dict):
    """Steg.Features + SVM: features of the uint8 face crops, linear SVM; P(fake) = sigmoid(decision)."""
    from emdlib.baselines.steganalysis import shared_input_to_uint8, steg_svm_pipeline

    def arrays(ds) -> tuple[np.ndarray, np.ndarray, list[dict]]:
        items = [ds[i] for i in range(len(ds))]
        x = shared_input_to_uint8(torch.stack([it["image"] for it in items]))
        return x, np.array([int(it["label"]) for it in items]), items

    x_tr, y_tr, _ = arrays(sets["train"])
    x_te, y_te, items = arrays(sets["test"])
    pipe = steg_svm_pipeline()
    pipe.fit(x_tr, y_tr)
    prob = 1.0 / (1.0 + np.exp(-pipe.decision_function(x_te)))
    pred = {"prob": prob, "label": y_te,
            **{k: np.array([it[k] for it in items], dtype=object) for k in ("method", "compression", "video")},
            "frame": np.array([int(it["frame"]) for it in items])}
    return pred, {"config": {"classifier": "LinearSVC", "C": 1.0}, "device": "cpu"}, None


def _save_predictions(path: Path, pred: dict[str, np.ndarray]) -> None:
    arrays = {k: (np.asarray(v).astype(str) if np.asarray(v).dtype == object else np.asarray(v))
              for k, v in pred.items() if k != "mask_prob"}
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez_compressed(tmp, **arrays)


def load_predictions(paths: StudyPaths, run: str) -> dict[str, np.ndarray]:
    """Test predictions stored by :func:`run_cell` (for ROC curves)."""
    path = paths.runs / run / "predictions.npz"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: predictions not found; run the cell first")
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def run_grid(paths: StudyPaths, preset: Preset, systems: list[str], cells: list[tuple[str, str]],
             seed: int = 0) -> list[dict[str, Any]]:
    """:func:`run_cell` for every system × cell (finished runs are read back)."""
    records = []
    for method, comp in cells:
        for system in systems:
            log.info("%s on %s %s", system, method, comp)
            records.append(run_cell(paths, preset, system, method, comp, seed))
    return records
