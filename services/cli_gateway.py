"""The gateway from the command line: its REST API, its event stream, and how a task looks live.

The commands themselves (arguments, token, exit codes) are in ``cli_run``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
import zipfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from pydantic import TypeAdapter, ValidationError
from rich.console import Console
from rich.live import Live
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from selfagent.schemas.actions import (
    ClickAction,
    DoneAction,
    DragAction,
    FailAction,
    HoldKeyAction,
    KeyAction,
    LaunchAppAction,
    MoveAction,
    OpenUrlAction,
    ScrollAction,
    ShellAction,
    TypeAction,
    UploadFileAction,
    WaitAction,
)
from selfagent.schemas.messages import (
    AgentMessage,
    ApprovalDecided,
    ApprovalRequested,
    SessionEvent,
    StepExecuted,
    StepGrounded,
    StepPlanned,
    TaskFinished,
    TaskStarted,
    TaskStateChanged,
)

from .cli_run import (
    EXIT_CANNOT_CONNECT,
    EXIT_FAILED,
    EXIT_GATEWAY,
    EXIT_INTERRUPTED,
    EXIT_NEEDS_USER,
    EXIT_NOT_FOUND,
    EXIT_STOPPED,
    EXIT_SUCCEEDED,
    EXIT_TOKEN,
    EXIT_USAGE,
    _CommandExit,
)

# How long a lost event stream is tried again before giving up (a gateway restart).
RECONNECT_FOR = 30.0
HTTP_TIMEOUT = 30.0
# Creating a session may wait for a desktop (the gateway's lease timeout is 150 s).
SESSION_TIMEOUT = 180.0
TEXT_CAP = 200
WS_POLICY_VIOLATION = 1008
STOP_GRACE = 30.0

_EVENT = TypeAdapter[SessionEvent](SessionEvent)


# --- the gateway's API ----------------------------------------------------------


def _detail(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    if detail is None:
        return response.text[:TEXT_CAP] or response.reason_phrase
    if isinstance(detail, list):
        # FastAPI's validation errors: say where and what, without the noise.
        return "; ".join(
            f"{'.'.join(str(p) for p in item.get('loc', [])[1:])}: {item.get('msg')}"
            for item in detail
            if isinstance(item, dict)
        )
    return str(detail)


@dataclass
class GatewayClient:
    url: str
    token: str
    http: httpx.AsyncClient = field(init=False)

    def __post_init__(self) -> None:
        self.http = httpx.AsyncClient(base_url=self.url, headers=self.headers, timeout=HTTP_TIMEOUT)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    @property
    def ws_url(self) -> str:
        scheme, _, rest = self.url.partition("://")
        return f"{'wss' if scheme == 'https' else 'ws'}://{rest}"

    async def aclose(self) -> None:
        await self.http.aclose()

    async def call(
        self,
        method: str,
        path: str,
        *,
        json_body: dict[str, Any] | None = None,
        params: dict[str, str] | None = None,
        timeout: float = HTTP_TIMEOUT,
        not_found: str | None = None,
    ) -> Any:
        try:
            response = await self.http.request(
                method, path, json=json_body, params=params, timeout=timeout
            )
        except httpx.TransportError as exc:
            raise _CommandExit(
                EXIT_CANNOT_CONNECT,
                f"cannot reach the gateway at {self.url} "
                f"({type(exc).__name__}: {exc or 'no answer'}); is selfagent running? "
                "(--url or SELFAGENT_URL say where)",
            ) from None
        status = response.status_code
        if status in (401, 403):
            raise _CommandExit(EXIT_TOKEN, f"the gateway at {self.url} refused the token")
        if status == 404 and not_found is not None:
            raise _CommandExit(EXIT_NOT_FOUND, not_found)
        if status in (400, 404, 409, 422):
            raise _CommandExit(EXIT_USAGE, f"the gateway rejected the request: {_detail(response)}")
        if status >= 300:
            raise _CommandExit(EXIT_GATEWAY, f"the gateway answered {status}: {_detail(response)}")
        return response.json()

    @contextlib.asynccontextmanager
    async def events(self, session_id: str | None) -> AsyncIterator[ClientConnection]:
        """The event WebSocket, listening once this returns (the gateway's first frame,
        its take-over notice, is sent after it has started listening)."""
        url = f"{self.ws_url}/ws/events"
        if session_id:
            url += f"?session_id={session_id}"
        try:
            ws = await connect(
                url, additional_headers=self.headers, open_timeout=HTTP_TIMEOUT, max_size=2**22
            )
        except InvalidStatus as exc:
            if exc.response.status_code in (401, 403):
                raise _CommandExit(
                    EXIT_TOKEN, f"the gateway at {self.url} refused the token"
                ) from None
            raise _CommandExit(
                EXIT_GATEWAY, f"the event stream answered {exc.response.status_code}"
            ) from None
        except (OSError, InvalidHandshake, TimeoutError) as exc:
            raise _CommandExit(
                EXIT_CANNOT_CONNECT,
                f"cannot reach the gateway at {self.url} ({type(exc).__name__}: {exc}); "
                "is selfagent running? (--url or SELFAGENT_URL say where)",
            ) from None
        try:
            try:
                await asyncio.wait_for(ws.recv(), HTTP_TIMEOUT)
            except ConnectionClosed as closed:
                # The gateway accepts a WebSocket before it checks the token, then
                # closes it with 1008 when the token is wrong.
                code = closed.rcvd.code if closed.rcvd else None
                if code == WS_POLICY_VIOLATION:
                    raise _CommandExit(
                        EXIT_TOKEN, f"the gateway at {self.url} refused the token"
                    ) from None
                reason = closed.rcvd.reason if closed.rcvd else "no close frame"
                raise _CommandExit(
                    EXIT_CANNOT_CONNECT, f"the event stream closed at once ({code}: {reason})"
                ) from None
            except TimeoutError:
                raise _CommandExit(
                    EXIT_CANNOT_CONNECT, f"the event stream at {url} sent nothing"
                ) from None
            yield ws
        finally:
            await ws.close()


# --- how events look --------------------------------------------------------------


def _short(text: str, cap: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= cap else text[: cap - 1] + "…"


def describe(action: Any) -> tuple[str, str]:
    """An action as (name, what it acts on) for one line of progress."""
    name: str = action.action
    where = ""
    match action:
        case ClickAction() | MoveAction() | ScrollAction():
            if action.target:
                where = repr(_short(action.target))
            elif action.x is not None:
                where = f"({action.x}, {action.y})"
            if isinstance(action, ScrollAction):
                where = f"{action.direction} {where}".strip()
        case DragAction():
            start, end = action.path[0], action.path[-1]
            where = f"({start.x}, {start.y}) → ({end.x}, {end.y})"
        case TypeAction():
            where = repr(_short(action.text))
        case KeyAction() | HoldKeyAction():
            where = action.keys
        case ShellAction():
            where = "$ " + _short(action.command)
        case OpenUrlAction():
            where = _short(action.url)
        case LaunchAppAction():
            where = action.app
        case UploadFileAction():
            where = action.path
        case WaitAction():
            where = f"{action.seconds:g} s"
        case DoneAction():
            where = _short(action.message)
        case FailAction():
            where = _short(action.reason)
        case _:
            where = _short(str(getattr(action, "path", "")))
    return name, where


def _elapsed(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes} min {rest:02d} s"


@dataclass
class Outcome:
    code: int
    status: str
    reply: str = ""
    steps: int = 0
    error: str | None = None
    question: str | None = None


@dataclass
class Progress:
    """Draws one task's events: a line per step, and a live status line while it runs."""

    console: Console
    as_json: bool
    started: float = field(default_factory=time.monotonic)
    step: int = 0
    action: str = ""
    target: str = ""
    state: str = "submitted"
    spinner: Spinner = field(default_factory=lambda: Spinner("dots", style="cyan"))

    def elapsed(self) -> str:
        return _elapsed(time.monotonic() - self.started)

    def status_line(self) -> Text:
        text = Text(f"{self.state}")
        if self.step:
            text.append(f" · step {self.step} · {self.action}")
            if self.target:
                text.append(f" · {self.target}")
        text.append(f" · {self.elapsed()}", style="dim")
        return text

    def __rich__(self) -> Spinner:
        # One spinner kept across refreshes, so that it turns.
        self.spinner.update(text=self.status_line())
        return self.spinner

    def say(self, text: Text) -> None:
        if not self.as_json:
            self.console.print(text, soft_wrap=True)

    def line(self, frame: str) -> None:
        if self.as_json:
            print(frame, flush=True)

    def show(self, event: Any) -> Outcome | None:
        """Draw one event; the outcome when it ends what this command follows."""
        match event:
            case TaskStarted():
                self.state = "running"
                self.say(Text(f"task {event.task_id} in session {event.session_id}", style="dim"))
            case StepPlanned():
                self.step = event.step
                self.action, self.target = describe(event.action)
                self.state = "running"
            case StepGrounded():
                self.target = f"{_short(event.target)!r} at ({event.x}, {event.y})"
            case StepExecuted():
                action, target = describe(event.action)
                if self.step == event.step and self.target and action == self.action:
                    target = self.target
                mark, style = ("✓", "green") if event.ok else ("✗", "red")
                text = Text()
                text.append(f"{mark} ", style=style)
                text.append(f"step {event.step}  ", style="bold")
                text.append(action)
                if target:
                    text.append(f"  {target}")
                text.append(f"  {self.elapsed()}", style="dim")
                if not event.ok and event.error:
                    text.append(f"\n    {event.error.message}", style="red")
                elif event.output:
                    text.append(f"\n    {_short(event.output, TEXT_CAP)}", style="dim")
                self.say(text)
            case AgentMessage():
                who = {"agent": "agent", "system": "note", "user": "you"}[event.role]
                self.say(Text(f"{who}: {event.text}", style="italic"))
            case ApprovalRequested():
                name, target = describe(event.action)
                self.state = "waiting for approval"
                self.say(
                    Text(
                        f"? step waits for your approval: {name} {target} (rule: {event.rule}); "
                        "approve or deny it in the web page",
                        style="yellow",
                    )
                )
            case ApprovalDecided():
                self.state = "running"
                self.say(Text(f"  {event.decision} by {event.by}", style="yellow"))
            case TaskStateChanged():
                self.state = event.state
                if event.state == "needs_user":
                    return Outcome(EXIT_NEEDS_USER, "needs_user", question=event.question or "")
                self.say(Text(f"  {event.state}", style="yellow"))
            case TaskFinished():
                code = {
                    "succeeded": EXIT_SUCCEEDED,
                    "failed": EXIT_FAILED,
                    "stopped": EXIT_STOPPED,
                }[event.status]
                return Outcome(
                    code,
                    event.status,
                    reply=event.reply,
                    steps=event.steps,
                    error=event.error.message if event.error else None,
                )
        return None


