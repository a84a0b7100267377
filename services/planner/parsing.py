"""Turn whatever the model replied into one validated :data:`Action`.

Models and servers disagree on how a tool call comes back, so the reply is
read in this order, the first hit winning:

1. native ``tool_calls`` (only the first is used: the planner runs one action
   per step and re-plans from the next screenshot);
2. a ``<tool_call>...</tool_call>`` block in the text (Qwen/Hermes templates,
   or vLLM started with the wrong ``--tool-call-parser``), including the
   ``<function=...><parameter=...>`` form;
3. a fenced ```json block;
4. the first balanced ``{...}`` that looks like an action (brace matching
   skips braces inside strings).

The object found may be wrapped (``{"name": "computer", "arguments": {...}}``,
``parameters``, OpenAI's ``{"type": "function", "function": ...}``, Anthropic's
``input``) or bare, and may use the Anthropic ``computer`` (20250124) or the
OpenAI ``computer_use_preview`` vocabulary. Everything is mapped onto the one
internal action space and validated there.

Failures raise :class:`ActionParseError`, whose message is written for the
model: the planner sends it back verbatim so the next attempt can fix it.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol

from pydantic import TypeAdapter, ValidationError

from selfagent.errors import ActionParseError
from selfagent.keys import canonical, is_modifier, split_chord
from selfagent.llm import ToolCall
from selfagent.modeltext import (
    BrokenJSON,
    FunctionCall,
    JSONProblem,
    complete_truncated,
    fenced_blocks,
    function_calls,
    loads_lenient,
    scan_json,
    tool_call_blocks,
)
from selfagent.schemas import Action

from .tools import COMPUTER_TOOL_NAME, MODEL_ACTION_NAMES

__all__ = [
    "PIXELS_PER_SCROLL_NOTCH",
    "ActionParseError",
    "ParsedReply",
    "ReplySource",
    "ToolCall",
    "ToolCallLike",
    "normalize_keys",
    "parse_action",
    "parse_reply",
]

PIXELS_PER_SCROLL_NOTCH: Final = 100
"""OpenAI ``computer_use_preview`` scrolls by pixels; the actuator by wheel notches.

