"""Face X-ray's blended images (Li et al., "Face X-ray for More General Face Forgery Detection", CVPR 2020, §3.2 and
§4 "Generating training data"): fakes made from two *real* faces, and their X-ray targets.

A blended image replaces a region of a real face ``I_B`` (the background) by the same region of another real face
``I_F`` (the foreground) whose landmarks are close to ``I_B``'s::

    I_M = M ⊙ I_F' + (1 − M) ⊙ I_B,        X-ray  B = 4 · M ⊙ (1 − M)

with ``M`` a soft mask in [0, 1] and ``I_F'`` the foreground colour-corrected to the background. The X-ray is 0
where the image comes from one source only and peaks (1) on the blending boundary, where ``M = ½``; a real face has
``B = 0``. The steps, as the paper describes them (the paper's code was not released; values the paper leaves open
are ours and marked so):

1. foreground: one of the :data:`NEAREST_K` faces nearest to ``I_B`` by the Euclidean distance of their 68 dlib
   landmarks (in crop pixels), among faces of *other* videos (another identity in FF++) —
   :func:`nearest_faces`;
2. mask: the convex hull of a subset of ``I_B``'s landmarks, one of :data:`HULL_KINDS` chosen at random
   (:func:`hull_region`; the kinds are ours: the paper shows several mask shapes without listing them);
3. a random elastic deformation of the mask: a piecewise-affine warp moving a 4 × 4 grid over the mask's box by
   random offsets (:func:`deform_mask`);
4. Gaussian blur of the mask with a random width — the feathering that makes ``M`` soft (:func:`feather_mask`);
5. colour correction of the foreground to the background inside the mask (Reinhard transfer in LAB,
   :func:`emdlib.data.forge.colour_match_lab`, the colour match our Deepfakes stand-in uses);
6. the blend and its X-ray (:func:`blend`, :func:`face_xray`).

:class:`BlendedFaces` turns a set of real training faces into Face X-ray's training set: every face with dlib
landmarks, half of them (a seeded choice) replaced by a blended image with that face as background. Items are those of
:class:`emdlib.data.datasets.ManipulationDataset`; their ``mask`` is the X-ray target ``B`` (soft, in [0, 1]; all
zero for a real face), not a binary manipulation mask. An item depends only on the seed and its index (its own
``numpy.random.Generator``; no global random state), so DataLoader workers give the same items as one process.

Images are RGB uint8 ``(H, W, 3)``; landmarks ``(68, 2)`` float32 x/y pixels in dlib / iBUG-300W order
(:mod:`emdlib.data.warps`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from emdlib.data.forge import colour_match_lab
from emdlib.data.transforms import esr_input, to_tensor, xception_input, xception_to_rgb01
from emdlib.data.warps import BROW_L, BROW_R, EYE_L, EYE_R, MOUTH, NOSE, hull_mask, piecewise_affine_map

log = logging.getLogger(__name__)

#: Landmark hulls a mask is drawn from (ours; the paper: "the convex hull of a subset of landmarks", several kinds):
#: ``face`` all 68 points; ``extended`` the face hull with the brows lifted by half their height above the nose tip
#: (the forehead joins); ``inner`` brows, eyes, nose and mouth without the jaw line; ``components`` the union of the
#: hulls of each eye with its brow, of the nose and of the mouth.
HULL_KINDS: tuple[str, ...] = ("face", "extended", "inner", "components")
NOSE_TIP = 30  # dlib / iBUG-300W
#: Nearest faces (by landmarks) a foreground is drawn from (inferred: the paper's K is not re-read here).
NEAREST_K = 100
#: The grid of the elastic deformation (points per side over the mask's box) and the offsets' standard deviation as
#: a share of the box's side (drawn uniformly from this range per image). Ours: the paper gives no values.
DEFORM_GRID = 4
DEFORM_SCALE = (0.01, 0.05)
#: The feathering blur's sigma as a share of the mask box's side, drawn uniformly per image (ours; the paper: a
#: Gaussian blur of random kernel size).
BLUR_SCALE = (0.02, 0.08)
#: Crops from this side up are searched for their face without up-sampling (:func:`detect_landmarks`).
NO_UPSAMPLE_CROP = 160
#: Label of a blended item in the ``method`` column (a real face keeps ``"original"``).
BLENDED = "blended"


def hull_region(landmarks: np.ndarray, shape: tuple[int, ...], kind: str) -> np.ndarray:
    """The binary mask (uint8 {0, 255}, ``shape[:2]``) of landmark hull ``kind`` (:data:`HULL_KINDS`).

    Raises ValueError for an unknown kind or landmarks that are not ``(68, 2)``."""
    lms = np.asarray(landmarks, np.float32)
    if lms.shape != (68, 2):
        raise ValueError(f"expected (68, 2) landmarks, got {lms.shape}")
    if kind == "face":
        return hull_mask(shape, lms)
    if kind == "extended":
        brows = BROW_R + BROW_L
        lifted = lms.copy()
        lifted[brows, 1] -= 0.5 * max(float(lms[NOSE_TIP, 1] - lms[brows, 1].min()), 0.0)
        return hull_mask(shape, lifted)
    if kind == "inner":
        return hull_mask(shape, lms[BROW_R + BROW_L + EYE_R + EYE_L + NOSE + MOUTH])
    if kind == "components":
        out = np.zeros(shape[:2], np.uint8)
        for part in (EYE_R + BROW_R, EYE_L + BROW_L, NOSE, MOUTH):
            out = np.maximum(out, hull_mask(shape, lms[part]))
        return out
    raise ValueError(f"unknown hull kind {kind!r}; choose one of {HULL_KINDS}")


def _box(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


def deform_mask(mask: np.ndarray, rng: np.random.Generator, grid: int = DEFORM_GRID,
                scale: tuple[float, float] = DEFORM_SCALE) -> np.ndarray:
    """A random elastic deformation of a binary mask (uint8 {0, 255} ``(H, W)`` → the same type and shape).

    A ``grid`` × ``grid`` lattice spanning the mask's bounding box moves by N(0, σ²) offsets, σ = ``s`` × the box's
    larger side with ``s`` ~ U(``scale``); the image corners and edge midpoints stay fixed; the mask follows the
    piecewise-affine warp of the lattice (:func:`emdlib.data.warps.piecewise_affine_map`, nearest sampling). An empty
    mask is returned unchanged."""
    if not mask.any():
        return mask
    h, w = mask.shape[:2]
    x0, y0, x1, y1 = _box(mask)
    gx, gy = np.meshgrid(np.linspace(x0, x1, grid), np.linspace(y0, y1, grid))
    src = np.stack([gx.ravel(), gy.ravel()], 1)
    sigma = rng.uniform(*scale) * max(x1 - x0, y1 - y0, 1)
    dst = src + rng.normal(0.0, sigma, src.shape)
    fixed = np.array([(0, 0), (w - 1, 0), (0, h - 1), (w - 1, h - 1), ((w - 1) / 2, 0), ((w - 1) / 2, h - 1),
                      (0, (h - 1) / 2), (w - 1, (h - 1) / 2)], np.float64)
    map_x, map_y, _ = piecewise_affine_map(np.concatenate([src, fixed]), np.concatenate([dst, fixed]), mask.shape)
    return cv2.remap(mask, map_x, map_y, cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def feather_mask(mask: np.ndarray, rng: np.random.Generator, scale: tuple[float, float] = BLUR_SCALE) -> np.ndarray:
    """The soft blending mask ``M``: a binary mask (uint8 {0, 255}) blurred by a Gaussian of sigma ``s`` × its box's
    larger side, ``s`` ~ U(``scale``) (at least 0.5 px). float32 ``(H, W)`` in [0, 1]; all zero for an empty
    mask."""
    m = (mask > 0).astype(np.float32)
    if not m.any():
        return m
    x0, y0, x1, y1 = _box(mask)
    sigma = max(rng.uniform(*scale) * max(x1 - x0, y1 - y0, 1), 0.5)
    return np.clip(cv2.GaussianBlur(m, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_CONSTANT), 0.0, 1.0)


def face_xray(m: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """Face X-ray of a soft mask (paper Eq. 2): ``B = 4 · M · (1 − M)``, element-wise; ``M`` in [0, 1] → ``B`` in
    [0, 1], 0 where ``M`` is 0 or 1, 1 where ``M = ½``."""
    return 4.0 * m * (1.0 - m)


def blend(foreground: np.ndarray, background: np.ndarray, m: np.ndarray) -> np.ndarray:
    """``I_M = M ⊙ I_F + (1 − M) ⊙ I_B`` (paper Eq. 1) for RGB uint8 images of one shape and ``M`` ``(H, W)`` in
    [0, 1]; RGB uint8, rounded. Raises ValueError when the shapes differ."""
    if foreground.shape != background.shape or m.shape != background.shape[:2]:
        raise ValueError(f"blend: foreground {foreground.shape}, background {background.shape} and mask {m.shape} "
                         "must match")
    a = m[..., None].astype(np.float32)
    out = a * foreground.astype(np.float32) + (1.0 - a) * background.astype(np.float32)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def blended_face(background: np.ndarray, foreground: np.ndarray, landmarks: np.ndarray, rng: np.random.Generator,
                 kind: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One blended image (module docstring, steps 2–6): ``background`` and ``foreground`` RGB uint8 of one shape,
    ``landmarks`` the background's ``(68, 2)``; ``kind`` one of :data:`HULL_KINDS` (random when None).

    Returns ``(image, m)``: the blended RGB uint8 image and its soft mask ``M`` float32 in [0, 1] (its X-ray is
    :func:`face_xray` of ``m``). Raises ValueError when the two images differ in shape."""
    if foreground.shape != background.shape:
        raise ValueError(f"background {background.shape} and foreground {foreground.shape} differ in shape")
    kind = str(rng.choice(HULL_KINDS)) if kind is None else kind
    region = deform_mask(hull_region(landmarks, background.shape, kind), rng)
    m = feather_mask(region, rng)
    support = (m > 0).astype(np.uint8)
    corrected = colour_match_lab(foreground, background, support, support)
    return blend(corrected, background, m), m


