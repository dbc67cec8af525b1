"""prepare: sample frames, detect the face on the pristine video, crop ×1.3, crop the mask the same way, and cache
uint8 crops plus a manifest (design.md "prepare"; paper §IV-A; reference-facts §B.3, §B.4, §B.6).

Protocol
--------
* **Frames** (paper §IV-A): ``cfg.train_frames`` per training video (paper: 200), ``cfg.eval_frames`` per
  validation/test video (paper: 10), evenly spaced: frame ``floor((i + 0.5) * n / k)`` for ``i < k`` — the centres
  of ``k`` equal segments of the ``n`` frames the decoder delivers (:func:`frame_count`; never the container header,
  which counts frames an edit list hides and frames a truncated file lost); all frames when ``n <= k``. A fake is sampled over its own frame count (FaceSwap fakes can be shorter, §B.6).
* **Faces** (§B.4): ``faces.find_faces`` (dlib's frontal detector at full resolution, one up-sampling; FF++'s
  square box of 1.3 × the larger side), largest face, on the **pristine** frame — the same function ``emd detect``
  uses. A fake ``<t>_<s>`` is frame-aligned with its target
  ``t`` (§B.2, §B.6), so it is cropped with ``t``'s box of the same frame index: every frame index of a pristine
  video is detected once, for all compressions and methods, and the boxes are kept in ``<cache>/boxes/<t>.json`` so
  that a rerun never detects again. Detection uses the best requested compression of the pristine video on disk
  (raw, then c23, then c40; other compressions as a fallback).
* **Masks** (§B.3): binarised with :func:`emdlib.data.ffpp.binarize_mask` (grey > 127, white = manipulated), cropped
  with the same box; a mask must have as many frames, of the same size, as its video. Real frames get all-zero masks
  (they are not stored; the dataset makes them).
* **Crops** are resized to ``cfg.crop_size`` (area interpolation when shrinking, bilinear when enlarging; masks are
  resized the same way on {0, 255} and re-thresholded at 127, i.e. a majority vote) and stored as uint8.

Cache layout (one entry per video, ``<cache>/<comp>/<Method | original>/<video>``)
----------------------------------------------------------------------------------
* ``<video>.crops.npy`` — ``(N, S, S, 3)`` uint8 RGB face crops, one per cached frame (``np.load(mmap_mode="r")``);
* ``<video>.masks.npy`` — ``(N, S, S)`` uint8 {0, 1} mask crops (fakes only; all zero where the mask is unusable);
* with ``PrepareConfig.cache_format`` ``jpeg`` or ``png`` (:mod:`emdlib.data.crop_codec`): ``<video>.crops.<format>.npy``
  and ``<video>.masks.png.npy`` instead — the encoded crops (masks: lossless PNG) concatenated, 1-D uint8, their byte
  offsets in the JSON (``crop_offsets``, ``mask_offsets``);
* ``<video>.json`` — written **last**, so its presence marks a finished video: split, frame count, sampled frames,
  and one manifest row per sampled frame (``row`` = index into the arrays, -1 when nothing was cached).
* ``<cache>/boxes/<target>.json`` — the pristine detections; ``<cache>/prepare.json`` — the parameters the cache was
  built with (a rerun with other parameters is refused); ``<cache>/manifest.csv`` and ``<cache>/summary.json``.

Decoding: each video (and mask) is decoded once — counted and its sampled frames kept in the same pass
(:func:`emdlib.data.video.count_and_read`; a second pass only when the header's frame count is wrong) — and the
pristine detection source's crops are made from the frames decoded for detection.

Every write is atomic (``emdlib.io``); a killed run resumes where it stopped and yields the same bytes. Bad inputs
(empty or truncated files, non-videos, clips without faces, absent originals or masks, frame-count mismatches) never
stop the batch: each becomes manifest rows with a status and a reason, counted in the summary.
"""

from __future__ import annotations

import concurrent.futures as cf
import csv
import hashlib
import io
import json
import logging
import multiprocessing
import os
import sys
import threading
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import cv2
import numpy as np
from tqdm import tqdm

from emdlib.data import faces, video as vio
from emdlib.data.crop_codec import check_format, encode_crops
from emdlib.data.ffpp import (
    FFPP, FFPP_COMPRESSIONS, MASK_THRESHOLD, ORIGINAL, SPLITS, binarize_mask, check_compression, check_method,
)
from emdlib.io import read_json, remove_stale_temps, write_json, write_npy, write_text
from emdlib.presets import COMPRESSIONS, METHODS, PrepareConfig

