"""Fig. 3 of the paper, for our data: pristine frames, each manipulation of them and the ground-truth masks.

Read from the FF++-layout world the data stage wrote (:mod:`emdlib.study.data`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

from matplotlib.figure import Figure

from emdlib.figures import new_figure, save_figure
from emdlib.study import Study

log = logging.getLogger(__name__)


def _frame(path: Path, frame: int):
    """Frame ``frame`` of the video at ``path`` as RGB uint8, or None (logged) when the file is missing or that
    frame cannot be decoded — a user's FF++ copy may lack some videos or masks."""
    from emdlib.data.video import VideoError, read_frames

    try:
        image = read_frames(path, [frame]).get(frame)
    except VideoError as e:
        log.warning("Fig. 3: %s", e)
        return None
    if image is None:
        log.warning("Fig. 3: %s has no decodable frame %d", path, frame)
    return image


def fig3_grid(root: str | Path, pairs: Sequence[tuple[str, str]], methods: Sequence[str], compression: str = "c23",
              frame: int = 0) -> Figure:
    """Fig. 3: per row, the pristine frame of target ``t``, then for each method the fake ``t_s`` and its
    ground-truth mask (white = manipulated), all at frame index ``frame`` of the videos under ``root``. A video or
    mask that is missing or cannot be decoded leaves its panel empty, titled "missing" (and logged)."""
    from emdlib.data.ffpp import ORIGINAL, mask_path, video_path

    cols = 1 + 2 * len(methods)
    fig, axes = new_figure(len(pairs), cols, figsize=(1.6 * cols, 1.7 * len(pairs)), squeeze=False)
    for r, (t, s) in enumerate(pairs):
        images = [(_frame(video_path(root, ORIGINAL, compression, t), frame), f"pristine {t}")]
        for m in methods:
            fake_id = f"{t}_{s}"
            images.append((_frame(video_path(root, m, compression, fake_id), frame), f"{m} {fake_id}"))
            mask = _frame(mask_path(root, m, fake_id), frame)
            images.append((None if mask is None else mask[..., 0], "mask"))
        for c, (img, title) in enumerate(images):
            ax = axes[r, c]
            if img is not None:
                ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
            if img is None:
                ax.set_title(f"{title}: missing" if title != "mask" else "mask missing", fontsize=7)
            elif title != "mask" or r == 0:
                ax.set_title(title, fontsize=7)
    fig.suptitle(f"Fig. 3 (ours): pristine frames, their manipulations and masks ({compression})", fontsize=9)
    return fig


def fig3_pairs(root: str | Path, splits: dict[str, list[tuple[str, str]]], methods: Sequence[str],
               compression: str, rows: int = 4) -> list[tuple[str, str]]:
    """The first ``rows`` pairs ``(target, source)`` of ``splits`` (test, then val, then train) whose pristine video,
    fakes of every method and their masks are all on disk; when fewer are complete, the rest are filled with the
    first pairs that have at least their pristine video or one fake (their absent panels say "missing"). Raises
    FileNotFoundError when no pair has any video under ``root``."""
    from emdlib.data.ffpp import ORIGINAL, mask_path, video_path

    pairs = [(str(t), str(s)) for split in ("test", "val", "train") for t, s in splits.get(split, [])]

    def present(t: str, s: str) -> list[bool]:
        fakes = [video_path(root, m, compression, f"{t}_{s}").is_file() and mask_path(root, m, f"{t}_{s}").is_file()
                 for m in methods]
        return [video_path(root, ORIGINAL, compression, t).is_file(), *fakes]

    have = {p: present(*p) for p in pairs}
    chosen = [p for p in pairs if all(have[p])][:rows]
    chosen += [p for p in pairs if any(have[p]) and p not in chosen][:rows - len(chosen)]
    if not chosen:
        raise FileNotFoundError(f"{root}: no video of any split pair at {compression} (Fig. 3 has nothing to show)")
    if not all(all(have[p]) for p in chosen):
        log.warning("Fig. 3: fewer than %d pairs have every video and mask at %s; panels of absent ones say "
                    "'missing'", rows, compression)
    return chosen


def save_fig3(study: Study, rows: int = 4, frame: int = 0) -> Path:
    """Render Fig. 3 for ``rows`` pairs of the study's splits (:func:`fig3_pairs`: test, then val, then train,
    complete pairs first) to ``figures/fig3_<world>.png`` and return the path."""
    from emdlib.data.ffpp import load_splits

    data, paths = study.preset.data, study.paths
    compression = data.compressions[0]
    pairs = fig3_pairs(paths.world, load_splits(paths.splits), data.methods, compression, rows)
    fig = fig3_grid(paths.world, pairs, data.methods, compression=compression, frame=frame)
    return save_figure(fig, paths.figures / f"fig3_{data.world}.png")