One notch of a mouse wheel moves a browser page about 100 px (3 lines), so
``scroll_y=300`` becomes 3 notches down. Any non-zero distance is at least one
notch, and at most 50 (the action schema's limit).
"""

_MAX_NOTCHES: Final = 50
_MAX_WAIT: Final = 60.0
_MAX_TEXT_SCAN: Final = 200_000

ReplySource = Literal["tool_call", "tool_call_tag", "function_tag", "json_fence", "json_object"]

_ACTION_ADAPTER: Final[TypeAdapter[Action]] = TypeAdapter(Action)

_VALID_ACTIONS: Final = ", ".join(MODEL_ACTION_NAMES)
_EXAMPLE_CALL: Final = (
    f'<tool_call>{{"name": "{COMPUTER_TOOL_NAME}", "arguments": '
    '{"action": "click", "target": "the OK button"}}</tool_call>'
)
_NO_ACTION: Final = (
    f"No action found: reply with one tool call to `{COMPUTER_TOOL_NAME}`, "
    f"or write it as text like {_EXAMPLE_CALL}."
)


class ToolCallLike(Protocol):
    """A native tool call as the chat-completions API returns it."""

    @property
    def name(self) -> str: ...

    @property
    def arguments(self) -> str: ...


@dataclass(frozen=True, slots=True)
class ParsedReply:
    """One action, plus the text the model wrote around it."""

    action: Action
    thought: str
    source: ReplySource


# --------------------------------------------------------------------------- entry points


def parse_reply(content: str | None, tool_calls: Sequence[ToolCallLike] = ()) -> ParsedReply:
    """Extract the one action from a model reply.

    Raises:
        ActionParseError: no action, malformed JSON, an unknown action or
            invalid arguments; the message tells the model what to fix.
    """
    text = (content or "")[:_MAX_TEXT_SCAN]
    if tool_calls:
        call = tool_calls[0]
        if not _is_computer_tool(call.name) and _squash(call.name) not in _ALIASES:
            raise ActionParseError(
                f"Unknown tool '{call.name}': call the `{COMPUTER_TOOL_NAME}` tool with one "
                f"of these actions: {_VALID_ACTIONS}."
            )
        arguments = _load_arguments(call.name, call.arguments)
        action, extra_thought = _convert({"name": call.name, "arguments": arguments})
        return ParsedReply(action, _join_thought(_clean_text(text), extra_thought), "tool_call")

    if not text.strip():
        raise ActionParseError(_NO_ACTION)
    located = _locate(text)
    if located is None:
        raise ActionParseError(_NO_ACTION, raw=text)
    source, start, end, payload = located
    action, extra_thought = _convert(payload)
    thought = _clean_text(text[:start] + "\n" + text[end:])
    return ParsedReply(action, _join_thought(thought, extra_thought), source)


def parse_action(payload: Mapping[str, Any]) -> Action:
    """Map one already-decoded action object (any supported vocabulary) to an Action.

    Raises:
        ActionParseError: as :func:`parse_reply`.
    """
    return _convert(dict(payload))[0]


# --------------------------------------------------------------------------- finding JSON

_ACTIONISH_KEYS: Final = frozenset(
    {"action", "name", "function", "type", "arguments", "parameters", "input", "tool"}
)


def _locate(text: str) -> tuple[ReplySource, int, int, dict[str, Any]] | None:
    """The decoded action object and its span in ``text``, best source first.

    A source that is present but broken raises instead of falling through, so
    the model hears about its own mistake rather than a generic "no action".
    """
    tag = next(tool_call_blocks(text), None)
    if tag is not None:
        function = next(function_calls(tag.body), None)
        if function is not None:
            return "tool_call_tag", tag.start, tag.end, _function_payload(function)
        found = _first_object(tag.body, require_actionish=False)
        if found is None:
            raise ActionParseError(
                "The <tool_call> block holds no JSON object: write "
                f'<tool_call>{{"name": "{COMPUTER_TOOL_NAME}", "arguments": {{...}}}}</tool_call>.',
                raw=tag.body,
            )
        return "tool_call_tag", tag.start, tag.end, found[2]

    function = next(function_calls(text), None)
    if function is not None:
        return "function_tag", function.start, function.end, _function_payload(function)

    for fence in fenced_blocks(text):
        found = _first_object(fence.body, require_actionish=True)
        if found is not None:
            return "json_fence", fence.start, fence.end, found[2]

    found = _first_object(text, require_actionish=True)
    if found is not None:
        return "json_object", found[0], found[1], found[2]
    return None


def _function_payload(call: FunctionCall) -> dict[str, Any]:
    if call.parameters is not None:
        return call.payload()
    # Arguments written as one object: a broken one is explained like any other.
    found = _first_object(call.body, require_actionish=False)
    return {"name": call.name, "arguments": found[2] if found is not None else {}}


def _first_object(text: str, *, require_actionish: bool) -> tuple[int, int, dict[str, Any]] | None:
    """The first ``{...}`` in ``text`` that decodes to a dict (and looks like an action).

    An action-like object that is truncated or malformed is remembered, and
    raised as ActionParseError only if no later object decodes: a stray brace
    in prose must not hide the real action, but a broken action must not be
    reported as "no action" either.
    """
    problem: ActionParseError | None = None
    for found in scan_json(text):
        if isinstance(found, BrokenJSON):
            if _might_be_action(found.fragment):
                problem = problem or _problem(found.fragment, found.problem, found.detail)
            continue
        if found.repaired:
            # A reply cut short only by its closing brackets is still complete.
            fragment = text[found.start :]
            if not _might_be_action(fragment):
                continue
            if isinstance(found.value, dict):
                return found.start, found.end, found.value
            problem = problem or _problem(fragment, "truncated")
            continue
        value = found.value
        if isinstance(value, dict) and (not require_actionish or _ACTIONISH_KEYS & value.keys()):
            return found.start, found.end, value
    if problem is not None:
        raise problem
    return None


def _problem(
    fragment: str, kind: Literal["malformed", "mismatch", "truncated"], detail: str = ""
) -> ActionParseError:
    if kind == "malformed":
        message = f"The action JSON is malformed ({detail}): send one valid JSON object."
    elif kind == "mismatch":
        message = "The action JSON has mismatched brackets: send one valid JSON object."
    else:
        message = (
            "The action JSON is incomplete (it stops before its closing brace): "
            "send the whole action as one complete JSON object."
        )
    return ActionParseError(message, raw=fragment)


def _might_be_action(fragment: str) -> bool:
    head = fragment[:400]
    return any(f'"{key}"' in head or f"'{key}'" in head for key in _ACTIONISH_KEYS)


def _load_arguments(name: str, arguments: str | Mapping[str, Any] | None) -> dict[str, Any]:
    """Decode a native call's ``arguments`` (a JSON string by the API's contract)."""
    if isinstance(arguments, Mapping):
        return dict(arguments)
    text = (arguments or "").strip()
    if not text:
        return {}
    try:
        value = loads_lenient(text)
    except JSONProblem as problem:
        value = complete_truncated(text)
        if value is None:
            raise ActionParseError(
                f"The arguments of your `{name}` call are not valid JSON ({problem}): "
                "send them as one complete JSON object.",
                raw=text,
            ) from None
    if isinstance(value, str):
        # Some servers double-encode arguments.
        return _load_arguments(name, value)
    if not isinstance(value, dict):
        raise ActionParseError(
            f"The arguments of your `{name}` call must be a JSON object, "
            f"not a {type(value).__name__}.",
            raw=text,
        )
    return value


# --------------------------------------------------------------------------- unwrapping

_COMPUTER_TOOL_NAMES: Final = frozenset(
    {
        COMPUTER_TOOL_NAME,
        "computer_use",
        "computer_use_preview",
        "computer_20250124",
        "computer_20241022",
        "computer-use",
        "desktop",
        "tool",
        "action",
    }
)
_THOUGHT_KEYS: Final = ("thought", "thoughts", "reasoning", "thinking", "observation")
_WRAPPER_KEYS: Final = ("arguments", "parameters", "args", "input")


def _convert(payload: dict[str, Any]) -> tuple[Action, str]:
    """Unwrap, map the vocabulary, validate. Returns the action and any thought text."""
    thoughts: list[str] = []
    args = _unwrap(payload, thoughts)
    for key in _THOUGHT_KEYS:
        value = args.pop(key, None)
        if isinstance(value, str) and value.strip():
            thoughts.append(value.strip())
    raw_name = args.pop("action", None)
    if raw_name is None:
        raise ActionParseError(
            f'The call has no "action" field: add one of {_VALID_ACTIONS}.',
            raw=json.dumps(payload)[:2000],
        )
    if not isinstance(raw_name, str) or not raw_name.strip():
        raise ActionParseError(
            f'"action" must be the action name as a string, one of {_VALID_ACTIONS}.'
        )
    builder_name = _ALIASES.get(_squash(raw_name))
    if builder_name is None:
        raise ActionParseError(f"Unknown action '{raw_name}'. Valid actions: {_VALID_ACTIONS}.")
    name = raw_name.strip().lower().replace("-", "_").replace(" ", "_")
    fields = _BUILDERS[builder_name](name, args)
    return _validate(fields), "\n".join(thoughts)


def _unwrap(payload: dict[str, Any], thoughts: list[str]) -> dict[str, Any]:
    """Peel tool-call envelopes until the bare action object is left."""
    current = dict(payload)
    for _ in range(6):
        function = current.get("function")
        if isinstance(function, dict):
            current = dict(function)
            continue
        inner_action = current.get("action")
        if isinstance(inner_action, dict):
            # OpenAI computer_call items nest the action; keep sibling thoughts.
            for key in _THOUGHT_KEYS:
                value = current.get(key)
                if isinstance(value, str) and value.strip():
                    thoughts.append(value.strip())
            current = dict(inner_action)
            continue
        wrapper = next((key for key in _WRAPPER_KEYS if key in current), None)
        if wrapper is not None and isinstance(current.get("action"), str):
            inner = current.get(wrapper)
            if isinstance(inner, dict):
                # {"action": "click", "parameters": {"x": 1, "y": 2}}
                current = {**inner, "action": current["action"]}
                continue
        if wrapper is not None and ("name" in current or "tool" in current or len(current) == 1):
            tool = current.get("name", current.get("tool"))
            inner = current[wrapper]
            if isinstance(inner, str):
                inner = _load_arguments(str(tool or COMPUTER_TOOL_NAME), inner)
            if inner is None:
                inner = {}
            if not isinstance(inner, dict):
                raise ActionParseError(
                    f'"{wrapper}" must be a JSON object with the action\'s fields, '
                    f"not a {type(inner).__name__}."
                )
            for key in _THOUGHT_KEYS:
                value = current.get(key)
                if isinstance(value, str) and value.strip():
                    thoughts.append(value.strip())
            current = dict(inner)
            if isinstance(tool, str) and tool.strip() and not _is_computer_tool(tool):
                # The tool itself is named after the action: {"name": "click", ...}.
                current.setdefault("action", tool)
            continue
        break
    return _name_action(current)


def _is_computer_tool(name: str) -> bool:
    return name.strip().lower() in _COMPUTER_TOOL_NAMES


def _name_action(obj: dict[str, Any]) -> dict[str, Any]:
    """Settle which key names the action: ``action``, OpenAI's ``type`` or ``name``."""
    action = obj.get("action")
    if isinstance(action, str) and not _is_computer_tool(action):
        return obj
    kind = obj.get("type")
    if isinstance(kind, str) and kind not in ("function", "computer_call", "tool_use"):
        # {"type": "type", "text": ...} is OpenAI's own spelling of typing.
        obj["action"] = obj.pop("type")
        return obj
    name = obj.get("name")
    if isinstance(name, str) and _squash(name) in _ALIASES:
        obj["action"] = obj.pop("name")
        return obj
    if isinstance(action, str):
        obj.pop("action")
    return obj


