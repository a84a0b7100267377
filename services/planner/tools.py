"""What the planner tells the model about the action space.

Two channels carry the same information: the ``computer`` function tool (for
servers that honour ``tools=``) and plain text in the system prompt (for chat
templates that silently drop ``tools=``, such as Qwen2.5-VL's multimodal one).

The tool's parameter schema is derived from the :data:`~selfagent.schemas.Action`
union, then flattened into one object: ``$ref``, ``anyOf`` and ``oneOf`` are
rejected or mishandled by some OpenAI-compatible servers (grammar-constrained
decoding in llama.cpp, older vLLM guided decoding), while a single object with
an ``action`` enum is accepted everywhere.

Two modes:

``grounded``
    pointer actions name their ``target`` in words; a grounding model turns it
    into pixels. Coordinates are accepted but not asked for.
``direct``
    the planner model itself gives pixel coordinates in the screenshot it sees.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final, Literal, get_args

from pydantic import BaseModel

from selfagent.schemas import ACTION_NAMES, Action

__all__ = [
    "ACTION_SCHEMA_TEXT",
    "COMPUTER_TOOL_NAME",
    "MODEL_ACTION_NAMES",
    "Mode",
    "computer_tool",
    "system_prompt",
]

Mode = Literal["grounded", "direct"]

COMPUTER_TOOL_NAME: Final = "computer"

# File transfer carries base64 payloads meant for API clients; a model moves
# files with `shell` instead, so these are neither offered nor accepted.
_API_ONLY_ACTIONS: Final = frozenset({"upload_file", "download_file"})

MODEL_ACTION_NAMES: Final[tuple[str, ...]] = tuple(
    name for name in ACTION_NAMES if name not in _API_ONLY_ACTIONS
)
"""The actions a model may choose, in the order the prompt lists them."""

# Fields the model must never set: the planner owns the idempotency key.
_HIDDEN_FIELDS: Final = frozenset({"id", "action"})

# Descriptions that differ by mode; every other field keeps the description
# below or the one its pydantic model carries.
_MODE_DESCRIPTIONS: Final[Mapping[Mode, Mapping[str, str]]] = {
    "grounded": {
        "x": "Pixel x. Optional: prefer `target`.",
        "y": "Pixel y. Optional: prefer `target`.",
        "target": (
            "click/move/scroll: the element in words, specific enough to find exactly one, "
            "e.g. 'the \"Save\" button at the bottom right of the dialog'."
        ),
    },
    "direct": {
        "x": "click/move/scroll: pixel x in the screenshot, 0 = left edge.",
        "y": "click/move/scroll: pixel y in the screenshot, 0 = top edge.",
    },
}

_DESCRIPTIONS: Final[Mapping[str, str]] = {
    "action": "The action to perform.",
    "button": "click/drag: mouse button, default left.",
    "clicks": "click: 1 single, 2 double, 3 triple.",
    "modifiers": "click: keys held during the click, e.g. ['ctrl'].",
    "direction": "scroll: up, down, left or right.",
    "amount": "scroll: wheel notches, default 3.",
    "path": "drag: points from press to release, at least 2, in screen pixels.",
    "text": "type: the text to type (unicode).",
    "keys": "key/hold_key: xdotool combo, e.g. 'ctrl+s', 'Return', 'alt+F4'.",
    "duration": "hold_key: seconds to hold.",
    "seconds": "wait: seconds to wait, default 1.",
    "command": "shell: a bash command run in the desktop's sandbox.",
    "cwd": "shell: working directory.",
    "timeout": "shell: seconds before the command is killed, default 30.",
    "url": "open_url: the address to open in the browser.",
    "app": "launch_app: the application, e.g. 'terminal', 'firefox', 'files'.",
    "message": "done: the final answer or a short summary of what was done.",
    "reason": "fail: why the task cannot be completed.",
}

# Schema keywords every server we target understands inside a property.
_KEPT_KEYWORDS: Final = ("type", "enum", "items", "minimum", "maximum", "properties", "required")


def _action_models() -> tuple[type[BaseModel], ...]:
    union = get_args(Action)[0]
    return tuple(
        model
        for model in get_args(union)
        if model.model_fields["action"].default in MODEL_ACTION_NAMES
    )


def _inline_refs(node: Any, defs: Mapping[str, Any]) -> Any:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str):
            return _inline_refs(defs[ref.rsplit("/", 1)[-1]], defs)
        return {key: _inline_refs(value, defs) for key, value in node.items()}
    if isinstance(node, list):
        return [_inline_refs(item, defs) for item in node]
    return node


def _compact(prop: Mapping[str, Any]) -> dict[str, Any]:
    """Drop ``null`` branches and keywords that only cost tokens or trip servers."""
    branches = [b for b in prop.get("anyOf", [prop]) if b.get("type") != "null"]
    chosen = branches[0] if len(branches) == 1 else prop
    out: dict[str, Any] = {}
    for key in _KEPT_KEYWORDS:
        if key not in chosen:
            continue
        value = chosen[key]
        if key == "items" and isinstance(value, dict):
            value = _compact(value)
        elif key == "properties" and isinstance(value, dict):
            value = {name: _compact(sub) for name, sub in value.items()}
        out[key] = copy.deepcopy(value)
    return out


def _merge(existing: dict[str, Any], new: dict[str, Any]) -> None:
    # Two actions sharing a field name with different bounds: keep only what
    # both agree on, so the flattened schema never rejects a valid action.
    for key in ("minimum", "maximum", "enum"):
        if existing.get(key) != new.get(key):
            existing.pop(key, None)


def _parameters(mode: Mode) -> dict[str, Any]:
    properties: dict[str, dict[str, Any]] = {
        "action": {"type": "string", "enum": list(MODEL_ACTION_NAMES)},
    }
    for model in _action_models():
        schema = model.model_json_schema()
        defs = schema.get("$defs", {})
        for name, prop in schema["properties"].items():
            if name in _HIDDEN_FIELDS:
                continue
            compact = _compact(_inline_refs(prop, defs))
            if name in properties:
                _merge(properties[name], compact)
            else:
                compact["description"] = str(prop.get("description", ""))
                properties[name] = compact
    if mode == "direct":
        # Without a grounder a description cannot become pixels.
        properties.pop("target", None)
    overrides = {**_DESCRIPTIONS, **_MODE_DESCRIPTIONS[mode]}
    for name, prop in properties.items():
        text = overrides.get(name) or prop.get("description") or ""
        if text:
            prop["description"] = text
        else:
            prop.pop("description", None)
    return {"type": "object", "properties": properties, "required": ["action"]}


def computer_tool(mode: Mode = "grounded") -> dict[str, Any]:
    """The ``computer`` function tool, in chat-completions ``tools=`` format.

    Returns a fresh dict on every call, so callers may adjust it freely.
    """
    description = "Operate the Linux desktop: one action per call. " + (
        "Point at things by describing them in `target`."
        if mode == "grounded"
        else "Coordinates are pixels of the latest screenshot."
    )
    return {
        "type": "function",
        "function": {
            "name": COMPUTER_TOOL_NAME,
            "description": description,
            "parameters": _parameters(mode),
        },
    }


# One line per action: (grounded form, direct form, explanation). The forms are
# examples in the exact JSON the parser accepts, so a model that copies them
# produces a valid action.
_ACTION_LINES: Final[tuple[tuple[str, str, str, str], ...]] = (
    (
        "click",
        '{"action": "click", "target": "the Firefox icon in the taskbar"}',
        '{"action": "click", "x": 640, "y": 360}',
        'optional "button": "left"|"right"|"middle", "clicks": 1|2|3, "modifiers": ["ctrl"]',
    ),
    (
        "move",
        '{"action": "move", "target": "the File menu"}',
        '{"action": "move", "x": 640, "y": 360}',
        "moves the pointer (hover) without clicking",
    ),
    (
        "scroll",
        '{"action": "scroll", "direction": "down", "amount": 3, "target": "the page"}',
        '{"action": "scroll", "direction": "down", "amount": 3, "x": 640, "y": 360}',
        "direction up|down|left|right, amount in wheel notches; the point is optional",
    ),
    (
        "drag",
        '{"action": "drag", "path": [{"x": 100, "y": 200}, {"x": 300, "y": 200}]}',
        '{"action": "drag", "path": [{"x": 100, "y": 200}, {"x": 300, "y": 200}]}',
        "press at the first point, move through the rest, release at the last (pixels)",
    ),
    (
        "type",
        '{"action": "type", "text": "hello world"}',
        '{"action": "type", "text": "hello world"}',
        "types into the focused element; click the field first",
    ),
    (
        "key",
        '{"action": "key", "keys": "ctrl+s"}',
        '{"action": "key", "keys": "ctrl+s"}',
        "xdotool names joined by '+': Return, Escape, Tab, BackSpace, Delete, Up, Page_Down, "
        "F5, alt+F4, super",
    ),
    (
        "hold_key",
        '{"action": "hold_key", "keys": "shift", "duration": 1.5}',
        '{"action": "hold_key", "keys": "shift", "duration": 1.5}',
        "holds keys down for duration seconds",
    ),
    (
        "wait",
        '{"action": "wait", "seconds": 2}',
        '{"action": "wait", "seconds": 2}',
        "lets a page or program finish loading",
    ),
    (
        "screenshot",
        '{"action": "screenshot"}',
        '{"action": "screenshot"}',
        "a fresh screenshot without acting",
    ),
    (
        "cursor_position",
        '{"action": "cursor_position"}',
        '{"action": "cursor_position"}',
        "reports where the pointer is",
    ),
    (
        "shell",
        '{"action": "shell", "command": "ls ~/Documents"}',
        '{"action": "shell", "command": "ls ~/Documents"}',
        'runs bash in the desktop\'s sandbox and returns the output; optional "cwd", "timeout"',
    ),
    (
        "open_url",
        '{"action": "open_url", "url": "https://example.org"}',
        '{"action": "open_url", "url": "https://example.org"}',
        "opens the address in the browser",
    ),
    (
        "launch_app",
        '{"action": "launch_app", "app": "terminal"}',
        '{"action": "launch_app", "app": "terminal"}',
        "starts an application by name",
    ),
    (
        "done",
        '{"action": "done", "message": "The file is saved as report.pdf."}',
        '{"action": "done", "message": "The file is saved as report.pdf."}',
        "the task is complete; message is the answer for the user",
    ),
    (
        "fail",
        '{"action": "fail", "reason": "The site asks for a password I do not have."}',
        '{"action": "fail", "reason": "The site asks for a password I do not have."}',
        "the task cannot be completed",
    ),
)


def _schema_text(mode: Mode) -> str:
    column = 1 if mode == "grounded" else 2
    lines = [
        f"- {line[column]}  ({line[3]})" for line in _ACTION_LINES if line[0] in MODEL_ACTION_NAMES
    ]
    return "\n".join(lines)


ACTION_SCHEMA_TEXT: Final[Mapping[Mode, str]] = MappingProxyType(
    {"grounded": _schema_text("grounded"), "direct": _schema_text("direct")}
)
"""The action space as prompt text, one example line per action, by mode."""

_POINTING: Final[Mapping[Mode, str]] = {
    "grounded": (
        "Point at things by describing them in `target`, never by guessing pixels. "
        "A good target names the element's visible text or icon, its kind (button, "
        "field, link, icon, menu item, tab) and where it is, so that exactly one element "
        'on the screen matches, e.g. \'the "Save" button at the bottom right of the '
        "dialog'."
    ),
    "direct": (
        "Coordinates are pixels of the screenshot: x from 0 (left) to {max_x}, y from 0 "
        "(top) to {max_y}. Aim at the centre of the element."
    ),
}


def system_prompt(mode: Mode, screen_w: int, screen_h: int) -> str:
    """The planner's system prompt: role, screen, action space and answer format.

    ``screen_w``/``screen_h`` are the size of the screenshot the model sees (in
    direct mode, the pixel space its coordinates refer to).

    Raises:
        ValueError: the mode is unknown or the size is not positive.
    """
    if mode not in _POINTING:
        raise ValueError(f"unknown planner mode {mode!r}; use 'grounded' or 'direct'")
    if screen_w <= 0 or screen_h <= 0:
        raise ValueError(f"screen size must be positive, got {screen_w}x{screen_h}")
    pointing = _POINTING[mode].format(max_x=screen_w - 1, max_y=screen_h - 1)
    example = (
        '{"action": "click", "target": "the Firefox icon in the taskbar"}'
        if mode == "grounded"
        else '{"action": "click", "x": 640, "y": 360}'
    )
    return f"""\
You operate a Linux desktop (Xfce) to complete the user's task. After every \
action you receive a new screenshot of the whole screen ({screen_w}x{screen_h} pixels).

Each turn, choose exactly ONE action and call the `{COMPUTER_TOOL_NAME}` tool with it. \
The actions, with example arguments:
{ACTION_SCHEMA_TEXT[mode]}

{pointing}

How to answer:
- First write one or two short sentences: what you see and why this action.
- Then call the `{COMPUTER_TOOL_NAME}` tool once. If you cannot call tools, write the \
call as text, exactly like this:
<tool_call>{{"name": "{COMPUTER_TOOL_NAME}", "arguments": {example}}}</tool_call>
- Check on the next screenshot that the action worked before going on; if it did \
not, try another way instead of repeating it.
- Prefer keyboard shortcuts and the shell when they are more reliable than clicking.
- When the task is complete, use done with the answer or a short summary. If it \
cannot be completed, use fail with the reason. Do not ask the user questions."""
