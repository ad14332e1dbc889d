"""PP-OCRv4 recognizer input from a text-line image, as RapidOCR 1.4.4 prepares it.

RapidOCR (``ch_ppocr_rec/text_recognize.py``, ``resize_norm_img``): BGR uint8 image from
OpenCV -> resize to height 48 keeping the aspect ratio (``cv2.INTER_LINEAR``) -> ``x/255``,
``(x-0.5)/0.5`` -> CHW float32 -> zero-pad on the right to the batch width. The batch width
is ``int(48 * max(320/48, widest w/h in the batch))``: at least 320 and never capped.

Where we differ, on purpose: a single line keeps its natural width, rounded up to a
multiple of 8, instead of being padded to at least 320. Variable shapes are what the
optimizer must handle, and the network downsamples width by 8 (one CTC time step per 8
columns), so rounding to 8 gives every time step a full column of pixels, while the pad
value (0 after normalisation, i.e. mid-gray) is the one RapidOCR pads with. On our rendered
validation lines this reads as well as RapidOCR's 320-minimum padding (measured; see the
sample's test module).
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from optimizer.errors import InputError

HEIGHT = 48
WIDTH_MULTIPLE = 8


def _source_index(dst_size: int, src_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Left/right source indices and right weight for each output pixel, OpenCV's way.

    Half-pixel centres and edge clamping as ``cv2.INTER_LINEAR``; no antialiasing when
    shrinking (unlike PIL's BILINEAR): PaddleOCR and RapidOCR both resize with OpenCV.
    """
    pos = (np.arange(dst_size, dtype=np.float64) + 0.5) * (src_size / dst_size) - 0.5
    pos = np.clip(pos, 0.0, src_size - 1)
    left = np.floor(pos).astype(np.int64)
    right = np.minimum(left + 1, src_size - 1)
    return left, right, pos - left


def resize_linear(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of an HxWxC uint8 array, matching ``cv2.resize`` to within 1 level."""
    top, bottom, wy = _source_index(height, pixels.shape[0])
    left, right, wx = _source_index(width, pixels.shape[1])
    src = pixels.astype(np.float32)
    rows = src[top] * (1 - wy)[:, None, None] + src[bottom] * wy[:, None, None]
    out = rows[:, left] * (1 - wx)[None, :, None] + rows[:, right] * wx[None, :, None]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)  # cv2 returns uint8 too


def preprocess(img: Image.Image) -> np.ndarray:
    """A PIL text-line image -> float32 ``[1, 3, 48, W]`` in [-1, 1], BGR channel order."""
    if img.width < 1 or img.height < 1:
        raise InputError(f"text-line image is empty ({img.width}x{img.height}); crop a real line of text")
    # RapidOCR reads images with OpenCV, which gives BGR; PIL gives RGB.
    bgr = np.asarray(img.convert("RGB"))[:, :, ::-1]
    width = max(1, math.ceil(HEIGHT * img.width / img.height))
    resized = resize_linear(bgr, HEIGHT, width)
    chw = (resized.transpose(2, 0, 1).astype(np.float32) / 255.0 - 0.5) / 0.5
    padded_width = -(-width // WIDTH_MULTIPLE) * WIDTH_MULTIPLE
    out = np.zeros((1, 3, HEIGHT, padded_width), dtype=np.float32)
    out[0, :, :, :width] = chw
    return out
