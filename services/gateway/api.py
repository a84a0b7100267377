"""REST and WebSocket routes. Authentication happens before any of these run (see auth.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Path, Query, WebSocket
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from starlette.websockets import WebSocketDisconnect

from selfagent.bus import metrics
from selfagent.errors import BusError, DesktopUnavailable, RemoteError
from selfagent.schemas import (
    ControlCommand,
    ModelStatus,
    SessionState,
    TaskFinished,
    TaskStateChanged,
    TaskSubmitted,
)
from selfagent.schemas.export import EXPORTED, json_schema
from selfagent.schemas.messages import ApprovalMode, ControlVerb, SubjectId, TaskStatus, new_id
from selfagent.schemas.subjects import ID_PATTERN, is_subject_id

from .catalog import SessionList
from .deps import Gateway, GatewayDep
from .hub import Listener
from .trajectory import trajectory_zip
from .vnc_bridge import VncTarget, bridge

# Ids become NATS subject tokens: the pattern is the schemas' own (subjects.ID_PATTERN).
SessionId = Annotated[str, Path(pattern=ID_PATTERN, description=f"Session id: {ID_PATTERN}")]
WS_BAD_REQUEST = 4400
STATUS_FRESH = 60.0
WS_TRY_AGAIN_LATER = 1013
# A trajectory reads the whole history, not the page's first screenful.
TRAJECTORY_EVENTS = 100_000

router = APIRouter()


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TaskRequest(_Body):
    prompt: str = Field(min_length=1, max_length=20_000, description="The instruction")
    session_id: SubjectId | None = Field(
        default=None, description="Continue this session; a new one is started when omitted"
    )
    max_steps: int | None = Field(default=None, ge=1, le=500)

    @field_validator("prompt")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("prompt is blank")
        return value


class TaskAccepted(BaseModel):
    task_id: str
    session_id: str


class ChatReply(BaseModel):
    reply: str
    status: TaskStatus | Literal["needs_user"] = Field(
        description="needs_user: the task waits for an answer; `reply` is the model's question. "
        "Answer with POST /api/sessions/<sid>/control {command: answer, text}."
    )
    task_id: str
    session_id: str
    steps: int
    error: str | None = None


class ControlRequest(_Body):
    command: ControlVerb
    text: str | None = Field(
        default=None,
        min_length=1,
        max_length=20_000,
        description="answer: the reply to the question the task is waiting on (needs_user); "
        "approve/deny: a note the model is told",
    )
    approval_id: SubjectId | None = Field(
        default=None, description="approve/deny: the approval.requested event's approval_id"
    )
    mode: ApprovalMode | None = Field(
        default=None, description="set_mode: ask, autonomous or review-all"
    )
    viewer: SubjectId | None = Field(
        default=None,
        description="takeover: the page's VNC connection (its /ws/vnc?viewer=) whose input "
        "goes through; without it the agent pauses but no viewer's input is forwarded",
    )

    @model_validator(mode="after")
    def _answer_has_text(self) -> ControlRequest:
        if self.command == "answer" and not (self.text and self.text.strip()):
            raise ValueError("answer needs a non-empty text")
        return self


class ControlAccepted(BaseModel):
    session_id: str
    command: ControlVerb
    takeover: bool
    in_control: bool = Field(description="Whether the request's viewer now gets the input")


class SessionHistory(BaseModel):
    session_id: str
    events: list[dict[str, Any]]
    truncated: bool = Field(description="More events follow: read on with ?after=last_seq")
    last_seq: int = Field(
        default=0,
        description="The stream sequence of the last event returned (or the ?after= given): "
        "pass it as ?after= to read only the events stored since",
    )


class TakeoverInfo(BaseModel):
    takeover: bool = Field(
        description="Whether the desktop (of the session asked about, else any) takes input"
    )
    session_id: str | None = Field(description="The session holding it")
    viewer: str | None = Field(description="The viewer whose input goes through; null: none")
    sessions: list[str] = Field(description="Every session whose desktop is taken over")


class SessionCreated(BaseModel):
    session_id: str
    sandbox_id: str | None = Field(description="Its desktop (per-session) or the shared one")
    warm: bool = Field(description="The desktop came ready-made from the provisioner's pool")
    wait_ms: float = Field(description="How long getting the desktop took")


class SessionClosed(BaseModel):
    session_id: str
    sandbox_id: str | None = Field(description="The desktop that was stopped; null if none")
    home_deleted: bool


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    nats: Literal["connected", "disconnected"]
    vnc_bridges: int
    vnc_input_dropped: int = Field(
        description="Input messages from viewers not in control, dropped since the start"
    )


def _sandbox_id(gateway: Gateway) -> str | None:
    # None: the session's own desktop, which the planner leases.
    return None if gateway.settings.desktops == "per_session" else gateway.settings.sandbox_id


async def _require_session(gateway: Gateway, session_id: str) -> None:
    """404 for a session nobody knows: a typo must not start a new desktop."""
    if not await gateway.catalog.exists(session_id):
        raise HTTPException(
            404,
            detail=f"no session {session_id!r}: start one with POST /api/sessions, "
            "or leave session_id out",
        )


async def _task(body: TaskRequest, gateway: Gateway) -> TaskSubmitted:
    fields: dict[str, Any] = {"prompt": body.prompt, "sandbox_id": _sandbox_id(gateway)}
    if body.session_id:
        await _require_session(gateway, body.session_id)
        fields["session_id"] = body.session_id
    if body.max_steps is not None:
        fields["max_steps"] = body.max_steps
    try:
        task = TaskSubmitted(**fields)
    except ValidationError as exc:
        raise HTTPException(
            422, detail=exc.errors(include_url=False, include_context=False)
        ) from exc
    if not body.session_id:
        # Known from now on, before the planner records it.
        gateway.catalog.remember(task.session_id)
    return task


@router.get("/healthz", response_model=Health, tags=["ops"])
async def healthz(gateway: GatewayDep) -> JSONResponse:
    connected = gateway.bus.connected
    health = Health(
        status="ok" if connected else "degraded",
        nats="connected" if connected else "disconnected",
        vnc_bridges=gateway.vnc.active,
        vnc_input_dropped=gateway.vnc.dropped_input,
    )
    return JSONResponse(health.model_dump(), status_code=200 if connected else 503)


@router.post("/api/tasks", status_code=202, response_model=TaskAccepted, tags=["tasks"])
async def submit_task(body: TaskRequest, gateway: GatewayDep) -> TaskAccepted:
    task = await _task(body, gateway)
    await gateway.bus.submit(task)
    return TaskAccepted(task_id=task.task_id, session_id=task.session_id)


@router.post("/api/chat", response_model=ChatReply, tags=["tasks"])
async def chat(body: TaskRequest, gateway: GatewayDep) -> ChatReply:
    """Run one instruction and answer with the agent's final reply."""
    task = await _task(body, gateway)
    timeout = gateway.settings.chat_timeout
    # Listen before publishing: a fast planner could otherwise finish unseen.
    kinds = frozenset({"task.finished", "task.state"})
    with gateway.hub.listen(task_id=task.task_id, kinds=kinds) as listener:
        await gateway.bus.submit(task)
        try:
            async with asyncio.timeout(timeout):
                while True:
                    frame = await listener.queue.get()
                    event = frame.event
                    if isinstance(event, TaskStateChanged) and event.state == "needs_user":
                        # A question is an answer to this request too: waiting
                        # for the end would wait for a person who is not asked.
                        return ChatReply(
                            reply=event.question or "",
                            status="needs_user",
                            task_id=event.task_id,
                            session_id=event.session_id,
                            steps=0,
                        )
                    if isinstance(event, TaskFinished):
                        break
        except TimeoutError:
            raise HTTPException(
                504,
                detail=(
                    f"task {task.task_id} did not finish within {timeout:g}s; it may still be "
                    f"running: see /api/sessions/{task.session_id}/events"
                ),
            ) from None
    finished = frame.event
    assert isinstance(finished, TaskFinished)
    return ChatReply(
        reply=finished.reply,
        status=finished.status,
        task_id=finished.task_id,
        session_id=finished.session_id,
        steps=finished.steps,
        error=finished.error.message if finished.error else None,
    )


