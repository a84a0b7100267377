"""Building our actions from what native models say: typing, keys, scrolling, points.

Shared by the native parsers so that one rule reads the same in every family:
text ending in a newline means type it, then press Enter; key names go through
the planner's one key-name table; scroll amounts become wheel notches.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Final

from selfagent.errors import ActionParseError
from selfagent.keys import split_chord
from selfagent.schemas import (
    ClickAction,
    DoneAction,
    DragAction,
    FailAction,
    KeyAction,
    MoveAction,
    Point,
    ScrollAction,
    TypeAction,
    WaitAction,
)
from selfagent.schemas.actions import Action, MouseButton, ScrollDirection

from ..parsing import normalize_keys

_NUMBER: Final = re.compile(r"-?\d+(?:\.\d+)?")
_TOKENS: Final = re.compile(r"<\|[a-z_]+\|>|</?point>|</?bbox>")
_SPACED_PLUS: Final = re.compile(r"\s*\+\s*(?=\S)")
MAX_NOTCHES: Final = 50
MAX_WAIT: Final = 60.0
# A scroll amount above this is read as pixels rather than wheel notches:
# models trained on pyautogui mostly say clicks (-5), but some say pixels (-500).
_NOTCH_LIMIT: Final = 25
_PIXELS_PER_NOTCH: Final = 100
# No coordinate, amount or duration a model means comes near this; past it a
# number only overflows (round(inf)) somewhere downstream.
_LARGEST: Final = 1_000_000.0


def coordinate(value: object, what: str) -> tuple[int, int]:
    """A point from ``(x,y)``, ``<point>x y</point>``, ``[x, y]`` or a box (its centre)."""
    numbers: list[float]
    if isinstance(value, list | tuple):
        numbers = [number(v, what) for v in value]
    elif isinstance(value, str):
        numbers = [_bounded(n, what) for n in _NUMBER.findall(_TOKENS.sub(" ", value))]
    else:
        raise ActionParseError(f"{what} must be a point (x, y), got {value!r}")
    if len(numbers) == 4:
        numbers = [(numbers[0] + numbers[2]) / 2, (numbers[1] + numbers[3]) / 2]
    if len(numbers) != 2:
        raise ActionParseError(f"{what} must be one point (x, y), got {value!r}")
    if any(n < 0 for n in numbers):
        raise ActionParseError(f"{what} has negative coordinates: {value!r}")
    return round(numbers[0]), round(numbers[1])


def number(value: object, what: str) -> float:
    if isinstance(value, bool):
        raise ActionParseError(f"{what} must be a number, got {value!r}")
    if isinstance(value, int | float):
        return _bounded(value, what)
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        return _bounded(value.strip(), what)
    raise ActionParseError(f"{what} must be a number, got {value!r}")


def _bounded(value: str | float, what: str) -> float:
    # An int is compared as an int: float() of a huge one overflows.
    if isinstance(value, int):
        if abs(value) <= _LARGEST:
            return float(value)
    elif math.isfinite(as_float := float(value)) and abs(as_float) <= _LARGEST:
        return as_float
    raise ActionParseError(f"{what} must be a number between -{_LARGEST:.0f} and {_LARGEST:.0f}")


def click(point: tuple[int, int], button: MouseButton = "left", clicks: int = 1) -> ClickAction:
    return ClickAction(x=point[0], y=point[1], button=button, clicks=clicks)


def move(point: tuple[int, int]) -> MoveAction:
    return MoveAction(x=point[0], y=point[1])


def drag(start: tuple[int, int], end: tuple[int, int]) -> DragAction:
    return DragAction(path=[Point(x=start[0], y=start[1]), Point(x=end[0], y=end[1])])


def typing(text: str) -> list[Action]:
    """Type ``text``; a trailing newline (real, or the two characters ``\\n``) means Enter.

    Enter goes as its own key action, so the actuator waits for what it
    starts (a command running, a form submitting) before the next screenshot.
    """
    submit = False
    while True:
        if text.endswith("\n"):
            text, submit = text[:-1], True
        elif text.endswith("\\n"):
            text, submit = text[:-2], True
        else:
            break
    actions: list[Action] = []
    if text:
        actions.append(TypeAction(text=text))
    if submit:
        actions.append(KeyAction(keys="Return"))
    if not actions:
        raise ActionParseError("type needs some text to type")
    return actions


def hotkey(keys: str | Sequence[str]) -> KeyAction:
    """One chord: ``'ctrl c'`` (UI-TARS, space-separated), ``'ctrl+c'`` or ``['ctrl', 'c']``."""
    if isinstance(keys, str):
        # Spaces separate keys, and so does a "+" with a key after it ("ctrl + c");
        # a "+" with none after it is the plus key ("ctrl +", "ctrl++"): split_chord
        # reads each token that way.
        joined = _SPACED_PLUS.sub("+", keys.strip())
        parts = [name for token in joined.split() for name in split_chord(token)]
    else:
        parts = [str(part).strip() for part in keys if str(part).strip()]
    if not parts:
        raise ActionParseError("hotkey needs at least one key, e.g. hotkey(key='ctrl c')")
    return KeyAction(keys=normalize_keys(parts))


def presses(keys: Sequence[str], times: int = 1) -> KeyAction:
    """Keys pressed one after another (a sequence, not a chord)."""
    names = [normalize_keys([key]) for key in keys if str(key).strip()]
    if not names:
        raise ActionParseError("press needs a key name, e.g. 'enter'")
    return KeyAction(keys=" ".join(names * max(1, min(times, 20))))


def notches(amount: float) -> int:
    value = abs(amount)
    if value > _NOTCH_LIMIT:
        value /= _PIXELS_PER_NOTCH
    return max(1, min(MAX_NOTCHES, round(value)))


def scroll(direction: str, amount: int = 5, point: tuple[int, int] | None = None) -> ScrollAction:
    direction = direction.strip().lower()
    if direction not in ("up", "down", "left", "right"):
        raise ActionParseError(
            f"scroll direction must be up, down, left or right, got {direction!r}"
        )
    where: ScrollDirection = direction  # type: ignore[assignment]
    if point is None:
        return ScrollAction(direction=where, amount=amount)
    return ScrollAction(direction=where, amount=amount, x=point[0], y=point[1])


def wait(seconds: float) -> WaitAction:
    return WaitAction(seconds=max(0.0, min(MAX_WAIT, seconds)))


def done(message: str) -> DoneAction:
    return DoneAction(message=message.strip())


def fail(reason: str) -> FailAction:
    return FailAction(reason=reason.strip() or "The model reported that the task failed.")