def nearest_faces(landmarks: np.ndarray, groups: Sequence[Any], k: int = NEAREST_K,
                  chunk: int = 512) -> np.ndarray:
    """For each of ``n`` faces, the indices of its ``k`` nearest faces of *another* group (video), nearest first.

    ``landmarks`` ``(n, 68, 2)``; distance: the Euclidean norm of the difference of the flattened landmarks (crop
    pixels). Returns int64 ``(n, min(k, n − 1))``, ``-1`` where a face has fewer than that many faces of other groups.
    Rows are computed ``chunk`` at a time (memory ``chunk × n``)."""
    x = np.asarray(landmarks, np.float64).reshape(len(landmarks), -1)
    n = len(x)
    g = np.unique(np.asarray(groups, dtype=object).astype(str), return_inverse=True)[1]
    k = max(0, min(int(k), n - 1))
    out = np.full((n, k), -1, np.int64)
    if k == 0:
        return out
    sq = (x**2).sum(1)
    for start in range(0, n, chunk):
        rows = slice(start, min(start + chunk, n))
        d = sq[rows, None] + sq[None, :] - 2.0 * x[rows] @ x.T
        d[g[rows, None] == g[None, :]] = np.inf  # the same video: the same identity
        order = np.argsort(d, axis=1, kind="stable")[:, :k]
        ok = np.isfinite(np.take_along_axis(d, order, 1))
        out[rows] = np.where(ok, order, -1)
    return out


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """A shared-input image ``(3, H, W)`` in [-1, 1] (:func:`emdlib.data.transforms.xception_input`) → RGB uint8
    ``(H, W, 3)``."""
    rgb = xception_to_rgb01(image).clamp(0, 1).mul(255).round().byte()
    return rgb.permute(1, 2, 0).contiguous().numpy()


