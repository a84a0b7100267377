"""NATS wiring for the planner: take tasks from the queue group, follow controls."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from faststream import AckPolicy
from faststream.nats import NatsBroker, PullSub
from faststream.nats.annotations import NatsMessage as NatsMessageCtx
from faststream.nats.message import NatsMessage
from nats.js.api import ConsumerConfig

from selfagent.bus import (
    InvalidMessage,
    make_broker,
    parse,
    reject,
    sessions,
    start_with_retry,
    typed_handler,
)
from selfagent.bus.streams import TASKS, ensure_streams
from selfagent.llm import LLMClient
from selfagent.schemas import ControlCommand, SessionState, TaskSubmitted, subjects

from .config import Settings
from .runner import Control, TaskRunner

log = logging.getLogger(__name__)
SERVICE = "planner"


class Planner:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.broker: NatsBroker = make_broker(settings.nats_url, SERVICE)
        self.llm = LLMClient(
            base_url=settings.llm_api_base_url,
            model=settings.llm_model,
            api_key=settings.llm_api_key.get_secret_value(),
            timeout=settings.llm_timeout,
            max_attempts=settings.llm_max_attempts,
            temperature=settings.llm_temperature,
            max_tokens=settings.llm_max_tokens,
        )
        # Controls for the tasks running in this replica, by session.
        self.controls: dict[str, Control] = {}
        self.sandboxes: dict[str, str] = {}
        self.running: set[asyncio.Task[object]] = set()
        self.accepting = True
        self._wire()

    async def start(self) -> None:
        """Connect (waiting for the server if needed), declare what we use, subscribe."""
        await start_with_retry(self.broker, before_start=prepare)

    def _wire(self) -> None:
        broker = self.broker

        # A pull consumer on the tasks work queue: replicas share one durable,
        # so each task goes to exactly one planner, and tasks submitted while
        # no planner runs wait in the stream instead of being dropped.
        # The task is acknowledged only when it ends (see start_task), so a
        # planner that dies hands its tasks over instead of losing them.
        self._task_subscriber = broker.subscriber(
            subjects.TASK_SUBMIT,
            stream=TASKS,
            durable=subjects.PLANNER_DURABLE,
            pull_sub=PullSub(batch_size=1, timeout=5.0),
            ack_policy=AckPolicy.MANUAL,
            config=ConsumerConfig(ack_wait=self.settings.task_ack_wait),
            title="task.submit",
        )

        @self._task_subscriber
        async def on_task(msg: NatsMessageCtx) -> None:
            try:
                task = parse(TaskSubmitted, msg.body, subjects.TASK_SUBMIT)
            except InvalidMessage as exc:
                await reject(broker, SERVICE, msg, exc)
                # Garbage never becomes valid: take it out of the queue for good.
                await msg.reject()
                return
            if not self.accepting:
                # Shutting down: leave it for another replica (see stop()).
                await msg.nack()
                return
            resume: SessionState | None = None
            if msg.raw_message.metadata.num_delivered > 1:
                state = await sessions.load_state(broker, task.session_id)
                if state is not None and state.task_id != task.task_id:
                    # The session has moved on to a newer task since this one
                    # was interrupted: running it now would start it over and
                    # fight the newer one for the desktop.
                    log.warning(
                        "dropping redelivered task %s: session %s has moved on",
                        task.task_id,
                        task.session_id,
                    )
                    await msg.ack()
                    return
                resume = state or SessionState.fresh(task)
            if await stopped_while_queued(broker, task):
                runner = TaskRunner(self.broker, self.llm, self.settings, task)
                await runner.refuse("Stopped by the user before it started.")
                await msg.ack()
                return
            # Run the task in the background: a task takes minutes and the
            # subscriber must keep taking tasks and controls meanwhile.
            self.start_task(task, delivery=msg, resume=resume)

        @broker.subscriber(subjects.SESSION_CONTROL_ALL, title="session.control")
        @typed_handler(broker, SERVICE, ControlCommand, subjects.SESSION_CONTROL_ALL)
        async def on_control(command: ControlCommand) -> None:
            control = self.controls.get(command.session_id)
            if command.command in ("takeover", "release"):
                # A person holding the mouse holds the whole desktop: every
                # task on it waits, not only the session that asked.
                sandbox = self.sandboxes.get(command.session_id)
                for session_id, other in self.controls.items():
                    if sandbox is None or self.sandboxes.get(session_id) == sandbox:
                        other.apply(command.command)
                return
            if control is not None:
                log.info("session %s: %s", command.session_id, command.command)
                control.apply(command.command, command.text)

    def start_task(
        self,
        task: TaskSubmitted,
        delivery: NatsMessage | None = None,
        resume: SessionState | None = None,
    ) -> asyncio.Task[object]:
        if task.session_id in self.controls:
            log.warning("session %s already has a running task; stopping it first", task.session_id)
            self.controls[task.session_id].apply("stop")
        control = Control()
        self.controls[task.session_id] = control
        self.sandboxes[task.session_id] = task.sandbox_id
        runner = TaskRunner(self.broker, self.llm, self.settings, task, control)

        async def run() -> object:
            keep_alive = (
                asyncio.create_task(self._keep_alive(delivery)) if delivery is not None else None
            )
            try:
                result = await runner.run(resume=resume, handover=delivery is not None)
            except asyncio.CancelledError:
                # This planner is shutting down mid-task: give the task back
                # now, so another replica resumes it without waiting.
                if delivery is not None:
                    with contextlib.suppress(Exception):
                        await delivery.nack()
                raise
            finally:
                if keep_alive is not None:
                    keep_alive.cancel()
                if self.controls.get(task.session_id) is control:
                    del self.controls[task.session_id]
                    self.sandboxes.pop(task.session_id, None)
            if delivery is not None:
                with contextlib.suppress(Exception):
                    await delivery.ack()
            return result

        handle: asyncio.Task[object] = asyncio.create_task(run(), name=f"task-{task.task_id}")
        self.running.add(handle)
        handle.add_done_callback(self.running.discard)
        return handle

    async def _keep_alive(self, delivery: NatsMessage) -> None:
        """Tell the queue the task is still being worked on, well within ack_wait."""
        while True:
            await asyncio.sleep(self.settings.task_ack_wait / 3)
            try:
                await delivery.in_progress()
            except Exception as exc:
                log.warning("could not extend the task's lease: %s", exc)

    async def stop(self) -> None:
        # Stop taking tasks first, so a task given back below is not pulled
        # again by this same, dying replica.
        self.accepting = False
        with contextlib.suppress(Exception):
            await self._task_subscriber.stop()
        for handle in list(self.running):
            handle.cancel()
        if self.running:
            await asyncio.wait(self.running, timeout=5)
        await self.broker.stop()
        await self.llm.close()


async def stopped_while_queued(broker: NatsBroker, task: TaskSubmitted) -> bool:
    """Whether the session's latest control, sent after this task, is a stop."""
    try:
        js = broker.config.connection_state.stream
        last = await asyncio.wait_for(
            js.get_last_msg(subjects.CONTROLS_STREAM, subjects.session_control(task.session_id)),
            2.0,
        )
        command = ControlCommand.model_validate_json(last.data or b"")
    except Exception:
        return False
    return command.command == "stop" and command.sent_at >= task.submitted_at


async def prepare(broker: NatsBroker) -> None:
    """The streams every service declares, and the session-state bucket."""
    await ensure_streams(broker)
    await sessions.ensure_bucket(broker)
