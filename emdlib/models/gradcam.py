"""Grad-CAM of FER-stream branches, as the official ESR-9 ``grad_cam.py`` (reference-facts §A.8; paper §III-C, Fig. 6).

For a branch and a target class: the gradient of the **raw class logit** (no softmax) with respect to the branch's
last conv map ``A`` (512×6×6 for 96² input); channel weights ``w_k`` = spatial mean of that gradient; saliency
``Σ_k w_k A_k``, clamped at 0, then min-max normalised to [0, 1] — with an ``eps`` in the denominator where the
official code divides by zero on an all-zero map. Unlike the official code (first sample only) everything is batched:
the summed score of independent images has per-image gradients as long as BatchNorm is in eval mode, which
:class:`GradCAM` enforces while it is open.

Usage::

    with GradCAM(esr) as cam:
        res = cam(x, size=(96, 96))  # CAM of the branch chosen by Eqs. 3-5, up-sampled to the face size
    # hooks are removed and the model's train/eval mode is restored here
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from emdlib.models.esr import FERStream, select_branch_from_logits

log = logging.getLogger(__name__)


def grad_cam(activations: torch.Tensor, gradients: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Grad-CAM from maps and their gradients ``(..., K, h, w)`` → saliency ``(..., h, w)`` in [0, 1].

    ``w_k = mean_{h,w} grad_k``; ``cam = max(Σ_k w_k A_k, 0)``; ``(cam - min) / (max - min + eps)`` per map
    (reference-facts §A.8).
    """
    if activations.shape != gradients.shape:
        raise ValueError(f"activations {tuple(activations.shape)} and gradients {tuple(gradients.shape)} differ")
    weights = gradients.mean(dim=(-2, -1), keepdim=True)
    cam = (weights * activations).sum(-3).clamp_min(0)
    flat = cam.flatten(-2)
    lo = flat.min(-1).values[..., None, None]
    hi = flat.max(-1).values[..., None, None]
    return (cam - lo) / (hi - lo + eps)


def upsample(cam: torch.Tensor, size: tuple[int, int] | int | None) -> torch.Tensor:
    """Bilinear up-sampling of ``(..., h, w)`` maps to ``size`` (the face size); stays in [0, 1]."""
    if size is None:
        return cam
    size = (size, size) if isinstance(size, int) else tuple(size)
    lead = cam.shape[:-2]
    out = F.interpolate(cam.reshape(-1, 1, *cam.shape[-2:]), size=size, mode="bilinear", align_corners=False)
    return out.reshape(*lead, *size).clamp_(0.0, 1.0)


@dataclass
class CAMResult:
    """CAMs ``(N, H, W)`` in [0, 1] of ``branch`` ``(N,)`` for class ``cls`` ``(N,)``; ``logits`` ``(N, B, C)``."""

    cam: torch.Tensor
    branch: torch.Tensor
    cls: torch.Tensor
    logits: torch.Tensor


class GradCAM:
    """Context manager that hooks the last conv map of every branch of a :class:`FERStream` (ESR or SimFER).

    Inside the context the model is in eval mode and forward hooks on ``model.cam_layers()`` record the maps; on exit
    the hooks are removed and the previous train/eval mode is restored. Calling it outside the context is an error.
    """

    def __init__(self, model: FERStream, eps: float = 1e-8) -> None:
        self.model = model
        self.eps = eps
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._acts: dict[int, torch.Tensor] = {}
        self._was_training = False

    def __enter__(self) -> "GradCAM":
        self._was_training = self.model.training
        self.model.eval()
        for b, layer in enumerate(self.model.cam_layers()):
            self._handles.append(layer.register_forward_hook(self._recorder(b)))
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Remove the hooks and restore the model's mode (idempotent)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._acts.clear()
        self.model.train(self._was_training)

    def _recorder(self, b: int):
        def hook(module: nn.Module, inputs, output: torch.Tensor) -> None:
            self._acts[b] = output

        return hook

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        if not self._handles:
            raise RuntimeError("GradCAM used outside its context: write `with GradCAM(model) as cam: cam(x)`")
        self._acts.clear()
        # The input requires grad so that maps have a graph even when the model's parameters are frozen (EMD).
        logits = self.model(x.detach().requires_grad_(True))
        acts = [self._acts[b] for b in range(len(self._handles))]
        self._acts.clear()
        return logits, acts

    def _cams(self, logits: torch.Tensor, acts: list[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        """CAMs ``(N, B, h, w)``: branch ``b`` of image ``i`` explains class ``target[i, b]``."""
        score = logits.gather(-1, target[..., None]).sum()  # raw logits; images and branches are independent
        grads = torch.autograd.grad(score, acts)
        return grad_cam(torch.stack(acts, 1).detach(), torch.stack(grads, 1), self.eps)

    def __call__(
        self,
        x: torch.Tensor,
        size: tuple[int, int] | int | None = None,
        cls: torch.Tensor | None = None,
        voters_only: bool = True,
    ) -> CAMResult:
        """CAM of the branch selected by Eqs. 3–5 for the ensemble class (or for a given ``cls`` (N,))."""
        with torch.enable_grad():
            logits, acts = self._forward(x)
            branch, modal = select_branch_from_logits(logits.detach(), voters_only=voters_only)
            cls = modal if cls is None else cls.to(logits.device).long()
            target = cls[:, None].expand(-1, logits.shape[1])
            cams = self._cams(logits, acts, target)
        cam = cams[torch.arange(cams.shape[0], device=cams.device), branch]
        return CAMResult(upsample(cam, size), branch, cls, logits.detach())

    def branch_cams(self, x: torch.Tensor, size: tuple[int, int] | int | None = None) -> torch.Tensor:
        """CAMs of every branch for its own predicted class ``(N, B, H, W)`` (the official per-branch visualisation)."""
        with torch.enable_grad():
            logits, acts = self._forward(x)
            cams = self._cams(logits, acts, logits.detach().argmax(-1))
        return upsample(cams, size)
