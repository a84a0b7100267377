"""OpenCUA (xlang-ai): ``## Thought`` / ``## Action`` / ``## Code`` with pyautogui code.

Facts this follows (the OpenCUA repository and OSWorld's OpenCUA agent):

* a system prompt asking for a thought, a one-sentence action and the action
  as PyAutoGUI code, plus ``computer.triple_click`` and
  ``computer.terminate(status=...)`` (``'failure'`` when the task cannot be
  done; ``'fail'`` is accepted too);
* context: 3 images in all: the 2 newest earlier steps as (screenshot,
  ``# Step k:`` + thought and action) pairs, older steps merged into one
  assistant message as text, never the code; the current screenshot goes
  last with the task instruction;
* OpenCUA-7B and -32B answer in pixels of the image after the Qwen2.5-VL
  ``smart_resize`` (factor 28, 3136 to 12845056 pixels);
* sampling: temperature 0, top_p 0.9, 1500 tokens.

The code is read, never run: each statement must be a call to a known
function with literal arguments.
"""

from __future__ import annotations

import ast
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

_SYSTEM: Final = (
    "You are a GUI agent. You are given a task and a screenshot of the screen. You need to "
    "perform a series of pyautogui actions to complete the task. If the task is not possible "
    "to do, output the action computer.terminate(status='failure').\n\n"
    "For each step, provide your response in this format:\n\n"
    "## Thought:\n"
    "  - Assess progress step by step: what is done, what went wrong, how to recover.\n"
    "  - Weigh the possible next actions and pick the most logical one; say what it will do.\n"
    "  - For typing: note where the cursor is, count repeated key presses, and say what "
    "the text should read afterwards.\n"
    "  - Reason in the first person.\n\n"
    "## Action:\n"
    "  One clear instruction: name the target element (its label, in its own language, or "
    "its shape, colour and position), never coordinates; for keyboard actions, give counts "
    "and the expected text.\n\n"
    "## Code:\n"
    "  The action as PyAutoGUI code in a ```python block, or one of these functions:\n"
    '- {"name": "computer.triple_click", "description": "Triple click on the screen", '
    '"parameters": {"type": "object", "properties": {"x": {"type": "number", "description": '
    '"The x coordinate of the triple click"}, "y": {"type": "number", "description": '
    '"The y coordinate of the triple click"}}, "required": ["x", "y"]}}\n'
    '- {"name": "computer.terminate", "description": "Terminate the current task and report '
    'its completion status", "parameters": {"type": "object", "properties": {"status": '
    '{"type": "string", "enum": ["success", "failure"], "description": "The status of the '
    'task"}}, "required": ["status"]}}'
)

INSTRUCTION: Final = (
    "# Task Instruction:\n{task}\n\nPlease generate the next move according to the "
    "screenshot, task instruction and previous steps (if provided).\n"
)

_SECTION: Final = re.compile(
    r"^[ \t]*(#{1,3}[ \t]*)?(Observation|Thought|Action|Code)\b[ \t]*(:)?[ \t]*",
    re.MULTILINE | re.IGNORECASE,
)
_FENCE: Final = re.compile(r"```[ \t]*(?:python|code|py)?[ \t]*\n?(.*?)```", re.S | re.IGNORECASE)
_STEP_HEADER: Final = re.compile(r"^#\s*Step\s*:?\s*\d*:?\s*$", re.MULTILINE | re.IGNORECASE)


class OpenCUA(Family):
    name = "opencua"
    title = "OpenCUA"
    model_hints = ("opencua",)
    space: ClassVar[CoordSpace] = "pixels"
    resize = True
    images = 3
    sampling = MappingProxyType({"temperature": 0.0, "top_p": 0.9, "max_tokens": 1500})
    correction_text = (
        "Your last reply could not be used: {problem}. Answer in this format:\n"
        "## Thought:\n...\n\n## Action:\n...\n\n## Code:\n```python\n"
        "pyautogui.click(x=123, y=456)\n```"
    )

    def render(self, view: View) -> list[ChatMessage]:
        messages: list[ChatMessage] = [{"role": "system", "content": _SYSTEM}]
        first = self.shown(view.turns)
        earlier: list[str] = []
        for index, turn in enumerate(view.turns[:first], 1):
            text = f"# Step {index}:\n{turn.reply}"
            note = note_for(turn)
            earlier.append(f"{text}Result: {note}\n" if note else text)
        if earlier:
            messages.append({"role": "assistant", "content": "\n".join(earlier)})
        for index, turn in enumerate(view.turns[first:], first + 1):
            if turn.screenshot:
                messages.append({"role": "user", "content": [image_part(turn.screenshot)]})
            messages.append({"role": "assistant", "content": f"# Step {index}:\n{turn.reply}"})
            note = note_for(turn)
            if note:
                messages.append({"role": "user", "content": note})
        instruction = INSTRUCTION.format(task=view.task)
        if view.feedback:
            instruction += f"\n{view.feedback}\n"
        messages.append(
            {"role": "user", "content": [image_part(view.screenshot), text_part(instruction)]}
        )
        return messages

    def read(
        self, content: str | None, tool_calls: Sequence[ToolCall], context: ParseContext
    ) -> FamilyReply:
        text = re.sub(r"</?think>", "", content or "", flags=re.IGNORECASE)
        sections = _sections(text)
        fences = _FENCE.findall(text)
        code = fences[-1] if fences else sections.get("code", "")
        if not code.strip():
            raise ActionParseError("there is no ## Code: block with pyautogui code")
        thought = sections.get("thought") or sections.get("observation") or ""
        action_text = sections.get("action", "")
        if not thought and not action_text:
            # An answer with only a code block: whatever precedes it is the thought.
            thought = _STEP_HEADER.sub("", text[: text.find("```")]).strip()
        actions = _code_actions(code, context, thought or action_text)
        return FamilyReply(
            actions=tuple(actions),
            thought="\n".join(p for p in (thought, action_text) if p),
            reply=f"## Thought:\n{thought}\n\n## Action:\n{action_text}\n",
            summary=action_text or code.strip(),
        )


