"""Cozzolino et al. 2017, "Recasting residual-based local descriptors as convolutional neural networks"
(EMD Tables II–III; reference-facts §D.2).

The 162-D steganalysis feature of :mod:`emdlib.baselines.steganalysis` written as a CNN whose first layers are
fixed to reproduce it, followed by a trainable classifier; :meth:`Cozzolino.relax` then frees the fixed layers for
end-to-end fine-tuning, as the paper does. No official code exists; the layer-level design below is ours:

* ``residual_h`` / ``residual_v``: fixed convolutions with the kernel ``[1, -3, 3, -1]`` (1×4 and 4×1, valid).
* Soft quantisation: with the 2T thresholds ``θ_k = (k - T + ½)·q·3`` (±1.5 grey levels for q = 1, T = 1) and
  ``s_k = σ((r - θ_k)/τ)``, the 2T+1 level maps are ``p_0 = 1 - s_0``, ``p_k = s_{k-1} - s_k``, ``p_2T = s_{2T-1}``
  — a one-hot encoding of the quantised residual when τ → 0 (residuals of integer images never sit on a
  threshold). Default τ = 0.1 grey levels: on integer images every residual is ≥ 0.5 from a threshold, so the maps
  are one-hot to within σ(-5) ≈ 0.7 %.
* Co-occurrence: a convolution from the 3 level maps to 81 pattern maps along the scan (kernel 1×4 "h", 4×1 "v"),
  weight 1 where the pattern's k-th digit equals the level, bias −3, ReLU: exactly the indicator of the pattern for
  one-hot inputs ("co-occurrence via convolution").
* Histogram: sum pooling divided by the number of positions, over the parallel scans (h-scan of r_h, v-scan of
  r_v) and the orthogonal scans → 81 + 81 = 162, the same as ``steg_features``.
* Classifier: ``BatchNorm1d(162)`` (the learned counterpart of the SVM pipeline's StandardScaler) → ``Linear(162, 2)``.

Training with emdlib.train: the warm-up epochs train the classifier on the fixed feature
(:meth:`Cozzolino.warmup_parameters`), the remaining epochs every parameter (:meth:`Cozzolino.trainable_parameters`)
— i.e. the constrained network first, then the relaxed one, the paper's two stages.

Input: the shared ``(x - 0.5) / 0.5`` RGB → BT.601 grey on the 0–255 scale → 128×128 centre crop (whole image when
smaller: the normalised histogram is size-independent), as the Steg. Features baseline.
"""

from __future__ import annotations

import itertools
import logging
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from emdlib.baselines import inputs
from emdlib.baselines.steganalysis import CROP_SIZE, ORDER, RESIDUAL_FACTOR, RESIDUAL_KERNEL
from emdlib.models.detector import DetectorNet, DetectorOutput

log = logging.getLogger(__name__)