def _squash(name: str) -> str:
    return re.sub(r"[\s_\-.]", "", name.strip().lower())


# --------------------------------------------------------------------------- value helpers

_NUMBER_RE: Final = re.compile(r"[-+]?\d+(?:\.\d+)?")


def _first(args: Mapping[str, Any], *keys: str) -> Any:
    for key in keys:
        value = args.get(key)
        if value is not None and value != "":
            return value
    return None


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool):
        raise ActionParseError(f"{what} must be a number, got {json.dumps(value)}.")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ActionParseError(f"{what} must be a finite number.")
        return float(value)
    if isinstance(value, str):
        match = _NUMBER_RE.fullmatch(value.strip().removesuffix("px").strip())
        if match is not None:
            return float(match.group(0))
    raise ActionParseError(f"{what} must be a number, got {json.dumps(value, default=str)}.")


def _pixel(value: Any, action: str, axis: str) -> int:
    return round(_number(value, f"{action}: {axis}"))


def _pair(value: Any, action: str, field: str) -> tuple[int, int]:
    """A point given as ``[x, y]``, ``{"x": .., "y": ..}`` or ``"x, y"``/``"(x, y)"``."""
    if isinstance(value, Mapping) and "x" in value and "y" in value:
        return _pixel(value["x"], action, "x"), _pixel(value["y"], action, "y")
    if isinstance(value, str):
        numbers = _NUMBER_RE.findall(value)
        if len(numbers) == 2:
            return round(float(numbers[0])), round(float(numbers[1]))
    if isinstance(value, list | tuple) and len(value) == 2:
        return _pixel(value[0], action, "x"), _pixel(value[1], action, "y")
    raise ActionParseError(
        f"{action}: {field} must be a point [x, y] in pixels, "
        f"got {json.dumps(value, default=str)[:80]}."
    )


