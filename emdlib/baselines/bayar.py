"""Bayar & Stamm 2016, "A deep learning approach to universal image manipulation detection using a new
convolutional layer" (EMD Tables II–III; reference-facts §D.3).

Network (Caffe-style, no padding), for a 1×128×128 grey input:

=====================================  ===========
constrained conv 1→12, 5×5, s1          12×124×124
conv 12→64, 7×7, s2 → ReLU → MaxPool 3 s2 → LRN(5)   64×29×29
conv 64→48, 5×5, s1 → ReLU → MaxPool 3 s2 → LRN(5)   48×12×12
FC 6912→4096 → ReLU → Dropout 0.5
FC 4096→4096 → ReLU → Dropout 0.5
FC 4096→2
=====================================  ===========

The constrained layer learns prediction-error filters: for every filter, centre tap = −1 and the other 24 taps sum
to 1. The constraint is restored after **every** optimiser step by :meth:`BayarStamm.project_constraint` (centre
← 0, divide by the sum of the taps, centre ← −1). The training loop calls ``model.after_step()`` after each
``optimizer.step()`` when the model defines it; here ``after_step`` is that projection. *Inferred:* the constrained
layer has no bias (it is a prediction-error filter); ReLU after the hidden FC layers (the paper's; a public port
omits them).

Input: shared ``(x - 0.5) / 0.5`` RGB → BT.601 grey in [0, 1] → 128×128 centre crop of the face (FF++'s setting for
this baseline, recalled; ``input_size``); faces smaller than ``input_size`` are resized up (bilinear). The first FC
layer's width follows ``input_size`` (6,912 inputs at 128), so presets with smaller faces build the network at their
face size (:func:`emdlib.study.experiments.baseline_kwargs`) instead of upsampling.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from emdlib.baselines import inputs
from emdlib.models.detector import DetectorNet, DetectorOutput

log = logging.getLogger(__name__)

INPUT_SIZE = 128


class ConstrainedConv2d(nn.Conv2d):
    """Bayar & Stamm's constrained convolution: centre tap −1, other taps summing to 1 (per filter)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 5):
        if kernel_size % 2 == 0:
            raise ValueError("the constrained convolution needs an odd kernel (a centre tap)")
        super().__init__(in_channels, out_channels, kernel_size, bias=False)
        self.reset_constrained()

    @torch.no_grad()
    def reset_constrained(self) -> None:
        """*Inferred* initialisation: off-centre taps U(0, 1), then the projection — every filter starts as a
        weighted-average predictor minus the centre pixel, all taps in [0, 1] except the centre −1.

        PyTorch's default init draws taps of both signs; their sum can be close to 0 and the projection's division
        then scales the filter by orders of magnitude. On the cpu preset that killed the network in its first epoch
        (training loss stuck at ln 2, 50% accuracy on every cell); with this init it learns (cpu study: 85.0 / 81.2 /
        87.5% test accuracy on the DF / F2F / NT cells).
        """
        self.weight.uniform_(0.0, 1.0)
        self.project_constraint()

    @torch.no_grad()
    def project_constraint(self) -> None:
        """Centre ← 0, divide each (filter, input channel) kernel by its sum, centre ← −1."""
        w = self.weight
        c = w.shape[-1] // 2
        w[:, :, c, c] = 0.0
        s = w.sum(dim=(2, 3), keepdim=True)
        # a sum at exactly 0 would blow up; nudge it (the filter's direction is kept)
        s = torch.where(s.abs() < 1e-8, torch.full_like(s, 1e-8), s)
        w.div_(s)
        w[:, :, c, c] = -1.0


class BayarStamm(DetectorNet):
    """Constrained-conv CNN (module docstring). Output: ``DetectorOutput(logits (N, 2) index 1 = fake)``."""

    def __init__(self, input_size: int = INPUT_SIZE, fc_width: int = 4096, num_classes: int = 2):
        super().__init__()
        self.input_size = input_size
        self.constrained = ConstrainedConv2d(1, 12, 5)
        self.features = nn.Sequential(
            nn.Conv2d(12, 64, 7, stride=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2), nn.LocalResponseNorm(5),
            nn.Conv2d(64, 48, 5, stride=1), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2), nn.LocalResponseNorm(5),
        )
        with torch.no_grad():
            n = self.features(torch.zeros(1, 12, input_size - 4, input_size - 4)).numel()
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(n, fc_width), nn.ReLU(inplace=True), nn.Dropout(0.5),
            nn.Linear(fc_width, fc_width), nn.ReLU(inplace=True), nn.Dropout(0.5),
            nn.Linear(fc_width, num_classes),
        )

    def project_constraint(self) -> None:
        """Restore the first layer's constraint (reference-facts §D.3)."""
        self.constrained.project_constraint()

    def after_step(self) -> None:
        """Hook the training loop calls after every optimiser step: :meth:`project_constraint`."""
        self.project_constraint()

    def grey_input(self, image: torch.Tensor) -> torch.Tensor:
        g = inputs.grey(inputs.to_rgb01(image))
        return inputs.centre_crop(g, self.input_size)

    def forward(self, image: torch.Tensor, fer_image: torch.Tensor | None = None) -> DetectorOutput:
        x = self.constrained(self.grey_input(image))
        return DetectorOutput(logits=self.classifier(self.features(x)))

    def compute_loss(self, output: DetectorOutput, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Softmax cross-entropy (the paper's loss)."""
        return inputs.classification_loss(output, batch)
