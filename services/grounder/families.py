"""Grounding model families: prompt, message order, output syntax, coordinates.

Each family is configured explicitly (``GROUNDER_FAMILY``); the grounder
never guesses a coordinate system from an answer. A family knows:

* how to size the image it sends (``target_size``): absolute-pixel families
  get the Qwen ``smart_resize`` grid so that the pixels the model answers in
  are exactly the pixels of the image we sent;
* the model's own prompt wording and message order (``messages``);
* how to read its answer (``parse``), including the forms servers mangle:
  special tokens such as ``<|box_start|>`` stripped, JSON inside a fence or a
  ``<tool_call>`` block, trailing prose;
* its coordinate space (``space``): ``rel1000`` (0-1000), ``rel1`` (0-1) or
  ``abs`` (pixels of the image sent).

``parse`` returns coordinates in the model's own space. The one conversion
to screen pixels is :func:`to_screen`.

A refusal (``[-1,-1]``, negative coordinates, "not found", an answer without
coordinates) parses to :class:`Refusal`, never to a point: the grounder then
answers ``ok=True, found=False`` with ``error.code = not_found`` and the
model's answer in ``raw``. ``ok=False`` is kept for failures of the service
or the model endpoint, so a requester can tell "the element is not on the
screen" from "grounding is broken".
"""

from __future__ import annotations

import json
import math
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from selfagent.modeltext import JSONProblem, json_values, loads_lenient

from .resize import QWEN2_FACTOR, QWEN3_FACTOR, fit_within, smart_resize

CoordSpace = Literal["rel1000", "rel1", "abs"]
Box = tuple[float, float, float, float]

QWEN_MIN_PIXELS = 4 * 28 * 28
QWEN_MAX_PIXELS = 16384 * 28 * 28


@dataclass(frozen=True)
class Point:
    """A point (and the box it came from, if any) in the model's coordinate space."""

    x: float
    y: float
    box: Box | None = None


@dataclass(frozen=True)
class Refusal:
    reason: str


ParseResult = Point | Refusal
ChatMessage = dict[str, Any]


# --- text helpers shared by the parsers -------------------------------------

_SPECIAL_TOKEN = re.compile(r"<\|[a-z_]+\|>")
_NUM = r"-?\d+(?:\.\d+)?"
_PAIR = re.compile(rf"[\(\[]\s*({_NUM})\s*,\s*({_NUM})\s*[\)\]]")
_QUAD = re.compile(rf"[\(\[]\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*[\)\]]")
_REFUSAL_WORDS = re.compile(
    r"not\s+found|no\s+such|cannot\s+(?:find|locate)|can't\s+(?:find|locate)|"
    r"unable\s+to\s+(?:find|locate)|does\s+not\s+(?:exist|appear)|not\s+(?:visible|present)",
    re.I,
)


def strip_special_tokens(text: str) -> str:
    return _SPECIAL_TOKEN.sub("", text)


def no_coordinates(text: str) -> Refusal:
    if _REFUSAL_WORDS.search(text):
        return Refusal(f"model declined: {text.strip()[:200]}")
    return Refusal(f"no coordinates in the answer: {text.strip()[:200]!r}")


def _point(x: float, y: float, box: Box | None = None) -> ParseResult:
    values = (x, y, *(box or ()))
    if any(not math.isfinite(v) for v in values):
        return Refusal("non-finite coordinates")
    if any(v < 0 for v in values):
        return Refusal(f"model answered negative coordinates ({x:g}, {y:g}): not found")
    return Point(x, y, box)


def from_box(x1: float, y1: float, x2: float, y2: float) -> ParseResult:
    left, right = sorted((x1, x2))
    top, bottom = sorted((y1, y2))
    return _point((left + right) / 2, (top + bottom) / 2, (left, top, right, bottom))


def first_tuple(text: str) -> ParseResult | None:
    """The first ``(x1,y1,x2,y2)`` or ``(x,y)``/``[x,y]``; two pairs in a row are a box."""
    quad = _QUAD.search(text)
    pairs = list(_PAIR.finditer(text))
    if quad and (not pairs or quad.start() <= pairs[0].start()):
        return from_box(*(float(g) for g in quad.groups()))
    if not pairs:
        return None
    first = pairs[0]
    if len(pairs) > 1:
        between = text[first.end() : pairs[1].start()]
        # OS-Atlas style "(x1,y1),(x2,y2)": the second pair closes the box.
        if re.fullmatch(r"\s*,?\s*", between):
            x1, y1 = (float(g) for g in first.groups())
            x2, y2 = (float(g) for g in pairs[1].groups())
            return from_box(x1, y1, x2, y2)
    return _point(float(first.group(1)), float(first.group(2)))


