"""A pristine clip with per-frame landmarks: what synth renders and what forge turns into manipulations."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Clip:
    """Frames ``(T, H, W, 3)`` RGB uint8, landmarks ``(T, 68, 2)`` float32 (dlib order, x/y pixels),
    the expression shown in each frame (names from ``EXPRESSIONS``; empty when unknown) and an identity tag."""

    frames: np.ndarray
    landmarks: np.ndarray
    expressions: list[str] = field(default_factory=list)
    identity: str = ""

    def __post_init__(self) -> None:
        if self.frames.ndim != 4 or self.frames.shape[-1] != 3 or self.frames.dtype != np.uint8:
            raise ValueError(f"clip {self.identity!r}: frames must be (T, H, W, 3) uint8, got {self.frames.shape} {self.frames.dtype}")
        if self.landmarks.shape != (len(self.frames), 68, 2):
            raise ValueError(f"clip {self.identity!r}: landmarks must be (T, 68, 2), got {self.landmarks.shape}")

    def __len__(self) -> int:
        return len(self.frames)