def detect_landmarks(image: np.ndarray) -> np.ndarray | None:
    """dlib's 68 landmarks ``(68, 2)`` float32 of the largest face dlib's frontal detector finds in an RGB uint8
    face crop, or None when it finds none (:func:`emdlib.data.faces.detect_faces`, :func:`emdlib.data.faces.landmarks`).

    A crop of at least :data:`NO_UPSAMPLE_CROP` px is searched without up-sampling (its face, about 1/1.3 of the
    crop, is well above dlib's 80-px window; 4× fewer pixels: 0.03 s instead of 0.11 s at 299 px, measured), a
    smaller one with training's one up-sampling (64-px crops: faces of about 49 px)."""
    from emdlib.data import faces

    upsample = 0 if min(image.shape[:2]) >= NO_UPSAMPLE_CROP else faces.UPSAMPLE
    found = faces.detect_faces(image, upsample)
    return faces.landmarks(image, found[0]) if found else None


class _LandmarkPass(Dataset):
    """The real faces of ``real`` at ``indices``, each as ``{"index", "real", "video", "frame", "landmarks"}``
    (:func:`detect_landmarks`; None without a face, or for a fake): the landmark pass of :class:`BlendedFaces`, in
    DataLoader workers when it has any."""

    def __init__(self, real: Dataset, indices: np.ndarray):
        self.real, self.indices = real, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, j: int) -> dict[str, Any]:
        i = int(self.indices[j])
        item = self.real[i]
        real = int(item["label"]) == 0
        return {"index": i, "real": real, "video": str(item.get("video", i)), "frame": int(item.get("frame", -1)),
                "landmarks": detect_landmarks(to_uint8(item["image"])) if real else None}


