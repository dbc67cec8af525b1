"""Where a preset's data, cache, checkpoints and results live, and the idempotent steps that make them.

The numbered notebooks call these so that each notebook also runs on its own (it builds what it needs when an
earlier notebook has not), and ``emd reproduce`` and a reader running notebooks by hand share one layout:

```
<data_root>/<preset>/ffpp/         FF++ layout made by synth or forge (or the user's FF++ root for ``paper``)
<data_root>/<preset>/cache/        face cache + manifest (prepare)
<data_root>/<preset>/expressions/  synth expression set (the AffectNet stand-in)
<data_root>/<preset>/checkpoints/  trained models (safetensors + JSON)
<results_root>/<preset>/{figures,tables,runs,notebooks}/
```
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from emdlib.presets import Preset, get_preset, results_dir

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StudyPaths:
    preset: str
    data: Path
    results: Path
    world: Path
    cache: Path
    expressions: Path
    checkpoints: Path

    @property
    def figures(self) -> Path:
        return self.results / "figures"

    @property
    def tables(self) -> Path:
        return self.results / "tables"

    @property
    def runs(self) -> Path:
        return self.results / "runs"

    @property
    def splits(self) -> Path:
        return self.world / "splits"

    def ensure_dirs(self) -> "StudyPaths":
        for p in (self.data, self.figures, self.tables, self.runs, self.checkpoints):
            p.mkdir(parents=True, exist_ok=True)
        return self


def study_paths(
    preset: str, data_root: str | Path = "data", results_root: str | Path = "results", ffpp_root: str | Path | None = None
) -> StudyPaths:
    """The folders of one preset (``ffpp_root`` points the world at the user's FaceForensics++ copy)."""
    get_preset(preset)
    data = Path(data_root).resolve() / preset
    world = Path(ffpp_root).resolve() if ffpp_root else data / "ffpp"
    return StudyPaths(
        preset=preset, data=data, results=results_dir(preset, Path(results_root).resolve()), world=world,
        cache=data / "cache", expressions=data / "expressions", checkpoints=data / "checkpoints",
    ).ensure_dirs()


def ensure_world(paths: StudyPaths, preset: Preset | None = None, faces_dir: str | Path | None = None) -> dict:
    """Build the preset's FF++-layout world unless it is already there (synth or forge; FF++ is the user's).

    Generators are resumable, so calling this on a half-built world completes it.
    """
    from emdlib.io import read_json

    preset = preset or get_preset(paths.preset)
    cfg = preset.data
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
        from emdlib.data.forge import build_faces_world

        if faces_dir is None:
            raise ValueError("the 'faces' preset needs faces_dir: a folder of face photos (e.g. the London set)")
        return build_faces_world(Path(faces_dir), paths.world, cfg)
    raise ValueError(f"unknown data world {cfg.world!r}")


def ensure_cache(paths: StudyPaths, preset: Preset | None = None, splits_dir: str | Path | None = None) -> dict:
    """Run prepare (resumable: finished videos are skipped) and return its summary."""
    from emdlib.data.prepare import prepare

    preset = preset or get_preset(paths.preset)
    return prepare(
        paths.world, paths.cache, preset.prepare, methods=preset.data.methods, compressions=preset.data.compressions,
        splits_dir=Path(splits_dir) if splits_dir else None,
    )


def world_counts(paths: StudyPaths) -> "pd.DataFrame":
    """Number of videos per sequence (original or method) and compression in the FF++-layout world, masks included."""
    import pandas as pd

    rows = []
    for seq_dir in sorted((paths.world / "original_sequences").glob("*")) + sorted(
        (paths.world / "manipulated_sequences").glob("*")
    ):
        for comp_dir in sorted(p for p in seq_dir.iterdir() if p.is_dir()):
            n = len(list((comp_dir / "videos").glob("*.mp4")))
            rows.append({"sequence": seq_dir.name, "compression": comp_dir.name, "videos": n})
    if not rows:
        raise FileNotFoundError(f"{paths.world}: no videos in the FF++ layout")
    return pd.DataFrame(rows).pivot_table(index="sequence", columns="compression", values="videos", aggfunc="sum", fill_value=0).astype(int)


def manifest_counts(paths: StudyPaths) -> "pd.DataFrame":
    """Sampled frames per split, method, compression and status, from prepare's manifest."""
    import pandas as pd

    from emdlib.data.prepare import read_manifest

    df = pd.DataFrame(read_manifest(paths.cache))
    return (
        df.groupby(["split", "method", "compression", "status"]).size().unstack("status", fill_value=0)
        if len(df) else pd.DataFrame()
    )


def save_fig3(paths: StudyPaths, preset: Preset | None = None, rows: int = 4, frame: int = 0) -> Path:
    """Render the Fig. 3-style grid for the first ``rows`` test pairs to ``figures/fig3_<world>.png``."""
    from emdlib.data.ffpp import load_splits
    from emdlib.plots import fig3_grid, save_figure

    preset = preset or get_preset(paths.preset)
    pairs = [p for split in ("test", "val", "train") for p in load_splits(paths.splits).get(split, [])][:rows]
    fig = fig3_grid(paths.world, pairs, preset.data.methods, compression=preset.data.compressions[0], frame=frame)
    return save_figure(fig, paths.figures / f"fig3_{preset.data.world}.png")
