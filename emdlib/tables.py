"""The paper's Tables II–V rebuilt from run records, beside the paper's numbers, and the study report (design.md "Results").

Every number in the "ours" columns is read from ``results/<preset>/runs/<run>/metrics.json`` (:mod:`emdlib.runs`,
written by :func:`emdlib.experiments.run_cell`); every number in the "paper" columns comes from :mod:`emdlib.paper`;
"diff" is ours − paper, in percentage points. Nothing else is typed in.

* :func:`build_table` / :func:`table_ii` … :func:`table_v`: one tidy frame per table, one row per (paper row, cell)
  with ``ours`` (mean over seeds), ``n_runs``, ``paper``, ``diff``, ``status`` and the provenance (``runs``).
  ``status`` is ``"ours"``, ``"not run (preset)"`` (the preset's cells exclude it), ``"not run"`` (in the preset but
  no record yet, e.g. Table V before notebook 04) or ``"not reproduced"`` (Table III rows listed from the paper).
* :func:`write_tables`: ``results/<preset>/tables/table_<N>.csv`` (tidy) and ``.md`` (ours | paper | diff per cell).
* :func:`fer_effect`: "does the FER stream help?" — EMD minus EMD-without-FER ("XceptionNet (seg)") per cell, with a
  paired bootstrap over test videos from the stored predictions.
* :func:`write_report`: ``results/<preset>/REPORT.md`` with every table, figure, provenance and timing.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import pandas as pd

from emdlib import paper
from emdlib.io import atomic_path, read_json, write_text
from emdlib.presets import METHODS, Preset, get_preset
from emdlib.study import StudyPaths

log = logging.getLogger(__name__)

NOT_RUN_PRESET = "not run (preset)"
NOT_RUN = "not run"
NOT_REPRODUCED = "not reproduced"
OURS = "ours"

#: Table II rows in the paper's order (names as :data:`emdlib.experiments.SYSTEMS` and :mod:`emdlib.paper`).
TABLE_II_ROWS = ("Steg.Features+SVM", "Cozzolino et al.", "Bayar and Stamm", "Rahmouni et al.", "MesoNet",
                 "MultiTask", "XceptionNet", "MultiTask+EnsFER", "EMD")
#: Table III rows: the paper-only systems first (not reproduced), then ours.
TABLE_III_PAPER_ONLY = ("LAE", "DCNN", "FT-res", "Two-stream", "Capsule-Forensics", "Face X-ray")
TABLE_III_ROWS = TABLE_III_PAPER_ONLY + ("MultiTask+EnsFER", "EMD")
#: Table IV rows: (our row name, the paper's row name). "XceptionNet (seg)" is EMD without the FER stream.
TABLE_IV_ROWS = (("MultiTask", "MultiTask"), ("XceptionNet (seg)", "XceptionNet"),
                 ("MultiTask+EnsFER", "MultiTask+EnsFER"), ("EMD", "EMD"))
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


def _preset(preset: str | Preset) -> Preset:
    return preset if isinstance(preset, Preset) else get_preset(preset)


def _results(where: StudyPaths | str | os.PathLike) -> Path:
    return where.results if isinstance(where, StudyPaths) else Path(where)


def _label(method: str, compression: str | None = None) -> str:
    short = paper.SHORT.get(method, method)
    return short if compression is None else f"{short} {paper.QUALITY.get(compression, compression)}"


# ---------------------------------------------------------------------------------------------------------- records

def main_runs(where: StudyPaths | str | os.PathLike | pd.DataFrame) -> pd.DataFrame:
    """The run records of the tables: every record of the preset folder except training-size runs (Fig. 6).

    ``where`` is the preset's :class:`StudyPaths`, its results folder, or a frame from
    :func:`emdlib.runs.load_run_records`. Columns ``system``, ``method``, ``compression`` fall back to the record's
    ``config`` when the top level lacks them.
    """
    from emdlib.runs import load_run_records

    df = where.copy() if isinstance(where, pd.DataFrame) else load_run_records(_results(where))
    if df.empty:
        return pd.DataFrame(columns=["run", "system", "method", "compression", "seed", "path"])
    for col in ("system", "method", "compression", "n_train_videos"):
        from_cfg = df["config"].map(lambda c, col=col: (c or {}).get(col) if isinstance(c, dict) else None) \
            if "config" in df else pd.Series([None] * len(df), index=df.index)
        df[col] = df[col].where(df[col].notna(), from_cfg) if col in df else from_cfg
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


def table_ii(runs: pd.DataFrame, preset: str | Preset) -> pd.DataFrame:
    """Table II: frame-level classification accuracy (%) of the nine systems on every method × compression cell."""
    cells, runs = set(_preset(preset).emd.cells), main_runs(runs)
    return _frame([_row("II", sys_, sys_, sys_, _label(m, c), m, c, "accuracy", paper.TABLE_II[sys_][(m, c)], runs,
                        cells)
                   for sys_ in TABLE_II_ROWS for c in paper.QUALITY for m in METHODS])


def table_iii(runs: pd.DataFrame, preset: str | Preset) -> pd.DataFrame:
    """Table III: Face2Face accuracy (%); ours for MultiTask+EnsFER and EMD, the paper-only rows "not reproduced"."""
    cells, runs = set(_preset(preset).emd.cells), main_runs(runs)
    return _frame([_row("III", r, r, None if r in TABLE_III_PAPER_ONLY else r, paper.QUALITY[c], "Face2Face", c,
                        "accuracy", paper.TABLE_III[r][c], runs, cells)
                   for r in TABLE_III_ROWS for c in paper.QUALITY])


def table_iv(runs: pd.DataFrame, preset: str | Preset) -> pd.DataFrame:
    """Table IV: pixel accuracy (%) at 0.5 over all test images on the F2F and NT cells."""
    cells, runs = set(_preset(preset).emd.cells), main_runs(runs)
    return _frame([_row("IV", ours, prow, ours, _label(m, c), m, c, "pixel_accuracy", paper.TABLE_IV[prow][(m, c)],
                        runs, cells)
                   for ours, prow in TABLE_IV_ROWS for c in paper.QUALITY for m in ("Face2Face", "NeuralTextures")])


def table_v(runs: pd.DataFrame, preset: str | Preset) -> pd.DataFrame:
    """Table V: the FER ablation at c23 — classification accuracy (Cls) and pixel accuracy (Seg), %, F2F and NT."""
    cells, runs = set(_preset(preset).emd.cells), main_runs(runs)
    return _frame([_row("V", r, r, r, f"{_label(m)} {task.capitalize()}", m, "c23", METRIC[task],
                        paper.TABLE_V[r][(m, task)], runs, cells)
                   for r in TABLE_V_ROWS for m in ("Face2Face", "NeuralTextures") for task in ("cls", "seg")])


TABLES: dict[str, Callable[[pd.DataFrame, str | Preset], pd.DataFrame]] = {
    "II": table_ii, "III": table_iii, "IV": table_iv, "V": table_v}


def build_table(name: str, runs: StudyPaths | str | os.PathLike | pd.DataFrame, preset: str | Preset) -> pd.DataFrame:
    """Tidy frame of Table ``name`` ("II".."V") from the run records in ``runs`` (paths, folder or records)."""
    if name not in TABLES:
        raise KeyError(f"unknown table {name!r}; known: {', '.join(TABLES)}")
    return TABLES[name](main_runs(runs), preset)


# ---------------------------------------------------------------------------------------------------------- rendering

def _fmt(x: float, signed: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:+.2f}" if signed else f"{x:.2f}"


def _ours_text(r: pd.Series) -> str:
    if r["status"] != OURS:
        return r["status"]
    if math.isnan(r["ours"]):
        return "n/a"
    return _fmt(r["ours"]) + (f" (n={r['n_runs']})" if r["n_runs"] > 1 else "")


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
        out[f"{col} paper"] = [_fmt(sub.loc[r, "paper"]) for r in rows]
        out[f"{col} diff"] = [_fmt(sub.loc[r, "diff"], signed=True) for r in rows]
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


def write_table(paths: StudyPaths, table: pd.DataFrame) -> dict[str, Path]:
    """Write ``tables/table_<N>.csv`` (tidy, with provenance) and ``tables/table_<N>.md`` atomically."""
    name = str(table["table"].iloc[0])
    csv = paths.tables / f"table_{name}.csv"
    with atomic_path(csv) as tmp:
        table.to_csv(tmp, index=False, float_format="%.4f")
    md = write_text(paths.tables / f"table_{name}.md", table_markdown(table, paths.results, paths.tables, heading="#"))
    log.info("table %s → %s, %s", name, csv, md)
    return {"csv": csv, "md": md}


def write_tables(paths: StudyPaths, preset: str | Preset | None = None,
                 names: Sequence[str] = ("II", "III", "IV", "V")) -> dict[str, pd.DataFrame]:
    """Build Tables ``names`` from the preset's run records and write each as CSV and Markdown."""
    preset = _preset(preset or paths.preset)
    runs = main_runs(paths)
    tables = {}
    for name in names:
        tables[name] = build_table(name, runs, preset)
        write_table(paths, tables[name])
    return tables


