"""Messages exchanged on the bus. Subjects are in :mod:`selfagent.schemas.subjects`."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .actions import Action
from .subjects import ID_PATTERN


def _now() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return uuid.uuid4().hex


SubjectId = Annotated[str, Field(pattern=ID_PATTERN)]
"""An id that becomes a subject token or a KV key; its JSON Schema carries the pattern."""


class Message(BaseModel):
    # Unknown fields are an error, so a typo in an automation client is caught
    # at the bus edge instead of being silently ignored.
    model_config = ConfigDict(extra="forbid")


class ErrorCode(StrEnum):
    INVALID_MESSAGE = "invalid_message"
    INVALID_ACTION = "invalid_action"
    OFF_SCREEN = "off_screen"
    UNKNOWN_KEY = "unknown_key"
    NOT_FOUND = "not_found"
    VNC_UNAVAILABLE = "vnc_unavailable"
    SANDBOX_UNAVAILABLE = "sandbox_unavailable"
    TIMEOUT = "timeout"
    LLM_ERROR = "llm_error"
    BUDGET_EXHAUSTED = "budget_exhausted"
    STOPPED = "stopped"
    DENIED = "denied"
    INTERRUPTED = "interrupted"
    INTERNAL = "internal"


class ErrorInfo(Message):
    code: ErrorCode
    message: str


class Reply(Message):
    """Base of every request/reply answer: ``ok`` false carries an ``error``."""

    ok: bool = True
    error: ErrorInfo | None = None


class ErrorReply(Reply):
    """What a service answers to a request it cannot even parse."""

    ok: bool = False


# --- tasks and control ------------------------------------------------------


class TaskSubmitted(Message):
    task_id: SubjectId = Field(default_factory=new_id)
    session_id: SubjectId = Field(default_factory=new_id)
    prompt: str = Field(min_length=1, max_length=20_000)
    sandbox_id: SubjectId | None = Field(
        default=None,
        description="Run on this fixed desktop. Null: the session's own desktop, leased from "
        "the provisioner when the planner runs with per-session desktops, else the planner's "
        "configured one",
    )
    max_steps: int | None = Field(default=None, ge=1, le=500)
    submitted_at: datetime = Field(default_factory=_now)


ControlVerb = Literal[
    "pause", "resume", "stop", "takeover", "release", "answer", "approve", "deny", "set_mode"
]
ApprovalMode = Literal["ask", "autonomous", "review-all"]
"""How the approval gate treats a session's actions.

