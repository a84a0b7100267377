"""Putting a screenshot on a model's image grid before it is sent.

Absolute-pixel families answer in pixels of the image their processor
resized to; servers differ in whether and how they apply that resize, so the
planner sends the image already at that size and the model's pixels are the
pixels of the image we sent (the grounder does the same).
"""

from __future__ import annotations

import base64
import io

from PIL import Image

from selfagent.schemas import Screenshot


def fit(shot: Screenshot, size: tuple[int, int], quality: int = 85) -> Screenshot:
    """``shot`` at exactly ``size`` (a JPEG), or ``shot`` itself when it already is."""
    if (shot.width, shot.height) == size:
        return shot
    image = Image.open(io.BytesIO(base64.b64decode(shot.data_b64))).convert("RGB")
    # Bicubic is what the Qwen processors resize with.
    resized = image.resize(size, Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    resized.save(buffer, format="JPEG", quality=quality)
    return Screenshot(
        format="jpeg",
        width=size[0],
        height=size[1],
        data_b64=base64.b64encode(buffer.getvalue()).decode(),
    )