@router.post(
    "/api/sessions/{session_id}/control",
    status_code=202,
    response_model=ControlAccepted,
    tags=["sessions"],
)
async def control(
    session_id: SessionId, body: ControlRequest, gateway: GatewayDep
) -> ControlAccepted:
    try:
        command = ControlCommand(
            session_id=session_id,
            command=body.command,
            text=body.text,
            approval_id=body.approval_id,
            mode=body.mode,
            # Whoever holds the token: kept with an approval decision.
            by="web user" if body.command in ("approve", "deny") else None,
        )
    except ValidationError as exc:
        raise HTTPException(
            422, detail=exc.errors(include_url=False, include_context=False)
        ) from exc
    if command.command == "answer":
        state = await gateway.bus.session_state(session_id)
        if state is None or state.status != "needs_user":
            # Otherwise the planner would drop it and the person's words vanish.
            raise HTTPException(
                409,
                detail=f"session {session_id!r} is not waiting for an answer "
                f"(status: {state.status if state else 'unknown'})",
            )
    await gateway.bus.control(command)
    # Applied here too, so the person who clicked "Take over" gets control
    # without waiting for the command's round trip through NATS; only here
    # does it name the viewer (the bus message has no such field).
    gateway.takeover.apply(command, viewer=body.viewer)
    return ControlAccepted(
        session_id=session_id,
        command=body.command,
        takeover=gateway.takeover.active_for(session_id),
        in_control=gateway.takeover.input_for(session_id, body.viewer),
    )