class Cozzolino(DetectorNet):
    """Constrained residual/co-occurrence CNN + linear classifier (module docstring). Output:
    ``DetectorOutput(logits (N, 2) index 1 = fake, extras={"features": (N, 162) histogram})``."""

    def __init__(self, q: float = 1.0, T: int = 1, temperature: float = 0.1, crop: int | None = CROP_SIZE):
        super().__init__()
        self.T, self.crop = T, crop
        levels = 2 * T + 1
        self.num_patterns = levels**ORDER
        self.residual_h = nn.Conv2d(1, 1, (1, 4), bias=False)
        self.residual_v = nn.Conv2d(1, 1, (4, 1), bias=False)
        kernel = torch.tensor(RESIDUAL_KERNEL)
        with torch.no_grad():
            self.residual_h.weight.copy_(kernel.view(1, 1, 1, 4))
            self.residual_v.weight.copy_(kernel.view(1, 1, 4, 1))
        step = q * RESIDUAL_FACTOR
        self.thresholds = nn.Parameter(torch.tensor([(k - T + 0.5) * step for k in range(2 * T)]))
        self.register_buffer("temperature", torch.tensor(float(temperature)))
        self.cooc_h = nn.Conv2d(levels, self.num_patterns, (1, ORDER))
        self.cooc_v = nn.Conv2d(levels, self.num_patterns, (ORDER, 1))
        weight = torch.zeros(self.num_patterns, levels, ORDER)
        for code, digits in enumerate(itertools.product(range(levels), repeat=ORDER)):
            for k, d in enumerate(digits):
                weight[code, d, k] = 1.0
        with torch.no_grad():
            self.cooc_h.weight.copy_(weight.view(self.num_patterns, levels, 1, ORDER))
            self.cooc_v.weight.copy_(weight.view(self.num_patterns, levels, ORDER, 1))
            self.cooc_h.bias.fill_(-(ORDER - 1))
            self.cooc_v.bias.fill_(-(ORDER - 1))
        self.scaler = nn.BatchNorm1d(2 * self.num_patterns)
        self.fc = nn.Linear(2 * self.num_patterns, 2)
        for p in self.fixed_parameters():
            p.requires_grad_(False)

    def fixed_parameters(self) -> Iterator[nn.Parameter]:
        """The layers that reproduce the hand-crafted feature (frozen until :meth:`relax`)."""
        yield from self.residual_h.parameters()
        yield from self.residual_v.parameters()
        yield self.thresholds
        yield from self.cooc_h.parameters()
        yield from self.cooc_v.parameters()

    def relax(self) -> None:
        """Free the fixed layers for end-to-end fine-tuning (Cozzolino et al. 2017, §"relaxing the constraints")."""
        for p in self.fixed_parameters():
            p.requires_grad_(True)

    @property
    def relaxed(self) -> bool:
        return all(p.requires_grad for p in self.fixed_parameters())

    def warmup_parameters(self) -> Iterator[nn.Parameter]:
        """Classifier only: the constrained network first learns a classifier on the fixed feature."""
        yield from self.scaler.parameters()
        yield from self.fc.parameters()

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """Every parameter, fixed layers included: emdlib.train trains :meth:`warmup_parameters` during the
        warm-up epochs (the constrained network) and these afterwards — the relaxed, end-to-end fine-tuning."""
        return self.parameters()

    def grey_input(self, image: torch.Tensor) -> torch.Tensor:
        """Shared input → grey on the 0–255 scale, centre-cropped (module docstring)."""
        g = inputs.grey(inputs.to_rgb01(image)) * 255.0
        if self.crop and min(g.shape[-2:]) >= self.crop:
            g = inputs.centre_crop(g, self.crop)
        return g

    def _levels(self, r: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid((r - self.thresholds.view(1, -1, 1, 1)) / self.temperature)  # (N, 2T, H, W)
        ones = torch.ones_like(s[:, :1])
        zeros = torch.zeros_like(s[:, :1])
        upper = torch.cat([ones, s], 1)
        lower = torch.cat([s, zeros], 1)
        return upper - lower  # p_k = s_{k-1} - s_k with s_{-1} = 1, s_{2T} = 0

    def histogram(self, grey255: torch.Tensor) -> torch.Tensor:
        """Grey images ``(N, 1, H, W)`` on the 0–255 scale → ``(N, 162)`` ("h" then "v" histogram)."""
        p_h = self._levels(self.residual_h(grey255))
        p_v = self._levels(self.residual_v(grey255))
        maps = {
            "hh": F.relu(self.cooc_h(p_h)), "vv": F.relu(self.cooc_v(p_v)),
            "hv": F.relu(self.cooc_v(p_h)), "vh": F.relu(self.cooc_h(p_v)),
        }
        sums = {k: m.sum((2, 3)) for k, m in maps.items()}
        counts = {k: m.shape[2] * m.shape[3] for k, m in maps.items()}
        parallel = (sums["hh"] + sums["vv"]) / (counts["hh"] + counts["vv"])
        orthogonal = (sums["hv"] + sums["vh"]) / (counts["hv"] + counts["vh"])
        return torch.cat([parallel, orthogonal], 1)

    def forward(self, image: torch.Tensor, fer_image: torch.Tensor | None = None) -> DetectorOutput:
        feats = self.histogram(self.grey_input(image))
        return DetectorOutput(logits=self.fc(self.scaler(feats)), extras={"features": feats})

    def compute_loss(self, output: DetectorOutput, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Softmax cross-entropy (no mask head)."""
        return inputs.classification_loss(output, batch)
