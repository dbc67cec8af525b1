"""The data stage (notebook 00): the preset's FF++-layout world and the face cache that every later stage reads.

:func:`ensure_data` builds what is missing and is resumable (generators and ``prepare`` skip finished videos, and
every write is atomic). Later stages call :func:`require_cache`, which never builds: a missing cache is an error
that names the notebook or command that makes it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from emdlib.study import Study

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

MAKES_DATA = "notebook 00_data_prep (or `emd reproduce --preset {preset} --only 00`)"


def ensure_world(study: Study) -> dict:
    """Build the study's FF++-layout world unless it is already there (synth or forge; FF++ is the user's).

    Returns the world's summary (``world.json``). Raises FileNotFoundError when the ``paper`` preset's FF++ root is
    missing and ValueError when the ``faces`` preset has no face photos (``faces_dir``).
    """
    from emdlib.io import read_json

    cfg, paths = study.preset.data, study.paths
    done = paths.world / "world.json"
    if cfg.world == "ffpp":
        if not paths.world.is_dir():
            raise FileNotFoundError(f"{paths.world}: FaceForensics++ root not found (pass ffpp_root)")
        return {"world": "ffpp", "root": str(paths.world)}
    if done.is_file():
        return read_json(done)
    if cfg.world == "synth":
        from emdlib.data.synth import build_synth_world

        return build_synth_world(paths.world, cfg)
    if cfg.world == "faces":
        from emdlib.data.photos import build_faces_world

        if paths.faces is None:
            raise ValueError("the 'faces' preset needs faces_dir: a folder of face photos (e.g. the London set)")
        return build_faces_world(paths.faces, paths.world, cfg)
    raise ValueError(f"unknown data world {cfg.world!r}")


def ensure_cache(study: Study) -> dict:
    """Run prepare on the world (resumable: finished videos are skipped) with the study's ``workers`` (None: the
    preset's), check that every cell can train (:func:`require_trainable_cells`) and return prepare's summary."""
    from emdlib.data.prepare import prepare

    preset, paths = study.preset, study.paths
    summary = prepare(paths.world, paths.cache, preset.prepare, methods=preset.data.methods,
                      compressions=preset.data.compressions, splits_dir=paths.splits, workers=study.workers)
    require_trainable_cells(study)
    return summary


def ensure_data(study: Study) -> dict:
    """The whole data stage: :func:`ensure_world` then :func:`ensure_cache`; returns prepare's summary."""
    ensure_world(study)
    return ensure_cache(study)


def require_trainable_cells(study: Study) -> None:
    """Raise ValueError (:meth:`~emdlib.data.datasets.ManipulationDataset.require_both_classes`: the split, the
    counts and the manifest's reasons) when a cell of ``emd.cells`` has no real or no fake frame in its train, val
    or test split — at the end of the data stage, not hours later when the cell's first network would train."""
    from collections import Counter

    from emdlib.data.datasets import ManipulationDataset
    from emdlib.data.ffpp import ORIGINAL, SPLITS
    from emdlib.data.prepare import read_manifest

    # the manifest read once (the paper's holds ~1.2 M rows); a dataset is built only to explain a failing cell
    usable = Counter((r["split"], r["method"], r["compression"]) for r in read_manifest(study.paths.cache)
                     if r["status"] == "ok" and r["row"] is not None and r["row"] >= 0)
    for method, compression in study.preset.emd.cells:
        for split in SPLITS:
            if not usable[(split, ORIGINAL, compression)] or not usable[(split, method, compression)]:
                ManipulationDataset(study.paths.cache, split, [method], [compression],
                                    study.preset.emd.image_size).require_both_classes()


def require_cache(study: Study) -> None:
    """Check that the data stage has run (the face cache's manifest exists); FileNotFoundError naming the notebook
    that makes it otherwise. Never builds anything."""
    manifest = study.paths.cache / "manifest.csv"
    if not manifest.is_file():
        raise FileNotFoundError(f"{manifest}: the face cache of preset {study.name!r} is missing; make it with "
                                + MAKES_DATA.format(preset=study.name))


def world_counts(study: Study) -> "pd.DataFrame":
    """Number of videos per sequence (original or method) and compression in the FF++-layout world, masks included."""
    import pandas as pd

    world = study.paths.world
    rows = []
    for seq_dir in sorted((world / "original_sequences").glob("*")) + sorted(
        (world / "manipulated_sequences").glob("*")
    ):
        for comp_dir in sorted(p for p in seq_dir.iterdir() if p.is_dir()):
            n = len(list((comp_dir / "videos").glob("*.mp4")))
            rows.append({"sequence": seq_dir.name, "compression": comp_dir.name, "videos": n})
    if not rows:
        raise FileNotFoundError(f"{world}: no videos in the FF++ layout")
    return pd.DataFrame(rows).pivot_table(index="sequence", columns="compression", values="videos", aggfunc="sum",
                                          fill_value=0).astype(int)


def manifest_counts(study: Study) -> "pd.DataFrame":
    """Sampled frames per split, method, compression and status, from prepare's manifest."""
    import pandas as pd

    from emdlib.data.prepare import read_manifest

    df = pd.DataFrame(read_manifest(study.paths.cache))
    return (
        df.groupby(["split", "method", "compression", "status"]).size().unstack("status", fill_value=0)
        if len(df) else pd.DataFrame()
    )
