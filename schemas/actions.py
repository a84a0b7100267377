"""The one internal action space.

Every planner input format (native tool calls, JSON in text, Anthropic
``computer``, OpenAI ``computer_use_preview``) is mapped onto these models, and
the actuator executes only these. Coordinates are screen pixels; a pointer
action may name a ``target`` in words instead, which the grounder resolves
before the action reaches the actuator.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

MouseButton = Literal["left", "right", "middle"]
ScrollDirection = Literal["up", "down", "left", "right"]


def new_action_id() -> str:
    return uuid.uuid4().hex


class Point(BaseModel):
    model_config = ConfigDict(extra="forbid")

    x: int
    y: int


class _Action(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Idempotency key: the actuator executes an id at most once and answers a
    # repeat from the first execution.
    id: str = Field(default_factory=new_action_id, min_length=1, max_length=64)


class _Pointed(_Action):
    """An action at a point, given as pixels or as a description to ground."""

    x: int | None = None
    y: int | None = None
    target: str | None = Field(
        default=None,
        max_length=500,
        description="What to point at, in words, e.g. 'the Terminal icon in the dock'.",
    )

    @model_validator(mode="after")
    def _point_or_target(self) -> _Pointed:
        if (self.x is None) != (self.y is None):
            raise ValueError("give both x and y, or neither")
        if self.x is None and not self.target:
            raise ValueError("give x and y, or a target description")
        return self

    @property
    def point(self) -> Point | None:
        if self.x is None or self.y is None:
            return None
        return Point(x=self.x, y=self.y)


class ClickAction(_Pointed):
    action: Literal["click"] = "click"
    button: MouseButton = "left"
    clicks: int = Field(default=1, ge=1, le=3, description="2 = double click, 3 = triple click")
    modifiers: list[str] = Field(
        default_factory=list, description="Keys held during the click, e.g. ['ctrl']"
    )


class MoveAction(_Pointed):
    action: Literal["move"] = "move"


class ScrollAction(_Action):
    action: Literal["scroll"] = "scroll"
    direction: ScrollDirection
    amount: int = Field(default=3, ge=1, le=50, description="Wheel notches")
    x: int | None = None
    y: int | None = None
    target: str | None = Field(default=None, max_length=500)


class DragAction(_Action):
    action: Literal["drag"] = "drag"
    path: list[Point] = Field(min_length=2, max_length=200)
    button: MouseButton = "left"


class TypeAction(_Action):
    action: Literal["type"] = "type"
    text: str = Field(min_length=1, max_length=20_000)


class KeyAction(_Action):
    action: Literal["key"] = "key"
    keys: str = Field(
        min_length=1,
        max_length=200,
        description="xdotool-style combo, e.g. 'ctrl+alt+t', 'Return', 'super'",
    )


class HoldKeyAction(_Action):
    action: Literal["hold_key"] = "hold_key"
    keys: str = Field(min_length=1, max_length=200)
    duration: float = Field(ge=0, le=30)


class WaitAction(_Action):
    action: Literal["wait"] = "wait"
    seconds: float = Field(default=1.0, ge=0, le=60)


class ScreenshotAction(_Action):
    action: Literal["screenshot"] = "screenshot"


class CursorPositionAction(_Action):
    action: Literal["cursor_position"] = "cursor_position"


class ShellAction(_Action):
    action: Literal["shell"] = "shell"
    command: str = Field(min_length=1, max_length=100_000)
    cwd: str | None = None
    timeout: float = Field(default=30.0, gt=0, le=3600)


class OpenUrlAction(_Action):
    action: Literal["open_url"] = "open_url"
    url: str = Field(min_length=1, max_length=8_000)


class LaunchAppAction(_Action):
    action: Literal["launch_app"] = "launch_app"
    app: str = Field(min_length=1, max_length=200, description="e.g. 'terminal', 'firefox'")


class UploadFileAction(_Action):
    action: Literal["upload_file"] = "upload_file"
    path: str = Field(min_length=1, max_length=4_096, description="Destination in the sandbox")
    data_b64: str = Field(max_length=7_000_000, description="File content, base64 (<= 5 MiB)")


class DownloadFileAction(_Action):
    action: Literal["download_file"] = "download_file"
    path: str = Field(min_length=1, max_length=4_096)


class DoneAction(_Action):
    action: Literal["done"] = "done"
    message: str = Field(default="", max_length=20_000, description="The final answer")


class FailAction(_Action):
    action: Literal["fail"] = "fail"
    reason: str = Field(min_length=1, max_length=20_000)


Action = Annotated[
    ClickAction
    | MoveAction
    | ScrollAction
    | DragAction
    | TypeAction
    | KeyAction
    | HoldKeyAction
    | WaitAction
    | ScreenshotAction
    | CursorPositionAction
    | ShellAction
    | OpenUrlAction
    | LaunchAppAction
    | UploadFileAction
    | DownloadFileAction
    | DoneAction
    | FailAction,
    Field(discriminator="action"),
]

# Actions that end a task; the planner handles them, the actuator never sees them.
TerminalAction = DoneAction | FailAction

ACTION_NAMES: tuple[str, ...] = (
    "click",
    "move",
    "scroll",
    "drag",
    "type",
    "key",
    "hold_key",
    "wait",
    "screenshot",
    "cursor_position",
    "shell",
    "open_url",
    "launch_app",
    "upload_file",
    "download_file",
    "done",
    "fail",
)
