"""Input conversions shared by the baselines (reference-facts §D).

Every baseline receives the training loop's shared input — RGB face crops normalised ``(x - 0.5) / 0.5`` at the
preset size S — and converts it here to the convention of its original implementation: [0, 1] RGB at 256² for
MesoNet, ImageNet mean/std at 256² for MultiTask, the green channel for Rahmouni, a grey 128×128 centre crop for the
steganalysis family and Bayar & Stamm. Each model calls these helpers in one place at the top of ``forward``.

Also home of :func:`classification_loss`, the softmax cross-entropy that the CNN baselines without a segmentation
head train with (their papers use plain CE; the training loop's default Eq. 8 adds a mask term they cannot have).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from emdlib.data.transforms import xception_to_rgb01
from emdlib.models.detector import DetectorOutput

# ITU-R BT.601 luma weights, as MATLAB's rgb2gray and OpenCV's COLOR_RGB2GRAY.
LUMA = (0.299, 0.587, 0.114)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def to_rgb01(image: torch.Tensor) -> torch.Tensor:
    """Shared input ``(x - 0.5) / 0.5`` → RGB in [0, 1] (:func:`emdlib.data.transforms.xception_to_rgb01`)."""
    return xception_to_rgb01(image)


def grey(rgb01: torch.Tensor) -> torch.Tensor:
    """RGB [0, 1] ``(N, 3, H, W)`` → BT.601 luma ``(N, 1, H, W)`` in [0, 1]."""
    w = rgb01.new_tensor(LUMA).view(1, 3, 1, 1)
    return (rgb01 * w).sum(1, keepdim=True)


def resize(x: torch.Tensor, size: int, mode: str = "bilinear") -> torch.Tensor:
    """Resize ``(N, C, H, W)`` to ``size``² (no-op when already that size)."""
    if tuple(x.shape[-2:]) == (size, size):
        return x
    if mode == "nearest":
        return F.interpolate(x, size=(size, size), mode="nearest")
    return F.interpolate(x, size=(size, size), mode=mode, align_corners=False, antialias=True)


def centre_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """The central ``size``² window of ``(..., H, W)``; images smaller than ``size`` are resized up instead.

    FF++ feeds the steganalysis baselines "a centred 128×128 crop of the face" (reference-facts §D.1–D.3); we take
    it from the face crop at the preset resolution. Presets below 128 px have no such window, so there the whole
    face is resized (bilinear) to ``size`` — documented deviation for smoke-test presets only.
    """
    h, w = x.shape[-2:]
    if h < size or w < size:
        lead = x.shape[:-2]
        flat = x.reshape(-1, 1, h, w)
        return resize(flat, size).reshape(*lead, size, size)
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top : top + size, left : left + size]


def classification_loss(output: DetectorOutput, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Softmax cross-entropy on ``output.logits`` (index 1 = fake) against ``batch["label"]``."""
    loss = F.cross_entropy(output.logits, batch["label"].long())
    return loss, {"loss_cls": loss.detach()}
