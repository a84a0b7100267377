"""One grounding request: screenshot + description -> screen pixels.

Outcomes of :meth:`Grounder.ground`:

* found: ``ok=True, found=True`` with ``x``/``y`` (and ``box`` when the model
  gave one) in pixels of the real screen (``screen_width`` x ``screen_height``
  of the request), whatever size the screenshot had;
* not found (model refused, answered without coordinates, or OCR found no
  good match): ``ok=True, found=False`` with ``error.code = not_found`` and
  the reason, and the model's answer in ``raw``;
* failure (bad image, model endpoint down, timeout): ``ok=False`` with a
  typed ``error``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import logging
import time

from PIL import Image, UnidentifiedImageError

from selfagent.errors import ImageError, OCRError, ResizeError, VLMError
from selfagent.modelcheck import reachable_url
from selfagent.schemas import ErrorCode, ErrorInfo, GroundRequest, GroundResult

from . import ocr
from .client import VLMClient
from .config import Settings
from .families import Family, Point, Refusal, get_family, to_screen

log = logging.getLogger(__name__)

# Pillow refuses larger images anyway; a screenshot never comes close.
MAX_IMAGE_PIXELS = 8192 * 8192



def decode_image(data_b64: str) -> tuple[bytes, Image.Image]:
    try:
        data = base64.b64decode(data_b64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImageError(f"screenshot.data_b64 is not valid base64: {exc}") from exc
    try:
        image = Image.open(io.BytesIO(data))
        if image.width * image.height > MAX_IMAGE_PIXELS:
            raise ImageError(f"screenshot is too large ({image.width}x{image.height})")
        image.load()
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise ImageError(f"screenshot is not a readable image: {exc}") from exc
    return data, image


def encode_for_model(
    data: bytes, image: Image.Image, size: tuple[int, int]
) -> tuple[str, tuple[int, int]]:
    """A data URI of the image at ``size``; the original bytes if nothing changes."""
    fmt = "png" if image.format == "PNG" else "jpeg"
    if image.size == size and image.format in ("PNG", "JPEG"):
        return f"data:image/{fmt};base64,{base64.b64encode(data).decode()}", size
    # Bicubic is what the Qwen processors resize with.
    resized = image.convert("RGB").resize(size, Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    if fmt == "png":
        resized.save(buffer, format="PNG", compress_level=1)
    else:
        resized.save(buffer, format="JPEG", quality=90)
    return f"data:image/{fmt};base64,{base64.b64encode(buffer.getvalue()).decode()}", size


class Grounder:
    def __init__(
        self,
        settings: Settings,
        family: Family | None = None,
        client: VLMClient | None = None,
    ) -> None:
        self.settings = settings
        self.family = family
        self.client = client

    @classmethod
    def from_settings(cls, settings: Settings) -> Grounder:
        if not settings.uses_model:
            if settings.family != "ocr":
                log.warning("no grounding model configured: using OCR grounding")
            return cls(settings)
        family = get_family(
            settings.family, settings.model, settings.min_pixels, settings.max_pixels
        )
        if settings.family == "auto":
            log.info("model %r -> grounding family %s", settings.model, family.name)
        client = VLMClient(
            reachable_url(settings.api_base_url)[0],
            settings.model,
            settings.api_key,
            timeout=settings.timeout,
            retries=settings.retries,
            deadline=settings.deadline,
            max_tokens=family.max_tokens,
        )
        return cls(settings, family, client)

    @property
    def method(self) -> str:
        if self.family is None:
            return "ocr"
        return f"{self.family.name}:{self.settings.model}"

    async def aclose(self) -> None:
        if self.client is not None:
            await self.client.close()

    def _failed(self, request: GroundRequest, code: ErrorCode, message: str) -> GroundResult:
        return GroundResult(
            ok=False,
            request_id=request.request_id,
            method=self.method,
            error=ErrorInfo(code=code, message=message),
        )

    def _not_found(self, request: GroundRequest, reason: str, raw: str | None) -> GroundResult:
        return GroundResult(
            request_id=request.request_id,
            found=False,
            method=self.method,
            raw=raw,
            error=ErrorInfo(code=ErrorCode.NOT_FOUND, message=reason),
        )

    async def ground(self, request: GroundRequest) -> GroundResult:
        started = time.monotonic()
        try:
            data, image = await asyncio.to_thread(decode_image, request.screenshot.data_b64)
        except ImageError as exc:
            return self._failed(request, ErrorCode.INVALID_MESSAGE, str(exc))
        try:
            if self.family is None or self.client is None:
                result = await self._ground_ocr(request, image)
            else:
                result = await self._ground_model(request, data, image, self.family, self.client)
        except ResizeError as exc:
            return self._failed(request, ErrorCode.INVALID_MESSAGE, str(exc))
        except (VLMError, OCRError) as exc:
            return self._failed(request, exc.code, str(exc))
        log.info(
            "ground %s %r -> %s in %.0f ms",
            request.request_id,
            request.description[:80],
            (result.x, result.y) if result.found else "not found",
            (time.monotonic() - started) * 1000,
        )
        return result

    async def _ground_model(
        self,
        request: GroundRequest,
        data: bytes,
        image: Image.Image,
        family: Family,
        client: VLMClient,
    ) -> GroundResult:
        target = family.target_size(image.width, image.height)
        url, sent = await asyncio.to_thread(encode_for_model, data, image, target)
        messages = family.messages(request.description, url, sent[0], sent[1])
        text = await client.complete(messages)
        parsed = family.parse(text)
        if isinstance(parsed, Refusal):
            return self._not_found(request, parsed.reason, text)
        point = to_screen(parsed, family.space, sent, (request.screen_width, request.screen_height))
        return GroundResult(
            request_id=request.request_id,
            found=True,
            x=point.x,
            y=point.y,
            box=point.box,
            method=self.method,
            raw=text,
        )

    async def _ground_ocr(self, request: GroundRequest, image: Image.Image) -> GroundResult:
        match = await ocr.locate(image, request.description, self.settings.ocr_timeout)
        if match is None or match.score < self.settings.ocr_min_score:
            best = f" (best: {match.text!r}, score {match.score:.2f})" if match else ""
            return self._not_found(
                request, f"no text on the screen matches {request.description!r}{best}", None
            )
        x1, y1, x2, y2 = (float(v) for v in match.box)
        point = to_screen(
            Point((x1 + x2) / 2, (y1 + y2) / 2, (x1, y1, x2, y2)),
            "abs",
            image.size,
            (request.screen_width, request.screen_height),
        )
        return GroundResult(
            request_id=request.request_id,
            found=True,
            x=point.x,
            y=point.y,
            box=point.box,
            confidence=match.score,
            method=self.method,
            raw=match.text,
        )
