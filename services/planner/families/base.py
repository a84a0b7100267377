"""What a planner model family is: prompt, conversation, sampling, parser, coordinates.

A family is how one kind of model was trained to be driven. The runner asks
the configured family to turn the task, the earlier turns and the current
screenshot into chat messages (:meth:`Family.render`), and to turn the reply
into our typed actions (:meth:`Family.parse`). Everything else stays in the
runner: budgets, controls, grounding, acting, and (in ``coords.py``) the one
mapping from the family's coordinate space to the screen.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar

from pydantic import ValidationError

from selfagent.errors import ActionParseError
from selfagent.grounder.resize import QWEN2_FACTOR, smart_resize
from selfagent.llm import ToolCall
from selfagent.schemas.actions import Action

from ..coords import CoordSpace

ChatMessage = dict[str, Any]

log = logging.getLogger(__name__)

# The Qwen2.5-VL processor's own pixel budget: the grid the absolute-pixel
# families (UI-TARS-1.5, Qwen2.5-VL, OpenCUA-7B/32B) answer on.
QWEN25_MIN_PIXELS = 3136
QWEN25_MAX_PIXELS = 16384 * 28 * 28


@dataclass
class Turn:
    """One earlier model reply and what came of it, as the runner keeps it.

    ``reply`` is what the family replays as the model's own turn (for the
    ``tools`` family the action JSON, for the native ones the model's text as
    it should be read back). ``summary`` is one line for families that keep
    older steps as text. ``screenshot`` is the data URI of the screenshot the
    reply was chosen on, or None once it is too old to be sent again.
    """

    step: int
    reply: str
    outcome: str
    screenshot: str | None = None
    summary: str = ""

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"


@dataclass(frozen=True)
class View:
    """What the model is shown this turn."""

    task: str
    turns: Sequence[Turn]
    screenshot: str
    width: int
    height: int
    # A note for this turn only: a correction, the user's answer, a resume.
    feedback: str | None = None


@dataclass(frozen=True)
class ParseContext:
    """What a parser may need beyond the text: the image size and the pointer.

    ``cursor`` is where the pointer is, in the family's own coordinates
    (some actions, e.g. Qwen's ``left_click_drag``, start from it).
    """

    width: int
    height: int
    cursor: tuple[int, int] | None = None


@dataclass(frozen=True)
class FamilyReply:
    """A reply read: actions to run in order (or a question for the user), and the thought."""

    actions: tuple[Action, ...]
    thought: str
    reply: str
    summary: str
    question: str | None = None


class Family(ABC):
    """One model family. Subclasses set the class attributes and the three methods."""

    name: ClassVar[str]
    title: ClassVar[str]
    # Substrings of a normalised model name that select this family for PLANNER_FAMILY=auto.
    model_hints: ClassVar[tuple[str, ...]] = ()
    space: ClassVar[CoordSpace] = "pixels"
    # Absolute-pixel families get the screenshot on their processor's grid, so
    # the pixels they answer in are the pixels we sent.
    resize: ClassVar[bool] = False
    factor: ClassVar[int] = QWEN2_FACTOR
    min_pixels: ClassVar[int] = QWEN25_MIN_PIXELS
    max_pixels: ClassVar[int] = QWEN25_MAX_PIXELS
    # The context rule: screenshots per request, the current one included.
    images: int = 1
    # The model's recommended sampling; an explicit PLANNER_LLM_* setting wins.
    sampling: ClassVar[Mapping[str, Any]] = MappingProxyType({})
    # Send the action space as tools= too (only the generic JSON family does).
    sends_tools: ClassVar[bool] = False
    # What to tell the model after a reply it could not use; {problem} is filled in.
    correction_text: ClassVar[str] = "Your last reply could not be used: {problem}"

    def image_size(self, width: int, height: int) -> tuple[int, int]:
        """The size to send a ``width`` x ``height`` screenshot at."""
        if not self.resize:
            return width, height
        h, w = smart_resize(height, width, self.factor, self.min_pixels, self.max_pixels)
        return w, h

    def shown(self, turns: Sequence[Turn]) -> int:
        """Index of the first turn whose screenshot is still sent (the newest ones are)."""
        return max(len(turns) - (self.images - 1), 0)

    def tools(self) -> list[dict[str, Any]] | None:
        """Function tools to send with the request, if the family uses them."""
        return None

    def correction(self, problem: str) -> str:
        return self.correction_text.format(problem=problem)

    @abstractmethod
    def render(self, view: View) -> list[ChatMessage]:
        """The chat messages for this turn."""

    def parse(
        self, content: str | None, tool_calls: Sequence[ToolCall], context: ParseContext
    ) -> FamilyReply:
        """Read the reply; anything a reply can make a parser raise becomes ActionParseError.

        A model's reply is input from outside: whatever in it a parser did not
        foresee (an over-long text, a number too large, a list where a point
        belongs) must come back to the model as a correction, never end the
        task as an internal error. The runner and the canary both call this.

        Raises:
            ActionParseError: nothing usable; the message is for the model.
        """
        try:
            return self.read(content, tool_calls, context)
        except ActionParseError:
            raise
        except ValidationError as exc:
            raise ActionParseError(_validation_problem(exc)) from None
        except OverflowError:
            raise ActionParseError("a number in the action is too large") from None
        except (ValueError, TypeError, LookupError) as exc:
            # Not the model's fault alone: the parser missed a case, so keep a trace.
            log.warning("the %s parser could not read a reply", self.name, exc_info=True)
            raise ActionParseError(
                f"the action's arguments could not be read ({type(exc).__name__}: {exc}); "
                "give each argument as a plain number or string"
            ) from None

    @abstractmethod
    def read(
        self, content: str | None, tool_calls: Sequence[ToolCall], context: ParseContext
    ) -> FamilyReply:
        """Read the reply (the family's own parser; callers use :meth:`parse`).

        Raises:
            ActionParseError: nothing usable; the message is for the model.
        """


# --- message helpers --------------------------------------------------------


def text_part(text: str) -> ChatMessage:
    return {"type": "text", "text": text}


def image_part(url: str) -> ChatMessage:
    return {"type": "image_url", "image_url": {"url": url}}


def note_for(turn: Turn) -> str | None:
    """What the model should hear about a turn's outcome; None when it simply worked."""
    if turn.ok:
        return None
    return turn.outcome


def _validation_problem(error: ValidationError) -> str:
    """What was out of bounds, e.g. ``text: String should have at most 20000 characters``."""
    problems = []
    for item in error.errors(include_url=False, include_input=False)[:3]:
        where = ".".join(str(part) for part in item["loc"])
        problems.append(f"{where}: {item['msg']}" if where else item["msg"])
    return f"the action is out of bounds: {'; '.join(problems)}"


def require_actions(actions: Sequence[Action], question: str | None, what: str) -> None:
    if not actions and question is None:
        raise ActionParseError(f"no action found in {what}")
