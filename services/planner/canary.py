"""A start-up self-check of the planner's model: family, coordinates, images.

A wrong ``PLANNER_FAMILY`` does not crash anything: the planner finds no
action in every reply (UI-TARS text read as JSON), or clicks in the wrong
place (0-1000 read as pixels). An endpoint that cannot take images does not
always say so either: some servers drop them silently and the model acts
blind. So at start the planner sends one request, rendered by its family,
with a small synthetic screenshot holding one button, and logs in plain words
what it learns:

* the model name suggests another family than the one configured;
* the endpoint rejects images, or counted the screenshot as text, or seems
  to have dropped it (judged from the reply's ``usage``);
* the reply does not parse in the configured family but does in another;
* the reply parses, but its click misses the button (a coordinate system
  mix-up).

The result is only logged, never fatal: the endpoint may still be loading.
It runs in the background, so the planner takes tasks meanwhile.
"""

from __future__ import annotations

import base64
import io
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from PIL import Image, ImageDraw, ImageFont

from selfagent.errors import ActionParseError, LLMError
from selfagent.llm import LLMClient, LLMReply
from selfagent.schemas import ClickAction, Screenshot

from .config import Settings
from .coords import CoordinateMap
from .families import (
    NATIVE_FAMILIES,
    Family,
    ParseContext,
    ToolsFamily,
    View,
    family_for_model,
    for_settings,
    sampling_for,
)
from .families.images import fit
from .vision import NO_IMAGES, image_sizes, images_rejected, text_chars, vision_tokens

log = logging.getLogger(__name__)

WIDTH, HEIGHT = 1280, 720
# Off-centre on purpose, so that a swapped axis or a wrong scale misses it.
BUTTON: Final = (852, 452, 1012, 500)
TASK: Final = 'Click the blue "OK" button. Click it even if the dialog looks unimportant.'

# Lower bounds for what a vision model's usage shows: text at 5 characters a
# token, an image at half of what Qwen, GPT-4o or Claude spend on it.
_TEXT_CHARS_PER_TOKEN_MAX: Final = 5
_IMAGE_PIXELS_PER_TOKEN_MIN: Final = 1500


@dataclass
class CanaryResult:
    agrees: bool
    takes_images: bool | None
    detail: str
    warnings: list[str] = field(default_factory=list)


