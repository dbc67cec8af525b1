"""Video reading and H.264 writing, as FF++ (reference-facts §B.2).

Frames are RGB ``uint8`` arrays ``(H, W, 3)`` everywhere in emdlib.

Reading (:func:`open_video`, :func:`count_frames`, :func:`read_frames`, :func:`count_and_read`, :func:`iter_frames`)
-----------------------------------------------------------------------------------------------------------------
Everything a reader reports — how many frames, at which times, of which size — is **what the decoder delivers**,
never the container header: a clip cut losslessly (an MP4 edit list: the header counts 127 frames, 27 play), a
truncated file, a variable-frame-rate phone clip and a rotated one (display matrix) all give the frames that play,
upright, with their presentation times.

* Decoder: OpenCV's FFmpeg backend first (what every face cache was built with), and PyAV (FFmpeg's libraries,
  https://pyav.basswood-io.com) for what OpenCV's build cannot decode (e.g. AV1: OpenCV's wheel has no AV1 decoder,
  PyAV's has dav1d). Both share FFmpeg 8's libavcodec and libswscale, and decode an H.264 clip to the same bytes
  (tests/bad_inputs/test_media.py checks it). PyAV frames are turned upright with their display matrix, as OpenCV
  does by itself.
* A file neither can decode gets a :class:`VideoError` saying why — no video stream, an unknown codec (named), a
  codec without a decoder here (named), an MP4 whose index is missing — from FFmpeg's own diagnosis (:func:`probe`).

Writing (:func:`write_video`): libx264 at a given crf (23 = FF++ c23, 40 = c40), yuv420p; masks losslessly
(libx264rgb, qp 0) so that a mask read back is bit-identical to the one written; always through a temporary file.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import cv2
import numpy as np

from emdlib.data.media import check_readable
from emdlib.io import atomic_path

log = logging.getLogger(__name__)
# OpenCV's FFmpeg backend prints decoder complaints (e.g. "[av1] Failed to get pixel format") on stderr before
# PyAV takes over; its messages are not needed: failures are reported with their reasons
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
FPS = 30


class VideoError(ValueError):
    """A video that cannot be read; the message names the file and the problem."""


@dataclass(frozen=True)
class VideoFrame:
    """One decoded frame: display ``index`` (0-based, in the order frames play), presentation time ``time_s``
    (seconds from the stream's start, as the decoder stamps it) and the RGB uint8 pixels (None when not asked for)."""

    index: int
    time_s: float
    rgb: np.ndarray | None


@dataclass(frozen=True)
class StreamInfo:
    """What the container *declares* about its first video stream (FFmpeg's probe through PyAV).

    Only for messages and plausibility checks — never for frame counts or times. ``declared_frames`` is 0 when the
    header does not say; ``declared_duration_s`` and ``declared_fps`` are NaN when unknown.
    """

    container: str
    codec: str
    pix_fmt: str
    width: int
    height: int
    declared_frames: int
    declared_duration_s: float
    declared_fps: float

    def describe(self) -> str:
        fmt = f" {self.pix_fmt}" if self.pix_fmt != "?" else ""
        return f"{self.codec}{fmt} {self.width}x{self.height} in {self.container}"


@contextlib.contextmanager
def _ffmpeg_log() -> Iterator[list]:
    """Capture FFmpeg's warnings and errors (PyAV keeps them silent by default) while opening a file."""
    import av.logging

    old, old_skip = av.logging.get_level(), av.logging.get_skip_repeated()
    av.logging.set_level(av.logging.WARNING)
    av.logging.set_skip_repeated(False)  # the same file must get the same message every time
    try:
        with av.logging.Capture() as logs:
            yield logs
    finally:
        av.logging.set_level(old)
        av.logging.set_skip_repeated(old_skip)


def _ffmpeg_says(logs: list, err: BaseException | None = None) -> str:
    lines = [str(m).strip().splitlines()[0] for _, _, m in logs if str(m).strip()]
    if not lines and err is not None:
        lines = [str(err).split("; last error log:")[-1].strip()]
    return "; ".join(dict.fromkeys(lines))  # unique, in order


def probe(path: str | os.PathLike) -> StreamInfo:
    """The container's description of the first video stream (no frame is decoded).

    Raises :class:`VideoError` naming the file and the problem: data in no container format, an MP4/MOV without its index
    (moov atom: truncated file), no video stream (and which streams there are), an unknown codec (its tag) or a
    codec for which this FFmpeg build has no decoder.
    """
    try:
        return _probe(Path(path))
    except VideoError as e:
        raise VideoError(f"{path}: {e}") from None


def _probe(path: Path) -> StreamInfo:
    import av

    check_readable(path, VideoError)
    with _ffmpeg_log() as logs:
        try:
            container = av.open(str(path))
        except av.error.FFmpegError as e:
            said = _ffmpeg_says(logs, e)
            if "moov atom not found" in said and "low score" not in said:
                raise VideoError("not a playable video: its MP4/MOV index (moov atom) is missing — the file is "
                                 f"truncated (download or copy cut short?) (FFmpeg: {said})") from None
            raise VideoError(f"not a video: the data are in no container format FFmpeg can read (FFmpeg: {said})") \
                from None
    with container:
        if not container.streams.video:
            others = ", ".join(f"{s.type} {s.codec_context.name if s.codec_context else '?'}"
                               for s in container.streams) or "none"
            raise VideoError(f"no video stream in this {container.format.name} file (streams: {others})")
        s = container.streams.video[0]
        cc = s.codec_context
        if cc is None:
            said = _ffmpeg_says(logs)
            tag = re.search(r"Video: ([^,]*)", said)
            raise VideoError(f"unknown video codec ({tag.group(1) if tag else 'no codec id'}): neither OpenCV nor "
                             f"FFmpeg {_ffmpeg_version()} (PyAV) has a decoder for it")
        rate = float(s.average_rate or s.guessed_rate or 0) or float("nan")
        dur = (float(s.duration * s.time_base) if s.duration else
               float(container.duration) / 1e6 if container.duration else float("nan"))
        return StreamInfo(container.format.name, cc.name, str(cc.pix_fmt or "?"), int(cc.width or 0),
                          int(cc.height or 0), int(s.frames or 0), dur, rate)


def _ffmpeg_version() -> str:
    import av

    major, minor, _ = av.library_versions.get("libavcodec", (0, 0, 0))
    return f"libavcodec {major}.{minor}"


class VideoReader:
    """The frames of one video, in display order, as the decoder delivers them (see the module docstring).

    The ``backend`` argument is ``"auto"`` (OpenCV, then PyAV) or one of the two (for comparisons); afterwards
    :attr:`backend` is the one decoding (``"opencv"`` or ``"pyav"``) and :attr:`info` the container's declarations
    (:class:`StreamInfo`; probed when first asked for if OpenCV decodes the file, as most readers never need it).
    Use as a context manager or call :meth:`close`; iterate :meth:`frames` once. Raises :class:`VideoError` when no
    frame can be decoded, with the reason.
    """

    def __init__(self, path: str | os.PathLike, backend: str = "auto"):
        if backend not in ("auto", "opencv", "pyav"):
            raise ValueError(f"backend must be 'auto', 'opencv' or 'pyav', got {backend!r}")
        self.path = Path(path)
        self.problem: str | None = None  # why decoding stopped early (PyAV decoder error), if it did
        self._cap: cv2.VideoCapture | None = None
        self._container = None
        self._info: StreamInfo | None = None
        try:
            self._open(backend)
        except VideoError as e:
            self.close()
            raise VideoError(f"{self.path}: {e}") from None

    def _open(self, backend: str) -> None:
        # PyAV and OpenCV share FFmpeg's demuxers: a file PyAV cannot probe (no container, no video stream, unknown
        # codec) OpenCV cannot open either, and the probe says why; a file OpenCV decodes needs no probe to open
        check_readable(self.path, VideoError)
        if backend != "pyav":
            cap = cv2.VideoCapture(str(self.path), cv2.CAP_FFMPEG)
            if cap.isOpened() and cap.grab():
                self._cap, self.backend = cap, "opencv"
                return
            cap.release()
        self._info = _probe(self.path)
        if backend == "opencv":
            raise VideoError(f"OpenCV cannot decode this {self.info.describe()} stream")
        log.debug("%s: OpenCV cannot decode %s; decoding with PyAV", self.path, self.info.describe())
        self._open_pyav()

    def _open_pyav(self) -> None:
        import av

        self.backend = "pyav"
        assert self.info is not None
        container = av.open(str(self.path))
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        self._start = float(stream.start_time * stream.time_base) if stream.start_time is not None else None
        self._decoded = self._pyav_frames(container, stream)
        self._container = container
        try:
            self._first = next(self._decoded)
        except StopIteration:
            why = f" ({self.problem})" if self.problem else ""
            raise VideoError(f"no frame of the {self.info.describe()} stream could be decoded{why}"
                             + (f" although the header announces {self.info.declared_frames}"
                                if self.info.declared_frames else "") + ": the file is truncated or damaged") \
                from None

    @property
    def info(self) -> StreamInfo:
        """What the container declares (:class:`StreamInfo`; :func:`probe`); raises :class:`VideoError` (the reader
        is closed then) for a file OpenCV decodes but FFmpeg's probe through PyAV rejects."""
        if self._info is None:
            try:
                self._info = _probe(self.path)
            except VideoError as e:
                self.close()
                raise VideoError(f"{self.path}: {e}") from None
        return self._info

    def declared_frames(self) -> int:
        """The frame count the container declares (0 when unknown) — a hint, never a count: OpenCV's reading of the
        header while OpenCV decodes (no probe), else the probe's. Call it before :meth:`frames`."""
        if self._cap is not None:
            return max(0, int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT)))
        return self.info.declared_frames

    def _pyav_frames(self, container, stream) -> Iterator:
        import av

        try:
            for frame in container.decode(stream):
                yield frame
        except av.error.FFmpegError as e:
            self.problem = f"decoder error: {e}"
        except Exception as e:  # e.g. a codec PyAV knows but cannot set up
            self.problem = f"{type(e).__name__}: {e}"

    def frames(self, want: Callable[[int, float], bool] | None = None) -> Iterator[VideoFrame]:
        """Yield every decoded frame; the pixels only where ``want(index, time_s)`` is true (all when None)."""
        try:
            if self._cap is not None:
                yield from self._opencv_frames(want)
            else:
                yield from self._pyav_iter(want)
        finally:
            self.close()

    def _opencv_frames(self, want):
        cap, i = self._cap, 0
        grabbed = True  # the first frame was grabbed when opening
        while grabbed:
            t = max(0.0, cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0)
            rgb = None
            if want is None or want(i, t):
                ok, bgr = cap.retrieve()
                if ok and bgr is not None:
                    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            yield VideoFrame(i, t, rgb)
            i += 1
            grabbed = cap.grab()

    def _pyav_iter(self, want):
        first, i = self._first, 0
        t0 = self._start
        for frame in _chain(first, self._decoded):
            if frame.time is not None:
                t0 = frame.time if t0 is None else t0
                t = max(0.0, frame.time - t0)
            else:
                t = i / (self.info.declared_fps if self.info and self.info.declared_fps > 0 else 25.0)
            rgb = None
            if want is None or want(i, t):
                rgb = frame.to_ndarray(format="rgb24")
                k = (int(round(getattr(frame, "rotation", 0) or 0)) // 90) % 4
                rgb = np.ascontiguousarray(np.rot90(rgb, k)) if k else rgb
            yield VideoFrame(i, t, rgb)
            i += 1

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None
        if self._container is not None:
            self._container.close()
            self._container = None

    def __enter__(self) -> "VideoReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_video(path: str | os.PathLike, backend: str = "auto") -> VideoReader:
    """Open a video for decoding (:class:`VideoReader`); raises :class:`VideoError` with the reason."""
    return VideoReader(path, backend)


def count_frames(path: str | os.PathLike) -> int:
    """Number of frames the decoder delivers (the container header is not trusted: edit lists, truncation).

    Raises :class:`VideoError` when the file cannot be decoded at all.
    """
    with open_video(path) as video:
        return sum(1 for _ in video.frames(lambda i, t: False))


def iter_frames(path: str | os.PathLike) -> Iterator[np.ndarray]:
    """Yield every frame of a video as RGB uint8, upright, in display order."""
    with open_video(path) as video:
        for f in video.frames():
            if f.rgb is not None:
                yield f.rgb


def read_frames(path: str | os.PathLike, indices: Sequence[int] | None = None) -> dict[int, np.ndarray]:
    """Decode the frames at ``indices`` (display order; all frames when None); return ``{index: RGB uint8}``.

    Frames past the end of the decoded stream are absent from the result, so callers can record them as unreadable.
    Frames are decoded sequentially (seeking is unreliable for H.264) and decoding stops after the last wanted one.
    Raises :class:`VideoError` when the file cannot be decoded at all.
    """
    wanted = None if indices is None else set(int(i) for i in indices)
    last = None if wanted is None else (max(wanted) if wanted else -1)
    out: dict[int, np.ndarray] = {}
    with open_video(path) as video:
        for f in video.frames(None if wanted is None else (lambda i, t: i in wanted)):
            if f.rgb is not None:
                out[f.index] = f.rgb
            if last is not None and f.index >= last:
                break
    return out


def count_and_read(path: str | os.PathLike,
                   choose: Callable[[int], Iterable[int]]) -> tuple[int, dict[int, np.ndarray]]:
    """Count the frames a video decodes to (:func:`count_frames`) and decode the frames at ``choose(n)``
    (:func:`read_frames`), in one decoding pass when the container declares the right frame count.

    ``choose`` maps a frame count ``n`` to the display indices wanted (e.g. evenly spaced samples). The pass decodes
    every frame to count them, keeping the pixels of ``choose(declared)`` where ``declared`` is the header's count;
    only when the decoded count differs (an edit list, a truncated file: module docstring) are the frames of
    ``choose(n)`` that were not kept decoded in a second pass. Returns ``(n, {index: RGB uint8 (H, W, 3)})``, with
    exactly the frames :func:`read_frames` gives for ``choose(n)`` (undecodable ones absent) and the ``n`` of
    :func:`count_frames`. Raises :class:`VideoError` when the file cannot be decoded at all.
    """
    out: dict[int, np.ndarray] = {}
    with open_video(path) as video:
        declared = video.declared_frames()
        guess = set(int(i) for i in choose(declared)) if declared > 0 else set()
        n = 0
        for f in video.frames(lambda i, t: i in guess):
            if f.rgb is not None:
                out[f.index] = f.rgb
            n = f.index + 1
    wanted = set(int(i) for i in choose(n))
    late = sorted(i for i in wanted - guess if i < n)
    if late:
        log.debug("%s: %d frames decoded, header declares %d; decoding %d sampled frames again", path, n,
                  declared, len(late))
        out.update(read_frames(path, late))
    return n, {i: out[i] for i in sorted(wanted) if i in out}


def frame_times(path: str | os.PathLike) -> np.ndarray:
    """Presentation times (seconds from the stream's start) of every decoded frame, ``(N,)`` float64."""
    with open_video(path) as video:
        return np.array([f.time_s for f in video.frames(lambda i, t: False)], dtype=np.float64)


def mean_fps(times: Sequence[float]) -> float:
    """Mean frame rate of decoded frames from their presentation times: ``(N - 1) / (t_last - t_first)``
    (NaN for fewer than two frames or a zero span). Holds for variable frame rates, unlike a header's rate."""
    if len(times) < 2:
        return float("nan")
    span = float(times[-1]) - float(times[0])
    return (len(times) - 1) / span if span > 0 and math.isfinite(span) else float("nan")


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


def _chain(first, rest: Iterator) -> Iterator:
    yield first
    yield from rest


def shortfall_note(info: StreamInfo | None, times: Sequence[float], problem: str | None = None) -> str | None:
    """A warning when the decoded frames end well before the duration the container declares (a file cut short or
    damaged), or when the decoder stopped on an error; None otherwise.

    The frames' span is ``t_last + one median frame interval``; it must fall short of the declared duration by more
    than ``max(0.25 s, 3 intervals)``, so that an edit-list trim (whose declared duration is the trimmed one) and a
    variable frame rate are not called damaged.
    """
    if problem:
        return f"decoding stopped after {len(times)} frames: {problem}"
    if info is None or not len(times) or not math.isfinite(info.declared_duration_s):
        return None
    step = float(np.median(np.diff(times))) if len(times) > 1 else 0.0
    span = float(times[-1]) + step
    if info.declared_duration_s - span > max(0.25, 3 * step):
        return (f"decoded frames cover {span:.2f} s of the {info.declared_duration_s:.2f} s the container declares "
                f"({len(times)} frames): the file looks truncated or damaged")
    return None
