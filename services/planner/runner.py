"""One task, start to finish: observe -> ask the model -> (ground) -> act -> repeat.

The loop ends when the model says done or fail, or a budget runs out (steps,
wall time, tokens), or too many replies in a row are unusable, or a person
stops it. Every ending publishes exactly one ``task.finished`` event with its
reason; nothing here raises out of :meth:`TaskRunner.run`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

from faststream.nats import NatsBroker
from pydantic import BaseModel

from selfagent.bus import BusError, RemoteError, RequestTimeout, metrics, request, screens, sessions
from selfagent.llm import LLMClient, LLMError, LLMReply
from selfagent.schemas import (
    ActionResult,
    ActRequest,
    AgentMessage,
    ClickAction,
    DoneAction,
    DragAction,
    ErrorCode,
    ErrorInfo,
    FailAction,
    GrounderHeartbeat,
    GroundRequest,
    GroundResult,
    Lease,
    LeaseRequest,
    MoveAction,
    Observation,
    ObserveRequest,
    Screenshot,
    ScrollAction,
    StepExecuted,
    StepGrounded,
    StepPlanned,
    TaskFinished,
    TaskStarted,
    TaskStateChanged,
    TaskSubmitted,
    subjects,
)
from selfagent.schemas.actions import Action
from selfagent.schemas.messages import (
    FINISHED_STATUSES,
    ControlVerb,
    SessionState,
    SessionStatus,
    StepRecord,
    TaskStatus,
    new_id,
)

from .config import Settings
from .coords import CoordinateMap, off_screen_problem
from .families import Family, FamilyReply, ParseContext, Turn, View, for_settings, sampling_for
from .families.images import fit
from .parsing import ActionParseError
from .vision import NO_IMAGES, images_rejected

log = logging.getLogger(__name__)
_T = TypeVar("_T")

# Steps kept in the session state for a planner that resumes the task.
_HISTORY_KEPT = 50

_LOOK_RETRY_DELAY = 0.5
_HEARTBEAT_CHECK = 0.5
# A lease slower than this shows the task as waiting for a desktop.
_WAITING_AFTER = 1.0


class Control:
    """Pause/stop/takeover flags for one running task, set from the control subject.

    ``answer`` carries the person's reply while the task waits for one
    (``waiting``); an answer nobody asked for is ignored.
    """

    def __init__(self) -> None:
        self.stopped = False
        self.paused = False
        self.takeover = False
        self.waiting = False
        self.answer: str | None = None
        # Why the task's desktop is gone (lost or released under it), if it is.
        self.desktop_gone: str | None = None
        self.changed = asyncio.Event()

    def lose_desktop(self, reason: str) -> None:
        self.desktop_gone = reason
        self.changed.set()

    def apply(self, verb: ControlVerb, text: str | None = None) -> None:
        if verb == "answer":
            if not self.waiting or not text:
                log.info("ignoring an answer: the task is not waiting for one")
                return
            self.answer = text
        elif verb == "stop":
            self.stopped = True
        elif verb == "pause":
            self.paused = True
        elif verb == "resume":
            self.paused = False
        elif verb == "takeover":
            self.takeover = True
        elif verb == "release":
            self.takeover = False
        self.changed.set()

    @property
    def holding(self) -> bool:
        return self.paused or self.takeover

    @property
    def ended(self) -> bool:
        """Stopped by the person, or the desktop went away."""
        return self.stopped or self.desktop_gone is not None


class Heartbeats:
    """When each actuator instance was last heard from (``agent.actuator.heartbeat``)."""

    def __init__(self) -> None:
        self._seen: dict[str, float] = {}

    def beat(self, instance: str) -> None:
        self._seen[instance] = time.monotonic()

    def silent_for(self, instance: str) -> float:
        """Seconds since the instance's last heartbeat; 0 for one never heard (no verdict)."""
        seen = self._seen.get(instance)
        return 0.0 if seen is None else time.monotonic() - seen


class GrounderWatch(Heartbeats):
    """When each grounder replica was last heard (``agent.grounder.heartbeat``), and which
    one holds which grounding request."""

    def __init__(self) -> None:
        super().__init__()
        self._holder: dict[str, str] = {}

    def hear(self, beat: GrounderHeartbeat) -> None:
        self.beat(beat.instance)
        for request_id in beat.grounding:
            self._holder[request_id] = beat.instance

    def forget(self, request_id: str) -> None:
        self._holder.pop(request_id, None)

    def lost(self, request_id: str, sent: float, silence: float) -> str | None:
        """The replica that died with the request, if it did; None while it may still come.

        A request some replica claimed is lost when that replica falls
        silent. One nobody claimed yet may be waiting for a free worker in a
        busy replica, so it counts as lost only when a replica that was alive
        when it was sent has fallen silent since: the request may have gone
        to it.
        """
        now = time.monotonic()
        holder = self._holder.get(request_id)
        if holder is not None:
            return holder if self.silent_for(holder) > silence else None
        for instance, seen in self._seen.items():
            if seen > sent - silence and now - seen > silence:
                return instance
        return None


class _GrounderGone(Exception):
    pass