# ---------------------------------------------------------------------------------------------------------- FER effect

def _image_frame(pred: dict[str, np.ndarray]) -> pd.DataFrame:
    n = len(pred["label"])
    df = pd.DataFrame({k: np.asarray(pred[k]).astype(str) for k in ("method", "compression", "video") if k in pred})
    df["frame"] = np.asarray(pred.get("frame", np.arange(n)))
    df["label"] = np.asarray(pred["label"]).astype(np.int64)
    df["correct"] = ((np.asarray(pred["prob"], dtype=np.float64) > 0.5).astype(np.int64) == df["label"]).astype(float)
    pix = pred.get("pixel_accuracy")
    df["pixel_accuracy"] = np.asarray(pix, dtype=np.float64) if pix is not None and len(pix) == n else np.nan
    return df


def _paired(a: pd.DataFrame, b: pd.DataFrame, names: tuple[str, str]) -> pd.DataFrame:
    """The two prediction sets image by image (same test images; by position, or by key when the order differs)."""
    keys = ["method", "compression", "video", "frame", "label"]
    if len(a) == len(b) and (a[keys].values == b[keys].values).all():
        return a.join(b[["correct", "pixel_accuracy"]], rsuffix="_b")
    if a.duplicated(keys).any() or b.duplicated(keys).any() or len(a) != len(b):
        raise ValueError(f"predictions of {names[0]} and {names[1]} are not on the same test images")
    merged = a.merge(b[keys + ["correct", "pixel_accuracy"]], on=keys, suffixes=("", "_b"), validate="one_to_one")
    if len(merged) != len(a):
        raise ValueError(f"predictions of {names[0]} and {names[1]} are not on the same test images")
    return merged


