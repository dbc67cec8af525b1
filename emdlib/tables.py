"""The paper's tables rebuilt from run records, beside the paper's numbers (design.md "Results"), and the study's
other tables.

Every number in the "ours" columns is read from ``results/<preset>/runs/<run>/metrics.json`` (run records,
:mod:`emdlib.study.records`, written by :func:`emdlib.study.experiments.run_cell`); every number in the "paper"
columns comes from :mod:`emdlib.paper`; "diff" is ours − paper, in percentage points. Nothing else is typed in, and
nothing here trains.

* :func:`build_table` / :func:`table_ii` … :func:`table_v`: Tables II–V, one tidy frame per table, one row per
  (paper row, cell) with ``ours`` (mean over seeds), ``n_runs``, ``paper``, ``diff``, ``status`` and the provenance
  (``runs``). ``status`` is ``"ours"``, ``"not run (preset)"`` (the preset's cells exclude it), ``"not run"`` (in
  the preset but no record yet, e.g. Table V before notebook 04) or ``"not reproduced"`` (a Table III row whose
  system :data:`emdlib.study.experiments.SYSTEMS` does not have).
* :func:`wide`, :func:`markdown_table`, :func:`table_markdown`, :func:`write_tables`: display forms, and
  ``results/<preset>/tables/table_<N>.csv`` (tidy) and ``.md`` (ours | paper | diff per cell).
* :func:`metrics_table` (every metric of some runs), :func:`training_size_table` (the numbers of Fig. 6, with
  t-intervals over seeds) and :func:`architecture_table` (EMD's parts, notebook 02).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import pandas as pd

from emdlib import paper
from emdlib.io import atomic_path, write_text
from emdlib.presets import METHODS, Preset
from emdlib.stats import NOT_RUN, OURS, t_interval
from emdlib.study import Study
from emdlib.study.records import load_run_records

if TYPE_CHECKING:
    from emdlib.models.emd import EMD

log = logging.getLogger(__name__)

NOT_RUN_PRESET = "not run (preset)"
NOT_REPRODUCED = "not reproduced"

#: Table II rows in the paper's order (names as :data:`emdlib.study.experiments.SYSTEMS` and :mod:`emdlib.paper`).
TABLE_II_ROWS = ("Steg.Features+SVM", "Cozzolino et al.", "Bayar and Stamm", "Rahmouni et al.", "MesoNet",
                 "MultiTask", "XceptionNet", "MultiTask+EnsFER", "EMD")
#: Table III's six further systems (§IV-D1), trained by notebook 03 on the Face2Face cells only, in the paper's order.
TABLE_III_SYSTEMS = ("LAE", "DCNN", "FT-res", "Two-stream", "Capsule-Forensics", "Face X-ray")
TABLE_III_ROWS = TABLE_III_SYSTEMS + ("MultiTask+EnsFER", "EMD")
#: Table III's only method (the paper compares the further systems on Face2Face, HQ and LQ).
TABLE_III_METHOD = "Face2Face"
#: Table IV rows: (our row name, the paper's row name). "XceptionNet (seg)" is EMD without the FER stream.
TABLE_IV_ROWS = (("MultiTask", "MultiTask"), ("XceptionNet (seg)", "XceptionNet"),
                 ("MultiTask+EnsFER", "MultiTask+EnsFER"), ("EMD", "EMD"))
#: Table V rows (§IV-D2, the ablation of the FER stream), in the paper's order.
TABLE_V_ROWS = ("MultiTask+SimFER", "XceptionNet+SimFER", "MultiTask+EnsFER", "EMD")

#: Every system whose runs the Tables II–IV notebook (03) trains.
TABLES_II_IV_SYSTEMS = tuple(dict.fromkeys(TABLE_II_ROWS + ("XceptionNet (seg)",)))

TITLES = {
    "II": "Table II — classification accuracy (%) on DF / F2F / NT, HQ (c23) and LQ (c40)",
    "III": "Table III — Face2Face classification accuracy (%) against further methods, HQ (c23) and LQ (c40)",
    "IV": "Table IV — segmentation pixel accuracy (%) on F2F / NT, HQ (c23) and LQ (c40)",
    "V": "Table V — ablation of the FER stream: classification (Cls) and segmentation (Seg) accuracy (%), HQ (c23)",
}
METRIC = {"cls": "accuracy", "seg": "pixel_accuracy"}
TIDY_COLUMNS = ["table", "row", "paper_row", "system", "column", "method", "compression", "quality", "metric",
                "ours", "n_runs", "seeds", "paper", "diff", "status", "runs"]


def label(method: str, compression: str | None = None) -> str:
    """A cell's name as the paper prints it: ``F2F`` or ``F2F HQ``."""
    short = paper.SHORT.get(method, method)
    return short if compression is None else f"{short} {paper.QUALITY.get(compression, compression)}"