log = logging.getLogger(__name__)

CACHE_VERSION = 1
#: Manifest statuses. Only ``ok`` rows feed training; the others say why a sampled frame is unusable.
STATUSES: tuple[str, ...] = (
    "ok",
    "no_face",              # dlib found no face in the pristine frame (or the box is degenerate)
    "no_pristine_frame",    # the pristine video has no decodable frame at this index
    "original_missing",     # fake whose pristine video is absent at every compression
    "original_unreadable",  # fake whose pristine video exists but cannot be decoded
    "unreadable_video",     # the video itself cannot be opened / has no decodable frame (row frame = -1)
    "unreadable_frame",     # this sampled frame could not be decoded
    "size_mismatch",        # fake frame size differs from the pristine frame size
    "mask_missing",         # fake without a mask video (crop cached, mask unusable)
    "mask_unreadable",      # mask video / mask frame cannot be decoded
    "mask_mismatch",        # mask frame count or size differs from the video
    "error",                # unexpected exception (not persisted: retried by the next run)
)
MANIFEST_COLUMNS: tuple[str, ...] = (
    "split", "method", "compression", "video", "frame", "status", "reason",
    "box_x", "box_y", "box_size", "row", "n_frames",
)
MIN_BOX = faces.MIN_BOX  # pixels; smaller boxes (detections mostly outside the frame) count as no face


# ---------------------------------------------------------------------------------------------------------- basics
def sample_indices(n_frames: int, k: int) -> list[int]:
    """``k`` evenly spaced frame indices of an ``n_frames`` video: centres of ``k`` equal segments (paper §IV-A)."""
    if n_frames <= 0 or k <= 0:
        return []
    if k >= n_frames:
        return list(range(n_frames))
    return [int((i + 0.5) * n_frames / k) for i in range(k)]


def entry_paths(cache: str | os.PathLike, comp: str, method: str, video: str,
                cache_format: str = "npy") -> dict[str, Path]:
    """Cache files of one video: ``crops`` (``.crops.npy``, or ``.crops.jpeg.npy`` / ``.crops.png.npy`` — the
    encodings of :mod:`emdlib.data.crop_codec` — in a compressed cache), ``masks`` (``.masks.npy``, or
    ``.masks.png.npy`` in a compressed cache) and ``meta`` (``.json``)."""
    base = Path(cache) / comp / method
    if check_format(cache_format) == "npy":
        return {"crops": base / f"{video}.crops.npy", "masks": base / f"{video}.masks.npy",
                "meta": base / f"{video}.json"}
    return {"crops": base / f"{video}.crops.{cache_format}.npy", "masks": base / f"{video}.masks.png.npy",
            "meta": base / f"{video}.json"}


def cache_format(cache: str | os.PathLike) -> str:
    """The crop format a cache was built with (``prepare.json``; ``npy`` for caches from before the setting)."""
    path = Path(cache) / "prepare.json"
    return read_json(path).get("cache_format", "npy") if path.is_file() else "npy"


def frames_for_split(cfg: PrepareConfig, split: str) -> int:
    """Frames sampled per video of ``split`` (paper §IV-A: 200 train, 10 val/test)."""
    return cfg.train_frames if split == "train" else cfg.eval_frames


def _resize_mask(binary: np.ndarray, size: int) -> np.ndarray:
    return (faces.resize_crop(binary * np.uint8(255), size) > MASK_THRESHOLD).astype(np.uint8)


def frame_count(path: str | os.PathLike) -> int:
    """Number of frames of a video, counted by decoding them (:func:`emdlib.data.video.count_frames`).

    The container header is not used: an MP4 cut losslessly keeps an edit list whose header counts every frame
    of the kept GOPs (127) while only the frames inside the edit play (27), and a truncated file's header counts
    frames that are gone. Sampling over the header count would ask for frames that never decode. Raises
    :class:`emdlib.data.video.VideoError` naming the file and the problem.
    """
    return vio.count_frames(path)


# ----------------------------------------------------------------------------------------------------------- jobs
@dataclass
class _Item:
    """One video to cache."""

    method: str
    comp: str
    video: str
    path: str
    mask: str | None = None  # fakes: mask video path (may not exist)


@dataclass
class _Group:
    """All videos whose frames come from one pristine video ``target`` (the original at each compression and the
    fakes ``target_*``), processed together so that each pristine frame is detected once."""

    target: str
    split: str
    k: int
    crop_size: int
    cache: str
    pristine: list[tuple[str, str]]  # (comp, path) candidates for detection, best first, existing files only
    items: list[_Item] = field(default_factory=list)
    cache_format: str = "npy"