def fer_effect(paths: StudyPaths, cells: Iterable[Sequence[str]], n_boot: int = 1000, seed: int = 0,
               run_seed: int = 0, with_fer: str = "EMD", without_fer: str = "XceptionNet (seg)") -> pd.DataFrame:
    """Does the FER stream help? ``with_fer`` − ``without_fer`` per cell, in percentage points, with a 95% CI.

    For each (method, compression) cell the stored test predictions of both runs (seed ``run_seed``) are paired
    image by image; the metrics are frame accuracy (P(fake) > 0.5, Tables II/III) and pixel accuracy (mean of the
    per-image pixel accuracy, Table IV). The interval is a paired percentile bootstrap over **test videos** (frames
    of one video are not independent): ``n_boot`` resamples of the videos with replacement (``numpy`` generator
    seeded with ``seed``), the difference of the pooled metric each time, and its 2.5/97.5 percentiles.

    One row per cell × metric: ``with_fer``, ``without_fer``, ``diff`` (the point estimate on the full test set,
    equal to the difference of the run records' metrics), ``ci_low``, ``ci_high``, ``n_videos``, ``n_images``,
    ``n_boot``, ``runs`` and ``status`` ("ours", or "not run" when a run or its predictions are missing).
    """
    from emdlib.experiments import load_predictions, run_name

    rng = np.random.default_rng(seed)
    rows = []
    for method, comp in cells:
        names = (run_name(with_fer, method, comp, run_seed), run_name(without_fer, method, comp, run_seed))
        base = {"method": method, "compression": comp, "runs": ";".join(names), "n_boot": n_boot}
        try:
            frames = [_image_frame(load_predictions(paths, n)) for n in names]
        except FileNotFoundError as e:
            log.info("FER effect on %s %s: %s", method, comp, e)
            rows += [{**base, "metric": m, "status": NOT_RUN} for m in ("accuracy", "pixel_accuracy")]
            continue
        df = _paired(*frames, names)
        g = df.groupby(["method", "compression", "video"], sort=True)
        per_video = pd.DataFrame({"n": g.size(), "acc_a": g["correct"].sum(), "acc_b": g["correct_b"].sum(),
                                  "pix_a": g["pixel_accuracy"].sum(min_count=1),
                                  "pix_b": g["pixel_accuracy_b"].sum(min_count=1)})
        idx = rng.integers(0, len(per_video), size=(n_boot, len(per_video)))
        n = per_video["n"].to_numpy(float)
        for metric, (ca, cb) in (("accuracy", ("acc_a", "acc_b")), ("pixel_accuracy", ("pix_a", "pix_b"))):
            a, b = per_video[ca].to_numpy(float), per_video[cb].to_numpy(float)
            row = {**base, "metric": metric, "n_videos": len(per_video), "n_images": int(n.sum()), "status": OURS}
            if np.isnan(a).any() or np.isnan(b).any():
                rows.append({**row, "status": "n/a (no masks predicted)"})
                continue
            va, vb = 100 * a.sum() / n.sum(), 100 * b.sum() / n.sum()
            boot = 100 * (a[idx].sum(1) - b[idx].sum(1)) / n[idx].sum(1)
            lo, hi = np.percentile(boot, [2.5, 97.5])
            rows.append({**row, "with_fer": va, "without_fer": vb, "diff": va - vb, "ci_low": float(lo),
                         "ci_high": float(hi)})
    cols = ["method", "compression", "metric", "with_fer", "without_fer", "diff", "ci_low", "ci_high", "n_videos",
            "n_images", "n_boot", "status", "runs"]
    out = pd.DataFrame(rows).reindex(columns=cols)
    out.attrs.update(with_fer=with_fer, without_fer=without_fer)
    return out