# ---------------------------------------------------------------------------------------------------------- records

RECORD_KEYS = ("system", "method", "compression", "n_train_videos")


def records_frame(records: pd.DataFrame | Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Run records as one flat table (one row per run, one column per metric).

    Accepts :func:`emdlib.study.records.load_run_records`' frame as is, or the dicts
    :func:`emdlib.study.experiments.run_cell` returns (``metrics`` nested); ``system``/``method``/``compression``/
    ``n_train_videos`` come from the record's top level, else from its ``config``.
    """
    if isinstance(records, pd.DataFrame):
        df = records.copy()
    else:
        rows = []
        for rec in records:
            row = {k: v for k, v in rec.items() if not isinstance(v, (dict, list))}
            row["config"] = rec.get("config")
            for k, v in (rec.get("metrics") or {}).items():
                if not isinstance(v, (dict, list)):
                    row[k] = np.nan if v is None else v
            rows.append(row)
        df = pd.DataFrame(rows)
    if len(df):
        from_config = (df["config"] if "config" in df else pd.Series([None] * len(df), index=df.index))
        for key in RECORD_KEYS:
            values = from_config.map(lambda c, k=key: c.get(k) if isinstance(c, Mapping) else None)
            df[key] = df[key].where(df[key].notna(), values) if key in df else values
    return df


def main_runs(runs: Study | str | os.PathLike | pd.DataFrame) -> pd.DataFrame:
    """The run records of the tables: every record except training-size runs (Fig. 6).

    ``runs`` is a :class:`~emdlib.study.Study`, a results folder, or a frame from
    :func:`emdlib.study.records.load_run_records`.
    """
    if isinstance(runs, pd.DataFrame):
        df = runs
    else:
        df = load_run_records(runs.paths.results if isinstance(runs, Study) else Path(runs))
    df = records_frame(df)
    if df.empty:
        return pd.DataFrame(columns=["run", "system", "method", "compression", "seed", "path"])
    keep = df["n_train_videos"].isna() | (df["n_train_videos"].astype(object).map(lambda v: not v))
    return df[keep].reset_index(drop=True)

def _cell(runs: pd.DataFrame, system: str, method: str, compression: str, metric: str) -> dict[str, Any]:
    """Mean of ``metric`` (as %) over the seeds of one system × cell, with the runs it came from."""
    if runs.empty:
        return {"ours": math.nan, "n_runs": 0, "seeds": "", "runs": ""}
    sel = runs[(runs["system"] == system) & (runs["method"] == method) & (runs["compression"] == compression)]
    sel = sel.sort_values("run")
    if sel.empty:
        return {"ours": math.nan, "n_runs": 0, "seeds": "", "runs": ""}
    values = pd.to_numeric(sel[metric], errors="coerce") if metric in sel else pd.Series([math.nan] * len(sel))
    seeds = sel["seed"].tolist() if "seed" in sel else []
    return {"ours": float(values.mean() * 100) if values.notna().any() else math.nan, "n_runs": int(len(sel)),
            "seeds": ",".join(str(s) for s in seeds), "runs": ";".join(sel["run"].astype(str))}


def _row(table: str, row: str, paper_row: str, system: str | None, column: str, method: str, compression: str,
         metric: str, paper_value: float | None, runs: pd.DataFrame, preset_cells: set) -> dict[str, Any]:
    p = math.nan if paper_value is None else float(paper_value)
    base = {"table": table, "row": row, "paper_row": paper_row, "system": system, "column": column, "method": method,
            "compression": compression, "quality": paper.QUALITY.get(compression, compression), "metric": metric,
            "paper": p}
    if system is None:
        return {**base, "ours": math.nan, "n_runs": 0, "seeds": "", "diff": math.nan, "status": NOT_REPRODUCED,
                "runs": ""}
    got = _cell(runs, system, method, compression, metric)
    if got["n_runs"]:
        status = OURS
    else:
        status = NOT_RUN if (method, compression) in preset_cells else NOT_RUN_PRESET
    return {**base, **got, "diff": got["ours"] - p, "status": status}


def _frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=TIDY_COLUMNS)
    df["n_runs"] = df["n_runs"].astype(int)
    return df


def table_ii(runs: pd.DataFrame, preset: Preset) -> pd.DataFrame:
    """Table II: frame-level classification accuracy (%) of the nine systems on every method × compression cell."""
    cells, runs = set(preset.emd.cells), main_runs(runs)
    return _frame([_row("II", sys_, sys_, sys_, label(m, c), m, c, "accuracy", paper.TABLE_II[sys_][(m, c)], runs,
                        cells)
                   for sys_ in TABLE_II_ROWS for c in paper.QUALITY for m in METHODS])


def table_iii(runs: pd.DataFrame, preset: Preset) -> pd.DataFrame:
    """Table III: Face2Face accuracy (%) of the six further systems, MultiTask+EnsFER and EMD, HQ and LQ (§IV-D1);
    a row whose system the study does not have is "not reproduced"."""
    from emdlib.study.experiments import SYSTEMS  # the study's systems (torch); the other tables need none

    cells, runs = set(preset.emd.cells), main_runs(runs)
    return _frame([_row("III", r, r, r if r in SYSTEMS else None, paper.QUALITY[c], TABLE_III_METHOD, c,
                        "accuracy", paper.TABLE_III[r][c], runs, cells)
                   for r in TABLE_III_ROWS for c in paper.QUALITY])


def table_iv(runs: pd.DataFrame, preset: Preset) -> pd.DataFrame:
    """Table IV: pixel accuracy (%) at 0.5 over all test images on the F2F and NT cells."""
    cells, runs = set(preset.emd.cells), main_runs(runs)
    return _frame([_row("IV", ours, prow, ours, label(m, c), m, c, "pixel_accuracy", paper.TABLE_IV[prow][(m, c)],
                        runs, cells)
                   for ours, prow in TABLE_IV_ROWS for c in paper.QUALITY for m in ("Face2Face", "NeuralTextures")])


def table_v(runs: pd.DataFrame, preset: Preset) -> pd.DataFrame:
    """Table V: the FER ablation at c23 — classification accuracy (Cls) and pixel accuracy (Seg), %, F2F and NT."""
    cells, runs = set(preset.emd.cells), main_runs(runs)
    return _frame([_row("V", r, r, r, f"{label(m)} {task.capitalize()}", m, "c23", METRIC[task],
                        paper.TABLE_V[r][(m, task)], runs, cells)
                   for r in TABLE_V_ROWS for m in ("Face2Face", "NeuralTextures") for task in ("cls", "seg")])


TABLES: dict[str, Callable[[pd.DataFrame, Preset], pd.DataFrame]] = {
    "II": table_ii, "III": table_iii, "IV": table_iv, "V": table_v}


def build_table(name: str, runs: Study | str | os.PathLike | pd.DataFrame, preset: Preset) -> pd.DataFrame:
    """Tidy frame of Table ``name`` ("II".."V") from the run records in ``runs`` (a study, a results folder or
    records); KeyError for an unknown name."""
    if name not in TABLES:
        raise KeyError(f"unknown table {name!r}; known: {', '.join(TABLES)}")
    return TABLES[name](main_runs(runs), preset)


# ---------------------------------------------------------------------------------------------------------- rendering

def fmt(x: float | None, signed: bool = False) -> str:
    """A percentage as the tables print it: two decimals (``+`` sign when ``signed``), ``–`` for None/NaN."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:+.2f}" if signed else f"{x:.2f}"


def _ours_text(r: pd.Series) -> str:
    if r["status"] != OURS:
        return r["status"]
    if math.isnan(r["ours"]):
        return "n/a"
    return fmt(r["ours"]) + (f" (n={r['n_runs']})" if r["n_runs"] > 1 else "")


def wide(table: pd.DataFrame) -> pd.DataFrame:
    """Display form: one row per paper row, for each cell the columns ``<cell> ours`` / ``paper`` / ``diff`` (text).

    ``ours`` is the mean over seeds (``(n=K)`` when K > 1 runs) or the status ("not run (preset)", "not run",
    "not reproduced"); ``–`` where the paper prints "-" or a difference is undefined.
    """
    rows = list(dict.fromkeys(table["row"]))
    cols = list(dict.fromkeys(table["column"]))
    out = pd.DataFrame(index=pd.Index(rows, name="Method"))
    for col in cols:
        sub = table[table["column"] == col].set_index("row")
        out[f"{col} ours"] = [_ours_text(sub.loc[r]) for r in rows]
        out[f"{col} paper"] = [fmt(sub.loc[r, "paper"]) for r in rows]
        out[f"{col} diff"] = [fmt(sub.loc[r, "diff"], signed=True) for r in rows]
    return out


def markdown_table(df: pd.DataFrame, index: bool = True) -> str:
    """A GitHub-flavoured Markdown table of ``df`` (cells as text; ``|`` escaped)."""
    def esc(v: Any) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    head = ([df.index.name or ""] if index else []) + [esc(c) for c in df.columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for idx, row in df.iterrows():
        cells = ([esc(idx)] if index else []) + [esc(v) for v in row.tolist()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def table_markdown(table: pd.DataFrame, results: Path | None = None, where: Path | None = None,
                   heading: str = "###") -> str:
    """Markdown of one tidy table: title, the ours | paper | diff table and the run records its numbers came from.

    With ``results`` (the preset folder) the run names link to their records, relative to ``where`` (the folder
    the Markdown file lives in; default ``results/tables``).
    """
    name = str(table["table"].iloc[0])
    runs = sorted({r for s in table["runs"] for r in str(s).split(";") if r})
    text = [f"{heading} {TITLES[name]}", "", markdown_table(wide(table)), "",
            "ours = mean over seeds (n = runs when more than one); diff = ours − paper, percentage points. "
            "Paper numbers from `emdlib.paper`."]
    if runs and results is not None:
        where = where if where is not None else results / "tables"
        text += ["", "Numbers from the run records: " + ", ".join(
            f"[`{r}`]({Path(os.path.relpath(results / 'runs' / r / 'metrics.json', where)).as_posix()})"
            for r in runs) + "."]
    elif runs:
        text += ["", "Numbers from the run records: " + ", ".join(f"`{r}`" for r in runs) + "."]
    else:
        text += ["", "No run record of ours feeds this table yet."]
    return "\n".join(text) + "\n"


def write_table(study: Study, table: pd.DataFrame) -> dict[str, Path]:
    """Write ``tables/table_<N>.csv`` (tidy, with provenance) and ``tables/table_<N>.md`` atomically."""
    paths = study.paths
    name = str(table["table"].iloc[0])
    csv = paths.tables / f"table_{name}.csv"
    with atomic_path(csv) as tmp:
        table.to_csv(tmp, index=False, float_format="%.4f")
    md = write_text(paths.tables / f"table_{name}.md", table_markdown(table, paths.results, paths.tables, heading="#"))
    log.info("table %s → %s, %s", name, csv, md)
    return {"csv": csv, "md": md}


def write_tables(study: Study, names: Sequence[str] = ("II", "III", "IV", "V")) -> dict[str, pd.DataFrame]:
    """Build Tables ``names`` from the study's run records and write each as CSV and Markdown."""
    runs = main_runs(study)
    tables = {}
    for name in names:
        tables[name] = build_table(name, runs, study.preset)
        write_table(study, tables[name])
    return tables

# ---------------------------------------------------------------------------------------------------------- runs

METRIC_COLUMNS = ["system", "method", "compression", "accuracy", "auc", "ap", "eer", "video_accuracy", "video_auc",
                  "pixel_accuracy", "iou", "f1", "pixel_auc", "best_epoch", "wall_time_s", "device"]


def metrics_table(study: Study, systems: Sequence[str], cells: Sequence[tuple[str, str]], seed: int = 0
                  ) -> pd.DataFrame:
    """Test metrics of the given systems × cells (:data:`METRIC_COLUMNS`), read from their run records."""
    from emdlib.study.experiments import run_name

    names = {run_name(s, m, c, seed) for s in systems for m, c in cells}
    runs = load_run_records(study.paths.results)
    if runs.empty:
        return pd.DataFrame(columns=METRIC_COLUMNS)
    runs = runs[runs["run"].isin(names)]
    cols = [c for c in METRIC_COLUMNS if c in runs]
    return runs[cols].sort_values(["method", "compression", "system"]).reset_index(drop=True)


def training_size_table(records: pd.DataFrame | Iterable[Mapping[str, Any]],
                        metrics: Sequence[str] = ("accuracy", "pixel_accuracy"), level: float = 0.95) -> pd.DataFrame:
    """Fig. 6 data: one row per (system, method, compression, n_train_videos, metric) with the seeds' ``values``,
    ``n_seeds``, ``mean``, ``std`` (ddof 1) and the ``level`` t-interval ``ci_low``/``ci_high``.

    Only runs with ``n_train_videos`` set (training-size runs) are used; NaN metric values are left out.
    """
    df = records_frame(records)
    if "n_train_videos" not in df or not df["n_train_videos"].notna().any():
        raise ValueError("no training-size runs (records with n_train_videos) to tabulate")
    df = df[df["n_train_videos"].notna()].copy()
    df["n_train_videos"] = df["n_train_videos"].astype(int)
    rows = []
    keys = ["system", "method", "compression", "n_train_videos"]
    for key, group in df.groupby(keys, sort=True):
        for metric in metrics:
            vals = [float(v) for v in group[metric]] if metric in group else []
            vals = [v for v in vals if np.isfinite(v)]
            mean, lo, hi = t_interval(vals, level)
            rows.append({**dict(zip(keys, key)), "metric": metric, "n_seeds": len(vals),
                         "seeds": sorted(int(s) for s in group["seed"]) if "seed" in group else [],
                         "values": vals, "mean": mean,
                         "std": float(np.std(vals, ddof=1)) if len(vals) > 1 else float("nan"),
                         "ci_low": lo, "ci_high": hi})
    return pd.DataFrame(rows)


def architecture_table(model: "EMD") -> pd.DataFrame:
    """Parameters per part of an EMD model and which parts train in the warm-up epochs (§IV-B)."""
    warm = {id(p) for p in model.warmup_parameters()}
    parts = {"encoder (aligned Xception, up to its last conv)": model.encoder,
             f"last conv (rebuilt{': +512 FER channels' if model.fer is not None else ''})": model.last_conv,
             "ASPP": model.aspp, "decoder": model.decoder, "FC(2)": model.fc}
    if model.fer is not None:
        parts["FER stream (frozen)"] = model.fer
    return pd.DataFrame([{"part": name, "parameters": sum(p.numel() for p in m.parameters()),
                          "warm-up": all(id(p) in warm for p in m.parameters()),
                          "full phase": m is not model.fer} for name, m in parts.items()])