def _row(frame: int, status: str, reason: str = "", box: faces.Box | None = None, row: int = -1) -> dict[str, Any]:
    return {"frame": int(frame), "status": status, "reason": reason,
            "box": None if box is None else box.as_list(), "row": int(row)}


class _Boxes:
    """Pristine detections of one target, persisted in ``<cache>/boxes/<t>.json`` (atomic, resumable)."""

    def __init__(self, group: _Group) -> None:
        self.group = group
        self.path = Path(group.cache) / "boxes" / f"{group.target}.json"
        self.data: dict[str, Any] | None = read_json(self.path) if self.path.is_file() else None
        self.problem: tuple[str, str] | None = None  # (status, reason) when no pristine video can be used
        # crops of the detection source made while detecting, so that the original at that compression is not
        # decoded a second time
        self.crops: dict[int, np.ndarray] = {}

    def ensure(self, indices: Iterable[int], videos: "_Videos | None" = None) -> None:
        """Detect the faces of the pristine frames in ``indices`` not detected yet.

        ``videos``: the group's decoder (:class:`_Videos`, which remembers frame counts). When no detection exists
        yet, the first decodable pristine candidate is counted and its frames decoded in one pass; if that video is
        itself one of the group's videos to cache, its own sampled frames are detected in the same pass (they are
        wanted anyway, and their crops are kept in :attr:`crops`)."""
        videos = videos or _Videos()
        wanted = sorted(set(int(i) for i in indices))
        if self.data is not None and not Path(self.data["path"]).is_file():
            log.warning("%s: detection source %s moved; detecting again", self.path, self.data["path"])
            self.data = None
        if self.data is not None:
            n = self.data["n_frames"]
            todo = [i for i in wanted if i < n and str(i) not in self.data["boxes"] and i not in self.data["bad"]]
            if not todo:
                return
            self._detect(Path(self.data["path"]), todo)
            return
        if not self.group.pristine:
            self.problem = ("original_missing", f"original {self.group.target} not found at any compression")
            return
        errors = []
        cached = {it.path for it in self.group.items}
        for comp, path in self.group.pristine:
            def choose(n: int, own: bool = path in cached) -> list[int]:
                own_frames = set(sample_indices(n, self.group.k)) if own else set()
                return sorted({i for i in wanted if i < n} | own_frames)

            try:
                n, frames = videos.read(path, choose)
            except vio.VideoError as e:
                errors.append(str(e))
                continue
            self.data = {"target": self.group.target, "compression": comp, "path": path, "n_frames": n,
                         "shape": None, "boxes": {}, "bad": []}
            self._detect(Path(path), choose(n), frames)
            return
        self.problem = ("original_unreadable", "; ".join(errors))

    def _detect(self, path: Path, todo: list[int], frames: dict[int, np.ndarray] | None = None) -> None:
        """Detect on frames ``todo`` of ``path`` (``frames``: already decoded, else decoded here) and save."""
        assert self.data is not None
        if frames is None:
            try:
                frames = vio.read_frames(path, todo) if todo else {}
            except vio.VideoError:
                frames = {}
        for i in todo:
            img = frames.get(i)
            if img is None:
                self.data["bad"].append(i)
                continue
            self.data["shape"] = list(img.shape[:2])
            found = faces.find_faces(img)
            box = found[0].box if found else None
            self.data["boxes"][str(i)] = None if box is None else box.as_list()
            if box is not None and box.size >= MIN_BOX:
                self.crops[i] = faces.resize_crop(box.crop(img), self.group.crop_size)
        self.data["bad"] = sorted(set(self.data["bad"]))
        self.data["boxes"] = dict(sorted(self.data["boxes"].items(), key=lambda kv: int(kv[0])))
        write_json(self.path, self.data)

    def lookup(self, i: int) -> tuple[faces.Box | None, str, str]:
        """``(box, status, reason)`` for pristine frame ``i``; status is ``ok`` when the box can be used."""
        t = self.group.target
        if self.problem is not None:
            return None, *self.problem
        assert self.data is not None
        if i >= self.data["n_frames"] or i in self.data["bad"]:
            return None, "no_pristine_frame", f"original {t} ({self.data['compression']}) has no decodable frame {i}"
        box = self.data["boxes"].get(str(i))
        if box is None:
            return None, "no_face", f"no face detected in frame {i} of original {t} ({self.data['compression']})"
        box = faces.Box(*box)
        if box.size < MIN_BOX:
            return None, "no_face", f"face box {box.as_list()} in frame {i} of original {t} is degenerate"
        return box, "ok", ""