class BlendedFaces(Dataset):
    """Face X-ray's training set made from the real faces of ``real`` (module docstring).

    ``real``: a dataset of :class:`~emdlib.data.datasets.ManipulationDataset` items, not flipped (``augment`` off:
    the landmarks are computed once); its fakes (``label`` 1) are left out. Every real face is read once and its
    dlib landmarks kept in memory (:func:`detect_landmarks`); a face where dlib finds none is recorded
    (:attr:`skipped`, logged) and left out; ``workers`` DataLoader processes share that pass (0: this process). Of the remaining ``n`` faces, ``round(n · fraction)`` (a permutation
    seeded by ``seed``) are served as blended fakes with that face as background and a foreground drawn among its
    ``k`` nearest faces of other videos (:func:`nearest_faces`); the others as they are (label 0, X-ray 0).

    Items: the keys of ``ManipulationDataset``'s; a blended one has ``label`` 1, ``method`` ``"blended"``, the
    background's ``compression``/``video``/``frame``, ``image``/``fer_image`` made from the blended image, and
    ``mask`` ``(1, S, S)`` the X-ray target ``4M(1 − M)`` in [0, 1]. Item ``i`` depends only on ``seed`` and ``i``.

    Raises ValueError when ``real`` flips its images, when fewer than two faces of two videos have landmarks, or for
    a ``fraction`` outside [0, 1].
    """

    def __init__(self, real: Dataset, seed: int = 0, k: int = NEAREST_K, fraction: float = 0.5,
                 workers: int = 0) -> None:
        if getattr(real, "augment", False):
            raise ValueError("BlendedFaces: the real faces must not be flipped at random (augment=False): their "
                             "landmarks are computed once")
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"BlendedFaces: fraction {fraction} is outside [0, 1]")
        self.real, self.seed = real, int(seed)
        labels = getattr(real, "labels", None)
        candidates = (np.flatnonzero(np.asarray(labels) == 0) if labels is not None else np.arange(len(real)))
        index, lms, videos, skipped = [], [], [], []
        faces = DataLoader(_LandmarkPass(real, candidates), batch_size=None, num_workers=workers)
        for face in tqdm(faces, total=len(candidates), desc="Face X-ray: landmarks of the real faces", leave=False,
                         disable=None):
            if not face["real"]:
                continue
            if face["landmarks"] is None:
                skipped.append({k: face[k] for k in ("index", "video", "frame")})
                continue
            index.append(face["index"])
            lms.append(np.asarray(face["landmarks"], np.float32))
            videos.append(face["video"])
        #: Real faces left out because dlib found no face in them: ``{"index", "video", "frame"}`` each.
        self.skipped: list[dict[str, Any]] = skipped
        if skipped:
            log.warning("Face X-ray: dlib found no face in %d of %d real training faces; left out (first: %s)",
                        len(skipped), len(skipped) + len(index), skipped[0])
        if len(set(videos)) < 2:
            raise ValueError(f"BlendedFaces: blending needs real faces of at least two videos with landmarks, got "
                             f"{len(index)} faces of {len(set(videos))} video(s)")
        self.index = np.asarray(index, np.int64)
        self.landmarks = np.stack(lms).astype(np.float32)
        self.neighbours = nearest_faces(self.landmarks, videos, k)
        n = len(index)
        order = np.random.default_rng(self.seed).permutation(n)
        self.blended = np.zeros(n, bool)
        self.blended[order[: int(round(n * fraction))]] = True
        log.info("Face X-ray: %d real faces with landmarks, %d served as blended fakes", n, int(self.blended.sum()))

    def __len__(self) -> int:
        return len(self.index)

    @property
    def labels(self) -> np.ndarray:
        """Label of every item (1 = blended fake, 0 = real), int64."""
        return self.blended.astype(np.int64)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = dict(self.real[int(self.index[i])])
        if not self.blended[i]:
            return item
        rng = np.random.default_rng([self.seed, int(i)])
        pool = self.neighbours[i][self.neighbours[i] >= 0]
        j = int(rng.choice(pool))
        background = to_uint8(item["image"])
        foreground = to_uint8(self.real[int(self.index[j])]["image"])
        image, m = blended_face(background, foreground, self.landmarks[i], rng)
        rgb01 = to_tensor(image)
        item.update(image=xception_input(rgb01), fer_image=esr_input(rgb01),
                    mask=torch.from_numpy(face_xray(m)).float()[None], label=torch.tensor(1, dtype=torch.long),
                    method=BLENDED)
        return item