_POINT_KEYS: Final = ("coordinate", "coordinates", "coords", "point", "position", "pos", "location")
_TARGET_KEYS: Final = (
    "target",
    "element",
    "description",
    "element_description",
    "target_description",
    "label",
    "instruction",
)


def _point(args: Mapping[str, Any], action: str) -> tuple[int, int] | None:
    x, y = args.get("x"), args.get("y")
    if x is not None or y is not None:
        if x is None or y is None:
            raise ActionParseError(f"{action} needs both x and y, or neither.")
        return _pixel(x, action, "x"), _pixel(y, action, "y")
    for key in _POINT_KEYS:
        value = args.get(key)
        if value is not None:
            return _pair(value, action, key)
    return None


def _target(args: Mapping[str, Any]) -> str | None:
    value = _first(args, *_TARGET_KEYS)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ActionParseError("target must be a description in words.")
    return value.strip() or None


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


# --------------------------------------------------------------------------- key names

# Names, aliases and the combo syntax are selfagent.keys' (the table the
# actuator sends keysyms from); here only the looser spellings models use.


def _combo(combo: str) -> str:
    combo = combo.strip()
    if len(combo) == 1:
        return canonical(combo)
    if "+" in combo:
        tokens = split_chord(combo)
    elif "-" in combo[1:] and is_modifier(combo.split("-")[0].strip()):
        # "ctrl-s" / "ctrl-shift-t": a hyphen used where xdotool wants "+".
        tokens = combo.split("-")
        tokens = [token or "-" for token in tokens]
        if combo.endswith("--"):
            tokens = [*tokens[:-2], "-"]
    else:
        tokens = [combo]
    return "+".join(canonical(token) for token in tokens if token)


