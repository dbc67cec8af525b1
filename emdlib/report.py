"""The study report: ``results/<preset>/REPORT.md`` (design.md "Results"), and nothing else.

:func:`write_report` puts together what the earlier stages left: the preset's note and what its data can and cannot
show, Tables II–V (:mod:`emdlib.tables`, ours | paper | diff), the chance levels and "does the FER stream help?"
(:mod:`emdlib.stats`), every figure in ``figures/`` (:mod:`emdlib.figures` drew them), the notebooks' wall times, the
deviations from the paper (:mod:`emdlib.deviations`) and the provenance of every number. :func:`show_report`
displays it in a notebook. Nothing here trains or draws.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pandas as pd

from emdlib import paper
from emdlib.deviations import deviations_markdown
from emdlib.recipes import recipes_markdown
from emdlib.io import read_json, write_text
from emdlib.presets import METHODS, Preset
from emdlib.stats import OURS, chance_levels, fer_effect, fer_effect_over_seeds
from emdlib.study import Study
from emdlib.study.experiments import EXPRESSION_METHODS
from emdlib.study.records import load_run_records
from emdlib.tables import (
    NOT_RUN_PRESET, fmt, label, main_runs, markdown_table, records_frame, table_markdown, write_tables,
)

log = logging.getLogger(__name__)


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


def training_time_markdown(runs: pd.DataFrame) -> list[str]:
    """Report lines: the training wall time each system's run records hold (their ``wall_time_s``), summed per
    system, in seconds. A notebook re-executed to read its runs back is timed as that re-execution in
    ``timings.json``; these sums are what the training itself took, when and wherever it ran (a record's own
    ``device`` and ``git_commit`` are in the provenance table). Empty when there are no run records."""
    if runs.empty or "wall_time_s" not in runs:
        return []
    t = pd.to_numeric(runs["wall_time_s"], errors="coerce")
    per = t.groupby(runs["system"]).agg(["size", "sum"]).sort_values("sum", ascending=False)
    rows = {"system": [*per.index, "total"], "runs": [*(int(n) for n in per["size"]), int(per["size"].sum())],
            "training wall time (s)": [fmt(float(v)) for v in per["sum"]] + [fmt(float(t.sum()))]}
    return ["Training wall time held by the run records (`wall_time_s`, summed per system; a notebook that only "
            "read its runs back is timed above at that read-back, not at its training):", "",
            markdown_table(pd.DataFrame(rows), index=False), ""]


#: Below this many test images in a cell, the report does not offer the systems' ordering as something it can show.
MIN_TEST_IMAGES_FOR_ORDERING = 20


def preset_scope(preset: Preset, runs: pd.DataFrame) -> list[str]:
    """A plain statement, derived from the preset and the records, of what its numbers can and cannot show."""
    d, e = preset.data, preset.emd
    world = {"synth": "procedurally rendered faces with emdlib's stand-in manipulations, not FaceForensics++",
             "faces": "emdlib's stand-in manipulations of real face photographs, not FaceForensics++",
             "ffpp": "the user's FaceForensics++ copy, as in the paper"}.get(d.world, d.world)
    all_cells = [(m, c) for c in paper.QUALITY for m in METHODS]
    ran = [c for c in all_cells if c in set(e.cells)]
    def counts(key: str) -> pd.Series:
        if "config" not in runs:
            return pd.Series(dtype=float)
        return pd.to_numeric(runs["config"].map(lambda c: c.get(key) if isinstance(c, dict) else None),
                             errors="coerce").dropna()

    pairs = f"{d.pairs[0]}/{d.pairs[1]}/{d.pairs[2]} train/val/test pairs"
    if d.world == "ffpp":  # the official splits; a user's copy may hold fewer of their videos
        n_train = counts("n_train_images")
        held = (f"; the copy's usable frames gave the runs {int(n_train.min())}–{int(n_train.max())} training "
                "images per cell" if len(n_train) else "")
        pairs = f"the official splits ({pairs}{held})"
    lines = [
        f"**Data:** {world}; {pairs} (each pair: 2 pristine videos and 2 fakes per method), "
        f"{preset.prepare.train_frames} training and {preset.prepare.eval_frames} "
        f"test frames per video (paper: 720/140/140 videos, 200 and 10 frames).",
        f"**Models:** encoder `{e.encoder}` at {e.image_size}² input, {e.warmup_epochs} warm-up + {e.epochs} full "
        f"epoch{'' if e.epochs == 1 else 's'}, "
        f"{'ImageNet' if e.pretrained else 'random'} initialisation; ESR with {preset.fer.branches} branches "
        f"(paper: Xception-65 at 299², 3 + 20 epochs, ImageNet weights, ESR-9).",
        f"**Cells run:** {', '.join(label(m, c) for m, c in ran) or 'none'} of the paper's "
        f"{len(all_cells)}; the others show \"{NOT_RUN_PRESET}\".",
    ]
    n_test = counts("n_test_images")
    n = int(n_test.min()) if len(n_test) else None
    if n is not None:
        lines.append(f"**Resolution:** the smallest test set has {n} images, so one image moves an accuracy by "
                     f"{f'{100 / n:.2f}'.rstrip('0').rstrip('.')} points; differences smaller than that, or inside "
                     "the bootstrap intervals below, are not evidence of anything.")
    can = "that every system trains and is evaluated through one data path, one loop and one metric path"
    if n is None or n >= MIN_TEST_IMAGES_FOR_ORDERING:
        can += ", and the ordering of the systems on this preset's data, within the intervals given"
    else:
        can += (f" — not even an ordering of the systems: fewer than {MIN_TEST_IMAGES_FOR_ORDERING} test images per "
                "cell")
    cannot = "the paper's absolute numbers, which were measured on different data"
    if d.world != "ffpp":
        cannot += "; nor any claim about FaceForensics++ itself — the paper's columns are listed for orientation only"
    if d.world == "ffpp" and (e.encoder != "xception65" or not e.pretrained or e.image_size != 299):
        cannot += "; this preset also departs from the paper's model size or initialisation"
    lines.append(f"**Can show:** {can}. **Cannot show:** {cannot}.")
    return lines


def manipulation_data_line(study: Study) -> str:
    """Where the manipulation data of the numbers came from, as one sentence: the user's FaceForensics++ root and
    split folder (``paper``), the face photos forged from (``faces``) or the rendered synth world."""
    paths, world = study.paths, study.preset.data.world
    if world == "ffpp":
        return f"FaceForensics++ at `{paths.world}` (splits `{paths.splits}`)"
    if world == "faces":
        return f"manipulations forged by `emdlib.data.forge` from the face photos in `{paths.faces}` (`{paths.world}`)"
    return f"the synthetic world rendered by `emdlib.data.synth` (`{paths.world}`)"


def fer_data_line(study: Study, runs: pd.DataFrame) -> str:
    """What the FER streams of the numbers were trained on: the ``fer_stream`` entries of the run records
    (:func:`emdlib.study.fer.fer_stream_record`), else the FER stage's checkpoints on this machine, as one sentence
    (:func:`emdlib.study.fer.describe_fer_streams`)."""
    from emdlib.study.fer import FER_KINDS, describe_fer_streams, fer_checkpoint, fer_stream_record

    paths = runs["path"].dropna().tolist() if "path" in runs else []
    entries = [read_json(p).get("fer_stream") for p in paths]
    if not any(entries):
        entries = [fer_stream_record(study, k) for k in FER_KINDS if fer_checkpoint(study, k).is_file()]
    return describe_fer_streams(entries)


_FIG_NAMES = {f"fig{i}": f"Fig. {i}" for i in range(3, 8)}


def _figures(figures: Path) -> list[Path]:
    found = sorted(p for p in figures.glob("*") if p.suffix.lower() in (".png", ".svg", ".jpg", ".jpeg"))
    rank = {k: i for i, k in enumerate(_FIG_NAMES)}
    return sorted(found, key=lambda p: (rank.get(p.stem.split("_")[0], len(rank)), p.name))


def _fer_markdown(effect: pd.DataFrame) -> str:
    rows = []
    for _, r in effect.iterrows():
        ok = r["status"] == OURS
        rows.append({"cell": label(r["method"], r["compression"]),
                     "metric": {"accuracy": "accuracy (Table II)", "pixel_accuracy": "pixel accuracy (Table IV)"}
                     .get(r["metric"], r["metric"]),
                     effect.attrs.get("with_fer", "with FER"): fmt(r["with_fer"]) if ok else r["status"],
                     effect.attrs.get("without_fer", "without FER"): fmt(r["without_fer"]) if ok else "",
                     "diff": fmt(r["diff"], signed=True) if ok else "",
                     "95% CI (bootstrap over videos)": f"[{fmt(r['ci_low'], True)}, {fmt(r['ci_high'], True)}]"
                     if ok else "",
                     "videos / images": f"{int(r['n_videos'])} / {int(r['n_images'])}" if ok else "",
                     "runs": " vs ".join(f"`{x}`" for x in str(r["runs"]).split(";"))})
    return markdown_table(pd.DataFrame(rows), index=False)


def fer_comparison_markdown(effect: pd.DataFrame) -> str:
    """The seed-averaged FER comparison (:func:`emdlib.stats.fer_effect_over_seeds`) as a table, followed by one
    sentence per cell and metric saying only what the interval supports."""
    rows, verdicts = [], []
    level = effect.attrs.get("level", 0.95)
    for _, r in effect.iterrows():
        ok = r["status"] == OURS
        cell = label(r["method"], r["compression"])
        metric = {"accuracy": "accuracy", "pixel_accuracy": "pixel accuracy"}.get(r["metric"], r["metric"])
        rows.append({"cell": cell, "metric": metric,
                     "EMD (mean)": fmt(r["with_fer"]) if ok else r["status"],
                     "XceptionNet (seg) (mean)": fmt(r["without_fer"]) if ok else "",
                     "diff (mean)": fmt(r["diff"], signed=True) if ok else "",
                     f"{level:.0%} CI (seeds × videos)": f"[{fmt(r['ci_low'], True)}, {fmt(r['ci_high'], True)}]"
                     if ok else "",
                     "per seed": ", ".join(fmt(d, True) for d in r["per_seed_diff"]) if ok else "",
                     "seeds": ", ".join(str(s) for s in r["seeds"]) if isinstance(r["seeds"], list) else ""})
        if not ok:
            continue
        if r["ci_low"] > 0:
            verdicts.append(f"{cell}, {metric}: EMD is better by {fmt(r['diff'])} points on average over "
                            f"{r['n_seeds']} seeds (interval above 0).")
        elif r["ci_high"] < 0:
            verdicts.append(f"{cell}, {metric}: EMD is worse by {fmt(-r['diff'])} points on average over "
                            f"{r['n_seeds']} seeds (interval below 0).")
        else:
            verdicts.append(f"{cell}, {metric}: no difference this study can tell (mean {fmt(r['diff'], True)}, "
                            f"interval contains 0; FER helped in {r['seeds_better']} of {r['n_seeds']} seeds).")
    return "\n".join([markdown_table(pd.DataFrame(rows), index=False), "", *[f"* {v}" for v in verdicts]])


def not_above_chance(table: pd.DataFrame, chance: pd.DataFrame) -> list[str]:
    """The cells of a tidy accuracy table (:mod:`emdlib.tables`, metric ``accuracy``) where ours is at or below
    always answering the majority class of that cell's test set (``chance``: :func:`emdlib.stats.chance_levels`),
    as ``"<row> (<column>)"``, in table order; empty for a table of another metric or without such cells."""
    majority = {(m, c): a for m, c, a in zip(chance["method"], chance["compression"], chance["majority_accuracy"])}
    out = []
    for _, r in table.iterrows():
        level = majority.get((r["method"], r["compression"]))
        if r["metric"] == "accuracy" and r["status"] == "ours" and level is not None and r["ours"] <= level + 1e-9:
            out.append(f"{r['row']} ({r['column']})")
    return out


def write_report(study: Study, n_boot: int = 1000, seed: int = 0) -> Path:
    """Write ``results/<preset>/REPORT.md``: the paper against ours, with provenance (design.md "Results").

    Contents: the preset's note and what its data can and cannot show; Tables II–V (ours | paper | diff per cell,
    also written to ``tables/``); "does the FER stream help?" (:func:`fer_effect` on every cell of the preset);
    every figure in ``figures/`` (relative links); per-notebook wall times from ``timings.json`` when present; the
    deviations from the paper (:func:`emdlib.deviations.deviations_markdown`, the same text as the README's); and
    the provenance of every number (run name, git commit, seed, data-manifest sha256, checkpoint sha256, wall time).
    """
    preset, paths = study.preset, study.paths
    runs = main_runs(study)
    tables = write_tables(study)
    out = [f"# EMD reproduction report — preset `{preset.name}`", "",
           "Mazaheri & Roy-Chowdhury, *Detection and Localization of Facial Expression Manipulations* (WACV 2022). "
           "Every number under \"ours\" is read from a run record in `runs/`; every number under \"paper\" from "
           "`emdlib.paper`; diff = ours − paper (percentage points).", ""]
    out += ["## What this preset can and cannot show", ""]
    if preset.note:
        out += [f"> {preset.note}", ""]
    out += [f"* {line}" for line in preset_scope(preset, runs)]
    out += [f"* **Manipulation data:** {manipulation_data_line(study)}.",
            f"* **FER data:** {fer_data_line(study, runs)}.", ""]
    chance = chance_levels(paths.runs, runs)
    if len(chance):
        out += ["What trivial predictors score on the same test sets (`emdlib.stats.chance_levels`): always the "
                "majority class (read with Tables II/III) and an empty mask everywhere (read with Tables IV/V).", "",
                markdown_table(pd.DataFrame({
                    "cell": [label(m, c) for m, c in zip(chance["method"], chance["compression"])],
                    "majority-class accuracy (%)": [fmt(v) for v in chance["majority_accuracy"]],
                    "empty-mask pixel accuracy (%)": [fmt(v) for v in chance["empty_mask_pixel_accuracy"]],
                    "test images": chance["n_images"].tolist()}), index=False), ""]

    out += ["## Tables", ""]
    for name, table in tables.items():
        out += [table_markdown(table, paths.results, paths.results, heading="###"),
                f"CSV: [`tables/table_{name}.csv`](tables/table_{name}.csv)", ""]
        if len(chance) and (low := not_above_chance(table, chance)):
            out += [f"Not above the majority-class accuracy of their test set (chance levels above) on this preset, "
                    f"so these cells say nothing about the system: {'; '.join(low)}.", ""]

    out += ["## Does the FER stream help?", "",
            "EMD against the same network without the FER stream (\"XceptionNet (seg)\", the Table IV row) on each "
            "cell of the preset: the paper reports gains of ~1–3 points (§IV-D, Tables II and IV). The interval is "
            "a paired bootstrap over test videos (`emdlib.stats.fer_effect`); an interval containing 0 means this "
            "test set cannot tell.", ""]
    cells = list(dict.fromkeys(tuple(c) for c in preset.emd.cells))
    effect = fer_effect(study, cells, n_boot=n_boot, seed=seed)
    out += [_fer_markdown(effect) if len(effect) else "No cells.", ""]
    expression_cells = [c for c in cells if c[0] in EXPRESSION_METHODS and c[1] == "c23"]
    seeds = list(preset.emd.comparison_seeds)
    if expression_cells:
        out += [f"### Over seeds ({len(seeds)}: {', '.join(map(str, seeds))}) on the expression cells", "",
                "Seed 0 alone can move by several points from one machine to another; this is the comparison "
                "repeated with each seed of `emd.comparison_seeds` (notebook 02, section 6): mean over seeds, "
                "and an interval from a bootstrap over seeds and test videos (`emdlib.stats.fer_effect_over_seeds`).",
                "", fer_comparison_markdown(fer_effect_over_seeds(study, expression_cells, seeds, seed=seed)), ""]

    out += ["## Figures", ""]
    figs = _figures(paths.figures)
    for fig in figs:
        caption = _FIG_NAMES.get(fig.stem.split("_")[0], fig.stem.replace("_", " "))
        rel = fig.relative_to(paths.results).as_posix()
        out += [f"**{caption}** (`{fig.name}`)", "", f"![{caption}: {fig.stem}]({rel})", ""]
    if not figs:
        out += ["No figures yet (notebooks 00 and 05–06 make Figs. 3–7).", ""]

    out += ["## Notebook wall times", ""]
    timings = paths.results / "timings.json"
    if timings.is_file():
        t = dict(sorted(read_json(timings).items()))
        rows = {"notebook": [*t, "total"], "wall time (s)": [fmt(float(v)) for v in t.values()]
                + [fmt(sum(float(v) for v in t.values()))]}
        out += [markdown_table(pd.DataFrame(rows), index=False), "",
                "From `timings.json` as `emd reproduce` left it when this report was written: the notebook writing "
                "the report (and any still to run) is not in it yet; the file itself gets every notebook's time.", ""]
    else:
        out += ["No `timings.json` (written by `emd reproduce`).", ""]
    out += training_time_markdown(records_frame(load_run_records(paths.results)))  # Fig. 6's runs too

    out += ["## Deviations from the paper", "", deviations_markdown(), ""]
    out += ["## Training recipes", "",
            "What each system trains with, from its original paper or code (`emdlib.recipes`); this preset scales "
            "the epochs (and the data), never the rest.", "", recipes_markdown(), ""]

    out += ["## Provenance", "",
            "Every run record behind the numbers above (full records: `runs/<run>/metrics.json`).", ""]
    prov = provenance(runs, paths.results)
    if len(prov):
        show = prov.drop(columns=["path"]).copy()
        show["run"] = [f"[`{r}`]({p})" for r, p in zip(prov["run"], prov["path"])]
        show["wall_time_s"] = [fmt(float(v)) if pd.notna(v) else "–" for v in show["wall_time_s"]]
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