# --- selfagent run ----------------------------------------------------------------


@dataclass
class _Follow:
    """The events of one task, across reconnects, each shown once."""

    task_id: str
    progress: Progress
    seen: set[tuple[str, datetime]] = field(default_factory=set)

    def take(self, raw: str | dict[str, Any]) -> Outcome | None:
        try:
            event = (
                _EVENT.validate_json(raw) if isinstance(raw, str) else _EVENT.validate_python(raw)
            )
        except ValidationError:
            return None  # a take-over notice, or a kind newer than this client
        if event.task_id != self.task_id:
            return None
        key = (event.kind, event.at)
        if key in self.seen:
            return None
        self.seen.add(key)
        self.progress.line(raw if isinstance(raw, str) else json.dumps(raw))
        return self.progress.show(event)


async def _catch_up(gateway: GatewayClient, follow: _Follow, session_id: str) -> Outcome | None:
    """What happened while the stream was down, from the session's history."""
    history = await gateway.call("GET", f"/api/sessions/{session_id}/events")
    outcome = None
    for raw in history.get("events", []):
        outcome = follow.take(raw) or outcome
    return outcome


async def _stream(gateway: GatewayClient, ws: ClientConnection, follow: _Follow) -> Outcome | None:
    """Events until the task's outcome; None when the stream closed first."""
    with contextlib.suppress(ConnectionClosed):
        async for frame in ws:
            if isinstance(frame, bytes):
                frame = frame.decode(errors="replace")
            if outcome := follow.take(frame):
                return outcome
    return None


