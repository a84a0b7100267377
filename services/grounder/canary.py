"""A start-up self-check: does the configured model agree with the configured format?

A wrong ``GROUNDER_FAMILY`` (say, a 0-1000 model read as absolute pixels)
does not fail: it clicks in the wrong place. So at start-up the grounder
draws a screen with one known button, grounds it, and logs whether the
answer lands on the button. The result is only logged, never fatal: the
endpoint may simply not be up yet.
"""

from __future__ import annotations

import base64
import io
import logging
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

from selfagent.schemas import GroundRequest, Screenshot

from .grounder import Grounder

log = logging.getLogger(__name__)

WIDTH, HEIGHT = 1280, 720
# Off-centre on purpose, so that a swapped axis or a wrong scale misses it.
BUTTON = (872, 468, 1032, 516)
WORD = "Submit"
DESCRIPTION = f'the blue "{WORD}" button'


@dataclass(frozen=True)
class CanaryResult:
    agrees: bool
    expected: tuple[int, int]
    answered: tuple[int, int] | None
    detail: str


def canary_image() -> bytes:
    image = Image.new("RGB", (WIDTH, HEIGHT), (236, 236, 236))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 0, WIDTH, 32), fill=(48, 48, 48))
    draw.text((12, 8), "Settings", fill=(230, 230, 230), font=ImageFont.load_default(size=15))
    draw.rectangle((300, 200, 980, 560), fill=(255, 255, 255), outline=(180, 180, 180))
    draw.text((330, 230), "Create account", fill=(20, 20, 20), font=ImageFont.load_default(size=24))
    draw.rectangle((330, 300, 700, 336), outline=(150, 150, 150))
    draw.rounded_rectangle(BUTTON, radius=8, fill=(37, 99, 235))
    cx, cy = expected_centre()
    draw.text((cx, cy), WORD, fill="white", font=ImageFont.load_default(size=20), anchor="mm")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def expected_centre() -> tuple[int, int]:
    x1, y1, x2, y2 = BUTTON
    return (x1 + x2) // 2, (y1 + y2) // 2


async def run_canary(grounder: Grounder) -> CanaryResult | None:
    """Ground the canary screen; None when there is no model (OCR mode has no format to check)."""
    if grounder.family is None:
        log.info("canary: no grounding model configured, nothing to check")
        return None
    request = GroundRequest(
        description=DESCRIPTION,
        screenshot=Screenshot(
            format="png",
            width=WIDTH,
            height=HEIGHT,
            data_b64=base64.b64encode(canary_image()).decode(),
        ),
        screen_width=WIDTH,
        screen_height=HEIGHT,
    )
    expected = expected_centre()
    try:
        result = await grounder.ground(request)
    except Exception as exc:
        outcome = CanaryResult(False, expected, None, f"canary failed: {exc}")
    else:
        if not result.ok or not result.found or result.x is None or result.y is None:
            reason = result.error.message if result.error else "no point"
            outcome = CanaryResult(
                False, expected, None, f"no answer ({reason}); raw={result.raw!r}"
            )
        else:
            x1, y1, x2, y2 = BUTTON
            hit = x1 <= result.x <= x2 and y1 <= result.y <= y2
            answered = (result.x, result.y)
            detail = f"answered {answered} for a button centred at {expected}; raw={result.raw!r}"
            outcome = CanaryResult(hit, expected, answered, detail)
    if outcome.agrees:
        log.info("canary: %s and its format agree: %s", grounder.method, outcome.detail)
    else:
        log.warning(
            "canary: %s does NOT agree with the configured format (check GROUNDER_FAMILY and "
            "the min/max pixels): %s",
            grounder.method,
            outcome.detail,
        )
    return outcome
