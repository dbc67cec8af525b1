"""Expression sets for the FER stream (paper §III-C, the set X^F of Eq. 1): AffectNet, class-per-folder sets, splits.

Classes are the eight AffectNet categories in AffectNet order (reference-facts §A.2); a label is an index into
:data:`EXPRESSIONS`. Every loader returns :class:`ExpressionSample` rows; :class:`ExpressionDataset` turns them into
``(image, label)`` items with ``image`` float ``(3, 96, 96)`` in ESR's input convention (**BGR**, [0, 1], made by
:func:`emdlib.data.transforms.esr_input`) and ``label`` a long.

* :func:`affectnet_samples` / :func:`read_affectnet_csv` — AffectNet's official CSV (``subDirectory_filePath,
  face_x, face_y, face_width, face_height, facial_landmarks, expression, valence, arousal``); expressions 8–10
  (None / Uncertain / No-face) are dropped as in the official ESR training (reference-facts §A.2), rows with a bad
  box, a bad code or a missing image are dropped and counted; the annotated face box is cropped.
* :func:`folder_samples` — ``<root>/<class>/*.png|jpg`` sets (FER2013, CK+, our synth expression set written by
  :func:`emdlib.data.synth.render_expression_set`); folder names map to AffectNet indices through
  :data:`CLASS_ALIASES` (CK+ ``sadness`` → ``sad`` …). Grey images become 3-channel.
* :func:`subject_split` — subject-disjoint train/val/test split (CK+ file names start with the subject id,
  ``S010_004_00000017.png``); :func:`stratified_split` — per-class split for sets of distinct people (synth).
"""

from __future__ import annotations

import logging
import os
import random
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from emdlib.data.images import ImageError, read_image
from emdlib.data.transforms import ESR_SIZE, esr_input, to_tensor

log = logging.getLogger(__name__)

EXPRESSIONS: tuple[str, ...] = ("neutral", "happy", "sad", "surprise", "fear", "disgust", "anger", "contempt")

# Folder / dataset class names → AffectNet index. CK+ uses anger, contempt, disgust, fear, happy, sadness, surprise;
# FER2013 uses angry, disgust, fear, happy, neutral, sad, surprise.
CLASS_ALIASES: dict[str, int] = {
    **{name: i for i, name in enumerate(EXPRESSIONS)},
    "happiness": 1,
    "sadness": 2,
    "surprised": 3,
    "surprise": 3,
    "afraid": 4,
    "disgusted": 5,
    "angry": 6,
    "contemptuous": 7,
}
CKPLUS_CLASSES: dict[str, int] = {
    name: CLASS_ALIASES[name] for name in ("anger", "contempt", "disgust", "fear", "happy", "sadness", "surprise")
}
AFFECTNET_COLUMNS: tuple[str, ...] = (
    "subDirectory_filePath", "face_x", "face_y", "face_width", "face_height",
    "facial_landmarks", "expression", "valence", "arousal",
)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


def class_index(name: str) -> int:
    """AffectNet index of a class name (case-insensitive, aliases of :data:`CLASS_ALIASES`)."""
    key = name.strip().lower()
    if key not in CLASS_ALIASES:
        raise KeyError(f"unknown expression class {name!r}; known names: {sorted(CLASS_ALIASES)}")
    return CLASS_ALIASES[key]


@dataclass(frozen=True)
class Box:
    """A face box in pixel coordinates: ``x`` = column, ``y`` = row of the top-left corner."""

    x: int
    y: int
    width: int
    height: int


@dataclass(frozen=True)
class ExpressionSample:
    """One labelled face image: file, AffectNet label, optional face box to crop."""

    path: Path
    label: int
    box: Box | None = None


