"""Input conventions of the two streams (reference-facts §A.4 and §C.3).

* ESR (FER stream): 96×96, values in [0, 1], **BGR** channel order (the official ESR-9 reads images with OpenCV and
  never converts), no mean/std normalisation.
* Xception / DeepLabv3+ (manipulation stream): RGB, ``(x - 0.5) / 0.5``; :func:`xception_to_rgb01` is the inverse
  (for the FER input EMD derives from its own input, the baselines' input conventions and the figures).

All functions take RGB tensors in [0, 1] of shape ``(N, 3, H, W)`` or ``(3, H, W)``, except the inverse, which
takes the Xception input and returns them.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

ESR_SIZE = 96
XCEPTION_MEAN = (0.5, 0.5, 0.5)
XCEPTION_STD = (0.5, 0.5, 0.5)


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """RGB uint8 ``(H, W, 3)`` (or a stack ``(N, H, W, 3)``) → float tensor in [0, 1], channels first."""
    t = torch.from_numpy(np.ascontiguousarray(image)).float().div_(255.0)
    return t.permute(2, 0, 1) if t.ndim == 3 else t.permute(0, 3, 1, 2)


def esr_input(rgb01: torch.Tensor, size: int = ESR_SIZE) -> torch.Tensor:
    """RGB [0, 1] → ESR input: bilinear resize to ``size``², channels flipped to BGR, still in [0, 1]."""
    batched = rgb01.ndim == 4
    x = rgb01 if batched else rgb01.unsqueeze(0)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    x = x.flip(1).clamp_(0.0, 1.0)
    return x if batched else x.squeeze(0)


def xception_input(rgb01: torch.Tensor) -> torch.Tensor:
    """RGB [0, 1] → Xception input: ``(x - 0.5) / 0.5``."""
    return (rgb01 - 0.5) / 0.5


def xception_to_rgb01(image: torch.Tensor) -> torch.Tensor:
    """Xception input ``(x - 0.5) / 0.5`` → RGB: ``x · 0.5 + 0.5``, the exact inverse of :func:`xception_input` (in
    [0, 1] for inputs made by it; callers that need a hard range clamp)."""
    return image * 0.5 + 0.5