@router.get("/api/sessions/{session_id}/events", response_model=SessionHistory, tags=["sessions"])
async def session_events(
    session_id: SessionId,
    gateway: GatewayDep,
    limit: Annotated[int | None, Query(ge=1, le=100_000)] = None,
    after: Annotated[int, Query(ge=0)] = 0,
) -> SessionHistory:
    history = await gateway.bus.history(
        session_id, limit or gateway.settings.history_limit, after=after
    )
    return SessionHistory(
        session_id=session_id,
        events=history.events,
        truncated=history.truncated,
        last_seq=history.last_seq,
    )


@router.get(
    "/api/sessions/{session_id}/steps/{step}/screenshot",
    tags=["sessions"],
    response_class=Response,
    responses={200: {"content": {"image/jpeg": {}, "image/png": {}}}, 404: {}},
)
async def step_screenshot(
    session_id: SessionId,
    step: Annotated[int, Path(ge=1, le=100_000)],
    gateway: GatewayDep,
    when: Literal["before", "after"] = "before",
    task_id: Annotated[str | None, Query(pattern=ID_PATTERN)] = None,
) -> Response:
    """A step's screenshot: ``before``, what the model saw; ``after``, once the action ran.

    Without ``task_id``, the step of the session's newest task that has one.
    Kept for the planner's ``PLANNER_SCREENSHOT_RETENTION_DAYS``.
    """
    shot = await gateway.bus.screenshot(session_id, step, when, task_id)
    if shot is None:
        raise HTTPException(
            404, detail=f"no {when} screenshot of step {step} in session {session_id!r}"
        )
    # Under one task id a step's image never changes; the newest task's may.
    cache = "private, max-age=86400, immutable" if task_id else "private, no-cache"
    return Response(shot.data, media_type=shot.mime, headers={"Cache-Control": cache})


@router.get(
    "/api/sessions/{session_id}/trajectory",
    tags=["sessions"],
    response_class=StreamingResponse,
    responses={200: {"content": {"application/zip": {}}}, 404: {}},
)
async def session_trajectory(session_id: SessionId, gateway: GatewayDep) -> StreamingResponse:
    """The session's steps as a zip: ``steps.jsonl`` (JSON Schema ``TrajectoryStep``,
    also in the zip) and each step's screenshots under ``images/``, streamed."""
    history = await gateway.bus.history(session_id, TRAJECTORY_EVENTS)
    if not history.events:
        raise HTTPException(404, detail=f"no session {session_id!r} with events")
    return StreamingResponse(
        trajectory_zip(session_id, history.events, gateway.bus.screenshot),
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="selfagent-{session_id}.zip"'},
    )


@router.get("/api/sessions/{session_id}", response_model=SessionState, tags=["sessions"])
async def session_state(session_id: SessionId, gateway: GatewayDep) -> SessionState:
    """Status, step count and reply of a session, as the planner last recorded them."""
    state = await gateway.bus.session_state(session_id)
    if state is None:
        raise HTTPException(404, detail=f"no session {session_id!r}")
    return state


@router.get("/api/sessions", response_model=SessionList, tags=["sessions"])
async def list_sessions(gateway: GatewayDep) -> SessionList:
    """Sessions, newest first: those with a record, a desktop, or just started here."""
    return await gateway.catalog.listing()