# ---------------------------------------------------------------------------------------------------------- report

def chance_levels(paths: StudyPaths, runs: pd.DataFrame | None = None) -> pd.DataFrame:
    """What trivial predictors score on each cell's test set, to read small-preset numbers against.

    From the stored predictions of one run per cell: ``majority_accuracy`` (%) — always answering the more frequent
    class (Tables II/III) — and ``empty_mask_pixel_accuracy`` (%) — predicting no manipulated pixel anywhere, the mean
    per-image fraction of unmanipulated pixels (Table IV). NaN when no run of the cell stored pixel counts.
    """
    from emdlib.experiments import load_predictions

    runs = main_runs(paths) if runs is None else runs
    rows = []
    if runs.empty:
        return pd.DataFrame(columns=["method", "compression", "majority_accuracy", "empty_mask_pixel_accuracy",
                                     "n_images", "run"])
    for (method, comp), sel in runs.sort_values("run").groupby(["method", "compression"], sort=True):
        row = {"method": method, "compression": comp, "majority_accuracy": math.nan,
               "empty_mask_pixel_accuracy": math.nan, "n_images": 0, "run": ""}
        for run in sel["run"]:
            try:
                pred = load_predictions(paths, run)
            except FileNotFoundError:
                continue
            labels = np.asarray(pred["label"]).astype(np.int64)
            if not row["run"] and len(labels):
                row.update(majority_accuracy=100 * max(labels.mean(), 1 - labels.mean()), n_images=len(labels),
                           run=run)
            if all(k in pred for k in ("pixel_tp", "pixel_fp", "pixel_fn", "pixel_tn")):
                tp, fp, fn, tn = (np.asarray(pred[k], dtype=np.float64) for k in
                                  ("pixel_tp", "pixel_fp", "pixel_fn", "pixel_tn"))
                row.update(empty_mask_pixel_accuracy=float(100 * np.mean((fp + tn) / (tp + fp + fn + tn))), run=run)
                break
        rows.append(row)
    return pd.DataFrame(rows)