def _sections(text: str) -> dict[str, str]:
    found: dict[str, str] = {}
    # A heading needs its hashes or its colon: "Action" opening a sentence is prose.
    marks = [m for m in _SECTION.finditer(text) if m.group(1) or m.group(3)]
    if not marks:
        # A bare code block or a plain sentence: no sections to read.
        return found
    for mark, following in zip(marks, [*marks[1:], None], strict=True):
        end = following.start() if following is not None else len(text)
        found.setdefault(mark.group(2).lower(), text[mark.end() : end].strip())
    return found


# --- reading the code -------------------------------------------------------

_PARAMETERS: Final[dict[str, tuple[str, ...]]] = {
    "click": ("x", "y", "clicks", "interval", "button"),
    "doubleclick": ("x", "y", "interval", "button"),
    "tripleclick": ("x", "y", "interval", "button"),
    "triple_click": ("x", "y"),
    "rightclick": ("x", "y"),
    "middleclick": ("x", "y"),
    "moveto": ("x", "y", "duration"),
    "dragto": ("x", "y", "duration", "button"),
    "drag": ("xOffset", "yOffset", "duration", "button"),
    "mousedown": ("x", "y", "button"),
    "mouseup": ("x", "y", "button"),
    "scroll": ("clicks", "x", "y"),
    "hscroll": ("clicks", "x", "y"),
    "vscroll": ("clicks", "x", "y"),
    "press": ("keys", "presses", "interval"),
    "write": ("message", "interval"),
    "typewrite": ("message", "interval"),
    "terminate": ("status", "answer"),
    "wait": ("seconds",),
    "sleep": ("seconds",),
}
_MODULES: Final = frozenset({"pyautogui", "computer", "time"})


class _Pointer:
    """Where the pointer is while the code runs in our head (model coordinates)."""

    def __init__(self, start: tuple[int, int] | None) -> None:
        self.at = start
        self.pressed: tuple[int, int] | None = None


def _code_actions(code: str, context: ParseContext, thought: str) -> list[Action]:
    try:
        tree = ast.parse(code.strip())
    except SyntaxError as exc:
        raise ActionParseError(f"the code is not valid Python ({exc.msg})") from None
    pointer = _Pointer(context.cursor)
    actions: list[Action] = []
    for statement in tree.body:
        if isinstance(statement, ast.Import | ast.ImportFrom):
            continue
        if not isinstance(statement, ast.Expr) or not isinstance(statement.value, ast.Call):
            raise ActionParseError(
                "the code may only call pyautogui or computer functions, one call per line"
            )
        actions.extend(_call(statement.value, pointer, context, thought))
    if pointer.pressed is not None:
        raise ActionParseError("mouseDown() has no matching mouseUp(): use dragTo(x, y)")
    if not actions:
        raise ActionParseError("the code holds no action")
    return actions