class _Superseded(Exception):
    """Another planner instance runs this task now (this one was taken for dead)."""


class _ActuatorGone(Exception):
    pass


@dataclass(frozen=True)
class _Usage:
    """One model call's cost: its tokens from the reply's ``usage`` and its time."""

    prompt_tokens: int
    completion_tokens: int
    model_ms: float


@dataclass
class _Finish(Exception):
    status: TaskStatus
    reply: str
    error: ErrorInfo | None = None


@dataclass
class TaskRunner:
    broker: NatsBroker
    llm: LLMClient
    settings: Settings
    task: TaskSubmitted
    control: Control = field(default_factory=Control)
    # How the model is prompted and read; from the settings when not given.
    family: Family | None = None
    steps_taken: int = 0
    tokens_used: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    _history: list[Turn] = field(default_factory=list)
    _feedback: str | None = None
    heartbeats: Heartbeats | None = None
    grounders: GrounderWatch | None = None
    # The planner replica running this task, recorded in the session state:
    # a replica that finds another one there for its own task was replaced
    # while it was cut off, and stops (see _save_state). Empty: no fencing.
    instance: str = ""
    # Set when this run found itself replaced: it ended without a word, and
    # its delivery of the task must be neither acked nor given back.
    superseded: bool = False
    # The desktop leased for the session (per-session desktops), once leased.
    _leased: str | None = None
    # The actuator instance that last answered for the desktop.
    _actuator: str = ""
    # Screenshots being written to the history (in the background: a step
    # must not wait on it), awaited before the task's end is announced.
    _keeping: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def sandbox_id(self) -> str:
        """The desktop this task acts on: the task's own, the leased one, or the configured one."""
        return self.task.sandbox_id or self._leased or self.settings.sandbox_id

    @property
    def _family(self) -> Family:
        if self.family is None:
            self.family = for_settings(self.settings)
        return self.family

    # --- bus helpers -----------------------------------------------------------

    async def _emit(self, event: BaseModel) -> None:
        kind: str = getattr(event, "kind")  # noqa: B009
        try:
            await self.broker.publish(event, subjects.session_event(self.task.session_id, kind))
        except Exception:
            # The broker buffers while reconnecting; a failure here must not
            # end the task, but it must be visible.
            log.exception("could not publish %s event", kind)

    async def _save_state(
        self,
        status: SessionStatus,
        reply: str | None = None,
        question: str | None = None,
        *,
        take_over: bool = False,
    ) -> None:
        """Record the session's progress in the KV bucket, for other replicas and the gateway.

        Best effort and bounded: a broker hiccup must neither end nor stall the task.
        ``take_over`` (a resumed task) makes this replica the task's planner
        whoever was before.

        Raises:
            _Superseded: another planner instance has taken the task over
                (this one was silent long enough to be taken for dead).
        """
        record = SessionState.fresh(self.task).model_copy(
            update={
                "planner": self.instance or None,
                "sandbox_id": self.sandbox_id,
                "status": status,
                "steps": self.steps_taken,
                "tokens": self.tokens_used,
                "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
                "reply": reply,
                "question": question,
                "history": [
                    StepRecord(
                        step=past.step,
                        action=past.reply[:2000],
                        outcome=past.outcome[:2000],
                    )
                    for past in self._history[-_HISTORY_KEPT:]
                ],
            }
        )
        try:
            bucket = await sessions.open_bucket(self.broker)
            current = await sessions.read_state(bucket, self.task.session_id)
        except Exception as exc:
            log.warning("could not save session %s state: %s", self.task.session_id, exc)
            return
        if not take_over:
            self._raise_if_replaced(current)
        if (
            current is not None
            and current.task_id != self.task.task_id
            and current.submitted_at > self.task.submitted_at
        ):
            # A newer task owns the session now (this one was replaced):
            # its record must not be overwritten by ours.
            return
        try:
            await asyncio.wait_for(
                bucket.put(self.task.session_id, record.model_dump_json().encode()),
                sessions.TIMEOUT,
            )
        except Exception as exc:
            log.warning("could not save session %s state: %s", self.task.session_id, exc)

    def _raise_if_replaced(self, current: SessionState | None) -> None:
        if (
            self.instance
            and current is not None
            and current.task_id == self.task.task_id
            and current.planner is not None
            and current.planner != self.instance
        ):
            self.superseded = True
            raise _Superseded(current.planner)

    async def _check_still_ours(self) -> None:
        """Before a reply's actions run: a replica that was cut off for a while may
        have been replaced meanwhile, and its actions would then run twice.

        Raises:
            _Superseded: another planner instance runs the task now.
        """
        if not self.instance:
            return
        try:
            current = await sessions.load_state(self.broker, self.task.session_id)
        except Exception as exc:
            # Unreadable is not replaced: the save after the step checks again.
            log.warning("could not read session %s state: %s", self.task.session_id, exc)
            return
        self._raise_if_replaced(current)

    def _keep(self, step: int, when: str, shot: Screenshot | None) -> None:
        """Keep a step's screenshot for replay and export (best effort)."""
        if shot is None or self.settings.screenshot_retention_days <= 0:
            return
        self._spawn_keep(
            f"step {step}'s {when} screenshot",
            screens.store(self.broker, self.task.session_id, self.task.task_id, step, when, shot),
        )

    def _keep_model_call(
        self, step: int, messages: list[dict[str, Any]], reply: LLMReply, current: str
    ) -> None:
        """Keep what the model was sent and answered, for trajectory export.

        The screenshots in the messages become ``step://<n>/before``: the
        kept screenshot of that step of this task, not a second copy.
        """
        if self.settings.screenshot_retention_days <= 0:
            return
        known = {turn.screenshot: turn.step for turn in self._history if turn.screenshot}
        known[current] = step
        record = {
            "messages": _image_refs(messages, known),
            "reply": {
                "content": reply.content,
                "tool_calls": [
                    {"name": call.name, "arguments": call.arguments} for call in reply.tool_calls
                ],
                "finish_reason": reply.finish_reason,
                "model": reply.model,
            },
        }
        self._spawn_keep(
            f"step {step}'s model call",
            screens.store_model_call(
                self.broker, self.task.session_id, self.task.task_id, step, record
            ),
        )

    def _spawn_keep(self, what: str, work: Awaitable[None]) -> None:
        async def write() -> None:
            try:
                await asyncio.wait_for(work, 10.0)
            except Exception as exc:
                log.warning("could not keep %s: %s", what, exc)

        job = asyncio.ensure_future(write())
        self._keeping.add(job)
        job.add_done_callback(self._keeping.discard)

    async def _kept(self) -> None:
        """Wait for the screenshots still being written, so the end event finds them all."""
        if self._keeping:
            await asyncio.wait(set(self._keeping), timeout=10.0)

    def _ids(self) -> dict[str, str]:
        return {"session_id": self.task.session_id, "task_id": self.task.task_id}

    async def _observe(self) -> Observation:
        return await request(
            self.broker,
            subjects.sandbox_observe(self.sandbox_id),
            self._observe_request(),
            Observation,
            timeout=self.settings.observe_timeout,
        )

    async def _look(self) -> Observation:
        """A screenshot for the model, or the end of the task.

        Retried for up to ``desktop_wait`` seconds: a broker restart, a VNC
        reconnect or an actuator coming back is a pause, not a reason to give
        up a task. A desktop that is gone for good (lost, released) ends it
        at once.
        """
        last: Exception | None = None
        deadline = time.monotonic() + self.settings.desktop_wait
        delay = _LOOK_RETRY_DELAY
        while True:
            self._raise_if_ended()
            try:
                observation = await self._unless_stopped(self._observe())
            except BusError as exc:
                last = exc
                log.warning("observe failed: %s", exc)
            else:
                if observation.actuator:
                    self._actuator = observation.actuator
                if observation.screenshot is not None:
                    return observation
                last = RuntimeError("the actuator answered without a screenshot")
            if time.monotonic() + delay > deadline:
                break
            await self._sleep_unless_ended(delay)
            delay = min(delay * 2, 2.0)
        raise _Finish(
            "failed",
            f"The desktop is not reachable: {last}",
            ErrorInfo(code=ErrorCode.VNC_UNAVAILABLE, message=str(last)),
        )

    async def _sleep_unless_ended(self, seconds: float) -> None:
        """Sleep, but wake for a stop or a lost desktop."""
        self.control.changed.clear()
        self._raise_if_ended()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.control.changed.wait(), seconds)
        self._raise_if_ended()

    def _raise_if_ended(self) -> None:
        if self.control.stopped:
            raise _stopped()
        if self.control.desktop_gone is not None:
            raise _Finish(
                "failed",
                f"The session's desktop is gone: {self.control.desktop_gone}",
                ErrorInfo(code=ErrorCode.SANDBOX_UNAVAILABLE, message=self.control.desktop_gone),
            )

    async def _lease_desktop(self) -> None:
        """Per-session desktops: get this session's desktop before the first look.

        The same session gets the same desktop back while it holds one. When
        the provisioner's host is full the lease waits in line; the task shows
        ``waiting`` meanwhile.
        """
        if self.settings.desktops != "per_session" or self.task.sandbox_id is not None:
            return
        call = asyncio.ensure_future(
            request(
                self.broker,
                subjects.PROVISIONER_LEASE,
                LeaseRequest(session_id=self.task.session_id),
                Lease,
                timeout=self.settings.lease_timeout,
            )
        )
        waited = False
        try:
            done, _ = await asyncio.wait({call}, timeout=_WAITING_AFTER)
            if not done:
                waited = True
                await self._save_state("waiting")
                await self._emit(TaskStateChanged(state="waiting", **self._ids()))
            lease = await self._unless_stopped(call)
        except RemoteError as exc:
            raise _Finish(
                "failed",
                f"No desktop for this session: {exc.error.message}",
                ErrorInfo(code=ErrorCode.SANDBOX_UNAVAILABLE, message=exc.error.message),
            ) from exc
        except RequestTimeout as exc:
            raise _Finish(
                "failed",
                f"No desktop for this session: the provisioner did not answer within "
                f"{self.settings.lease_timeout:g} s.",
                ErrorInfo(code=ErrorCode.SANDBOX_UNAVAILABLE, message=str(exc)),
            ) from exc
        self._leased = lease.sandbox_id
        log.info(
            "session %s: desktop %s (%s, %.0f ms)",
            self.task.session_id,
            lease.sandbox_id,
            "warm" if lease.warm else "started",
            lease.wait_ms,
        )
        if waited:
            await self._save_state("running")
            await self._emit(TaskStateChanged(state="running", **self._ids()))

    def _observe_request(self) -> ObserveRequest:
        if self._family.resize:
            # Full size: the planner puts it on the model's own grid (_model_image).
            return ObserveRequest(format="jpeg", quality=self.settings.image_quality)
        return ObserveRequest(
            format="jpeg",
            quality=self.settings.image_quality,
            max_width=self.settings.model_image_max_width,
            max_height=self.settings.model_image_max_height,
        )

    async def _model_image(self, shot: Screenshot) -> Screenshot:
        """The screenshot at the size the family wants it sent at."""
        size = self._family.image_size(shot.width, shot.height)
        if size == (shot.width, shot.height):
            return shot
        return await asyncio.to_thread(fit, shot, size, self.settings.image_quality)

    # --- the loop --------------------------------------------------------------

    async def run(self, resume: SessionState | None = None) -> TaskFinished | None:
        """Run the task to its end.

        ``resume`` is the state an interrupted earlier run left (this task
        was handed over). If this planner shuts down mid-task (cancellation),
        the task is left for another replica rather than ended: the state
        says so and the caller gives the task back to the queue.

        None (and ``superseded`` set): another planner instance took the
        task over while this one was cut off; this run stopped without
        another event or state write, and the task is that instance's now.
        """
        try:
            return await self._run(resume)
        except _Superseded as superseded:
            log.warning(
                "task %s: planner %s has taken it over; this replica stops it here",
                self.task.task_id,
                superseded,
            )
            return None

    async def _run(self, resume: SessionState | None) -> TaskFinished:
        started = time.monotonic()
        if resume is not None:
            done = await self._resume(resume)
            if done is not None:
                return done
        else:
            await self._emit(TaskStarted(prompt=self.task.prompt, **self._ids()))
            await self._save_state("running")
        try:
            await self._lease_desktop()
            await self._loop(started)
            raise _Finish("failed", "The task ended without an answer.")
        except _Finish as finish:
            return await self._finish(finish)
        except asyncio.CancelledError:
            # Replaced already: the task is another planner's, nothing to say.
            with contextlib.suppress(_Superseded):
                await self._save_state("interrupted")
                await self._emit(
                    AgentMessage(
                        role="system",
                        text=f"The planner stopped after step {self.steps_taken}; "
                        "another planner will continue this task.",
                        **self._ids(),
                    )
                )
            raise
        except _Superseded:
            raise
        except Exception as exc:
            log.exception("task %s crashed", self.task.task_id)
            return await self._finish(
                _Finish(
                    "failed",
                    f"Internal error: {type(exc).__name__}: {exc}",
                    ErrorInfo(code=ErrorCode.INTERNAL, message=str(exc)),
                )
            )

    async def refuse(self, reason: str) -> TaskFinished:
        """End the task before its first step (e.g. it was stopped while queued)."""
        await self._emit(TaskStarted(prompt=self.task.prompt, **self._ids()))
        return await self._finish(
            _Finish("stopped", reason, ErrorInfo(code=ErrorCode.STOPPED, message=reason))
        )

    async def _resume(self, state: SessionState) -> TaskFinished | None:
        """Pick up an interrupted run; a TaskFinished if there is nothing left to do."""
        self.steps_taken, self.tokens_used = state.steps, state.tokens
        self.prompt_tokens, self.completion_tokens = state.prompt_tokens, state.completion_tokens
        # The text of the earlier steps comes back; their screenshots do not.
        self._history = [Turn(r.step, r.action, r.outcome, None, r.action) for r in state.history]
        if state.status in FINISHED_STATUSES:
            # It ended but the planner died before acknowledging: done already.
            return TaskFinished(
                status=state.status,
                reply=state.reply or "",
                steps=state.steps,
                prompt_tokens=state.prompt_tokens,
                completion_tokens=state.completion_tokens,
                tokens=state.tokens,
                **self._ids(),
            )
        age = (datetime.now(UTC) - self.task.submitted_at).total_seconds()
        if age > self.settings.resume_window:
            return await self._finish(
                _Finish(
                    "failed",
                    f"The task was interrupted after {state.steps} steps and is too old to "
                    f"resume ({age:.0f} s > {self.settings.resume_window:g} s).",
                    ErrorInfo(code=ErrorCode.INTERRUPTED, message="planner interrupted"),
                )
            )
        log.info("resuming task %s after %d steps", self.task.task_id, state.steps)
        # Saved first: from here on the task is this replica's, and the one
        # before, should it be alive after all, stops at its next save.
        await self._save_state("running", take_over=True)
        await self._emit(
            AgentMessage(
                role="system",
                text=f"Resumed on another planner after step {state.steps}.",
                **self._ids(),
            )
        )
        # Whatever state the task was last shown in (needs_user, paused,
        # takeover), the UI learns it is running again only from this event.
        await self._emit(TaskStateChanged(state="running", **self._ids()))
        self._feedback = (
            f"This task was interrupted after {state.steps} steps and has been resumed; "
            "the screen may have changed since. Continue from the current screenshot."
        )
        return None

    async def _finish(self, finish: _Finish) -> TaskFinished:
        await self._kept()
        metrics.TASKS.labels(finish.status).inc()
        event = TaskFinished(
            status=finish.status,
            reply=finish.reply,
            steps=self.steps_taken,
            error=finish.error,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            tokens=self.tokens_used,
            **self._ids(),
        )
        # Saved first: whoever sees the end (a chat reply, a script) and then
        # reads the session finds it ended too, even if this planner stops
        # right after.
        await self._save_state(finish.status, finish.reply)
        await self._emit(event)
        return event

    async def _loop(self, started: float) -> None:
        settings = self.settings
        family = self._family
        max_steps = self.task.max_steps or settings.max_steps
        observation = await self._look()
        invalid_replies = 0
        failed_actions = 0

        while True:
            await self._checkpoint(started)
            if self.steps_taken >= max_steps:
                raise self._out_of_steps(max_steps)
            raw_shot = observation.screenshot
            assert raw_shot is not None  # _look guarantees it
            shot = await self._model_image(raw_shot)
            screen = (observation.screen_width, observation.screen_height)
            coords = CoordinateMap((shot.width, shot.height), screen, family.space)

            messages = self._messages(shot.width, shot.height, shot.data_uri())
            asked = time.monotonic()
            reply = await self._ask(messages, started)
            metrics.phase("model", asked)
            usage = _Usage(
                reply.prompt_tokens,
                reply.completion_tokens,
                (time.monotonic() - asked) * 1000,
            )
            self.tokens_used += reply.total_tokens
            self.prompt_tokens += reply.prompt_tokens
            self.completion_tokens += reply.completion_tokens
            if self.tokens_used > settings.max_tokens_per_task:
                raise _Finish(
                    "failed",
                    f"Stopped after the token budget ({self.tokens_used} > "
                    f"{settings.max_tokens_per_task} tokens).",
                    ErrorInfo(code=ErrorCode.BUDGET_EXHAUSTED, message="tokens"),
                )
            if self.control.holding:
                await self._checkpoint(started)
                # The reply was chosen on a screen the person may have changed
                # meanwhile (that is what a takeover is for): drop it and ask
                # again about what the desktop shows now.
                observation = await self._look()
                continue
            await self._checkpoint(started)

            cursor = coords.from_screen(*observation.cursor) if observation.cursor else None
            try:
                parsed = family.parse(
                    reply.content, reply.tool_calls, ParseContext(shot.width, shot.height, cursor)
                )
                if not parsed.actions and parsed.question is None:
                    raise ActionParseError("the reply holds no action")
                for planned in parsed.actions:
                    problem = off_screen_problem(planned, shot.width, shot.height, family.space)
                    if problem:
                        raise ActionParseError(problem)
            except ActionParseError as exc:
                invalid_replies += 1
                self._feedback = family.correction(str(exc))
                await self._emit(AgentMessage(role="system", text=self._feedback, **self._ids()))
                if invalid_replies >= settings.max_invalid_replies:
                    raise _Finish(
                        "failed",
                        f"The model gave no valid action {invalid_replies} times in a row. "
                        f"Last problem: {exc}",
                        ErrorInfo(code=ErrorCode.INVALID_ACTION, message=str(exc)),
                    ) from exc
                continue
            invalid_replies = 0
            await self._check_still_ours()
            self._keep_model_call(self.steps_taken + 1, messages, reply, shot.data_uri())

            turn = Turn(self.steps_taken + 1, parsed.reply, "ok", shot.data_uri(), parsed.summary)
            outcomes: list[str] = []
            result: ActionResult | None = None
            failed: _StepFailed | None = None
            for index, action in enumerate(parsed.actions):
                if index and self.steps_taken >= max_steps:
                    # The rest of a multi-action reply does not fit the budget.
                    self._record(turn, outcomes)
                    raise self._out_of_steps(max_steps)
                try:
                    result = await self._step(
                        action, parsed, usage if index == 0 else None, coords, shot, screen
                    )
                except _StepFailed as failure:
                    outcomes.append(f"FAILED: {failure.error.message}")
                    failed = failure
                    # What the model planned after a failed action no longer holds.
                    break
                outcomes.append(_outcome(result))
            if not parsed.actions and parsed.thought and parsed.thought != parsed.question:
                await self._emit(AgentMessage(text=parsed.thought, **self._ids()))
            self._record(turn, outcomes)

            if failed is not None:
                failed_actions += 1
                if failed_actions >= settings.max_failed_actions:
                    raise _Finish(
                        "failed",
                        f"{failed_actions} actions in a row failed. Last: {failed.error.message}",
                        failed.error,
                    ) from failed
                observation = await self._look()
                continue
            if parsed.actions:
                failed_actions = 0
                await self._save_state("running")
            if parsed.question is not None:
                await self._ask_user(parsed.question, started, turn)
                observation = await self._look()
                continue
            # The action ran even when its screenshot did not come back; a
            # separate look is then still worth one try before giving up.
            observation = (
                result.observation
                if result is not None
                and result.observation is not None
                and result.observation.screenshot is not None
                else await self._look()
            )

    async def _step(
        self,
        action: Action,
        parsed: FamilyReply,
        usage: _Usage | None,
        coords: CoordinateMap,
        shot: Screenshot,
        screen: tuple[int, int],
    ) -> ActionResult:
        """Run one planned action as one step: events, done/fail, grounding, the actuator.

        Raises:
            _Finish: the action ends the task (done, fail).
            _StepFailed: the action could not be carried out.
        """
        self.steps_taken += 1
        step = self.steps_taken
        # The reply's thought and usage belong to its first action only, so
        # that summing the steps gives the task's totals.
        thought = parsed.thought if usage is not None else ""
        spent = usage or _Usage(0, 0, 0.0)
        await self._emit(
            StepPlanned(
                step=step,
                action=action,
                thought=thought,
                prompt_tokens=spent.prompt_tokens,
                completion_tokens=spent.completion_tokens,
                model_ms=spent.model_ms,
                **self._ids(),
            )
        )
        if thought:
            await self._emit(AgentMessage(text=thought, **self._ids()))
        self._keep(step, "before", shot)
        if isinstance(action, DoneAction):
            # An empty final answer would leave the chat without a reply.
            reply_text = action.message.strip() or (parsed.thought or "").strip()
            raise _Finish("succeeded", reply_text or "Done.")
        if isinstance(action, FailAction):
            raise _Finish(
                "failed",
                action.reason,
                ErrorInfo(code=ErrorCode.INVALID_ACTION, message=action.reason),
            )
        try:
            screen_action = await self._ground(step, coords.to_screen(action), shot, screen)
            result = await self._act(screen_action)
        except _StepFailed as failure:
            await self._emit(
                StepExecuted(
                    step=step,
                    action=action,
                    ok=False,
                    error=failure.error,
                    **self._ids(),
                )
            )
            raise
        metrics.step_executed(result.duration_ms, result.settle_ms)
        await self._emit(
            StepExecuted(
                step=step,
                action=screen_action,
                ok=True,
                output=result.output,
                settle_ms=result.settle_ms,
                duration_ms=result.duration_ms,
                screen_width=screen[0],
                screen_height=screen[1],
                **self._ids(),
            )
        )
        self._keep(step, "after", result.observation.screenshot if result.observation else None)
        return result

    async def _ask_user(self, question: str, started: float, turn: Turn) -> str:
        """Hold the task in needs_user until the person answers (or stops it, or time runs out).

        The answer becomes the outcome of the turn that asked, so the model
        reads it right after its own question, now and after a hand-over.
        """
        control = self.control
        control.answer = None
        control.waiting = True
        try:
            # Saved first: whoever sees the event can read the question from the state.
            await self._save_state("needs_user", question=question)
            await self._emit(TaskStateChanged(state="needs_user", question=question, **self._ids()))
            while control.answer is None:
                self._raise_if_ended()
                remaining = self.settings.max_wall_seconds - (time.monotonic() - started)
                if remaining <= 0:
                    raise self._out_of_time()
                control.changed.clear()
                if control.answer is not None or control.ended:
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(control.changed.wait(), remaining)
            answer = control.answer
        finally:
            control.waiting = False
            control.answer = None
        turn.outcome = f"The user answered: {answer}"
        await self._save_state("running")
        await self._emit(AgentMessage(role="user", text=answer, **self._ids()))
        await self._emit(TaskStateChanged(state="running", **self._ids()))
        return answer

    def _out_of_steps(self, max_steps: int) -> _Finish:
        return _Finish(
            "failed",
            f"Stopped after the step budget of {max_steps} steps.",
            ErrorInfo(code=ErrorCode.BUDGET_EXHAUSTED, message="steps"),
        )

    async def _ask(self, messages: list[dict[str, Any]], started: float) -> LLMReply:
        """One model call, bounded by what is left of the wall-time budget.

        A model call is the longest wait of a step, so a stop must not sit
        behind it: the call is abandoned as soon as a stop arrives.
        """
        family = self._family
        remaining = self.settings.max_wall_seconds - (time.monotonic() - started)
        tools = family.tools() if family.sends_tools and self.settings.native_tools else None
        try:
            return await self._unless_stopped(
                self.llm.complete(
                    messages,
                    tools=tools,
                    deadline=max(remaining, 0.001),
                    sampling=sampling_for(family, self.settings),
                )
            )
        except LLMError as exc:
            if time.monotonic() - started >= self.settings.max_wall_seconds:
                raise self._out_of_time() from exc
            if images_rejected(str(exc), messages):
                log.warning("the model endpoint refused the screenshot: %s", exc)
                raise _Finish(
                    "failed",
                    f"The language model cannot be used: {NO_IMAGES}.",
                    ErrorInfo(code=ErrorCode.LLM_ERROR, message=NO_IMAGES),
                ) from exc
            raise _Finish(
                "failed",
                f"The language model failed ({exc.reason}): {exc}",
                ErrorInfo(code=ErrorCode.LLM_ERROR, message=f"{exc.reason}: {exc}"),
            ) from exc

    async def _unless_stopped(self, work: Awaitable[_T]) -> _T:
        """Await ``work``, but give up on it the moment a stop arrives.

        The waits of a step (the model, grounding, a long shell command) must
        not hold a stop back. What was already sent to the desktop may still
        finish there; the task does not wait for it.
        """
        call = asyncio.ensure_future(work)
        control = self.control
        try:
            while not call.done():
                control.changed.clear()
                self._raise_if_ended()
                woke = asyncio.ensure_future(control.changed.wait())
                try:
                    await asyncio.wait({call, woke}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    woke.cancel()
            self._raise_if_ended()
            return call.result()
        finally:
            if not call.done():
                call.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await call

    def _out_of_time(self) -> _Finish:
        return _Finish(
            "failed",
            f"Stopped after the time budget of {self.settings.max_wall_seconds:g} s.",
            ErrorInfo(code=ErrorCode.BUDGET_EXHAUSTED, message="wall time"),
        )

    async def _checkpoint(self, started: float) -> None:
        """Where pause, stop and the wall-time budget take effect: between steps."""
        control = self.control
        self._raise_if_ended()
        if control.holding:
            state: Literal["paused", "takeover"] = "takeover" if control.takeover else "paused"
            # Saved first, here and below: a replaced replica stops before it speaks.
            await self._save_state(state)
            await self._emit(TaskStateChanged(state=state, **self._ids()))
            while control.holding and not control.ended:
                control.changed.clear()
                await control.changed.wait()
            self._raise_if_ended()
            await self._save_state("running")
            await self._emit(TaskStateChanged(state="running", **self._ids()))
            # After a takeover the screen is not what the model last saw.
            self._feedback = "The user paused or took over the desktop; look at the new screenshot."
        if time.monotonic() - started >= self.settings.max_wall_seconds:
            raise self._out_of_time()

    async def _ground(
        self, step: int, action: Action, shot: Any, screen: tuple[int, int]
    ) -> Action:
        target = getattr(action, "target", None)
        needs = isinstance(action, ClickAction | MoveAction | ScrollAction) and (
            getattr(action, "x", None) is None and target
        )
        if not needs:
            return action
        assert target is not None
        began = time.monotonic()
        try:
            # The grounder gets the freshest full-size view: small UI text
            # is easier to find at full resolution.
            observation = await request(
                self.broker,
                subjects.sandbox_observe(self.sandbox_id),
                ObserveRequest(format="png"),
                Observation,
                timeout=self.settings.observe_timeout,
            )
            if observation.screenshot is None:
                raise RemoteError(
                    subjects.sandbox_observe(self.sandbox_id),
                    ErrorInfo(code=ErrorCode.VNC_UNAVAILABLE, message="no screenshot"),
                )
            result = await self._unless_stopped(
                self._ground_request(
                    GroundRequest(
                        description=target,
                        screenshot=observation.screenshot,
                        screen_width=screen[0],
                        screen_height=screen[1],
                    )
                )
            )
        except (RemoteError, RequestTimeout) as exc:
            code = exc.code if isinstance(exc, RemoteError) else ErrorCode.TIMEOUT
            raise _StepFailed(ErrorInfo(code=code, message=f"grounding failed: {exc}")) from exc
        metrics.phase("grounding", began)
        if not result.found or result.x is None or result.y is None:
            raise _StepFailed(
                ErrorInfo(
                    code=ErrorCode.NOT_FOUND,
                    message=f"could not find {target!r} on the screen; describe it differently "
                    "or give coordinates",
                )
            )
        await self._emit(
            StepGrounded(
                step=step,
                target=target,
                x=result.x,
                y=result.y,
                method=result.method,
                **self._ids(),
            )
        )
        return action.model_copy(update={"x": result.x, "y": result.y})

    async def _ground_request(self, ground: GroundRequest) -> GroundResult:
        """The grounding, asked again (within ``ground_timeout``) when the replica holding
        it dies: grounding changes nothing, so a second ask is safe, and the
        task goes on as soon as a live replica answers instead of waiting out
        the whole timeout for a reply that will never come."""
        deadline = time.monotonic() + self.settings.ground_timeout
        attempts = self.settings.ground_attempts
        for attempt in range(1, attempts + 1):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                return await self._while_grounder_lives(
                    ground.request_id,
                    request(self.broker, subjects.GROUND, ground, GroundResult, timeout=left),
                )
            except _GrounderGone as gone:
                log.warning(
                    "grounder %s went silent with request %s (attempt %d of %d)",
                    gone,
                    ground.request_id,
                    attempt,
                    attempts,
                )
                ground = ground.model_copy(update={"request_id": new_id()})
        raise RequestTimeout(subjects.GROUND, self.settings.ground_timeout)

    async def _while_grounder_lives(self, request_id: str, work: Awaitable[_T]) -> _T:
        """Await ``work`` unless the replica holding the request stops sending heartbeats."""
        call = asyncio.ensure_future(work)
        watch, sent = self.grounders, time.monotonic()
        try:
            while True:
                done, _ = await asyncio.wait({call}, timeout=_HEARTBEAT_CHECK)
                if done:
                    return call.result()
                if watch is None:
                    continue
                gone = watch.lost(request_id, sent, self.settings.grounder_silence)
                if gone is not None:
                    raise _GrounderGone(gone)
        finally:
            if watch is not None:
                watch.forget(request_id)
            if not call.done():
                call.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await call

    async def _act(self, action: Action) -> ActionResult:
        try:
            result = await self._unless_stopped(
                self._while_actuator_lives(
                    request(
                        self.broker,
                        subjects.sandbox_act(self.sandbox_id),
                        ActRequest(
                            action=action,
                            observe=self._observe_request(),
                            session_id=self.task.session_id,
                            task_id=self.task.task_id,
                        ),
                        ActionResult,
                        timeout=self.settings.act_timeout
                        + self.settings.approval_wait
                        + _action_time(action),
                    )
                )
            )
        except RemoteError as exc:
            raise _StepFailed(exc.error) from exc
        except RequestTimeout as exc:
            raise _StepFailed(ErrorInfo(code=ErrorCode.TIMEOUT, message=str(exc))) from exc
        except _ActuatorGone as exc:
            # Never replayed blindly: the model sees the next screenshot and decides.
            raise _StepFailed(
                ErrorInfo(
                    code=ErrorCode.SANDBOX_UNAVAILABLE,
                    message="the actuator stopped while carrying out this action, so whether "
                    "it ran is unknown; check the new screenshot before going on",
                )
            ) from exc
        if result.actuator:
            self._actuator = result.actuator
        return result

    async def _while_actuator_lives(self, work: Awaitable[_T]) -> _T:
        """Await ``work`` unless the actuator holding it stops sending heartbeats."""
        call = asyncio.ensure_future(work)
        heartbeats, instance = self.heartbeats, self._actuator
        try:
            while True:
                done, _ = await asyncio.wait({call}, timeout=_HEARTBEAT_CHECK)
                if done:
                    return call.result()
                silent = heartbeats.silent_for(instance) if heartbeats and instance else 0.0
                if silent > self.settings.actuator_silence:
                    log.warning("actuator %s went silent during an action", instance)
                    raise _ActuatorGone(instance)
        finally:
            if not call.done():
                call.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await call

    # --- context -------------------------------------------------------------

    def _messages(self, width: int, height: int, screenshot_uri: str) -> list[dict[str, Any]]:
        """The family's rendering of the task, the earlier turns and the current screenshot."""
        view = View(
            task=self.task.prompt,
            turns=self._history,
            screenshot=screenshot_uri,
            width=width,
            height=height,
            feedback=self._feedback,
        )
        self._feedback = None
        return self._family.render(view)

    def _record(self, turn: Turn, outcomes: list[str]) -> None:
        if not outcomes or all(outcome == "ok" for outcome in outcomes):
            turn.outcome = "ok"
        elif len(outcomes) == 1:
            turn.outcome = outcomes[0]
        else:
            turn.outcome = "\n".join(f"action {n}: {o}" for n, o in enumerate(outcomes, 1))
        self._history.append(turn)
        # Only the screenshots the family sends again are kept (the current
        # one counts as one); older turns keep their text.
        for old in self._history[: self._family.shown(self._history)]:
            old.screenshot = None


def _stopped() -> _Finish:
    return _Finish(
        "stopped",
        "Stopped by the user.",
        ErrorInfo(code=ErrorCode.STOPPED, message="stopped by the user"),
    )


def _image_refs(value: Any, known: dict[str, int]) -> Any:
    """``value`` with each screenshot data URI replaced by a reference to its step's.

    An image the runner does not know (a family's own rendering) is named, not kept.
    """
    if isinstance(value, str):
        if not value.startswith("data:image/"):
            return value
        step = known.get(value)
        return f"step://{step}/before" if step is not None else "image://not-kept"
    if isinstance(value, list):
        return [_image_refs(item, known) for item in value]
    if isinstance(value, dict):
        return {key: _image_refs(item, known) for key, item in value.items()}
    return value


def _outcome(result: ActionResult) -> str:
    outcome = "ok"
    if result.output:
        outcome += f"; output:\n{result.output[:4000]}"
    if result.exit_code is not None:
        outcome += f"\nexit code {result.exit_code}"
    if result.data and "data_b64" not in result.data:
        outcome += f"; {json.dumps(result.data)}"
    return outcome


class _StepFailed(Exception):
    def __init__(self, error: ErrorInfo) -> None:
        super().__init__(error.message)
        self.error = error


def _action_time(action: Action) -> float:
    seconds = (
        getattr(action, "timeout", None)
        or getattr(action, "seconds", None)
        or getattr(action, "duration", None)
        or 0.0
    )
    if isinstance(action, DragAction):
        seconds += 0.01 * len(action.path) * 20
    return float(seconds)
