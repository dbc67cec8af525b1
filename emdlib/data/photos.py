"""Real faces as a data world (``emd forge``, design.md "forge"): a folder of face photos → short pristine clips →
the forged manipulations in the FF++ layout.

:func:`clip_from_photo` turns one photo into a short "video" (smooth head motion, lighting flicker, blinks);
:func:`build_faces_world` does it for every usable photo of a folder (paired ``neutral/`` + ``smiling/`` as the
London set, or flat), pairs them into FF++-style splits and hands the clips to :func:`emdlib.data.world.write_world`.
"""

from __future__ import annotations

import collections
import logging
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import cv2
import numpy as np
from tqdm import tqdm

from emdlib.data.clip import Clip
from emdlib.data.ffpp import SPLITS
from emdlib.data.warps import EYE_L, EYE_R, apply_affine, feather, hull_mask, interocular, warp_landmarks
from emdlib.data.world import named_rng, write_world

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------------------------------------------
# clips from photos
# ----------------------------------------------------------------------------------------------------------------
def _smooth_track(rng: np.random.Generator, n: int, amplitude: float) -> np.ndarray:
    """A smooth zero-mean-ish trajectory over ``n`` frames: two sinusoids with random phase and slow frequency."""
    t = np.arange(n, dtype=np.float64) / 30.0  # seconds at 30 fps
    out = np.zeros(n)
    for _ in range(2):
        f = rng.uniform(0.15, 0.6)  # Hz: slow head motion
        out += np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi)) * rng.uniform(0.3, 0.7)
    return amplitude * out


def blink(frame: np.ndarray, lms: np.ndarray, closure: float) -> tuple[np.ndarray, np.ndarray]:
    """Close both eyes by ``closure`` in [0, 1]: the upper lids (37, 38, 43, 44) move down to just above the lower
    lids, a piecewise-affine eyelid warp confined to the eyes. Returns the frame and the new landmarks."""
    if closure <= 0:
        return frame, lms
    new = lms.copy()
    for up, low in (((37, 41), (38, 40)), ((43, 47), (44, 46))):
        for u, l in up, low:
            meet = lms[l] + 0.15 * (lms[u] - lms[l])
            new[u] = lms[u] + closure * (meet - lms[u])
    iod = interocular(lms)
    mask = hull_mask(frame.shape, lms[EYE_R], 0.2 * iod) | hull_mask(frame.shape, lms[EYE_L], 0.2 * iod)
    weight = feather(mask, 0.15 * iod)
    out = warp_landmarks(frame, lms, new, weight)
    # the lid skin shades the eye slightly when closed
    shade = 1.0 - 0.06 * closure * weight[..., None]
    out = np.clip(out.astype(np.float32) * shade, 0, 255).astype(np.uint8)
    return out, new