def _call(node: ast.Call, pointer: _Pointer, context: ParseContext, thought: str) -> list[Action]:
    name = _dotted(node.func)
    module, _, function = name.rpartition(".")
    if module not in _MODULES:
        raise ActionParseError(f"{name}() is not an action: use pyautogui or computer functions")
    key = function.lower()
    args = _arguments(node, key, name)

    def point(required: bool = True) -> tuple[int, int] | None:
        x, y = args.get("x"), args.get("y")
        if isinstance(x, list | tuple) and y is None:
            if len(x) != 2:
                raise ActionParseError(f"{name} needs one point: x= and y=, or (x, y)")
            x, y = x[0], x[1]
        if x is None or y is None:
            if required and pointer.at is None:
                raise ActionParseError(f"{name} needs x= and y=")
            return pointer.at
        values = (common.number(x, f"{name}: x"), common.number(y, f"{name}: y"))
        if all(0 <= v <= 1 and not float(v).is_integer() for v in values):
            raise ActionParseError(
                f"{name} got fractions ({values[0]}, {values[1]}): give pixel coordinates of "
                f"the screenshot (x 0-{context.width - 1}, y 0-{context.height - 1})"
            )
        pointer.at = (round(values[0]), round(values[1]))
        return pointer.at

    if key in ("click", "doubleclick", "tripleclick", "triple_click", "rightclick", "middleclick"):
        where = point()
        assert where is not None
        button = {"rightclick": "right", "middleclick": "middle"}.get(
            key, str(args.get("button") or "left").lower()
        )
        if button not in ("left", "right", "middle"):
            raise ActionParseError(f"{name}: button must be left, right or middle")
        clicks = {"doubleclick": 2, "tripleclick": 3, "triple_click": 3}.get(
            key, round(common.number(args.get("clicks", 1), f"{name}: clicks"))
        )
        return [common.click(where, button=button, clicks=max(1, min(3, clicks)))]  # type: ignore[arg-type]
    if key == "moveto":
        where = point()
        assert where is not None
        return [common.move(where)]
    if key in ("dragto", "drag"):
        start = pointer.at
        if start is None:
            raise ActionParseError(f"{name} starts where the pointer is: moveTo(x, y) first")
        end: tuple[int, int] | None
        if key == "drag":
            dx = common.number(args.get("xOffset", 0), f"{name}: xOffset")
            dy = common.number(args.get("yOffset", 0), f"{name}: yOffset")
            end = (round(start[0] + dx), round(start[1] + dy))
            pointer.at = end
        else:
            end = point()
            assert end is not None
        return [common.drag(start, end)]
    if key == "mousedown":
        pointer.pressed = point()
        return []
    if key == "mouseup":
        if pointer.pressed is None:
            raise ActionParseError("mouseUp() without a mouseDown() first")
        released = point()
        assert released is not None
        start, pointer.pressed = pointer.pressed, None
        return [common.drag(start, released)]
    if key in ("scroll", "vscroll", "hscroll"):
        amount = common.number(args.get("clicks"), f"{name}: clicks")
        if amount == 0:
            raise ActionParseError(f"{name} needs a non-zero number of clicks")
        if key == "hscroll":
            direction = "right" if amount > 0 else "left"
        else:
            direction = "up" if amount > 0 else "down"
        where = point(required=False) if "x" in args else None
        return [common.scroll(direction, common.notches(amount), where)]
    if key == "hotkey":
        keys = [str(k) for k in node_literals(node, name)]
        return [common.hotkey(keys)]
    if key == "press":
        pressed = args.get("keys")
        names = [pressed] if isinstance(pressed, str) else pressed
        if not isinstance(names, list | tuple) or not names:
            raise ActionParseError(f"{name} needs a key name, e.g. press('enter')")
        times = round(common.number(args.get("presses", 1), f"{name}: presses"))
        return [common.presses([str(k) for k in names], times)]
    if key in ("write", "typewrite"):
        message = args.get("message")
        if isinstance(message, list | tuple):
            # typewrite(['a', 'enter']) presses keys one after another.
            return [common.presses([str(k) for k in message])]
        if not isinstance(message, str):
            raise ActionParseError(f"{name} needs the text to type")
        return list(common.typing(message))
    if key in ("wait", "sleep"):
        default = 20.0 if module == "computer" else 1.0
        return [common.wait(common.number(args.get("seconds", default), f"{name}: seconds"))]
    if key == "terminate":
        status = str(args.get("status") or "").strip().lower()
        if status in ("failure", "fail", "failed"):
            return [common.fail(str(args.get("answer") or thought))]
        if status != "success":
            raise ActionParseError("computer.terminate needs status='success' or 'failure'")
        return [common.done(str(args.get("answer") or ""))]
    if key in ("keydown", "keyup"):
        raise ActionParseError(f"{name} is not supported: use pyautogui.hotkey('ctrl', 'c')")
    raise ActionParseError(f"{name}() is not a supported action")


def _dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    raise ActionParseError("call functions by name, e.g. pyautogui.click(x=1, y=2)")


def node_literals(node: ast.Call, name: str) -> list[Any]:
    values: list[Any] = []
    for arg in node.args:
        values.append(_literal(arg, name))
    return values


def _arguments(node: ast.Call, key: str, name: str) -> dict[str, Any]:
    names = _PARAMETERS.get(key, ())
    args: dict[str, Any] = {}
    if key != "hotkey":
        for index, arg in enumerate(node.args):
            if index < len(names):
                args[names[index]] = _literal(arg, name)
    for keyword in node.keywords:
        if keyword.arg is not None:
            args[keyword.arg] = _literal(keyword.value, name)
    return args


def _literal(node: ast.expr, name: str) -> Any:
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError):
        # TypeError: a literal that cannot be built, e.g. {[1]: 2} (unhashable key).
        raise ActionParseError(
            f"the arguments of {name} must be plain values (numbers, strings)"
        ) from None