class _Videos:
    """A group's video decoding: every video is counted and its sampled frames decoded in one pass
    (:func:`emdlib.data.video.count_and_read`), and its frame count (or why it cannot be decoded) remembered."""

    def __init__(self) -> None:
        self.counts: dict[str, int | vio.VideoError] = {}

    def count(self, path: str) -> int | None:
        """The remembered frame count of ``path`` (None when not decoded yet); raises its remembered VideoError."""
        n = self.counts.get(path)
        if isinstance(n, vio.VideoError):
            raise n
        return n

    def read(self, path: str, choose: Callable[[int], Iterable[int]]) -> tuple[int, dict[int, np.ndarray]]:
        """``(n, {index: RGB frame})`` for the frames ``choose(n)`` of a video of ``n`` decoded frames."""
        n = self.count(path)
        if n is not None:
            wanted = list(choose(n))
            return n, vio.read_frames(path, wanted) if wanted else {}
        try:
            n, frames = vio.count_and_read(path, choose)
        except vio.VideoError as e:
            self.counts[path] = e
            raise
        self.counts[path] = n
        return n, frames


def _process_group(group: _Group) -> list[dict[str, Any]]:
    """Cache every video of ``group``; return one result per video (``persisted`` False for crashed videos).

    Each video is decoded once: counted (its sampled indices depend on its decoded frame count) and its sampled
    frames kept in the same pass. The pristine detection source is decoded first and its sampled frames detected
    (and cropped, when it is one of the videos to cache); any other video needing a pristine frame not detected yet
    (a fake of another length) has it detected before its crops are made."""
    videos = _Videos()
    boxes = _Boxes(group)
    boxes.ensure([], videos)  # the detection source, with its own sampled frames when it is cached too
    mask_cache: dict[tuple, _MaskCrops] = {}
    results = []
    for item in group.items:
        try:
            results.append(_process_item(group, item, videos, boxes, mask_cache))
        except Exception as e:  # a bug or an unforeseen decoder failure must not lose the batch
            log.exception("%s: unexpected error", item.path)
            results.append({"item": asdict(item), "split": group.split, "n_frames": -1, "persisted": False,
                            "rows": [_row(-1, "error", f"{type(e).__name__}: {e}")]})
    return results


@dataclass
class _MaskCrops:
    """A fake's mask at the sampled frames: video-level status, and per frame the crop (or why there is none)."""

    status: str
    reason: str
    crops: dict[int, np.ndarray] = field(default_factory=dict)
    shapes: dict[int, tuple[int, int]] = field(default_factory=dict)
    bad: set[int] = field(default_factory=set)

    def frame(self, i: int, frame_shape: tuple[int, ...], path: str | None) -> tuple[np.ndarray | None, str, str]:
        """``(mask crop or None, status, reason)`` for frame ``i`` of a video frame of ``frame_shape``."""
        if self.status != "ok":
            return None, self.status, self.reason
        if i in self.bad:
            return None, "mask_unreadable", f"frame {i} of mask {path} could not be decoded"
        h, w = self.shapes[i]
        if (h, w) != tuple(frame_shape[:2]):
            return None, "mask_mismatch", f"mask frame {i} is {w}x{h}, video frame is {frame_shape[1]}x{frame_shape[0]}"
        return self.crops[i], "ok", ""


def _mask_crops(item: _Item, n_video: int, indices: list[int], boxes: _Boxes, size: int) -> _MaskCrops:
    """Read, binarise (§B.3) and crop a fake's mask at ``indices`` with the pristine boxes."""
    if item.mask is None or not Path(item.mask).is_file():
        return _MaskCrops("mask_missing", f"mask video not found: {item.mask}")
    indices = [i for i in indices if boxes.lookup(i)[0] is not None]
    try:  # counted and read in one pass; the frames are only used when the counts agree
        n_mask, frames = vio.count_and_read(item.mask, lambda n: indices if n == n_video else [])
    except vio.VideoError as e:
        return _MaskCrops("mask_unreadable", str(e))
    if n_mask != n_video:
        return _MaskCrops("mask_mismatch", f"mask {item.mask} has {n_mask} frames, video {item.path} has {n_video}")
    out = _MaskCrops("ok", "")
    for i in indices:
        if i not in frames:
            out.bad.add(i)
            continue
        out.shapes[i] = tuple(frames[i].shape[:2])
        box = boxes.lookup(i)[0]
        if box is not None:
            out.crops[i] = _resize_mask(box.crop(binarize_mask(frames[i])), size)
    return out