def provenance(runs: pd.DataFrame, results: Path | None = None) -> pd.DataFrame:
    """Where each number came from: run name, system, cell, seed, git commit, data-manifest and checkpoint sha256,
    device, wall time and the record's path (relative to ``results`` when given)."""
    cols = ["run", "system", "method", "compression", "seed", "git_commit", "data_manifest_sha256",
            "checkpoint_sha256", "device", "wall_time_s", "path"]
    if runs.empty:
        return pd.DataFrame(columns=cols)
    df = runs.reindex(columns=cols).sort_values("run").reset_index(drop=True)
    if results is not None:
        df["path"] = [os.path.relpath(p, results) if isinstance(p, str) else p for p in df["path"]]
    return df


def preset_scope(preset: Preset, runs: pd.DataFrame) -> list[str]:
    """A plain statement, derived from the preset and the records, of what its numbers can and cannot show."""
    d, e = preset.data, preset.emd
    world = {"synth": "procedurally rendered faces with emdlib's stand-in manipulations, not FaceForensics++",
             "faces": "emdlib's stand-in manipulations of real face photographs, not FaceForensics++",
             "ffpp": "the user's FaceForensics++ copy, as in the paper"}.get(d.world, d.world)
    all_cells = [(m, c) for c in paper.QUALITY for m in METHODS]
    ran = [c for c in all_cells if c in set(e.cells)]
    lines = [
        f"**Data:** {world}; {d.pairs[0]}/{d.pairs[1]}/{d.pairs[2]} train/val/test pairs (each pair: 2 pristine "
        f"videos and 2 fakes per method), {preset.prepare.train_frames} training and {preset.prepare.eval_frames} "
        f"test frames per video (paper: 720/140/140 videos, 200 and 10 frames).",
        f"**Models:** encoder `{e.encoder}` at {e.image_size}² input, {e.warmup_epochs} warm-up + {e.epochs} epochs, "
        f"{'ImageNet' if e.pretrained else 'random'} initialisation; ESR with {preset.fer.branches} branches "
        f"(paper: Xception-65 at 299², 3 + 20 epochs, ImageNet weights, ESR-9).",
        f"**Cells run:** {', '.join(_label(m, c) for m, c in ran) or 'none'} of the paper's "
        f"{len(all_cells)}; the others show \"{NOT_RUN_PRESET}\".",
    ]
    n_test = pd.to_numeric(runs["config"].map(lambda c: (c or {}).get("n_test_images") if isinstance(c, dict)
                                              else None), errors="coerce").dropna() if "config" in runs else []
    if len(n_test):
        n = int(n_test.min())
        lines.append(f"**Resolution:** the smallest test set has {n} images, so one image moves an accuracy by "
                     f"{100 / n:.1f} points; differences smaller than that, or inside the bootstrap intervals below, "
                     "are not evidence of anything.")
    can = ("that every system trains and is evaluated through one data path, one loop and one metric path, and the "
           "ordering of the systems on this preset's data, within the intervals given")
    cannot = "the paper's absolute numbers, which were measured on different data"
    if d.world != "ffpp":
        cannot += "; nor any claim about FaceForensics++ itself — the paper's columns are listed for orientation only"
    if d.world == "ffpp" and (e.encoder != "xception65" or not e.pretrained or e.image_size != 299):
        cannot += "; this preset also departs from the paper's model size or initialisation"
    lines.append(f"**Can show:** {can}. **Cannot show:** {cannot}.")
    return lines


