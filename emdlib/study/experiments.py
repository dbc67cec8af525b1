"""The experiments stage (notebooks 02–05): one system trained and tested on one method × compression cell.

:func:`run_cell` is the single path every result of Tables II–V and Figs. 4–7 comes from: it builds the cell's
datasets from the face cache (:func:`cell_datasets`), builds the system (EMD, its variants or a baseline) with the
study's FER stream (:func:`build_system`; the FER stage must have run), trains it with the §IV-B loop
(:func:`emdlib.train.fit`), predicts the test split, computes every metric (:mod:`emdlib.metrics`) and writes a
run record plus the test predictions (:mod:`emdlib.study.records`). A finished run is never repeated: its record is
read back, so notebooks can be re-run to restyle tables and figures cheaply.

Also here, because they choose runs: the cells of Table V and Figs. 4, 5, 7 (:func:`paper_cells`) and the runs of
Fig. 6 (:func:`training_size_plan`, :func:`training_size_runs`).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from emdlib import distributed
from emdlib.data.datasets import ManipulationDataset
from emdlib.io import read_json
from emdlib.models.fer_memo import FERMemo, memoise
from emdlib.presets import Preset, with_defaults
from emdlib.recipes import Recipe, recipe_for
from emdlib.study import Study
from emdlib.study.records import RECORD, save_predictions, write_run_record

if TYPE_CHECKING:
    from emdlib.train import TrainConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class System:
    """A row of the paper's tables: which network (``kind``: ``"emd"`` or a baseline name of
    :data:`emdlib.baselines.BASELINES`) and which FER stream it takes (None, ``"ESR"`` or ``"SimFER"``)."""

    name: str
    kind: str
    fer: str | None = None


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
    System("DCNN", "dcnn"),
    System("Capsule-Forensics", "capsule_forensics"),
    System("LAE", "lae"),
    System("Face X-ray", "face_xray"),
    System("FT-res", "forensic_transfer"),
    System("Two-stream", "two_stream"),
]}

#: The expression-manipulation methods of Table V and Figs. 4–7.
EXPRESSION_METHODS: tuple[str, ...] = ("Face2Face", "NeuralTextures")


def run_name(system: str, method: str, compression: str, seed: int = 0, n_train_videos: int | None = None) -> str:
    """File-system-safe run id, e.g. ``emd__Face2Face__c23__s0`` (``__n40`` for a training-size point)."""
    slug = re.sub(r"[^a-z0-9]+", "-", system.lower()).strip("-")
    return f"{slug}__{method}__{compression}__s{seed}" + (f"__n{n_train_videos}" if n_train_videos else "")


# ------------------------------------------------------------------------------------------------------ systems

def baseline_kwargs(system: System, preset: Preset) -> dict[str, Any]:
    """Constructor arguments a baseline takes from the preset (recorded in its checkpoint, so it rebuilds by name).

    ``xception``, ``capsule_forensics`` (its VGG-19 part), ``dcnn`` (AlexNet and VGG-19 from torchvision's
    ImageNet weights), ``two_stream`` (its Inception-v3) and ``face_xray`` (its timm HRNet, chosen by
    :func:`emdlib.baselines.face_xray.backbone_for` from the preset's face size): ``pretrained`` as the preset. The
    baselines built for a fixed input size (``Recipe.sized_input``) — e.g. MesoNet and ClassNSeg (256 px),
    Capsule-Forensics (128 px), Bayar & Stamm (a 128-px crop), Two-stream (299 px) — take their recipe's size
    (:data:`emdlib.recipes.RECIPES`), or the preset's face size when that is smaller (``input_size``): upsampling a
    64-px face adds no information, only compute (16× at 256 px). MesoNet takes the preset's
    ``baseline_bn_momentum`` when set (:class:`emdlib.baselines.mesonet.MesoNet`). A recipe's ``classifier``
    settings are constructor arguments (DCNN's ProCRC, Two-stream's patch SVM), and so are its
    ``active_learning`` ones (LAE's mask fraction and rounds).
    """
    if system.kind == "xception":
        return {"pretrained": preset.emd.pretrained}
    recipe = recipe_for(system.kind)
    kwargs: dict[str, Any] = ({"input_size": min(int(recipe.input_size.value), preset.emd.image_size)}
                              if recipe.sized_input else {})
    if recipe.classifier is not None:  # DCNN's ProCRC settings
        kwargs.update(recipe.classifier.value)
    if recipe.active_learning is not None:  # LAE's mask fraction and selection rounds
        kwargs.update(recipe.active_learning.value)
    if system.kind in ("dcnn", "capsule_forensics", "two_stream"):  # ImageNet starts as the preset says (torchvision)
        kwargs["pretrained"] = preset.emd.pretrained
    if system.kind == "mesonet" and preset.emd.baseline_bn_momentum is not None:
        kwargs["bn_momentum"] = preset.emd.baseline_bn_momentum
    if system.kind == "face_xray":  # HRNet-W48 on the paper's face size, a smaller HRNet below (face-xray-backbone)
        from emdlib.baselines.face_xray import backbone_for

        kwargs.update(backbone=backbone_for(preset.emd.image_size), pretrained=preset.emd.pretrained)
    return kwargs


#: One :class:`emdlib.models.fer_memo.FERMemo` per FER stream kind, shared by this process's runs (seeds, cells and
#: Fig. 6's subsets see the same images through the same checkpoint; a memo empties itself on other weights).
FER_MEMOS: dict[str, FERMemo] = {}


def build_system(study: Study, system: System) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Construct ``system`` as the study's preset says: ``(model, registry spec)``.

    The FER stream is the one the FER stage saved (:func:`emdlib.study.fer.load_fer_stream`; an error names
    notebook 01 when it is missing); EMD takes the preset's encoder and ``pretrained``, a baseline
    :func:`baseline_kwargs`. The spec (:func:`emdlib.registry.model_spec`) goes into the checkpoints so that
    ``emd detect`` and the figures rebuild the network by name, never downloading weights. The FER stream carries
    this process's memo of its kind (:data:`FER_MEMOS`), so training, validation and :func:`emdlib.train.predict`
    read repeated images' FER maps back instead of recomputing them.
    """
    from emdlib.registry import build_model, model_spec
    from emdlib.study.fer import load_fer_stream

    fer = load_fer_stream(study, system.fer) if system.fer else None
    if fer is not None:  # repeated images skip the frozen FER stream: same results, not part of the model or spec
        memoise(fer, FER_MEMOS.setdefault(system.fer, FERMemo()))
    if system.kind == "emd":
        cfg = study.preset.emd
        model = build_model("emd", fer=fer, encoder=cfg.encoder, pretrained=cfg.pretrained)
        return model, model.spec()
    kwargs = baseline_kwargs(system, study.preset)
    pretrained = kwargs.pop("pretrained", False)
    model = build_model(system.kind, fer=fer, pretrained=pretrained, **kwargs)
    return model, model_spec(system.kind, fer=fer, **kwargs)


def initial_weights(preset: Preset, system: System) -> dict[str, Any]:
    """What ``system``'s network started from, for its run record: the ImageNet weights of EMD's encoder and of
    XceptionNet as the preset gives them (:func:`emdlib.pretrained.describe_weights`: random, timm's, or a local
    file with its sha256), of Capsule-Forensics' VGG-19 part
    (:func:`emdlib.baselines.capsule_forensics.describe_vgg_weights`), of Two-stream's Inception-v3
    (:func:`emdlib.baselines.two_stream.describe_initial_weights`) and of Face X-ray's HRNet (the same as
    XceptionNet's, under the backbone's timm name); ``{"source": "random"}`` for the other
    systems (their FER streams are recorded with the FER stage)."""
    from emdlib.pretrained import describe_weights

    if system.kind == "emd":
        return describe_weights(preset.emd.pretrained, preset.emd.encoder)
    if system.kind == "xception":
        from emdlib.baselines.xception import TIMM_NAME

        return describe_weights(preset.emd.pretrained, TIMM_NAME)
    if system.kind == "dcnn":
        from emdlib.baselines.dcnn import describe_initial_weights

        return describe_initial_weights(preset.emd.pretrained)
    if system.kind == "two_stream":
        from emdlib.baselines.two_stream import describe_initial_weights as describe_two_stream

        return describe_two_stream(preset.emd.pretrained)
    if system.kind == "capsule_forensics":
        from emdlib.baselines.capsule_forensics import describe_vgg_weights

        return describe_vgg_weights(preset.emd.pretrained)
    if system.kind == "face_xray":
        return describe_weights(preset.emd.pretrained, baseline_kwargs(system, preset)["backbone"])
    return {"source": "random"}


def cell_datasets(study: Study, method: str, compression: str, n_train_videos: int | None = None,
                  seed: int = 0, augment: bool = True) -> dict[str, ManipulationDataset]:
    """Train (flipped horizontally when ``augment``, as the system's recipe says; optionally the first
    ``n_train_videos`` pristine videos and their fakes), val and test sets of one cell, from the face cache (the
    data stage must have run: :func:`emdlib.study.data.require_cache`). Raises ValueError when a set lacks real or
    fake frames (:meth:`~emdlib.data.datasets.ManipulationDataset.require_both_classes`)."""
    from emdlib.study.data import require_cache

    require_cache(study)
    size = study.preset.emd.image_size
    sets = {split: ManipulationDataset(study.paths.cache, split, [method], [compression], size,
                                       augment=augment and split == "train")
            for split in ("train", "val", "test")}
    if n_train_videos:
        sets["train"] = sets["train"].subset_videos(n_train_videos, seed=seed)
    for data in sets.values():
        data.require_both_classes()
    return sets


# ---------------------------------------------------------------------------------------------------------- runs

#: Environment variable giving :func:`run_cell`'s default number of training processes (``emd reproduce --nproc``
#: sets it for the notebooks it runs).
NPROC_ENV = "EMD_NPROC"


def default_nproc() -> int:
    """``$EMD_NPROC`` (:data:`NPROC_ENV`) as a number of processes, 1 when unset. Raises ValueError when it is not a
    positive integer."""
    raw = os.environ.get(NPROC_ENV, "1")
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"{NPROC_ENV}={raw!r}: must be a positive integer (processes per cell)")
    return n


def run_cell(study: Study, system: str, method: str, compression: str, seed: int = 0,
             n_train_videos: int | None = None, force: bool = False, nproc: int | None = None) -> dict[str, Any]:
    """Train and test ``system`` on one cell; return its run record (read back when it already exists and was made
    under the same configuration with its checkpoint on this machine, :func:`why_not_reusable`).

    Data parallel (:mod:`emdlib.distributed`), two ways: under ``torchrun`` every process calls ``run_cell`` with the
    same arguments and trains its share (:func:`emdlib.train.fit`); or, in one process (a notebook), ``nproc`` > 1
    (default :func:`default_nproc`, ``emd reproduce --nproc``) trains and predicts the cell in ``nproc`` processes
    started through torch's launcher API (:func:`emdlib.distributed.launch`) — fewer when the system's (global)
    batch does not split evenly over ``nproc`` (:func:`emdlib.distributed.processes_for_batch`, with a warning).
    Either way metrics are computed on the gathered test predictions and only rank 0 writes the run record, the
    predictions and the checkpoints. The Steg.Features SVM has no training loop: it runs in this process only.
    """
    paths = study.paths
    name = run_name(system, method, compression, seed, n_train_videos)
    record_path = paths.runs / name / RECORD
    if record_path.is_file() and not force:
        record = read_json(record_path)
        why = why_not_reusable(record, study.preset)
        if why is None:
            return record
        log.warning("%s: %s; training again", record_path, why)
        if distributed.is_main():
            _drop_training_state(paths.run_checkpoints / name)  # never resume a run of another protocol
        distributed.barrier()
    nproc = default_nproc() if nproc is None else int(nproc)
    if nproc < 1:
        raise ValueError(f"nproc {nproc}: must be at least 1")
    spec = SYSTEMS[system]
    recipe = recipe_for(spec.kind)
    sets = cell_datasets(study, method, compression, n_train_videos, seed, augment=recipe.augments)
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    if spec.kind == "steg_features_svm":
        pred, train_info, checkpoint = _run_svm(sets, recipe)
    elif nproc > 1 and not distributed.is_distributed() and (procs := _processes(spec, study, seed, nproc, name)) > 1:
        pred, train_info, checkpoint = distributed.launch(_run_torch_process, procs, study, spec, sets, name, seed,
                                                          run_id=name)
    else:
        pred, train_info, checkpoint = _run_torch(study, spec, sets, name, seed)
    if not distributed.is_main():  # rank 0 writes the record and the predictions; the others wait, then read it
        distributed.barrier()
        return read_json(record_path)
    from emdlib.metrics import evaluate
    from emdlib.study.fer import fer_stream_record

    metrics = evaluate(pred)
    save_predictions(paths.runs / name, pred)
    config = {"system": system, "method": method, "compression": compression, "n_train_videos": n_train_videos,
              "n_train_images": len(sets["train"]), "n_test_images": len(sets["test"]), "preset": study.config(),
              "settings": dict(study.settings),  # the --set values behind this preset configuration
              "train": train_info.get("config", {})}
    write_run_record(paths.results, name, metrics, config, seed, manifest=paths.cache / "manifest.csv",
                     checkpoint=checkpoint, device=train_info.get("device", "cpu"),
                     wall_time_s=round(time.perf_counter() - t0, 1),
                     extra={"system": system, "method": method, "compression": compression,
                            "n_train_videos": n_train_videos, "best_epoch": train_info.get("best_epoch"),
                            "initial_weights": initial_weights(study.preset, spec), "recipe": recipe.summary(),
                            "fer_stream": fer_stream_record(study, spec.fer),
                            "history": train_info.get("history", [])},
                     preset=study.name)
    _drop_training_state(paths.run_checkpoints / name)
    distributed.barrier()
    return read_json(record_path)


def why_not_reusable(record: dict, preset: Preset) -> str | None:
    """Why a stored run record cannot stand for the run now, or None when it can.

    It must have been made under the same preset configuration (less :data:`BASELINE_SETTINGS` for EMD and its
    variants, which do not read them) and with its system's current training recipe
    (:mod:`emdlib.recipes`; checked when the record names its system), and its best checkpoint must be on this
    machine (figures rebuild models from it): a fresh clone carries the committed records of ``results/`` but not
    the checkpoints under ``data/``, so there the main command trains every run again.
    """
    system = SYSTEMS.get(record.get("system") or record.get("config", {}).get("system"))
    if not _same_protocol(_settings_read(record.get("config", {}).get("preset"), system),
                          _settings_read(preset.to_dict(), system)):
        return "recorded under another preset configuration"
    if system is not None and not _same_protocol(record.get("recipe"), recipe_for(system.kind).summary()):
        return "trained with another training recipe"
    ckpt = record.get("checkpoint")
    if ckpt and not Path(ckpt).is_file():
        return f"its checkpoint {ckpt} is not on this machine"
    return None


#: ``emd`` settings only the baselines read (:func:`baseline_kwargs`, :func:`train_config`): a run of EMD or one of
#: its variants stays valid when only these differ (including a record made before one of them existed).
BASELINE_SETTINGS: tuple[str, ...] = ("baseline_bn_momentum", "baseline_precise_bn")


def _settings_read(config: dict | None, system: System | None) -> dict | None:
    """A preset configuration (``Preset.to_dict()``) without the settings ``system`` does not read."""
    if config is None or system is None or system.kind != "emd":
        return config
    return {**config, "emd": {k: v for k, v in config.get("emd", {}).items() if k not in BASELINE_SETTINGS}}


def _same_protocol(recorded: dict | None, current: dict) -> bool:
    """Whether a stored run used the configuration it would get now (JSON round trip: tuples → lists); a preset
    configuration recorded before a setting existed counts as made at its default (:func:`emdlib.presets.with_defaults`)."""
    if recorded is None:
        return False
    if "emd" in recorded and "emd" in current:  # a preset configuration, not a recipe
        recorded, current = with_defaults(recorded), with_defaults(current)
    return json.loads(json.dumps(recorded)) == json.loads(json.dumps(current))


def _drop_training_state(run_dir: Path) -> None:
    """A finished run needs only its best weights: drop ``last.*`` (weights + optimiser state, only for resuming)."""
    for f in ("last.safetensors", "last.json"):
        (run_dir / f).unlink(missing_ok=True)


def train_config(system: System, preset: Preset, seed: int = 0) -> TrainConfig:
    """The :class:`emdlib.train.TrainConfig` ``system`` trains with under ``preset``.

    EMD and its variants: the preset's ``emd`` section as it is (``TrainConfig.from_preset``; for ``paper`` that is
    §IV-B). Every other system: its recipe (:data:`emdlib.recipes.RECIPES`) — optimiser, learning rate, batch
    size — with its epochs scaled by the preset's budget (:func:`emdlib.recipes.scale_epochs`); the preset's image
    size and smoke-test batch cap (``emd.max_batches``) apply to every system, ``emd.baseline_precise_bn`` to the
    baselines (:func:`emdlib.train.recompute_bn_statistics`). Raises ValueError for the SVM (no loop).
    """
    from emdlib.recipes import scale_epochs
    from emdlib.train import TrainConfig

    if system.kind == "emd":
        return TrainConfig.from_preset(preset.emd, seed=seed)
    recipe = recipe_for(system.kind)
    warmup, epochs = scale_epochs(recipe, preset.emd)
    return TrainConfig.from_preset(preset.emd, seed=seed, warmup_epochs=warmup, epochs=epochs,
                                   batch_size=int(recipe.batch_size.value), precise_bn=preset.emd.baseline_precise_bn,
                                   **recipe.optimizer_settings())


def _processes(system: System, study: Study, seed: int, nproc: int, name: str) -> int:
    """How many of ``nproc`` processes train run ``name``: on CUDA at most one per visible GPU, and the recipe's
    batch is the global batch and must split evenly (:func:`emdlib.distributed.processes_for_batch`); a warning
    when fewer."""
    from emdlib.train import resolve_device

    if resolve_device(study.device).type == "cuda" and nproc > (gpus := torch.cuda.device_count()):
        log.warning("%s: %d processes asked for, %d GPUs visible; training on %d", name, nproc, gpus, gpus)
        nproc = max(1, gpus)
    batch = train_config(system, study.preset, seed).batch_size
    procs = distributed.processes_for_batch(batch, nproc)
    if procs < nproc:
        log.warning("%s: batch %d does not split over %d processes; training on %d", name, batch, nproc, procs)
    return procs


def _run_torch_process(study: Study, system: System, sets: dict, name: str, seed: int):
    """One of the processes :func:`run_cell` launches: join the process group (the launcher's environment), train
    and predict the cell (:func:`_run_torch`) and leave the group; rank 0's return value reaches the caller."""
    import torch.distributed as dist

    distributed.init_from_env(device=study.device)
    torch.set_num_threads(max(1, torch.get_num_threads() // distributed.world_size()))  # the CPU cores shared
    try:
        torch.manual_seed(seed)
        return _run_torch(study, system, sets, name, seed)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _run_torch(study: Study, system: System, sets: dict, name: str, seed: int):
    """Train ``system`` on the cell's ``sets`` (:func:`emdlib.train.fit`, data parallel under a process group; the
    training split as the network's :meth:`~emdlib.models.detector.DetectorNet.training_data` makes it), fit
    the system's own classifier where it has one (:meth:`~emdlib.models.detector.DetectorNet.fit_classifier`, DCNN's
    ProCRC: on the unaugmented training split, every rank alike; rank 0 then re-saves the best checkpoint holding
    it, :func:`_resave_best`) and predict the test split; ``(predictions, training info, best checkpoint path)``.
    The recorded ``world_size`` is the number of processes that trained it."""
    from emdlib.train import fit, loader_workers, make_loader, predict, resolve_device

    model, spec = build_system(study, system)
    device = resolve_device(distributed.local_device(study.device) if distributed.is_distributed() else study.device)
    cfg = dataclasses.replace(train_config(system, study.preset, seed), device=study.device,
                              num_workers=loader_workers(device))  # GPU: batches loaded by pinned-memory workers
    train = model.training_data(sets["train"], seed)  # the split itself, but for Face X-ray's blended faces
    summary = fit(model, train, sets["val"], study.paths.run_checkpoints / name, cfg, meta={"model": spec})
    loader = make_loader(_unaugmented(sets["train"]), cfg.batch_size, False, seed, cfg.num_workers)
    if model.fit_classifier(loader) and summary.get("best_checkpoint"):
        spec = model.spec() or spec
        if distributed.is_main():
            _resave_best(summary["best_checkpoint"], model, spec)
        distributed.barrier()
    pred = predict(model, sets["test"], device=cfg.device, batch_size=cfg.batch_size, seed=seed,
                   num_workers=cfg.num_workers)
    if getattr(getattr(model, "fer", None), "memo", None) is not None:
        log.info("%s: FER memo %s", name, model.fer.memo.stats())
    info = {"config": cfg.to_dict(), "device": summary.get("device"), "best_epoch": summary.get("best_epoch"),
            "history": summary.get("history", [])}
    if distributed.is_distributed():
        info["config"]["world_size"] = distributed.world_size()
    return pred, info, summary.get("best_checkpoint") or summary.get("last_checkpoint")


def _unaugmented(data):
    """``data`` without training-time flips (a shallow copy when it flips; :class:`ManipulationDataset`)."""
    if getattr(data, "augment", False):
        data = copy.copy(data)
        data.augment = False
    return data


def _resave_best(path: str | Path, model: torch.nn.Module, spec: dict[str, Any]) -> None:
    """Rewrite the best checkpoint with ``model``'s weights (now holding its fitted classifier), its sidecar's
    metadata kept and its ``model`` entry set to ``spec`` (the spec that rebuilds it, e.g. with the classifier's
    size)."""
    from emdlib.checkpoint import load_meta, save_checkpoint
    from emdlib.registry import check_spec

    meta = {k: v for k, v in load_meta(path).items() if k != "sha256"}
    save_checkpoint(path, model.state_dict(), {**meta, "model": check_spec(spec, path)})
    log.info("%s: re-saved with the fitted classifier", path)


def _run_svm(sets: dict, recipe: Recipe):
    """Steg.Features + SVM: features of the uint8 face crops, linear SVM at the recipe's C; P(fake) =
    sigmoid(decision)."""
    from emdlib.baselines.steganalysis import shared_input_to_uint8, steg_svm_pipeline

    def arrays(ds) -> tuple[np.ndarray, np.ndarray, list[dict]]:
        items = [ds[i] for i in range(len(ds))]
        x = shared_input_to_uint8(torch.stack([it["image"] for it in items]))
        return x, np.array([int(it["label"]) for it in items]), items

    x_tr, y_tr, _ = arrays(sets["train"])
    x_te, y_te, items = arrays(sets["test"])
    c = float(recipe.svm_c.value)
    pipe = steg_svm_pipeline(C=c)
    pipe.fit(x_tr, y_tr)
    prob = 1.0 / (1.0 + np.exp(-pipe.decision_function(x_te)))
    pred = {"prob": prob, "label": y_te,
            **{k: np.array([it[k] for it in items], dtype=object) for k in ("method", "compression", "video")},
            "frame": np.array([int(it["frame"]) for it in items])}
    return pred, {"config": {"classifier": "LinearSVC", "C": c}, "device": "cpu"}, None


def run_grid(study: Study, systems: Sequence[str], cells: Sequence[tuple[str, str]],
             seed: int = 0) -> list[dict[str, Any]]:
    """:func:`run_cell` for every system × cell (finished runs are read back)."""
    records = []
    for method, comp in cells:
        for system in systems:
            log.info("%s on %s %s", system, method, comp)
            records.append(run_cell(study, system, method, comp, seed))
    return records


def finished_runs(study: Study, systems: Sequence[str], cells: Sequence[tuple[str, str]], seed: int = 0,
                  made_by: str = "the notebook that runs them") -> list[dict[str, Any]]:
    """The run records of ``systems`` × ``cells`` as an earlier notebook left them; never trains.

    For figures drawn from finished runs (Figs. 4, 5, 7): raises FileNotFoundError listing the missing runs and
    naming ``made_by``, the notebook or command that makes them.
    """
    names = [run_name(s, m, c, seed) for m, c in cells for s in systems]
    missing = [n for n in names if not (study.paths.runs / n / RECORD).is_file()]
    if missing:
        raise FileNotFoundError(f"{study.paths.runs}: runs {missing} of preset {study.name!r} are missing; make them "
                                f"with {made_by} (or `emd reproduce --preset {study.name}`)")
    return [read_json(study.paths.runs / n / RECORD) for n in names]


# ------------------------------------------------------------------------------------ which runs a result needs

def paper_cells(preset: Preset, methods: Sequence[str] = EXPRESSION_METHODS,
                compression: str = "c23") -> list[tuple[str, str]]:
    """The preset's cells (``preset.emd.cells``) that Table V and Figs. 4, 5, 7 use: F2F and NT at HQ (c23).
    Raises ValueError when the preset has none."""
    cells = [(m, c) for m, c in preset.emd.cells if m in methods and c == compression]
    if not cells:
        raise ValueError(f"preset {preset.name!r} has no {'/'.join(methods)} {compression} cell "
                         f"(its cells: {list(preset.emd.cells)})")
    return cells


def _train_videos(preset: Preset) -> int:
    """Pristine training videos of the preset: two per train pair (FF++ splits; 720 for the paper)."""
    return 2 * int(preset.data.pairs[0])


def training_size_points(preset: Preset, n_points: int | None = None) -> list[int]:
    """Numbers of (pristine) training videos for Fig. 6, increasing, ending at the preset's full training set.

    The paper goes from 10 to ~700 videos. Here the points are geometrically spaced between 10 (2 when the preset has
    fewer than 100 training videos) and ``2 × train pairs``; by default 2 points for a smoke-test preset (≤ 8 videos),
    4 up to 200 videos, 6 beyond (e.g. ``tiny`` → [2, 6], ``cpu`` → [2, 4, 9, 20], ``paper`` → 10 … 720).
    Raises ValueError for a preset without training videos or ``n_points < 1``.
    """
    total = _train_videos(preset)
    if total < 1:
        raise ValueError(f"preset {preset.name!r} has no training videos")
    if n_points is None:
        n_points = 2 if total <= 8 else 4 if total <= 200 else 6
    if n_points < 1:
        raise ValueError(f"n_points must be >= 1, got {n_points}")
    lo = min(10 if total >= 100 else 2, total)
    points = sorted({int(round(x)) for x in np.geomspace(lo, total, n_points)} | {total})
    return [p for p in points if 1 <= p <= total]


def training_size_plan(preset: Preset) -> dict[str, Any]:
    """Preset-dependent defaults of notebook 05: ``points``, ``seeds`` (three, as the minimum for an interval) and
    ``cells`` — F2F and one other cell of the preset (NT, else DF) as the paper's two panels; one cell for a
    smoke-test preset (≤ 8 training videos) or when the preset asks for one (``EMDConfig.curve_cells``)."""
    cells = list(preset.emd.cells)
    f2f = [c for c in cells if c[0] == "Face2Face"] or cells[:1]
    chosen = f2f[:1]
    if _train_videos(preset) > 8 and preset.emd.curve_cells > 1:
        others = [c for m in ("NeuralTextures", "Deepfakes") for c in cells if c[0] == m and c[1] == chosen[0][1]]
        chosen += others[:1]
    return {"points": training_size_points(preset, preset.emd.curve_points), "seeds": [0, 1, 2], "cells": chosen}


def training_size_runs(study: Study, points: Sequence[int], seeds: Sequence[int], cells: Sequence[tuple[str, str]],
                       system: str = "EMD") -> list[dict[str, Any]]:
    """Fig. 6's runs (§IV-E2): ``system`` on each cell trained on the first ``n`` pristine training videos (and their
    fakes; :meth:`~emdlib.data.datasets.ManipulationDataset.subset_videos`, nested per seed) for every ``n`` and
    seed; finished runs are read back.

    The point at the whole training set is the cell's main run of that seed (notebook 02 trains it, and the FER
    comparison's seeds, :func:`comparison_runs`): it is not trained a second time under another name. Its record is
    returned with ``n_train_videos`` set to ``n`` (in memory only), so that it joins the curve.
    """
    full = _train_videos(study.preset)
    records = []
    for method, comp in cells:
        for n in points:
            for seed in seeds:
                log.info("Fig. 6: %s on %s %s, %d training videos, seed %d", system, method, comp, n, seed)
                if int(n) >= full:
                    records.append({**run_cell(study, system, method, comp, seed=seed), "n_train_videos": full})
                else:
                    records.append(run_cell(study, system, method, comp, seed=seed, n_train_videos=int(n)))
    return records


#: The paper's central comparison: EMD against the same network without the FER stream (the Table IV row).
COMPARISON: tuple[str, str] = ("EMD", "XceptionNet (seg)")


def comparison_runs(study: Study, seeds: Sequence[int] | None = None,
                    systems: Sequence[str] = COMPARISON) -> list[dict[str, Any]]:
    """EMD and the same network without FER on the expression cells (:func:`paper_cells`: F2F and NT at c23) for
    every seed of ``seeds`` (default: the preset's ``emd.comparison_seeds``); finished runs are read back (seed 0 is
    the main run of notebook 02). :func:`emdlib.stats.fer_effect_over_seeds` compares them."""
    seeds = list(study.preset.emd.comparison_seeds if seeds is None else seeds)
    records = []
    for seed in seeds:
        records += run_grid(study, systems, paper_cells(study.preset), seed=seed)
    return records