async def _until_interrupted(
    work: asyncio.Future[Outcome | None], interrupted: asyncio.Event, session_id: str
) -> Outcome | None:
    stop: asyncio.Future[Any] = asyncio.ensure_future(interrupted.wait())
    try:
        done, _ = await asyncio.wait([work, stop], return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop.cancel()
    if work not in done:
        work.cancel()
        raise _CommandExit(
            EXIT_INTERRUPTED,
            f"stopped following; the task may still be running (selfagent stop {session_id})",
        )
    return work.result()


async def _follow_to_end(
    gateway: GatewayClient,
    follow: _Follow,
    session_id: str,
    ws: ClientConnection,
    interrupted: asyncio.Event,
) -> Outcome:
    """Follow a task until it ends; when the stream drops (a gateway restart, or
    the gateway closing a reader that fell behind), listen again and catch up
    from the session's history."""
    outcome = await _until_interrupted(
        asyncio.ensure_future(_stream(gateway, ws, follow)), interrupted, session_id
    )
    while outcome is None:
        follow.progress.say(Text("  event stream lost; reconnecting", style="yellow"))
        deadline = time.monotonic() + RECONNECT_FOR
        while True:
            try:
                async with gateway.events(session_id) as again:
                    # Listening again first, then the history: nothing falls in between.
                    outcome = await _catch_up(gateway, follow, session_id)
                    if outcome is None:
                        outcome = await _until_interrupted(
                            asyncio.ensure_future(_stream(gateway, again, follow)),
                            interrupted,
                            session_id,
                        )
                break
            except _CommandExit as exc:
                if exc.code != EXIT_CANNOT_CONNECT or time.monotonic() > deadline:
                    raise _CommandExit(
                        exc.code,
                        f"{exc.message}; the task may still be running (selfagent sessions)",
                    ) from None
            if interrupted.is_set():
                raise _CommandExit(
                    EXIT_INTERRUPTED, "stopped following; the task may still be running"
                )
            await asyncio.sleep(1.0)
    return outcome


async def run_task(
    gateway: GatewayClient,
    prompt: str,
    session_id: str | None,
    max_steps: int | None,
    console: Console,
    as_json: bool,
) -> int:
    progress = Progress(console, as_json)
    interrupted = asyncio.Event()
    stop_requested = False
    loop = asyncio.get_running_loop()
    accepted: dict[str, Any] = {}
    pending: set[asyncio.Task[None]] = set()

    def on_interrupt() -> None:
        nonlocal stop_requested
        if stop_requested or not accepted:
            interrupted.set()
            return
        stop_requested = True
        progress.state = "stopping (Ctrl-C again to stop following)"
        progress.say(Text("stopping the task; Ctrl-C again leaves it running", style="yellow"))
        sending = loop.create_task(_send_stop(gateway, accepted["session_id"]))
        pending.add(sending)
        sending.add_done_callback(pending.discard)

    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGINT, on_interrupt)
    try:
        # Listening before submitting: a fast task could otherwise end unseen.
        # A new session's id is known only from the answer, so that stream
        # carries every session's events and the task's own are picked out.
        async with gateway.events(session_id) as ws:
            body: dict[str, Any] = {"prompt": prompt}
            if session_id:
                body["session_id"] = session_id
            if max_steps is not None:
                body["max_steps"] = max_steps
            accepted.update(
                await gateway.call(
                    "POST",
                    "/api/tasks",
                    json_body=body,
                    not_found=f"no session {session_id!r} (selfagent sessions lists them)",
                )
            )
            sid, task_id = accepted["session_id"], accepted["task_id"]
            if as_json:
                print(json.dumps({"kind": "cli.accepted", **accepted}), flush=True)
            else:
                console.print(Text(f"task {task_id} · session {sid}", style="dim"), soft_wrap=True)
            follow = _Follow(task_id, progress)
            live = (
                Live(progress, console=console, refresh_per_second=8, transient=True)
                if console.is_terminal and not as_json
                else contextlib.nullcontext()
            )
            with live:
                outcome = await _follow_to_end(gateway, follow, sid, ws, interrupted)
    finally:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(signal.SIGINT)
    _report(outcome, accepted, progress, console, as_json)
    return outcome.code


