"""AffectNet's on-disk layout: find the official files under a root, and write a miniature AffectNet in that layout.

The official distribution (Mollahosseini et al., 2017), unpacked under one root::

    <root>/Manually_Annotated_file_lists/training.csv     expression set X^F of the paper (§III-C, Eq. 1)
    <root>/Manually_Annotated_file_lists/validation.csv   the public held-out set (the test set is not public)
    <root>/Manually_Annotated_Images/<n>/<sha1-like name>.jpg

Each CSV row: ``subDirectory_filePath`` (relative to ``Manually_Annotated_Images``, e.g.
``689/737db2483489148d783ef278f43f486c0a97e140fc4b6b61b84363ca.jpg``), the face box ``face_x, face_y, face_width,
face_height`` (x = column, y = row), ``facial_landmarks`` (68 points as ``x1;y1;x2;y2;…``), ``expression`` (0–10:
the eight of :data:`emdlib.data.expressions.EXPRESSIONS`, then 8 None, 9 Uncertain, 10 No-face) and ``valence``,
``arousal`` in [-1, 1], -2 where there is no valence/arousal annotation (AffectNet's convention for Uncertain and
No-face, as documented in the official ESR code's ``udata.py``). :func:`emdlib.data.expressions.read_affectnet_csv`
reads a CSV; this module only knows where the files are.

* :func:`affectnet_layout` — the two CSVs and the image folder under a root (the official layout, or the CSVs
  directly in the root); a clear error lists what is missing.
* :func:`write_affectnet` — a miniature AffectNet in the official layout from real faces: CK+ crops for the seven
  non-neutral expressions and the London set's neutral photographs for neutral (the rehearsal of issue 13, and
  ``emd forge-affectnet``).
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from emdlib.data.expressions import AFFECTNET_COLUMNS, CKPLUS_CLASSES, EXPRESSIONS, IMAGE_SUFFIXES, subject_id
from emdlib.io import _umask

log = logging.getLogger(__name__)

CSV_FOLDER = "Manually_Annotated_file_lists"
IMAGE_FOLDER = "Manually_Annotated_Images"
TRAINING_CSV = "training.csv"
VALIDATION_CSV = "validation.csv"
#: AffectNet's valence/arousal value where there is no annotation (official: Uncertain and No-face rows).
NOT_ANNOTATED = -2
#: Images per numbered sub-folder of the miniature (AffectNet's folders hold a few hundred each).
IMAGES_PER_FOLDER = 10


@dataclass(frozen=True)
class AffectNetLayout:
    """Where one AffectNet copy keeps its files (absolute paths)."""

    root: Path
    training_csv: Path
    validation_csv: Path
    images: Path  # the folder ``subDirectory_filePath`` is relative to


def affectnet_layout(root: str | os.PathLike) -> AffectNetLayout:
    """The CSVs and image folder of the AffectNet copy at ``root``.

    CSVs: ``<root>/Manually_Annotated_file_lists/{training,validation}.csv`` (official) or
    ``<root>/{training,validation}.csv``. Images: ``<root>/Manually_Annotated_Images`` (official) or
    ``<root>/Manually_Annotated/Manually_Annotated_Images`` (the archive unpacked in place). Raises
    FileNotFoundError naming ``root`` and every place looked in when the root, a CSV or the image folder is missing.
    """
    root = Path(root).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: AffectNet root not found (expected {CSV_FOLDER}/{TRAINING_CSV}, "
                                f"{CSV_FOLDER}/{VALIDATION_CSV} and {IMAGE_FOLDER}/ in it)")
    csv_dirs = [root / CSV_FOLDER, root]
    found: dict[str, Path] = {}
    for name in (TRAINING_CSV, VALIDATION_CSV):
        hits = [d / name for d in csv_dirs if (d / name).is_file()]
        if not hits:
            raise FileNotFoundError(f"{root}: AffectNet {name} not found (looked for "
                                    + " and ".join(str(d / name) for d in csv_dirs) + ")")
        found[name] = hits[0]
    image_dirs = [root / IMAGE_FOLDER, root / "Manually_Annotated" / IMAGE_FOLDER]
    images = next((d for d in image_dirs if d.is_dir()), None)
    if images is None:
        raise FileNotFoundError(f"{root}: AffectNet image folder not found (looked for "
                                + " and ".join(str(d) for d in image_dirs) + ")")
    return AffectNetLayout(root, found[TRAINING_CSV], found[VALIDATION_CSV], images)


# ------------------------------------------------------------------------------------------------ the miniature

@dataclass(frozen=True)
class _Face:
    """One source image of the miniature: file, AffectNet label, face box (x, y, w, h) and 68 landmarks."""

    source: Path
    label: int
    box: tuple[int, int, int, int]
    landmarks: np.ndarray | None


def _pick_ckplus(ckplus: Path, train_per_class: int, val_per_class: int, seed: int
                 ) -> dict[str, list[tuple[Path, int]]]:
    """CK+ images for the seven non-neutral classes: one image (the last frame) per subject and class, subjects
    disjoint between training and validation across all classes; fewest-subject classes choose first."""
    per_class: dict[int, dict[str, Path]] = {}
    for folder, label in CKPLUS_CLASSES.items():
        d = ckplus / folder
        if not d.is_dir():
            raise FileNotFoundError(f"{d}: CK+ class folder not found (expected {sorted(CKPLUS_CLASSES)} in {ckplus})")
        last: dict[str, Path] = {}
        for p in sorted(q for q in d.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES):
            last[subject_id(p)] = p  # sorted: the last frame of the subject's sequence wins (peak expression)
        if not last:
            raise ValueError(f"{d}: no images")
        per_class[label] = last
    order = sorted({s for faces in per_class.values() for s in faces})
    random.Random(seed).shuffle(order)
    rank = {s: i for i, s in enumerate(order)}
    role: dict[str, str] = {}
    picked: dict[str, list[tuple[Path, int]]] = {"train": [], "val": []}
    for label in sorted(per_class, key=lambda c: (len(per_class[c]), c)):
        subjects = sorted(per_class[label], key=rank.__getitem__)
        for part, n in (("val", val_per_class), ("train", train_per_class)):
            free = [s for s in subjects if role.get(s, part) == part][:n]  # unused, or already in this split
            if len(free) < n:
                log.warning("%s: only %d subjects of class %s free for %s (wanted %d)", ckplus, len(free),
                            EXPRESSIONS[label], part, n)
            if not free:
                raise ValueError(f"{ckplus}: no subject of class {EXPRESSIONS[label]} left for the {part} split")
            for s in free:
                role[s] = part
                picked[part].append((per_class[label][s], label))
    return picked


def _pick_neutral(neutral: Path, train_per_class: int, val_per_class: int, seed: int
                  ) -> dict[str, list[tuple[Path, int]]]:
    """Neutral photographs (one person each): ``val_per_class`` for validation, the next ``train_per_class`` for
    training, in a seeded shuffle."""
    if not neutral.is_dir():
        raise FileNotFoundError(f"{neutral}: folder of neutral face photos not found")
    files = sorted(p for p in neutral.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    random.Random(seed).shuffle(files)
    if len(files) < 2:
        raise ValueError(f"{neutral}: {len(files)} neutral photos; at least 2 are needed (one per split)")
    n_val = min(val_per_class, len(files) // 2)
    label = EXPRESSIONS.index("neutral")
    return {"val": [(p, label) for p in files[:n_val]],
            "train": [(p, label) for p in files[n_val:n_val + train_per_class]]}


def _face(source: Path, label: int, whole: bool) -> _Face | None:
    """Face box and landmarks of one source image: the whole image when ``whole`` (a face crop such as CK+'s 48²,
    too small for the detector), else dlib's largest detection (:func:`emdlib.data.faces.detect_faces`); None (logged)
    for an unreadable image or one without a detected face."""
    from emdlib.data.faces import detect_faces, landmarks
    from emdlib.data.images import ImageError, read_image

    try:
        rgb = read_image(source)
    except ImageError as e:
        log.warning("%s: skipped (%s)", source, e)
        return None
    h, w = rgb.shape[:2]
    if whole:
        box = (0, 0, w, h)
    else:
        faces = detect_faces(rgb, upsample=0) or detect_faces(rgb)
        if not faces:
            log.warning("%s: no face detected, skipped", source)
            return None
        left, top, right, bottom = faces[0]
        x0, y0, x1, y1 = max(left, 0), max(top, 0), min(right, w), min(bottom, h)
        box = (x0, y0, x1 - x0, y1 - y0)
    x, y, bw, bh = box
    return _Face(source, label, box, landmarks(rgb, (x, y, x + bw, y + bh)))


def _landmarks_field(points: np.ndarray | None) -> str:
    """AffectNet's ``facial_landmarks`` field: ``x1;y1;x2;y2;…`` with two decimals."""
    if points is None:
        return ""
    return ";".join(f"{v:.2f}" for v in np.asarray(points, dtype=np.float64).reshape(-1))