def normalize_keys(keys: str | Sequence[str]) -> str:
    """Turn any common spelling of a key combo into xdotool's.

    ``["CTRL", "S"]`` (OpenAI ``keypress``) and ``"ctrl-s"`` become ``"ctrl+s"``,
    ``"Enter"`` becomes ``"Return"``, ``"cmd+shift+T"`` becomes ``"super+shift+t"``.
    A string of several space-separated combos stays a sequence.
    """
    if isinstance(keys, str):
        stripped = keys.strip()
        if not stripped:
            return keys
        if " " in stripped and all(_looks_like_combo(part) for part in stripped.split()):
            return " ".join(_combo(part) for part in stripped.split())
        return _combo(stripped)
    return "+".join(combo for combo in (_combo(item) for item in keys) if combo)


def _looks_like_combo(part: str) -> bool:
    return "+" in part or canonical(part) != part or len(part) == 1


def _keys_value(value: Any, action: str) -> str:
    if isinstance(value, list | tuple) and value and all(isinstance(k, str) for k in value):
        return normalize_keys(list(value))
    if isinstance(value, str) and value.strip():
        return normalize_keys(value)
    raise ActionParseError(
        f'{action} needs keys as an xdotool combo string, e.g. "ctrl+s" or "Return".'
    )


def _modifier_list(value: Any) -> list[str]:
    if value is None or value == "" or value == []:
        return []
    if isinstance(value, str):
        combo = normalize_keys(value)
        return [part for part in combo.split("+") if part]
    if isinstance(value, list | tuple) and all(isinstance(item, str) for item in value):
        return [part for item in value for part in normalize_keys(item).split("+") if part]
    raise ActionParseError('click: modifiers must be a list of key names, e.g. ["ctrl"].')


# --------------------------------------------------------------------------- builders

Builder = Callable[[str, dict[str, Any]], dict[str, Any]]

_BUTTONS: Final = {
    "left": "left",
    "right": "right",
    "middle": "middle",
    "wheel": "middle",
    "center": "middle",
    "primary": "left",
    "secondary": "right",
}
# Mouse buttons 8/9 are not in the action space; alt+Left/Right perform the
# same navigation in browsers and file managers.
_NAVIGATION_BUTTONS: Final = {"back": "alt+Left", "forward": "alt+Right"}
_CLICK_COUNTS: Final = {"doubleclick": 2, "dblclick": 2, "tripleclick": 3}
_BUTTON_FROM_NAME: Final = {"rightclick": "right", "middleclick": "middle"}


def _pointed(name: str, args: Mapping[str, Any]) -> dict[str, Any]:
    point = _point(args, name)
    target = _target(args)
    if point is None and target is None:
        raise ActionParseError(f"{name} needs x and y (integers) or a target description.")
    fields: dict[str, Any] = {}
    if point is not None:
        fields["x"], fields["y"] = point
    if target is not None:
        fields["target"] = target
    return fields


def _build_click(name: str, args: dict[str, Any]) -> dict[str, Any]:
    squashed = _squash(name)
    raw_button = args.get("button")
    button = _BUTTON_FROM_NAME.get(squashed, "left")
    if raw_button is not None:
        if isinstance(raw_button, int) and not isinstance(raw_button, bool):
            raw_button = {1: "left", 2: "middle", 3: "right", 8: "back", 9: "forward"}.get(
                raw_button, str(raw_button)
            )
        key = str(raw_button).strip().lower()
        if key in _NAVIGATION_BUTTONS:
            return {"action": "key", "keys": _NAVIGATION_BUTTONS[key]}
        if key not in _BUTTONS:
            raise ActionParseError(
                f"Unknown mouse button '{raw_button}': use left, right or middle."
            )
        button = _BUTTONS[key]
    # Anthropic's clicks carry held keys in `text`; anything else in `text`
    # is the model naming what to click.
    args = dict(args)
    modifiers_value = _first(args, "modifiers", "modifier", "hold_keys", "held_keys")
    text = args.get("text")
    if isinstance(text, str) and text.strip():
        combo = normalize_keys(text)
        if all(is_modifier(part) for part in combo.split("+")):
            modifiers_value = modifiers_value or combo
        else:
            args.setdefault("target", text)
    if modifiers_value is None and isinstance(args.get("keys"), list | str):
        modifiers_value = args["keys"]
    fields: dict[str, Any] = {"action": "click", **_pointed("click", args), "button": button}
    clicks = _CLICK_COUNTS.get(squashed)
    raw_clicks = _first(args, "clicks", "num_clicks", "click_count", "count", "times")
    if raw_clicks is not None:
        clicks = round(_number(raw_clicks, "click: clicks"))
    if clicks is not None:
        fields["clicks"] = clicks
    modifiers = _modifier_list(modifiers_value)
    if modifiers:
        fields["modifiers"] = modifiers
    return fields