@router.post("/api/sessions", status_code=201, response_model=SessionCreated, tags=["sessions"])
async def create_session(gateway: GatewayDep) -> SessionCreated:
    """A new session; with per-session desktops, once its desktop is ready.

    That may wait for the provisioner to have room (503 with its reason when
    it has none in time).
    """
    session_id = new_id()
    if gateway.settings.desktops != "per_session":
        gateway.catalog.remember(session_id)
        return SessionCreated(
            session_id=session_id, sandbox_id=gateway.settings.sandbox_id, warm=True, wait_ms=0
        )
    try:
        lease = await gateway.catalog.lease(session_id)
    except RemoteError as exc:
        reason = exc.error.message
        raise HTTPException(503, detail=f"no desktop for a new session: {reason}") from exc
    except BusError as exc:
        raise HTTPException(503, detail=f"no desktop for a new session: {exc}") from exc
    gateway.catalog.remember(session_id)
    return SessionCreated(
        session_id=session_id, sandbox_id=lease.sandbox_id, warm=lease.warm, wait_ms=lease.wait_ms
    )


@router.delete("/api/sessions/{session_id}", response_model=SessionClosed, tags=["sessions"])
async def close_session(
    session_id: SessionId,
    gateway: GatewayDep,
    keep_home: Annotated[bool, Query(description="Keep the session's home for later")] = True,
) -> SessionClosed:
    """Stop the session's task and give its desktop back (its record stays as history)."""
    await _require_session(gateway, session_id)
    await gateway.bus.control(ControlCommand(session_id=session_id, command="stop"))
    if gateway.takeover.holder(session_id) == session_id:
        # Nobody drives a desktop that is going away (or, fixed, whose session ended).
        gateway.takeover.apply(ControlCommand(session_id=session_id, command="release"))
    gateway.catalog.forget(session_id)
    if gateway.settings.desktops != "per_session":
        return SessionClosed(session_id=session_id, sandbox_id=None, home_deleted=False)
    try:
        released = await gateway.catalog.release(session_id, keep_home)
    except RemoteError as exc:
        reason = exc.error.message
        raise HTTPException(503, detail=f"could not release the desktop: {reason}") from exc
    return SessionClosed(
        session_id=session_id, sandbox_id=released.sandbox_id, home_deleted=released.home_deleted
    )


class ServiceStatus(BaseModel):
    models: list[ModelStatus] = Field(
        description="Each model endpoint as its service last found it (reported every 10 s)"
    )
    problems: list[str] = Field(description="What to fix, one line each; empty when all is well")


@router.get("/api/status", response_model=ServiceStatus, tags=["ops"])
async def service_status(gateway: GatewayDep) -> ServiceStatus:
    """What the page's banner shows: model endpoints that do not answer or lack the model."""
    now = datetime.now(UTC)
    fresh = [
        status
        for status in gateway.bus.model_status.values()
        # A service that stopped reporting has stopped; its old verdict is no news.
        if (now - status.checked_at).total_seconds() < STATUS_FRESH
    ]
    problems = [f"{s.service}: {line}" for s in fresh if not s.ok for line in s.problems]
    return ServiceStatus(models=sorted(fresh, key=lambda s: s.service), problems=problems)


@router.get("/metrics", tags=["ops"], response_class=Response)
async def prometheus_metrics() -> Response:
    """This gateway's own Prometheus figures (each service serves its own; docs/operations.md)."""
    return Response(metrics.exposition(), media_type=metrics.CONTENT_TYPE)


@router.get("/api/takeover", response_model=TakeoverInfo, tags=["sessions"])
async def takeover_state(
    gateway: GatewayDep,
    session_id: Annotated[str | None, Query(pattern=ID_PATTERN)] = None,
) -> TakeoverInfo:
    """Whether a person drives a desktop: that of ``session_id``, else any."""
    takeover = gateway.takeover
    if session_id is None:
        return TakeoverInfo(
            takeover=takeover.active,
            session_id=takeover.session_id,
            viewer=takeover.viewer(None),
            sessions=takeover.sessions(),
        )
    return TakeoverInfo(
        takeover=takeover.active_for(session_id),
        session_id=takeover.holder(session_id),
        viewer=takeover.viewer(session_id),
        sessions=takeover.sessions(),
    )


@router.get("/api/schemas/{name}.json", tags=["schemas"])
async def message_schema(name: str) -> JSONResponse:
    """The JSON Schema of a bus message, as in ``schemas/json/``.

    The web page reads the id rule from here instead of keeping a copy.
    """
    if name not in EXPORTED:
        raise HTTPException(404, detail=f"no schema {name!r}; one of {', '.join(EXPORTED)}")
    return JSONResponse(json_schema(name))


