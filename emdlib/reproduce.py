"""``emd reproduce``: run the numbered notebooks in order with papermill (the whole study for one preset).

Each notebook receives ``preset``, ``data_root`` and ``results_root`` in its ``parameters`` cell; executed copies go
to ``results/<preset>/notebooks/``. Notebooks are stored without outputs; only the executed copies carry them.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Sequence

from emdlib.io import read_json, write_json
from emdlib.presets import get_preset, results_dir

log = logging.getLogger(__name__)

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"


def notebooks(notebook_dir: str | Path = NOTEBOOK_DIR) -> list[Path]:
    """The numbered notebooks ``NN_*.ipynb`` in order."""
    found = sorted(p for p in Path(notebook_dir).glob("[0-9][0-9]_*.ipynb"))
    if not found:
        raise FileNotFoundError(f"{notebook_dir}: no numbered notebooks (NN_name.ipynb)")
    return found


def reproduce(
    preset: str,
    data_root: str | Path = "data",
    results_root: str | Path = "results",
    only: Sequence[str] | None = None,
    notebook_dir: str | Path = NOTEBOOK_DIR,
    extra_parameters: dict | None = None,
) -> dict[str, float]:
    """Execute the notebooks for ``preset``; return the wall time of each (``timings.json``, updated as each ends).

    ``only`` restricts the run to notebooks whose name starts with one of the given prefixes (e.g. ``["00", "01"]``).
    """
    import papermill as pm

    get_preset(preset)  # fail early on an unknown name
    out_dir = results_dir(preset, results_root) / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    params = {
        "preset": preset,
        "data_root": str(Path(data_root).resolve()),
        "results_root": str(Path(results_root).resolve()),
        **(extra_parameters or {}),
    }
    selected = [nb for nb in notebooks(notebook_dir) if not only or any(nb.name.startswith(p) for p in only)]
    # timings.json holds this run's times as they come (notebook 07 reports them) and, for the notebooks not run
    # now (--only), their earlier times; the entries of the notebooks about to run are dropped first, never stale
    timings_path = results_dir(preset, results_root) / "timings.json"
    previous = read_json(timings_path) if timings_path.is_file() else {}
    kept = {k: v for k, v in previous.items() if k not in {nb.name for nb in selected}}
    timings: dict[str, float] = {}
    for nb in selected:
        write_json(timings_path, dict(sorted({**kept, **timings}.items())))
        log.info("running %s (preset %s)", nb.name, preset)
        t0 = time.perf_counter()
        pm.execute_notebook(str(nb), str(out_dir / nb.name), parameters=params, cwd=str(nb.parent), progress_bar=False)
        timings[nb.name] = round(time.perf_counter() - t0, 1)
        log.info("%s done in %.1f s", nb.name, timings[nb.name])
    write_json(timings_path, dict(sorted({**kept, **timings}.items())))
    return timings
