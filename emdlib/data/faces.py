"""Face detection, the FF++ crop box and 68-point landmarks (reference-facts §B.4).

* Detection: dlib's frontal HOG detector on the full-resolution greyscale frame with one up-sampling, as FF++'s
  ``detect_from_video.py``. :func:`find_faces` is the one "faces of a frame" function: ``emd prepare`` (training's
  crops) and ``emd detect`` (inference) both call it, so a model sees at inference the crop its training protocol
  makes. dlib's 80-px window at one up-sampling finds faces down to about 40 px wide (:data:`MIN_FACE_PX`).
* Box: square of side ``int(max(w, h) * 1.3)`` centred on the detection, top-left clipped to the frame, side shrunk
  to fit (FF++ ``get_boundingbox``).
* Faster face finding (opt-in; ``emd detect --face-detector``, :data:`FACE_DETECTORS`): ``dlib-fast`` runs the same
  HOG detector without up-sampling (a quarter of the pixels: faces from about 60 px wide) and then re-detects each
  face at training's scale in the region around it (:func:`redetect_near`), so its boxes follow the dlib path's
  convention.
  :func:`redetect_near` is also ``emd detect``'s tracker between full detections.
* Landmarks: dlib's 68-point shape predictor (iBUG 300-W order), whose model file ships in the
  ``face-recognition-models`` package. We only locate its file; importing that package needs ``pkg_resources``.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

CROP_SCALE = 1.3
UPSAMPLE = 1  # dlib up-samplings of the frame before detection (FF++ detect_from_video.py)
MIN_FACE_PX = 40  # dlib's 80×80 HOG window at one up-sampling: smaller faces are not found
MIN_BOX = 8  # pixels; smaller boxes (detections mostly outside the frame) are degenerate
#: Face detectors :func:`find_faces` offers: ``dlib`` (training's protocol; what ``prepare`` uses) and ``dlib-fast``.
FACE_DETECTORS = ("dlib", "dlib-fast")
FAST_UPSAMPLE = 0  # dlib-fast's full-frame pass: no up-sampling; faces narrower than about 60 px are missed
#: :func:`redetect_near` searches the face's rectangle grown by this share of its larger side on every side.
REGION_PAD = 0.5


@dataclass(frozen=True)
class Box:
    """A square crop box in pixel coordinates: ``frame[y:y+size, x:x+size]``."""

    x: int
    y: int
    size: int

    def crop(self, image: np.ndarray) -> np.ndarray:
        return image[self.y : self.y + self.size, self.x : self.x + self.size]

    def as_list(self) -> list[int]:
        return [self.x, self.y, self.size]


@functools.lru_cache(maxsize=1)
def _detector():
    import dlib

    return dlib.get_frontal_face_detector()


def predictor_path() -> Path:
    """Path of ``shape_predictor_68_face_landmarks.dat`` inside the installed ``face-recognition-models`` package."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("face-recognition-models is not installed: pip install face-recognition-models")
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / "shape_predictor_68_face_landmarks.dat"
    if not path.is_file():
        raise RuntimeError(f"{path}: 68-point predictor missing from the face-recognition-models package")
    return path


@functools.lru_cache(maxsize=1)
def _predictor():
    import dlib

    return dlib.shape_predictor(str(predictor_path()))


