"""``emd detect``: run a trained detector on anyone's videos and images.

The same face pipeline as training (design.md "prepare"): dlib frontal detection, FF++ 1.3× square box, crop resized
to the model's input size, the shared input convention (RGB, ``(x-0.5)/0.5``; ESR input 96×96 BGR [0, 1]). Every face
in a sampled frame is scored, in batches. A video's score is the mean over sampled frames of the most-fake face.

Works with any emdlib checkpoint (safetensors + sidecar, see :mod:`emdlib.models.registry`) and with the official
MesoNet Keras weights (``*.h5``). Bad inputs never stop a batch: each gets a result whose ``error`` says why.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import cv2
import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from emdlib.data.faces import crop_box, detect_faces
from emdlib.data.transforms import esr_input, to_tensor, xception_input
from emdlib.data.video import VIDEO_EXTENSIONS, VideoError, write_video
from emdlib.io import atomic_path, write_json

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
DETECT_MAX_SIDE = 1280  # larger frames are detected on a down-scaled copy (boxes mapped back)


@dataclass
class MediaResult:
    """Detections of one input file: one row per sampled frame and face, or an ``error`` saying why none."""

    path: Path
    kind: str  # video | image | unknown
    rows: pd.DataFrame = field(default_factory=pd.DataFrame)
    frames_total: int = 0
    frames_sampled: int = 0
    score: float = float("nan")  # video/image-level fake probability
    error: str | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None

    def summary(self) -> str:
        if self.error:
            return f"{self.path}: ERROR {self.error}"
        faces = len(self.rows)
        if faces == 0:
            return f"{self.path}: {self.kind}, {self.frames_sampled} frames sampled, no face found"
        verdict = "FAKE" if self.score >= 0.5 else "real"
        return f"{self.path}: {self.kind}, {self.frames_sampled} frames, {faces} faces, p(fake)={self.score:.3f} → {verdict}"


class Detector:
    """A model plus its input convention; ``score_faces`` maps face crops to (p_fake, mask probability)."""

    def __init__(self, model: torch.nn.Module, image_size: int, device: str | None = None, batch_size: int = 32):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.to(self.device).eval()
        self.image_size = int(image_size)
        self.batch_size = int(batch_size)

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | None = None, batch_size: int = 32) -> "Detector":
        """Load an emdlib checkpoint (``.safetensors``) or official MesoNet weights (``.h5``)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: checkpoint not found")
        if path.suffix == ".h5":
            from emdlib.baselines.mesonet import mesonet_from_h5

            model = mesonet_from_h5(path)
            return cls(model, 256, device, batch_size)
        from emdlib.models.registry import model_from_checkpoint

        model, meta = model_from_checkpoint(path)
        size = meta.get("image_size") or meta.get("config", {}).get("image_size")
        if not size:
            raise ValueError(f"{path}: sidecar has no image_size")
        return cls(model, int(size), device, batch_size)

    @torch.no_grad()
    def score_faces(self, crops: Sequence[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray | None]]:
        """Fake probability and predicted mask (probabilities at crop size, or None) for RGB uint8 face crops."""
        probs: list[np.ndarray] = []
        masks: list[np.ndarray | None] = []
        for start in range(0, len(crops), self.batch_size):
            chunk = crops[start : start + self.batch_size]
            batch = np.stack([cv2.resize(c, (self.image_size, self.image_size), interpolation=cv2.INTER_AREA) for c in chunk])
            rgb01 = to_tensor(batch).to(self.device)
            out = self.model(xception_input(rgb01), esr_input(rgb01))
            probs.append(torch.softmax(out["logits"].float(), dim=1)[:, 1].cpu().numpy())
            ml = out.get("mask_logits")
            if ml is None:
                masks.extend([None] * len(chunk))
            else:
                mp = torch.sigmoid(ml.float())[:, 0].cpu().numpy()
                masks.extend(cv2.resize(m, (c.shape[1], c.shape[0])) for m, c in zip(mp, chunk))
        return (np.concatenate(probs) if probs else np.zeros(0)), masks


def iter_media(paths: Iterable[str | os.PathLike]) -> Iterator[Path]:
    """Files named directly, and every file under named folders (sorted); missing paths are yielded as-is."""
    for p in map(Path, paths):
        if p.is_dir():
            yield from sorted(q for q in p.rglob("*") if q.is_file() and not q.name.startswith("."))
        else:
            yield p


