"""forge: Face2Face-, NeuralTextures- and Deepfakes-like manipulations of faces, written in the FF++ layout.

design.md "One data path, three data worlds" and its manipulation table: forge applies the same three stand-ins for
FF++'s methods to any face (a synth render or a real photograph), frame-aligned with the pristine clip as in FF++:

| FF++ method | stand-in | what changes | mask |
|---|---|---|---|
| Face2Face | expression reenactment (:func:`face2face`) | brows, eyes, mouth warped to another expression | union of changed regions |
| NeuralTextures | mouth re-render (:func:`neural_textures`) | mouth/jaw only, smooth "neural texture" artefact | mouth/jaw region |
| Deepfakes | identity swap (:func:`deepfakes`) | inner face of another identity, aligned, colour-matched | box around the face |

Every manipulation returns ``(fake, mask)``: ``fake`` is RGB uint8, ``mask`` uint8 in {0, 255} (white =
manipulated, reference-facts §B.3) and every pixel outside the mask is *exactly* the pristine pixel (the result is
composed as ``where(mask, blended, pristine)``; feathering happens only inside the mask), so the mask covers every
changed pixel before compression.

Expression transfer (Face2Face, NeuralTextures) first aligns the source landmarks to the target with a similarity
transform fitted on stable points (eye corners, nose; :func:`align_landmarks`), so that only the expression moves,
not the head pose. Warps are piecewise affine over a Delaunay triangulation of the 68 landmarks plus fixed anchors.

:func:`clip_from_photo` turns one photo into a short "video" (smooth head motion, lighting flicker, blinks);
:func:`write_world` writes pristine clips and their fakes in the official FF++ layout (reference-facts §B.1–B.2:
``original_sequences/youtube/<comp>/videos/<id>.mp4``, ``manipulated_sequences/<Method>/<comp>/videos/<t>_<s>.mp4``,
lossless ``manipulated_sequences/<Method>/masks/videos/<t>_<s>.mp4``, ``splits/{train,val,test}.json``);
:func:`build_faces_world` (``emd forge``) does all of it for a folder of face photos.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import time
import zlib
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import cv2
import numpy as np
from scipy.spatial import Delaunay
from tqdm.auto import tqdm

from emdlib.data.clip import Clip
from emdlib.data.video import write_video
from emdlib.io import read_json, write_json

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------------------------------------------
# dlib / iBUG-300W 68-point groups
# ----------------------------------------------------------------------------------------------------------------
JAW = list(range(0, 17))
BROW_R = list(range(17, 22))  # subject's right = image left
BROW_L = list(range(22, 27))
NOSE = list(range(27, 36))
EYE_R = list(range(36, 42))
EYE_L = list(range(42, 48))
MOUTH = list(range(48, 68))
INNER_LIPS = list(range(60, 68))
#: points that do not move with the expression: eye corners and nose (used to align expressions, not head pose)
STABLE = [36, 39, 42, 45, 27, 28, 29, 30, 31, 33, 35]
#: landmarks Face2Face re-renders (design.md table: brows, eyes and mouth)
F2F_POINTS = BROW_R + BROW_L + EYE_R + EYE_L + MOUTH
#: landmarks NeuralTextures re-renders (mouth and the lower jaw that follows it)
NT_JAW = list(range(5, 12))
NT_POINTS = NT_JAW + MOUTH

#: FF++ compression names -> libx264 crf (reference-facts §B.2: c23 = crf 23, c40 = crf 40, raw = lossless)
CRF = {"c23": 23, "c40": 40, "raw": None}

ORIGINAL_DIR = Path("original_sequences") / "youtube"
MANIPULATED_DIR = Path("manipulated_sequences")
SPLITS = ("train", "val", "test")

# ----------------------------------------------------------------------------------------------------------------
# geometry
# ----------------------------------------------------------------------------------------------------------------
def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation; Umeyama 1991) mapping ``src`` onto ``dst``.

    Returns a 2x3 float64 matrix ``M`` with ``dst ~ src @ M[:, :2].T + M[:, 2]``.
    """
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    cov = d.T @ s / len(src)
    u, sig, vt = np.linalg.svd(cov)
    e = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        e[1, 1] = -1
    r = u @ e @ vt
    var = (s**2).sum() / len(src)
    scale = float(np.trace(np.diag(sig) @ e) / var) if var > 0 else 1.0
    m = np.zeros((2, 3))
    m[:, :2] = scale * r
    m[:, 2] = mu_d - scale * r @ mu_s
    return m


