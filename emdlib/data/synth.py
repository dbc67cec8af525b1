"""Procedurally rendered faces: the embedded, offline default data world ("synth", design.md "Data worlds").

Everything a face is made of is a parameter: an :class:`Identity` (face shape, skin tone, eyes, brows, nose, lips,
hair, background, skin texture, lighting) and :class:`ExpressionParams` for the eight AffectNet categories
(reference-facts §A.2, ``EXPRESSIONS``) expressed as the facial actions that make them readable: mouth-corner
curve, mouth opening/width/asymmetry, upper-lip raise, lip press, brow height, inner-brow raise/lower, brow
squeeze, eye opening and cheek raise.

The geometry lives in a canonical face frame (x right, y down, one unit = half the face width, origin between
the nose bridge and the nose tip) with a depth per point, so a small head yaw moves the features the way a real
head does. The 68 landmarks are computed analytically in dlib / iBUG-300W order (jaw 0-16, brows 17-26, nose
27-35, eyes 36-47, mouth 48-67) and every feature is drawn *from* those landmarks, so the landmarks are what is
drawn. Drawing is OpenCV with anti-aliasing at ``SUPERSAMPLE`` x the output size, then an area downsample.

Built on top of :func:`render_face`:

* :func:`render_clip` - a short "video" with smooth head motion, lighting flicker, blinks and an expression that
  changes smoothly between 2-3 key expressions (design.md: pristine videos show all expressions).
* :func:`render_expression_set` - class-per-folder PNG face crops, the AffectNet stand-in for the FER stream.
* :func:`build_synth_world` - one pristine clip per FF++-style id, handed to ``world.write_world`` which writes the
  FF++ layout (originals, manipulations, masks, splits).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
from tqdm import tqdm

from emdlib.data.clip import Clip
from emdlib.data.expressions import EXPRESSIONS
from emdlib.io import atomic_path
from emdlib.presets import DataConfig

log = logging.getLogger(__name__)

SUPERSAMPLE = 2  # render at this multiple of the output size, then area-downsample (anti-aliasing)
FACE_UNIT = 0.225  # half the face width as a fraction of the frame side at pose scale 1 (face ~55% of the frame)
FACE_CENTER = (0.5, 0.53)  # canonical origin in frame fractions at pose tx = ty = 0
HAIR_STYLES = ("short", "long", "bangs", "bald", "curly")
_HAIR_STYLE_P = (0.3, 0.25, 0.15, 0.12, 0.18)

# Skin tones from light to dark (RGB 0..1); a sampled identity jitters one of them.
_SKIN_TONES = np.array(
    [
        (0.96, 0.80, 0.69), (0.92, 0.74, 0.62), (0.87, 0.68, 0.54), (0.80, 0.60, 0.46),
        (0.72, 0.52, 0.38), (0.63, 0.44, 0.31), (0.55, 0.37, 0.26), (0.47, 0.31, 0.21),
    ],
    dtype=np.float32,
)
_HAIR_COLOURS = np.array(
    [
        (0.08, 0.06, 0.05), (0.18, 0.12, 0.08), (0.30, 0.19, 0.11), (0.45, 0.30, 0.16),
        (0.70, 0.55, 0.32), (0.55, 0.22, 0.10), (0.62, 0.60, 0.58), (0.12, 0.10, 0.10),
    ],
    dtype=np.float32,
)
_IRIS_COLOURS = np.array(
    [(0.30, 0.18, 0.09), (0.20, 0.12, 0.06), (0.25, 0.40, 0.60), (0.30, 0.45, 0.30), (0.45, 0.35, 0.20)],
    dtype=np.float32,
)


# --------------------------------------------------------------------------------------------------- identity


@dataclass(frozen=True)
class Identity:
    """Everything that makes one synthetic person look like themselves (design.md "synth").

    Shape factors are multiplicative around 1; colours are RGB floats in [0, 1].
    """

    face_width: float = 1.0
    face_height: float = 1.0
    jaw_square: float = 0.5  # 0 = oval, 1 = square jaw
    chin: float = 0.0  # extra chin length (face units)
    skin: tuple[float, float, float] = (0.87, 0.68, 0.54)
    eye_size: float = 1.0
    eye_spacing: float = 1.0
    eye_tilt: float = 0.0  # outer corner up (+) / down (-), face units
    eye_open: float = 1.0  # resting lid aperture
    iris: tuple[float, float, float] = (0.30, 0.18, 0.09)
    brow_thickness: float = 1.0
    brow_arch: float = 0.5
    brow_colour: tuple[float, float, float] = (0.15, 0.10, 0.07)
    nose_length: float = 1.0
    nose_width: float = 1.0
    mouth_width: float = 1.0
    lip_thickness: float = 1.0
    lip_colour: tuple[float, float, float] = (0.72, 0.38, 0.36)
    hair_style: str = "short"
    hair_colour: tuple[float, float, float] = (0.18, 0.12, 0.08)
    hairline: float = 0.0  # hairline height offset (face units, + = higher forehead)
    background: tuple[float, float, float] = (0.55, 0.62, 0.70)
    background2: tuple[float, float, float] = (0.35, 0.42, 0.50)
    background_angle: float = 1.2  # direction of the background gradient (radians)
    shirt: tuple[float, float, float] = (0.25, 0.30, 0.45)
    texture: float = 0.025  # skin texture noise amplitude
    texture_seed: int = 0
    light_angle: float = 2.4  # direction the light comes from in the image plane (radians, 0 = from the right)
    light_strength: float = 0.18
    ambient: float = 1.0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _jitter_colour(rng: np.random.Generator, base: np.ndarray, amount: float) -> tuple[float, float, float]:
    c = np.clip(base * (1.0 + rng.normal(0.0, amount, 3)) + rng.normal(0.0, amount / 3, 1), 0.0, 1.0)
    return tuple(float(v) for v in c)


def _luma(c: np.ndarray) -> float:
    return float(np.asarray(c, np.float64) @ np.array([0.299, 0.587, 0.114]))


def _contrast_background(bg: np.ndarray, bg2: np.ndarray, skin_lum: float, min_diff: float = 0.2):
    """Scale the background towards black or white until its luma differs from the skin's by ``min_diff``:
    dlib's detector (and video codecs) see luminance, so the face outline must exist in luma, not only in hue."""
    lum = (_luma(bg) + _luma(bg2)) / 2
    if abs(lum - skin_lum) >= min_diff:
        return bg, bg2
    if skin_lum + min_diff <= 0.92:  # brighten: blend towards white
        a = (skin_lum + min_diff - lum) / max(1.0 - lum, 1e-6)
        return bg + a * (1 - bg), bg2 + a * (1 - bg2)
    k = max(skin_lum - min_diff, 0.05) / max(lum, 1e-6)  # darken
    return bg * k, bg2 * k