def canary_screenshot() -> Screenshot:
    image = Image.new("RGB", (WIDTH, HEIGHT), (58, 110, 165))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 0, WIDTH, 28), fill=(40, 40, 40))
    draw.text((12, 6), "Applications", fill=(230, 230, 230), font=ImageFont.load_default(size=14))
    draw.rectangle((0, HEIGHT - 44, WIDTH, HEIGHT), fill=(40, 40, 40))
    draw.rectangle((320, 220, 1040, 520), fill=(246, 246, 246), outline=(160, 160, 160))
    draw.rectangle((320, 220, 1040, 252), fill=(220, 220, 220))
    draw.text((336, 228), "Notice", fill=(30, 30, 30), font=ImageFont.load_default(size=16))
    draw.text(
        (352, 300),
        "The settings were saved.",
        fill=(20, 20, 20),
        font=ImageFont.load_default(size=22),
    )
    draw.rounded_rectangle(BUTTON, radius=6, fill=(37, 99, 235))
    x1, y1, x2, y2 = BUTTON
    draw.text(
        ((x1 + x2) // 2, (y1 + y2) // 2),
        "OK",
        fill="white",
        font=ImageFont.load_default(size=20),
        anchor="mm",
    )
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return Screenshot(
        format="jpeg",
        width=WIDTH,
        height=HEIGHT,
        data_b64=base64.b64encode(buffer.getvalue()).decode(),
    )


def name_warning(settings: Settings, family: Family) -> str | None:
    """A warning when LLM_MODEL names a native family other than the configured one."""
    named = family_for_model(settings.llm_model)
    if settings.family == "auto" or named is ToolsFamily or named.name == family.name:
        return None
    return (
        f"LLM_MODEL {settings.llm_model!r} looks like {named.title} but "
        f"PLANNER_FAMILY={settings.family} ({family.title}): set PLANNER_FAMILY={named.name} "
        "or auto"
    )


def images_seen(reply: LLMReply, messages: Sequence[Mapping[str, Any]]) -> bool | None:
    """From the reply's usage: True seen, False dropped or read as text, None unknown."""
    if reply.prompt_tokens <= 0:
        return None
    text = text_chars(messages)
    sizes = image_sizes(messages)
    pixels = sum(w * h for w, h in sizes)
    floor = text / _TEXT_CHARS_PER_TOKEN_MAX + pixels / _IMAGE_PIXELS_PER_TOKEN_MIN
    if reply.prompt_tokens < floor:
        return False
    # Read as text, a base64 screenshot costs several times what any vision model spends.
    ceiling = text + 2 * vision_tokens(sizes)
    return reply.prompt_tokens <= ceiling


def _click_on_button(
    family: Family, reply: LLMReply, shot: Screenshot, settings: Settings
) -> tuple[bool, str]:
    parsed = family.parse(reply.content, reply.tool_calls, ParseContext(shot.width, shot.height))
    clicks = [a for a in parsed.actions if isinstance(a, ClickAction) and a.x is not None]
    if not clicks:
        kinds = ", ".join(a.action for a in parsed.actions) or "no action"
        return False, f"it answered in the {family.name} format but did not click ({kinds})"
    click = clicks[0]
    assert click.x is not None and click.y is not None
    coords = CoordinateMap((shot.width, shot.height), (WIDTH, HEIGHT), family.space)
    x, y = coords.point(click.x, click.y)
    x1, y1, x2, y2 = BUTTON
    if x1 <= x <= x2 and y1 <= y <= y2:
        return True, f"its click lands on the button at ({x}, {y})"
    return False, (
        f"its click lands at ({x}, {y}) (model said {click.x}, {click.y} in "
        f"{family.space} of a {shot.width}x{shot.height} image), off the button at "
        f"{BUTTON}: the coordinate system may be wrong (e.g. uitars vs uitars-1.0)"
    )


def _other_format(family: Family, reply: LLMReply, shot: Screenshot) -> Family | None:
    context = ParseContext(shot.width, shot.height)
    others: list[Family] = [ToolsFamily(), *(f() for f in NATIVE_FAMILIES)]
    for other in others:
        if other.name == family.name:
            continue
        try:
            parsed = other.parse(reply.content, reply.tool_calls, context)
        except ActionParseError:
            continue
        if parsed.actions:
            return other
    return None


async def run_canary(settings: Settings, llm: LLMClient) -> CanaryResult:
    """Send the canary request and log what it shows; never raises."""
    family = for_settings(settings)
    warnings: list[str] = []
    named = name_warning(settings, family)
    if named:
        warnings.append(named)
    try:
        result = await _probe(settings, llm, family, warnings)
    except Exception as exc:
        result = CanaryResult(False, None, f"the canary itself failed: {exc}", warnings)
    for warning in result.warnings:
        log.warning("canary: %s", warning)
    if result.agrees:
        log.info(
            "canary: %s (%s) and the model agree: %s", family.name, family.title, result.detail
        )
    else:
        log.warning(
            "canary: %s (%s) does NOT agree with the model at %s: %s",
            family.name,
            family.title,
            settings.llm_model,
            result.detail,
        )
    return result


async def _probe(
    settings: Settings, llm: LLMClient, family: Family, warnings: list[str]
) -> CanaryResult:
    raw = canary_screenshot()
    shot = fit(raw, family.image_size(raw.width, raw.height), 85)
    messages = family.render(
        View(task=TASK, turns=[], screenshot=shot.data_uri(), width=shot.width, height=shot.height)
    )
    tools = family.tools() if family.sends_tools and settings.native_tools else None
    try:
        reply = await llm.complete(
            messages,
            tools=tools,
            deadline=settings.llm_timeout * 2,
            sampling=sampling_for(family, settings),
        )
    except LLMError as exc:
        if images_rejected(str(exc), messages):
            warnings.append(NO_IMAGES)
            return CanaryResult(False, False, NO_IMAGES, warnings)
        return CanaryResult(False, None, f"no answer from the model endpoint: {exc}", warnings)
    seen = images_seen(reply, messages)
    if seen is False:
        warnings.append(
            f"{NO_IMAGES}: the reply counted {reply.prompt_tokens} prompt tokens, which does "
            "not fit a screenshot seen as an image (dropped, or read as text)"
        )
    try:
        agrees, detail = _click_on_button(family, reply, shot, settings)
    except ActionParseError as exc:
        other = _other_format(family, reply, shot)
        if other is not None:
            detail = (
                f"the model answers like {other.title} but PLANNER_FAMILY={settings.family} "
                f"reads it as {family.title}: set PLANNER_FAMILY={other.name}"
            )
        else:
            detail = f"its answer fits no family ({exc}): {(reply.content or '')[:300]!r}"
        return CanaryResult(False, seen, detail, warnings)
    return CanaryResult(agrees, seen, detail, warnings)
