"""The Qwen-family image grid (``smart_resize``).

Qwen2/2.5-VL, UI-TARS-1.5, GTA1, Holo, Jedi and OpenCUA answer in pixels of
the image *after* their processor resized it to a multiple of the patch
factor within a pixel budget. Servers differ in whether and how they apply
that resize, so the grounder resizes on the client to exactly the size the
model will see; the server then has nothing left to change and the model's
pixels are the pixels we sent.
"""

from __future__ import annotations

import math

from selfagent.errors import ResizeError

QWEN2_FACTOR = 28
QWEN3_FACTOR = 32
DEFAULT_MIN_PIXELS = 56 * 56
# The Qwen2.5-VL processor's own defaults (4 * 28 * 28 and 16384 * 28 * 28).
DEFAULT_MAX_PIXELS = 16384 * 28 * 28
MAX_ASPECT_RATIO = 200



def _round_to(value: float, factor: int) -> int:
    # Python's round() is banker's rounding, the same as the reference
    # implementation, so results match the model's own processor bit for bit.
    return round(value / factor) * factor


def smart_resize(
    height: int,
    width: int,
    factor: int = QWEN2_FACTOR,
    min_pixels: int = DEFAULT_MIN_PIXELS,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> tuple[int, int]:
    """Return ``(height, width)`` the model's processor resizes an image to.

    Both sides become multiples of ``factor``, the area lands within
    ``[min_pixels, max_pixels]``, and the aspect ratio is kept as closely as
    the grid allows.
    """
    if height <= 0 or width <= 0:
        raise ResizeError(f"image size must be positive, got {width}x{height}")
    if factor <= 0 or min_pixels <= 0 or max_pixels < min_pixels:
        raise ResizeError(
            f"bad grid: factor={factor} min_pixels={min_pixels} max_pixels={max_pixels}"
        )
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise ResizeError(
            f"aspect ratio must be at most {MAX_ASPECT_RATIO}, got "
            f"{max(height, width) / min(height, width):.1f} ({width}x{height})"
        )
    h_bar = max(factor, _round_to(height, factor))
    w_bar = max(factor, _round_to(width, factor))
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def fit_within(width: int, height: int, max_pixels: int) -> tuple[int, int]:
    """Shrink (never grow) to at most ``max_pixels``, keeping the aspect ratio.

    For models answering in relative coordinates the exact size does not
    matter, only the upload and token cost does.
    """
    if width * height <= max_pixels:
        return width, height
    scale = math.sqrt(max_pixels / (width * height))
    return max(1, math.floor(width * scale)), max(1, math.floor(height * scale))