def _numbers(value: Any, count: int) -> list[float] | None:
    if (
        isinstance(value, list | tuple)
        and len(value) == count
        and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
    ):
        return [float(v) for v in value]
    if isinstance(value, str):
        found = re.findall(_NUM, value)
        if len(found) == count:
            return [float(v) for v in found]
    return None


_BOX_KEYS = ("bbox_2d", "bbox", "box", "bounding_box")
_POINT_KEYS = ("point_2d", "point", "coordinate", "coordinates", "position", "click_point")


def point_from_json(value: Any) -> ParseResult | None:
    """Find a box or point anywhere in a decoded JSON value."""
    if isinstance(value, dict):
        if value.get("found") is False:
            return Refusal(str(value.get("reason") or "model answered found=false"))
        for key in ("arguments", "parameters"):
            inner = value.get(key)
            if isinstance(inner, str):
                try:
                    inner = loads_lenient(inner)
                except JSONProblem:
                    inner = None
            if inner is not None:
                found = point_from_json(inner)
                if found is not None:
                    return found
        for key in _BOX_KEYS:
            nums = _numbers(value.get(key), 4)
            if nums:
                return from_box(*nums)
        for key in _POINT_KEYS:
            nums = _numbers(value.get(key), 2)
            if nums:
                return _point(nums[0], nums[1])
            nums = _numbers(value.get(key), 4)
            if nums:
                return from_box(*nums)
        x, y = value.get("x"), value.get("y")
        if isinstance(x, int | float) and isinstance(y, int | float):
            return _point(float(x), float(y))
        for inner in value.values():
            if isinstance(inner, dict | list):
                found = point_from_json(inner)
                if found is not None:
                    return found
        return None
    if isinstance(value, list):
        nums = _numbers(value, 4)
        if nums:
            return from_box(*nums)
        nums = _numbers(value, 2)
        if nums:
            return _point(nums[0], nums[1])
        for item in value:
            found = point_from_json(item)
            if found is not None:
                return found
    return None


def parse_json_answer(text: str) -> ParseResult | None:
    """The first box or point in JSON the answer holds (tool call, fence, or bare)."""
    for value in json_values(text):
        found = point_from_json(value)
        if found is not None:
            return found
    return None


def action_part(text: str) -> str:
    """The text after the last ``Action:`` (UI-TARS writes a Thought first)."""
    idx = text.rfind("Action:")
    return text[idx + len("Action:") :] if idx >= 0 else text


def user(*content: ChatMessage) -> ChatMessage:
    return {"role": "user", "content": list(content)}


def system(text: str) -> ChatMessage:
    return {"role": "system", "content": text}


def text_part(text: str) -> ChatMessage:
    return {"type": "text", "text": text}


def image_part(url: str) -> ChatMessage:
    return {"type": "image_url", "image_url": {"url": url}}


# --- the families -----------------------------------------------------------


class Family(ABC):
    name: ClassVar[str]
    # Substrings of a model name that select this family for GROUNDER_FAMILY=auto.
    model_hints: ClassVar[tuple[str, ...]] = ()
    space: ClassVar[CoordSpace]
    factor: ClassVar[int] = QWEN2_FACTOR
    min_pixels: ClassVar[int] = QWEN_MIN_PIXELS
    max_pixels: ClassVar[int] = QWEN_MAX_PIXELS
    max_tokens: ClassVar[int] = 128

    def __init__(self, min_pixels: int | None = None, max_pixels: int | None = None) -> None:
        self.min_px = min_pixels or self.min_pixels
        self.max_px = max_pixels or self.max_pixels

    def target_size(self, width: int, height: int) -> tuple[int, int]:
        """``(width, height)`` of the image to send for a screenshot of this size."""
        if self.space == "abs":
            h, w = smart_resize(height, width, self.factor, self.min_px, self.max_px)
            return w, h
        # Relative answers do not depend on the exact size: only cap the cost.
        return fit_within(width, height, self.max_px)

    @abstractmethod
    def messages(
        self, description: str, image_url: str, width: int, height: int
    ) -> list[ChatMessage]:
        """The chat messages for the model, for an image of ``width`` x ``height``."""

    @abstractmethod
    def parse_answer(self, text: str) -> ParseResult | None:
        """Read the answer (special tokens already stripped); None if no coordinates."""

    def parse(self, text: str) -> ParseResult:
        cleaned = strip_special_tokens(text or "")
        found = self.parse_answer(cleaned)
        return found if found is not None else no_coordinates(cleaned)