def _build_move(name: str, args: dict[str, Any]) -> dict[str, Any]:
    return {"action": "move", **_pointed("move", args)}


_DIRECTIONS: Final = ("up", "down", "left", "right")


def _notches(pixels: float) -> int:
    return max(1, min(_MAX_NOTCHES, round(abs(pixels) / PIXELS_PER_SCROLL_NOTCH)))


def _build_scroll(name: str, args: dict[str, Any]) -> dict[str, Any]:
    squashed = _squash(name)
    fields: dict[str, Any] = {"action": "scroll"}
    direction: str | None = None
    amount: int | None = None
    raw_direction = _first(args, "direction", "scroll_direction", "dir")
    if squashed.startswith("scroll") and squashed[6:] in _DIRECTIONS:
        direction = squashed[6:]
    if raw_direction is not None:
        direction = str(raw_direction).strip().lower()
        if direction not in _DIRECTIONS:
            raise ActionParseError(
                f"scroll direction must be up, down, left or right, got '{raw_direction}'."
            )
    scroll_x, scroll_y = args.get("scroll_x"), args.get("scroll_y")
    if direction is None and (scroll_x is not None or scroll_y is not None):
        # OpenAI computer_use_preview: signed pixel distances, positive = down/right.
        dx = _number(scroll_x or 0, "scroll: scroll_x")
        dy = _number(scroll_y or 0, "scroll: scroll_y")
        if dx == 0 and dy == 0:
            raise ActionParseError("scroll needs a non-zero scroll_x or scroll_y.")
        if abs(dy) >= abs(dx):
            direction, amount = ("down" if dy > 0 else "up"), _notches(dy)
        else:
            direction, amount = ("right" if dx > 0 else "left"), _notches(dx)
    pixels = args.get("pixels")
    if direction is None and pixels is not None:
        # Qwen's computer_use tool hands `pixels` to pyautogui.scroll, which
        # counts wheel clicks on Linux; positive scrolls up.
        value = _number(pixels, "scroll: pixels")
        if value == 0:
            raise ActionParseError("scroll needs a non-zero pixels value.")
        direction, amount = ("up" if value > 0 else "down"), round(abs(value))
    if direction is None:
        raise ActionParseError("scroll needs a direction: up, down, left or right.")
    raw_amount = _first(args, "amount", "scroll_amount", "clicks", "notches", "steps", "times")
    if raw_amount is not None:
        amount = round(abs(_number(raw_amount, "scroll: amount")))
    fields["direction"] = direction
    if amount is not None:
        fields["amount"] = max(1, min(_MAX_NOTCHES, amount))
    point = _point(args, "scroll")
    if point is not None:
        fields["x"], fields["y"] = point
    target = _target(args)
    if target is not None:
        fields["target"] = target
    return fields


def _build_drag(name: str, args: dict[str, Any]) -> dict[str, Any]:
    fields: dict[str, Any] = {"action": "drag"}
    path = args.get("path")
    if path is None:
        start = _first(args, "start_coordinate", "start", "from", "start_point", "source")
        end = _first(args, "coordinate", "end", "to", "end_point", "end_coordinate")
        if start is None or end is None:
            raise ActionParseError(
                "drag needs a path of at least two points, e.g. "
                '{"action": "drag", "path": [[100, 200], [300, 200]]} '
                "(or start_coordinate and coordinate)."
            )
        path = [start, end]
    if not isinstance(path, list | tuple) or len(path) < 2:
        raise ActionParseError("drag needs a path of at least two points [x, y].")
    fields["path"] = [dict(zip(("x", "y"), _pair(p, "drag", "path"), strict=True)) for p in path]
    button = args.get("button")
    if button is not None:
        key = str(button).strip().lower()
        if key not in _BUTTONS:
            raise ActionParseError(f"Unknown mouse button '{button}': use left, right or middle.")
        fields["button"] = _BUTTONS[key]
    return fields