@router.get("/", include_in_schema=False)
async def index(gateway: GatewayDep) -> FileResponse:
    page = gateway.settings.ui_dir / "index.html"
    if not page.is_file():
        raise HTTPException(
            503, detail=f"the web UI is not installed (no {page.name} in GATEWAY_UI_DIR)"
        )
    return FileResponse(page, headers={"Cache-Control": "no-cache"})


async def _wait_disconnect(ws: WebSocket) -> None:
    with contextlib.suppress(WebSocketDisconnect):
        while (await ws.receive())["type"] != "websocket.disconnect":
            pass


async def _next_frame(ws: WebSocket, listener: Listener, closed: asyncio.Task[None]) -> str | None:
    getter = asyncio.ensure_future(listener.queue.get())
    done, _ = await asyncio.wait({getter, closed}, return_when=asyncio.FIRST_COMPLETED)
    if getter not in done:
        getter.cancel()
        return None
    return getter.result().text


@router.websocket("/ws/events")
@metrics.websocket("events")
async def ws_events(ws: WebSocket, gateway: GatewayDep) -> None:
    """Session events as JSON text frames; ``?session_id=`` narrows to one session.

    The first frame (and any later change) is a ``gateway.takeover`` notice
    telling whether a person currently controls the desktop.
    """
    await ws.accept()
    session_id = ws.query_params.get("session_id")
    if session_id is not None and not is_subject_id(session_id):
        await ws.close(WS_BAD_REQUEST, f"invalid session_id: it must match {ID_PATTERN}")
        return
    with gateway.hub.listen(session_id=session_id) as listener:
        closed = asyncio.create_task(_wait_disconnect(ws))
        try:
            await ws.send_text(json.dumps(gateway.takeover.snapshot(session_id)))
            while True:
                text = await _next_frame(ws, listener, closed)
                if text is None:
                    return
                if listener.overflowed:
                    await ws.close(WS_TRY_AGAIN_LATER, "too slow to keep up with events; reconnect")
                    return
                await ws.send_text(text)
        except (WebSocketDisconnect, RuntimeError):
            return
        finally:
            closed.cancel()


@router.websocket("/ws/vnc")
@metrics.websocket("vnc")
async def ws_vnc(ws: WebSocket, gateway: GatewayDep) -> None:
    """RFB over WebSocket for noVNC; the gateway logs in to the VNC server itself.

    With per-session desktops ``?session_id=`` names whose desktop; with the
    fixed desktop it only says whose take-over counts (any session's).
    ``?viewer=`` is the page's own id for this connection: its input goes
    through only while a take-over names that viewer.
    """
    settings = gateway.settings
    session_id = ws.query_params.get("session_id")
    if session_id is not None and not is_subject_id(session_id):
        session_id, invalid = None, True
    else:
        invalid = False
    viewer = ws.query_params.get("viewer")
    if viewer is not None and not is_subject_id(viewer):
        viewer = None  # view-only: no take-over can name it

    async def fixed() -> VncTarget:
        return VncTarget(
            settings.vnc_host,
            settings.vnc_port,
            settings.vnc_password.get_secret_value(),
            password_hint="check GATEWAY_VNC_PASSWORD",
        )

    async def own_desktop() -> VncTarget:
        if invalid:
            raise DesktopUnavailable(f"invalid session_id: it must match {ID_PATTERN}")
        if session_id is None:
            raise DesktopUnavailable(
                "which desktop? /ws/vnc needs ?session_id= with per-session desktops"
            )
        try:
            endpoint = await gateway.catalog.endpoint(session_id)
        except BusError as exc:
            raise DesktopUnavailable(
                f"cannot look up the desktop of session {session_id}: {exc}"
            ) from exc
        if endpoint is None:
            raise DesktopUnavailable(
                f"session {session_id} has no desktop (it gets one with its next task)"
            )
        return VncTarget(endpoint.vnc_host, endpoint.vnc_port, endpoint.vnc_password)

    per_session = settings.desktops == "per_session"
    await bridge(
        ws,
        own_desktop if per_session else fixed,
        lambda: gateway.takeover.input_for(session_id, viewer),
        gateway.vnc,
        settings.vnc_connect_timeout,
        gateway.takeover.wait_change,
    )