def sample_identity(rng: np.random.Generator) -> Identity:
    """A random :class:`Identity` (design.md "synth": face shape, skin tone, eyes, nose, hair, background, texture,
    lighting). Deterministic for a given generator state."""
    skin = _SKIN_TONES[rng.integers(len(_SKIN_TONES))]
    skin = np.clip(skin * rng.uniform(0.95, 1.05) + rng.normal(0, 0.015, 3), 0.05, 1.0).astype(np.float32)
    hair = _HAIR_COLOURS[rng.integers(len(_HAIR_COLOURS))]
    hair_colour = _jitter_colour(rng, hair, 0.08)
    brow = np.minimum(np.array(hair_colour), skin * 0.35) * rng.uniform(0.6, 0.9)
    lip = np.clip(skin * np.array([0.88, 0.58, 0.58]) + np.array([0.05, 0.0, 0.02]), 0, 1)
    lip = np.clip(lip * rng.uniform(0.85, 1.05), 0, 1)
    # Background: any hue, but kept away from the skin's luminance so the face outline stays visible.
    skin_lum = float(skin @ np.array([0.299, 0.587, 0.114]))
    hue = rng.uniform(0, 180)
    sat = rng.uniform(30, 140)
    val = rng.uniform(60, 130) if skin_lum > 0.55 else rng.uniform(15, 60)
    if rng.random() < 0.1:  # a few bright backgrounds too, as in real videos
        val = rng.uniform(170, 240) if skin_lum <= 0.72 else val
    hsv = np.uint8([[[hue, sat, val]]])
    bg = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32) / 255.0
    bg2 = np.clip(bg * rng.uniform(0.7, 1.15) + rng.normal(0, 0.04, 3), 0, 1)
    bg, bg2 = _contrast_background(bg, bg2, skin_lum)
    shirt_hsv = np.uint8([[[rng.uniform(0, 180), rng.uniform(20, 200), rng.uniform(40, 220)]]])
    shirt = cv2.cvtColor(shirt_hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32) / 255.0
    return Identity(
        face_width=float(rng.uniform(0.92, 1.06)),
        face_height=float(rng.uniform(0.93, 1.08)),
        jaw_square=float(rng.uniform(0.0, 1.0)),
        chin=float(rng.uniform(-0.06, 0.08)),
        skin=tuple(float(v) for v in skin),
        eye_size=float(rng.uniform(0.88, 1.12)),
        eye_spacing=float(rng.uniform(0.94, 1.06)),
        eye_tilt=float(rng.uniform(-0.02, 0.035)),
        eye_open=float(rng.uniform(0.85, 1.1)),
        iris=_jitter_colour(rng, _IRIS_COLOURS[rng.integers(len(_IRIS_COLOURS))], 0.1),
        brow_thickness=float(rng.uniform(0.75, 1.35)),
        brow_arch=float(rng.uniform(0.2, 1.0)),
        brow_colour=tuple(float(v) for v in brow),
        nose_length=float(rng.uniform(0.9, 1.1)),
        nose_width=float(rng.uniform(0.85, 1.2)),
        mouth_width=float(rng.uniform(0.9, 1.1)),
        lip_thickness=float(rng.uniform(0.75, 1.25)),
        lip_colour=tuple(float(v) for v in lip),
        hair_style=str(HAIR_STYLES[rng.choice(len(HAIR_STYLES), p=_HAIR_STYLE_P)]),
        hair_colour=hair_colour,
        hairline=float(rng.uniform(-0.08, 0.12)),
        background=tuple(float(v) for v in bg),
        background2=tuple(float(v) for v in bg2),
        background_angle=float(rng.uniform(0, 2 * math.pi)),
        shirt=tuple(float(v) for v in shirt),
        texture=float(rng.uniform(0.012, 0.035)),
        texture_seed=int(rng.integers(2**31 - 1)),
        light_angle=float(rng.uniform(0, 2 * math.pi)),
        light_strength=float(rng.uniform(0.08, 0.25)),
        ambient=float(rng.uniform(0.92, 1.06)),
    )


# ------------------------------------------------------------------------------------------------- expression


@dataclass(frozen=True)
class ExpressionParams:
    """Facial actions that make an expression readable (neutral = all zero, ``eye_open`` = 1).

    ``mouth_curve`` > 0 lifts the mouth corners (smile), < 0 pulls them down; ``mouth_open`` drops the jaw and
    parts the lips; ``mouth_width`` stretches (+) or purses (-) the mouth; ``mouth_asym`` lifts one corner only
    (contempt); ``lip_raise`` lifts the upper lip (disgust); ``lip_press`` thins the lips (anger); ``brow_raise``
    lifts both brows; ``brow_inner`` raises (+, sadness/fear) or lowers (-, anger) the inner brow ends;
    ``brow_squeeze`` pulls the brows together; ``eye_open`` scales the lid aperture; ``cheek_raise`` pushes the
    lower lids and cheeks up (Duchenne smile); ``nose_wrinkle`` wrinkles the nose (disgust).
    """

    mouth_curve: float = 0.0
    mouth_open: float = 0.0
    mouth_width: float = 0.0
    mouth_asym: float = 0.0
    lip_raise: float = 0.0
    lip_press: float = 0.0
    brow_raise: float = 0.0
    brow_inner: float = 0.0
    brow_squeeze: float = 0.0
    eye_open: float = 1.0
    cheek_raise: float = 0.0
    nose_wrinkle: float = 0.0

    def as_array(self) -> np.ndarray:
        return np.array(dataclasses.astuple(self), dtype=np.float64)

    @classmethod
    def from_array(cls, values: Sequence[float]) -> "ExpressionParams":
        return cls(*(float(v) for v in values))


_EXPRESSION_TARGETS: dict[str, ExpressionParams] = {
    "neutral": ExpressionParams(),
    "happy": ExpressionParams(mouth_curve=1.0, mouth_open=0.35, mouth_width=0.22, eye_open=0.78, cheek_raise=1.0,
                              brow_raise=0.05),
    "sad": ExpressionParams(mouth_curve=-0.95, mouth_width=-0.05, lip_press=0.2, brow_inner=1.0, brow_raise=-0.05,
                            brow_squeeze=0.2, eye_open=0.78),
    "surprise": ExpressionParams(mouth_open=1.0, mouth_width=-0.32, brow_raise=1.0, eye_open=1.45),
    "fear": ExpressionParams(mouth_curve=-0.45, mouth_open=0.45, mouth_width=0.3, brow_raise=0.6, brow_inner=0.9,
                             brow_squeeze=0.45, eye_open=1.4),
    "disgust": ExpressionParams(mouth_curve=-0.5, mouth_open=0.08, lip_raise=1.0, brow_raise=-0.2, brow_inner=-0.5,
                                brow_squeeze=0.6, eye_open=0.68, cheek_raise=0.6, nose_wrinkle=1.0),
    "anger": ExpressionParams(mouth_curve=-0.3, mouth_width=-0.12, lip_press=1.0, brow_raise=-0.25, brow_inner=-1.0,
                              brow_squeeze=1.0, eye_open=0.92),
    "contempt": ExpressionParams(mouth_asym=1.0, mouth_width=0.05, lip_press=0.3, eye_open=0.9, brow_raise=0.05),
}
assert tuple(_EXPRESSION_TARGETS) == EXPRESSIONS


def expression_params(name: str, intensity: float = 1.0) -> ExpressionParams:
    """Parameters of AffectNet expression ``name`` (reference-facts §A.2 classes) at ``intensity`` (0 = neutral,
    1 = full), linear between the neutral face and the full expression."""
    if name not in _EXPRESSION_TARGETS:
        raise KeyError(f"unknown expression {name!r}; choose one of {list(EXPRESSIONS)}")
    return interpolate_expressions(_EXPRESSION_TARGETS["neutral"], _EXPRESSION_TARGETS[name], intensity)


def interpolate_expressions(a: ExpressionParams, b: ExpressionParams, t: float) -> ExpressionParams:
    """``(1 - t) * a + t * b`` parameter-wise (a smooth morph between two expressions)."""
    return ExpressionParams.from_array((1.0 - t) * a.as_array() + t * b.as_array())


# ------------------------------------------------------------------------------------------------------- pose


@dataclass(frozen=True)
class Pose:
    """Head pose: in-plane rotation ``roll`` and small out-of-plane ``yaw`` (degrees), translation ``tx``, ``ty``
    (fractions of the frame side) and ``scale`` (1 = face about 55% of the frame)."""

    roll: float = 0.0
    tx: float = 0.0
    ty: float = 0.0
    scale: float = 1.0
    yaw: float = 0.0

    @classmethod
    def coerce(cls, pose: "Pose | Sequence[float] | None") -> "Pose":
        """A :class:`Pose` from ``None``, a Pose, or a tuple ``(roll, tx, ty, scale[, yaw])``."""
        if pose is None:
            return cls()
        if isinstance(pose, Pose):
            return pose
        values = [float(v) for v in pose]
        if len(values) not in (4, 5):
            raise ValueError(f"pose must be (roll, tx, ty, scale[, yaw]), got {pose!r}")
        return cls(*values)


# --------------------------------------------------------------------------------------------------- geometry


def _catmull_rom(points: np.ndarray, n: int = 8) -> np.ndarray:
    """A smooth curve through ``points`` (open, end points kept), ``n`` samples per segment."""
    p = np.asarray(points, dtype=np.float64)
    if len(p) < 3:
        t = np.linspace(0, 1, n * (len(p) - 1) + 1)[:, None]
        return p[0] * (1 - t) + p[-1] * t
    ext = np.vstack([2 * p[0] - p[1], p, 2 * p[-1] - p[-2]])
    out = []
    t = np.linspace(0, 1, n, endpoint=False)[:, None]
    for i in range(1, len(ext) - 2):
        p0, p1, p2, p3 = ext[i - 1], ext[i], ext[i + 1], ext[i + 2]
        out.append(0.5 * ((2 * p1) + (-p0 + p2) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2
                          + (-p0 + 3 * p1 - 3 * p2 + p3) * t**3))
    out.append(p[-1][None])
    return np.vstack(out)