async def _send_stop(gateway: GatewayClient, session_id: str) -> None:
    with contextlib.suppress(_CommandExit):
        await gateway.call(
            "POST", f"/api/sessions/{session_id}/control", json_body={"command": "stop"}
        )


def _report(
    outcome: Outcome, accepted: dict[str, Any], progress: Progress, console: Console, as_json: bool
) -> None:
    if as_json:
        result = {
            "kind": "cli.result",
            "task_id": accepted["task_id"],
            "session_id": accepted["session_id"],
            "status": outcome.status,
            "reply": outcome.reply,
            "steps": outcome.steps,
            "error": outcome.error,
            "question": outcome.question,
            "exit_code": outcome.code,
        }
        print(json.dumps(result), flush=True)
        return
    sid = accepted["session_id"]
    if outcome.status == "needs_user":
        console.print(Text(f"? the task asks: {outcome.question}", style="yellow"), soft_wrap=True)
        console.print(
            Text(f"  it waits for your answer in the web page (session {sid})", style="dim"),
            soft_wrap=True,
        )
        return
    style = {"succeeded": "green", "failed": "red", "stopped": "yellow"}[outcome.status]
    text = Text(f"{outcome.status}", style=f"bold {style}")
    text.append(f" after {outcome.steps} steps, {progress.elapsed()}")
    console.print(text, soft_wrap=True)
    if outcome.reply:
        console.print(Text(outcome.reply), soft_wrap=True)
    if outcome.error and outcome.error != outcome.reply:
        console.print(Text(outcome.error, style="red"), soft_wrap=True)


