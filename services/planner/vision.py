"""Recognising an endpoint that cannot take images, and saying so in plain words.

A text-only model behind llama.cpp counts the base64 of a screenshot as text
and answers "maximum context length is 8192 tokens"; without its vision
projector it says "image input is not supported"; other servers reject the
``image_url`` part outright. None of that tells a person what to do, so the
planner replaces it with :data:`NO_IMAGES`.
"""

from __future__ import annotations

import base64
import io
import re
from collections.abc import Mapping, Sequence
from typing import Any, Final

from PIL import Image

NO_IMAGES: Final = (
    "this endpoint does not accept images: use a vision model "
    "(for llama.cpp, load its vision projector)"
)

_REJECTS_IMAGES: Final = re.compile(
    r"image input is not supported|does not support (?:image|vision|multimodal)"
    r"|images? (?:are|is) not supported|mmproj|multimodal (?:is )?not supported"
    r"|vision (?:is )?not supported|(?:unsupported|unknown|invalid) content (?:part|type)"
    r"|image_url.{0,40}(?:not supported|unsupported|invalid)|not a multimodal model",
    re.IGNORECASE,
)
_CONTEXT: Final = re.compile(
    r"(?:maximum|max) context length|context (?:length|size|window)|n_ctx|too many tokens"
    r"|exceeds? the (?:available )?context",
    re.IGNORECASE,
)
_LIMIT: Final = re.compile(r"(?:is|of|=|:)\s*(\d{3,7})\s*tokens", re.IGNORECASE)
# Rough sizes: prose is about 4 characters a token; vision models spend at
# most about one token per 700 pixels of an image (Qwen: 784; GPT-4o and
# Claude fewer), plus some for its framing; a reply needs room too.
_CHARS_PER_TOKEN: Final = 4
_PIXELS_PER_TOKEN: Final = 700
_TOKENS_PER_IMAGE: Final = 100
_REPLY_ROOM: Final = 2048


def _parts(messages: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    parts: list[Mapping[str, Any]] = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            parts.append({"type": "text", "text": content})
        else:
            parts.extend(content or ())
    return parts


def text_chars(messages: Sequence[Mapping[str, Any]]) -> int:
    """Characters of text in chat messages (image data left out)."""
    return sum(len(str(p.get("text", ""))) for p in _parts(messages) if p.get("type") == "text")


def image_sizes(messages: Sequence[Mapping[str, Any]]) -> list[tuple[int, int]]:
    """Width and height of every inline image in chat messages."""
    sizes: list[tuple[int, int]] = []
    for part in _parts(messages):
        if part.get("type") != "image_url":
            continue
        url = str(part.get("image_url", {}).get("url", ""))
        try:
            with Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))) as image:
                sizes.append(image.size)
        except (IndexError, ValueError, OSError):
            sizes.append((1280, 800))
    return sizes


def vision_tokens(sizes: Sequence[tuple[int, int]]) -> int:
    """About the most a vision model spends on these images."""
    return sum(w * h // _PIXELS_PER_TOKEN + _TOKENS_PER_IMAGE for w, h in sizes)


def images_rejected(error: str, messages: Sequence[Mapping[str, Any]]) -> bool:
    """Whether a failed request's error means the endpoint does not take images.

    A context-length error counts only when the request had images and would
    have fit the stated limit easily had they been read as images: then the
    server read them as text (a base64 screenshot is tens of thousands of
    text tokens). A request that is simply too big is not misreported.
    """
    if _REJECTS_IMAGES.search(error):
        return True
    if not _CONTEXT.search(error):
        return False
    sizes = image_sizes(messages)
    limit = _LIMIT.search(error)
    if not sizes or limit is None:
        return False
    needed = text_chars(messages) / _CHARS_PER_TOKEN + vision_tokens(sizes) + _REPLY_ROOM
    return needed < int(limit.group(1))
