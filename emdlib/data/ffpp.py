"""The FaceForensics++ folder layout, official splits and mask binarisation (reference-facts §B.1–§B.3).

Layout (official download script, §B.2)::

    <root>/original_sequences/youtube/<comp>/videos/<id>.mp4
    <root>/manipulated_sequences/<Method>/<comp>/videos/<target>_<source>.mp4
    <root>/manipulated_sequences/<Method>/masks/videos/<target>_<source>.mp4

with ``comp`` one of ``raw`` (= c0), ``c23``, ``c40``. Masks exist once per fake (no per-compression copies, none for
originals or FaceShifter) and are frame-aligned with every compression of the fake (§B.6).

Splits (§B.1): ``{train,val,test}.json``, each a JSON list of ``[a, b]`` pairs of 3-digit id strings. A pair gives
the real videos ``a`` and ``b`` and the fakes ``a_b`` and ``b_a`` (``<target>_<source>``); the official files have
360/70/70 pairs, i.e. 720/140/140 real and 720/140/140 fake videos per method.

The synth and forge generators write the same layout, so this reader serves all three data worlds.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Iterable, Sequence

import cv2
import numpy as np

from emdlib.io import read_json

log = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("train", "val", "test")
ORIGINAL = "original"
#: Manipulation methods of FF++ (§B.2); the paper studies the first three.
FFPP_METHODS: tuple[str, ...] = ("Deepfakes", "Face2Face", "NeuralTextures", "FaceSwap", "FaceShifter")
FFPP_COMPRESSIONS: tuple[str, ...] = ("raw", "c23", "c40")
#: Mask threshold on the grey level: FF++ masks are lossy mp4s with graded edges (§B.3), white = manipulated.
MASK_THRESHOLD = 127

_REAL_ID = re.compile(r"^\d{3}$")
_FAKE_ID = re.compile(r"^(\d{3})_(\d{3})$")


# ----------------------------------------------------------------------------------------------------------- names
def check_method(method: str) -> str:
    """``method`` if it is an FF++ manipulation method or ``"original"``; otherwise a ValueError listing them."""
    if method != ORIGINAL and method not in FFPP_METHODS:
        raise ValueError(f"unknown FF++ method {method!r}; expected 'original' or one of {list(FFPP_METHODS)}")
    return method


def check_compression(comp: str) -> str:
    """``comp`` if it is ``raw``, ``c23`` or ``c40``; otherwise a ValueError."""
    if comp not in FFPP_COMPRESSIONS:
        raise ValueError(f"unknown FF++ compression {comp!r}; expected one of {list(FFPP_COMPRESSIONS)}")
    return comp


def parse_fake_id(video: str) -> tuple[str, str]:
    """``"<target>_<source>"`` → ``(target, source)`` (§B.1); ValueError for anything else."""
    m = _FAKE_ID.match(video)
    if not m:
        raise ValueError(f"{video!r} is not a fake video id of the form <target>_<source> (e.g. '004_982')")
    return m.group(1), m.group(2)


def target_id(video: str) -> str:
    """The pristine video a video's frames come from: ``t`` for ``t`` and for ``t_s``."""
    return video if _REAL_ID.match(video) else parse_fake_id(video)[0]


# ----------------------------------------------------------------------------------------------------------- paths
def video_path(root: str | os.PathLike, method: str, comp: str, video: str) -> Path:
    """Path of a video in the FF++ layout (``method="original"`` for the pristine youtube videos); no existence check."""
    root = Path(root)
    check_method(method)
    check_compression(comp)
    if method == ORIGINAL:
        return root / "original_sequences" / "youtube" / comp / "videos" / f"{video}.mp4"
    return root / "manipulated_sequences" / method / comp / "videos" / f"{video}.mp4"


def mask_path(root: str | os.PathLike, method: str, video: str) -> Path:
    """Path of a fake's mask video ``manipulated_sequences/<Method>/masks/videos/<t>_<s>.mp4`` (§B.2, §B.3)."""
    if method == ORIGINAL:
        raise ValueError("original videos have no masks (real frames get all-zero masks)")
    check_method(method)
    return Path(root) / "manipulated_sequences" / method / "masks" / "videos" / f"{video}.mp4"