def _process_item(group: _Group, item: _Item, videos: _Videos, boxes: _Boxes,
                  mask_cache: dict) -> dict[str, Any]:
    size = group.crop_size
    is_fake = item.method != ORIGINAL
    base = {"item": asdict(item), "split": group.split, "persisted": True}
    frames: dict[int, np.ndarray] | None = None
    try:
        n = videos.count(item.path)  # known when it is the detection source (its crops were made while detecting)
        if n is None:
            n, frames = videos.read(item.path, lambda m: sample_indices(m, group.k))
    except vio.VideoError as e:
        rows = [_row(-1, "unreadable_video", str(e))]
        return _write_outputs(group, item, {**base, "n_frames": -1, "frames": [], "rows": rows}, [], [])
    indices = sample_indices(n, group.k)
    boxes.ensure(indices, videos)  # a no-op unless this video samples pristine frames not detected yet
    done = boxes.crops if boxes.data is not None and item.path == boxes.data["path"] else {}
    if frames is None:
        need = [i for i in indices if i not in done and boxes.lookup(i)[0] is not None]  # no box: no decode
        try:
            frames = vio.read_frames(item.path, need) if need else {}
        except vio.VideoError:
            frames = {}
    mask_info = None
    if is_fake:  # one mask serves every compression of a fake (§B.6): read it once per group
        key = (item.method, item.video, n, tuple(indices))
        if key not in mask_cache:
            mask_cache[key] = _mask_crops(item, n, indices, boxes, size)
        mask_info = mask_cache[key]
    shape = boxes.data["shape"] if boxes.data is not None else None
    rows, crops, masks = [], [], []
    for i in indices:
        box, status, reason = boxes.lookup(i)
        if box is None:
            rows.append(_row(i, status, reason))
            continue
        if i in done:  # the detection source itself: crop made while detecting
            rows.append(_row(i, "ok", "", box, row=len(crops)))
            crops.append(done[i])
            continue
        img = frames.get(i)
        if img is None:
            rows.append(_row(i, "unreadable_frame", f"frame {i} of {item.path} could not be decoded", box))
            continue
        if shape is not None and list(img.shape[:2]) != list(shape):
            rows.append(_row(i, "size_mismatch",
                             f"frame {i} is {img.shape[1]}x{img.shape[0]}, pristine is {shape[1]}x{shape[0]}", box))
            continue
        mask = None
        if mask_info is not None:
            mask, status, reason = mask_info.frame(i, img.shape, item.mask)
        rows.append(_row(i, status, reason, box, row=len(crops)))
        crops.append(faces.resize_crop(box.crop(img), size))
        masks.append(mask if mask is not None else np.zeros((size, size), np.uint8))
    result = {**base, "n_frames": n, "frames": indices, "rows": rows}
    return _write_outputs(group, item, result, crops, masks if is_fake else [])


def _write_outputs(group: _Group, item: _Item, result: dict[str, Any], crops: list[np.ndarray],
                   masks: list[np.ndarray]) -> dict[str, Any]:
    """Write the arrays, then the meta JSON (the 'finished' marker), each atomically."""
    paths = entry_paths(group.cache, item.comp, item.method, item.video, group.cache_format)
    encoded: dict[str, Any] = {}
    if crops and group.cache_format == "npy":
        write_npy(paths["crops"], np.stack(crops))
    elif crops:
        data, offsets = encode_crops(crops, group.cache_format)
        write_npy(paths["crops"], data)
        encoded = {"cache_format": group.cache_format, "crop_offsets": offsets}
    if masks and group.cache_format == "npy":
        write_npy(paths["masks"], np.stack(masks))
    elif masks:
        data, offsets = encode_crops(masks, "png")
        write_npy(paths["masks"], data)
        encoded["mask_offsets"] = offsets
    meta = {
        "version": CACHE_VERSION, "split": group.split, "method": item.method, "compression": item.comp,
        "video": item.video, "target": group.target, "path": item.path, "mask": item.mask,
        "detected_on": boxes_source(group.cache, group.target), "n_frames": result["n_frames"],
        "frames": result["frames"], "cached": len(crops), "rows": result["rows"], **encoded,
    }
    write_json(paths["meta"], meta)
    return result