def _build_type(name: str, args: dict[str, Any]) -> dict[str, Any]:
    text = _first(args, "text", "content", "string", "value", "input", "keys")
    if text is None:
        raise ActionParseError('type needs text: {"action": "type", "text": "..."}.')
    return {"action": "type", "text": _text(text)}


def _build_key(name: str, args: dict[str, Any]) -> dict[str, Any]:
    value = _first(args, "keys", "key", "text", "combo", "hotkey", "combination", "value")
    return {"action": "key", "keys": _keys_value(value, "key")}


def _build_hold_key(name: str, args: dict[str, Any]) -> dict[str, Any]:
    value = _first(args, "keys", "key", "text")
    duration = _first(args, "duration", "seconds", "time")
    if duration is None:
        raise ActionParseError('hold_key needs keys and a duration in seconds, e.g. "duration": 1.')
    return {
        "action": "hold_key",
        "keys": _keys_value(value, "hold_key"),
        "duration": _number(duration, "hold_key: duration"),
    }


def _build_wait(name: str, args: dict[str, Any]) -> dict[str, Any]:
    fields: dict[str, Any] = {"action": "wait"}
    seconds = _first(args, "seconds", "duration", "time", "secs")
    milliseconds = _first(args, "ms", "milliseconds")
    if seconds is not None:
        fields["seconds"] = _number(seconds, "wait: seconds")
    elif milliseconds is not None:
        fields["seconds"] = _number(milliseconds, "wait: ms") / 1000
    if "seconds" in fields:
        if fields["seconds"] < 0:
            raise ActionParseError("wait: seconds must not be negative.")
        fields["seconds"] = min(fields["seconds"], _MAX_WAIT)
    return fields


def _build_bare(action: str) -> Builder:
    def build(name: str, args: dict[str, Any]) -> dict[str, Any]:
        return {"action": action}

    return build


def _build_shell(name: str, args: dict[str, Any]) -> dict[str, Any]:
    command = _first(args, "command", "cmd", "script", "code")
    if not isinstance(command, str) or not command.strip():
        raise ActionParseError('shell needs a command: {"action": "shell", "command": "ls"}.')
    fields: dict[str, Any] = {"action": "shell", "command": command}
    cwd = _first(args, "cwd", "workdir", "directory")
    if cwd is not None:
        fields["cwd"] = str(cwd)
    timeout = args.get("timeout")
    if timeout is not None:
        fields["timeout"] = _number(timeout, "shell: timeout")
    return fields


def _build_open_url(name: str, args: dict[str, Any]) -> dict[str, Any]:
    url = _first(args, "url", "link", "href", "uri", "address")
    if not isinstance(url, str) or not url.strip():
        raise ActionParseError('open_url needs a url: {"action": "open_url", "url": "..."}.')
    return {"action": "open_url", "url": url.strip()}


def _build_launch_app(name: str, args: dict[str, Any]) -> dict[str, Any]:
    app = _first(args, "app", "application", "app_name", "name", "program")
    if not isinstance(app, str) or not app.strip():
        raise ActionParseError('launch_app needs an app: {"action": "launch_app", "app": "..."}.')
    return {"action": "launch_app", "app": app.strip()}


_MESSAGE_KEYS: Final = (
    "message",
    "text",
    "answer",
    "final_answer",
    "result",
    "content",
    "summary",
    "response",
    "output",
)


def _build_done(name: str, args: dict[str, Any]) -> dict[str, Any]:
    status = args.get("status")
    if isinstance(status, str) and status.strip().lower() in ("failure", "fail", "failed", "error"):
        reason = _first(args, "reason", "message", "text", "error", "explanation", "answer")
        return _build_fail(name, {"reason": reason or "The task could not be completed."})
    message = _first(args, *_MESSAGE_KEYS)
    return {"action": "done", "message": "" if message is None else _text(message)}


def _build_fail(name: str, args: dict[str, Any]) -> dict[str, Any]:
    reason = _first(args, "reason", "message", "text", "error", "explanation", "answer")
    if reason is None:
        raise ActionParseError(
            'fail needs a reason: {"action": "fail", "reason": "why it cannot be done"}.'
        )
    return {"action": "fail", "reason": _text(reason)}