def _resample(curve: np.ndarray, n: int) -> np.ndarray:
    """``n`` points evenly spaced by arc length along a polyline."""
    seg = np.linalg.norm(np.diff(curve, axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    targets = np.linspace(0, s[-1], n)
    return np.stack([np.interp(targets, s, curve[:, k]) for k in range(curve.shape[1])], axis=1)


def _depth(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Depth of the face surface (an elongated ellipsoid) at canonical ``(x, y)``; used only for yaw."""
    return 0.9 * np.sqrt(np.clip(1.0 - (x / 1.08) ** 2 - (y / 2.2) ** 2, 0.0, None))


@dataclass
class _Geometry:
    """Canonical 2-D geometry of one face (68 landmarks plus the outlines needed to draw it)."""

    landmarks: np.ndarray  # (68, 2)
    lm_depth: np.ndarray  # (68,) extra depth above the face surface (nose, lips)
    jaw_curve: np.ndarray  # dense jaw, image-left temple -> chin -> image-right temple
    forehead: np.ndarray  # dense forehead arc, image-right temple -> top -> image-left temple
    head: np.ndarray  # dense cranium outline (for hair)
    hairline: np.ndarray  # dense hairline, image-left temple -> image-right temple
    mouth_gap: float
    eye_open: tuple[float, float]


def face_geometry(identity: Identity, expression: ExpressionParams, blink: float = 0.0) -> _Geometry:
    """Canonical landmarks and outlines of ``identity`` showing ``expression`` with lids closed by ``blink``.

    Expression actions act on the landmarks only; everything drawn is derived from them.
    """
    e = expression
    ident = identity
    W = ident.face_width
    jaw_top = -0.47
    chin_y = 1.15 * ident.face_height + ident.chin
    mouth_y = 0.45 * ident.face_height + 0.3 * ident.chin
    open_ = max(e.mouth_open, 0.0)
    gap = 0.40 * open_  # lip parting at the centre
    jaw_drop = 0.30 * open_

    # --- jaw: superellipse from the temples round the chin, lowered below the mouth when the jaw opens
    s = np.linspace(0.0, math.pi, 181)
    n_exp = 2.0 + 1.4 * ident.jaw_square
    cx = -np.sign(np.cos(s)) * np.abs(np.cos(s)) ** (2.0 / n_exp)
    cy = np.abs(np.sin(s)) ** (2.0 / n_exp)
    jaw = np.stack([W * cx, jaw_top + (chin_y - jaw_top) * cy], axis=1)
    # narrow the chin a little (faces are not boxes) and drop the jaw below the mouth
    below = np.clip((jaw[:, 1] - mouth_y) / (chin_y - mouth_y), 0.0, 1.0)
    jaw[:, 0] *= 1.0 - 0.12 * below**2
    jaw[:, 1] += jaw_drop * below
    jaw[:, 0] *= 1.0 - 0.05 * open_ * below  # an open jaw looks longer and a little narrower
    jaw_pts = _resample(jaw, 17)

    # --- forehead and cranium
    t = np.linspace(0.0, math.pi, 91)
    top = 1.05 * ident.face_height
    forehead = np.stack([W * 0.99 * np.cos(t), jaw_top - top * np.sin(t) ** 0.9], axis=1)  # right -> left
    head = np.stack([W * 1.1 * np.cos(t), jaw_top + 0.15 - (top + 0.32) * np.sin(t) ** 0.85], axis=1)
    hl_y = -1.22 * ident.face_height - ident.hairline
    hx = np.linspace(-1.0, 1.0, 41)
    hairline = np.stack([W * 0.97 * hx, hl_y + (jaw_top - 0.15 - hl_y) * np.abs(hx) ** 3.0], axis=1)

    # --- brows (top edge, outer -> inner), image-left brow first
    ex = 0.45 * ident.eye_spacing
    ey = -0.50
    ew = 0.175 * ident.eye_size
    tb = np.linspace(0.0, 1.0, 5)
    arch = 1.0 - ((tb - 0.4) / 0.6) ** 2
    bx = ex + ew * 1.55 - (ew * 1.55 + ex - 0.19 * ident.eye_spacing) * tb  # outer x -> inner x (positive side)
    by = -0.70 - (0.05 + 0.07 * ident.brow_arch) * arch
    by = by - 0.19 * e.brow_raise * (0.75 + 0.25 * arch)
    by = by - 0.16 * e.brow_inner * tb**1.5
    if e.brow_inner > 0:  # raised inner ends slant the brow: the outer tail drops a little (sad, fear)
        by = by + 0.04 * e.brow_inner * (1 - tb) ** 2
    bx = bx - 0.06 * e.brow_squeeze * tb
    by = by + 0.03 * e.brow_squeeze * tb
    brow_r = np.stack([bx, by], axis=1)  # subject's left = image right, outer -> inner
    brow_l = np.stack([-bx, by], axis=1)  # image left, outer -> inner

    # --- eyes
    aperture = max(ident.eye_open * e.eye_open * (1.0 - float(np.clip(blink, 0.0, 1.0))), 0.0)
    hu = 0.092 * ident.eye_size * aperture
    lower_open = min(aperture, 1.0) ** 0.5 * (1.0 - 0.35 * max(e.cheek_raise, 0.0))
    hl = 0.05 * ident.eye_size * lower_open
    if aperture > 1.0:  # wide eyes: the lower lid drops too
        hl += 0.02 * (aperture - 1.0)

    def eye(sign: float) -> np.ndarray:
        cxe = sign * ex
        outer = (cxe + sign * ew, ey - ident.eye_tilt)
        inner = (cxe - sign * ew, ey + 0.3 * ident.eye_tilt)
        up_o = (cxe + sign * ew / 3, ey - hu - 0.35 * ident.eye_tilt)
        up_i = (cxe - sign * ew / 3, ey - hu * 0.92)
        lo_i = (cxe - sign * ew / 3, ey + hl)
        lo_o = (cxe + sign * ew / 3, ey + hl * 0.95 - 0.3 * ident.eye_tilt)
        if sign < 0:  # image-left eye: 36 outer, 37, 38 upper, 39 inner, 40, 41 lower
            return np.array([outer, up_o, up_i, inner, lo_i, lo_o])
        return np.array([inner, up_i, up_o, outer, lo_o, lo_i])  # 42 inner, 43, 44 upper, 45 outer, 46, 47

    eye_l, eye_r = eye(-1.0), eye(+1.0)

    # --- nose
    nl = ident.nose_length
    nw = ident.nose_width * (1.0 + 0.12 * e.nose_wrinkle)
    nose_tip_y = -0.02 * nl + 0.04 * (nl - 1.0)
    bridge = np.stack([np.zeros(4), np.linspace(-0.52, nose_tip_y, 4)], axis=1)
    base_y = nose_tip_y + 0.14 - 0.03 * e.nose_wrinkle
    nostrils = np.array([(-0.21 * nw, base_y - 0.05), (-0.11 * nw, base_y - 0.01), (0.0, base_y),
                         (0.11 * nw, base_y - 0.01), (0.21 * nw, base_y - 0.05)])

    # --- mouth: outer 48-59, inner 60-67 around (0, mouth_y), deformed by the mouth actions
    mw = 0.37 * ident.mouth_width * (1.0 + 0.4 * e.mouth_width)
    lt = ident.lip_thickness * (1.0 - 0.5 * max(e.lip_press, 0.0))
    ou = np.array([-1.0, -0.62, -0.27, 0.0, 0.27, 0.62, 1.0])
    outer_up_dy = np.array([0.0, -0.075, -0.105, -0.088, -0.105, -0.075, 0.0]) * lt
    ol = np.array([0.6, 0.3, 0.0, -0.3, -0.6])  # 55..59 run right -> left
    outer_lo_dy = np.array([0.10, 0.16, 0.175, 0.16, 0.10]) * lt
    iu = np.array([-0.86, -0.35, 0.0, 0.35, 0.86])  # 60..64
    inner_up_dy = np.array([0.0, -0.008, -0.004, -0.008, 0.0])
    il = np.array([0.35, 0.0, -0.35])  # 65..67 right -> left
    inner_lo_dy = np.array([0.008, 0.004, 0.008])
    u = np.concatenate([ou, ol, iu, il])
    dy = np.concatenate([outer_up_dy, outer_lo_dy, inner_up_dy, inner_lo_dy]).astype(np.float64)
    is_lower = np.concatenate([np.zeros(7), np.ones(5), np.zeros(5), np.ones(3)]).astype(bool)
    is_inner = np.concatenate([np.zeros(12), np.ones(8)]).astype(bool)
    # opening: lower lip follows the jaw, most at the centre; the upper lip lifts slightly
    centre = np.sqrt(np.clip(1.0 - u**2, 0.0, 1.0))
    dy = dy + np.where(is_lower, gap * (0.3 + 0.7 * centre**0.6), -0.06 * open_ * centre)
    dy = dy + 0.25 * gap * (1.0 - centre)  # the corners follow the jaw a little
    # upper-lip raise (disgust): the upper lip lifts off the teeth, more at the centre-sides
    lift = max(e.lip_raise, 0.0) * (0.09 * (1.0 - 0.6 * u**2))
    dy = dy - np.where(is_lower, 0.0, lift * np.where(is_inner, 1.3, 1.0))
    # corner curve and one-sided curve (contempt)
    dy = dy - 0.14 * e.mouth_curve * u**2
    dy = dy - 0.13 * e.mouth_asym * np.clip(u, 0.0, None) ** 2
    sx = 1.0 + 0.10 * max(e.mouth_curve, 0.0) * u**2 + 0.08 * e.mouth_asym * np.clip(u, 0.0, None)
    mouth = np.stack([u * mw * sx, mouth_y + dy], axis=1)
    # inner corners sit just inside the outer corners, on their line
    mouth[12] = (mouth[0, 0] * 0.86, mouth[0, 1])
    mouth[16] = (mouth[6, 0] * 0.86, mouth[6, 1])

    lm = np.zeros((68, 2), dtype=np.float64)
    lm[0:17] = jaw_pts
    lm[17:22] = brow_l
    lm[22:27] = brow_r[::-1]  # 22 inner -> 26 outer
    lm[27:31] = bridge
    lm[31:36] = nostrils
    lm[36:42] = eye_l
    lm[42:48] = eye_r
    lm[48:68] = mouth
    depth = np.zeros(68)
    depth[27:31] = [0.08, 0.17, 0.27, 0.36]
    depth[31:36] = [0.12, 0.2, 0.24, 0.2, 0.12]
    depth[48:68] = 0.08
    depth[36:48] = -0.04
    return _Geometry(lm, depth, jaw, forehead, head, hairline, gap, (aperture, aperture))


class _Projector:
    """Canonical (x, y[, extra depth]) -> supersampled image pixels for one pose (yaw about the vertical axis,
    then roll, scale and translation)."""

    def __init__(self, pose: Pose, size_ss: int):
        self.unit = FACE_UNIT * size_ss * pose.scale
        self.cx = (FACE_CENTER[0] + pose.tx) * size_ss
        self.cy = (FACE_CENTER[1] + pose.ty) * size_ss
        self.yaw = math.radians(pose.yaw)
        r = math.radians(pose.roll)
        self.rot = np.array([[math.cos(r), -math.sin(r)], [math.sin(r), math.cos(r)]])

    def __call__(self, pts: np.ndarray, extra_depth: np.ndarray | float = 0.0, flat: bool = False) -> np.ndarray:
        pts = np.asarray(pts, dtype=np.float64)
        x, y = pts[..., 0], pts[..., 1]
        if flat:
            z = np.zeros_like(x)
        else:
            z = _depth(x, y) + extra_depth
        xr = x * math.cos(self.yaw) + z * math.sin(self.yaw)
        p = np.stack([xr, y], axis=-1) @ self.rot.T
        return np.stack([self.cx + self.unit * p[..., 0], self.cy + self.unit * p[..., 1]], axis=-1)

    def affine(self) -> np.ndarray:
        """2x3 matrix canonical -> image, ignoring yaw (for textures)."""
        a = self.unit * self.rot
        return np.array([[a[0, 0], a[0, 1], self.cx], [a[1, 0], a[1, 1], self.cy]])


# --------------------------------------------------------------------------------------------------- drawing

_SHIFT = 4
_ONE = 1 << _SHIFT


def _ipts(pts: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(pts) * _ONE).astype(np.int32).reshape(-1, 1, 2)


def _col(colour) -> tuple[float, ...]:
    return tuple(float(c) for c in np.atleast_1d(np.asarray(colour, dtype=np.float64)))


def _fill(img: np.ndarray, pts: np.ndarray, colour) -> None:
    cv2.fillPoly(img, [_ipts(pts)], _col(colour), cv2.LINE_AA, _SHIFT)


def _line(img: np.ndarray, pts: np.ndarray, colour, thickness: float, closed: bool = False) -> None:
    cv2.polylines(img, [_ipts(pts)], closed, _col(colour), max(int(round(thickness)), 1), cv2.LINE_AA, _SHIFT)


def _mask(shape: tuple[int, int], pts: np.ndarray) -> np.ndarray:
    m = np.zeros(shape, np.float32)
    _fill(m, pts, 1.0)
    return m


def _ellipse(c, ax: float, ay: float, n: int = 40, angle: float = 0.0) -> np.ndarray:
    t = np.linspace(0, 2 * math.pi, n, endpoint=False)
    p = np.stack([ax * np.cos(t), ay * np.sin(t)], axis=1)
    if angle:
        ca, sa = math.cos(angle), math.sin(angle)
        p = p @ np.array([[ca, -sa], [sa, ca]]).T
    return p + np.asarray(c, dtype=np.float64)


def _blend(img: np.ndarray, alpha: np.ndarray, colour) -> None:
    """In place: ``img = img * (1 - alpha) + colour * alpha`` with a (H, W) alpha, inside alpha's bounding box."""
    x, y, w, h = cv2.boundingRect((alpha > 1e-4).astype(np.uint8))
    if w == 0 or h == 0:
        return
    a = alpha[y:y + h, x:x + w, None]
    roi = img[y:y + h, x:x + w]
    roi *= 1.0 - a
    roi += a * np.asarray(colour, dtype=np.float32)


@functools.lru_cache(maxsize=8)
def _grid(S: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:S, 0:S].astype(np.float32) / S
    return yy, xx


def _blur(a: np.ndarray, sigma: float) -> np.ndarray:
    if sigma <= 0.3:
        return a
    k = int(2 * math.ceil(3 * sigma) + 1)
    return cv2.GaussianBlur(a, (k, k), sigma)


@functools.lru_cache(maxsize=32)
def _skin_texture(seed: int, res: int = 192) -> np.ndarray:
    """A fixed per-identity texture over canonical [-2, 2]^2 (pores, blotches), zero mean, unit std."""
    rng = np.random.default_rng(seed)
    fine = rng.normal(size=(res, res)).astype(np.float32)
    coarse = cv2.resize(rng.normal(size=(res // 12, res // 12)).astype(np.float32), (res, res),
                        interpolation=cv2.INTER_CUBIC)
    tex = 0.6 * cv2.GaussianBlur(fine, (3, 3), 0.7) + 0.8 * coarse
    return (tex - tex.mean()) / (tex.std() + 1e-6)


def _draw_hair(img: np.ndarray, geo: _Geometry, ident: Identity, proj: _Projector, front: bool,
               rng_hair: np.random.Generator) -> None:
    """Hair behind the head (``front=False``) or over the forehead (``front=True``)."""
    colour = np.asarray(ident.hair_colour, np.float32)
    style = ident.hair_style
    head = geo.head
    W = ident.face_width
    if not front:
        if style == "long":
            back = np.vstack([head, np.array([(-1.3 * W, 0.2), (-1.42 * W, 1.6), (1.42 * W, 1.6), (1.3 * W, 0.2)])])
            _fill(img, proj(back, flat=True), colour * 0.8)
        elif style == "curly":
            t = np.linspace(0, 2 * math.pi, 200, endpoint=False)
            r = 1.0 + 0.06 * np.sin(t * 14 + ident.texture_seed % 7)
            cloud = np.stack([1.45 * W * r * np.cos(t), -0.95 + 1.05 * r * np.sin(t)], axis=1)
            _fill(img, proj(cloud, flat=True), colour * 0.85)
        return
    if style == "bald":
        return
    hl = geo.hairline.copy()
    if style == "bangs":
        hx = hl[:, 0] / W
        hl[:, 1] = np.where(np.abs(hx) < 0.8, np.minimum(hl[:, 1], -1.08 * ident.face_height) + 0.04
                            * np.abs(np.sin(hx * 9.0)), hl[:, 1])
    cap = np.vstack([head, hl])  # head runs right -> left over the top; hairline runs left -> right
    if style == "long":
        lock_l = np.array([(-1.1 * W, -0.6), (-0.93 * W, -0.9), (-0.95 * W, 0.1), (-1.05 * W, 0.75), (-1.3 * W, 0.6)])
        _fill(img, proj(lock_l, flat=True), colour * 0.92)
        lock_r = lock_l * np.array([-1.0, 1.0])
        _fill(img, proj(lock_r, flat=True), colour * 0.92)
    if style == "curly":
        cap_pts = proj(cap, flat=True)
        _fill(img, cap_pts, colour)
        for _ in range(40):
            c = (rng_hair.uniform(-1.0, 1.0) * W, rng_hair.uniform(-1.75, -1.2))
            _fill(img, proj(_ellipse(c, 0.1, 0.09, 12), flat=True), colour * rng_hair.uniform(0.75, 1.2))
        return
    cap_pts = proj(cap, flat=True)
    _fill(img, cap_pts, colour)
    # strands: thin darker / lighter curves from the crown towards the hairline
    thick = max(proj.unit * 0.02, 1.0)
    for _ in range(18):
        x0 = rng_hair.uniform(-0.9, 0.9) * W
        y_end = float(np.interp(x0, hl[:, 0], hl[:, 1])) - 0.05
        y0 = -1.58 * ident.face_height
        strand = np.array([(x0 * 0.4, y0), (x0 * 0.8, (y0 + y_end) / 2), (x0, y_end)])
        _line(img, proj(_catmull_rom(strand, 6), flat=True), tuple(colour * rng_hair.uniform(0.6, 1.4)), thick)


def render_face(
    identity: Identity,
    expression_params: ExpressionParams,
    size: int,
    pose: Pose | Sequence[float] | None = None,
    blink: float = 0.0,
    rng: np.random.Generator | None = None,
    exposure: float = 1.0,
    gaze: tuple[float, float] = (0.0, 0.0),
) -> tuple[np.ndarray, np.ndarray]:
    """Render one face: RGB uint8 ``(size, size, 3)`` and its 68 landmarks ``(68, 2)`` float32 (dlib order,
    x/y pixels), drawn from the same analytic geometry.

    ``pose`` is a :class:`Pose` or ``(roll, tx, ty, scale[, yaw])``; ``blink`` closes the lids (0..1);
    ``exposure`` scales the light (flicker); ``gaze`` moves the irises (fractions of the eye width); ``rng``
    adds sensor noise (none when ``None``, so the image is a pure function of its arguments).
    """
    if size < 16:
        raise ValueError(f"render_face: size must be at least 16 px, got {size}")
    ident = identity
    pose = Pose.coerce(pose)
    ss = SUPERSAMPLE
    S = size * ss
    proj = _Projector(pose, S)
    U = proj.unit
    geo = face_geometry(ident, expression_params, blink)
    e = expression_params
    lm_c = geo.landmarks
    lm = proj(lm_c, geo.lm_depth)
    skin = np.asarray(ident.skin, np.float32)
    rng_hair = np.random.default_rng(ident.texture_seed + 1)

    # --- background: linear gradient plus a soft vignette
    yy, xx = _grid(S)
    ga = ident.background_angle
    ramp = np.clip(0.5 + (xx - 0.5) * math.cos(ga) + (yy - 0.5) * math.sin(ga), 0.0, 1.0)[..., None]
    img = (np.asarray(ident.background, np.float32) * (1 - ramp)
           + np.asarray(ident.background2, np.float32) * ramp).astype(np.float32)
    vign = 1.0 - 0.25 * ((xx - 0.5) ** 2 + (yy - 0.5) ** 2)
    img *= vign[..., None]

    # --- body: shoulders and neck
    W = ident.face_width
    shirt = np.array([(-2.9, 3.6), (-2.5, 2.05), (-1.6, 1.62), (-0.75, 1.5), (0.0, 1.9), (0.75, 1.5),
                      (1.6, 1.62), (2.5, 2.05), (2.9, 3.6)])
    shirt = shirt + np.array([0.0, 0.12 * (ident.face_height - 1.0)])
    _draw_hair(img, geo, ident, proj, front=False, rng_hair=rng_hair)
    neck = np.array([(-0.55 * W, 0.45), (-0.58 * W, 1.75), (-0.4, 2.0), (0.4, 2.0), (0.58 * W, 1.75),
                     (0.55 * W, 0.45)])
    _fill(img, proj(neck, flat=True), tuple(skin * 0.8))
    _fill(img, proj(shirt, flat=True), tuple(np.asarray(ident.shirt, np.float32)))
    collar = np.array([(-0.75, 1.5), (0.0, 1.9), (0.75, 1.5)])
    _line(img, proj(collar, flat=True), tuple(np.asarray(ident.shirt, np.float32) * 0.6), U * 0.05)

    # --- ears
    for sgn in (-1.0, 1.0):
        ear = _ellipse((sgn * (W + 0.02), -0.28), 0.13, 0.27, 24)
        _fill(img, proj(ear, 0.0), tuple(skin * 0.88))
        inner = _ellipse((sgn * (W + 0.04), -0.28), 0.06, 0.16, 16)
        _fill(img, proj(inner, 0.0), tuple(skin * 0.72))

    # --- face
    face_outline = np.vstack([geo.jaw_curve, geo.forehead[1:-1]])
    face_pts = proj(face_outline)
    face_m = _mask((S, S), face_pts)
    _blend(img, face_m, skin)

    # skin texture, warped with the face (fixed per identity)
    tex = _skin_texture(ident.texture_seed)
    res = tex.shape[0]
    to_tex = np.array([[res / 4.0, 0, res / 2.0], [0, res / 4.0, res / 2.0], [0, 0, 1]])
    A = np.vstack([proj.affine(), [0, 0, 1]]) @ np.linalg.inv(to_tex)
    tex_img = cv2.warpAffine(tex, A[:2], (S, S), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)

    # --- shading: rim fall-off, directional light, sockets, nose and mouth shadows (a multiplicative map)
    dist = cv2.distanceTransform((face_m > 0.5).astype(np.uint8), cv2.DIST_L2, 5) / U
    rim = np.sqrt(np.clip(dist / 0.45, 0.0, 1.0))
    lx, ly = math.cos(ident.light_angle), math.sin(ident.light_angle)
    fx = (xx * S - proj.cx) / (U * 1.1)
    fy = (yy * S - proj.cy) / (U * 1.6)
    light = ident.light_strength * np.clip(fx * lx + fy * ly, -1.2, 1.2)
    feat = np.zeros((S, S), np.float32)
    # eye sockets and the shadow under the brows
    for idx in ((36, 42), (42, 48)):
        eye = lm_c[idx[0]:idx[1]]
        c = eye.mean(axis=0) + np.array([0.0, -0.04])
        _fill(feat, proj(_ellipse(c, 0.28 * ident.eye_size, 0.18, 24), -0.02), -0.30)
    # nose: side shadows and bridge highlight
    side = 1.0 if lx < 0 else -1.0  # shadow on the side away from the light
    nose_side = np.array([(side * 0.07, -0.42), (side * 0.12, -0.1), (side * 0.22 * ident.nose_width, 0.05),
                          (side * 0.1, 0.02), (side * 0.04, -0.42)])
    _fill(feat, proj(nose_side, 0.2), -0.17)
    nose_side2 = nose_side * np.array([-1.0, 1.0])
    _fill(feat, proj(nose_side2, 0.2), -0.07)
    _line(feat, proj(lm_c[27:31] + np.array([-side * 0.03, 0.0]), geo.lm_depth[27:31]), 0.10, U * 0.06)
    # under the nose, under the lower lip, under the chin, and cheekbones
    _fill(feat, proj(_ellipse((0.0, lm_c[33, 1] + 0.05), 0.22 * ident.nose_width, 0.05, 20), 0.1), -0.12)
    _fill(feat, proj(_ellipse((0.0, lm_c[57, 1] + 0.08), 0.2, 0.06, 20), 0.05), -0.12)
    for sgn in (-1.0, 1.0):
        ch = (sgn * 0.55, 0.05 - 0.1 * max(e.cheek_raise, 0.0) - 0.05 * max(e.mouth_curve, 0.0))
        _fill(feat, proj(_ellipse(ch, 0.22, 0.14, 20)), 0.06 + 0.05 * max(e.cheek_raise, 0.0))
    # forehead highlight
    _fill(feat, proj(_ellipse((0.0, -1.0), 0.5, 0.22, 20)), 0.05)
    feat = _blur(feat, 0.07 * U)
    shade = (0.72 + 0.28 * rim) * (1.0 + light) * (1.0 + feat) * ident.ambient
    shade = _blur(shade.astype(np.float32), 0.02 * U)
    face_region = np.clip(_blur(face_m, 0.01 * U), 0.0, 1.0)
    mult = 1.0 + face_region * (shade - 1.0 + ident.texture * tex_img)
    img *= mult[..., None]
    # cheek blush
    blush = np.zeros((S, S), np.float32)
    for sgn in (-1.0, 1.0):
        _fill(blush, proj(_ellipse((sgn * 0.55, 0.12 - 0.08 * max(e.cheek_raise, 0.0)), 0.2, 0.12, 20)), 1.0)
    blush = _blur(blush, 0.1 * U) * face_m * 0.12
    _blend(img, blush, (0.85, 0.35, 0.35))

    # specular sheen (forehead, nose bridge, cheekbones, chin): gives darker skin the luminance relief that
    # real faces have and that the detector and the codec need
    sheen = np.zeros((S, S), np.float32)
    _fill(sheen, proj(_ellipse((0.0, -0.95), 0.42, 0.2, 20)), 0.8)
    _line(sheen, proj(lm_c[27:31], geo.lm_depth[27:31]), 1.0, U * 0.07)
    for sgn in (-1.0, 1.0):
        _fill(sheen, proj(_ellipse((sgn * 0.5, -0.12 - 0.08 * max(e.cheek_raise, 0.0)), 0.2, 0.09, 20)), 0.7)
    _fill(sheen, proj(_ellipse((0.0, lm_c[8, 1] - 0.17), 0.16, 0.07, 16)), 0.6)
    sheen = _blur(sheen, 0.06 * U) * face_m * (0.08 + 0.35 * max(0.0, 0.62 - _luma(skin)))
    _blend(img, sheen, (1.0, 0.96, 0.92))

    # neck shadow under the chin
    neck_sh = np.zeros((S, S), np.float32)
    _fill(neck_sh, proj(neck, flat=True), 1.0)
    neck_sh *= 1.0 - np.clip(_blur(face_m, 0.05 * U) * 1.5, 0.0, 1.0)
    neck_sh = _blur(neck_sh * (1.0 - np.clip((yy * S - lm[8, 1]) / (0.7 * U), 0.0, 1.0)), 0.03 * U)
    img *= (1.0 - 0.35 * neck_sh)[..., None]

    # --- nasolabial folds (deepen with a smile) and disgust wrinkles
    fold = 0.25 + 0.6 * max(e.mouth_curve, 0.0) + 0.4 * max(e.cheek_raise, 0.0) + 0.3 * e.nose_wrinkle
    folds = np.zeros((S, S), np.float32)
    for sgn, corner in ((-1.0, lm_c[48]), (1.0, lm_c[54])):
        start = np.array([sgn * 0.26 * ident.nose_width, lm_c[31, 1] - 0.05])
        mid = np.array([sgn * 0.42, (start[1] + corner[1]) / 2])
        end = corner + np.array([sgn * 0.1, 0.08])
        _line(folds, proj(_catmull_rom(np.array([start, mid, end]), 8), 0.05), min(fold, 1.0), U * 0.035)
    if e.nose_wrinkle > 0.05:
        for k in range(3):
            y0 = -0.42 + 0.06 * k
            _line(folds, proj(np.array([(-0.07, y0), (0.0, y0 + 0.015), (0.07, y0)]), 0.15), e.nose_wrinkle * 0.5,
                  U * 0.018)
    if e.brow_squeeze > 0.3 or (e.brow_inner > 0.3):  # frown lines between the brows
        k = max(e.brow_squeeze, e.brow_inner) - 0.3
        for sgn in (-1.0, 1.0):
            x0 = sgn * 0.07
            _line(folds, proj(np.array([(x0, -0.82), (x0 * 0.8, -0.6)])), k, U * 0.025)
    if e.brow_raise > 0.3:  # forehead lines
        for k in range(3):
            y0 = -1.0 - 0.09 * k - 0.1 * e.brow_raise
            _line(folds, proj(_catmull_rom(np.array([(-0.45, y0 + 0.02), (0.0, y0), (0.45, y0 + 0.02)]), 6)),
                  (e.brow_raise - 0.3) * 0.7, U * 0.02)
    folds = _blur(folds, 0.015 * U)
    img *= (1.0 - 0.35 * folds)[..., None]

    # --- nose: alar wings and nostrils
    nose_col = skin * 0.55
    nw = ident.nose_width
    for sgn, (a, b) in ((-1.0, (31, 32)), (1.0, (35, 34))):
        wing = np.array([lm_c[a] + np.array([sgn * 0.02, -0.12]), lm_c[a] + np.array([sgn * 0.04, -0.03]), lm_c[a],
                         lm_c[b] + np.array([0.0, 0.01])])
        _line(img, proj(_catmull_rom(wing, 6), 0.2), tuple(skin * 0.7), U * 0.03)
        nostril = _ellipse((lm_c[a] + lm_c[b]) / 2 + np.array([0.0, -0.015]), 0.045 * nw, 0.022, 16,
                           angle=-sgn * 0.3)
        _fill(img, proj(nostril, 0.2), tuple(nose_col * 0.6))
    tip_hi = _ellipse(lm_c[30] + np.array([0.0, 0.02]), 0.07, 0.045, 16)
    hi = np.zeros((S, S), np.float32)
    _fill(hi, proj(tip_hi, 0.36), 1.0)
    _blend(img, _blur(hi, 0.03 * U) * 0.18, (1.0, 0.97, 0.93))

    # --- eyes
    eye_layer_mask = np.zeros((S, S), np.float32)
    eye_pts_img = []
    for idx in (slice(36, 42), slice(42, 48)):
        e_c = lm_c[idx]
        e_i = lm[idx]
        if idx.start == 36:
            upper = np.array([e_c[0], e_c[1], e_c[2], e_c[3]])
            lower = np.array([e_c[3], e_c[4], e_c[5], e_c[0]])
            outer_i, inner_i = 0, 3
        else:
            upper = np.array([e_c[0], e_c[1], e_c[2], e_c[3]])
            lower = np.array([e_c[3], e_c[4], e_c[5], e_c[0]])
            outer_i, inner_i = 3, 0
        up_d = _catmull_rom(upper, 8)
        lo_d = _catmull_rom(lower, 8)
        poly = np.vstack([up_d, lo_d[1:-1]])
        eye_pts_img.append((proj(up_d, -0.04), proj(lo_d, -0.04), proj(poly, -0.04), e_c, outer_i))
        _fill(eye_layer_mask, proj(poly, -0.04), 1.0)
    # sclera, iris, pupil, catch-light, then lid shadow inside the eye
    eye_img = np.zeros((S, S, 3), np.float32)
    eye_img[:] = (0.9, 0.88, 0.85)
    iris_col = np.asarray(ident.iris, np.float32)
    for (_, _, _, e_c, _), sgn in zip(eye_pts_img, (-1.0, 1.0)):
        c = (e_c[0] + e_c[3]) / 2
        ew = abs(e_c[3, 0] - e_c[0, 0]) / 2
        c = c + np.array([gaze[0] * ew * 0.35, 0.005 + gaze[1] * 0.03])
        r_iris = 0.078 * ident.eye_size
        _fill(eye_img, proj(_ellipse(c, r_iris, r_iris, 28), -0.02), tuple(iris_col))
        _fill(eye_img, proj(_ellipse(c, r_iris * 0.8, r_iris * 0.8, 28), -0.02), tuple(iris_col * 0.8))
        _fill(eye_img, proj(_ellipse(c, r_iris * 0.42, r_iris * 0.42, 20), -0.02), (0.03, 0.02, 0.02))
        _fill(eye_img, proj(_ellipse(c + np.array([0.03, -0.03]), r_iris * 0.18, r_iris * 0.18, 12), -0.02),
              (0.95, 0.95, 0.95))
    lid_shadow = np.zeros((S, S), np.float32)
    for up_i, _, _, _, _ in eye_pts_img:
        _line(lid_shadow, up_i, 1.0, U * 0.09)
    eye_img *= (1.0 - 0.35 * _blur(lid_shadow, 0.03 * U))[..., None]
    eye_alpha = eye_layer_mask
    _blend(img, eye_alpha, 0.0)
    img += eye_img * eye_alpha[..., None]
    # lids: lashes line on the upper lid, crease above, soft lower lid
    lash = tuple(np.minimum(np.asarray(ident.brow_colour, np.float32), skin * 0.3) * 0.7)
    for up_i, lo_i, _, e_c, outer_i in eye_pts_img:
        _line(img, up_i, lash, max(U * 0.045, 1.0))
        _line(img, lo_i, tuple(skin * 0.65), max(U * 0.014, 1.0))
        crease = _catmull_rom(np.array([e_c[0], e_c[1], e_c[2], e_c[3]]), 8) + np.array([0.0, -0.055])
        crease = crease[2:-2]
        _line(img, proj(crease, -0.03), tuple(skin * 0.72), max(U * 0.015, 1.0))

    # --- brows: a tapered band hanging below the landmark line (landmarks on the brow's upper edge)
    brow_layer = np.zeros((S, S), np.float32)
    for sl in (slice(17, 22), slice(22, 27)):
        top = lm_c[sl]
        if sl.start == 22:
            top = top[::-1]  # outer -> inner for both
        top_d = _catmull_rom(top, 8)
        tt = np.linspace(0.0, 1.0, len(top_d))
        thick = ident.brow_thickness * (0.04 + 0.05 * np.sin(np.clip(tt * 1.3, 0, 1) * math.pi / 2) ** 0.7)
        bottom = top_d + np.stack([np.zeros_like(tt), thick], axis=1)
        bottom[:, 1] += 0.005
        poly = np.vstack([top_d, bottom[::-1]])
        _fill(brow_layer, proj(poly), 1.0)
    brow_layer = _blur(brow_layer, 0.012 * U)
    _blend(img, brow_layer * 0.92, ident.brow_colour)

    # --- mouth
    m_c = lm_c[48:68]
    outer_up = _catmull_rom(m_c[0:7], 8)
    outer_lo = _catmull_rom(np.vstack([m_c[6:12], m_c[0:1]]), 8)
    inner_up = _catmull_rom(m_c[12:17], 8)
    inner_lo = _catmull_rom(np.vstack([m_c[16:17], m_c[17:20], m_c[12:13]]), 8)
    outer_poly = np.vstack([outer_up, outer_lo[1:-1]])
    inner_poly = np.vstack([inner_up, inner_lo[1:-1]])
    lip_col = np.asarray(ident.lip_colour, np.float32)
    lips = np.zeros((S, S), np.float32)
    _fill(lips, proj(outer_poly, 0.08), 1.0)
    _blend(img, _blur(lips, 0.006 * U), lip_col)
    up_lip = np.zeros((S, S), np.float32)
    _fill(up_lip, proj(np.vstack([outer_up, inner_up[::-1]]), 0.08), 1.0)
    img *= (1.0 - 0.15 * _blur(up_lip, 0.006 * U))[..., None]
    lo_hi = np.zeros((S, S), np.float32)
    _fill(lo_hi, proj(_ellipse((0.0, (m_c[9, 1] + m_c[18, 1]) / 2), 0.12, 0.03, 16), 0.1), 1.0)
    _blend(img, _blur(lo_hi, 0.03 * U) * 0.2, (1.0, 0.9, 0.9))
    gap = float(np.min(m_c[17:20, 1] - m_c[[15, 14, 13], 1]))
    if gap > 0.02:
        inner_i = proj(inner_poly, 0.08)
        mouth_m = _mask((S, S), inner_i)
        interior = np.zeros((S, S, 3), np.float32)
        interior[:] = (0.22, 0.06, 0.07)
        tongue = _ellipse((0.0, m_c[18, 1] + 0.02), 0.18, 0.07, 20)
        _fill(interior, proj(tongue, 0.05), (0.6, 0.25, 0.27))
        # upper teeth hang below the upper inner lip; lower teeth show when wide open
        half = 0.8 * abs(m_c[16, 0] - m_c[12, 0]) / 2
        tu = inner_up[np.abs(inner_up[:, 0]) < half]
        t_bottom = np.stack([tu[:, 0], np.full(len(tu), tu[:, 1].max() + 0.09) - 0.04 * (tu[:, 0] / half) ** 2
                             + 0.5 * (tu[:, 1] - tu[:, 1].max())], axis=1)
        teeth = np.vstack([tu + np.array([0.0, -0.05]), t_bottom[::-1]])
        _fill(interior, proj(teeth, 0.06), (0.93, 0.91, 0.85))
        if gap > 0.18:
            tl = inner_lo[np.abs(inner_lo[:, 0]) < 0.7 * half]
            lteeth = np.vstack([tl + np.array([0.0, -0.045]), (tl + np.array([0.0, 0.05]))[::-1]])
            _fill(interior, proj(lteeth, 0.06), (0.85, 0.83, 0.78))
        for k in (-2, -1, 1, 2):
            xk = 0.085 * k * ident.mouth_width
            yk = float(np.interp(xk, inner_up[:, 0], inner_up[:, 1]))
            _line(interior, proj(np.array([(xk, yk), (xk, yk + 0.07)]), 0.06), (0.7, 0.68, 0.64), U * 0.01)
        shadow = 1.0 - 0.4 * _blur(1.0 - mouth_m, 0.03 * U)
        interior *= shadow[..., None]
        _blend(img, mouth_m, 0.0)
        img += interior * mouth_m[..., None]
    _line(img, proj(inner_up, 0.08), tuple(lip_col * 0.35), max(U * 0.02, 1.0))
    if gap > 0.02:
        _line(img, proj(inner_lo, 0.08), tuple(lip_col * 0.55), max(U * 0.012, 1.0))
    for i in (48, 54):  # mouth corners
        _fill(img, proj(_ellipse(lm_c[i], 0.018, 0.012, 10), 0.05), tuple(lip_col * 0.35))

    # --- hair in front (over the forehead)
    _draw_hair(img, geo, ident, proj, front=True, rng_hair=rng_hair)

    # --- finish: exposure, slight lens blur, downsample, sensor noise
    img *= float(exposure)
    img = cv2.GaussianBlur(img, (3, 3), 0.5 * ss / 2)
    out = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
    if rng is not None:
        out = out + rng.normal(0.0, 1.2 / 255.0, out.shape).astype(np.float32)
    image = np.clip(out * 255.0 + 0.5, 0, 255).astype(np.uint8)
    landmarks = ((lm - (ss - 1) / 2.0) / ss).astype(np.float32)
    return image, landmarks


# ------------------------------------------------------------------------------------------------------ clips


def _smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _smooth_motion(rng: np.random.Generator, n: int, amplitude: float) -> np.ndarray:
    """A smooth zero-centred trajectory of ``n`` frames: two slow sinusoids with random phases. Time runs over at
    least 24 frames, so short clips move as little as the start of a long one."""
    t = np.arange(n) / max(n, 24)
    out = np.zeros(n)
    for weight in (0.7, 0.3):
        freq = rng.uniform(0.3, 1.2) / weight
        out += weight * np.sin(2 * math.pi * freq * t + rng.uniform(0, 2 * math.pi))
    return amplitude * out


def _blink_track(rng: np.random.Generator, n: int) -> np.ndarray:
    """Lid closure per frame: blinks of ~4 frames (at 30 fps) every 25-60 frames."""
    profile = np.array([0.45, 1.0, 0.65, 0.2])
    track = np.zeros(n)
    t = int(rng.integers(0, 40))
    while t < n:
        seg = track[t:t + len(profile)]
        track[t:t + len(profile)] = np.maximum(seg, profile[: len(seg)])
        t += int(rng.integers(25, 60))
    return track


def expression_schedule(keys: Sequence[ExpressionParams], n_frames: int) -> tuple[list[ExpressionParams], list[int]]:
    """Per-frame parameters that hold each key expression and morph smoothly (smoothstep) to the next, and the
    index of the key each frame shows (the nearer one during a morph)."""
    k = len(keys)
    if k == 0:
        raise ValueError("expression_schedule: at least one key expression is needed")
    centres = (np.arange(k) + 0.5) * n_frames / k
    params, labels = [], []
    for f in range(n_frames):
        j = int(np.clip(np.searchsorted(centres, f, side="right") - 1, 0, k - 1))
        if f < centres[0] or j == k - 1:
            params.append(keys[j] if f >= centres[0] else keys[0])
            labels.append(j if f >= centres[0] else 0)
            continue
        span = centres[j + 1] - centres[j]
        tau = float(_smoothstep(np.array((f - centres[j]) / span * 2.0 - 0.5)))
        params.append(interpolate_expressions(keys[j], keys[j + 1], tau))
        labels.append(j if tau < 0.5 else j + 1)
    return params, labels


def render_clip(
    identity: Identity,
    rng: np.random.Generator,
    n_frames: int,
    size: int,
    expressions: Sequence[str] | None = None,
    identity_tag: str = "",
    intensity: tuple[float, float] = (0.7, 1.0),
) -> Clip:
    """A short pristine "video" of ``identity`` (design.md: smooth head motion, small lighting flicker, blinks).

    The face moves through ``expressions`` (default: 2-3 random distinct ones), each held for about
    ``n_frames / len(expressions)`` frames and morphed smoothly into the next; each key's intensity is drawn from
    ``intensity``. ``Clip.expressions`` names the expression each frame shows.
    """
    if n_frames < 1:
        raise ValueError(f"render_clip: n_frames must be >= 1, got {n_frames}")
    if expressions is None:
        k = 3 if n_frames >= 9 else 2
        names = [str(x) for x in rng.choice(EXPRESSIONS, size=k, replace=False)]
    else:
        names = list(expressions)
        unknown = [x for x in names if x not in EXPRESSIONS]
        if unknown or not names:
            raise ValueError(f"render_clip: unknown or no expressions {unknown or names}; use {list(EXPRESSIONS)}")
    keys = [expression_params(x, rng.uniform(*intensity)) for x in names]
    params, labels = expression_schedule(keys, n_frames)

    roll = rng.uniform(-4, 4) + _smooth_motion(rng, n_frames, 2.5)
    yaw = rng.uniform(-7, 7) + _smooth_motion(rng, n_frames, 5.0)
    tx = rng.uniform(-0.025, 0.025) + _smooth_motion(rng, n_frames, 0.015)
    ty = rng.uniform(-0.025, 0.025) + _smooth_motion(rng, n_frames, 0.012)
    scale = rng.uniform(0.94, 1.06) + _smooth_motion(rng, n_frames, 0.02)
    exposure = 1.0 + _smooth_motion(rng, n_frames, 0.025) + rng.normal(0.0, 0.006, n_frames)
    gaze_x = _smooth_motion(rng, n_frames, 0.4)
    gaze_y = _smooth_motion(rng, n_frames, 0.3)
    blinks = _blink_track(rng, n_frames)

    frames = np.empty((n_frames, size, size, 3), np.uint8)
    lms = np.empty((n_frames, 68, 2), np.float32)
    for f in range(n_frames):
        pose = Pose(roll=roll[f], tx=tx[f], ty=ty[f], scale=scale[f], yaw=yaw[f])
        frames[f], lms[f] = render_face(identity, params[f], size, pose, blink=blinks[f], rng=rng,
                                        exposure=exposure[f], gaze=(gaze_x[f], gaze_y[f]))
    return Clip(frames=frames, landmarks=lms, expressions=[names[j] for j in labels], identity=identity_tag)


# ------------------------------------------------------------------------------------------- expression set


def approx_face_rect(landmarks: np.ndarray) -> tuple[int, int, int, int]:
    """The box dlib's frontal detector draws around a face, predicted from its 68 landmarks (fitted on synth
    renders): ``(left, top, right, bottom)``. Lets the expression set be cropped as prepare crops video frames
    (FF++ protocol, reference-facts §B.4) without running the detector."""
    lm = np.asarray(landmarks, dtype=np.float64)
    left, right = lm[0:17, 0].min(), lm[0:17, 0].max()
    top = lm[17:27, 1].min()
    bottom = lm[0:17, 1].max()
    w = right - left
    cx = (left + right) / 2
    side = _RECT_FIT[0] * w
    cy = _RECT_FIT[1] * top + (1 - _RECT_FIT[1]) * bottom
    return (int(round(cx - side / 2)), int(round(cy - side / 2)), int(round(cx + side / 2)), int(round(cy + side / 2)))


_RECT_FIT = (1.11, 0.60)  # dlib box side / jaw width; weight of the brow top in the box centre


def render_expression_set(out_dir: str | Path, n_per_class: int, size: int = 96, seed: int = 0) -> dict[str, int]:
    """Write the AffectNet stand-in: ``<out_dir>/<expression>/<NNNNN>.png`` face crops, ``n_per_class`` per class
    (reference-facts §A.2 classes), each a fresh identity at a random intensity and pose, cropped like prepare crops
    video frames (1.3 x the face box, FF++ protocol) and resized to ``size``.

    Every image has its own seed ``(seed, class, index)``, so the set is deterministic and an interrupted run
    resumes: files that exist are kept. Returns the number of images per class now on disk.
    """
    from emdlib.data.faces import crop_box

    out_dir = Path(out_dir)
    frame_size = int(round(size * 1.9))
    counts: dict[str, int] = {}
    written = skipped = 0
    todo = [(ci, name, k) for ci, name in enumerate(EXPRESSIONS) for k in range(n_per_class)]
    for ci, name, k in tqdm(todo, desc="expression set", unit="img", leave=False):
        path = out_dir / name / f"{k:05d}.png"
        if path.is_file():
            skipped += 1
            continue
        rng = np.random.default_rng([seed, ci, k])
        ident = sample_identity(rng)
        params = expression_params(name, rng.uniform(0.55, 1.0))
        pose = Pose(roll=rng.uniform(-8, 8), tx=rng.uniform(-0.03, 0.03), ty=rng.uniform(-0.03, 0.03),
                    scale=rng.uniform(0.92, 1.08), yaw=rng.uniform(-12, 12))
        blink = float(rng.uniform(0.0, 0.5)) if rng.random() < 0.1 else 0.0
        img, lm = render_face(ident, params, frame_size, pose, blink=blink, rng=rng,
                              exposure=rng.uniform(0.9, 1.1), gaze=(rng.uniform(-0.5, 0.5), rng.uniform(-0.3, 0.3)))
        left, top, right, bottom = approx_face_rect(lm)
        jitter = rng.uniform(-0.05, 0.05, 3) * (right - left)
        rect = (left + jitter[0], top + jitter[1], right + jitter[0] + jitter[2], bottom + jitter[1] + jitter[2])
        box = crop_box(tuple(int(round(v)) for v in rect), img.shape)
        crop = cv2.resize(box.crop(img), (size, size), interpolation=cv2.INTER_AREA)
        with atomic_path(path, suffix=".png") as tmp:
            if not cv2.imwrite(str(tmp), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR)):
                raise OSError(f"{path}: cv2.imwrite failed")
        written += 1
    for name in EXPRESSIONS:
        d = out_dir / name
        counts[name] = len(list(d.glob("*.png"))) if d.is_dir() else 0
    log.info("expression set %s: %d written, %d already there, %s", out_dir, written, skipped, counts)
    return counts


# ---------------------------------------------------------------------------------------------------- world


def make_pairs(n_train: int, n_val: int, n_test: int) -> dict[str, list[tuple[str, str]]]:
    """FF++-style split pairs over consecutive 3-digit ids: train ``("000","001"), ("002","003"), ...``, then val,
    then test; every id belongs to exactly one pair."""
    pairs: dict[str, list[tuple[str, str]]] = {}
    i = 0
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        if n < 0:
            raise ValueError(f"make_pairs: negative pair count for {split}: {n}")
        pairs[split] = []
        for _ in range(n):
            pairs[split].append((f"{i:03d}", f"{i + 1:03d}"))
            i += 2
    if i > 1000:
        raise ValueError(f"make_pairs: {i} ids do not fit FF++'s 3-digit names")
    return pairs


def clip_expressions(index: int, k: int, rng: np.random.Generator) -> list[str]:
    """The key expressions of the ``index``-th pristine clip: the world cycles through ``EXPRESSIONS`` ``k`` at a
    time (so every expression is shown by some pristine video, design.md), in random order, so that both
    neutral -> X and X -> neutral morphs occur."""
    names = [EXPRESSIONS[(index * k + j) % len(EXPRESSIONS)] for j in range(k)]
    if rng.random() < 0.5:
        names = names[::-1]
    return names


def build_synth_world(out_root: Path, cfg: DataConfig, seed: int | None = None) -> dict:
    """Render one pristine clip per id of ``cfg.pairs`` (train/val/test pair counts) and hand them to
    :func:`emdlib.data.world.write_world`, which writes the FF++ layout (design.md "Data worlds"): originals at every
    compression, Deepfakes / Face2Face / NeuralTextures stand-ins both ways per pair, lossless masks, split JSONs.

    Deterministic for a seed (``None`` -> ``cfg.seed``): clip ``i`` uses its own generator ``(seed, i)``.
    Returns ``write_world``'s summary with a ``"synth"`` entry (ids, frames per expression).
    """
    from emdlib.data import world

    seed = int(cfg.seed if seed is None else seed)
    out_root = Path(out_root)
    pairs = make_pairs(*cfg.pairs)
    ids = [x for split in ("train", "val", "test") for pair in pairs[split] for x in pair]
    k = int(cfg.synth_expressions_per_clip)
    if cfg.frames_per_clip < k:
        k = max(1, cfg.frames_per_clip)
    clips: dict[str, Clip] = {}
    for i, vid in enumerate(tqdm(ids, desc="synth clips", unit="clip")):
        rng = np.random.default_rng([seed, i])
        ident = sample_identity(rng)
        names = clip_expressions(i, k, rng)
        clips[vid] = render_clip(ident, rng, cfg.frames_per_clip, cfg.frame_size, expressions=names,
                                 identity_tag=vid)
    shown = {name: 0 for name in EXPRESSIONS}
    for clip in clips.values():
        for name in clip.expressions:
            shown[name] += 1
    missing = [name for name, n in shown.items() if n == 0]
    if missing:
        log.warning("synth world: no pristine frame shows %s (too few clips or frames)", missing)
    info = {"ids": len(ids), "frames_per_clip": cfg.frames_per_clip, "frame_size": cfg.frame_size,
            "expressions_per_clip": k, "frames_per_expression": shown, "seed": seed}
    summary = dict(world.write_world(out_root, clips, pairs, cfg, seed, extra={"synth": info}))
    summary["synth"] = info
    return summary