def _grey(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        return np.ascontiguousarray(image)
    return cv2.cvtColor(np.ascontiguousarray(image[..., :3]), cv2.COLOR_RGB2GRAY)


def detect_faces(image: np.ndarray, upsample: int = UPSAMPLE) -> list[tuple[int, int, int, int]]:
    """dlib frontal detections on an RGB (or grey) uint8 image as ``(left, top, right, bottom)``, largest first."""
    rects = _detector()(_grey(image), upsample)
    boxes = [(r.left(), r.top(), r.right(), r.bottom()) for r in rects]
    return sorted(boxes, key=lambda b: -(b[2] - b[0]) * (b[3] - b[1]))


@dataclass(frozen=True)
class Face:
    """A detected face: dlib's rectangle ``(left, top, right, bottom)`` and the FF++ crop box made from it."""

    rect: tuple[int, int, int, int]
    box: Box

    @property
    def usable(self) -> bool:
        """The box is at least :data:`MIN_BOX` pixels (not a detection mostly outside the frame)."""
        return self.box.size >= MIN_BOX


def find_faces(frame: np.ndarray, detector: str = "dlib") -> list[Face]:
    """Every face of an RGB (or grey) uint8 frame as training's protocol finds and crops it, largest first.

    ``detector="dlib"`` (the default, and what ``emd prepare`` uses): dlib's frontal detector on the full-resolution
    grey frame with :data:`UPSAMPLE` up-sampling and FF++'s square box (:func:`crop_box`, 1.3 × the larger side,
    clipped to the frame) — reference-facts §B.4. ``emd prepare`` keeps the largest face, ``emd detect`` scores
    every usable one. Faces narrower than about :data:`MIN_FACE_PX` pixels are not found.

    ``detector="dlib-fast"``: the same detector without up-sampling on the full frame (1.6–4× faster; faces
    narrower than about 60 px are missed), then each face re-detected at training's scale in the
    region around it (:func:`redetect_near`), so the rectangle is the one the ``dlib`` path finds (up to the HOG
    grid's alignment in the region); where that re-detection finds nothing the no-up-sampling rectangle is kept
    (the same detector's convention). Recall against ``dlib``:
    ``results/benchmarks/face_detector_recall.json``. Raises ValueError for another name.
    """
    if detector == "dlib":
        return [Face(r, crop_box(r, frame.shape)) for r in detect_faces(frame, UPSAMPLE)]
    if detector != "dlib-fast":
        raise ValueError(f"unknown face detector {detector!r} (choose from {', '.join(FACE_DETECTORS)})")
    grey = _grey(frame)
    rects: list[tuple[int, int, int, int]] = []
    for proposal in detect_faces(grey, FAST_UPSAMPLE):
        found = redetect_near(grey, proposal)
        rect = found[0] if found is not None else proposal
        if all(iou(rect, r) < 0.5 for r in rects):  # two proposals refined onto the same face count once
            rects.append(rect)
    rects.sort(key=lambda b: -(b[2] - b[0]) * (b[3] - b[1]))
    return [Face(r, crop_box(r, frame.shape)) for r in rects]


def redetect_near(image: np.ndarray, rect: tuple[int, int, int, int],
                  pad: float = REGION_PAD) -> tuple[tuple[int, int, int, int], float] | None:
    """dlib's frontal detector at training's scale (:data:`UPSAMPLE`) on the region around ``rect`` only.

    ``image``: RGB or grey uint8 ``(H, W[, 3])``; ``rect``: ``(left, top, right, bottom)`` pixels, typically the face
    in the previous sampled frame. The region is ``rect`` grown by ``pad`` × its larger side on every side, clipped
    to the image. Returns the detection overlapping ``rect`` most (IoU) as ``(rect in image coordinates, dlib's
    detection score)``, or None when dlib finds no face there (score below its threshold 0) or none that overlaps
    ``rect``. The same detector and scale as :func:`find_faces`, so the rectangle follows the ``dlib`` convention;
    a region is typically a tenth of a 720p frame's pixels.
    """
    h, w = image.shape[:2]
    left, top, right, bottom = rect
    grow = int(round(pad * max(right - left, bottom - top)))
    x0, y0 = max(0, left - grow), max(0, top - grow)
    x1, y1 = min(w, right + grow + 1), min(h, bottom + grow + 1)
    if x1 - x0 < MIN_BOX or y1 - y0 < MIN_BOX:
        return None
    rects, scores, _ = _detector().run(_grey(image[y0:y1, x0:x1]), UPSAMPLE, 0.0)
    best, best_iou = None, 0.0
    for r, score in zip(rects, scores):
        cand = (r.left() + x0, r.top() + y0, r.right() + x0, r.bottom() + y0)
        o = iou(cand, rect)
        if o > best_iou:
            best, best_iou = (cand, float(score)), o
    return best


def iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    """Intersection over union of two ``(left, top, right, bottom)`` rectangles (dlib's inclusive corners), in
    [0, 1]."""
    iw = min(a[2], b[2]) - max(a[0], b[0]) + 1
    ih = min(a[3], b[3]) - max(a[1], b[1]) + 1
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    area = lambda r: (r[2] - r[0] + 1) * (r[3] - r[1] + 1)  # noqa: E731
    return inter / float(area(a) + area(b) - inter)


def crop_box(rect: tuple[int, int, int, int], frame_shape: tuple[int, ...], scale: float = CROP_SCALE) -> Box:
    """FF++'s square box: side ``int(max(w, h) * scale)`` centred on ``rect``, clipped to the frame."""
    left, top, right, bottom = rect
    h, w = frame_shape[:2]
    size = int(max(right - left, bottom - top) * scale)
    cx, cy = (left + right) // 2, (top + bottom) // 2
    x = max(int(cx - size // 2), 0)
    y = max(int(cy - size // 2), 0)
    size = min(w - x, h - y, size)
    return Box(x, y, size)


def landmarks(image: np.ndarray, rect: tuple[int, int, int, int]) -> np.ndarray:
    """68 dlib landmarks ``(68, 2)`` float32 ``(x, y)`` for the face in ``rect``."""
    import dlib

    shape = _predictor()(_grey(image), dlib.rectangle(*map(int, rect)))
    return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32)


def face_box_and_landmarks(image: np.ndarray) -> tuple[tuple[int, int, int, int], np.ndarray] | None:
    """Largest detected face and its landmarks, or None when no face is found."""
    faces = detect_faces(image)
    if not faces:
        return None
    return faces[0], landmarks(image, faces[0])


def resize_crop(crop: np.ndarray, size: int) -> np.ndarray:
    """A face crop (or its mask) at ``size``²: area interpolation when shrinking, bilinear when enlarging — the one
    convention of the face cache (emdlib.data.prepare) and of ``emd detect``."""
    if crop.shape[0] == size and crop.shape[1] == size:
        return np.ascontiguousarray(crop)
    interp = cv2.INTER_AREA if crop.shape[0] > size else cv2.INTER_LINEAR
    return cv2.resize(np.ascontiguousarray(crop), (size, size), interpolation=interp)
