"""Fig. 7 (§IV-E3, "why does FER help?"): for manipulated faces (left) and pristine faces (right), the original
frame of the same target video, the manipulated face, the ground-truth mask, EMD's predicted mask and the Grad-CAM of
the ESR branch EMD selected (Eqs. 3–5) for the ensemble's expression.

:func:`fig7_samples` picks test faces of each cell and runs the cell's trained EMD (rebuilt from its run's best
checkpoint; nothing is trained); :func:`fig7_grid` draws them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from emdlib import paper
from emdlib.figures import display_image, new_figure
from emdlib.study import Study

log = logging.getLogger(__name__)

FIG7_FAKE_COLUMNS: tuple[str, ...] = ("original", "manipulated", "GT mask", "predicted mask", "CAM")
FIG7_REAL_COLUMNS: tuple[str, ...] = ("pristine", "GT mask", "predicted mask", "CAM")


@dataclass
class MaskCamSample:
    """One row of Fig. 7. ``image``: the face EMD saw, (H, W, 3) RGB in [0, 1]; ``mask``/``pred_mask``: (H, W)
    ground truth and P(manipulated); ``cam``: (H, W) Grad-CAM in [0, 1] of the selected ESR branch (None without a FER
    stream); ``original``: the pristine face of the same target video and frame (fakes only)."""

    image: np.ndarray
    mask: np.ndarray
    pred_mask: np.ndarray
    cam: np.ndarray | None = None
    original: np.ndarray | None = None
    title: str = ""
    prob: float | None = None
    cam_label: str = ""


def fig7_layout(n_fake: int, n_real: int) -> list[list[str | None]]:
    """Panel names of Fig. 7 row by row: the five fake columns, a gap (``None``), the four pristine columns; a side
    with fewer rows is padded with ``None``. A side with no rows is left out (and the gap with it)."""
    rows = max(n_fake, n_real)
    out = []
    for r in range(rows):
        left = [c if r < n_fake else None for c in FIG7_FAKE_COLUMNS] if n_fake else []
        right = [c if r < n_real else None for c in FIG7_REAL_COLUMNS] if n_real else []
        out.append(left + ([None] if n_fake and n_real else []) + right)
    return out


def _show(ax: Axes, img: np.ndarray | None, grey: bool = False, cam: np.ndarray | None = None) -> None:
    if img is None:
        ax.text(0.5, 0.5, "n/a", ha="center", va="center", fontsize=8, color="0.5", transform=ax.transAxes)
    elif grey:
        ax.imshow(np.asarray(img, dtype=np.float32), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    else:
        ax.imshow(np.clip(np.asarray(img, dtype=np.float32), 0, 1))
        if cam is not None:
            ax.imshow(np.asarray(cam, dtype=np.float32), cmap="jet", alpha=0.45, vmin=0, vmax=1)
    ax.set_xticks([])
    ax.set_yticks([])


def fig7_grid(fakes: Sequence[MaskCamSample], reals: Sequence[MaskCamSample], panel: float = 1.25,
              title: str = "") -> Figure:
    """Fig. 7: left, per manipulated face, original · manipulated · GT mask · predicted mask · CAM; right, per
    pristine face, image · GT mask · predicted mask · CAM (CAMs overlaid on the face, jet, 0 → 1).

    The axes follow :func:`fig7_layout`; empty cells (gap column, padding) are hidden. Axes are labelled with
    ``ax.get_label() == "<row>:<panel>"`` so callers and tests can find a panel.
    """
    layout = fig7_layout(len(fakes), len(reals))
    if not layout:
        raise ValueError("Fig. 7 needs at least one manipulated or pristine sample")
    ncols = len(layout[0])
    widths = [0.25 if (len(fakes) and len(reals) and c == len(FIG7_FAKE_COLUMNS)) else 1.0 for c in range(ncols)]
    fig, axes = new_figure(len(layout), ncols, figsize=(panel * sum(widths) + 0.6, panel * 1.18 * len(layout)),
                           squeeze=False, gridspec_kw={"width_ratios": widths})
    for r, row in enumerate(layout):
        for c, name in enumerate(row):
            ax = axes[r, c]
            if name is None:
                ax.axis("off")
                continue
            right = c > len(FIG7_FAKE_COLUMNS) or not len(fakes)
            s = (reals if right else fakes)[r]
            ax.set_label(f"{r}:{name}" if not right else f"{r}:real {name}")
            if name in ("original", "pristine", "manipulated"):
                _show(ax, s.original if name == "original" else s.image)
            elif name == "GT mask":
                _show(ax, s.mask, grey=True)
            elif name == "predicted mask":
                _show(ax, s.pred_mask, grey=True)
            else:  # CAM over the face; "n/a" for a system without a FER stream
                _show(ax, s.image if s.cam is not None else None, cam=s.cam)
            first = r == 0 or (layout[r - 1][c] is None)
            sub = ""
            if name == "predicted mask" and s.prob is not None:
                sub = f"p(fake)={s.prob:.2f}"
            elif name == "CAM" and s.cam_label:
                sub = s.cam_label
            head = name if first else ""
            ax.set_title("\n".join(t for t in (head, sub) if t), fontsize=7)
            if c == 0 or (right and c == ncols - len(FIG7_REAL_COLUMNS)):
                ax.set_ylabel(s.title, fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def _pick(indices: np.ndarray, samples: list, n: int, rng: np.random.Generator) -> list[int]:
    """Up to ``n`` of ``indices`` (random order), one per video first."""
    order = [int(i) for i in rng.permutation(indices)]
    picked, seen = [], set()
    for i in order:
        if samples[i][2] not in seen:
            picked.append(i)
            seen.add(samples[i][2])
    picked += [i for i in order if i not in picked]
    return picked[:n]


def _pristine_index(samples: list, method: str, comp: str, video: str, frame: int) -> int | None:
    """Index of the pristine frame of ``video``'s target at ``frame`` (nearest frame when that one was skipped)."""
    from emdlib.data.ffpp import ORIGINAL, target_id

    target = target_id(video)
    cands = [(abs(s[3] - frame), i) for i, s in enumerate(samples)
             if s[0] == ORIGINAL and s[1] == comp and s[2] == target]
    if not cands:
        log.warning("Fig. 7: no pristine frame of %s (target of %s %s) in the test set", target, method, video)
        return None
    d, i = min(cands)
    if d:
        log.warning("Fig. 7: pristine %s frame %d missing; showing frame %d", target, frame, samples[i][3])
    return i