# --- selfagent sessions, stop ---------------------------------------------------------


async def list_sessions(gateway: GatewayClient, console: Console, as_json: bool) -> int:
    listing = await gateway.call("GET", "/api/sessions")
    if as_json:
        print(json.dumps(listing), flush=True)
        return EXIT_SUCCEEDED
    rows = listing.get("sessions", [])
    if not rows:
        console.print("no sessions yet")
    else:
        table = Table(box=None, pad_edge=False)
        for column in ("session", "status", "steps", "updated", "last instruction"):
            table.add_column(column, no_wrap=column != "last instruction")
        for row in rows:
            updated = str(row.get("updated", ""))[:19].replace("T", " ")
            table.add_row(
                row["session_id"],
                row["status"],
                str(row.get("steps", 0)),
                updated,
                _short(row.get("last_prompt") or "", 60),
            )
        console.print(table)
    if not listing.get("complete", True):
        console.print(Text("(incomplete: a part of selfagent did not answer in time)", "yellow"))
    return EXIT_SUCCEEDED


async def stop_session(
    gateway: GatewayClient, session_id: str, close: bool, console: Console, as_json: bool
) -> int:
    unknown = f"no session {session_id!r} (selfagent sessions lists them)"
    if close:
        # Stops its task and gives its desktop back; the gateway checks the id.
        answer = await gateway.call(
            "DELETE", f"/api/sessions/{session_id}", not_found=unknown, timeout=SESSION_TIMEOUT
        )
        said = f"session {session_id} stopped and closed"
    else:
        listing = await gateway.call("GET", "/api/sessions")
        known = {row["session_id"]: row for row in listing.get("sessions", [])}
        if session_id not in known and listing.get("complete", True):
            raise _CommandExit(EXIT_NOT_FOUND, unknown)
        answer = await gateway.call(
            "POST", f"/api/sessions/{session_id}/control", json_body={"command": "stop"}
        )
        status = known.get(session_id, {}).get("status", "unknown")
        said = f"stop sent to session {session_id} (it was {status})"
    if as_json:
        print(json.dumps(answer), flush=True)
    else:
        console.print(said)
    return EXIT_SUCCEEDED


# --- selfagent export ------------------------------------------------------------------


async def export_trajectory(
    gateway: GatewayClient, session_id: str, out: Path | None, console: Console, as_json: bool
) -> int:
    """Save the session's trajectory zip (steps.jsonl and images), streamed to a file."""
    target = out or Path(f"selfagent-{session_id}.zip")
    partial = target.with_name(target.name + ".part")
    try:
        async with gateway.http.stream(
            "GET", f"/api/sessions/{session_id}/trajectory", timeout=SESSION_TIMEOUT
        ) as response:
            status = response.status_code
            if status in (401, 403):
                raise _CommandExit(EXIT_TOKEN, f"the gateway at {gateway.url} refused the token")
            if status == 404:
                raise _CommandExit(
                    EXIT_NOT_FOUND, f"no session {session_id!r} (selfagent sessions lists them)"
                )
            if status == 422:
                raise _CommandExit(EXIT_USAGE, f"{session_id!r} is not a session id")
            if status >= 300:
                await response.aread()
                raise _CommandExit(
                    EXIT_GATEWAY, f"the gateway answered {status}: {_detail(response)}"
                )
            with partial.open("wb") as file:
                async for chunk in response.aiter_bytes():
                    file.write(chunk)
    except httpx.TransportError as exc:
        partial.unlink(missing_ok=True)
        raise _CommandExit(
            EXIT_CANNOT_CONNECT,
            f"cannot reach the gateway at {gateway.url} ({type(exc).__name__}: {exc}); "
            "is selfagent running? (--url or SELFAGENT_URL say where)",
        ) from None
    # Only a complete download takes the name: a broken one must not look like an export.
    partial.replace(target)
    with zipfile.ZipFile(target) as archive:
        steps = len(archive.read("steps.jsonl").splitlines())
        images = sum(1 for name in archive.namelist() if name.startswith("images/"))
    if as_json:
        print(json.dumps({"path": str(target), "steps": steps, "images": images}), flush=True)
    else:
        console.print(f"wrote {target}: {steps} steps, {images} images")
    return EXIT_SUCCEEDED
