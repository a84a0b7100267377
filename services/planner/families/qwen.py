"""Qwen2.5-VL and Qwen3-VL with their ``computer_use`` function.

Facts this follows (the Qwen cookbooks and qwen-agent; OSWorld's Qwen3-VL agent):

* the function is described in the system prompt the way qwen-agent injects
  tools (``# Tools``, ``<tools>...</tools>``, answer in
  ``<tool_call>{"name": ..., "arguments": ...}</tool_call>``), because the
  multimodal chat templates may drop a server-side ``tools=``;
* the description states the screen size: Qwen2.5-VL answers in pixels of
  the image after ``smart_resize`` (factor 28), so that size is stated and the
  screenshot sent at it; Qwen3-VL answers on a 1000x1000 grid;
* actions: ``key`` (keys list), ``type``, ``mouse_move``, ``left_click``,
  ``left_click_drag`` (from where the pointer is), ``right_click``,
  ``middle_click``, ``double_click``, ``scroll`` (``pixels``, positive is up),
  ``wait`` (``time``), ``terminate`` (``status`` success or failure); Qwen3-VL
  adds ``triple_click``, ``hscroll`` and ``answer``;
* context: Qwen2.5-VL's cookbook sends the current screenshot only, the
  steps so far as text in the user query; Qwen3-VL as OSWorld runs it keeps
  the 4 newest earlier screenshots with their replies (5 images), older
  steps as text, with a Thought/Action/tool-call response format.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any, ClassVar, Final

from selfagent.errors import ActionParseError
from selfagent.llm import ToolCall
from selfagent.schemas.actions import Action, MouseButton

from ..coords import CoordSpace
from . import common
from .base import (
    ChatMessage,
    Family,
    FamilyReply,
    ParseContext,
    Turn,
    View,
    image_part,
    note_for,
    text_part,
)

TOOL_NAME: Final = "computer_use"

_ACTIONS_25: Final = (
    ("key", "Press keys down in the order given, then release them in reverse order."),
    ("type", "Type a string of text on the keyboard."),
    ("mouse_move", "Move the cursor to the (x, y) coordinate."),
    ("left_click", "Click the left mouse button at the (x, y) coordinate."),
    ("left_click_drag", "Press the left button where the cursor is and drag to (x, y)."),
    ("right_click", "Click the right mouse button at the (x, y) coordinate."),
    ("middle_click", "Click the middle mouse button at the (x, y) coordinate."),
    ("double_click", "Double-click the left mouse button at the (x, y) coordinate."),
    ("scroll", "Turn the mouse wheel by `pixels` at the cursor or at (x, y)."),
    ("wait", "Wait `time` seconds for something to happen."),
    ("terminate", "End the task and report whether it succeeded."),
)
_ACTIONS_3: Final = (
    *_ACTIONS_25[:8],
    ("triple_click", "Triple-click the left mouse button at the (x, y) coordinate."),
    *_ACTIONS_25[8:9],
    ("hscroll", "Scroll horizontally by `pixels` at the cursor or at (x, y)."),
    *_ACTIONS_25[9:],
    ("answer", "Give the user the answer to their question, in `text`."),
)

_TOOL_CALL: Final = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.S)
_THINK: Final = re.compile(r"<think>.*?</think>|</?think>", re.S | re.IGNORECASE)
_LABEL: Final = re.compile(r"^\s*(Thought|Action)\s*:\s*", re.IGNORECASE | re.MULTILINE)


def computer_use_tool(
    actions: Sequence[tuple[str, str]], width: int, height: int
) -> dict[str, Any]:
    description = (
        "Use a mouse and keyboard to interact with a computer, and take screenshots.\n"
        "* This is the desktop of a Linux computer (Xfce). Applications may take a moment "
        "to start or respond: wait, then look at the next screenshot.\n"
        f"* The screen's resolution is {width}x{height}.\n"
        "* Before moving the cursor to click on an element, find the element's "
        "coordinates on the screenshot.\n"
        "* Click buttons, links and icons in their centre, not on their edges."
    )
    action_help = "\n".join(f"* `{name}`: {text}" for name, text in actions)
    return {
        "type": "function",
        "function": {
            "name": TOOL_NAME,
            "description": description,
            "parameters": {
                "type": "object",
                "properties": {
                    "action": {
                        "description": f"The action to perform:\n{action_help}",
                        "enum": [name for name, _ in actions],
                        "type": "string",
                    },
                    "keys": {"description": "Required only by `action=key`.", "type": "array"},
                    "text": {
                        "description": "Required only by `action=type` and `action=answer`.",
                        "type": "string",
                    },
                    "coordinate": {
                        "description": "(x, y): where to act, x from the left edge and y from "
                        "the top edge. Required by the mouse actions.",
                        "type": "array",
                    },
                    "pixels": {
                        "description": "How far to scroll: positive up (or right), negative "
                        "down (or left). Required by `action=scroll` and `action=hscroll`.",
                        "type": "number",
                    },
                    "time": {
                        "description": "Seconds to wait. Required only by `action=wait`.",
                        "type": "number",
                    },
                    "status": {
                        "description": "Whether the task succeeded. Required only by "
                        "`action=terminate`.",
                        "type": "string",
                        "enum": ["success", "failure"],
                    },
                },
                "required": ["action"],
            },
        },
    }


def tools_system_prompt(tool: Mapping[str, Any]) -> str:
    """The way qwen-agent puts function signatures into the system prompt."""
    return (
        "You are a helpful assistant.\n\n# Tools\n\nYou may call one or more functions to "
        "assist with the user query.\n\nYou are provided with function signatures within "
        f"<tools></tools> XML tags:\n<tools>\n{json.dumps(tool)}\n</tools>\n\n"
        "For each function call, return a json object with function name and arguments "
        "within <tool_call></tool_call> XML tags:\n<tool_call>\n"
        '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
    )


class _Qwen(Family):
    actions_offered: ClassVar[tuple[tuple[str, str], ...]]
    correction_text = (
        "Your last reply could not be used: {problem}. Call the computer_use function once, "
        'for example:\n<tool_call>\n{{"name": "computer_use", "arguments": '
        '{{"action": "left_click", "coordinate": [x, y]}}}}\n</tool_call>'
    )

    def display_size(self, width: int, height: int) -> tuple[int, int]:
        return width, height

    def system_prompt(self, width: int, height: int) -> str:
        w, h = self.display_size(width, height)
        return tools_system_prompt(computer_use_tool(self.actions_offered, w, h))

    def read(
        self, content: str | None, tool_calls: Sequence[ToolCall], context: ParseContext
    ) -> FamilyReply:
        text = _THINK.sub("", content or "")
        payloads: list[dict[str, Any]] = []
        for call in tool_calls:
            payloads.append({"name": call.name, "arguments": _decode(call.arguments, call.name)})
        blocks = list(_TOOL_CALL.finditer(text))
        for block in blocks:
            payloads.append(_object(block.group(1)))
        outside = _TOOL_CALL.sub("", text) if blocks else text
        if not payloads:
            found = _first_object(text)
            if found is None:
                raise ActionParseError("there is no <tool_call> block with a computer_use call")
            payloads.append(found[0])
            outside = text[: found[1]] + text[found[2] :]
        thought, summary = _thought_and_action(outside)
        actions: list[Action] = []
        for payload in payloads:
            actions.extend(self.convert(payload, context, thought))
        calls_text = "\n".join(
            f"<tool_call>\n{json.dumps(p, ensure_ascii=False)}\n</tool_call>" for p in payloads
        )
        said = outside.strip()
        return FamilyReply(
            actions=tuple(actions),
            thought=thought,
            reply=f"{said}\n{calls_text}" if said else calls_text,
            summary=summary or "; ".join(json.dumps(p["arguments"]) for p in payloads),
        )

    def convert(
        self, payload: Mapping[str, Any], context: ParseContext, thought: str
    ) -> list[Action]:
        name = payload.get("name")
        if name not in (TOOL_NAME, "computer", "mobile_use"):
            raise ActionParseError(f"unknown function {name!r}: call {TOOL_NAME}")
        args = payload.get("arguments")
        if not isinstance(args, Mapping):
            raise ActionParseError('"arguments" must be an object with an "action"')
        action = str(args.get("action") or "").strip().lower()
        offered = [offered for offered, _ in self.actions_offered]
        if action not in offered:
            raise ActionParseError(f"unknown action {action!r}: use one of {', '.join(offered)}")
        point = _optional_point(args)
        if action == "key":
            keys = args.get("keys")
            if isinstance(keys, str):
                keys = [keys]
            if not isinstance(keys, list) or not keys:
                raise ActionParseError('key needs "keys", a list such as ["ctrl", "c"]')
            return [common.hotkey([str(k) for k in keys])]
        if action == "type":
            text = args.get("text")
            if not isinstance(text, str):
                raise ActionParseError('type needs "text"')
            return list(common.typing(text))
        if action == "mouse_move":
            return [common.move(_required(point, action))]
        clicks = {"left_click": 1, "double_click": 2, "triple_click": 3}
        if action in clicks:
            where = point or context.cursor
            return [common.click(_required(where, action), clicks=clicks[action])]
        if action in ("right_click", "middle_click"):
            where = point or context.cursor
            button: MouseButton = "right" if action == "right_click" else "middle"
            return [common.click(_required(where, action), button=button)]
        if action == "left_click_drag":
            if context.cursor is None:
                raise ActionParseError(
                    "left_click_drag starts where the pointer is, which is not known yet: "
                    "mouse_move to the start first"
                )
            return [common.drag(context.cursor, _required(point, action))]
        if action in ("scroll", "hscroll"):
            pixels = common.number(args.get("pixels"), f"{action}: pixels")
            if pixels == 0:
                raise ActionParseError(f"{action} needs a non-zero pixels value")
            if action == "scroll":
                direction = "up" if pixels > 0 else "down"
            else:
                direction = "right" if pixels > 0 else "left"
            return [common.scroll(direction, common.notches(pixels), point)]
        if action == "wait":
            seconds = args.get("time", 1.0)
            return [common.wait(common.number(seconds, "wait: time"))]
        if action == "answer":
            text = args.get("text")
            if not isinstance(text, str) or not text.strip():
                raise ActionParseError('answer needs "text"')
            return [common.done(text)]
        # terminate
        status = str(args.get("status") or "").strip().lower()
        if status in ("failure", "fail", "failed"):
            return [common.fail(thought)]
        if status != "success":
            raise ActionParseError('terminate needs "status": "success" or "failure"')
        return [common.done(str(args.get("answer") or args.get("text") or ""))]


class Qwen25VL(_Qwen):
    name = "qwen2.5"
    title = "Qwen2.5-VL computer_use"
    model_hints = ("qwen2.5-vl", "qwen2.5vl", "qwen2-5-vl", "qwen25-vl")
    space: ClassVar[CoordSpace] = "pixels"
    resize = True
    images = 1
    sampling = MappingProxyType({"temperature": 0.0, "max_tokens": 2048})
    actions_offered = _ACTIONS_25

    def render(self, view: View) -> list[ChatMessage]:
        query = f"The user query: {view.task}"
        if view.turns:
            steps = "".join(
                f"Step {index}: {_step_line(turn)}; " for index, turn in enumerate(view.turns, 1)
            )
            query += (
                "\nTask progress (You have done the following operation on the current "
                f"device): {steps}"
            )
        if view.feedback:
            query += f"\n{view.feedback}"
        return [
            {"role": "system", "content": self.system_prompt(view.width, view.height)},
            {"role": "user", "content": [image_part(view.screenshot), text_part(query)]},
        ]


_QWEN3_FORMAT: Final = (
    "\n\n# Response format\n\nFor every step, answer with:\n"
    "1) Thought: one short sentence on what you see and what comes next.\n"
    "2) Action: one short imperative sentence saying what to do in the UI.\n"
    "3) One <tool_call>...</tool_call> block holding only the JSON "
    '{"name": <function-name>, "arguments": <args-json-object>}.\n\n'
    "Rules:\n- Keep that order: Thought, Action, <tool_call>.\n"
    "- Write nothing else.\n"
    "- When the task is finished, call terminate (and answer first if the user asked "
    "a question)."
)


class Qwen3VL(_Qwen):
    name = "qwen3"
    title = "Qwen3-VL computer_use"
    model_hints = ("qwen3-vl", "qwen3vl", "qwen3-5-vl", "qwen3.5-vl")
    space: ClassVar[CoordSpace] = "rel1000"
    resize = False
    images = 5
    # OSWorld runs it at temperature 0 and top_p 0.9; its 32768 tokens are
    # for the thinking variant and overflow small server contexts.
    sampling = MappingProxyType({"temperature": 0.0, "top_p": 0.9, "max_tokens": 2048})
    actions_offered = _ACTIONS_3

    def display_size(self, width: int, height: int) -> tuple[int, int]:
        return 1000, 1000

    def system_prompt(self, width: int, height: int) -> str:
        return super().system_prompt(width, height) + _QWEN3_FORMAT

    def render(self, view: View) -> list[ChatMessage]:
        first = self.shown(view.turns)
        earlier = [
            f"Step {index}: {_step_line(turn)}" for index, turn in enumerate(view.turns[:first], 1)
        ]
        instruction = (
            "Please generate the next move according to the UI screenshot, instruction and "
            f"previous actions.\n\nInstruction: {view.task}\n\nPrevious actions:\n"
            + ("\n".join(earlier) if earlier else "None")
        )
        messages: list[ChatMessage] = [
            {"role": "system", "content": self.system_prompt(view.width, view.height)}
        ]
        window = view.turns[first:]
        for index, turn in enumerate(window):
            content: list[ChatMessage] = []
            if turn.screenshot:
                content.append(image_part(turn.screenshot))
            if index == 0:
                content.append(text_part(instruction))
            if content:
                messages.append({"role": "user", "content": content})
            messages.append({"role": "assistant", "content": turn.reply})
            note = note_for(turn)
            if note:
                messages.append({"role": "user", "content": note})
        current: list[ChatMessage] = [image_part(view.screenshot)]
        if not window:
            current.append(text_part(instruction))
        if view.feedback:
            current.append(text_part(view.feedback))
        messages.append({"role": "user", "content": current})
        return messages


def _step_line(turn: Turn) -> str:
    line = turn.summary or turn.reply
    note = note_for(turn)
    return f"{line} ({note})" if note else line


def _thought_and_action(text: str) -> tuple[str, str]:
    """Split "Thought: ... Action: ..." prose; without labels it is all thought."""
    text = text.strip()
    parts = _LABEL.split(text)
    if len(parts) < 3:
        return text, ""
    thought: list[str] = []
    action: list[str] = []
    for label, body in zip(parts[1::2], parts[2::2], strict=True):
        (thought if label.lower() == "thought" else action).append(body.strip())
    return "\n".join(p for p in thought if p), " ".join(p for p in action if p)


def _decode(arguments: str, name: str) -> Any:
    try:
        return json.loads(arguments or "{}")
    except ValueError as exc:
        raise ActionParseError(f"the arguments of {name} are not valid JSON: {exc}") from None


def _object(text: str) -> dict[str, Any]:
    found = _first_object(text)
    if found is None:
        raise ActionParseError(
            'the <tool_call> block holds no JSON object like {"name": "computer_use", '
            '"arguments": {...}}'
        )
    return found[0]


def _first_object(text: str) -> tuple[dict[str, Any], int, int] | None:
    """The first JSON object in ``text`` that names a function, and its span."""
    decoder = json.JSONDecoder()
    position = text.find("{")
    while position >= 0:
        try:
            value, end = decoder.raw_decode(text, position)
        except ValueError:
            value, end = None, position + 1
        if isinstance(value, dict) and "arguments" in value:
            if isinstance(value["arguments"], str):
                value["arguments"] = _decode(value["arguments"], str(value.get("name")))
            return value, position, end
        position = text.find("{", position + 1)
    return None


def _optional_point(args: Mapping[str, Any]) -> tuple[int, int] | None:
    value = args.get("coordinate")
    if value is None:
        return None
    return common.coordinate(value, "coordinate")


def _required(point: tuple[int, int] | None, action: str) -> tuple[int, int]:
    if point is None:
        raise ActionParseError(f'{action} needs "coordinate": [x, y]')
    return point