def boxes_source(cache: str | os.PathLike, target: str) -> str | None:
    """Compression of the pristine video the boxes of ``target`` were detected on (None if never detected)."""
    path = Path(cache) / "boxes" / f"{target}.json"
    return read_json(path).get("compression") if path.is_file() else None


def _init_worker(parent: int) -> None:
    """Initializer of every worker process: die with the ``parent`` process; one OpenCV thread."""
    die_with_parent(parent)
    cv2.setNumThreads(1)  # one process per core; OpenCV's own threads would oversubscribe


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(parent: int, use_prctl: bool = True, interval_s: float = 0.5) -> str:
    """End this process as soon as process ``parent`` dies, however it dies (``kill -9`` included).

    Worker processes otherwise outlive a killed ``emd prepare``: they keep decoding and writing, then block forever
    on the result pipe nobody reads. On Linux the kernel sends this process SIGKILL when its parent exits
    (``prctl(PR_SET_PDEATHSIG)``, immediate, even while the worker is inside a long C call such as dlib's detector);
    the parent is checked once more afterwards, as it may have died before the call. Elsewhere (or with
    ``use_prctl=False``, or when prctl fails) a daemon thread polls ``os.getppid()`` every ``interval_s`` seconds and
    calls ``os._exit(1)`` once the parent is gone. Returns the method used: ``"prctl"`` or ``"watchdog"``.

    ``parent`` must be the process that started this one (``os.getppid()`` at start). The signal is tied to the
    parent *thread* that created the process; :func:`worker_pool` creates its workers from the thread that runs
    :func:`prepare`, which outlives the pool.
    """
    if use_prctl and sys.platform.startswith("linux"):
        import ctypes
        import signal

        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
                raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        except (OSError, AttributeError) as e:
            log.debug("prctl unavailable (%s); watching the parent process instead", e)
        else:
            if os.getppid() != parent:  # died before prctl took effect
                os._exit(1)
            return "prctl"
    if os.getppid() != parent:
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent, interval_s), name="emd-parent-watchdog",
                     daemon=True).start()
    return "watchdog"


def _watch_parent(parent: int, interval_s: float) -> None:
    while os.getppid() == parent:
        time.sleep(interval_s)
    os._exit(1)


def worker_pool(workers: int) -> cf.ProcessPoolExecutor:
    """The process pool :func:`prepare` uses: ``workers`` spawned processes that die with this process."""
    ctx = multiprocessing.get_context("spawn")
    return cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker,
                                  initargs=(os.getpid(),))


# ---------------------------------------------------------------------------------------------------------- prepare
def _config_record(cfg: PrepareConfig, ff: FFPP) -> dict[str, Any]:
    splits_hash = hashlib.sha256(json.dumps(ff.splits, sort_keys=True).encode()).hexdigest()[:16]
    return {"version": CACHE_VERSION, "train_frames": cfg.train_frames, "eval_frames": cfg.eval_frames,
            "crop_size": cfg.crop_size, "crop_scale": faces.CROP_SCALE, "mask_threshold": MASK_THRESHOLD,
            "splits_sha256": splits_hash, "cache_format": cfg.cache_format}


#: ``prepare.json`` keys added after caches were first built, with the value such a cache was built with.
_RECORD_DEFAULTS: dict[str, Any] = {"cache_format": "npy"}


def _check_cache(cache: Path, record: dict[str, Any]) -> None:
    path = cache / "prepare.json"
    if path.is_file():
        old = read_json(path)
        diff = {k: (old.get(k, _RECORD_DEFAULTS.get(k)), v) for k, v in record.items()
                if old.get(k, _RECORD_DEFAULTS.get(k)) != v}
        if diff:
            raise ValueError(f"{cache}: cache was built with other parameters {diff} (old, new); "
                             "use a new cache folder or delete this one")
    else:
        write_json(path, record)