def media_kind(path: Path) -> str:
    ext = path.suffix.lower()
    return "video" if ext in VIDEO_EXTENSIONS else "image" if ext in IMAGE_EXTENSIONS else "unknown"


def read_image(path: Path) -> np.ndarray:
    """Read any still image as RGB uint8: grey, RGBA and 16-bit images are converted; errors name the file."""
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: empty file (0 bytes)")
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ValueError(f"{path}: not a readable image (corrupt or unsupported format)")
    if img.dtype == np.uint16:
        img = (img / 257.0).round().astype(np.uint8)
    elif img.dtype != np.uint8:
        img = cv2.normalize(img.astype(np.float32), None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    if img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def find_faces(frame: np.ndarray, max_side: int = DETECT_MAX_SIDE) -> list[tuple[int, int, int, int]]:
    """All dlib detections in ``frame``; frames larger than ``max_side`` are detected on a down-scaled copy."""
    h, w = frame.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    small = frame if scale == 1.0 else cv2.resize(frame, (int(w * scale), int(h * scale)), interpolation=cv2.INTER_AREA)
    return [tuple(int(round(v / scale)) for v in rect) for rect in detect_faces(small)]


def _video_frames(path: Path, fps: float | None, every: int | None) -> tuple[Iterator[tuple[int, np.ndarray, bool]], int, float]:
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        cap.release()
        raise VideoError(f"{path}: cannot be opened as a video (not a media file or truncated)")
    native = cap.get(cv2.CAP_PROP_FPS) or 30.0
    step = every or (max(1, int(round(native / fps))) if fps else 1)

    def gen() -> Iterator[tuple[int, np.ndarray, bool]]:
        i = 0
        try:
            while True:
                ok, frame = cap.read()
                if not ok:
                    break
                yield i, cv2.cvtColor(frame, cv2.COLOR_BGR2RGB), i % step == 0
                i += 1
        finally:
            cap.release()

    return gen(), step, native


def overlay(frame: np.ndarray, faces: Sequence[dict]) -> np.ndarray:
    """Draw each face's box and score, and its predicted mask as a heat-map inside the box."""
    out = frame.copy()
    for f in faces:
        x, y, s = f["box_x"], f["box_y"], f["box_size"]
        mask = f.get("_mask")
        if mask is not None and s > 0:
            heat = cv2.applyColorMap((np.clip(mask, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
            region = out[y : y + s, x : x + s]
            heat = cv2.resize(heat, (region.shape[1], region.shape[0]))
            alpha = (0.45 * np.clip(cv2.resize(mask, (region.shape[1], region.shape[0])), 0, 1))[..., None]
            region[:] = (region * (1 - alpha) + heat * alpha).astype(np.uint8)
        colour = (220, 40, 40) if f["p_fake"] >= 0.5 else (40, 200, 40)
        cv2.rectangle(out, (x, y), (x + s - 1, y + s - 1), colour, max(1, s // 80))
        cv2.putText(out, f"fake {f['p_fake']:.2f}", (x, max(12, y - 4)), cv2.FONT_HERSHEY_SIMPLEX,
                    max(0.35, s / 400), colour, 1, cv2.LINE_AA)
    return out


def detect_file(
    path: str | Path,
    detector: Detector,
    fps: float | None = None,
    every: int | None = None,
    overlay_path: str | Path | None = None,
) -> MediaResult:
    """Detect and score every face in the sampled frames of one video or image; never raises for bad input."""
    path = Path(path)
    kind = media_kind(path)
    res = MediaResult(path=path, kind=kind)
    if not path.is_file():
        res.error = "no such file"
        return res
    if kind == "unknown":
        res.error = f"not a supported image or video ({path.suffix or 'no extension'})"
        return res
    t = {"decode": 0.0, "detect": 0.0, "network": 0.0, "write": 0.0}
    rows: list[dict] = []
    try:
        if path.stat().st_size == 0:
            raise ValueError("empty file (0 bytes)")
        if kind == "image":
            t0 = time.perf_counter()
            frames = iter([(0, read_image(path), True)])
            t["decode"] += time.perf_counter() - t0
        else:
            frames, _, _ = _video_frames(path, fps, every)
        annotated: list[np.ndarray] = []
        last_faces: list[dict] = []
        while True:
            t0 = time.perf_counter()
            item = next(frames, None)
            t["decode"] += time.perf_counter() - t0
            if item is None:
                break
            idx, frame, sampled = item
            res.frames_total += 1
            if sampled:
                res.frames_sampled += 1
                t0 = time.perf_counter()
                boxes = [crop_box(rect, frame.shape) for rect in find_faces(frame)]
                boxes = [b for b in boxes if b.size > 0]
                t["detect"] += time.perf_counter() - t0
                t0 = time.perf_counter()
                probs, masks = detector.score_faces([b.crop(frame) for b in boxes]) if boxes else (np.zeros(0), [])
                t["network"] += time.perf_counter() - t0
                last_faces = []
                for k, (b, p, m) in enumerate(zip(boxes, probs, masks)):
                    row = {"frame": idx, "face": k, "box_x": b.x, "box_y": b.y, "box_size": b.size,
                           "p_fake": float(p), "mask_area": float((m > 0.5).mean()) if m is not None else float("nan")}
                    rows.append(row)
                    last_faces.append({**row, "_mask": m})
            if overlay_path is not None:
                annotated.append(overlay(frame, last_faces))
        if res.frames_total == 0:
            raise VideoError("no decodable frames")
        if overlay_path is not None and annotated:
            t0 = time.perf_counter()
            _write_overlay(Path(overlay_path), annotated, kind)
            t["write"] += time.perf_counter() - t0
    except (VideoError, ValueError, cv2.error) as e:
        res.error = str(e).replace(f"{path}: ", "")
    res.rows = pd.DataFrame(rows, columns=["frame", "face", "box_x", "box_y", "box_size", "p_fake", "mask_area"])
    if len(res.rows):
        res.score = float(res.rows.groupby("frame")["p_fake"].max().mean())
    res.timings = {k: round(v, 4) for k, v in t.items()}
    return res


def _write_overlay(path: Path, frames: list[np.ndarray], kind: str) -> None:
    if kind == "image":
        with atomic_path(path, suffix=path.suffix or ".png") as tmp:
            cv2.imwrite(str(tmp), cv2.cvtColor(frames[0], cv2.COLOR_RGB2BGR))
        return
    h, w = frames[0].shape[:2]
    if h % 2 or w % 2:  # yuv420p needs even sides: pad by one pixel, never resample
        frames = [np.pad(f, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge") for f in frames]
    write_video(path, frames, crf=18)


def detect(
    paths: Iterable[str | os.PathLike],
    checkpoint: str | Path,
    out_dir: str | Path | None = None,
    fps: float | None = None,
    every: int | None = None,
    overlay_videos: bool = False,
    device: str | None = None,
    batch_size: int = 32,
) -> list[MediaResult]:
    """Run ``emd detect``: score every input; write ``<name>.csv``/``.json`` (and an overlay) per input to ``out_dir``."""
    detector = Detector.from_checkpoint(checkpoint, device=device, batch_size=batch_size)
    results = []
    files = list(iter_media(paths))
    for path in tqdm(files, desc="detect", unit="file", disable=len(files) < 2):
        ov = None
        if overlay_videos and out_dir is not None:
            ov = Path(out_dir) / (f"{path.stem}_overlay" + (".mp4" if media_kind(path) == "video" else ".png"))
        res = detect_file(path, detector, fps=fps, every=every, overlay_path=ov)
        if out_dir is not None:
            _write_result(Path(out_dir), res)
        results.append(res)
    return results


def _write_result(out_dir: Path, res: MediaResult) -> None:
    base = out_dir / res.path.stem
    if res.ok:
        with atomic_path(base.with_suffix(".csv")) as tmp:
            res.rows.to_csv(tmp, index=False)
    write_json(base.with_suffix(".json"), {
        "path": str(res.path), "kind": res.kind, "error": res.error, "frames_total": res.frames_total,
        "frames_sampled": res.frames_sampled, "faces": len(res.rows), "score": res.score,
        "timings_s": res.timings, "rows": res.rows.to_dict(orient="records"),
    })
