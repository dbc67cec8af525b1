"""Video reading (OpenCV) and H.264 writing (ffmpeg from ``imageio-ffmpeg``), as FF++ (reference-facts §B.2).

Frames are RGB ``uint8`` arrays ``(H, W, 3)`` everywhere in emdlib. Compressed videos are libx264 at a given crf
(23 = FF++ c23, 40 = c40), 30 fps, yuv420p; masks are written losslessly (libx264rgb, qp 0) so that a mask read
back is bit-identical to the one written.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import cv2
import numpy as np

from emdlib.io import atomic_path

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv")
FPS = 30


class VideoError(ValueError):
    """A video that cannot be read; the message names the file and the problem."""


def _open(path: str | os.PathLike) -> cv2.VideoCapture:
    path = Path(path)
    if not path.is_file():
        raise VideoError(f"{path}: no such video file")
    if path.stat().st_size == 0:
        raise VideoError(f"{path}: empty file (0 bytes)")
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        cap.release()
        raise VideoError(f"{path}: cannot be opened as a video (not a media file or truncated)")
    return cap


def count_frames(path: str | os.PathLike) -> int:
    """Number of decodable frames, counted by decoding (container headers lie for truncated files)."""
    cap = _open(path)
    n = 0
    try:
        while cap.grab():
            n += 1
    finally:
        cap.release()
    if n == 0:
        raise VideoError(f"{path}: no decodable frames")
    return n


def iter_frames(path: str | os.PathLike) -> Iterator[np.ndarray]:
    """Yield every frame of a video as RGB uint8."""
    cap = _open(path)
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
    finally:
        cap.release()


def read_frames(path: str | os.PathLike, indices: Sequence[int] | None = None) -> dict[int, np.ndarray]:
    """Decode the frames at ``indices`` (all frames when None) sequentially; return ``{index: RGB uint8}``.

    Frames past the end of a (possibly truncated) video are simply absent from the result, so callers can record
    them as unreadable. Sequential grab/retrieve is used instead of seeking, which is unreliable for H.264.
    """
    wanted = None if indices is None else set(int(i) for i in indices)
    last = None if wanted is None else (max(wanted) if wanted else -1)
    out: dict[int, np.ndarray] = {}
    cap = _open(path)
    try:
        i = 0
        while last is None or i <= last:
            if not cap.grab():
                break
            if wanted is None or i in wanted:
                ok, frame = cap.retrieve()
                if ok:
                    out[i] = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            i += 1
    finally:
        cap.release()
    if not out and (wanted is None or wanted):
        raise VideoError(f"{path}: no decodable frames")
    return out


def write_video(
    path: str | os.PathLike,
    frames: Iterable[np.ndarray],
    crf: int | None = 23,
    fps: int = FPS,
    lossless: bool = False,
) -> Path:
    """Encode RGB uint8 frames with libx264 at ``crf`` (or losslessly) to ``path``, atomically.

    Frame sides must be even for yuv420p; odd sides are rejected with a clear error rather than silently resized,
    because FF++ masks must stay pixel-aligned with their videos.
    """
    import imageio_ffmpeg

    path = Path(path)
    frames = iter(frames)
    try:
        first = next(frames)
    except StopIteration:
        raise ValueError(f"{path}: no frames to write") from None
    h, w = first.shape[:2]
    if not lossless and (h % 2 or w % 2):
        raise ValueError(f"{path}: frame size {w}x{h} must be even for H.264 yuv420p")
    if lossless:
        codec, pix_out, params = "libx264rgb", "rgb24", ["-qp", "0", "-preset", "veryfast"]
    else:
        codec, pix_out, params = "libx264", "yuv420p", ["-crf", str(int(crf)), "-preset", "veryfast"]
    with atomic_path(path, suffix=path.suffix or ".mp4") as tmp:
        writer = imageio_ffmpeg.write_frames(
            str(tmp), (w, h), fps=fps, codec=codec, pix_fmt_in="rgb24", pix_fmt_out=pix_out,
            output_params=params, macro_block_size=1, quality=None, ffmpeg_log_level="error",
        )
        writer.send(None)
        try:
            for frame in _chain(first, frames):
                if frame.shape[:2] != (h, w):
                    raise ValueError(f"{path}: frame size changed from {w}x{h} to {frame.shape[1]}x{frame.shape[0]}")
                if frame.ndim == 2:
                    frame = np.repeat(frame[..., None], 3, axis=2)
                writer.send(np.ascontiguousarray(frame, dtype=np.uint8))
        finally:
            writer.close()
    return path


def _chain(first: np.ndarray, rest: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    yield first
    yield from rest