def split_file(splits_dir: str | os.PathLike, split: str) -> Path:
    """Path of a split file ``<splits_dir>/<split>.json`` (§B.1; ``split`` one of :data:`SPLITS`); no existence check."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {list(SPLITS)}")
    return Path(splits_dir) / f"{split}.json"


# ---------------------------------------------------------------------------------------------------------- splits
def load_splits(splits_dir: str | os.PathLike) -> dict[str, list[tuple[str, str]]]:
    """Read ``{train,val,test}.json`` (§B.1) → ``{split: [(a, b), ...]}``.

    Every entry must be a pair of 3-digit id strings, and no id may appear in two splits; errors name the file and
    the entry.
    """
    splits_dir = Path(splits_dir)
    if not splits_dir.is_dir():
        raise FileNotFoundError(f"{splits_dir}: split folder not found (expected train.json, val.json, test.json)")
    out: dict[str, list[tuple[str, str]]] = {}
    seen: dict[str, str] = {}
    for split in SPLITS:
        path = splits_dir / f"{split}.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: split file missing (expected a JSON list of [id, id] pairs)")
        data = _read_json(path)
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a JSON list of [id, id] pairs, got {type(data).__name__}")
        pairs = []
        for i, entry in enumerate(data):
            if (not isinstance(entry, (list, tuple)) or len(entry) != 2
                    or not all(isinstance(v, str) and _REAL_ID.match(v) for v in entry)):
                raise ValueError(f"{path}: entry {i} {entry!r} is not a pair of 3-digit id strings like ['071', '054']")
            for v in entry:
                if v in seen:
                    raise ValueError(f"{path}: id {v} of entry {i} is already in split {seen[v]!r}")
                seen[v] = split
            pairs.append((entry[0], entry[1]))
        out[split] = pairs
    return out


def _read_json(path: Path) -> object:
    """:func:`emdlib.io.read_json`, with bytes that are not UTF-8 and OS errors also named by file and cause."""
    try:
        return read_json(path)
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 JSON text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        from emdlib.data.media import os_reason

        raise ValueError(f"{path}: cannot be read: {os_reason(e, path)}") from None


#: Data worlds a ``world.json`` may declare (synth and forge write it; a real FF++ copy has none).
WORLDS: tuple[str, ...] = ("synth", "faces", "ffpp")


def read_world(root: str | os.PathLike) -> dict | None:
    """``<root>/world.json`` — what synth or forge wrote about the world (``world``: one of :data:`WORLDS`, seed,
    pairs, counts, ...) — or None when the root has none (a real FF++ copy). Raises ValueError naming the file for
    invalid JSON, text that is not UTF-8, a top level that is not an object, or a missing/unknown ``world``."""
    path = Path(root) / "world.json"
    if not path.is_file():
        return None
    data = _read_json(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object describing the world, got {type(data).__name__}")
    world = data.get("world")
    if world not in WORLDS:
        raise ValueError(f"{path}: 'world' is {world!r}; expected one of {list(WORLDS)}")
    return data


def split_ids(pairs: Iterable[Sequence[str]]) -> tuple[list[str], list[str]]:
    """Pairs → (real ids, fake ids): ``[a, b]`` gives reals ``a, b`` and fakes ``a_b, b_a`` (§B.1), in file order."""
    reals: list[str] = []
    fakes: list[str] = []
    for a, b in pairs:
        reals += [a, b]
        fakes += [f"{a}_{b}", f"{b}_{a}"]
    return reals, fakes


# ------------------------------------------------------------------------------------------------------------ masks
def binarize_mask(mask: np.ndarray, threshold: int = MASK_THRESHOLD) -> np.ndarray:
    """FF++ mask frame → uint8 ``{0, 1}`` (1 = manipulated), ``grey > threshold`` (§B.3).

    FF++ masks are lossy mp4s: Deepfakes masks are {0, 255}, NeuralTextures masks have ~200 grey levels from
    anti-aliasing and compression, so a fixed mid-grey threshold (127) is used instead of ``!= 0``; this keeps every
    full-white pixel and drops the faint compression halo. RGB masks are converted to grey first (their three channels
    are equal up to chroma noise).
    """
    mask = np.asarray(mask)
    if mask.ndim == 3 and mask.shape[-1] in (3, 4):
        mask = cv2.cvtColor(np.ascontiguousarray(mask[..., :3], dtype=np.uint8), cv2.COLOR_RGB2GRAY)
    elif mask.ndim == 3 and mask.shape[-1] == 1:
        mask = mask[..., 0]
    if mask.ndim != 2:
        raise ValueError(f"mask must be (H, W) or (H, W, 3), got shape {mask.shape}")
    return (mask > threshold).astype(np.uint8)


# ----------------------------------------------------------------------------------------------------------- reader
class FFPP:
    """A FaceForensics++-layout tree with its splits.

    ``FFPP(root)`` reads the splits from ``<root>/splits`` (as synth and forge write them); pass ``splits_dir`` for
    the official files of a real FF++ copy. Path helpers never touch the disk; :meth:`video` and :meth:`mask` check
    existence and raise a FileNotFoundError naming what is missing; :meth:`videos` lists a split's videos.
    """

    def __init__(self, root: str | os.PathLike, splits_dir: str | os.PathLike | None = None) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root}: FF++ root folder not found")
        self.splits_dir = Path(splits_dir) if splits_dir is not None else self.root / "splits"
        self.splits = load_splits(self.splits_dir)
        self._split_of: dict[str, str] = {}
        for split, pairs in self.splits.items():
            reals, fakes = split_ids(pairs)
            for v in reals + fakes:
                self._split_of[v] = split

    @property
    def world(self) -> dict | None:
        """The root's ``world.json`` (:func:`read_world`): which generator made it and how; None for real FF++."""
        return read_world(self.root)

    def __repr__(self) -> str:
        counts = {s: len(p) for s, p in self.splits.items()}
        return f"FFPP(root={str(self.root)!r}, splits_dir={str(self.splits_dir)!r}, pairs={counts})"

    # ---- splits
    def pairs(self, split: str) -> list[tuple[str, str]]:
        """The ``(a, b)`` pairs of ``split``."""
        if split not in self.splits:
            raise KeyError(f"unknown split {split!r}; expected one of {list(SPLITS)}")
        return self.splits[split]

    def ids(self, split: str, method: str) -> list[str]:
        """Video ids of ``split``: pristine ids for ``"original"``, ``<target>_<source>`` ids for a method."""
        check_method(method)
        reals, fakes = split_ids(self.pairs(split))
        return reals if method == ORIGINAL else fakes

    def split_of(self, video: str) -> str:
        """Split holding ``video`` (a real id or a ``t_s`` fake id); KeyError naming the id and the split folder."""
        try:
            return self._split_of[video]
        except KeyError:
            raise KeyError(f"video id {video!r} is in none of the splits {list(SPLITS)} ({self.splits_dir})") from None

    def partner(self, video: str) -> str:
        """The other id of the pair that a pristine id belongs to."""
        split = self.split_of(video)
        for a, b in self.splits[split]:
            if video == a:
                return b
            if video == b:
                return a
        raise KeyError(f"video id {video!r} is not a pristine id of split {split!r}")

    # ---- paths
    def video_path(self, method: str, comp: str, video: str) -> Path:
        return video_path(self.root, method, comp, video)

    def mask_path(self, method: str, video: str) -> Path:
        return mask_path(self.root, method, video)

    def video(self, method: str, comp: str, video: str) -> Path:
        """Path of an existing video of the splits; KeyError for an id in no split, FileNotFoundError when absent."""
        self.split_of(video)
        if (method == ORIGINAL) != bool(_REAL_ID.match(video)):
            kind = "a 3-digit pristine id" if method == ORIGINAL else "a <target>_<source> fake id"
            raise ValueError(f"{method} videos are named by {kind}, got {video!r}")
        path = self.video_path(method, comp, video)
        if not path.is_file():
            raise FileNotFoundError(f"{method} {comp} video {video} not found: {path}")
        return path

    def mask(self, method: str, video: str) -> Path:
        """Path of an existing mask video; KeyError for an id in no split, FileNotFoundError when absent."""
        self.split_of(video)
        path = self.mask_path(method, video)
        if not path.is_file():
            raise FileNotFoundError(f"{method} mask of video {video} not found: {path}")
        return path

    def videos(self, split: str, method: str, comp: str, existing: bool = True) -> list[tuple[str, Path]]:
        """``[(id, path)]`` of a split/method/compression, in split-file order; only files on disk when ``existing``."""
        check_compression(comp)
        out = [(v, self.video_path(method, comp, v)) for v in self.ids(split, method)]
        return [(v, p) for v, p in out if p.is_file()] if existing else out

    def missing(self, split: str, method: str, comp: str) -> list[str]:
        """Ids of ``split`` whose ``method``/``comp`` video is absent on disk."""
        return [v for v, p in self.videos(split, method, comp, existing=False) if not p.is_file()]