class OSAtlas(Family):
    name = "os-atlas"
    model_hints = ("os-atlas",)
    space = "rel1000"

    def messages(
        self, description: str, image_url: str, width: int, height: int
    ) -> list[ChatMessage]:
        prompt = (
            "In this UI screenshot, what is the position of the element corresponding "
            f'to the command "{description}" (with bbox)?'
        )
        return [user(image_part(image_url), text_part(prompt))]

    def parse_answer(self, text: str) -> ParseResult | None:
        return first_tuple(text)


_UI_TARS_HEADER = (
    "You are a GUI agent. You are given a task and your action history, with screenshots. "
    "You need to perform the next action to complete the task.\n\n"
    "## Output Format\n\nAction: ...\n\n\n"
)


class UITars10(Family):
    name = "ui-tars-1.0"
    model_hints = ("ui-tars",)
    space = "rel1000"

    def messages(
        self, description: str, image_url: str, width: int, height: int
    ) -> list[ChatMessage]:
        prompt = (
            _UI_TARS_HEADER
            + "## Action Space\nclick(start_box='<|box_start|>(x1,y1)<|box_end|>')\n\n"
            + f"## User Instruction\n{description}"
        )
        return [user(text_part(prompt), image_part(image_url))]

    def parse_answer(self, text: str) -> ParseResult | None:
        return first_tuple(action_part(text))


_TARS_POINT = re.compile(rf"<point>\s*({_NUM})[\s,]+({_NUM})\s*</point>")
_TARS_BBOX = re.compile(rf"<bbox>\s*({_NUM})[\s,]+({_NUM})[\s,]+({_NUM})[\s,]+({_NUM})\s*</bbox>")


class UITars15(Family):
    name = "ui-tars-1.5"
    model_hints = ("ui-tars-1.5", "ui-tars-1_5", "ui-tars-15", "ui-tars-2")
    space = "abs"
    min_pixels = 100 * 28 * 28

    def messages(
        self, description: str, image_url: str, width: int, height: int
    ) -> list[ChatMessage]:
        prompt = (
            _UI_TARS_HEADER
            + "## Action Space\nclick(point='<point>x1 y1</point>')\n\n"
            + f"## User Instruction\n{description}"
        )
        return [user(text_part(prompt), image_part(image_url))]

    def parse_answer(self, text: str) -> ParseResult | None:
        action = action_part(text)
        if m := _TARS_POINT.search(action):
            return _point(float(m.group(1)), float(m.group(2)))
        if m := _TARS_BBOX.search(action):
            return from_box(*(float(g) for g in m.groups()))
        # The 1.0 syntax (start_box='(x,y)') is still emitted by 1.5 checkpoints.
        return first_tuple(action)


class Qwen25VL(Family):
    name = "qwen2.5-vl"
    model_hints: ClassVar[tuple[str, ...]] = ("qwen2.5-vl", "qwen2_5-vl", "qwen2.5vl", "qwen2-vl")
    space: ClassVar[CoordSpace] = "abs"

    def messages(
        self, description: str, image_url: str, width: int, height: int
    ) -> list[ChatMessage]:
        prompt = (
            f"Locate {description} in the image, output its bbox coordinates using JSON format."
        )
        return [user(image_part(image_url), text_part(prompt))]

    def parse_answer(self, text: str) -> ParseResult | None:
        return parse_json_answer(text) or first_tuple(text)


class Qwen3VL(Qwen25VL):
    name = "qwen3-vl"
    model_hints: ClassVar[tuple[str, ...]] = ("qwen3-vl", "qwen3vl", "qwen3_vl")
    space: ClassVar[CoordSpace] = "rel1000"
    factor = QWEN3_FACTOR
    max_pixels = 16384 * 32 * 32


