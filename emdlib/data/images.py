"""Still images as emdlib reads them: upright, RGB uint8, and honest about files that are cut short.

One reader for every place that reads a photo (``emd detect``, the face worlds, the expression sets), built on
Pillow, which decodes JPEG with the same libjpeg-turbo settings as OpenCV (the London set decodes bit-identically)
and also gives what OpenCV's ``IMREAD_UNCHANGED`` loses or hides:

* **EXIF orientation** (tag 274) is applied (``ImageOps.exif_transpose``): a phone photo stored sideways with
  Orientation = 6 is returned upright, as every viewer shows it.
* **Truncated files** are decoded as far as the data go (Pillow fills the rest: grey for JPEG, black for PNG) and
  flagged (:attr:`DecodedImage.truncated`), never passed off as whole.
* **Modes**: grey, grey + alpha, palette, RGBA (alpha dropped), CMYK (Pillow's conversion), 16-bit (scaled by
  1/257 and rounded, so ``v · 257 → v`` exactly), 32-bit integer and float (min-max scaled to 0..255).
* **Size**: images above Pillow's decompression-bomb limit (``Image.MAX_IMAGE_PIXELS`` × 2, 179 Mpixels by default)
  are refused with their size before any pixel is decoded.

Errors are :class:`ImageError` (a ``ValueError``) naming the file and the problem. Operating-system
errors (permission denied, symbolic-link loops, a folder named like an image) are re-raised as ``ImageError`` with
the real cause (:func:`emdlib.data.media.os_reason`).
"""

from __future__ import annotations

import logging
import os
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from emdlib.data.media import check_readable, os_reason

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
_TRUNCATED_LOCK = threading.Lock()  # ImageFile.LOAD_TRUNCATED_IMAGES is a module-level switch


class ImageError(ValueError):
    """An image that cannot be read; the message names the file and says why."""


@dataclass
class DecodedImage:
    """An image read from disk: ``rgb`` ``(H, W, 3)`` uint8, upright.

    ``truncated``: the file ended before the image data did (the missing part is filled by the decoder);
    ``orientation``: the EXIF orientation that was applied (1 = none); ``mode``: the file's Pillow mode
    (``L``, ``RGB``, ``CMYK``, ``I;16``, ...) and ``format`` its format (``JPEG``, ``PNG``, ...).
    """

    rgb: np.ndarray
    truncated: bool = False
    orientation: int = 1
    mode: str = ""
    format: str = ""

    @property
    def notes(self) -> list[str]:
        """Warnings a user should see: the truncation, in words."""
        if self.truncated:
            return [f"image data cut short (truncated {self.format or 'file'}): the missing part was filled by the "
                    "decoder; scores of this image are unreliable"]
        return []


def decode_image(path: str | os.PathLike) -> DecodedImage:
    """Read the image at ``path`` upright as RGB uint8; see the module docstring for what is converted.

    Raises :class:`ImageError` (``"<path>: <reason>"``) for an empty or unidentifiable file, an image above the pixel
    limit, a file that cannot be decoded at all, or an operating-system error (its real cause: permission denied,
    symbolic-link loop...).
    """
    path = Path(path)
    try:
        return _decode(path)
    except ImageError as e:
        raise ImageError(f"{path}: {e}") from None


def _decode(path: Path) -> DecodedImage:
    check_readable(path, ImageError)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                fmt = im.format or ""
                mode = im.mode
                truncated = _load(im)
                orientation = int(im.getexif().get(0x0112, 1) or 1)
                upright = ImageOps.exif_transpose(im) if orientation != 1 else im
                rgb = to_rgb8(upright)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"image too large to decode safely ({e})") from None
    except UnidentifiedImageError:
        raise ImageError("not a readable image: the data are in no image format Pillow knows "
                         f"(extension {path.suffix or '(none)'!r}; not an image, or damaged at the start)") from None
    except OSError as e:
        if e.errno is not None:
            raise ImageError(os_reason(e, path)) from None
        raise ImageError(f"not a readable image: {e}") from None
    if truncated:
        log.warning("%s: image data cut short (truncated %s); the missing part is filled by the decoder", path, fmt)
    return DecodedImage(rgb, truncated, orientation, mode, fmt)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """The upright RGB uint8 pixels ``(H, W, 3)`` of an image file (:func:`decode_image`; a truncated file is read
    with a logged warning). Raises :class:`ImageError`."""
    return decode_image(path).rgb


def _load(im: Image.Image) -> bool:
    """Decode the pixels; return whether the file was cut short (then decode what is there)."""
    try:
        im.load()
        return False
    except OSError as e:
        if "truncated" not in str(e) and "broken data stream" not in str(e):
            raise
    with _TRUNCATED_LOCK:
        ImageFile.LOAD_TRUNCATED_IMAGES = True
        try:
            im.load()
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = False
    return True


def to_rgb8(im: Image.Image) -> np.ndarray:
    """A Pillow image of any mode as a writable RGB uint8 ``(H, W, 3)`` array (alpha dropped, 16-bit ÷ 257,
    float/int32 min-max)."""
    mode = im.mode
    if mode in ("RGB", "L", "1", "P", "PA", "LA", "RGBA", "RGBX", "RGBa", "CMYK", "YCbCr", "LAB", "HSV", "La"):
        return np.array(im.convert("RGB"), dtype=np.uint8)  # a copy: np.asarray of a Pillow image is read-only
    a = np.asarray(im)
    if a.dtype.kind == "u" and a.dtype.itemsize == 2 or (mode.startswith("I") and a.size and a.min() >= 0
                                                         and a.max() <= 65535 and mode != "I;8"):
        a8 = np.round(a.astype(np.float32) / 257.0).astype(np.uint8)
    elif a.dtype == np.uint8:
        a8 = a
    else:
        f = a.astype(np.float32)
        finite = f[np.isfinite(f)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
        if hi <= lo:
            a8 = np.zeros(f.shape, np.uint8)
        else:
            a8 = np.round((np.nan_to_num(f, nan=lo, posinf=hi, neginf=lo) - lo) * (255.0 / (hi - lo))).astype(np.uint8)
    if a8.ndim == 2:
        a8 = a8[..., None]
    if a8.shape[2] == 1:
        a8 = np.repeat(a8, 3, axis=2)
    elif a8.shape[2] == 2:
        a8 = np.repeat(a8[..., :1], 3, axis=2)
    elif a8.shape[2] > 3:
        a8 = a8[..., :3]
    return np.require(a8, requirements=["C", "W"])
