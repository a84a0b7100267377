"""One line of a trajectory export's ``steps.jsonl``.

``GET /api/sessions/<sid>/trajectory`` (and ``selfagent export SID``) answers a
zip of ``steps.jsonl`` (one :class:`TrajectoryStep` per line, in order) and the
step screenshots under ``images/``, which the lines name by path. Made from
the session's events and what the planner kept of each step, for
fine-tuning or evaluation data.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import Field

from .actions import Action
from .messages import ErrorInfo, Message, SubjectId


class ModelCall(Message):
    """The model call a step's action came from (the first step of a reply carries it)."""

    messages: list[dict[str, Any]] | None = Field(
        default=None,
        description="The chat messages sent, as sent, except that each screenshot's data URI "
        "is replaced by the path of that step's image in the zip (or image://not-kept); "
        "null when it was not kept",
    )
    reply: dict[str, Any] | None = Field(
        default=None,
        description="What the model answered: content, tool_calls (name, arguments as JSON "
        "text), finish_reason, model",
    )
    prompt_tokens: int = Field(default=0, ge=0, description="From the reply's usage")
    completion_tokens: int = Field(default=0, ge=0, description="From the reply's usage")
    model_ms: float = Field(default=0.0, ge=0, description="How long the call took")


class Grounding(Message):
    """Where the grounder found the target the action named in words."""

    target: str
    x: int
    y: int
    method: str


class StepResult(Message):
    ok: bool
    error: ErrorInfo | None = None
    output: str | None = None


class StepTimings(Message):
    model_ms: float = 0.0
    settle_ms: float = Field(default=0.0, description="Waiting for the screen to settle")
    duration_ms: float = Field(default=0.0, description="The action, settle included")


class StepImages(Message):
    before: str | None = Field(
        default=None, description="Path in the zip of the screenshot the model saw"
    )
    after: str | None = Field(
        default=None, description="Path in the zip of the screenshot after the action"
    )


class TrajectoryStep(Message):
    """One step: the instruction, the model call, the action, its grounding and result."""

    session_id: SubjectId
    task_id: SubjectId
    step: int = Field(ge=1, description="The step's number within its task, from 1")
    instruction: str = Field(description="The task's instruction")
    model: ModelCall | None = Field(
        default=None, description="The model call (on the first step of each reply)"
    )
    thought: str = ""
    action: Action = Field(description="The action as the model planned it (model space)")
    executed: Action | None = Field(
        default=None, description="The action as carried out (screen pixels), if it ran"
    )
    grounding: Grounding | None = None
    result: StepResult | None = Field(
        default=None, description="null for done and fail, and for a step that never reported"
    )
    timings: StepTimings
    images: StepImages
    planned_at: datetime
    task_status: str | None = Field(
        default=None, description="How the task ended: succeeded, failed, stopped; null if running"
    )
