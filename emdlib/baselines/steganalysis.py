"""Steg. Features + SVM: the 162-D residual co-occurrence feature and a linear SVM (EMD Tables II–III,
FF++'s "Fridrich & Kodovsky" baseline; reference-facts §D.1).

The feature (one grey image, pixel values on the 0–255 scale):

1. **Residuals.** The 3rd-order linear residual, kernel ``[1, -3, 3, -1]`` correlated horizontally
   (``r_h[i, j] = x[i, j] - 3 x[i, j+1] + 3 x[i, j+2] - x[i, j+3]``, shape ``(H, W-3)``) and vertically
   (same along columns, ``(H-3, W)``). Only positions where the kernel fits ("valid") are used.
2. **Quantisation.** ``clip(round(r / (q·c)), -T, T)`` with ``q = 1``, ``c = 3`` (the kernel's largest coefficient,
   the SRM / Cozzolino convention, as in the public port cited in §D.1), MATLAB rounding (halves away from zero),
   **T = 1** → 3 levels {-1, 0, 1}. *Inferred:* T = 1 is the only truncation that gives FF++'s 162 dimensions.
3. **Co-occurrences.** 4 consecutive quantised residuals (order 4) along a row ("h" scan) or a column ("v" scan)
   form one of 3⁴ = 81 patterns, indexed ``27·d₀ + 9·d₁ + 3·d₂ + d₃`` with ``dₖ = level + 1`` and d₀ the leftmost
   (topmost) sample.
4. **Two 81-bin histograms** as SRM's ``spam14h`` ⊕ ``spam14v``: "h" = co-occurrences scanned *parallel* to the
   residual direction (h-scan of r_h plus v-scan of r_v), "v" = scanned *orthogonally* (v-scan of r_h plus h-scan
   of r_v). *Inferred:* no sign/direction symmetrisation (that would not give 81 bins per direction).
5. **Normalisation.** Each 81-bin histogram is divided by its total count (sums to 1). Output: 162 floats, "h"
   first.

Input: the grey 128×128 centre crop of the face (FF++ appendix, recalled); a smaller image is used whole (the
normalised histogram does not depend on the image size, and resizing would change the residual statistics).

Caching: :class:`StegFeatures` takes ``memory`` (a folder or ``joblib.Memory``) like scikit-learn's Pipeline; the
feature extraction of a whole ``X`` is then memoised on disk, keyed by the hash of the pixel array and the feature
parameters, so refitting the SVM (other C, other compression cell sharing frames) never re-extracts.
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
import torch
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

from emdlib.data.transforms import xception_to_rgb01

log = logging.getLogger(__name__)

RESIDUAL_KERNEL = (1.0, -3.0, 3.0, -1.0)
RESIDUAL_FACTOR = 3.0  # largest |coefficient| of RESIDUAL_KERNEL; the quantisation step is q * this
CROP_SIZE = 128
ORDER = 4
DIRECTIONS = ("h", "v")


def matlab_round(x: np.ndarray) -> np.ndarray:
    """Round halves away from zero (MATLAB ``round``), unlike NumPy's round-half-to-even."""
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def residuals(grey: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """3rd-order residuals ``(r_h (…, H, W-3), r_v (…, H-3, W))`` of grey images ``(…, H, W)`` (step 1)."""
    x = np.asarray(grey, dtype=np.float64)
    k0, k1, k2, k3 = RESIDUAL_KERNEL
    w, h = x.shape[-1], x.shape[-2]
    r_h = k0 * x[..., :, 0 : w - 3] + k1 * x[..., :, 1 : w - 2] + k2 * x[..., :, 2 : w - 1] + k3 * x[..., :, 3:w]
    r_v = k0 * x[..., 0 : h - 3, :] + k1 * x[..., 1 : h - 2, :] + k2 * x[..., 2 : h - 1, :] + k3 * x[..., 3:h, :]
    return r_h, r_v


def quantise(r: np.ndarray, q: float = 1.0, T: int = 1) -> np.ndarray:
    """Step 2: ``clip(matlab_round(r / (q·3)), -T, T)`` as int8."""
    return np.clip(matlab_round(r / (q * RESIDUAL_FACTOR)), -T, T).astype(np.int8)


def cooccurrence(levels: np.ndarray, scan: str, T: int = 1, order: int = ORDER) -> np.ndarray:
    """Step 3: counts of the ``(2T+1)^order`` patterns of ``order`` consecutive samples along rows (``scan="h"``) or
    columns (``"v"``) of quantised residuals ``(N, H, W)`` → ``(N, (2T+1)^order)`` int64."""
    if scan not in DIRECTIONS:
        raise ValueError(f"scan must be 'h' or 'v', got {scan!r}")
    lv = np.asarray(levels, dtype=np.int64) + T
    if scan == "v":
        lv = np.swapaxes(lv, -1, -2)
    n, width = lv.shape[0], lv.shape[-1]
    base = 2 * T + 1
    bins = base**order
    if width < order:
        return np.zeros((n, bins), dtype=np.int64)
    codes = np.zeros(lv[..., : width - order + 1].shape, dtype=np.int64)
    for k in range(order):  # `order` whole-array shifts, no per-pixel loop
        codes = codes * base + lv[..., k : width - order + 1 + k]
    offsets = (np.arange(n, dtype=np.int64) * bins).reshape(n, *([1] * (codes.ndim - 1)))
    return np.bincount((codes + offsets).ravel(), minlength=n * bins).reshape(n, bins)


def _crop(grey: np.ndarray, size: int) -> np.ndarray:
    h, w = grey.shape[-2:]
    if h < size or w < size:
        return grey
    top, left = (h - size) // 2, (w - size) // 2
    return grey[..., top : top + size, left : left + size]


def to_grey255(images: np.ndarray) -> np.ndarray:
    """``(N, H, W)`` grey or ``(N, H, W, 3)`` RGB on the 0–255 scale → float64 grey ``(N, H, W)``.

    RGB uint8 is converted with BT.601 weights and rounded to uint8, as MATLAB's ``rgb2gray``.
    """
    x = np.asarray(images)
    if x.ndim == 4 and x.shape[-1] == 3:
        g = x[..., 0] * 0.299 + x[..., 1] * 0.587 + x[..., 2] * 0.114
        return np.round(g) if x.dtype == np.uint8 else g.astype(np.float64)
    if x.ndim != 3:
        raise ValueError(f"expected images (N, H, W) or (N, H, W, 3), got shape {x.shape}")
    return x.astype(np.float64)


def steg_features(images: np.ndarray | Sequence[np.ndarray], q: float = 1.0, T: int = 1,
                  crop: int | None = CROP_SIZE) -> np.ndarray:
    """The 162-D feature (module docstring, steps 1–5) of a stack ``(N, H, W[, 3])`` or a list of images.

    Returns ``(N, 2·(2T+1)^4)`` float64: the "h" histogram then the "v" histogram, each summing to 1.
    """
    if isinstance(images, (list, tuple)):
        if not images:
            return np.zeros((0, 2 * (2 * T + 1) ** ORDER))
        return np.concatenate([steg_features(im[None], q, T, crop) for im in images])
    g = to_grey255(images)
    if crop:
        g = _crop(g, crop)
    if min(g.shape[-2:]) < ORDER + 3:
        raise ValueError(f"images of size {g.shape[-2:]} are too small for order-{ORDER} co-occurrences of "
                         f"3rd-order residuals (need at least {ORDER + 3} px)")
    r_h, r_v = residuals(g)
    q_h, q_v = quantise(r_h, q, T), quantise(r_v, q, T)
    parallel = cooccurrence(q_h, "h", T) + cooccurrence(q_v, "v", T)
    orthogonal = cooccurrence(q_h, "v", T) + cooccurrence(q_v, "h", T)
    feats = [c / np.maximum(c.sum(1, keepdims=True), 1) for c in (parallel, orthogonal)]
    return np.concatenate(feats, axis=1)


def steg_histograms(grey: torch.Tensor, q: float = 1.0, T: int = 1) -> torch.Tensor:
    """the torch twin of :func:`steg_features` (steps 1–5 of its module docstring, whole image, no crop)
    in torch, on the device of ``grey``: grey images ``(M, H, W)`` on the 0–255 scale (float64 for the reference's
    exact arithmetic) → ``(M, 2·(2T+1)^4)`` float64, the "h" histogram then the "v" one, each summing to 1.

    The same operations in the same order and precision as the NumPy reference (a test checks them equal), so that
    a GPU computes the features of every training batch where the batch is; the reference stays the one the
    Steg. Features + SVM baseline uses (Two-stream's patch stream uses this one,
    :func:`emdlib.baselines.patch_triplet.patch_features`). Raises ValueError for images smaller than 7 px.
    """
    if grey.ndim != 3 or min(grey.shape[-2:]) < ORDER + 3:
        raise ValueError(f"expected grey images (M, H, W) of at least {ORDER + 3} px, got shape {tuple(grey.shape)}")
    k0, k1, k2, k3 = RESIDUAL_KERNEL
    h, w = grey.shape[-2:]
    g = grey
    r_h = k0 * g[..., :, 0 : w - 3] + k1 * g[..., :, 1 : w - 2] + k2 * g[..., :, 2 : w - 1] + k3 * g[..., :, 3:w]
    r_v = k0 * g[..., 0 : h - 3, :] + k1 * g[..., 1 : h - 2, :] + k2 * g[..., 2 : h - 1, :] + k3 * g[..., 3:h, :]

    def quantise(r: torch.Tensor) -> torch.Tensor:  # MATLAB round (halves away from zero), then clip to [-T, T]
        x = r / (q * RESIDUAL_FACTOR)
        return (torch.sign(x) * torch.floor(x.abs() + 0.5)).clamp(-T, T).long() + T

    base = 2 * T + 1
    bins = base**ORDER

    def cooccurrence(levels: torch.Tensor, scan: str) -> torch.Tensor:
        lv = levels.transpose(-1, -2) if scan == "v" else levels
        m, width = lv.shape[0], lv.shape[-1]
        codes = torch.zeros_like(lv[..., : width - ORDER + 1])
        for k in range(ORDER):
            codes = codes * base + lv[..., k : width - ORDER + 1 + k]
        offsets = torch.arange(m, device=lv.device).view(m, 1, 1) * bins
        return torch.bincount((codes + offsets).flatten(), minlength=m * bins).view(m, bins)

    q_h, q_v = quantise(r_h), quantise(r_v)
    parallel = cooccurrence(q_h, "h") + cooccurrence(q_v, "v")
    orthogonal = cooccurrence(q_h, "v") + cooccurrence(q_v, "h")
    return torch.cat([c.double() / c.sum(1, keepdim=True).clamp(min=1).double() for c in (parallel, orthogonal)], 1)


def feature_names(T: int = 1) -> list[str]:
    """Names ``"h[-1,0,1,1]"`` … of the 162 features, in output order."""
    levels = range(-T, T + 1)
    patterns = np.array(np.meshgrid(*[list(levels)] * ORDER, indexing="ij")).reshape(ORDER, -1).T
    return [f"{d}[{','.join(map(str, p))}]" for d in DIRECTIONS for p in patterns]


class StegFeatures(TransformerMixin, BaseEstimator):
    """scikit-learn transformer: images → 162-D steganalysis features (reference-facts §D.1).

    ``X``: uint8 array ``(N, H, W, 3)`` RGB or ``(N, H, W)`` grey (0–255 scale), or a list of such images. Stateless
    (``fit`` learns nothing). ``memory``: folder or ``joblib.Memory`` to memoise the extraction (module docstring).
    """

    def __init__(self, q: float = 1.0, T: int = 1, crop: int | None = CROP_SIZE, memory=None):
        self.q = q
        self.T = T
        self.crop = crop
        self.memory = memory

    def fit(self, X, y=None) -> "StegFeatures":
        return self

    def transform(self, X) -> np.ndarray:
        fn = steg_features
        if self.memory is not None:
            from sklearn.utils.validation import check_memory

            fn = check_memory(self.memory).cache(steg_features)
        return fn(X, q=self.q, T=self.T, crop=self.crop)

    def get_feature_names_out(self, input_features=None) -> np.ndarray:
        return np.asarray(feature_names(self.T), dtype=object)


def steg_svm_pipeline(C: float = 1.0, memory=None, max_iter: int = 10_000) -> Pipeline:
    """``Pipeline([StegFeatures, StandardScaler, LinearSVC])`` — the "Steg. Features + SVM" baseline.

    Labels as everywhere in emdlib: 1 = fake. ``decision_function > 0`` ⇒ fake.
    """
    return Pipeline([
        ("features", StegFeatures(memory=memory)),
        ("scaler", StandardScaler()),
        ("svm", LinearSVC(C=C, dual="auto", max_iter=max_iter)),
    ])


def shared_input_to_uint8(image: torch.Tensor) -> np.ndarray:
    """The training loop's batch image (``(N, 3, H, W)``, ``(x - 0.5) / 0.5``) → RGB uint8 ``(N, H, W, 3)``,
    the input :class:`StegFeatures` expects."""
    rgb = xception_to_rgb01(image.detach().float().cpu()).clamp(0, 1)
    return (rgb.permute(0, 2, 3, 1).numpy() * 255.0 + 0.5).astype(np.uint8)
