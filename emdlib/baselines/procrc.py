"""ProCRC, the probabilistic collaborative representation based classifier (Cai, Zhang, Zhang, Feng, Li, CVPR 2016)
— the "P-CRC" that DCNN (Raghavendra et al., CVPRW 2017, :mod:`emdlib.baselines.dcnn`) classifies its fused deep
features with.

The training samples are the dictionary ``X`` (here one atom a row, ``(n, d)``; the papers write columns). A query
``y`` ``(d,)`` is coded over all of them at once:

    α̂ = argmin_α ‖y − Xᵀα‖² + λ‖α‖² + γ Σ_k ‖Xᵀα − X_kᵀα_k‖²
       = (X Xᵀ + λI + γ Σ_k X̄_k X̄_kᵀ)⁻¹ X y,   X̄_k = X with the atoms of class k set to zero,

and ``Σ_k X̄_k X̄_kᵀ = (K − 2) X Xᵀ + blockdiag_k(X_k X_kᵀ)``, so the system matrix is
``(1 + γ(K − 2)) X Xᵀ + γ · blockdiag_k(X_k X_kᵀ) + λI`` — exactly the official code's ``tr_sym_mat`` (ProCRC.m,
Sijia Cai's release, as copied in github.com/yinhefeng/SAProCRC ``ProCRC.m``). The paper writes the class term with
``γ/K``; the official code, whose γ values users quote, uses ``γ``, and so do we. ``T = (…)⁻¹ X`` ``(n, d)`` is the
projection fitted once; a query's code is ``α̂ = T y``.

The class residual is ``r_k = ‖Xᵀα̂ − X_kᵀα̂_k‖²`` and the decision is ``argmin_k r_k`` (official code: ``pre_matrix``
and ``min``). The class probability is ``P(k | y) ∝ exp(−r_k)`` (the CVPR paper's probabilistic reading; the terms
common to all classes cancel in the normalisation). Its scale does not change the decision, the ranking of P(fake)
over images (AUC) or accuracy at 0.5.

No well-kept Python implementation was found (the local PyPI package lists have no ProCRC or collaborative-
representation classifier; public code holds the MATLAB release and unmaintained copies), so this module is ours:
a few lines of ``torch.linalg`` (Cholesky of the SPD system matrix, float64).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)


def _check(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> None:
    if features.ndim != 2:
        raise ValueError(f"features must be (n, d), got shape {tuple(features.shape)}")
    if labels.shape != (features.shape[0],):
        raise ValueError(f"labels must be ({features.shape[0]},), got shape {tuple(labels.shape)}")
    if features.shape[0] == 0:
        raise ValueError("ProCRC needs at least one training sample")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes - 1}], got [{int(labels.min())}, {int(labels.max())}]")


def procrc_projection(features: torch.Tensor, labels: torch.Tensor, num_classes: int, lam: float,
                      gamma: float) -> torch.Tensor:
    """Fit ProCRC: the projection ``T = ((1 + γ(K − 2)) X Xᵀ + γ blockdiag_k(X_k X_kᵀ) + λI)⁻¹ X``.

    ``features``: the dictionary ``X`` ``(n, d)``, one training sample a row (any float dtype, any device);
    ``labels``: ``(n,)`` integers in ``[0, num_classes)``; ``lam`` (λ > 0) and ``gamma`` (γ ≥ 0) as in the module
    docstring (official ProCRC.m). Returns ``T`` ``(n, d)`` in ``features``' dtype; solved in float64 by Cholesky.
    Raises ValueError for bad shapes, labels out of range or λ ≤ 0, γ < 0.
    """
    _check(features, labels, num_classes)
    if not lam > 0 or not gamma >= 0:
        raise ValueError(f"ProCRC needs lambda > 0 and gamma >= 0, got lambda={lam}, gamma={gamma}")
    x = features.double()
    gram = x @ x.T  # (n, n)
    same = labels[:, None] == labels[None, :]  # block-diagonal mask of the class blocks
    system = (1.0 + gamma * (num_classes - 2)) * gram + gamma * gram * same
    system.diagonal().add_(lam)
    chol = torch.linalg.cholesky(system)
    return torch.cholesky_solve(x, chol).to(features.dtype)


def procrc_residuals(queries: torch.Tensor, dictionary: torch.Tensor, labels: torch.Tensor, projection: torch.Tensor,
                     num_classes: int) -> torch.Tensor:
    """Class residuals ``r_k = ‖Xᵀα̂ − X_kᵀα̂_k‖²`` ``(m, K)`` of queries ``(m, d)`` with ``α̂ = T y``.

    ``dictionary`` ``(n, d)``, ``labels`` ``(n,)`` and ``projection`` ``(n, d)`` as :func:`procrc_projection` fitted
    them. ``Xᵀα̂ − X_kᵀα̂_k`` is the reconstruction by the atoms of every class but k. Computed in the queries'
    dtype. Raises ValueError when the shapes disagree.
    """
    if queries.ndim != 2 or queries.shape[1] != dictionary.shape[1] or projection.shape != dictionary.shape:
        raise ValueError(f"shapes do not fit: queries {tuple(queries.shape)}, dictionary {tuple(dictionary.shape)}, "
                         f"projection {tuple(projection.shape)}")
    alpha = queries @ projection.to(queries.dtype).T  # (m, n)
    x = dictionary.to(queries.dtype)
    out = []
    for k in range(num_classes):
        others = (labels != k).to(queries.dtype)  # (n,)
        out.append(((alpha * others) @ x).pow(2).sum(1))
    return torch.stack(out, dim=1)


def procrc_log_prob(residuals: torch.Tensor) -> torch.Tensor:
    """``log P(k | y)`` ``(m, K)`` with ``P(k | y) ∝ exp(−r_k)`` (module docstring)."""
    return F.log_softmax(-residuals, dim=1)