class UGround(Family):
    name = "uground"
    model_hints = ("uground",)
    space = "rel1000"

    def messages(
        self, description: str, image_url: str, width: int, height: int
    ) -> list[ChatMessage]:
        prompt = (
            "Your task is to help the user identify the precise coordinates (x, y) of a "
            "specific area/element/object on the screen based on a description.\n\n"
            "- Your response should aim to point to the center or a representative point "
            "within the described area/element/object as accurately as possible.\n"
            "- If the description is unclear or ambiguous, infer the most relevant area or "
            "element based on its likely context or purpose.\n"
            "- Your answer should be a single string (x, y) corresponding to the point of "
            "the interest.\n\n"
            f"Description: {description}\n\nAnswer:"
        )
        return [user(image_part(image_url), text_part(prompt))]

    def parse_answer(self, text: str) -> ParseResult | None:
        return first_tuple(text)


class ShowUI(Family):
    name = "showui"
    model_hints = ("showui",)
    space = "rel1"
    min_pixels = 256 * 28 * 28
    max_pixels = 1344 * 28 * 28

    SYSTEM = (
        "Based on the screenshot of the page, I give a text description and you give its "
        "corresponding location. The coordinate represents a clickable location [x, y] for "
        "an element, which is a relative coordinate on the screenshot, scaled from 0 to 1."
    )

    def messages(
        self, description: str, image_url: str, width: int, height: int
    ) -> list[ChatMessage]:
        # ShowUI puts its instruction in the user turn, before the image.
        return [user(text_part(self.SYSTEM), image_part(image_url), text_part(description))]

    def parse_answer(self, text: str) -> ParseResult | None:
        return first_tuple(text)


class GTA1(Family):
    name = "gta1"
    model_hints = ("gta1",)
    space = "abs"

    def messages(
        self, description: str, image_url: str, width: int, height: int
    ) -> list[ChatMessage]:
        prompt = (
            "You are an expert UI element locator. Given a GUI image and a user's element "
            "description, provide the coordinates of the specified element as a single (x,y) "
            f"point. The image resolution is height {height} and width {width}. For elements "
            "with area, return the center point.\n\nOutput the coordinate pair exactly:\n(x,y)"
        )
        return [system(prompt), user(image_part(image_url), text_part(description))]

    def parse_answer(self, text: str) -> ParseResult | None:
        return first_tuple(text)


_HOLO_CLICK = re.compile(rf"click\s*\(\s*({_NUM})\s*,\s*({_NUM})\s*\)", re.I)


class Holo(Family):
    name = "holo"
    model_hints = ("holo1",)
    space = "abs"
    max_pixels = 1003520

    def messages(
        self, description: str, image_url: str, width: int, height: int
    ) -> list[ChatMessage]:
        prompt = (
            "Localize an element on the GUI image according to my instructions and output a "
            "click position as Click(x, y) with x num pixels from the left edge and y num "
            f"pixels from the top edge.\nInstruction: {description}"
        )
        return [user(image_part(image_url), text_part(prompt))]

    def parse_answer(self, text: str) -> ParseResult | None:
        if m := _HOLO_CLICK.search(text):
            return _point(float(m.group(1)), float(m.group(2)))
        return parse_json_answer(text)


def _computer_use_system(width: int, height: int) -> str:
    tool = {
        "type": "function",
        "function": {
            "name": "computer_use",
            "description": (
                "Use a mouse and keyboard to interact with a computer, and take screenshots.\n"
                f"* The screen's resolution is {width}x{height}.\n"
                "* Whenever you intend to move the cursor to click on an element, consult the "
                "screenshot to determine the coordinates of the element before moving the cursor."
            ),
            "parameters": {
                "type": "object",
                "properties": {
                    "action": {"type": "string", "enum": ["left_click", "mouse_move"]},
                    "coordinate": {
                        "type": "array",
                        "description": "(x, y): pixels from the left and top edges.",
                    },
                },
                "required": ["action"],
            },
        },
    }
    return (
        "You are a helpful assistant.\n\n# Tools\n\nYou may call one or more functions to "
        "assist with the user query.\n\nYou are provided with function signatures within "
        f"<tools></tools> XML tags:\n<tools>\n{json.dumps(tool)}\n</tools>\n\n"
        "For each function call, return a json object with function name and arguments within "
        '<tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, '
        '"arguments": <args-json-object>}\n</tool_call>'
    )