``ask``: the policy decides (ask before risky actions); ``autonomous``: never
ask (a ``deny`` rule still denies); ``review-all``: ask before every action.
"""


class ControlCommand(Message):
    session_id: SubjectId
    command: ControlVerb
    text: str | None = Field(
        default=None,
        max_length=20_000,
        description="answer: the person's reply to the question the task is waiting on; "
        "approve/deny: an optional note the model is told",
    )
    approval_id: SubjectId | None = Field(
        default=None, description="approve/deny: the approval.requested event's approval_id"
    )
    mode: ApprovalMode | None = Field(
        default=None, description="set_mode: the session's approval mode from now on"
    )
    by: str | None = Field(
        default=None, max_length=200, description="Who sent it, kept with an approval decision"
    )
    sent_at: datetime = Field(default_factory=_now)

    @model_validator(mode="after")
    def _answer_has_text(self) -> ControlCommand:
        if self.command == "answer" and not (self.text and self.text.strip()):
            raise ValueError("answer needs a non-empty text")
        if self.command in ("approve", "deny") and self.approval_id is None:
            raise ValueError(f"{self.command} needs the approval_id it answers")
        if self.command == "set_mode" and self.mode is None:
            raise ValueError("set_mode needs a mode")
        return self


# --- session events ---------------------------------------------------------


class _Event(Message):
    session_id: SubjectId
    task_id: SubjectId
    at: datetime = Field(default_factory=_now)


class TaskStarted(_Event):
    kind: Literal["task.started"] = "task.started"
    prompt: str


class StepPlanned(_Event):
    """A step the model chose.

    The model call's usage (from the reply's ``usage``) and time are on the
    first step of a reply; the other actions of a multi-action reply carry 0.
    """

    kind: Literal["step.planned"] = "step.planned"
    step: int
    action: Action
    thought: str = ""
    prompt_tokens: int = Field(default=0, ge=0, description="The model call's prompt tokens")
    completion_tokens: int = Field(
        default=0, ge=0, description="The model call's completion tokens"
    )
    model_ms: float = Field(default=0.0, ge=0, description="How long the model call took")


class StepGrounded(_Event):
    kind: Literal["step.grounded"] = "step.grounded"
    step: int
    target: str
    x: int
    y: int
    method: str


class StepExecuted(_Event):
    kind: Literal["step.executed"] = "step.executed"
    step: int
    action: Action
    ok: bool
    error: ErrorInfo | None = None
    output: str | None = None
    settle_ms: float = 0.0
    duration_ms: float = 0.0
    screen_width: int = Field(
        default=0, ge=0, description="The screen the action's pixels are of (0: not known)"
    )
    screen_height: int = Field(default=0, ge=0)


class AgentMessage(_Event):
    kind: Literal["message"] = "message"
    # "user": the person's answer to a question the task asked (see needs_user).
    role: Literal["agent", "system", "user"] = "agent"
    text: str


class ApprovalRequested(_Event):
    """The approval gate holds an action until a person approves or denies it.

    Answer with a ``ControlCommand`` ``approve`` or ``deny`` carrying this
    ``approval_id`` (the web page's buttons, REST or NATS). No answer by
    ``expires_at`` counts as a deny.
    """

    kind: Literal["approval.requested"] = "approval.requested"
    approval_id: SubjectId
    sandbox_id: str
    action: Action
    rule: str = Field(description="The policy rule that matched, or the session's mode")
    point: tuple[int, int] | None = Field(
        default=None, description="Where the action points on the screen, if it does"
    )
    expires_at: datetime


class ApprovalDecided(_Event):
    kind: Literal["approval.decided"] = "approval.decided"
    approval_id: SubjectId
    decision: Literal["approved", "denied"]
    by: str = Field(description="Who decided: the command's sender, or timeout")
    note: str | None = None


class TaskStateChanged(_Event):
    """The task's state between steps.

    ``waiting``: the task waits for a desktop (the provisioner's host is full).
    ``needs_user``: the model asked the person something (UI-TARS
    ``call_user()`` and the like); the task waits until a ``ControlCommand``
    ``answer`` brings the reply, or a ``stop`` ends it.
    """

    kind: Literal["task.state"] = "task.state"
    state: Literal["waiting", "running", "paused", "takeover", "needs_user"]
    question: str | None = Field(default=None, description="needs_user: what the model asks")


TaskStatus = Literal["succeeded", "failed", "stopped"]


class TaskFinished(_Event):
    kind: Literal["task.finished"] = "task.finished"
    status: TaskStatus
    reply: str
    steps: int
    error: ErrorInfo | None = None
    prompt_tokens: int = Field(default=0, ge=0, description="The task's prompt tokens, all calls")
    completion_tokens: int = Field(default=0, ge=0, description="The task's completion tokens")
    tokens: int = Field(default=0, ge=0, description="prompt_tokens + completion_tokens")


SessionEvent = Annotated[
    TaskStarted
    | StepPlanned
    | StepGrounded
    | StepExecuted
    | AgentMessage
    | TaskStateChanged
    | TaskFinished
    | ApprovalRequested
    | ApprovalDecided,
    Field(discriminator="kind"),
]


# --- screenshots, observation and actions -----------------------------------

ImageFormat = Literal["jpeg", "png"]


class Screenshot(Message):
    """An encoded image, inline as base64 (a 720p JPEG is ~100-200 KB)."""

    format: ImageFormat
    width: int
    height: int
    data_b64: str

    @property
    def mime(self) -> str:
        return f"image/{self.format}"

    def data_uri(self) -> str:
        return f"data:{self.mime};base64,{self.data_b64}"


class ObserveRequest(Message):
    format: ImageFormat = "jpeg"
    quality: int = Field(default=85, ge=1, le=100)
    max_width: int | None = Field(default=None, ge=16)
    max_height: int | None = Field(default=None, ge=16)


class Observation(Reply):
    actuator: str = Field(default="", description="The instance of the actuator that answered")
    screen_width: int = 0
    screen_height: int = 0
    cursor: tuple[int, int] | None = None
    screenshot: Screenshot | None = None


class ActRequest(Message):
    action: Action
    # Who the action is for, for the approval gate's events; with per-session
    # desktops the gate takes the session from the desktop's lease instead.
    session_id: SubjectId | None = None
    task_id: SubjectId | None = None
    # A screenshot after the action saves the planner a second round trip.
    observe: ObserveRequest | None = Field(default_factory=ObserveRequest)
    settle: bool = True


class ActionResult(Reply):
    action_id: str = ""
    actuator: str = Field(
        default="", description="The instance of the actuator that answered (see ActuatorHeartbeat)"
    )
    output: str | None = None
    exit_code: int | None = None
    data: dict[str, Any] | None = None
    settle_ms: float = 0.0
    duration_ms: float = 0.0
    replayed: bool = Field(
        default=False, description="True when answered from an earlier run of the same id"
    )
    observation: Observation | None = None


class ActuatorHeartbeat(Message):
    """Published every second by each running actuator on ``agent.actuator.heartbeat``.

    A planner waiting on an action watches the heartbeats of the instance that
    last answered it: when they stop, the actuator died with the action's
    outcome unknown, and the planner says so to the model instead of waiting
    out its timeout or replaying the action blindly.
    """

    instance: str
    started_at: datetime
    sandboxes: list[str] = Field(default_factory=list, description="The desktops it serves now")
    at: datetime = Field(default_factory=_now)


class GrounderHeartbeat(Message):
    """Published every second by each grounder replica on ``agent.grounder.heartbeat``,
    and at once when it takes a request.

    ``grounding`` names the requests (``GroundRequest.request_id``) it is
    working on. A planner waiting for a grounding watches the replica that
    took its request: when that replica falls silent (it died with the
    request), the planner asks again instead of waiting out its grounding
    timeout. Grounding changes nothing on the desktop, so asking again is safe.
    """

    instance: str
    started_at: datetime
    grounding: list[str] = Field(
        default_factory=list, description="The request ids it is working on now"
    )
    at: datetime = Field(default_factory=_now)


class HeldTask(Message):
    """A task a planner is running now, as its heartbeat names it."""

    task_id: SubjectId
    session_id: SubjectId
    ack_subject: str = Field(
        description="The JetStream ack subject of the planner's delivery of the task"
    )


class PlannerHeartbeat(Message):
    """Published every second by each planner replica on ``agent.planner.heartbeat``,
    and at once when it takes a task.

    ``tasks`` names the tasks it is running. When a replica falls silent
    (killed), a surviving one sends ``-NAK`` to the ack subject of each task
    the silent one held, so the tasks work queue hands the task out again at
    once instead of after its ack wait; a planner that resumes it records
    itself in the session state (``SessionState.planner``), which fences off
    the old one if it was only cut off.
    """

    instance: str
    started_at: datetime
    tasks: list[HeldTask] = Field(default_factory=list, description="The tasks it runs now")
    at: datetime = Field(default_factory=_now)


class ModelStatus(Message):
    """What a service found at its model endpoint; on ``agent.status.<service>`` every 10 s.

    The web page shows a banner while ``ok`` is false, with ``problems``
    (each names the setting to change).
    """

    service: str
    url: str = Field(description="The endpoint, without any user:password")
    model: str
    reachable: bool
    ok: bool
    problems: list[str] = Field(default_factory=list)
    checked_at: datetime = Field(default_factory=_now)


# --- grounding --------------------------------------------------------------


class GroundRequest(Message):
    request_id: str = Field(default_factory=new_id)
    description: str = Field(min_length=1, max_length=2_000)
    screenshot: Screenshot
    # The real screen the screenshot was taken of; results are in its pixels.
    screen_width: int = Field(gt=0)
    screen_height: int = Field(gt=0)
    sent_at: datetime = Field(
        default_factory=_now,
        description="When it was sent; the grounders' queue wait is measured from it",
    )


class GroundResult(Reply):
    request_id: str = ""
    found: bool = False
    x: int | None = None
    y: int | None = None
    box: tuple[int, int, int, int] | None = None
    confidence: float | None = None
    method: str = ""
    raw: str | None = Field(default=None, description="The model's raw answer, for debugging")


# --- session state (JetStream KV) ---------------------------------------------

SessionStatus = Literal[
    "waiting",
    "running", "paused", "takeover", "needs_user", "interrupted", "succeeded", "failed", "stopped"
]
FINISHED_STATUSES: frozenset[str] = frozenset({"succeeded", "failed", "stopped"})


class StepRecord(Message):
    """One past step as text: enough for a planner that resumes the task."""

    step: int
    action: str = Field(max_length=2_000, description="The action as JSON")
    outcome: str = Field(max_length=2_000)


class SessionState(Message):
    """A session's progress, under its session id in the ``agent_sessions`` KV bucket.

    Written by the planner at start, after each step, on pause and at the end;
    read by a planner that takes over an interrupted task, and by anyone who
    wants a session's status without replaying its events.
    """

    session_id: SubjectId
    task_id: SubjectId
    sandbox_id: SubjectId | None = Field(
        default=None, description="The desktop the task runs on; null until it has one"
    )
    prompt: str
    status: SessionStatus
    steps: int = 0
    tokens: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reply: str | None = None
    question: str | None = Field(
        default=None, description="While the status is needs_user: the model's question"
    )
    history: list[StepRecord] = Field(
        default_factory=list, description="The most recent steps, oldest first (at most 50)"
    )
    submitted_at: datetime
    updated_at: datetime = Field(default_factory=_now)
    planner: str | None = Field(
        default=None,
        description="The planner instance running the task; a planner that finds another "
        "one here for its own task was replaced (it was cut off) and stops",
    )

    @classmethod
    def fresh(cls, task: TaskSubmitted) -> SessionState:
        return cls(
            session_id=task.session_id,
            task_id=task.task_id,
            sandbox_id=task.sandbox_id,
            prompt=task.prompt,
            status="running",
            submitted_at=task.submitted_at,
        )


# --- dead letters -----------------------------------------------------------


class DeadLetter(Message):
    service: str
    subject: str
    error: str
    payload: str = Field(description="The rejected body, decoded as UTF-8 with replacement")
    at: datetime = Field(default_factory=_now)
