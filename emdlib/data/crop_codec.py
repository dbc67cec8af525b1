"""Compressed face-crop caches (issue 14, deliverable 4).

``prepare``'s decode-free cache stores every crop as raw uint8, ``S² · 3`` bytes a frame: at the paper's protocol
(200 training frames per video, 299-px crops, §IV-A) that is ~300 GB. A compressed cache stores each crop as a JPEG
(quality :data:`JPEG_QUALITY`) or a lossless PNG instead, the encodings of one video concatenated in one 1-D uint8
``.npy`` (memory-mapped like the raw arrays) with their byte offsets in the video's JSON; the {0, 1} masks of the
fakes go the same way as lossless PNGs in either compressed format (raw, they would be a fifth of the paper's cache).
Images are encoded with OpenCV (the library ``prepare`` already reads videos with) and decoded with ``torchvision.io``
(libjpeg-turbo / libpng), in the DataLoader's processes.

Formats (:data:`CACHE_FORMATS`): ``npy`` (raw, the default of the small presets), ``jpeg``, ``png``. Which preset uses
which is chosen from ``benchmarks/cache_formats.py`` (size and decode rate, ``results/benchmarks/cache_formats.json``).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from emdlib.presets import CACHE_FORMATS

#: JPEG quality of the ``jpeg`` cache (issue 14: q95).
JPEG_QUALITY = 95
#: PNG compression level (OpenCV 0–9; 3 is libpng's usual trade-off of size against encoding time).
PNG_COMPRESSION = 3


#: Upper estimates of the bytes per pixel of a cached ``(crop, mask)`` in each format, for ``emd check``'s disk
#: estimate (:func:`emdlib.check.cache_bytes`): raw exactly; JPEG q95 and PNG crops the 95th percentile over 60 London
#: faces at 299 px (0.308 and 1.317), masks twice the mean of FF++'s official sample masks as PNG (0.0094), measured
#: by ``benchmarks/cache_formats.py`` (``results/benchmarks/cache_formats.json``).
BYTES_PER_PIXEL: dict[str, tuple[float, float]] = {"npy": (3.0, 1.0), "jpeg": (0.31, 0.02), "png": (1.32, 0.02)}


def check_format(cache_format: str) -> str:
    """``cache_format`` if it is one of :data:`CACHE_FORMATS`; ValueError naming the choices otherwise."""
    if cache_format not in CACHE_FORMATS:
        raise ValueError(f"unknown cache format {cache_format!r}; choose one of {CACHE_FORMATS}")
    return cache_format


def encode_crops(crops: Sequence[np.ndarray], cache_format: str) -> tuple[np.ndarray, list[int]]:
    """Encode RGB uint8 crops ``(S, S, 3)`` — or single-channel uint8 masks ``(S, S)`` — as ``cache_format``
    (``jpeg`` or ``png``; masks are always given ``png``, lossless).

    Returns ``(data, offsets)``: ``data`` the encodings concatenated, a 1-D uint8 array; ``offsets`` the ``len(crops)
    + 1`` byte offsets, crop ``i`` being ``data[offsets[i]:offsets[i + 1]]``. Raises ValueError for ``npy`` or an
    unknown format, or an image that is neither ``(H, W, 3)`` nor ``(H, W)`` uint8.
    """
    if check_format(cache_format) == "npy":
        raise ValueError("the npy cache stores raw arrays; nothing to encode")
    ext, params = ((".jpg", [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]) if cache_format == "jpeg"
                   else (".png", [cv2.IMWRITE_PNG_COMPRESSION, PNG_COMPRESSION]))
    parts, offsets = [], [0]
    for i, crop in enumerate(crops):
        rgb = crop.ndim == 3 and crop.shape[2] == 3
        if crop.dtype != np.uint8 or not (rgb or crop.ndim == 2):
            raise ValueError(f"crop {i}: expected an (H, W, 3) uint8 RGB image or an (H, W) uint8 mask, got "
                             f"{crop.dtype} {crop.shape}")
        ok, buf = cv2.imencode(ext, cv2.cvtColor(crop, cv2.COLOR_RGB2BGR) if rgb else crop, params)
        if not ok:
            raise ValueError(f"crop {i}: OpenCV could not encode it as {cache_format}")
        parts.append(buf.reshape(-1))
        offsets.append(offsets[-1] + buf.size)
    data = np.concatenate(parts) if parts else np.zeros(0, np.uint8)
    return data, offsets


def decode_crop(encoded: np.ndarray, mask: bool = False) -> np.ndarray:
    """One encoded crop (1-D uint8, JPEG or PNG) → ``(S, S, 3)`` uint8 RGB, or with ``mask`` an ``(S, S)`` uint8
    mask, by ``torchvision.io.decode_image``. Raises RuntimeError (torchvision's) for bytes that are neither."""
    import torch  # here, not at the top: prepare's worker processes encode only and start seconds faster without it
    from torchvision.io import ImageReadMode, decode_image

    image = decode_image(torch.from_numpy(np.array(encoded, dtype=np.uint8)),
                         mode=ImageReadMode.GRAY if mask else ImageReadMode.RGB)
    return image[0].numpy() if mask else image.permute(1, 2, 0).numpy()


class EncodedCrops:
    """The crops of one video in an encoded cache, indexed like the raw ``(N, S, S, 3)`` array.

    ``data``: the video's concatenated encodings (1-D uint8, typically a read-only memory map); ``offsets``: the
    ``N + 1`` byte offsets from its JSON; ``source`` names the file in errors; ``mask``: the video's masks rather
    than its crops. ``crops[i]`` decodes crop ``i`` (:func:`decode_crop`). Raises ValueError when the offsets do not
    fit the data (a cache written by another run).
    """

    def __init__(self, data: np.ndarray, offsets: Sequence[int], source: str = "<memory>", mask: bool = False):
        offsets = [int(o) for o in offsets]
        if not offsets or offsets[0] != 0 or offsets[-1] != len(data) or any(b < a for a, b in zip(offsets,
                                                                                                  offsets[1:])):
            raise ValueError(f"{source}: crop offsets do not fit its {len(data)} bytes (rerun prepare)")
        self.data, self.offsets, self.source, self.mask = data, offsets, source, mask

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, row: int) -> np.ndarray:
        if not 0 <= row < len(self):
            raise IndexError(f"{self.source}: crop {row} of {len(self)}")
        return decode_crop(self.data[self.offsets[row]:self.offsets[row + 1]], self.mask)