def _plan(ff: FFPP, cache: Path, cfg: PrepareConfig, methods: Sequence[str], comps: Sequence[str],
          splits: Sequence[str]) -> tuple[list[_Group], list[tuple[str, str, str, str]], dict[str, int], int]:
    """Groups with unfinished videos, all videos in scope ``(split, method, comp, video)``, absent-video counts."""
    order = [c for c in FFPP_COMPRESSIONS if c in comps] + [c for c in FFPP_COMPRESSIONS if c not in comps]
    groups, scope, absent, done = [], [], Counter(), 0
    for split in splits:
        for a, b in ff.pairs(split):
            for t, s in ((a, b), (b, a)):
                pristine = [(c, str(p)) for c in order if (p := ff.video_path(ORIGINAL, c, t)).is_file()]
                group = _Group(t, split, frames_for_split(cfg, split), cfg.crop_size, str(cache), pristine,
                               cache_format=cfg.cache_format)
                for method, vid in [(ORIGINAL, t)] + [(m, f"{t}_{s}") for m in methods]:
                    for comp in comps:
                        path = ff.video_path(method, comp, vid)
                        if not path.is_file():
                            absent[f"{split}/{method}/{comp}"] += 1
                            continue
                        scope.append((split, method, comp, vid))
                        if entry_paths(cache, comp, method, vid)["meta"].is_file():
                            done += 1
                            continue
                        mask = None if method == ORIGINAL else str(ff.mask_path(method, vid))
                        group.items.append(_Item(method, comp, vid, str(path), mask))
                if group.items:
                    groups.append(group)
    return groups, scope, dict(sorted(absent.items())), done


def prepare(
    root: str | os.PathLike,
    cache: str | os.PathLike,
    cfg: PrepareConfig,
    methods: Sequence[str] = METHODS,
    compressions: Sequence[str] = COMPRESSIONS,
    splits_dir: str | os.PathLike | None = None,
    workers: int | None = None,
    splits: Sequence[str] = SPLITS,
    progress: bool = True,
) -> dict[str, Any]:
    """Build (or resume) the face cache of an FF++-layout tree and return a summary (design.md "prepare").

    Videos listed by the splits but absent on disk are counted in ``summary["missing_videos"]``; every video present
    gets one manifest row per sampled frame. Returns counts: ``ok_frames``, ``rows``, ``status`` (rows per status),
    ``bad_videos`` (videos per problem), ``cells`` (per split/method/compression), ``problems`` (first 100 video-level
    problems with reasons) and the paths of ``manifest`` and ``summary``.
    """
    root, cache = Path(root), Path(cache)
    ff = FFPP(root, splits_dir)
    methods = [check_method(m) for m in methods if m != ORIGINAL]
    comps = [check_compression(c) for c in compressions]
    for s in splits:
        ff.pairs(s)
    workers = max(1, int(workers if workers is not None else cfg.workers))
    cache.mkdir(parents=True, exist_ok=True)
    _check_cache(cache, _config_record(cfg, ff))
    remove_stale_temps(cache)  # half-written arrays of a killed run (its videos have no .json: they are redone)

    groups, scope, absent, done = _plan(ff, cache, cfg, methods, comps, splits)
    n_items = sum(len(g.items) for g in groups)
    log.info("prepare %s -> %s: %d videos in scope, %d already cached, %d to do in %d groups, %d absent (workers=%d)",
             root, cache, len(scope), done, n_items, len(groups), sum(absent.values()), workers)
    errors: list[dict[str, Any]] = []
    bar = tqdm(total=n_items, desc="prepare", unit="video", disable=not progress)

    def collect(group: _Group, results: list[dict[str, Any]] | None, exc: BaseException | None) -> None:
        if results is None:
            results = [{"item": asdict(it), "split": group.split, "n_frames": -1, "persisted": False,
                        "rows": [_row(-1, "error", f"{type(exc).__name__}: {exc}")]} for it in group.items]
        errors.extend(r for r in results if not r["persisted"])
        bar.update(len(group.items))

    try:
        if workers == 1 or len(groups) <= 1:
            for g in groups:
                try:
                    results = _process_group(g)
                except Exception as e:  # e.g. a detector failure on the pristine video: lose this group only
                    log.exception("group %s failed", g.target)
                    collect(g, None, e)
                else:
                    collect(g, results, None)
        else:
            with worker_pool(workers) as pool:
                futures = {pool.submit(_process_group, g): g for g in groups}
                broken = False
                for fut in cf.as_completed(futures):
                    exc = fut.exception()
                    if isinstance(exc, cf.process.BrokenProcessPool) and not broken:
                        broken = True
                        log.error("prepare worker processes died (%s); the unfinished videos are recorded as 'error' "
                                  "and a rerun resumes them. In a script, call prepare() under "
                                  "`if __name__ == '__main__':` (worker processes are spawned), or use workers=1.", exc)
                    collect(futures[fut], None if exc else fut.result(), exc)
    finally:
        bar.close()

    rows = _manifest_rows(cache, errors)
    manifest = cache / "manifest.csv"
    _write_manifest(manifest, rows)
    summary = _summary(rows, scope, absent, done, n_items)
    summary.update({"root": str(root), "cache": str(cache), "manifest": str(manifest),
                    "summary": str(cache / "summary.json"), "workers": workers})
    write_json(cache / "summary.json", summary)
    log.info("prepare done: %d ok frames of %d rows; status %s", summary["ok_frames"], summary["rows"],
             summary["status"])
    if summary["bad_videos"]:
        log.warning("videos with unusable frames (by problem): %s; reasons in %s", summary["bad_videos"], manifest)
    return summary