_FIG_NAMES = {f"fig{i}": f"Fig. {i}" for i in range(3, 8)}


def _figures(figures: Path) -> list[Path]:
    found = sorted(p for p in figures.glob("*") if p.suffix.lower() in (".png", ".svg", ".jpg", ".jpeg"))
    rank = {k: i for i, k in enumerate(_FIG_NAMES)}
    return sorted(found, key=lambda p: (rank.get(p.stem.split("_")[0], len(rank)), p.name))


def _fer_markdown(effect: pd.DataFrame) -> str:
    rows = []
    for _, r in effect.iterrows():
        ok = r["status"] == OURS
        rows.append({"cell": _label(r["method"], r["compression"]),
                     "metric": {"accuracy": "accuracy (Table II)", "pixel_accuracy": "pixel accuracy (Table IV)"}
                     .get(r["metric"], r["metric"]),
                     effect.attrs.get("with_fer", "with FER"): _fmt(r["with_fer"]) if ok else r["status"],
                     effect.attrs.get("without_fer", "without FER"): _fmt(r["without_fer"]) if ok else "",
                     "diff": _fmt(r["diff"], signed=True) if ok else "",
                     "95% CI (bootstrap over videos)": f"[{_fmt(r['ci_low'], True)}, {_fmt(r['ci_high'], True)}]"
                     if ok else "",
                     "videos / images": f"{int(r['n_videos'])} / {int(r['n_images'])}" if ok else "",
                     "runs": " vs ".join(f"`{x}`" for x in str(r["runs"]).split(";"))})
    return markdown_table(pd.DataFrame(rows), index=False)


