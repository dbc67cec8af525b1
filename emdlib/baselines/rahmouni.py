"""Rahmouni et al. 2017, "Distinguishing computer graphics from natural images using convolution neural
networks" — the Stats-2L network (EMD Tables II–III; reference-facts §D.4, code CG:`CGvsPhoto/model.py`).

Green channel only → conv 3×3 1→32 (same, ReLU) → conv 3×3 32→64 (same, ReLU) → per-map statistics pooling
(mean, variance (biased), max, min over H×W; 64×4 = 256) → FC 256→1024 + ReLU + Dropout (keep 0.65) → FC 1024→2.
284,034 parameters. Initialisation as the original: weights truncated normal, std √(2/fan_in); biases N(0.5, 0.1)
(as recorded in §D.4).

Input: the green channel of the shared ``(x - 0.5) / 0.5`` RGB, in [0, 1], at the preset size — statistics pooling
makes the network size-independent, so no resize (the paper used 100×100 patches).
"""

from __future__ import annotations

import logging
import math

import torch
from torch import nn

from emdlib.baselines import inputs
from emdlib.models.detector import DetectorNet, DetectorOutput

log = logging.getLogger(__name__)


def stats_pool(x: torch.Tensor) -> torch.Tensor:
    """Statistics pooling ``(N, C, H, W)`` → ``(N, 4C)``: per map mean, biased variance, max, min."""
    flat = x.flatten(2)
    return torch.cat([flat.mean(2), flat.var(2, unbiased=False), flat.amax(2), flat.amin(2)], 1)


class Rahmouni(DetectorNet):
    """Stats-2L (module docstring). Output: ``DetectorOutput(logits (N, 2) index 1 = fake)``."""

    def __init__(self, num_classes: int = 2, keep_prob: float = 0.65):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc1 = nn.Linear(256, 1024)
        self.dropout = nn.Dropout(1.0 - keep_prob)
        self.fc2 = nn.Linear(1024, num_classes)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        for m in (self.conv1, self.conv2, self.fc1, self.fc2):
            fan_in = m.weight[0].numel()
            nn.init.trunc_normal_(m.weight, std=math.sqrt(2.0 / fan_in), a=-2 * math.sqrt(2.0 / fan_in),
                                  b=2 * math.sqrt(2.0 / fan_in))
            nn.init.normal_(m.bias, 0.5, 0.1)

    def forward(self, image: torch.Tensor, fer_image: torch.Tensor | None = None) -> DetectorOutput:
        green = inputs.to_rgb01(image)[:, 1:2]
        x = torch.relu(self.conv2(torch.relu(self.conv1(green))))
        x = self.dropout(torch.relu(self.fc1(stats_pool(x))))
        return DetectorOutput(logits=self.fc2(x))

    def compute_loss(self, output: DetectorOutput, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Softmax cross-entropy (the original's loss)."""
        return inputs.classification_loss(output, batch)
