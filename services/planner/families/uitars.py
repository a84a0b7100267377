"""UI-TARS (ByteDance): ``Thought: ... Action: click(start_box='<|box_start|>(x,y)<|box_end|>')``.

Facts this follows (from the model's repository and UI-TARS-desktop):

* prompt: a GUI-agent header, the output format, the action space one call
  per line, a note on the thought's language and shape, then the user's
  instruction; there is no system role: the prompt and instruction are the
  first user message;
* conversation: every screenshot is an image-only user turn, every reply an
  assistant turn; only the 5 newest screenshots are sent (the current one
  included), every text turn is kept;
* UI-TARS-1.5 answers in pixels of the image after the Qwen2.5-VL
  ``smart_resize`` (factor 28, at least 100*28*28 pixels), so the screenshot
  is sent already on that grid; 1.0 answers in thousandths (0-1000);
* 1.5 checkpoints still emit the 1.0 syntax, and the newer ``<point>x y</point>``
  form; servers strip the ``<|box_start|>`` tokens unless told not to: all
  of these are read;
* ``type(content='...\\n')`` means type, then Enter; ``hotkey(key='ctrl c')``
  splits keys on spaces; ``wait()`` is 5 seconds; ``scroll`` is 5 notches;
  ``finished(content)`` ends the task with an answer; ``call_user()`` asks
  the person for help;
* sampling: temperature 0, 400 tokens for 1.5 (deploy guide); 1.0 as
  UI-TARS-desktop runs it (top_p 0.7, 1000 tokens).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from types import MappingProxyType
from typing import Any, ClassVar, Final

from selfagent.errors import ActionParseError
from selfagent.llm import ToolCall
from selfagent.schemas.actions import Action

from ..coords import CoordSpace
from . import common
from .base import (
    ChatMessage,
    Family,
    FamilyReply,
    ParseContext,
    View,
    image_part,
    note_for,
    text_part,
)
from .calls import Call, calls, split

_FORMAT_NOTES: Final = (
    "hotkey(key='ctrl c') # Keys separated by spaces, lowercase, at most 3 keys.\n"
    "type(content='xxx') # Escape quotes and newlines (\\', \\\", \\n) so the content reads "
    "as a Python string. End the content with \\n to submit what you typed.\n"
)

_BOX_ACTIONS: Final = (
    "click(start_box='<|box_start|>(x1,y1)<|box_end|>')\n"
    "left_double(start_box='<|box_start|>(x1,y1)<|box_end|>')\n"
    "right_single(start_box='<|box_start|>(x1,y1)<|box_end|>')\n"
    "drag(start_box='<|box_start|>(x1,y1)<|box_end|>', end_box='<|box_start|>(x3,y3)<|box_end|>')\n"
    + _FORMAT_NOTES
    + "scroll(start_box='<|box_start|>(x1,y1)<|box_end|>', direction='down or up or right or "
    "left') # Reveals more in the given direction.\n"
    "wait() # Waits 5 seconds, then takes a new screenshot to see what changed.\n"
    "finished(content='xxx') # The task is done; content is your answer for the user "
    "(escaped like type).\n"
    "call_user() # Hands the task to the user when it cannot be solved or you need their help."
)


def tars_prompt(action_space: str, task: str) -> str:
    """The UI-TARS prompt shape: header, output format, action space, notes, instruction."""
    return (
        "You are a GUI agent. You are given a task and your action history, with screenshots. "
        "You need to perform the next action to complete the task.\n\n"
        "## Output Format\n```\nThought: ...\nAction: ...\n```\n\n"
        f"## Action Space\n\n{action_space}\n\n"
        "## Note\n- Use English in `Thought` part.\n"
        "- Write a small plan and finally summarize your next action (with its target "
        "element) in one sentence in `Thought` part.\n\n"
        f"## User Instruction\n{task}"
    )


_POINT_KEYS: Final = ("start_box", "point", "start_point", "box", "coordinate")
_END_KEYS: Final = ("end_box", "end_point")
_DIRECTIONS: Final = ("up", "down", "left", "right")
KNOWN_ACTIONS: Final = (
    "click, left_double, right_single, drag, hotkey, type, scroll, wait, finished, call_user"
)


def _point(call: Call, keys: Sequence[str] = _POINT_KEYS) -> tuple[int, int] | None:
    value = call.get(*keys)
    if value is None and call.args:
        value = call.args[0]
    return None if value is None else common.coordinate(value, f"{call.name}: point")


def _needs_point(call: Call) -> tuple[int, int]:
    point = _point(call)
    if point is None:
        raise ActionParseError(f"{call.name} needs a point: start_box='(x,y)'")
    return point


def call_actions(found: Sequence[Call], thought: str) -> tuple[list[Action], str | None]:
    """Our actions for the calls, in order, and the question if the model calls the user."""
    actions: list[Action] = []
    question: str | None = None
    for call in found:
        name = call.name.lower().removeprefix("pyautogui.")
        if name in ("click", "left_single"):
            actions.append(common.click(_needs_point(call)))
        elif name in ("left_double", "double_click"):
            actions.append(common.click(_needs_point(call), clicks=2))
        elif name in ("left_triple", "triple_click"):
            actions.append(common.click(_needs_point(call), clicks=3))
        elif name in ("right_single", "right_click"):
            actions.append(common.click(_needs_point(call), button="right"))
        elif name in ("middle_single", "middle_click"):
            actions.append(common.click(_needs_point(call), button="middle"))
        elif name in ("hover", "mouse_move", "move_to"):
            actions.append(common.move(_needs_point(call)))
        elif name in ("drag", "select", "left_drag"):
            start = _needs_point(call)
            end = _point(call, _END_KEYS)
            if end is None:
                raise ActionParseError(f"{call.name} needs an end_box='(x3,y3)' as well")
            actions.append(common.drag(start, end))
        elif name in ("hotkey", "press", "key", "keydown"):
            keys = call.get("key", "keys", "hotkey")
            if keys is None and call.args:
                keys = call.args[0]
            if not keys:
                raise ActionParseError(f"{call.name} needs key='...', e.g. hotkey(key='ctrl c')")
            actions.append(common.hotkey(keys))
        elif name in ("type", "typing", "input"):
            content = call.get("content", "text")
            if content is None and call.args:
                content = call.args[0]
            if content is None:
                raise ActionParseError("type needs content='...'")
            actions.extend(common.typing(content))
        elif name == "scroll":
            direction = (call.get("direction") or "").strip().lower()
            if direction not in _DIRECTIONS:
                raise ActionParseError("scroll needs direction='down', 'up', 'right' or 'left'")
            actions.append(common.scroll(direction, 5, _point(call)))
        elif name in ("wait", "sleep"):
            actions.append(common.wait(5.0))
        elif name in ("finished", "finish", "done"):
            actions.append(common.done(call.get("content", "answer") or ""))
        elif name in ("call_user", "calluser"):
            question = (call.get("content", "question") or thought).strip() or (
                "The agent needs your help to go on."
            )
        else:
            raise ActionParseError(f"unknown action {call.name}(): use one of {KNOWN_ACTIONS}")
        if question is not None:
            # Nothing after a call to the user can run before the user answers.
            break
    return actions, question


_BARE_BOX: Final = re.compile(r"((?:start|end)_box=)(['\"])\s*(\([^'\"()]*\))\s*\2")


def with_box_tokens(action: str) -> str:
    """Put back the ``<|box_start|>`` tokens a server stripped, as the model writes them."""
    return _BARE_BOX.sub(r"\1\2<|box_start|>\3<|box_end|>\2", action)


class UITars15(Family):
    name = "uitars"
    title = "UI-TARS-1.5"
    model_hints: ClassVar[tuple[str, ...]] = (
        "ui-tars-1.5",
        "uitars-1.5",
        "ui-tars-15",
        "ui-tars-1-5",
    )
    space: ClassVar[CoordSpace] = "pixels"
    resize = True
    min_pixels = 100 * 28 * 28
    images = 5
    sampling: ClassVar[Any] = MappingProxyType({"temperature": 0.0, "max_tokens": 400})
    correction_text = (
        "Your last reply could not be used: {problem}. Answer with one Thought and one "
        "Action from the action space, for example:\n"
        "Thought: The Save button is at the bottom right; I click it.\n"
        "Action: click(start_box='<|box_start|>(x1,y1)<|box_end|>')"
    )
    action_space: ClassVar[str] = _BOX_ACTIONS

    def render(self, view: View) -> list[ChatMessage]:
        messages: list[ChatMessage] = [
            {"role": "user", "content": tars_prompt(self.action_space, view.task)}
        ]
        first = self.shown(view.turns)
        for index, turn in enumerate(view.turns):
            if index >= first and turn.screenshot:
                messages.append({"role": "user", "content": [image_part(turn.screenshot)]})
            messages.append({"role": "assistant", "content": turn.reply})
            note = note_for(turn)
            if note:
                messages.append({"role": "user", "content": note})
        current: list[ChatMessage] = [image_part(view.screenshot)]
        if view.feedback:
            current.append(text_part(view.feedback))
        messages.append({"role": "user", "content": current})
        return messages

    def read(
        self, content: str | None, tool_calls: Sequence[ToolCall], context: ParseContext
    ) -> FamilyReply:
        text = content or ""
        if not text.strip():
            raise ActionParseError("the reply is empty")
        part = split(text)
        found = calls(part.action)
        if not found:
            raise ActionParseError("the Action line holds no action")
        actions, question = call_actions(found, part.thought)
        action_text = self.replay_action(part.action)
        return FamilyReply(
            actions=tuple(actions),
            thought=part.thought,
            reply=f"Thought: {part.thought}\nAction: {action_text}",
            summary=action_text,
            question=question,
        )

    def replay_action(self, action: str) -> str:
        return with_box_tokens(action)


class UITars10(UITars15):
    name = "uitars-1.0"
    title = "UI-TARS-1.0"
    model_hints = ("ui-tars", "uitars")
    space: ClassVar[CoordSpace] = "rel1000"
    resize = False
    sampling: ClassVar[Any] = MappingProxyType(
        {"temperature": 0.0, "top_p": 0.7, "max_tokens": 1000}
    )
