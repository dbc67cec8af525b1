"""forge: Face2Face-, NeuralTextures- and Deepfakes-like manipulations of faces (the manipulations only).

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
transform fitted on stable points (eye corners, nose; :func:`emdlib.data.warps.align_landmarks`), so that only the
expression moves, not the head pose. The warps are those of :mod:`emdlib.data.warps`. :func:`fake_frames` makes
every frame of one fake video; the FF++ layout is written by :mod:`emdlib.data.world`, and real photos become clips
in :mod:`emdlib.data.photos`.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

import cv2
import numpy as np

from emdlib.data.clip import Clip
from emdlib.data.warps import (BROW_L, BROW_R, EYE_L, EYE_R, INNER_LIPS, MOUTH, apply_affine, face_mesh, feather,
                               hull_mask, interocular, piecewise_affine_map, polygon_area, similarity_transform,
                               transfer_expression, warp_landmarks)

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------------------------------------------
# the regions each manipulation re-renders
# ----------------------------------------------------------------------------------------------------------------
#: landmarks Face2Face re-renders (design.md table: brows, eyes and mouth)
F2F_POINTS = BROW_R + BROW_L + EYE_R + EYE_L + MOUTH
#: landmarks NeuralTextures re-renders (mouth and the lower jaw that follows it)
NT_JAW = list(range(5, 12))
NT_POINTS = NT_JAW + MOUTH

# ----------------------------------------------------------------------------------------------------------------
# masks and blending
# ----------------------------------------------------------------------------------------------------------------
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
    if polygon_area(inner) < (0.04 * iod) ** 2:
        return None
    poly = hull_mask(shape, inner)
    alpha = cv2.GaussianBlur(poly.astype(np.float32) / 255.0, (0, 0), max(0.6, 0.02 * iod)) * (poly > 0)
    if source_frame is not None and source_lms is not None and polygon_area(source_lms[INNER_LIPS]) >= (0.04 * interocular(source_lms)) ** 2:
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
    pts, tris = face_mesh(lms, shape)
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