def _reject(message: str) -> Builder:
    def build(name: str, args: dict[str, Any]) -> dict[str, Any]:
        raise ActionParseError(message.format(name=name))

    return build


_BUILDERS: Final[Mapping[str, Builder]] = {
    "click": _build_click,
    "move": _build_move,
    "scroll": _build_scroll,
    "drag": _build_drag,
    "type": _build_type,
    "key": _build_key,
    "hold_key": _build_hold_key,
    "wait": _build_wait,
    "screenshot": _build_bare("screenshot"),
    "cursor_position": _build_bare("cursor_position"),
    "shell": _build_shell,
    "open_url": _build_open_url,
    "launch_app": _build_launch_app,
    "done": _build_done,
    "fail": _build_fail,
    "mouse_button": _reject(
        "{name} is not supported: use drag with a path [[x1, y1], [x2, y2]] to press, "
        "move and release, or click."
    ),
    "api_only": _reject("{name} is not available here: use shell to read or write files."),
}

_ALIAS_GROUPS: Final[Mapping[str, tuple[str, ...]]] = {
    "click": (
        "click",
        "leftclick",
        "rightclick",
        "middleclick",
        "doubleclick",
        "dblclick",
        "tripleclick",
        "tap",
        "mouseclick",
    ),
    "move": ("move", "mousemove", "moveto", "hover", "movemouse"),
    "scroll": ("scroll", "scrollup", "scrolldown", "scrollleft", "scrollright", "mousewheel"),
    "drag": ("drag", "leftclickdrag", "draganddrop", "dragto", "dragdrop"),
    "type": ("type", "typetext", "write", "input", "inputtext", "typing", "enter_text"),
    "key": ("key", "keypress", "hotkey", "press", "presskey", "keys", "keycombo", "keyboard"),
    "hold_key": ("holdkey", "keyhold"),
    "wait": ("wait", "sleep", "pause"),
    "screenshot": ("screenshot", "takescreenshot", "capture", "observe"),
    "cursor_position": ("cursorposition", "getcursorposition", "mouseposition"),
    "shell": ("shell", "bash", "runcommand", "execute", "exec", "command", "runshell"),
    "open_url": ("openurl", "navigate", "goto", "gotourl", "visit", "browse", "openlink"),
    "launch_app": ("launchapp", "launch", "openapp", "startapp", "openapplication", "runapp"),
    "done": (
        "done",
        "finish",
        "finished",
        "answer",
        "complete",
        "completed",
        "terminate",
        "success",
        "taskcomplete",
        "finalanswer",
        "respond",
        "stop",
    ),
    "fail": ("fail", "failed", "failure", "giveup", "abort", "infeasible", "impossible"),
    "mouse_button": ("leftmousedown", "leftmouseup", "mousedown", "mouseup"),
    "api_only": ("uploadfile", "downloadfile"),
}

_ALIASES: Final[Mapping[str, str]] = {
    alias.replace("_", ""): builder
    for builder, aliases in _ALIAS_GROUPS.items()
    for alias in aliases
}


# --------------------------------------------------------------------------- validation


def _validate(fields: dict[str, Any]) -> Action:
    try:
        return _ACTION_ADAPTER.validate_python(fields)
    except ValidationError as error:
        raise ActionParseError(_explain(str(fields.get("action")), error)) from None


def _explain(action: str, error: ValidationError) -> str:
    problem = error.errors(include_url=False)[0]
    location = [str(part) for part in problem["loc"] if str(part) != action]
    field = ".".join(location)
    message = str(problem["msg"]).removeprefix("Value error, ")
    if field:
        return f"{action}: {field}: {message}."
    return f"{action}: {message}."


# --------------------------------------------------------------------------- thought text

_THINK_TAG_RE: Final = re.compile(r"</?think>|</?thinking>", re.IGNORECASE)
_EMPTY_FENCE_RE: Final = re.compile(r"```[a-zA-Z]*\s*```")


def _clean_text(text: str) -> str:
    text = _THINK_TAG_RE.sub("", text)
    text = _EMPTY_FENCE_RE.sub("", text)
    return re.sub(r"[ \t]+\n", "\n", re.sub(r"\n{3,}", "\n\n", text)).strip()


def _join_thought(text: str, extra: str) -> str:
    return "\n".join(part for part in (text, extra) if part)