def apply_affine(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Apply a 2x3 affine matrix to ``(N, 2)`` points."""
    pts = np.asarray(pts, np.float64)
    return (pts @ m[:, :2].T + m[:, 2]).astype(np.float32)


def align_landmarks(source_lms: np.ndarray, target_lms: np.ndarray, points: Sequence[int] = STABLE) -> np.ndarray:
    """Source landmarks moved into the target's head pose by a similarity fitted on stable ``points``
    (eye corners, nose), so that only the expression differs from the target (design.md "forge")."""
    m = similarity_transform(source_lms[points], target_lms[points])
    return apply_affine(m, source_lms)


def transfer_expression(
    target_lms: np.ndarray, source_lms: np.ndarray, points: Sequence[int], strength: float = 1.0
) -> np.ndarray:
    """Target landmarks whose ``points`` take the source's (pose-aligned) configuration, ``strength`` in [0, 1]."""
    aligned = align_landmarks(source_lms, target_lms)
    new = target_lms.astype(np.float32).copy()
    idx = list(points)
    new[idx] = target_lms[idx] + float(strength) * (aligned[idx] - target_lms[idx])
    return new


def interocular(lms: np.ndarray) -> float:
    """Distance between the eye centres (the face scale used for every margin below)."""
    return float(np.linalg.norm(lms[EYE_L].mean(0) - lms[EYE_R].mean(0))) or 1.0


def _polygon_area(pts: np.ndarray) -> float:
    x, y = pts[:, 0].astype(np.float64), pts[:, 1].astype(np.float64)
    return 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def _anchors(lms: np.ndarray, shape: tuple[int, ...], scale: float = 1.45, n: int = 16) -> np.ndarray:
    """Fixed mesh anchors: a ring around the face and the frame border (they never move)."""
    h, w = shape[:2]
    c = lms.mean(0)
    r = (lms.max(0) - lms.min(0)) / 2.0 * scale
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    ring = np.stack([c[0] + r[0] * np.cos(t), c[1] + r[1] * np.sin(t)], 1)
    ring = np.clip(ring, 0, [w - 1, h - 1])
    xs, ys = np.linspace(0, w - 1, 5), np.linspace(0, h - 1, 5)
    border = [(x, 0) for x in xs] + [(x, h - 1) for x in xs] + [(0, y) for y in ys[1:-1]] + [(w - 1, y) for y in ys[1:-1]]
    pts = np.concatenate([ring, np.asarray(border, np.float64)]).astype(np.float32)
    # drop ring points that coincide with border points after clipping
    _, keep = np.unique(np.round(pts, 1), axis=0, return_index=True)
    return pts[np.sort(keep)]


def piecewise_affine_map(
    src_pts: np.ndarray, dst_pts: np.ndarray, shape: tuple[int, ...], triangles: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Backward map of a piecewise-affine warp taking ``src_pts`` to ``dst_pts``.

    Triangles come from a Delaunay triangulation of ``src_pts`` (where the points are well spread) unless given,
    and are rasterised in destination coordinates. Returns ``(map_x, map_y, covered)``: for each destination pixel
    the source coordinates to sample (identity where no triangle covers it), and the covered mask.
    Triangles whose three vertices do not move give an exact identity map.
    """
    h, w = shape[:2]
    src = np.asarray(src_pts, np.float64)
    dst = np.asarray(dst_pts, np.float64)
    if triangles is None:
        triangles = Delaunay(src).simplices
    ids = np.full((h, w), -1, np.int32)
    mats = np.zeros((len(triangles), 2, 3), np.float64)
    for k, tri in enumerate(triangles):
        d, s = dst[tri], src[tri]
        a = np.concatenate([d, np.ones((3, 1))], 1)  # rows (x, y, 1)
        if abs(np.linalg.det(a)) < 1e-6:
            continue
        mats[k] = np.linalg.solve(a, s).T  # s = a @ M.T
        if np.abs(d - s).max() < 1e-6:
            mats[k] = [[1, 0, 0], [0, 1, 0]]
        cv2.fillConvexPoly(ids, np.round(d * 16).astype(np.int32), k, lineType=cv2.LINE_8, shift=4)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    covered = ids >= 0
    m = mats[np.maximum(ids, 0)]
    map_x = np.where(covered, m[..., 0, 0] * xx + m[..., 0, 1] * yy + m[..., 0, 2], xx).astype(np.float32)
    map_y = np.where(covered, m[..., 1, 0] * xx + m[..., 1, 1] * yy + m[..., 1, 2], yy).astype(np.float32)
    return map_x, map_y, covered


def _face_mesh(lms: np.ndarray, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Landmarks + fixed anchors and the Delaunay triangles over them."""
    pts = np.concatenate([lms.astype(np.float32), _anchors(lms, shape)])
    return pts, Delaunay(pts.astype(np.float64)).simplices


def warp_landmarks(
    image: np.ndarray, lms: np.ndarray, new_lms: np.ndarray, weight: np.ndarray | None = None,
) -> np.ndarray:
    """Warp ``image`` (landmarks ``lms``) so that its landmarks move to ``new_lms`` (piecewise affine, fixed anchors).

    ``weight`` (H, W) in [0, 1] scales the displacement per pixel (a feathered mask confines the warp).
    """
    pts, tris = _face_mesh(lms, image.shape)
    new_pts = np.concatenate([new_lms.astype(np.float32), pts[len(lms):]])
    map_x, map_y, _ = piecewise_affine_map(pts, new_pts, image.shape, tris)
    if weight is not None:
        h, w = image.shape[:2]
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        map_x = xx + weight * (map_x - xx)
        map_y = yy + weight * (map_y - yy)
    return cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)


# ----------------------------------------------------------------------------------------------------------------
# masks and blending
# ----------------------------------------------------------------------------------------------------------------
def hull_mask(shape: tuple[int, ...], pts: np.ndarray, dilate: float = 0.0) -> np.ndarray:
    """uint8 {0, 255} mask of the convex hull of ``pts``, dilated by ``dilate`` pixels (elliptic kernel)."""
    mask = np.zeros(shape[:2], np.uint8)
    hull = cv2.convexHull(np.round(np.asarray(pts) * 16).astype(np.int32))
    cv2.fillConvexPoly(mask, hull, 255, lineType=cv2.LINE_8, shift=4)
    r = int(round(dilate))
    if r > 0:
        mask = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1)))
    elif r < 0:
        mask = cv2.erode(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (-2 * r + 1, -2 * r + 1)))
    return mask