def write_affectnet(out: str | os.PathLike, ckplus: str | os.PathLike, neutral: str | os.PathLike,
                    train_per_class: int = 12, val_per_class: int = 4, seed: int = 0) -> dict[str, dict[str, int]]:
    """Write a miniature AffectNet in the official layout (module docstring) at ``out``.

    Real faces, eight classes: ``ckplus`` (CK+ crops in class folders ``anger, contempt, disgust, fear, happy,
    sadness, surprise``; the face box is the whole crop) for the seven expressions and ``neutral`` (a folder of
    neutral photographs, one person each, e.g. the London set's ``neutral/``; the face box is dlib's detection) for
    neutral. ``train_per_class`` images per class go to ``training.csv`` and ``val_per_class`` to
    ``validation.csv`` (fewer where a class runs out of subjects; logged); CK+ subjects are disjoint between the two.
    Landmarks are dlib's 68 points fitted in the face box; valence and arousal are :data:`NOT_ANNOTATED` (-2), since
    neither source has them. Images are copied byte for byte under ``Manually_Annotated_Images/<n>/`` with a
    sha1-of-source name, as the official files are named.

    Everything is written into a temporary folder beside ``out`` and renamed into place at the end. Returns
    ``{"train": {class name: images}, "val": {...}}``. Raises FileExistsError when ``out`` exists and is not empty,
    FileNotFoundError naming a missing source folder, ValueError for sizes below 1 or a class with no usable image.
    """
    from tqdm.auto import tqdm

    if train_per_class < 1 or val_per_class < 1:
        raise ValueError(f"train_per_class and val_per_class must be >= 1, got {train_per_class}, {val_per_class}")
    out = Path(out).resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out}: exists and is not an empty folder; choose a new one")
    ckplus, neutral = Path(ckplus), Path(neutral)
    picked = _pick_ckplus(ckplus, train_per_class, val_per_class, seed)
    for part, rows in _pick_neutral(neutral, train_per_class, val_per_class, seed).items():
        picked[part] = rows + picked[part]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    counts: dict[str, dict[str, int]] = {}
    neutral_label = EXPRESSIONS.index("neutral")
    try:
        n_image = 0
        for part, csv_name in (("train", TRAINING_CSV), ("val", VALIDATION_CSV)):
            rows = []
            for source, label in tqdm(picked[part], desc=f"miniature AffectNet {part}", leave=False, disable=None):
                face = _face(source, label, whole=label != neutral_label)
                if face is None:
                    continue
                folder = str(n_image // IMAGES_PER_FOLDER + 1)
                name = hashlib.sha1(f"{source.parent.name}/{source.name}".encode()).hexdigest() + source.suffix.lower()
                (tmp / IMAGE_FOLDER / folder).mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, tmp / IMAGE_FOLDER / folder / name)
                n_image += 1
                x, y, w, h = face.box
                rows.append([f"{folder}/{name}", x, y, w, h, _landmarks_field(face.landmarks), label,
                             NOT_ANNOTATED, NOT_ANNOTATED])
            by_class = {c: sum(1 for r in rows if r[6] == i) for i, c in enumerate(EXPRESSIONS)}
            empty = [c for c, n in by_class.items() if n == 0]
            if empty:
                raise ValueError(f"miniature AffectNet {part}: no usable image for {empty} (sources {ckplus}, "
                                 f"{neutral})")
            buf = io.StringIO()
            writer = csv.writer(buf, lineterminator="\n")
            writer.writerow(AFFECTNET_COLUMNS)
            writer.writerows(rows)
            (tmp / CSV_FOLDER).mkdir(parents=True, exist_ok=True)
            (tmp / CSV_FOLDER / csv_name).write_text(buf.getvalue(), encoding="utf-8")
            counts[part] = by_class
        os.chmod(tmp, 0o777 & ~_umask())
        if out.is_dir():
            out.rmdir()  # empty (checked above)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("miniature AffectNet → %s: %s", out, {k: sum(v.values()) for k, v in counts.items()})
    return counts