# --------------------------------------------------------------------------------------------- manifest & summary
def _meta_files(cache: Path) -> list[Path]:
    out = []
    for comp_dir in sorted(p for p in cache.iterdir() if p.is_dir() and p.name in FFPP_COMPRESSIONS):
        for method_dir in sorted(p for p in comp_dir.iterdir() if p.is_dir()):
            out += sorted(p for p in method_dir.glob("*.json") if not p.name.startswith("."))
    return out


def _flatten(meta: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for r in meta["rows"]:
        box = r["box"] or ["", "", ""]
        out.append({"split": meta["split"], "method": meta["method"], "compression": meta["compression"],
                    "video": meta["video"], "frame": r["frame"], "status": r["status"], "reason": r["reason"],
                    "box_x": box[0], "box_y": box[1], "box_size": box[2], "row": r["row"],
                    "n_frames": meta["n_frames"]})
    return out


def _manifest_rows(cache: Path, errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of every finished video in the cache (all runs) plus this run's unpersisted error rows, sorted."""
    rows = []
    for path in _meta_files(cache):
        rows += _flatten(read_json(path))
    for r in errors:
        it = r["item"]
        rows += _flatten({"split": r["split"], "method": it["method"], "compression": it["comp"],
                          "video": it["video"], "n_frames": r["n_frames"], "rows": r["rows"]})
    split_rank = {s: i for i, s in enumerate(SPLITS)}
    rows.sort(key=lambda r: (split_rank.get(r["split"], 9), r["method"] != ORIGINAL, r["method"],
                             r["compression"], r["video"], r["frame"]))
    return rows


def _write_manifest(path: Path, rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(MANIFEST_COLUMNS), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buf.getvalue())


def read_manifest(cache: str | os.PathLike) -> list[dict[str, Any]]:
    """``<cache>/manifest.csv`` as a list of dicts (``frame``, ``row``, ``n_frames`` and box fields as int/None)."""
    path = Path(cache) / "manifest.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: manifest not found; run `emd prepare` (emdlib.data.prepare.prepare) first")
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for k in ("frame", "row", "n_frames", "box_x", "box_y", "box_size"):
            r[k] = int(r[k]) if r[k] != "" else None
    return rows


def _summary(rows: list[dict[str, Any]], scope: list[tuple[str, str, str, str]], absent: dict[str, int],
             done: int, n_items: int) -> dict[str, Any]:
    in_scope = set(scope)
    rows = [r for r in rows if (r["split"], r["method"], r["compression"], r["video"]) in in_scope]
    status = Counter(r["status"] for r in rows)
    cells: dict = defaultdict(lambda: defaultdict(dict))
    per_video: dict[tuple, list] = defaultdict(list)
    for r in rows:
        per_video[(r["split"], r["method"], r["compression"], r["video"])].append(r)
    for (split, method, comp, vid), vrows in per_video.items():
        c = cells[split][method].setdefault(comp, {"videos": 0, "rows": 0, "ok_frames": 0})
        c["videos"] += 1
        c["rows"] += len(vrows)
        c["ok_frames"] += sum(r["status"] == "ok" for r in vrows)
    bad_videos: Counter = Counter()
    problems = []
    for key, vrows in per_video.items():
        kinds = sorted({r["status"] for r in vrows if r["status"] != "ok"})
        for st in kinds:
            bad_videos[st] += 1
            first = next(r for r in vrows if r["status"] == st)
            if len(problems) < 100:
                problems.append({"split": key[0], "method": key[1], "compression": key[2], "video": key[3],
                                 "status": st, "frames": sum(r["status"] == st for r in vrows),
                                 "reason": first["reason"]})
    return {
        "ok_frames": status.get("ok", 0),
        "rows": len(rows),
        "videos": len(per_video),
        "processed_videos": n_items,
        "resumed_videos": done,
        "status": {s: status[s] for s in STATUSES if status.get(s)},
        "bad_videos": {s: bad_videos[s] for s in STATUSES if bad_videos.get(s)},
        "missing_videos": absent,
        "cells": json.loads(json.dumps(cells)),
        "problems": problems,
    }