def feather(mask: np.ndarray, width: float) -> np.ndarray:
    """Alpha in [0, 1], 0 outside ``mask`` and rising smoothly to 1 at ``width`` pixels inside it."""
    m = (mask > 0).astype(np.uint8)
    if not m.any():
        return np.zeros(mask.shape, np.float32)
    dist = cv2.distanceTransform(m, cv2.DIST_L2, 5)
    t = np.clip(dist / max(float(width), 1e-3), 0.0, 1.0)
    return (t * t * (3 - 2 * t)).astype(np.float32)


def _compose(pristine: np.ndarray, blended: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``where(mask, blended, pristine)`` rounded to uint8: outside the mask the fake *is* the pristine frame."""
    out = np.clip(np.round(blended), 0, 255).astype(np.uint8)
    return np.where(mask[..., None] > 0, out, pristine)


def _lerp(a: np.ndarray, b: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    alpha = alpha[..., None] if alpha.ndim == 2 else alpha
    return a.astype(np.float32) * (1 - alpha) + b.astype(np.float32) * alpha


def _skin_mask(lms: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Cheeks and nose, between the eyes and the mouth: a reference patch for colour statistics."""
    return hull_mask(shape, lms[[1, 2, 3, 31, 33, 35, 13, 14, 15, 28]])


def _mean_colour(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    sel = image[mask > 0]
    if len(sel) == 0:
        return image.reshape(-1, 3).mean(0).astype(np.float32)
    return sel.reshape(-1, 3).mean(0).astype(np.float32)


def colour_match_lab(image: np.ndarray, reference: np.ndarray, image_mask: np.ndarray, reference_mask: np.ndarray) -> np.ndarray:
    """Reinhard colour transfer: match LAB mean/std of ``image`` inside ``image_mask`` to ``reference`` inside
    ``reference_mask`` (the Deepfakes colour correction, design.md table)."""
    a = cv2.cvtColor(image, cv2.COLOR_RGB2LAB).astype(np.float32)
    b = cv2.cvtColor(reference, cv2.COLOR_RGB2LAB).astype(np.float32)
    sa, sb = a[image_mask > 0], b[reference_mask > 0]
    if len(sa) < 4 or len(sb) < 4:
        return image
    mu_a, sd_a = sa.mean(0), sa.std(0) + 1e-3
    mu_b, sd_b = sb.mean(0), sb.std(0) + 1e-3
    ratio = np.clip(sd_b / sd_a, 0.8, 1.25)  # mean fully, contrast only mildly (beards, make-up)
    out = (a - mu_a) * ratio + mu_b
    return cv2.cvtColor(np.clip(out, 0, 255).astype(np.uint8), cv2.COLOR_LAB2RGB)


def _mouth_interior(
    shape: tuple[int, ...], new_lms: np.ndarray, source_frame: np.ndarray | None, source_lms: np.ndarray | None,
    gain: np.ndarray,
) -> tuple[np.ndarray, np.ndarray] | None:
    """Mouth interior (teeth / dark cavity) for an opened mouth: the source frame's inner-mouth pixels warped into
    the new inner-lip polygon (fan triangulation around its centre) and colour-scaled by ``gain``; a dark synthetic
    cavity when no source frame is given. Returns ``(interior RGB float, alpha)`` or None when the mouth is shut."""
    inner = new_lms[INNER_LIPS]
    iod = interocular(new_lms)
    if _polygon_area(inner) < (0.04 * iod) ** 2:
        return None
    poly = hull_mask(shape, inner)
    alpha = cv2.GaussianBlur(poly.astype(np.float32) / 255.0, (0, 0), max(0.6, 0.02 * iod)) * (poly > 0)
    if source_frame is not None and source_lms is not None and _polygon_area(source_lms[INNER_LIPS]) >= (0.04 * interocular(source_lms)) ** 2:
        dst = np.concatenate([inner, inner.mean(0, keepdims=True)])
        src = np.concatenate([source_lms[INNER_LIPS], source_lms[INNER_LIPS].mean(0, keepdims=True)])
        tris = np.array([[i, (i + 1) % 8, 8] for i in range(8)])
        map_x, map_y, _ = piecewise_affine_map(src, dst, shape, tris)
        interior = cv2.remap(source_frame, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)
        interior = interior.astype(np.float32) * gain
    else:
        h, w = shape[:2]
        interior = np.empty((h, w, 3), np.float32)
        interior[:] = (60, 25, 25)
        top = inner[[1, 2, 3]].mean(0)[1]
        bottom = inner[[5, 6, 7]].mean(0)[1]
        yy = np.arange(h, dtype=np.float32)[:, None]
        teeth = np.clip(1 - (yy - top) / max(0.35 * (bottom - top), 1.0), 0, 1)
        interior = interior * (1 - teeth[..., None]) + np.array([215, 205, 190], np.float32) * teeth[..., None]
        interior = interior * gain
    return interior, alpha


def _gain(frame: np.ndarray, lms: np.ndarray, source_frame: np.ndarray | None, source_lms: np.ndarray | None) -> np.ndarray:
    """Per-channel gain matching the source's lighting to the target's (mean skin colour ratio)."""
    if source_frame is None or source_lms is None:
        return np.ones(3, np.float32)
    t = _mean_colour(frame, _skin_mask(lms, frame.shape))
    s = _mean_colour(source_frame, _skin_mask(source_lms, source_frame.shape))
    return np.clip(t / np.maximum(s, 1.0), 0.5, 2.0).astype(np.float32)


def _check(frame: np.ndarray, lms: np.ndarray, what: str = "frame") -> None:
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"{what} must be RGB uint8 (H, W, 3), got {frame.shape} {frame.dtype}")
    if np.shape(lms) != (68, 2):
        raise ValueError(f"{what} landmarks must be (68, 2), got {np.shape(lms)}")


# ----------------------------------------------------------------------------------------------------------------
# the three manipulations
# ----------------------------------------------------------------------------------------------------------------
def face2face(
    frame: np.ndarray,
    lms: np.ndarray,
    source_lms: np.ndarray,
    source_frame: np.ndarray | None = None,
    *,
    strength: float = 1.0,
    tint: Sequence[float] = (1.0, 1.0, 1.0),
    render_blur: float = 0.6,
    min_alpha: float = 0.45,
) -> tuple[np.ndarray, np.ndarray]:
    """Face2Face-like expression reenactment (design.md manipulation table, FF++ Face2Face).

    Brows, eyes and mouth of ``frame`` are warped (piecewise affine over a Delaunay mesh) to the expression of
    ``source_lms`` after pose alignment on stable points; when the mouth opens, the inner mouth (teeth / cavity) is
    taken from ``source_frame`` (colour-matched to the target lighting). The re-rendered regions get a mild
    rendering artefact (slight blur ``render_blur`` x face scale / 100 px and a per-video ``tint``), blended with a
    feathered alpha that never drops below ``min_alpha`` inside the mask.
    Mask = union of the changed regions (brows, eyes, mouth; hulls of old and new landmarks, dilated); reference-facts
    §B.3: "Face2Face: region actually rendered".
    """
    _check(frame, lms)
    lms = np.asarray(lms, np.float32)
    new = transfer_expression(lms, np.asarray(source_lms, np.float32), F2F_POINTS, strength)
    iod = interocular(lms)
    shape = frame.shape
    margin_eye, margin_mouth = 0.16 * iod, 0.22 * iod
    mask = np.zeros(shape[:2], np.uint8)
    for group, margin in ((BROW_R, margin_eye), (BROW_L, margin_eye), (EYE_R, margin_eye), (EYE_L, margin_eye), (MOUTH, margin_mouth)):
        mask |= hull_mask(shape, np.concatenate([lms[group], new[group]]), margin)
    w = feather(mask, 0.8 * margin_eye)
    warped = warp_landmarks(frame, lms, new, w).astype(np.float32)
    interior = _mouth_interior(shape, new, source_frame, source_lms, _gain(frame, lms, source_frame, source_lms))
    if interior is not None:
        warped = _lerp(warped, interior[0], interior[1])
    sigma = max(0.3, render_blur * iod / 60.0)
    rendered = cv2.GaussianBlur(warped, (0, 0), sigma) * np.asarray(tint, np.float32)
    alpha = (min_alpha + (1 - min_alpha) * w) * (mask > 0)
    return _compose(frame, _lerp(warped, rendered, alpha), mask), mask


def neural_textures(
    frame: np.ndarray,
    lms: np.ndarray,
    source_lms: np.ndarray,
    source_frame: np.ndarray | None = None,
    *,
    strength: float = 1.0,
    smoothness: float = 1.0,
    tint: Sequence[float] = (1.02, 1.0, 0.98),
    min_alpha: float = 0.5,
) -> tuple[np.ndarray, np.ndarray]:
    """NeuralTextures-like mouth re-render (design.md manipulation table, FF++ NeuralTextures).

    Only the mouth and lower jaw move, to the source's (pose-aligned) mouth shape; the region is then
    "re-rendered" with the smooth neural-texture artefact: edge-preserving low-frequency smoothing that removes
    fine skin texture (``smoothness`` x face scale), a slight colour shift (``tint``) and a blurry mouth interior
    from the source. Mask = mouth/jaw region (hull of the lower face from below the nose to the chin, old and new
    landmarks).
    """
    _check(frame, lms)
    lms = np.asarray(lms, np.float32)
    new = transfer_expression(lms, np.asarray(source_lms, np.float32), NT_POINTS, strength)
    iod = interocular(lms)
    shape = frame.shape
    region = [*range(4, 13), 31, 32, 33, 34, 35, *MOUTH]
    mask = hull_mask(shape, np.concatenate([lms[region], new[region]]), 0.06 * iod)
    w = feather(mask, 0.2 * iod)
    warped = warp_landmarks(frame, lms, new, w).astype(np.float32)
    interior = _mouth_interior(shape, new, source_frame, source_lms, _gain(frame, lms, source_frame, source_lms))
    if interior is not None:
        soft = cv2.GaussianBlur(interior[0], (0, 0), max(0.5, 0.03 * iod))
        warped = _lerp(warped, soft, interior[1])
    sigma = max(0.5, 0.045 * iod * smoothness)
    low = cv2.bilateralFilter(np.clip(warped, 0, 255).astype(np.uint8), 0, 18.0, sigma).astype(np.float32)
    low = cv2.GaussianBlur(low, (0, 0), max(0.5, sigma / 3))
    rendered = low * np.asarray(tint, np.float32)
    alpha = (min_alpha + (1 - min_alpha) * w) * (mask > 0)
    return _compose(frame, _lerp(warped, rendered, alpha), mask), mask


def deepfakes(
    frame: np.ndarray,
    lms: np.ndarray,
    source_frame: np.ndarray,
    source_lms: np.ndarray,
    *,
    face_resolution: int = 72,
    box_margin: float = 0.08,
) -> tuple[np.ndarray, np.ndarray]:
    """Deepfakes-like identity swap (design.md manipulation table, FF++ Deepfakes).

    The source's inner face (jaw line to brows) is aligned to the target with a similarity on all landmarks and a
    piecewise-affine warp onto the target's landmarks (so the target's expression and pose are kept), degraded to an
    autoencoder-like resolution (``face_resolution`` px across the face), colour-matched in LAB (mean/std), blended
    with a feathered inner-face mask and finally Poisson-blended (``cv2.seamlessClone``) over a box around the face.
    Mask = that box: reference-facts §B.3 "Deepfakes: all pixels touched by the Poisson image-editing blend – a
    rectangular-ish box around the face".
    """
    _check(frame, lms)
    _check(source_frame, source_lms, "source frame")
    lms = np.asarray(lms, np.float32)
    source_lms = np.asarray(source_lms, np.float32)
    shape = frame.shape
    h, w_img = shape[:2]
    iod = interocular(lms)
    # 1. similarity alignment of the whole source face, 2. piecewise affine onto the target's landmarks
    sim = similarity_transform(source_lms, lms)
    aligned = cv2.warpAffine(source_frame, sim, (w_img, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)
    aligned_lms = apply_affine(sim, source_lms)
    pts, tris = _face_mesh(lms, shape)
    src_pts = np.concatenate([aligned_lms, pts[len(lms):]])
    map_x, map_y, _ = piecewise_affine_map(src_pts, pts, shape, tris)
    swapped = cv2.remap(aligned, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)
    # autoencoder output resolution
    face_w = float(lms[:, 0].max() - lms[:, 0].min())
    scale = min(1.0, face_resolution / max(face_w, 1.0))
    if scale < 0.95:
        small = cv2.resize(swapped, (max(8, int(w_img * scale)), max(8, int(h * scale))), interpolation=cv2.INTER_AREA)
        swapped = cv2.resize(small, (w_img, h), interpolation=cv2.INTER_LINEAR)
    inner_idx = [*range(1, 16), *BROW_R, *BROW_L]
    inner = hull_mask(shape, lms[inner_idx], -0.04 * iod)
    swapped = colour_match_lab(swapped, frame, inner, inner)
    composite = _lerp(frame, swapped, feather(inner, 0.25 * iod))
    composite = np.clip(np.round(composite), 0, 255).astype(np.uint8)
    # Poisson blend over a box around the face
    pad = box_margin * face_w
    x0, y0 = np.floor(lms[inner_idx].min(0) - pad).astype(int)
    x1, y1 = np.ceil(lms[inner_idx].max(0) + pad).astype(int)
    x0, y0 = max(x0, 2), max(y0, 2)
    x1, y1 = min(x1, w_img - 3), min(y1, h - 3)
    mask = np.zeros(shape[:2], np.uint8)
    if x1 <= x0 + 4 or y1 <= y0 + 4:
        raise ValueError(f"face box {x0},{y0},{x1},{y1} too small or outside the {w_img}x{h} frame")
    mask[y0 : y1 + 1, x0 : x1 + 1] = 255
    bx, by, bw, bh = cv2.boundingRect(mask)
    try:
        blended = cv2.seamlessClone(composite, frame, mask.copy(), (bx + bw // 2, by + bh // 2), cv2.NORMAL_CLONE)
    except cv2.error as e:  # pragma: no cover - OpenCV refuses odd geometries; the feathered composite stands
        log.debug("seamlessClone failed (%s); using the feathered composite", e)
        blended = composite
    return _compose(frame, blended.astype(np.float32), mask), mask


METHOD_FUNCTIONS: dict[str, str] = {"Face2Face": "face2face", "NeuralTextures": "neural_textures", "Deepfakes": "deepfakes"}


def manipulate_frame(
    method: str,
    frame: np.ndarray,
    lms: np.ndarray,
    source_frame: np.ndarray,
    source_lms: np.ndarray,
    **params: Any,
) -> tuple[np.ndarray, np.ndarray]:
    """Apply FF++ ``method`` ("Face2Face", "NeuralTextures", "Deepfakes") to one target frame with one source frame.

    Face2Face / NeuralTextures take the source's expression (and mouth interior), Deepfakes its identity;
    ``params`` go to the method function. Returns ``(fake RGB uint8, mask uint8 {0,255})`` (Fig. 3 helper).
    """
    if method == "Face2Face":
        return face2face(frame, lms, source_lms, source_frame, **params)
    if method == "NeuralTextures":
        return neural_textures(frame, lms, source_lms, source_frame, **params)
    if method == "Deepfakes":
        return deepfakes(frame, lms, source_frame, source_lms, **params)
    raise ValueError(f"unknown manipulation method {method!r}; choose one of {sorted(METHOD_FUNCTIONS)}")


def video_params(method: str, rng: np.random.Generator) -> dict[str, Any]:
    """Per-video artefact parameters (constant over a video, so fakes are temporally consistent)."""
    if method == "Face2Face":
        return {"tint": tuple(1.0 + rng.uniform(-0.03, 0.03, 3)), "render_blur": float(rng.uniform(0.4, 0.9))}
    if method == "NeuralTextures":
        return {"tint": tuple(1.0 + rng.uniform(-0.035, 0.035, 3)), "smoothness": float(rng.uniform(0.8, 1.3))}
    if method == "Deepfakes":
        return {"face_resolution": int(rng.integers(56, 97))}
    raise ValueError(f"unknown manipulation method {method!r}; choose one of {sorted(METHOD_FUNCTIONS)}")


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
# the FF++ layout
# ----------------------------------------------------------------------------------------------------------------
def original_path(root: Path, comp: str, vid: str) -> Path:
    """``<root>/original_sequences/youtube/<comp>/videos/<id>.mp4`` (reference-facts §B.2)."""
    return Path(root) / ORIGINAL_DIR / comp / "videos" / f"{vid}.mp4"


def fake_path(root: Path, method: str, comp: str, name: str) -> Path:
    """``<root>/manipulated_sequences/<Method>/<comp>/videos/<target>_<source>.mp4`` (reference-facts §B.2)."""
    return Path(root) / MANIPULATED_DIR / method / comp / "videos" / f"{name}.mp4"


def mask_path(root: Path, method: str, name: str) -> Path:
    """``<root>/manipulated_sequences/<Method>/masks/videos/<target>_<source>.mp4`` (reference-facts §B.2–B.3)."""
    return Path(root) / MANIPULATED_DIR / method / "masks" / "videos" / f"{name}.mp4"


def _write_json_if_changed(path: Path, obj: Any) -> bool:
    if path.is_file():
        try:
            if read_json(path) == json_roundtrip(obj):
                return False
        except ValueError:
            pass
    write_json(path, obj)
    return True


def json_roundtrip(obj: Any) -> Any:
    """``obj`` as it reads back from JSON (tuples -> lists), to compare with a file's content."""
    import json

    from emdlib.io import _json_default

    return json.loads(json.dumps(obj, default=_json_default))


def _rng(seed: int, *names: str) -> np.random.Generator:
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, *(zlib.crc32(n.encode()) for n in names)])


def fake_frames(method: str, target: Clip, source: Clip, params: Mapping[str, Any] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """All frames of the fake ``<target>_<source>`` and its masks, frame-aligned with ``target`` (source frame ``i``
    drives target frame ``i``, cycled when the source is shorter; design.md "frame-aligned as in FF++")."""
    params = dict(params or {})
    fakes = np.empty_like(target.frames)
    masks = np.empty(target.frames.shape[:3], np.uint8)
    for i in range(len(target)):
        j = i % len(source)
        fakes[i], masks[i] = manipulate_frame(
            method, target.frames[i], target.landmarks[i], source.frames[j], source.landmarks[j], **params
        )
    return fakes, masks


def _encode(path: Path, frames: np.ndarray, comp: str) -> None:
    crf = CRF[comp]
    write_video(path, frames, crf=crf if crf is not None else 0, lossless=crf is None)


def write_world(
    out_root: Path,
    clips: Mapping[str, Clip],
    pairs: Mapping[str, Sequence[tuple[str, str]]],
    cfg: Any,
    seed: int,
    *,
    sources: Mapping[str, Mapping[str, str]] | None = None,
    extra: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> dict:
    """Write pristine clips and their manipulations in the official FF++ layout (reference-facts §B.1–B.3).

    For every split pair ``(a, b)``: the originals ``a`` and ``b`` at every compression in ``cfg.compressions``
    (c23 = crf 23, c40 = crf 40, raw = lossless), and for each method in ``cfg.methods`` the fakes ``a_b`` (target
    ``a``, source ``b``) and ``b_a`` at every compression plus a lossless mask video. Face2Face and NeuralTextures take
    the expression of frame ``i`` of the source clip (cycled), Deepfakes its face. ``sources`` optionally overrides
    the source clip of a fake per method (``{"Deepfakes": {"000_001": "002"}}``, used by the paired photo world,
    where a person's own other photo drives the expression but the identity must come from another person).
    Writes ``splits/{train,val,test}.json`` (lists of ``[a, b]``) and ``world.json`` (counts, config, seed, the
    actual sources, plus ``extra``). Resumable: outputs that exist are skipped (every write is atomic), so a second
    run writes nothing. Returns a summary with what was written and the encoding speed.
    """
    out_root = Path(out_root)
    methods = tuple(cfg.methods)
    comps = tuple(cfg.compressions)
    for c in comps:
        if c not in CRF:
            raise ValueError(f"unknown compression {c!r}; choose from {sorted(CRF)}")
    for m in methods:
        if m not in METHOD_FUNCTIONS:
            raise ValueError(f"unknown manipulation method {m!r}; choose one of {sorted(METHOD_FUNCTIONS)}")
    sources = {m: dict(v) for m, v in (sources or {}).items()}
    split_pairs = {s: [(str(a), str(b)) for a, b in pairs.get(s, [])] for s in SPLITS}
    unknown = set(pairs) - set(SPLITS)
    if unknown:
        raise ValueError(f"unknown split(s) {sorted(unknown)}; expected {SPLITS}")
    seen: dict[str, str] = {}
    for s, ps in split_pairs.items():
        for a, b in ps:
            if a == b:
                raise ValueError(f"split {s}: pair ({a}, {b}) pairs a video with itself")
            for v in (a, b):
                if v in seen:
                    raise ValueError(f"id {v} appears twice in the splits ({seen[v]} and {s}); FF++ ids are disjoint")
                seen[v] = s
    needed = set(seen) | {src for m in sources.values() for src in m.values()}
    missing = sorted(v for v in needed if v not in clips)
    if missing:
        raise ValueError(f"{len(missing)} id(s) in the splits have no clip: {missing[:10]}")

    for s in SPLITS:
        _write_json_if_changed(out_root / "splits" / f"{s}.json", [list(p) for p in split_pairs[s]])

    reals = sorted(seen)
    fakes: list[tuple[str, str, str, str]] = []  # (method, name, target, source)
    for m in methods:
        for s in SPLITS:
            for a, b in split_pairs[s]:
                for t, src in ((a, b), (b, a)):
                    name = f"{t}_{src}"
                    fakes.append((m, name, t, sources.get(m, {}).get(name, src)))

    stats = {"videos_written": 0, "videos_skipped": 0, "frames_encoded": 0, "encode_s": 0.0, "manipulate_s": 0.0}
    frame_counts: dict[str, int] = {}

    def encode(path: Path, frames: np.ndarray, comp: str) -> None:
        t0 = time.perf_counter()
        _encode(path, frames, comp)
        stats["encode_s"] += time.perf_counter() - t0
        stats["frames_encoded"] += len(frames)
        stats["videos_written"] += 1

    todo = [("original", v, v, v) for v in reals] + fakes
    bar = tqdm(todo, desc="forge: writing FF++ layout", unit="video", disable=not progress)
    for method, name, target, source in bar:
        if method == "original":
            outs = [(original_path(out_root, c, name), c) for c in comps]
        else:
            outs = [(fake_path(out_root, method, c, name), c) for c in comps] + [(mask_path(out_root, method, name), "mask")]
        frame_counts[f"{method}/{name}"] = len(clips[target])
        pending = [(p, c) for p, c in outs if not p.is_file()]
        stats["videos_skipped"] += len(outs) - len(pending)
        if not pending:
            continue
        if method == "original":
            for p, c in pending:
                encode(p, clips[name].frames, c)
            continue
        t0 = time.perf_counter()
        params = video_params(method, _rng(seed, method, name))
        frames, masks = fake_frames(method, clips[target], clips[source], params)
        stats["manipulate_s"] += time.perf_counter() - t0
        for p, c in pending:
            if c == "mask":
                t1 = time.perf_counter()
                write_video(p, masks, lossless=True)
                stats["encode_s"] += time.perf_counter() - t1
                stats["frames_encoded"] += len(masks)
                stats["videos_written"] += 1
            else:
                encode(p, frames, c)

    overridden = {m: {n: s for (mm, n, t, s) in fakes if mm == m and s != n.split("_", 1)[1]} for m in methods}
    counts = {"original": len(reals), **{m: sum(1 for f in fakes if f[0] == m) for m in methods}}
    world = {
        "world": getattr(cfg, "world", ""),
        "seed": int(seed),
        "config": dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else dict(vars(cfg)),
        "methods": list(methods),
        "compressions": list(comps),
        "pairs": {s: len(split_pairs[s]) for s in SPLITS},
        "counts": counts,
        "frames": {"total_per_compression": int(sum(frame_counts.values())),
                   "per_video": sorted(set(frame_counts.values()))},
        "sources": {m: o for m, o in overridden.items() if o},
        **dict(extra or {}),
    }
    _write_json_if_changed(out_root / "world.json", world)
    fps = stats["frames_encoded"] / stats["encode_s"] if stats["encode_s"] > 0 else None
    summary = {
        "root": str(out_root),
        **{k: world[k] for k in ("world", "seed", "pairs", "counts")},
        "videos_written": stats["videos_written"],
        "videos_skipped": stats["videos_skipped"],
        "frames_encoded": stats["frames_encoded"],
        "encode_fps": round(fps, 1) if fps else None,
        "manipulate_s": round(stats["manipulate_s"], 2),
        "encode_s": round(stats["encode_s"], 2),
    }
    log.info("forge: %s", summary)
    return summary


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
        return lambda: clip_from_photo(rgb, lms, _rng(seed, "clip", vid), cfg.frames_per_clip, cfg.frame_size,
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
