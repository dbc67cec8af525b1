"""Expression classes: the eight AffectNet categories in AffectNet order (reference-facts §A.2)."""

from __future__ import annotations

EXPRESSIONS: tuple[str, ...] = ("neutral", "happy", "sad", "surprise", "fear", "disgust", "anger", "contempt")
