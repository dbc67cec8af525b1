"""SimFER: the shallow single-branch FER network of the EMD ablation (paper §IV-D.2, Table V).

The paper only says SimFER "consist[s] of shallow convolutional layers"; no layer list is given (reference-facts §A.9).
Our design choice, stated here so it can be changed in one place (:data:`SIMFER_CFG`):

* the same layer language as ESR (``Conv → BN → ReLU [→ MaxPool 2]``, stride 1, no padding) but only **three**
  convolutions and **no** ensemble: 3→32 (5×5, pool), 32→64 (3×3, pool), 64→512 (3×3, pool);
* the last map has **512 channels** like an ESR branch, so EMD can swap it in without changing its fusion layer
  (96² input → 512×10×10; EMD resizes the FER map to the encoder grid anyway, reference-facts §A.9);
* GAP → ``fc`` (512 → 8 logits), the same head as an ESR branch; ~0.32 M parameters against ESR-9's 20.3 M.

It implements the :class:`~emdlib.models.esr.FERStream` interface as the ``B = 1`` case: ``forward`` returns logits
``(N, 1, 8)``, ``branch_maps`` ``(N, 1, 512, h, w)``, and ``select_branch`` returns the map, branch 0 and the
arg-max class (Eqs. 3–5 degenerate to the arg-max of one branch). Input: ESR's convention (96², BGR, [0, 1]).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import nn

from emdlib.models.esr import NUM_CLASSES, ConvSpec, ConvStack, FERStream, stack_output_size

log = logging.getLogger(__name__)

SIMFER_CFG: tuple[ConvSpec, ...] = (
    ConvSpec(32, 5, pool=True),
    ConvSpec(64, 3, pool=True),
    ConvSpec(512, 3, pool=True),
)


class SimFER(FERStream):
    """A shallow single-branch CNN with ESR's FER-stream interface (Table V ablation)."""

    def __init__(self, num_classes: int = NUM_CLASSES, cfg: Sequence[ConvSpec] = SIMFER_CFG, num_branches: int = 1
                 ) -> None:
        # ``num_branches`` is accepted so that code may treat ESR and SimFER alike; SimFER has exactly one branch
        if num_branches != 1:
            raise ValueError(f"SimFER has one branch, got num_branches={num_branches}")
        super().__init__()
        self.num_classes = num_classes
        self.cfg = tuple(cfg)
        self.features = ConvStack(3, self.cfg)
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(self.features.out_channels, num_classes)
        self.feature_channels = self.features.out_channels

    @property
    def num_branches(self) -> int:
        return 1

    def branch_outputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._check_input(x)
        fmap = self.features(x)
        logits = self.fc(self.global_pool(fmap).flatten(1))
        return fmap[:, None], logits[:, None]

    def cam_layers(self) -> list[nn.Module]:
        return [self.features.output_layer]

    def spec(self) -> dict:
        """The registry entry that rebuilds this network (:mod:`emdlib.registry`; default layer configuration)."""
        return {"name": "simfer", "kwargs": {"num_classes": self.num_classes}}

    def map_size(self, input_size: int = 96) -> int:
        """Side of the last conv map for a square input (10 for 96²)."""
        return stack_output_size(input_size, self.cfg)
