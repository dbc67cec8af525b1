"""``emd reproduce``: run the numbered notebooks in order with papermill (the whole study for one preset).

The study is opened once (:meth:`emdlib.study.Study.open`) and its parameters (:data:`emdlib.study.STUDY_PARAMETERS`:
``preset``, ``data_root``, ``results_root`` and the study's overrides) go to every notebook's ``parameters`` cell, so
each notebook reopens the same study; executed copies go to ``results/<preset>/notebooks/``. Notebooks are stored
without outputs; only the executed copies carry them. Notebook 00 is the data stage and 01 the FER-stream stage;
when ``only`` leaves them out, they are ensured here first (:func:`emdlib.study.ensure_stages`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Sequence

from emdlib.io import read_json, write_json
from emdlib.study import STUDY_OVERRIDES, Study, ensure_stages

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
    ``extra_parameters`` named in :data:`emdlib.study.STUDY_OVERRIDES` open the study with them.
    """
    import papermill as pm

    extra = dict(extra_parameters or {})
    study = Study.open(preset, data_root, results_root, **{k: extra.pop(k) for k in STUDY_OVERRIDES if k in extra})
    out_dir = study.paths.results / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    params = {**study.parameters(), **extra}
    selected = [nb for nb in notebooks(notebook_dir) if not only or any(nb.name.startswith(p) for p in only)]
    ensure_stages(study, [nb.name[:2] for nb in selected])
    # timings.json holds this run's times as they come (notebook 07 reports them) and, for the notebooks not run
    # now (--only), their earlier times; the entries of the notebooks about to run are dropped first, never stale
    timings_path = study.paths.results / "timings.json"
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
