"""The patch triplet stream of Two-stream (Zhou, Han, Morariu, Davis, "Two-Stream Neural Networks for Tampered Face
Detection", CVPRW 2017; EMD Table III's "Two-stream" [61]): steganalysis features of image patches, embedded by a
network trained with a triplet loss, and a linear SVM on the embeddings scoring each patch.

What the paper states (its abstract, arXiv:1803.11276): "train a patch based triplet network to leverage features
capturing local noise residuals and camera characteristics as a second stream"; the triplet loss pulls patches of the
same image together and pushes patches of different images apart, so the embedding encodes in-camera traces; an SVM
on the embeddings scores patches, and an image's patch score is their average. The paper's body (patch size, the
rich-model feature set, the network's layers, the SVM's settings) could not be read where this was written; every
such value here is *inferred* (recipe ``two_stream``, deviations ``two-stream-*``). Here:

* **Patches** (:func:`patch_grid`): the face crop at the preset's resolution (never resized: resizing changes the
  noise residuals) cut into a centred grid of non-overlapping ``p × p`` patches, ``p = min(patch_size, S // 2)`` so
  that every face gives at least 2 × 2 patches (a triplet needs two patches of one image). ``patch_size`` 128
  (*inferred*: the 128-px crop FF++ gives the steganalysis baselines). At the paper preset's 299-px faces: 2 × 2
  patches of 128 px; at the cpu preset's 64 px: 2 × 2 patches of 32 px.
* **Features** (:func:`patch_features`): the 162-D SPAM-style co-occurrence histogram of 3rd-order residuals of
  :mod:`emdlib.baselines.steganalysis` (the SRM submodel FF++'s "Steg. Features" use) of each patch's grey level —
  *not* the paper's full colour rich model (deviation ``two-stream-features``).
* **Embedding** (:class:`PatchTripletNet`): a 3-layer perceptron 162 → 256 → 256 → 128 with ReLUs, L2-normalised
  output (*inferred*: FaceNet's unit-sphere embedding, where a fixed triplet margin has a meaning).
* **Triplets inside a batch** (:func:`in_batch_triplets`): for the image ``n``'s patch ``k`` (anchor), the positive is
  patch ``k + 1 (mod P)`` of the same image and the negative is patch ``k`` of image ``n + 1 (mod N)`` of the
  batch: ``N · P`` triplets per batch, no sampling, every patch an anchor once. The loss is PyTorch's
  :func:`torch.nn.functional.triplet_margin_loss` (Euclidean distance, margin 0.2 — FaceNet's α, *inferred*),
  averaged.
* **SVM** (:func:`fit_linear_svm`): scikit-learn's ``LinearSVC`` on the embeddings of the training patches, each
  labelled with its face's label (1 = fake); the patch score is its decision value ``w·e + b``.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from emdlib.baselines.steganalysis import CROP_SIZE, ORDER, shared_input_to_uint8, steg_features

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


def patch_grid(images: np.ndarray, patch_size: int = PATCH_SIZE) -> np.ndarray:
    """Cut ``(N, H, W, C)`` images into a centred grid of non-overlapping patches: ``(N, P, p, p, C)`` with
    ``p = patch_side(min(H, W), patch_size)``, ``P = (H // p) · (W // p)``, patches in row-major order (left to right,
    then top to bottom). Raises ValueError for images too small (:func:`patch_side`) or not 4-D."""
    x = np.asarray(images)
    if x.ndim != 4:
        raise ValueError(f"expected images (N, H, W, C), got shape {x.shape}")
    n, h, w, c = x.shape
    p = patch_side(min(h, w), patch_size)
    gh, gw = h // p, w // p
    top, left = (h - gh * p) // 2, (w - gw * p) // 2
    x = x[:, top : top + gh * p, left : left + gw * p]
    return x.reshape(n, gh, p, gw, p, c).transpose(0, 1, 3, 2, 4, 5).reshape(n, gh * gw, p, p, c)


def patch_features(image: torch.Tensor, patch_size: int = PATCH_SIZE) -> torch.Tensor:
    """Steganalysis features of every patch of a batch: shared input ``(N, 3, S, S)`` (``(x - 0.5) / 0.5``) →
    ``(N, P, 162)`` float32 on ``image``'s device (no gradient: the features are fixed).

    Each face becomes RGB uint8 (:func:`steganalysis.shared_input_to_uint8`), is cut by :func:`patch_grid` and each
    patch gets :func:`steganalysis.steg_features` (grey BT.601, whole patch, ``q = 1``, ``T = 1``).
    """
    patches = patch_grid(shared_input_to_uint8(image), patch_size)
    n, num = patches.shape[:2]
    feats = steg_features(patches.reshape(n * num, *patches.shape[2:]), crop=None)
    return torch.from_numpy(feats.astype(np.float32)).view(n, num, -1).to(image.device)


class PatchTripletNet(nn.Module):
    """The embedding network: ``(…, in_dim)`` features → ``(…, embedding_dim)`` unit-norm embeddings (a perceptron
    ``in_dim → hidden → hidden → embedding_dim`` with ReLUs; module docstring)."""

    def __init__(self, in_dim: int = FEATURE_DIM, hidden: int = HIDDEN_DIM, embedding_dim: int = EMBEDDING_DIM):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, hidden),
                                    nn.ReLU(inplace=True), nn.Linear(hidden, embedding_dim))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.layers(features), dim=-1)


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


def fit_linear_svm(x: np.ndarray, y: np.ndarray, c: float = 1.0, max_iter: int = 10_000
                   ) -> tuple[np.ndarray, float]:
    """Fit scikit-learn's ``LinearSVC`` (squared hinge, L2 penalty, ``C = c``) on ``x`` ``(M, D)`` with labels ``y``
    ``(M,)`` in {0, 1} (1 = fake); returns ``(weight (D,), bias)`` so that ``x @ weight + bias`` is its decision
    value (> 0 ⇒ fake). Raises ValueError when ``y`` holds one class only or the shapes disagree."""
    from sklearn.svm import LinearSVC

    x, y = np.asarray(x), np.asarray(y)
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise ValueError(f"expected features (M, D) and labels (M,), got {x.shape} and {y.shape}")
    if np.unique(y).size < 2:
        raise ValueError(f"the patch SVM needs patches of both classes, got classes {np.unique(y).tolist()}")
    svm = LinearSVC(C=c, dual="auto", max_iter=max_iter).fit(x, y)
    return svm.coef_[0].astype(np.float32), float(svm.intercept_[0])
