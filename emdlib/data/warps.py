"""Landmark geometry shared by the forged manipulations (:mod:`emdlib.data.forge`) and the clips made from photos
(:mod:`emdlib.data.photos`): dlib's 68-point groups, similarity alignment (Umeyama 1991), piecewise-affine warps over a
Delaunay triangulation of the landmarks plus fixed anchors, and landmark-hull masks with feathered edges.

Landmarks are ``(68, 2)`` float arrays of x/y pixel coordinates in dlib / iBUG-300W order; images are RGB uint8
``(H, W, 3)``.
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np
from scipy.spatial import Delaunay

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


def polygon_area(pts: np.ndarray) -> float:
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


def face_mesh(lms: np.ndarray, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Landmarks + fixed anchors and the Delaunay triangles over them."""
    pts = np.concatenate([lms.astype(np.float32), _anchors(lms, shape)])
    return pts, Delaunay(pts.astype(np.float64)).simplices


def warp_landmarks(
    image: np.ndarray, lms: np.ndarray, new_lms: np.ndarray, weight: np.ndarray | None = None,
) -> np.ndarray:
    """Warp ``image`` (landmarks ``lms``) so that its landmarks move to ``new_lms`` (piecewise affine, fixed anchors).

    ``weight`` (H, W) in [0, 1] scales the displacement per pixel (a feathered mask confines the warp).
    """
    pts, tris = face_mesh(lms, image.shape)
    new_pts = np.concatenate([new_lms.astype(np.float32), pts[len(lms):]])
    map_x, map_y, _ = piecewise_affine_map(pts, new_pts, image.shape, tris)
    if weight is not None:
        h, w = image.shape[:2]
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        map_x = xx + weight * (map_x - xx)
        map_y = yy + weight * (map_y - yy)
    return cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)


# ----------------------------------------------------------------------------------------------------------------
# region masks
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