def folder_samples(
    root: str | os.PathLike, class_map: Mapping[str, int] | None = None, ignore_unknown: bool = False
) -> list[ExpressionSample]:
    """Samples of a class-per-folder set ``<root>/<class>/<image>`` (sorted, deterministic).

    ``class_map`` maps folder names to AffectNet indices (default: :func:`class_index` on the folder name). An
    unknown folder raises ``ValueError`` naming it, unless ``ignore_unknown`` (then it is logged and skipped).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: expression folder not found")
    samples: list[ExpressionSample] = []
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        try:
            label = class_map[d.name] if class_map is not None else class_index(d.name)
        except KeyError:
            if ignore_unknown:
                log.warning("%s: not an expression class, skipped", d)
                continue
            raise ValueError(f"{d}: folder name is not a known expression class ({sorted(CLASS_ALIASES)})") from None
        files = sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        samples += [ExpressionSample(p, label) for p in files]
    if not samples:
        raise ValueError(f"{root}: no images found in class folders")
    return samples


#: AffectNet expression codes beyond the eight classes (reference-facts §A.2): dropped, counted by name.
AFFECTNET_NON_EXPRESSIONS: dict[int, str] = {8: "none", 9: "uncertain", 10: "no_face"}


def affectnet_samples(
    csv_path: str | os.PathLike, image_root: str | os.PathLike, classes: int = len(EXPRESSIONS),
    check_files: bool = True,
) -> list[ExpressionSample]:
    """Samples of AffectNet's official CSV (``training.csv`` / ``validation.csv``), paths under ``image_root``.

    The usable rows of :func:`read_affectnet_csv` (which also returns what was dropped and why).
    """
    return read_affectnet_csv(csv_path, image_root, classes, check_files)[0]


def read_affectnet_csv(
    csv_path: str | os.PathLike, image_root: str | os.PathLike, classes: int = len(EXPRESSIONS),
    check_files: bool = True,
) -> tuple[list[ExpressionSample], dict[str, int]]:
    """Read AffectNet's official CSV: ``(samples, counts)``; every row is kept or counted under one reason.

    Keeps expressions ``0..classes-1`` (the eight of :data:`EXPRESSIONS`); 8 None, 9 Uncertain, 10 No-face are
    dropped as in the official ESR training (reference-facts §A.2) and counted as ``expression_none``,
    ``expression_uncertain``, ``expression_no_face``. Rows that cannot be used are dropped, counted and logged with
    their CSV line: ``bad_expression`` (not an integer of 0..10), ``bad_box`` (a face box field that is not a number,
    or a width/height below 1), ``missing_image`` (no file under ``image_root``; checked when ``check_files``).
    ``counts`` also holds ``rows`` (data rows read) and ``kept``. The annotated face box (``face_x`` = column,
    ``face_y`` = row) is cropped at load time; the official pre-processing swaps x and y (reference-facts §A.4), we
    do not.

    A CSV without a header row (its first field an image path) whose rows have the nine official fields is read in
    the official column order (:data:`AFFECTNET_COLUMNS`; AffectNet's ``validation.csv`` is commonly distributed
    without one).

    Raises ``FileNotFoundError`` (CSV or image folder absent) or ``ValueError`` naming the CSV: not a CSV, empty, no
    data rows, a required column missing, or no usable row at all.
    """
    import pandas as pd

    csv_path, root = Path(csv_path), Path(image_root)
    if not csv_path.is_file():
        raise FileNotFoundError(f"{csv_path}: AffectNet CSV not found")
    if check_files and not root.is_dir():
        raise FileNotFoundError(f"{root}: AffectNet image folder not found")
    try:
        df = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise ValueError(f"{csv_path}: empty file, not an AffectNet CSV (no header row)") from None
    except Exception as e:
        raise ValueError(f"{csv_path}: not a readable CSV ({e})") from e
    needed = ["subDirectory_filePath", "face_x", "face_y", "face_width", "face_height", "expression"]
    first_line = 2  # CSV line of the first data row (1-based, after the header)
    first = str(df.columns[0]) if len(df.columns) else ""
    looks_like_data = "/" in first or Path(first).suffix.lower() in IMAGE_SUFFIXES  # an image path, not a name
    if looks_like_data and len(df.columns) == len(AFFECTNET_COLUMNS) and not set(AFFECTNET_COLUMNS) & set(df.columns):
        # no header row: the first line is data; read again in the official column order
        df = pd.read_csv(csv_path, dtype=str, keep_default_na=False, header=None, names=list(AFFECTNET_COLUMNS))
        log.info("%s: no header row; columns read in the official order %s", csv_path, list(AFFECTNET_COLUMNS))
        first_line = 1
    absent = [c for c in needed if c not in df.columns]
    if absent:
        raise ValueError(f"{csv_path}: missing AffectNet columns {absent} (found {list(df.columns)})")
    if df.empty:
        raise ValueError(f"{csv_path}: no data rows (only the header)")
    counts: dict[str, int] = {"rows": len(df), "kept": 0}
    examples: dict[str, list[str]] = {}

    def drop(reason: str, line: int, detail: str) -> None:
        counts[reason] = counts.get(reason, 0) + 1
        if len(examples.setdefault(reason, [])) < 3:
            examples[reason].append(f"line {line}: {detail}")

    samples = []
    for i, r in enumerate(df.itertuples(index=False)):
        line = i + first_line
        code = _integer(r.expression)
        if code is None or not 0 <= code <= max(AFFECTNET_NON_EXPRESSIONS):
            drop("bad_expression", line, f"expression {r.expression!r}")
            continue
        if code >= classes:
            name = AFFECTNET_NON_EXPRESSIONS.get(code, str(code))
            counts[f"expression_{name}"] = counts.get(f"expression_{name}", 0) + 1
            continue
        box = [_integer(getattr(r, k)) for k in ("face_x", "face_y", "face_width", "face_height")]
        if any(v is None for v in box) or box[2] < 1 or box[3] < 1:
            drop("bad_box", line, "face box " + ", ".join(repr(getattr(r, k)) for k in
                                                          ("face_x", "face_y", "face_width", "face_height")))
            continue
        path = root / str(r.subDirectory_filePath)
        if check_files and not path.is_file():
            drop("missing_image", line, str(path))
            continue
        samples.append(ExpressionSample(path, code, Box(*box)))
    counts["kept"] = len(samples)
    skipped = {k: v for k, v in counts.items() if k.startswith("expression_")}
    log.info("%s: %d of %d rows kept (expressions 0..%d); not expressions: %s", csv_path, len(samples),
             counts["rows"], classes - 1, skipped or "none")
    for reason, lines in examples.items():
        log.warning("%s: %d rows dropped (%s), e.g. %s", csv_path, counts[reason], reason, "; ".join(lines))
    if not samples:
        raise ValueError(f"{csv_path}: none of the {counts['rows']} rows is usable ({counts})")
    return samples, counts


def _integer(text: str) -> int | None:
    """An integer CSV field (``"12"``, ``"12.0"``); None for anything else (empty, text, NaN, ``"1.5"``)."""
    try:
        value = float(str(text).strip())
    except ValueError:
        return None
    return int(value) if value.is_integer() else None


_SUBJECT = re.compile(r"^([^_]+)_")


def subject_id(path: str | os.PathLike) -> str:
    """Subject of a CK+-style file name: the part before the first ``_`` (``S010_004_00000017.png`` → ``S010``)."""
    name = Path(path).name
    m = _SUBJECT.match(name)
    if not m:
        raise ValueError(f"{path}: file name does not start with a subject id followed by '_'")
    return m.group(1)


def subject_split(
    samples: Sequence[ExpressionSample],
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    names: Sequence[str] = ("train", "val", "test"),
    subject: Callable[[Path], str] = subject_id,
) -> dict[str, list[ExpressionSample]]:
    """Split samples so that no subject appears in two parts (subjects shuffled with ``seed``, cut by ``fractions``).

    Fractions are of subjects, not images. Every part gets at least one subject when there are enough subjects.
    """
    if len(fractions) != len(names) or any(f < 0 for f in fractions) or sum(fractions) <= 0:
        raise ValueError(f"fractions {tuple(fractions)} must be non-negative, one per name {tuple(names)}")
    subjects = sorted({subject(s.path) for s in samples})
    random.Random(seed).shuffle(subjects)
    total = sum(fractions)
    bounds = np.round(np.cumsum(fractions) / total * len(subjects)).astype(int)
    assign: dict[str, str] = {}
    start = 0
    for name, end in zip(names, bounds):
        for s in subjects[start:end]:
            assign[s] = name
        start = end
    parts: dict[str, list[ExpressionSample]] = {n: [] for n in names}
    for s in samples:
        parts[assign[subject(s.path)]].append(s)
    return parts


def stratified_split(
    samples: Sequence[ExpressionSample],
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    names: Sequence[str] = ("train", "val", "test"),
) -> dict[str, list[ExpressionSample]]:
    """Split each class by ``fractions`` (shuffled with ``seed``): for sets whose images are all different people,
    such as the synth expression set (one fresh identity per image)."""
    if len(fractions) != len(names) or any(f < 0 for f in fractions) or sum(fractions) <= 0:
        raise ValueError(f"fractions {tuple(fractions)} must be non-negative, one per name {tuple(names)}")
    rng = random.Random(seed)
    parts: dict[str, list[ExpressionSample]] = {n: [] for n in names}
    total = sum(fractions)
    for label in sorted({s.label for s in samples}):
        group = [s for s in samples if s.label == label]
        rng.shuffle(group)
        bounds = np.round(np.cumsum(fractions) / total * len(group)).astype(int)
        start = 0
        for name, end in zip(names, bounds):
            parts[name] += group[start:end]
            start = end
    return parts


def read_face(sample: ExpressionSample) -> np.ndarray:
    """RGB uint8 ``(H, W, 3)`` of a sample, face box cropped; a clear error names an unreadable file or bad box."""
    try:  # the one image reader: upright (EXIF), grey expanded to 3 channels, truncated files logged
        img = read_image(sample.path)
    except ImageError as e:  # the message names the file and why (missing, permission denied, not an image...)
        raise ValueError(str(e)) from None
    if sample.box is not None:
        b = sample.box
        h, w = img.shape[:2]
        x0, y0 = max(b.x, 0), max(b.y, 0)
        x1, y1 = min(b.x + b.width, w), min(b.y + b.height, h)
        if x1 <= x0 or y1 <= y0:
            raise ValueError(f"{sample.path}: face box {b} lies outside the {w}x{h} image")
        img = img[y0:y1, x0:x1]
    return np.ascontiguousarray(img)


class ExpressionDataset(Dataset):
    """``(image (3, 96, 96) float BGR [0, 1], label long)`` items from :class:`ExpressionSample` rows.

    ``transform`` (e.g. :func:`emdlib.train_fer.fer_augmentation`) is applied to the ESR-convention tensor. ``preload``
    decodes every image once into memory (small sets such as CK+ or the synth set).
    """

    def __init__(
        self,
        samples: Iterable[ExpressionSample],
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        size: int = ESR_SIZE,
        preload: bool = False,
    ) -> None:
        self.samples = list(samples)
        if not self.samples:
            raise ValueError("ExpressionDataset: no samples")
        self.transform = transform
        self.size = size
        self._cache: list[torch.Tensor] | None = [self._load(s) for s in self.samples] if preload else None

    def _load(self, sample: ExpressionSample) -> torch.Tensor:
        return esr_input(to_tensor(read_face(sample)), self.size)

    @property
    def labels(self) -> np.ndarray:
        return np.array([s.label for s in self.samples], dtype=np.int64)

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=len(EXPRESSIONS))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self._cache[i] if self._cache is not None else self._load(self.samples[i])
        if self.transform is not None:
            x = self.transform(x)
        return x, torch.tensor(self.samples[i].label, dtype=torch.long)