class Jedi(Family):
    name = "jedi"
    model_hints = ("jedi",)
    space = "abs"
    max_pixels = 2700 * 28 * 28

    def messages(
        self, description: str, image_url: str, width: int, height: int
    ) -> list[ChatMessage]:
        return [
            system(_computer_use_system(width, height)),
            user(image_part(image_url), text_part(description)),
        ]

    def parse_answer(self, text: str) -> ParseResult | None:
        return parse_json_answer(text) or first_tuple(text)


_PYAUTOGUI = re.compile(
    rf"pyautogui\.\w+\(\s*(?:x\s*=\s*)?({_NUM})\s*,\s*(?:y\s*=\s*)?({_NUM})", re.I
)


class OpenCUA(Family):
    name = "opencua"
    model_hints = ("opencua",)
    space = "abs"

    def messages(
        self, description: str, image_url: str, width: int, height: int
    ) -> list[ChatMessage]:
        prompt = (
            "You are a GUI agent. You are given a task and a screenshot of the screen. "
            "You need to perform a series of pyautogui actions to complete the task."
        )
        return [system(prompt), user(image_part(image_url), text_part(description))]

    def parse_answer(self, text: str) -> ParseResult | None:
        if m := _PYAUTOGUI.search(text):
            return _point(float(m.group(1)), float(m.group(2)))
        return None


class GenericJSON(Family):
    """Any instruction-following VLM: told its image size, asked for JSON pixels."""

    name = "json"
    space = "abs"
    max_pixels = 1280 * 800

    def target_size(self, width: int, height: int) -> tuple[int, int]:
        return fit_within(width, height, self.max_px)

    def messages(
        self, description: str, image_url: str, width: int, height: int
    ) -> list[ChatMessage]:
        prompt = (
            f"You locate elements on a screenshot that is {width} pixels wide and {height} "
            "pixels high. Answer with JSON only: "
            '{"x": <int>, "y": <int>} for the centre of the element in pixels of this image '
            '(0,0 is the top-left corner), or {"found": false, "reason": "..."} if it is not '
            "visible."
        )
        return [system(prompt), user(image_part(image_url), text_part(f"Element: {description}"))]

    def parse_answer(self, text: str) -> ParseResult | None:
        return parse_json_answer(text)


# Order matters for GROUNDER_FAMILY=auto: the more specific hint first.
FAMILIES: tuple[type[Family], ...] = (
    OSAtlas,
    UITars15,
    UITars10,
    Qwen3VL,
    Qwen25VL,
    UGround,
    ShowUI,
    GTA1,
    Holo,
    Jedi,
    OpenCUA,
    GenericJSON,
)
FAMILY_NAMES: tuple[str, ...] = tuple(f.name for f in FAMILIES)


def family_for_model(model: str) -> type[Family]:
    """The family a model name points at; the generic JSON format for unknown names."""
    lowered = model.lower()
    for family in FAMILIES:
        if any(hint in lowered for hint in family.model_hints):
            return family
    return GenericJSON


def get_family(
    name: str, model: str = "", min_pixels: int | None = None, max_pixels: int | None = None
) -> Family:
    if name == "auto":
        return family_for_model(model)(min_pixels, max_pixels)
    for family in FAMILIES:
        if family.name == name:
            return family(min_pixels, max_pixels)
    raise ValueError(f"unknown grounding family {name!r}; one of {', '.join(FAMILY_NAMES)}")


@dataclass(frozen=True)
class ScreenPoint:
    x: int
    y: int
    box: tuple[int, int, int, int] | None


def to_screen(
    point: Point,
    space: CoordSpace,
    image_size: tuple[int, int],
    screen_size: tuple[int, int],
) -> ScreenPoint:
    """The one place model coordinates become screen pixels (clamped to the screen).

    ``image_size`` is the size of the image the model was sent; for ``abs``
    families that is the smart-resized size, so ``x * W / w'``.
    """
    screen_w, screen_h = screen_size
    if space == "rel1000":
        span_x, span_y = 1000.0, 1000.0
    elif space == "rel1":
        span_x, span_y = 1.0, 1.0
    else:
        span_x, span_y = float(image_size[0]), float(image_size[1])

    def sx(value: float) -> int:
        return min(max(round(value * screen_w / span_x), 0), screen_w - 1)

    def sy(value: float) -> int:
        return min(max(round(value * screen_h / span_y), 0), screen_h - 1)

    box = None
    if point.box is not None:
        x1, y1, x2, y2 = point.box
        box = (sx(x1), sy(y1), sx(x2), sy(y2))
    return ScreenPoint(sx(point.x), sy(point.y), box)
