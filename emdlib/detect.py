"""``emd detect``: run a trained detector on anyone's videos and images.

The face pipeline is the one used for training (design.md "prepare", reference-facts §B.4): dlib's frontal detector
on the grey frame with one up-sampling, FF++'s square box of 1.3 × the larger side clipped to the frame, the crop
resized to the model's input size (area interpolation when shrinking, bilinear when enlarging), then the shared
input convention (RGB ``(x - 0.5) / 0.5``; the FER stream gets ESR's 96×96 BGR [0, 1], reference-facts §A.4).
Unlike training, **every** face of a sampled frame is scored, not only the largest. Face crops of many frames are
scored together in batches.

* Frame sampling: every frame (default), every N-th (``every``) or the first frame of each ``1/fps`` second
  (``fps``). Frames larger than ``detect_max_side`` are detected on a down-scaled copy and the boxes mapped back,
  so huge images and 4K videos work; the crop is always taken from the full-resolution frame.
* Per face: fake probability (softmax of the 2-way logits, index 1 = fake, §IV-B) and, for segmenting models
  (EMD, MultiTask), the predicted mask's area: the share of the crop whose mask probability is > 0.5.
* Per input: the score is the mean, over sampled frames with a face, of the most-fake face's probability
  (an image is one frame); ``score >= 0.5`` → FAKE.

Works with any emdlib detector checkpoint (safetensors + sidecar, :mod:`emdlib.registry`) and with the
official MesoNet Keras weights (``*.h5``). Bad inputs never stop a batch: each gets a :class:`MediaResult` whose
``error`` says why (:func:`detect_file` never raises for a bad input).

Notebook use::

    from emdlib.detect import Detector, detect, detect_file
    det = Detector.from_checkpoint("runs/emd/best.safetensors")
    res = detect_file("clip.mp4", det, every=10)
    res.rows            # pandas DataFrame, one row per sampled frame and face
    res.score, res.summary()
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import cv2
import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from emdlib.data.faces import crop_box, detect_faces, resize_crop
from emdlib.data.transforms import esr_input, to_tensor, xception_input
from emdlib.data.video import VIDEO_EXTENSIONS, VideoError, write_video
from emdlib.io import atomic_path, write_csv, write_json

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
DETECT_MAX_SIDE = 1280  # frames with a larger side are detected on a down-scaled copy (boxes mapped back)
FAKE_THRESHOLD = 0.5
MASK_THRESHOLD = 0.5
MAX_PENDING_FRAMES = 64  # with an overlay, frames wait at most this long for their batch to be scored

#: Columns of :attr:`MediaResult.rows` (and of the per-input CSV).
ROW_COLUMNS = ("frame", "time_s", "face", "left", "top", "right", "bottom", "box_x", "box_y", "box_size",
               "p_fake", "mask_area")

#: ``emd detect`` exit codes (documented in ``emd detect --help``).
EXIT_ALL_READ, EXIT_NONE_READ, EXIT_USAGE, EXIT_PARTIAL = 0, 1, 2, 3


class MediaError(ValueError):
    """An input that cannot be read; the message says why (the path is reported beside it)."""


@dataclass
class MediaResult:
    """Detections of one input file: one row per sampled frame and face, or an ``error`` saying why none.

    ``rows`` columns: :data:`ROW_COLUMNS` — ``frame`` index, ``time_s``, ``face`` (0 = largest), the detection
    rectangle ``left/top/right/bottom``, the FF++ crop box ``box_x/box_y/box_size`` fed to the model, ``p_fake`` and
    ``mask_area`` (share of the crop predicted manipulated; NaN for classification-only models).
    """

    path: Path
    kind: str  # video | image | unknown
    rows: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=list(ROW_COLUMNS)))
    frames_total: int = 0
    frames_sampled: int = 0
    frames_with_face: int = 0
    width: int = 0
    height: int = 0
    fps: float = float("nan")
    score: float = float("nan")
    error: str | None = None
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """The input was read (whether or not a face was found)."""
        return self.error is None

    @property
    def faces(self) -> int:
        return len(self.rows)

    @property
    def verdict(self) -> str:
        if not self.ok:
            return "error"
        if self.faces == 0:
            return "no face"
        return "FAKE" if self.score >= FAKE_THRESHOLD else "real"

    def summary(self) -> str:
        """One line for stdout: what was read, how many faces, the score and the verdict (or the error)."""
        if not self.ok:
            return f"{self.path}: ERROR {self.error}"
        what = f"{self.kind} {self.width}x{self.height}"
        if self.kind == "video":
            what += f", {self.frames_total} frames, {self.frames_sampled} sampled"
        if self.faces == 0:
            line = f"{self.path}: {what}, no face found"
        else:
            line = (f"{self.path}: {what}, {self.faces} face{'s' * (self.faces != 1)}, "
                    f"p(fake)={self.score:.3f} -> {self.verdict}")
        if self.warnings:
            line += " (warning: " + "; ".join(self.warnings) + ")"
        return line

    def to_dict(self, with_rows: bool = True) -> dict[str, Any]:
        d = {"path": str(self.path), "kind": self.kind, "ok": self.ok, "error": self.error, "verdict": self.verdict,
             "score": None if math.isnan(self.score) else self.score, "faces": self.faces,
             "frames_total": self.frames_total, "frames_sampled": self.frames_sampled,
             "frames_with_face": self.frames_with_face, "width": self.width, "height": self.height,
             "fps": None if math.isnan(self.fps) else self.fps, "warnings": list(self.warnings),
             "timings_s": dict(self.timings), "outputs": dict(self.outputs)}
        if with_rows:  # NaN (no mask) → null, so the JSON is strict
            d["rows"] = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
                         for r in self.rows.to_dict(orient="records")]
        return d


class Detector:
    """A trained network plus its input convention.

    :meth:`score_faces` maps RGB uint8 face crops (any size; resized to ``image_size``) to fake probabilities and
    predicted masks. The model keeps the detector contract ``model(image, fer_image) -> DetectorOutput``
    (:mod:`emdlib.models.detector`).
    """

    def __init__(self, model: torch.nn.Module, image_size: int, device: str | torch.device | None = None,
                 batch_size: int = 32, name: str = ""):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.to(self.device).eval()
        self.image_size = int(image_size)
        self.batch_size = max(1, int(batch_size))
        self.name = name or type(model).__name__

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: str | None = None, batch_size: int = 32) -> "Detector":
        """Load an emdlib detector checkpoint (``.safetensors`` + sidecar with ``model`` and ``image_size``) or an
        official MesoNet Keras weights file (``.h5``; input 256×256)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: checkpoint not found")
        from emdlib import registry

        if path.suffix.lower() in (".h5", ".hdf5"):
            model = registry.mesonet_from_h5(path)
            return cls(model, registry.MESONET_INPUT_SIZE, device, batch_size, name=path.name)
        model, meta = registry.model_from_checkpoint(path)
        size = meta.get("image_size") or (meta.get("config") or {}).get("image_size")
        if not size:
            raise ValueError(f"{path}: sidecar has no image_size (write checkpoints with registry.save_detector)")
        return cls(model, int(size), device, batch_size, name=path.name)

    def prepare(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """Stack crops resized to ``image_size`` as ``(N, S, S, 3)`` uint8."""
        return np.stack([resize_crop(c, self.image_size) for c in crops])

    @torch.no_grad()
    def score_batch(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """``(N, S, S, 3)`` uint8 crops at ``image_size`` → ``(p_fake (N,), mask probabilities (N, S, S) or None)``."""
        probs, masks = [], []
        for start in range(0, len(batch), self.batch_size):
            rgb01 = to_tensor(batch[start : start + self.batch_size]).to(self.device)
            out = self.model(xception_input(rgb01), esr_input(rgb01))
            probs.append(out.prob.cpu().numpy())
            masks.append(None if out.mask_logits is None else out.mask_prob.cpu().numpy())
        if not probs:
            return np.zeros(0, np.float32), None
        return np.concatenate(probs), (None if any(m is None for m in masks) else np.concatenate(masks))

    def score_faces(self, crops: Sequence[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray | None]]:
        """Fake probability and predicted mask (probabilities at the crop's own size, or None) for RGB uint8 crops."""
        if not len(crops):
            return np.zeros(0, np.float32), []
        probs, masks = self.score_batch(self.prepare(crops))
        if masks is None:
            return probs, [None] * len(crops)
        return probs, [cv2.resize(m, (c.shape[1], c.shape[0]), interpolation=cv2.INTER_LINEAR)
                       for m, c in zip(masks, crops)]


# -- inputs ---------------------------------------------------------------------------------------------------------
def media_kind(path: str | os.PathLike) -> str:
    """``"video"``, ``"image"`` or ``"unknown"`` from the file extension."""
    ext = Path(path).suffix.lower()
    return "video" if ext in VIDEO_EXTENSIONS else "image" if ext in IMAGE_EXTENSIONS else "unknown"


def iter_media(paths: Iterable[str | os.PathLike]) -> Iterator[tuple[Path, Path | None]]:
    """``(file, folder it was found in or None)``: files named directly (whatever their type, so that a wrong one is
    reported), and the image/video files under named folders, recursively and sorted (other files there are
    skipped). Missing paths are yielded as-is so that they get an error row."""
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(q for q in p.rglob("*") if q.is_file() and not q.name.startswith("."))
            media = [q for q in found if media_kind(q) != "unknown"]
            if len(media) < len(found):
                log.info("%s: skipping %d files that are neither images nor videos", p, len(found) - len(media))
            if not media:
                log.warning("%s: folder holds no image or video files", p)
            yield from ((q, p) for q in media)
        else:
            yield p, None


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read any still image as RGB uint8: grey, grey+alpha, RGBA, 16-bit and float images are converted (alpha is
    dropped, 16-bit is scaled by 1/257, float is min-max scaled); errors (:class:`MediaError`) say why."""
    path = Path(path)
    if path.stat().st_size == 0:
        raise MediaError("empty file (0 bytes)")
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise MediaError("not a readable image (corrupt, truncated, unsupported format, "
                         "or more pixels than OpenCV's limit)")
    if img.size == 0:
        raise MediaError("image has no pixels")
    if img.dtype == np.uint16:
        img = (img.astype(np.float32) / 257.0).round().astype(np.uint8)
    elif img.dtype != np.uint8:
        f = img.astype(np.float32)
        lo, hi = float(np.nanmin(f)), float(np.nanmax(f))
        if hi <= lo:
            img = np.zeros(f.shape, np.uint8)
        else:
            img = ((np.nan_to_num(f, nan=lo) - lo) * (255.0 / (hi - lo))).round().astype(np.uint8)
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    channels = img.shape[2]
    if channels == 1:
        return cv2.cvtColor(img[..., 0], cv2.COLOR_GRAY2RGB)
    if channels == 2:  # grey + alpha
        return cv2.cvtColor(np.ascontiguousarray(img[..., 0]), cv2.COLOR_GRAY2RGB)
    if channels == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    if channels == 3:
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    raise MediaError(f"image has {channels} channels; expected grey, RGB or RGBA")


class _Video:
    """A video opened with OpenCV; ``frames(sample)`` yields ``(index, RGB or None, sampled)``; unsampled frames
    are only grabbed (not converted) unless ``decode_all``."""

    def __init__(self, path: Path):
        if path.stat().st_size == 0:
            raise MediaError("empty file (0 bytes)")
        self.cap = cv2.VideoCapture(str(path))
        if not self.cap.isOpened():
            self.cap.release()
            raise MediaError("cannot be opened as a video (not a media file, or truncated)")
        self.fps = float(self.cap.get(cv2.CAP_PROP_FPS) or 0.0)
        if not (self.fps > 0 and math.isfinite(self.fps)):
            self.fps = 25.0
        self.header_frames = int(self.cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self.width = int(self.cap.get(cv2.CAP_PROP_FRAME_WIDTH) or 0)
        self.height = int(self.cap.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0)

    def frames(self, sample: Callable[[int], bool], decode_all: bool) -> Iterator[tuple[int, np.ndarray | None, bool]]:
        i = 0
        try:
            while True:
                sampled = sample(i)
                if sampled or decode_all:
                    ok, frame = self.cap.read()
                    if not ok:
                        break
                    yield i, cv2.cvtColor(frame, cv2.COLOR_BGR2RGB), sampled
                else:
                    if not self.cap.grab():
                        break
                    yield i, None, False
                i += 1
        finally:
            self.cap.release()


def frame_sampler(native_fps: float, fps: float | None = None, every: int | None = None) -> Callable[[int], bool]:
    """Which frame indices are scored: all (default), every ``every``-th from 0, or — with ``fps`` — the first frame
    of each ``1/fps``-second interval (frame ``i`` is at ``i / native_fps`` seconds)."""
    if every is not None and fps is not None:
        raise ValueError("give either fps or every, not both")
    if every is not None:
        if int(every) < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        step = int(every)
        return lambda i: i % step == 0
    if fps is not None:
        if not fps > 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        ratio = float(fps) / float(native_fps)
        if ratio >= 1:
            return lambda i: True
        # small epsilon so that e.g. 25 fps sampled at 5 fps picks frames 0, 5, 10, ... despite float rounding
        return lambda i: i == 0 or math.floor(i * ratio + 1e-9) > math.floor((i - 1) * ratio + 1e-9)
    return lambda i: True


def find_faces(frame: np.ndarray, max_side: int | None = DETECT_MAX_SIDE) -> list[tuple[int, int, int, int]]:
    """All dlib detections in ``frame`` as ``(left, top, right, bottom)``, largest first; a frame larger than
    ``max_side`` is detected on a down-scaled copy and the rectangles mapped back to full resolution."""
    h, w = frame.shape[:2]
    scale = 1.0 if not max_side else min(1.0, max_side / max(h, w))
    if scale < 1.0:
        small = cv2.resize(frame, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
        rects = detect_faces(small)
        return [(max(0, round(l / scale)), max(0, round(t / scale)), min(w, round(r / scale)), min(h, round(b / scale)))
                for l, t, r, b in rects]
    return detect_faces(frame)


# -- overlay --------------------------------------------------------------------------------------------------------
def overlay(frame: np.ndarray, faces: Sequence[dict]) -> np.ndarray:
    """Draw each face's crop box and score (red = fake, green = real) and its predicted mask as a JET heat-map
    blended inside the box (opacity 0.5 × mask probability)."""
    out = frame.copy()
    h, w = out.shape[:2]
    thick = max(1, round(max(h, w) / 400))
    for f in faces:
        if "p_fake" not in f or f["p_fake"] is None:
            continue
        x, y, s = int(f["box_x"]), int(f["box_y"]), int(f["box_size"])
        mask = f.get("_mask")
        if mask is not None and s > 0:
            region = out[y : y + s, x : x + s]
            m = np.clip(cv2.resize(mask.astype(np.float32), (region.shape[1], region.shape[0])), 0, 1)
            heat = cv2.applyColorMap((m * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
            alpha = (0.5 * m)[..., None]
            region[:] = (region * (1 - alpha) + heat * alpha).round().astype(np.uint8)
        colour = (230, 40, 40) if f["p_fake"] >= FAKE_THRESHOLD else (40, 210, 40)
        cv2.rectangle(out, (x, y), (x + s - 1, y + s - 1), colour, thick)
        scale = max(0.4, s / 300)
        label = f"fake {f['p_fake']:.2f}"
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
        ty = y - 4 if y - 4 - th >= 0 else min(h - base, y + s + th + 4)
        cv2.rectangle(out, (x, ty - th - 2), (x + tw + 2, ty + base), colour, -1)
        cv2.putText(out, label, (x + 1, ty), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thick, cv2.LINE_AA)
    return out


def _even(frame: np.ndarray) -> np.ndarray:
    """Pad odd sides by one edge pixel (H.264 yuv420p needs even sides); never resample."""
    h, w = frame.shape[:2]
    if h % 2 or w % 2:
        return np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    return frame


# -- the per-file pipeline --------------------------------------------------------------------------------------------
class _Scorer:
    """Collects face crops of many frames and scores them in batches; frames waiting for an overlay are released
    in order once their faces are scored."""

    def __init__(self, detector: Detector, timings: dict[str, float], keep_frames: bool):
        self.detector = detector
        self.t = timings
        self.keep_frames = keep_frames
        self.crops: list[np.ndarray] = []
        self.faces: list[dict] = []
        self.frames: list[tuple[np.ndarray, list[dict]]] = []
        self.shown: list[dict] = []  # faces drawn on the last overlaid frame (their masks are still needed)

    def add(self, faces: list[dict], crops: list[np.ndarray]) -> None:
        self.faces += faces
        self.crops += crops

    def hold(self, frame: np.ndarray, faces: list[dict]) -> None:
        self.frames.append((frame, faces))

    @property
    def due(self) -> bool:
        return len(self.crops) >= self.detector.batch_size or len(self.frames) >= MAX_PENDING_FRAMES

    def flush(self) -> Iterator[np.ndarray]:
        if self.crops:
            t0 = time.perf_counter()
            probs, masks = self.detector.score_batch(np.stack(self.crops))
            self.t["network"] += time.perf_counter() - t0
            for k, f in enumerate(self.faces):
                f["p_fake"] = float(probs[k])
                if masks is None:
                    f["mask_area"] = float("nan")
                else:
                    f["mask_area"] = float((masks[k] > MASK_THRESHOLD).mean())
                    if self.keep_frames:
                        f["_mask"] = masks[k]
            self.crops, self.faces = [], []
        frames, self.frames = self.frames, []
        for frame, faces in frames:
            if faces is not self.shown:
                # frames are held in order and a sampled frame's faces are shown on a contiguous run of frames:
                # once another list appears the previous one is never drawn again, so its masks (views that pin a
                # whole batch of masks) can go instead of living on in the per-face rows until the file ends
                for f in self.shown:
                    f.pop("_mask", None)
                self.shown = faces
            t0 = time.perf_counter()
            out = overlay(frame, faces)
            self.t["overlay"] += time.perf_counter() - t0
            yield out


def detect_file(
    path: str | os.PathLike,
    detector: Detector,
    fps: float | None = None,
    every: int | None = None,
    overlay_path: str | os.PathLike | None = None,
    detect_max_side: int | None = DETECT_MAX_SIDE,
    progress: bool = True,
) -> MediaResult:
    """Detect and score every face in the sampled frames of one video or image.

    Never raises for a bad input: the returned :class:`MediaResult` then has ``error`` set (and no rows).
    With ``overlay_path`` an annotated copy is written: every frame of a video (unsampled frames show the last
    sampled frame's boxes) at the input's size (odd sides padded by one pixel) and frame rate, or the image.
    """
    path = Path(path)
    res = MediaResult(path=path, kind=media_kind(path))
    t = {"decode": 0.0, "detect": 0.0, "network": 0.0, "overlay": 0.0, "write": 0.0}
    t_start = time.perf_counter()
    rows: list[dict] = []
    try:
        if not path.exists():
            raise MediaError("no such file")
        if not path.is_file():
            raise MediaError("not a regular file")
        if res.kind == "unknown":
            raise MediaError(f"not a supported image or video (extension {path.suffix or '(none)'!r}; images: "
                             f"{' '.join(IMAGE_EXTENSIONS)}; videos: {' '.join(VIDEO_EXTENSIONS)})")
        _run(path, res, detector, fps, every, overlay_path, detect_max_side, progress, t, rows)
    except (MediaError, VideoError, OSError, cv2.error, MemoryError) as e:
        res.error = _reason(e, path)
    except Exception as e:  # a batch must never stop on one input; keep the traceback in the log
        log.exception("%s: unexpected error", path)
        res.error = f"unexpected error: {type(e).__name__}: {_reason(e, path)}"
    if res.error:
        rows = []
        res.outputs.pop("overlay", None)
    res.rows = pd.DataFrame(rows, columns=list(ROW_COLUMNS))  # the columns drop the overlay's private _mask
    if len(res.rows):
        res.score = float(res.rows.groupby("frame")["p_fake"].max().mean())
        res.frames_with_face = int(res.rows["frame"].nunique())
    t["total"] = time.perf_counter() - t_start
    res.timings = {k: round(v, 4) for k, v in t.items()}
    if res.error:
        log.warning("%s: %s", path, res.error)
    for w in res.warnings:
        log.warning("%s: %s", path, w)
    return res


def _reason(e: BaseException, path: Path) -> str:
    msg = str(e).strip() or type(e).__name__
    for prefix in (f"{path}: ", f"{path}:"):
        msg = msg.replace(prefix, "")
    return msg.splitlines()[0] if msg else type(e).__name__


def _run(path: Path, res: MediaResult, detector: Detector, fps: float | None, every: int | None,
         overlay_path: str | os.PathLike | None, max_side: int | None, progress: bool, t: dict[str, float],
         rows: list[dict]) -> None:
    want_overlay = overlay_path is not None
    t0 = time.perf_counter()
    if res.kind == "image":
        img = read_image(path)
        source: Iterator[tuple[int, np.ndarray | None, bool]] = iter([(0, img, True)])
        res.height, res.width = img.shape[:2]
        native = float("nan")
        total = 1
    else:
        video = _Video(path)
        native = video.fps
        res.fps, res.width, res.height = native, video.width, video.height
        source = video.frames(frame_sampler(native, fps, every), decode_all=want_overlay)
        total = video.header_frames if video.header_frames > 0 else None
    t["decode"] += time.perf_counter() - t0
    scorer = _Scorer(detector, t, keep_frames=want_overlay)
    bar = tqdm(total=total, desc=path.name, unit="frame", leave=False,
               disable=not progress or res.kind == "image" or (total or 0) < 200)

    def annotated() -> Iterator[np.ndarray]:
        current: list[dict] = []  # faces of the last sampled frame (shown on the frames that follow)
        while True:
            t0 = time.perf_counter()
            item = next(source, None)
            t["decode"] += time.perf_counter() - t0
            if item is None:
                break
            idx, frame, sampled = item
            bar.update(1)
            res.frames_total += 1
            if frame is not None and (res.width, res.height) == (0, 0):
                res.height, res.width = frame.shape[:2]
            if sampled:
                res.frames_sampled += 1
                t0 = time.perf_counter()
                rects = find_faces(frame, max_side)
                boxes = [crop_box(r, frame.shape) for r in rects]
                t["detect"] += time.perf_counter() - t0
                t0 = time.perf_counter()
                current, crops = [], []
                for k, (r, b) in enumerate((r, b) for r, b in zip(rects, boxes) if b.size > 0):
                    face = {"frame": idx, "time_s": 0.0 if math.isnan(native) else round(idx / native, 4),
                            "face": k, "left": r[0], "top": r[1], "right": r[2], "bottom": r[3],
                            "box_x": b.x, "box_y": b.y, "box_size": b.size, "p_fake": None, "mask_area": None}
                    current.append(face)
                    crops.append(resize_crop(b.crop(frame), detector.image_size))
                rows.extend(current)
                scorer.add(current, crops)
                t["network"] += time.perf_counter() - t0  # crop + resize: the network's input pipeline
            if want_overlay:
                scorer.hold(frame, current)
            if scorer.due:
                yield from scorer.flush()
        yield from scorer.flush()

    try:
        frames = annotated()
        if want_overlay:
            first = next(frames, None)
            if first is None:
                raise MediaError("no decodable frames")
            _write_overlay(Path(overlay_path), first, frames, res, t)
        else:
            for _ in frames:
                pass
    finally:
        bar.close()
    if res.frames_total == 0:
        raise MediaError("no decodable frames (empty or truncated video)")
    if res.kind == "video" and video.header_frames > 0 and res.frames_total < video.header_frames - 1:
        res.warnings.append(f"decoded {res.frames_total} of the {video.header_frames} frames the header announces "
                            "(truncated or damaged file?)")


def _write_overlay(path: Path, first: np.ndarray, rest: Iterator[np.ndarray], res: MediaResult,
                   t: dict[str, float]) -> None:
    t0 = time.perf_counter()
    busy0 = sum(v for k, v in t.items() if k != "write")
    if res.kind == "image":
        with atomic_path(path, suffix=path.suffix or ".png") as tmp:
            if not cv2.imwrite(str(tmp), cv2.cvtColor(first, cv2.COLOR_RGB2BGR)):
                raise MediaError(f"{path}: could not write the overlay image")
    else:
        def timed() -> Iterator[np.ndarray]:
            yield _even(first)
            for f in rest:  # the generator scores frames as the writer pulls them; their time is counted there
                yield _even(f)

        write_video(path, timed(), crf=18, fps=max(1, round(res.fps)))
    # the writer pulls frames through the whole pipeline: count only the time not already booked elsewhere
    busy = sum(v for k, v in t.items() if k != "write") - busy0
    t["write"] += max(0.0, time.perf_counter() - t0 - busy)
    res.outputs["overlay"] = str(path)


# -- batch API --------------------------------------------------------------------------------------------------------
def _output_stem(path: Path, folder: Path | None, used: set[str]) -> str:
    """Output name for an input: its path relative to the named folder (folders mirrored), else its file name; the
    extension is kept (``clip.mp4`` → ``clip.mp4.csv``) and clashes get ``~2``, ``~3``, ..."""
    try:
        rel = path.relative_to(folder).as_posix() if folder is not None else path.name
    except ValueError:
        rel = path.name
    stem, n = rel, 1
    while stem in used:
        n += 1
        stem = f"{rel}~{n}"
    used.add(stem)
    return stem


def overlay_suffix(path: Path) -> str:
    ext = path.suffix.lower()
    if media_kind(path) == "video":
        return ".mp4"
    return ext if ext in (".jpg", ".jpeg", ".png", ".webp") else ".png"


def detect(
    paths: Iterable[str | os.PathLike] | str | os.PathLike,
    checkpoint: str | os.PathLike | Detector,
    out_dir: str | os.PathLike | None = None,
    fps: float | None = None,
    every: int | None = None,
    overlay: bool = False,
    device: str | None = None,
    batch_size: int = 32,
    detect_max_side: int | None = DETECT_MAX_SIDE,
    progress: bool = True,
) -> list[MediaResult]:
    """Score every input (files or folders) with a detector; what ``emd detect`` runs.

    With ``out_dir``, per input ``<name>.csv`` (the rows), ``<name>.json`` (summary, warnings, timings and rows;
    written for failed inputs too, with the error) and, with ``overlay``, ``<name>.overlay.mp4|png``; plus
    ``summary.csv`` with one line per input. ``<name>`` is the input's file name (extension kept), or its path
    relative to the folder it was found in. ``checkpoint`` may be a loaded :class:`Detector`.
    """
    frame_sampler(25.0, fps, every)  # validate (fps or every, not both; positive) before loading anything
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    det = checkpoint if isinstance(checkpoint, Detector) else Detector.from_checkpoint(checkpoint, device, batch_size)
    items = list(iter_media(paths))
    out = Path(out_dir) if out_dir is not None else None
    used: set[str] = set()
    results: list[MediaResult] = []
    for path, folder in tqdm(items, desc="detect", unit="file", disable=not progress or len(items) < 2):
        stem = _output_stem(path, folder, used)
        ov = out / f"{stem}.overlay{overlay_suffix(path)}" if (overlay and out is not None) else None
        res = detect_file(path, det, fps=fps, every=every, overlay_path=ov, detect_max_side=detect_max_side,
                          progress=progress)
        if out is not None:
            _write_result(out, stem, res)
        results.append(res)
    if out is not None:
        summary = pd.DataFrame([{k: v for k, v in r.to_dict(with_rows=False).items()
                                 if k not in ("timings_s", "outputs", "warnings")}
                                | {"warnings": "; ".join(r.warnings), **{f"out_{k}": v for k, v in r.outputs.items()}}
                                for r in results])
        write_csv(out / "summary.csv", summary)
    return results


def _write_result(out: Path, stem: str, res: MediaResult) -> None:
    if res.ok:
        res.outputs["csv"] = str(write_csv(out / f"{stem}.csv", res.rows))
    js = out / f"{stem}.json"
    res.outputs["json"] = str(js)
    write_json(js, res.to_dict(with_rows=True))


def exit_code(results: Sequence[MediaResult]) -> int:
    """``emd detect``'s exit code: 0 every input was read (faces found or not), 3 some were read and some not,
    1 none could be read (or there were no inputs). 2 (usage or checkpoint error) is returned by the CLI itself."""
    read = sum(r.ok for r in results)
    if results and read == len(results):
        return EXIT_ALL_READ
    return EXIT_PARTIAL if read else EXIT_NONE_READ