@torch.no_grad()
def _masks(model: torch.nn.Module, items: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    image = torch.stack([it["image"] for it in items])
    fer = torch.stack([it["fer_image"] for it in items])
    out = model(image, fer_image=fer)
    return out.mask_prob.numpy(), out.prob.numpy()


def _cams(model: torch.nn.Module, items: list[dict], size: int) -> tuple[np.ndarray | None, list[str]]:
    from emdlib.data.expressions import EXPRESSIONS
    from emdlib.models.gradcam import GradCAM

    fer = getattr(model, "fer", None)
    if fer is None:
        return None, [""] * len(items)
    with GradCAM(fer) as cam:
        res = cam(torch.stack([it["fer_image"] for it in items]), size=size)
    labels = [f"{EXPRESSIONS[int(c)]} (branch {int(b) + 1})" for c, b in zip(res.cls, res.branch)]
    return res.cam.numpy(), labels


def fig7_samples(study: Study, cells: Sequence[tuple[str, str]], n_fake: int = 3, n_real: int = 3,
                 system: str = "EMD", seed: int = 0) -> tuple[list[MaskCamSample], list[MaskCamSample]]:
    """Fig. 7 rows from each cell's test set and the cell's trained ``system`` (rebuilt from its checkpoint).

    Per cell: ``n_fake`` manipulated faces (distinct videos first) with the pristine face of the same target video
    and frame, and ``n_real`` pristine faces; for each, the predicted mask (sigmoid of the mask logits), P(fake) and
    the Grad-CAM (:class:`emdlib.models.gradcam.GradCAM`) of the ESR branch EMD selected (Eqs. 3–5) for the
    ensemble's expression. Nothing is trained.
    """
    from emdlib.data.ffpp import ORIGINAL
    from emdlib.study.experiments import cell_datasets, run_name
    from emdlib.study.records import load_run_model

    fakes: list[MaskCamSample] = []
    reals: list[MaskCamSample] = []
    rng = np.random.default_rng(seed)
    for method, comp in cells:
        model = load_run_model(study.paths.runs, run_name(system, method, comp, seed))
        test = cell_datasets(study, method, comp)["test"]
        samples = test.samples
        labels = test.labels
        fake_idx = _pick(np.flatnonzero(labels == 1), samples, n_fake, rng)
        real_idx = _pick(np.flatnonzero(labels == 0), samples, n_real, rng)
        orig_idx = [_pristine_index(samples, *samples[i][:4]) for i in fake_idx]
        items = [test[i] for i in fake_idx + real_idx]
        originals = {i: test[i] for i in orig_idx if i is not None}
        if not items:
            log.warning("Fig. 7: empty test set for %s %s", method, comp)
            continue
        masks, probs = _masks(model, items)
        cams, cam_labels = _cams(model, items, test.image_size)
        short = paper.SHORT.get(method, method)
        for k, it in enumerate(items):
            fake = k < len(fake_idx)
            oi = orig_idx[k] if fake else None
            s = MaskCamSample(
                image=display_image(it["image"]),
                mask=it["mask"][0].numpy(), pred_mask=masks[k], cam=None if cams is None else cams[k],
                original=display_image(originals[oi]["image"]) if oi is not None else None,
                title=(f"{short} {it['video']} f{it['frame']}" if fake
                       else f"{ORIGINAL} {it['video']} f{it['frame']}\n({short} model)"),
                prob=float(probs[k]), cam_label=cam_labels[k])
            (fakes if fake else reals).append(s)
    return fakes, reals
