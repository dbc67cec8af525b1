"""Where one study's data, cache, checkpoints and results live (the folders every stage reads and writes).

```
<data_root>/<preset>/ffpp/         FF++ layout made by synth or forge (or the user's FF++ root for ``paper``)
<data_root>/<preset>/cache/        face cache + manifest (prepare)
<data_root>/<preset>/expressions/  synth expression set (the AffectNet stand-in; or the user's AffectNet: ``affectnet``)
<data_root>/<preset>/checkpoints/  trained models (safetensors + JSON): esr/simfer (FER stage), runs/<run>/ (cells)
<results_root>/<preset>/{figures,tables,runs,notebooks}/
```
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class StudyPaths:
    """The folders of one study (module docstring); all absolute.

    ``world`` is the FF++-layout root (the user's FaceForensics++ copy for the ``paper`` preset), ``splits`` its
    split files, ``faces`` the folder of face photos the ``faces`` preset forges from (None otherwise),
    ``affectnet`` the user's AffectNet root (official CSVs and images) when the FER stage trains on it.
    """

    data: Path
    results: Path
    world: Path
    splits: Path
    cache: Path
    expressions: Path
    checkpoints: Path
    faces: Path | None = None
    affectnet: Path | None = None

    @classmethod
    def under(cls, preset: str, data_root: str | Path = "data", results_root: str | Path = "results",
              ffpp_root: str | Path | None = None, splits_dir: str | Path | None = None,
              faces_dir: str | Path | None = None, affectnet: str | Path | None = None) -> "StudyPaths":
        """The folders of preset ``preset`` under ``data_root`` and ``results_root`` (module docstring);
        ``ffpp_root`` / ``splits_dir`` point the world at another FF++ copy / split folder, ``affectnet`` at the
        user's AffectNet."""
        data = Path(data_root).resolve() / preset
        world = Path(ffpp_root).resolve() if ffpp_root else data / "ffpp"
        return cls(data=data, results=Path(results_root).resolve() / preset, world=world,
                   splits=Path(splits_dir).resolve() if splits_dir else world / "splits", cache=data / "cache",
                   expressions=data / "expressions", checkpoints=data / "checkpoints",
                   faces=Path(faces_dir).resolve() if faces_dir else None,
                   affectnet=Path(affectnet).resolve() if affectnet else None)

    @property
    def figures(self) -> Path:
        return self.results / "figures"

    @property
    def tables(self) -> Path:
        return self.results / "tables"

    @property
    def runs(self) -> Path:
        """Run records and predictions: ``runs/<run>/{metrics.json,predictions.npz}``."""
        return self.results / "runs"

    @property
    def run_checkpoints(self) -> Path:
        """Checkpoints of the cells: ``checkpoints/runs/<run>/{best,last}.safetensors``."""
        return self.checkpoints / "runs"

    def ensure_dirs(self) -> "StudyPaths":
        """Create the folders the stages write into; returns ``self``."""
        for p in (self.data, self.figures, self.tables, self.runs, self.checkpoints):
            p.mkdir(parents=True, exist_ok=True)
        return self
