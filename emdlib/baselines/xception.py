"""XceptionNet as transferred to manipulation detection by FaceForensics++ (Rössler et al., ICCV 2019)
(EMD Tables II–IV "XceptionNet"; reference-facts §B.5).

timm's ``legacy_xception`` is the Cadene/"pretrainedmodels" port that FF++ uses (same layer layout and state-dict
keys; weights ``legacy_xception.tf_in1k`` = ImageNet). The 1000-class FC is replaced by a new 2-class FC
(20,811,050 parameters in all). FF++ recipe: ImageNet initialisation, the new FC alone is trained first
(:meth:`XceptionNet.warmup_parameters`; 3 epochs in FF++), then the whole network.

Input: FF++ normalises with mean = std = 0.5, i.e. exactly the shared ``(x - 0.5) / 0.5`` input, so it is used as
is, at the preset size (FF++ resizes faces to 299×299 — the "paper" preset's size; Xception's global pooling
accepts any size ≥ 71 px, so smaller presets are not resized). Output index 1 = fake, as FF++.
"""

from __future__ import annotations

import logging
import os
from typing import Iterator

import torch
from torch import nn

from emdlib.baselines import inputs
from emdlib.models.detector import DetectorNet, DetectorOutput

log = logging.getLogger(__name__)

TIMM_NAME = "legacy_xception"  # the Cadene port FF++ uses (reference-facts §B.5)


class XceptionNet(DetectorNet):
    """FF++ XceptionNet. Output: ``DetectorOutput(logits (N, 2) index 1 = fake, mask_logits None)``.

    ``pretrained``: ImageNet weights — True (timm's, needs the network or the timm cache), a local weights file
    (:func:`emdlib.pretrained.create_timm_model`: ``.safetensors``, timm checkpoint or ``.pth`` state dict of
    ``legacy_xception``) or False (random; tests).
    """

    def __init__(self, pretrained: bool | str | os.PathLike = True, num_classes: int = 2, drop_rate: float = 0.0):
        super().__init__()
        from emdlib.pretrained import create_timm_model

        self.net = create_timm_model(TIMM_NAME, pretrained, num_classes=num_classes, drop_rate=drop_rate)

    def warmup_parameters(self) -> Iterator[nn.Parameter]:
        """The new FC only (FF++'s warm-up; everything else frozen)."""
        return iter(self.net.get_classifier().parameters())

    def forward(self, image: torch.Tensor, fer_image: torch.Tensor | None = None) -> DetectorOutput:
        return DetectorOutput(logits=self.net(image))

    def compute_loss(self, output: DetectorOutput, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Softmax cross-entropy (FF++)."""
        return inputs.classification_loss(output, batch)