def clip_from_photo(
    image: np.ndarray,
    lms: np.ndarray,
    rng: np.random.Generator,
    n_frames: int,
    size: int,
    *,
    expression: str = "",
    identity: str = "",
    crop_scale: float = 2.0,
    max_rotation: float = 3.0,
    max_shift: float = 0.03,
    max_zoom: float = 0.03,
    flicker: float = 0.03,
    blink_rate: float = 0.4,
) -> Clip:
    """A short "video" made from one photo (design.md "Videos from photos"): a face-centred square crop
    (side ``crop_scale`` x the landmark extent) resized to ``size``, smooth head motion (rotation up to
    ``max_rotation`` degrees, shift up to ``max_shift`` x size, zoom up to ``max_zoom``; landmarks transformed by the
    same affine), small lighting flicker (gain +- ``flicker``) and blinks (``blink_rate`` per second at 30 fps, at
    least one in clips of 8+ frames). Deterministic given ``rng``.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"photo {identity!r}: must be RGB uint8 (H, W, 3), got {image.shape} {image.dtype}")
    if n_frames < 1 or size < 8:
        raise ValueError(f"photo {identity!r}: need n_frames >= 1 and size >= 8, got {n_frames}, {size}")
    lms = np.asarray(lms, np.float32)
    lo, hi = lms.min(0), lms.max(0)
    centre = (lo + hi) / 2.0
    centre[1] -= 0.08 * (hi[1] - lo[1])  # landmarks start at the brows: include some forehead
    side = crop_scale * float(max(hi - lo))
    s = size / side
    base = np.array([[s, 0, size / 2 - s * centre[0]], [0, s, size / 2 - s * centre[1]]], np.float64)
    rot = _smooth_track(rng, n_frames, max_rotation)
    tx = _smooth_track(rng, n_frames, max_shift * size)
    ty = _smooth_track(rng, n_frames, max_shift * size)
    zoom = 1.0 + _smooth_track(rng, n_frames, max_zoom)
    gain = 1.0 + _smooth_track(rng, n_frames, flicker) + rng.normal(0, flicker / 6, n_frames)
    closure = np.zeros(n_frames)
    n_blinks = rng.poisson(blink_rate * n_frames / 30.0)
    if n_frames >= 8:
        n_blinks = max(1, n_blinks)
    profile = np.array([0.45, 0.9, 1.0, 0.7, 0.3])
    for start in rng.integers(0, max(1, n_frames - 2), n_blinks):
        for k, c in enumerate(profile):
            if start + k < n_frames:
                closure[start + k] = max(closure[start + k], c)
    frames = np.empty((n_frames, size, size, 3), np.uint8)
    out_lms = np.empty((n_frames, 68, 2), np.float32)
    for i in range(n_frames):
        motion = cv2.getRotationMatrix2D((size / 2, size / 2), float(rot[i]), float(zoom[i]))
        motion[:, 2] += (tx[i], ty[i])
        m = np.vstack([motion, [0, 0, 1]]) @ np.vstack([base, [0, 0, 1]])
        m = m[:2]
        frame = cv2.warpAffine(image, m, (size, size), flags=cv2.INTER_AREA if s < 0.7 else cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_REPLICATE)
        fl = apply_affine(m, lms)
        frame, fl = blink(frame, fl, float(closure[i]))
        frames[i] = np.clip(frame.astype(np.float32) * gain[i], 0, 255).astype(np.uint8)
        out_lms[i] = fl
    return Clip(frames=frames, landmarks=out_lms, expressions=[expression] * n_frames, identity=identity)


# ----------------------------------------------------------------------------------------------------------------
# a folder of face photos -> FF++ world
# ----------------------------------------------------------------------------------------------------------------
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
#: paired-folder expression names -> EXPRESSIONS names
PAIRED_FOLDERS = {"neutral": "neutral", "smiling": "happy"}


def _list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def read_face_photo(path: Path) -> tuple[np.ndarray, np.ndarray] | str:
    """An RGB photo and its 68 dlib landmarks, or the reason it cannot be used (unreadable / no face).

    Detection runs without up-sampling first (fast on large photos) and falls back to FF++'s one up-sampling
    (emdlib.data.faces, reference-facts §B.4) for small faces.
    """
    from emdlib.data.faces import detect_faces, face_box_and_landmarks, landmarks

    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        return f"{path}: unreadable image (not an image file or corrupt)"
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    faces = detect_faces(rgb, upsample=0)
    if faces:
        return rgb, landmarks(rgb, faces[0])
    found = face_box_and_landmarks(rgb)
    if found is None:
        return f"{path}: no face detected by dlib"
    return rgb, found[1]


def scale_pairs(requested: Sequence[int], available: int) -> tuple[int, int, int]:
    """Split sizes (train, val, test pairs) for ``available`` pairs.

    ``requested`` (``cfg.pairs``) when enough pairs are available (the rest of the photos stay unused); otherwise
    scaled down in the same proportions (floor for val/test, the remainder to train). A split that was requested but
    scaled to zero gets one pair taken from train while train keeps at least one: test first (metrics need it), then
    val. E.g. (36, 7, 7) with 20 pairs -> (16, 2, 2); (3, 1, 1) with 2 pairs -> (1, 0, 1).
    """
    req = [max(0, int(r)) for r in requested]
    total = sum(req)
    if total <= available:
        return (req[0], req[1], req[2])
    if available <= 0:
        return (0, 0, 0)
    val = available * req[1] // total
    test = available * req[2] // total
    n = [available - val - test, val, test]
    for i in (2, 1):
        if req[i] and n[i] == 0 and n[0] > (1 if req[0] else 0):
            n[0] -= 1
            n[i] += 1
    return (n[0], n[1], n[2])


class LazyClips(Mapping[str, Clip]):
    """Clips rendered on demand from photos (``clip_from_photo``), a few kept in memory: a full faces world does not
    fit in RAM as frames, but each clip is cheap and deterministic to re-render."""

    def __init__(self, makers: Mapping[str, Callable[[], Clip]], cache: int = 8) -> None:
        self._makers = dict(makers)
        self._cache: collections.OrderedDict[str, Clip] = collections.OrderedDict()
        self._size = cache

    def __getitem__(self, key: str) -> Clip:
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        clip = self._makers[key]()
        self._cache[key] = clip
        if len(self._cache) > self._size:
            self._cache.popitem(last=False)
        return clip

    def __iter__(self) -> Iterator[str]:
        return iter(self._makers)

    def __len__(self) -> int:
        return len(self._makers)

    def __contains__(self, key: object) -> bool:
        return key in self._makers


def build_faces_world(
    faces_dir: Path, out_root: Path, cfg: Any, seed: int | None = None, *, progress: bool = True
) -> dict:
    """``emd forge``: a folder of face photos -> FF++-layout world with forged manipulations (design.md "forge").

    Layouts:

    * paired (``neutral/`` and ``smiling/`` with the same file names, as the London set): each person gives two
      pristine clips, ids ``2k`` (neutral) and ``2k+1`` (smiling), and one split pair ``(2k, 2k+1)``. So Face2Face
      and NeuralTextures of a person's clip take the expression from that person's *other* photo (neutral->smile
      and smile->neutral, design rule: an expression alone never gives the label), while Deepfakes takes the identity
      of another person: the clip at the same position of the next pair in the same split (recorded in
      ``world.json["sources"]``).
    * flat (any other folder): photos in name order, one clip each, consecutive photos paired.

    Split sizes: ``cfg.pairs`` (train, val, test) when enough pairs exist, otherwise scaled down proportionally to
    the available pairs (:func:`scale_pairs`); pairs are assigned to train, val, test in file order. Photos with no
    detectable face or that cannot be read are recorded in ``world.json["skipped"]`` with the reason (a paired person
    is skipped as a whole). Clips: ``cfg.frames_per_clip`` frames of ``cfg.frame_size`` px (:func:`clip_from_photo`).
    """
    faces_dir = Path(faces_dir)
    seed = int(getattr(cfg, "seed", 0) if seed is None else seed)
    if not faces_dir.is_dir():
        raise FileNotFoundError(f"{faces_dir}: faces folder not found")
    subdirs = {p.name.lower(): p for p in faces_dir.iterdir() if p.is_dir()}
    paired = all(k in subdirs for k in PAIRED_FOLDERS)
    skipped: list[dict[str, str]] = []
    photos: dict[str, tuple[np.ndarray, np.ndarray, str, str, str]] = {}  # id -> (rgb, lms, expression, person, file)

    def load(paths: Iterable[Path], desc: str) -> dict[Path, tuple[np.ndarray, np.ndarray]]:
        found = {}
        for p in tqdm(list(paths), desc=desc, unit="photo", disable=not progress):
            r = read_face_photo(p)
            if isinstance(r, str):
                skipped.append({"file": str(p), "reason": r.split(": ", 1)[1]})
                log.warning("forge: skipping %s", r)
            else:
                found[p] = r
        return found

    if paired:
        folders = {k: subdirs[k] for k in PAIRED_FOLDERS}
        stems = {k: {p.stem: p for p in _list_images(f)} for k, f in folders.items()}
        names = sorted(set().union(*[set(s) for s in stems.values()]))
        complete = [n for n in names if all(n in s for s in stems.values())]
        for n in names:
            if n not in complete:
                have = [k for k in PAIRED_FOLDERS if n in stems[k]]
                skipped.append({"file": str(stems[have[0]][n]), "reason": f"person {n} has no photo in "
                                f"{[k for k in PAIRED_FOLDERS if k not in have]}"})
        n_pairs = sum(scale_pairs(cfg.pairs, len(complete)))
        usable: list[str] = []
        loaded: dict[Path, tuple[np.ndarray, np.ndarray]] = {}
        # load persons in order until enough complete ones are found (a person with a bad photo is skipped)
        bar = tqdm(complete, desc="forge: detecting faces", unit="person", disable=not progress)
        for n in bar:
            if len(usable) >= n_pairs:
                break
            ok = True
            res = {}
            for k in PAIRED_FOLDERS:
                r = read_face_photo(stems[k][n])
                if isinstance(r, str):
                    skipped.append({"file": str(stems[k][n]), "reason": r.split(": ", 1)[1]})
                    log.warning("forge: skipping person %s: %s", n, r)
                    ok = False
                else:
                    res[k] = r
            if ok:
                usable.append(n)
                for k in PAIRED_FOLDERS:
                    loaded[stems[k][n]] = res[k]
        sizes = scale_pairs(cfg.pairs, len(usable))
        pair_list = []
        for k, n in enumerate(usable[: sum(sizes)]):
            ids = (f"{2 * k:03d}", f"{2 * k + 1:03d}")
            for vid, folder in zip(ids, PAIRED_FOLDERS):
                rgb, lms = loaded[stems[folder][n]]
                photos[vid] = (rgb, lms, PAIRED_FOLDERS[folder], n, str(stems[folder][n]))
            pair_list.append(ids)
    else:
        files = _list_images(faces_dir)
        if not files:
            raise ValueError(f"{faces_dir}: no images ({', '.join(IMAGE_EXTENSIONS)}) and no neutral/ + smiling/ folders")
        found = load(files, "forge: detecting faces")
        good = [p for p in files if p in found]
        sizes = scale_pairs(cfg.pairs, len(good) // 2)
        good = good[: 2 * sum(sizes)]
        pair_list = []
        for k in range(0, len(good), 2):
            ids = (f"{k:03d}", f"{k + 1:03d}")
            for vid, p in zip(ids, good[k : k + 2]):
                photos[vid] = (found[p][0], found[p][1], "", p.stem, str(p))
            pair_list.append(ids)

    bounds = np.cumsum([0, *sizes])
    split_pairs = {s: pair_list[bounds[i] : bounds[i + 1]] for i, s in enumerate(SPLITS)}
    if not pair_list:
        raise ValueError(f"{faces_dir}: no usable pairs of face photos ({len(skipped)} skipped)")

    sources: dict[str, dict[str, str]] = {}
    if paired and "Deepfakes" in tuple(cfg.methods):
        df: dict[str, str] = {}
        for s, ps in split_pairs.items():
            for i, (a, b) in enumerate(ps):
                partners = ps if len(ps) > 1 else [p for p in pair_list if p != (a, b)]
                if not partners:
                    raise ValueError(f"{faces_dir}: Deepfakes needs at least two persons")
                if len(ps) <= 1:
                    log.warning("forge: split %s has one person; its Deepfakes identity comes from another split", s)
                    c, d = partners[0]
                else:
                    c, d = ps[(i + 1) % len(ps)]
                df[f"{a}_{b}"] = c
                df[f"{b}_{a}"] = d
        sources["Deepfakes"] = df

    def maker(vid: str) -> Callable[[], Clip]:
        rgb, lms, expr, person, _ = photos[vid]
        return lambda: clip_from_photo(rgb, lms, named_rng(seed, "clip", vid), cfg.frames_per_clip, cfg.frame_size,
                                       expression=expr, identity=person)

    clips = LazyClips({vid: maker(vid) for vid in photos})
    extra = {
        "faces_dir": str(faces_dir),
        "layout": "paired" if paired else "flat",
        "pairs_requested": list(cfg.pairs),
        "pairs_used": list(sizes),
        "clips": {vid: {"file": f, "person": person, "expression": expr}
                  for vid, (_, _, expr, person, f) in sorted(photos.items())},
        "skipped": skipped,
    }
    summary = write_world(out_root, clips, split_pairs, cfg, seed, sources=sources, extra=extra, progress=progress)
    summary["skipped"] = len(skipped)
    summary["layout"] = extra["layout"]
    return summary
