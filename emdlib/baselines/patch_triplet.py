"""The patch triplet stream of Two-stream (Zhou, Han, Morariu, Davis, "Two-Stream Neural Networks for Tampered Face
Detection", CVPRW 2017; EMD Table III's "Two-stream" [61]): steganalysis features of image patches, embedded by a
network trained with a triplet loss, and a linear SVM on the embeddings scoring each patch.

What the paper states in its abstract (arXiv:1803.11276): "train a patch based triplet network to leverage features
capturing local noise residuals and camera characteristics as a second stream". A third-party summary adds: the
features are steganalysis features of patches, and the triplet loss pulls patches of the same image together and
pushes patches of different images apart, so the embedding encodes in-camera traces; an SVM on the embeddings scores
patches. The paper's body (patch size, the rich-model feature set, the network's layers, the SVM's settings, how
patch scores make an image's) could not be read where this was written; every such value here is *inferred* (recipe
``two_stream``, deviations ``two-stream-*``); the image's patch score is the mean of its patches'. Here:

* **Patches** (:func:`patch_grid`): the face crop at the preset's resolution (never resized: resizing changes the
  noise residuals) cut into a centred grid of non-overlapping ``p × p`` patches, ``p = min(patch_size, S // 2)`` so
  that every face gives at least 2 × 2 patches (a triplet needs two patches of one image). ``patch_size`` 128
  (*inferred*: the 128-px crop FF++ gives the steganalysis baselines). At the paper preset's 299-px faces: 2 × 2
  patches of 128 px; at the cpu preset's 64 px: 2 × 2 patches of 32 px.
* **Features** (:func:`patch_features`): the 162-D SPAM-style co-occurrence histogram of 3rd-order residuals of
  :mod:`emdlib.baselines.steganalysis` (the SRM submodel FF++'s "Steg. Features" use) of each patch's grey level —
  *not* the paper's full colour rich model (deviation ``two-stream-features``).
  :func:`emdlib.baselines.steganalysis.steg_histograms`, the reference's torch twin beside it, computes them on the
  batch's device in float64 (equal to it, tested): the features of every training batch are computed in the forward
  pass, and NumPy on the host would leave a GPU waiting.
* **Embedding** (:class:`PatchTripletNet`): the features standardised per dimension by a ``BatchNorm1d`` (the
  network's form of the ``StandardScaler`` the Steg. Features + SVM pipeline puts before its SVM: the histogram
  bins are ~1e-2 with spreads ~4e-3, on which an unscaled perceptron barely moves — measured on the cpu cell, the
  triplet loss fell from 0.19 to 0.17 in 60 Adam steps without it, to 0.09 with it), then a 3-layer perceptron
  162 → 256 → 256 → 128 with ReLUs and an L2-normalised output (*inferred*: FaceNet's unit-sphere embedding, where a
  fixed triplet margin has a meaning).
* **Triplets inside a batch** (:func:`in_batch_triplets`): for the image ``n``'s patch ``k`` (anchor), the positive is
  patch ``k + 1 (mod P)`` of the same image and the negative is patch ``k`` of image ``n + 1 (mod N)`` of the
  batch: ``N · P`` triplets per batch, no sampling, every patch an anchor once. The loss is PyTorch's
  :func:`torch.nn.functional.triplet_margin_loss` (Euclidean distance, margin 0.2 — FaceNet's α, *inferred*),
  averaged.
* **SVM** (:func:`fit_calibrated_svm`): scikit-learn's ``LinearSVC`` on the embeddings of the training patches,
  each labelled with its face's label (1 = fake), Platt-calibrated on cross-validated decision values (scikit-learn's
  ``CalibratedClassifierCV``); the patch score is the calibrated log-odds of fake, still linear: ``w·e + b``.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from emdlib.baselines.inputs import LUMA
from emdlib.baselines.steganalysis import CROP_SIZE, ORDER, steg_histograms
from emdlib.data.transforms import xception_to_rgb01

log = logging.getLogger(__name__)

#: Side of a patch (px) when the face is at least twice as large (inferred: FF++'s steganalysis crop).
PATCH_SIZE = CROP_SIZE
#: Dimension of the steganalysis feature of a patch (two 81-bin histograms, :func:`steganalysis.steg_features`).
FEATURE_DIM = 162
HIDDEN_DIM = 256
EMBEDDING_DIM = 128
#: Triplet margin on the unit sphere (FaceNet's α = 0.2; inferred).
MARGIN = 0.2
#: Smallest patch the features are defined on: ORDER consecutive samples of a 3rd-order residual.
MIN_PATCH = ORDER + 3


def patch_side(face_size: int, patch_size: int = PATCH_SIZE) -> int:
    """The patch side used for ``face_size``-px faces: ``min(patch_size, face_size // 2)`` (px). Raises ValueError
    when that is below :data:`MIN_PATCH` (7 px: the features need 4 consecutive 3rd-order residuals)."""
    p = min(int(patch_size), int(face_size) // 2)
    if p < MIN_PATCH:
        raise ValueError(f"faces of {face_size} px give patches of {p} px; the patch triplet stream needs faces of at "
                         f"least {2 * MIN_PATCH} px (patches of at least {MIN_PATCH} px)")
    return p


def patch_grid(images: np.ndarray | torch.Tensor, patch_size: int = PATCH_SIZE) -> np.ndarray | torch.Tensor:
    """Cut ``(N, H, W, C)`` images (NumPy or torch) into a centred grid of non-overlapping patches:
    ``(N, P, p, p, C)`` with ``p = patch_side(min(H, W), patch_size)``, ``P = (H // p) · (W // p)``, patches in
    row-major order (left to right, then top to bottom). Raises ValueError for images too small
    (:func:`patch_side`) or not 4-D."""
    x = images if torch.is_tensor(images) else np.asarray(images)
    if x.ndim != 4:
        raise ValueError(f"expected images (N, H, W, C), got shape {tuple(x.shape)}")
    n, h, w, c = x.shape
    p = patch_side(min(h, w), patch_size)
    gh, gw = h // p, w // p
    top, left = (h - gh * p) // 2, (w - gw * p) // 2
    x = x[:, top : top + gh * p, left : left + gw * p].reshape(n, gh, p, gw, p, c)
    x = x.permute(0, 1, 3, 2, 4, 5) if torch.is_tensor(x) else x.transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(n, gh * gw, p, p, c)


def patch_features(image: torch.Tensor, patch_size: int = PATCH_SIZE) -> torch.Tensor:
    """Steganalysis features of every patch of a batch: shared input ``(N, 3, S, S)`` (``(x - 0.5) / 0.5``) →
    ``(N, P, 162)`` float32 on ``image``'s device (no gradient: the features are fixed).

    Each face becomes RGB uint8 as :func:`steganalysis.shared_input_to_uint8` makes it, then grey (BT.601, rounded,
    as :func:`steganalysis.to_grey255`), is cut by :func:`patch_grid` and each patch gets :func:`steg_histograms`
    (``q = 1``, ``T = 1``): the features :func:`steganalysis.steg_features` gives the patch, computed on the device.
    """
    with torch.no_grad(), torch.autocast(image.device.type, enabled=False):
        rgb = (xception_to_rgb01(image.detach().float()).clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).double()
        r, g, b = rgb.unbind(1)
        grey = torch.round(r * LUMA[0] + g * LUMA[1] + b * LUMA[2])
        patches = patch_grid(grey.unsqueeze(-1), patch_size)  # (N, P, p, p, 1)
        n, num, p = patches.shape[:3]
        feats = steg_histograms(patches.reshape(n * num, p, p))
    return feats.float().view(n, num, -1)


class PatchTripletNet(nn.Module):
    """The embedding network: ``(…, in_dim)`` features → ``(…, embedding_dim)`` unit-norm embeddings: the features
    standardised by a ``BatchNorm1d`` (per dimension, over the batch's patches; running statistics in eval), then a
    perceptron ``in_dim → hidden → hidden → embedding_dim`` with ReLUs (module docstring)."""

    def __init__(self, in_dim: int = FEATURE_DIM, hidden: int = HIDDEN_DIM, embedding_dim: int = EMBEDDING_DIM):
        super().__init__()
        self.standardise = nn.BatchNorm1d(in_dim)
        self.layers = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, hidden),
                                    nn.ReLU(inplace=True), nn.Linear(hidden, embedding_dim))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        lead = features.shape[:-1]
        x = self.standardise(features.reshape(-1, features.shape[-1]))
        return F.normalize(self.layers(x), dim=-1).view(*lead, -1)


def in_batch_triplets(embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(anchor, positive, negative)``, each ``(N·P, D)``, from patch embeddings ``(N, P, D)``: anchor = patch k of
    image n, positive = patch (k + 1) mod P of image n, negative = patch k of image (n + 1) mod N (module docstring).
    Raises ValueError for fewer than 2 images or 2 patches an image."""
    n, p, d = embeddings.shape
    if n < 2 or p < 2:
        raise ValueError(f"in-batch triplets need at least 2 images of at least 2 patches, got {n} × {p}")
    anchor = embeddings.reshape(n * p, d)
    positive = torch.roll(embeddings, shifts=-1, dims=1).reshape(n * p, d)
    negative = torch.roll(embeddings, shifts=-1, dims=0).reshape(n * p, d)
    return anchor, positive, negative


def triplet_loss(embeddings: torch.Tensor, margin: float = MARGIN) -> torch.Tensor:
    """Mean triplet loss ``max(0, ‖a − p‖₂ − ‖a − n‖₂ + margin)`` over :func:`in_batch_triplets` of ``(N, P, D)``
    embeddings (PyTorch's ``triplet_margin_loss``); 0 (with a gradient path) for a batch of a single image."""
    if embeddings.shape[0] < 2:
        return embeddings.sum() * 0.0
    return F.triplet_margin_loss(*in_batch_triplets(embeddings.float()), margin=margin, p=2)


def fit_calibrated_svm(x: np.ndarray, y: np.ndarray, c: float = 1.0, seed: int = 0, folds: int = 3,
                       max_iter: int = 10_000) -> tuple[np.ndarray, float]:
    """Fit scikit-learn's ``LinearSVC`` (squared hinge, L2 penalty, ``C = c``) on ``x`` ``(M, D)`` with labels ``y``
    ``(M,)`` in {0, 1} (1 = fake), Platt-calibrated: ``CalibratedClassifierCV(method="sigmoid", cv=folds,
    ensemble=False)`` fits the sigmoid ``P(fake | d) = 1 / (1 + exp(a·d + b))`` on the SVM's decision values ``d``
    predicted across ``folds`` stratified folds (unshuffled: neighbouring, i.e. same-video, patches stay in one
    fold), then the SVM on all of ``x``. Returns ``(weight (D,), bias)`` of the calibrated log-odds: ``x @ weight +
    bias = −(a·d + b) = logit P(fake)``, linear in ``x`` (``weight = −a·w``, ``bias = −(a·w₀ + b)``).
    Raises ValueError when ``y`` holds one class only, fewer than ``folds`` patches of a class, or shapes disagree."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.svm import LinearSVC

    x, y = np.asarray(x), np.asarray(y)
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise ValueError(f"expected features (M, D) and labels (M,), got {x.shape} and {y.shape}")
    classes, counts = np.unique(y, return_counts=True)
    if classes.size < 2:
        raise ValueError(f"the patch SVM needs patches of both classes, got classes {classes.tolist()}")
    if counts.min() < folds:
        raise ValueError(f"the patch SVM's {folds}-fold calibration needs at least {folds} patches of each class, got "
                         f"{dict(zip(classes.tolist(), counts.tolist()))}")
    svm = LinearSVC(C=c, dual="auto", max_iter=max_iter, random_state=seed)
    fitted = CalibratedClassifierCV(svm, method="sigmoid", cv=folds, ensemble=False).fit(x, y)
    calibrated = fitted.calibrated_classifiers_[0]
    svm, sigmoid = calibrated.estimator, calibrated.calibrators[0]
    weight = -sigmoid.a_ * svm.coef_[0]
    bias = -(sigmoid.a_ * svm.intercept_[0] + sigmoid.b_)
    return weight.astype(np.float32), float(bias)