def write_report(paths: StudyPaths, preset: str | Preset | None = None, n_boot: int = 1000, seed: int = 0) -> Path:
    """Write ``results/<preset>/REPORT.md``: the paper against ours, with provenance (design.md "Results").

    Contents: the preset's note and what its data can and cannot show; Tables II–V (ours | paper | diff per cell,
    also written to ``tables/``); "does the FER stream help?" (:func:`fer_effect` on every cell of the preset);
    every figure in ``figures/`` (relative links); per-notebook wall times from ``timings.json`` when present; and
    the provenance of every number (run name, git commit, seed, data-manifest sha256, checkpoint sha256, wall time).
    """
    preset = _preset(preset or paths.preset)
    runs = main_runs(paths)
    tables = write_tables(paths, preset)
    out = [f"# EMD reproduction report — preset `{preset.name}`", "",
           "Mazaheri & Roy-Chowdhury, *Detection and Localization of Facial Expression Manipulations* (WACV 2022). "
           "Every number under \"ours\" is read from a run record in `runs/`; every number under \"paper\" from "
           "`emdlib.paper`; diff = ours − paper (percentage points).", ""]
    out += ["## What this preset can and cannot show", ""]
    if preset.note:
        out += [f"> {preset.note}", ""]
    out += [f"* {line}" for line in preset_scope(preset, runs)] + [""]
    chance = chance_levels(paths, runs)
    if len(chance):
        out += ["What trivial predictors score on the same test sets (`emdlib.report.chance_levels`): always the "
                "majority class (read with Tables II/III) and an empty mask everywhere (read with Tables IV/V).", "",
                markdown_table(pd.DataFrame({
                    "cell": [_label(m, c) for m, c in zip(chance["method"], chance["compression"])],
                    "majority-class accuracy (%)": [_fmt(v) for v in chance["majority_accuracy"]],
                    "empty-mask pixel accuracy (%)": [_fmt(v) for v in chance["empty_mask_pixel_accuracy"]],
                    "test images": chance["n_images"].tolist()}), index=False), ""]

    out += ["## Tables", ""]
    for name, table in tables.items():
        out += [table_markdown(table, paths.results, paths.results, heading="###"),
                f"CSV: [`tables/table_{name}.csv`](tables/table_{name}.csv)", ""]

    out += ["## Does the FER stream help?", "",
            "EMD against the same network without the FER stream (\"XceptionNet (seg)\", the Table IV row) on each "
            "cell of the preset: the paper reports gains of ~1–3 points (§IV-D, Tables II and IV). The interval is "
            "a paired bootstrap over test videos (`emdlib.report.fer_effect`); an interval containing 0 means this "
            "test set cannot tell.", ""]
    cells = list(dict.fromkeys(tuple(c) for c in preset.emd.cells))
    effect = fer_effect(paths, cells, n_boot=n_boot, seed=seed)
    out += [_fer_markdown(effect) if len(effect) else "No cells.", ""]

    out += ["## Figures", ""]
    figs = _figures(paths.figures)
    for fig in figs:
        caption = _FIG_NAMES.get(fig.stem.split("_")[0], fig.stem.replace("_", " "))
        rel = fig.relative_to(paths.results).as_posix()
        out += [f"**{caption}** (`{fig.name}`)", "", f"![{caption}: {fig.stem}]({rel})", ""]
    if not figs:
        out += ["No figures yet (notebooks 00 and 04–06 make Figs. 3–7).", ""]

    out += ["## Notebook wall times", ""]
    timings = paths.results / "timings.json"
    if timings.is_file():
        t = dict(sorted(read_json(timings).items()))
        rows = {"notebook": [*t, "total"], "wall time (s)": [_fmt(float(v)) for v in t.values()]
                + [_fmt(sum(float(v) for v in t.values()))]}
        out += [markdown_table(pd.DataFrame(rows), index=False), "",
                "From `timings.json` as `emd reproduce` left it when this report was written: the notebook writing "
                "the report (and any still to run) is not in it yet; the file itself gets every notebook's time.", ""]
    else:
        out += ["No `timings.json` (written by `emd reproduce`).", ""]

    out += ["## Provenance", "",
            "Every run record behind the numbers above (full records: `runs/<run>/metrics.json`).", ""]
    prov = provenance(runs, paths.results)
    if len(prov):
        show = prov.drop(columns=["path"]).copy()
        show["run"] = [f"[`{r}`]({p})" for r, p in zip(prov["run"], prov["path"])]
        show["wall_time_s"] = [_fmt(float(v)) if pd.notna(v) else "–" for v in show["wall_time_s"]]
        out += [markdown_table(show.fillna("–"), index=False), ""]
    else:
        out += ["No run records yet.", ""]
    path = write_text(paths.results / "REPORT.md", "\n".join(out))
    log.info("report → %s", path)
    return path


def show_report(path: str | os.PathLike) -> None:
    """Display a REPORT.md in a notebook with its figures embedded in the output.

    Relative links in the Markdown resolve against the report's folder, which a notebook (run from ``notebooks/``,
    its executed copy stored in ``results/<preset>/notebooks/``) cannot follow; so each ``![..](figure)`` line is shown
    as an embedded image instead and the text around it as Markdown.
    """
    import re

    from IPython.display import Image, Markdown, display

    path = Path(path)
    chunk: list[str] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        m = re.fullmatch(r"!\[[^\]]*\]\(([^)]+)\)", line.strip())
        target = path.parent / m.group(1) if m else None
        if target is not None and target.suffix.lower() in (".png", ".jpg", ".jpeg") and target.is_file():
            display(Markdown("\n".join(chunk)))
            chunk = []
            display(Image(filename=str(target)))
        else:
            chunk.append(line)
    display(Markdown("\n".join(chunk)))
