"""The planner as a service: take tasks from the work queue, follow controls."""

from __future__ import annotations

import asyncio
import logging
import secrets
from datetime import UTC, datetime
from typing import Literal

from faststream import AckPolicy
from faststream.nats import NatsBroker, PullSub
from faststream.nats.annotations import NatsMessage as NatsMessageCtx
from faststream.nats.message import NatsMessage
from nats.js.api import ConsumerConfig
from nats.js.errors import NotFoundError
from pydantic import ValidationError

from selfagent.bus import (
    InvalidMessage,
    Service,
    jetstream,
    make_broker,
    parse,
    pull_inbox,
    reject,
    screens,
    sessions,
    start_with_retry,
    typed_handler,
)
from selfagent.bus.heartbeat import beat_forever, send_beat
from selfagent.bus.modelwatch import watch_model
from selfagent.bus.streams import TASKS, ensure_streams
from selfagent.llm import LLMClient
from selfagent.modelcheck import reachable_url
from selfagent.schemas import (
    ActuatorHeartbeat,
    ControlCommand,
    GrounderHeartbeat,
    HeldTask,
    PlannerHeartbeat,
    SessionState,
    TaskSubmitted,
    subjects,
)
from selfagent.schemas.sandboxes import SandboxLost, SandboxReleased

from .canary import run_canary
from .config import Settings
from .families import for_settings
from .peers import PeerWatch, hand_back
from .runner import Control, GrounderWatch, Heartbeats, TaskRunner

log = logging.getLogger(__name__)
SERVICE = "planner"


class PlannerService(Service):
    def __init__(self, settings: Settings) -> None:
        super().__init__()
        self.settings = settings
        self.broker: NatsBroker = make_broker(settings.nats_url, SERVICE, settings.bus_auth())
        # 127.0.0.1 in a container means the container: ask the host instead.
        self.llm_url, self._url_note = reachable_url(settings.llm_api_base_url)
        self.llm = LLMClient(
            base_url=self.llm_url,
            model=settings.llm_model,
            api_key=settings.llm_api_key.get_secret_value(),
            timeout=settings.llm_timeout,
            max_attempts=settings.llm_max_attempts,
            temperature=settings.llm_temperature,
            max_tokens=settings.llm_max_tokens,
        )
        # Controls for the tasks running in this replica, by session.
        self.controls: dict[str, Control] = {}
        self.runners: dict[str, TaskRunner] = {}
        self.heartbeats = Heartbeats()
        self.grounders = GrounderWatch()
        self.running: set[asyncio.Task[object]] = set()
        self.accepting = True
        # This replica, for the other replicas: its heartbeat names the tasks
        # it runs (by session), and it watches theirs (see peers.py).
        self.instance = f"{SERVICE}-{secrets.token_hex(4)}"
        self.started_at = datetime.now(UTC)
        self.held: dict[str, HeldTask] = {}
        self.peers = PeerWatch(self.instance)
        # Released in reverse: running tasks go back to the queue first.
        self.resources.push_async_callback(self.llm.close)
        self.resources.push_async_callback(self.broker.stop)
        self.resources.push_async_callback(self._give_back_tasks)
        self._subscribe()
        self._subscribe_desktops()
        self._subscribe_peers()

    async def _start(self) -> None:
        """Connect (waiting for the server if needed), declare what we use, subscribe."""
        await start_with_retry(self.broker, before_start=prepare)
        self.spawn(
            beat_forever(
                self.broker,
                subjects.PLANNER_HEARTBEAT,
                self._beat,
                self.settings.heartbeat_interval,
                after_each=self._hand_over_silent_peers,
            ),
            name="planner-heartbeat",
        )
        if self.settings.screenshot_retention_days > 0:
            try:
                await screens.ensure_stream(
                    self.broker,
                    self.settings.screenshot_retention_days * 86400,
                    self.settings.screenshot_store_mib * 1024 * 1024,
                )
            except Exception as exc:
                # History is not what tasks need to run: a server config from
                # before the stream existed (regenerate it: selfagent init)
                # costs the replay, not the planner.
                log.warning("step screenshots will not be kept (AGENT_SCREENS): %s", exc)
        if self._url_note:
            log.warning("LLM_API_BASE_URL: %s", self._url_note)
        self.spawn(
            watch_model(
                self.broker,
                SERVICE,
                self.llm_url,
                self.settings.llm_model,
                self.settings.llm_api_key.get_secret_value(),
                prefix="LLM_",
            ),
            name="planner-model-watch",
        )
        if self.settings.canary:
            # In the background: tasks are served while the model answers it.
            self.spawn(run_canary(self.settings, self.llm), name="planner-canary")
        log.info(
            "planner ready: model %s at %s, %s mode, family %s (instance %s)",
            self.settings.llm_model,
            self.llm_url,
            self.settings.resolved_mode,
            for_settings(self.settings).name,
            self.instance,
        )

    def _subscribe(self) -> None:
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
            inbox_prefix=pull_inbox(broker),
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
            running = self.runners.get(task.session_id)
            if running is not None and running.task.task_id == task.task_id:
                # Handed out again while it runs here (a replica took this
                # one for dead and gave it back). It is one queue entry: the
                # runner's ack settles it, so this delivery is left alone.
                log.warning("task %s delivered again while it runs here", task.task_id)
                return
            resume: SessionState | None = None
            metadata = msg.raw_message.metadata
            if metadata.num_delivered > 1:
                state = await sessions.load_state(broker, task.session_id)
                if await self._session_moved_on(task, state, metadata.sequence.stream):
                    # Running it now would start it over and fight the newer
                    # task for the desktop.
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
            if command.command in ("approve", "deny", "set_mode"):
                return  # the actuator's approval gate takes these
            control = self.controls.get(command.session_id)
            if command.command in ("takeover", "release"):
                # A person holding the mouse holds the whole desktop: every
                # task on it waits, not only the session that asked.
                asking = self.runners.get(command.session_id)
                sandbox = asking.sandbox_id if asking else None
                for session_id, other in self.controls.items():
                    runner = self.runners.get(session_id)
                    if sandbox is None or (runner and runner.sandbox_id == sandbox):
                        other.apply(command.command)
                return
            if control is not None:
                log.info("session %s: %s", command.session_id, command.command)
                control.apply(command.command, command.text)

    async def _session_moved_on(
        self, task: TaskSubmitted, state: SessionState | None, stream_sequence: int
    ) -> bool:
        """Whether a newer task of the same session exists, so ``task`` (redelivered) is stale.

        Newer means: it owns the session state, runs here, or waits in the
        queue behind this one (the queue may hand this task back before the
        newer one, when the replica that had it died a while ago).
        """
        if state is not None and state.task_id != task.task_id:
            return True
        running = self.runners.get(task.session_id)
        if running is not None and running.task.submitted_at > task.submitted_at:
            return True
        return await newer_task_queued(self.broker, task, stream_sequence)

    def _desktop_gone(self, sandbox_id: str, reason: str) -> None:
        for runner in list(self.runners.values()):
            if runner.sandbox_id == sandbox_id:
                log.warning("session %s: desktop %s %s", runner.task.session_id, sandbox_id, reason)
                runner.control.lose_desktop(reason)

    def _subscribe_desktops(self) -> None:
        broker = self.broker

        @broker.subscriber(subjects.ACTUATOR_HEARTBEAT, title="actuator.heartbeat")
        @typed_handler(broker, SERVICE, ActuatorHeartbeat, subjects.ACTUATOR_HEARTBEAT)
        async def on_heartbeat(beat: ActuatorHeartbeat) -> None:
            self.heartbeats.beat(beat.instance)

        @broker.subscriber(subjects.GROUNDER_HEARTBEAT, title="grounder.heartbeat")
        @typed_handler(broker, SERVICE, GrounderHeartbeat, subjects.GROUNDER_HEARTBEAT)
        async def on_grounder_heartbeat(beat: GrounderHeartbeat) -> None:
            self.grounders.hear(beat)

        lost_subject = subjects.provisioner_event("sandbox.lost")
        released_subject = subjects.provisioner_event("sandbox.released")

        @broker.subscriber(lost_subject, title="sandbox.lost")
        @typed_handler(broker, SERVICE, SandboxLost, lost_subject)
        async def on_lost(event: SandboxLost) -> None:
            self._desktop_gone(event.sandbox_id, f"was lost ({event.reason})")

        @broker.subscriber(released_subject, title="sandbox.released")
        @typed_handler(broker, SERVICE, SandboxReleased, released_subject)
        async def on_released(event: SandboxReleased) -> None:
            why = f"{event.reason}: {event.detail}" if event.detail else event.reason
            self._desktop_gone(event.sandbox_id, f"was released ({why})")

    def _subscribe_peers(self) -> None:
        broker = self.broker

        @broker.subscriber(subjects.PLANNER_HEARTBEAT, title="planner.heartbeat")
        @typed_handler(broker, SERVICE, PlannerHeartbeat, subjects.PLANNER_HEARTBEAT)
        async def on_planner_heartbeat(beat: PlannerHeartbeat) -> None:
            self.peers.beat(beat)

    def _beat(self) -> PlannerHeartbeat:
        return PlannerHeartbeat(
            instance=self.instance, started_at=self.started_at, tasks=list(self.held.values())
        )

    async def _hand_over_silent_peers(self) -> None:
        """Give the tasks of a replica that fell silent back to the queue now, not after
        their ack wait: one of the replicas (maybe this one) takes each and resumes it."""
        own = {runner.task.task_id for runner in self.runners.values()}
        for peer, tasks in self.peers.silent(self.settings.peer_silence, own).items():
            log.warning("planner %s went silent; handing over %d of its tasks", peer, len(tasks))
            for held in tasks:
                await hand_back(self.broker, held, peer)

    def start_task(
        self, task: TaskSubmitted, delivery: NatsMessage, resume: SessionState | None = None
    ) -> asyncio.Task[object]:
        if task.session_id in self.controls:
            log.warning("session %s already has a running task; stopping it first", task.session_id)
            self.controls[task.session_id].apply("stop")
        control = Control()
        self.controls[task.session_id] = control
        runner = TaskRunner(
            self.broker,
            self.llm,
            self.settings,
            task,
            control,
            heartbeats=self.heartbeats,
            grounders=self.grounders,
        )
        self.runners[task.session_id] = runner
        held = HeldTask(
            task_id=task.task_id,
            session_id=task.session_id,
            ack_subject=delivery.raw_message.reply or "",
        )
        self.held[task.session_id] = held

        async def run() -> object:
            keep_alive = asyncio.create_task(self._keep_alive(delivery))
            try:
                # At once: the other replicas learn where the task runs now.
                await send_beat(self.broker, subjects.PLANNER_HEARTBEAT, self._beat())
                result = await runner.run(resume=resume)
            except asyncio.CancelledError:
                # This planner is shutting down mid-task: give the task back
                # now, so another replica resumes it without waiting; unless
                # another replica holds it already.
                if not runner.superseded:
                    await _settle_delivery(delivery, "nack", task)
                raise
            finally:
                keep_alive.cancel()
                if self.controls.get(task.session_id) is control:
                    del self.controls[task.session_id]
                    self.runners.pop(task.session_id, None)
                if self.held.get(task.session_id) is held:
                    del self.held[task.session_id]
            if runner.superseded:
                # The replica that took it over settles it: an ack here would
                # take it out of the queue under that replica's feet.
                return result
            await _settle_delivery(delivery, "ack", task)
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

    async def _give_back_tasks(self) -> None:
        # Stop taking tasks first, so a task given back below is not pulled
        # again by this same, dying replica.
        self.accepting = False
        try:
            await self._task_subscriber.stop()
        except Exception as exc:
            log.warning("could not stop the task subscriber cleanly: %s", exc)
        for handle in list(self.running):
            handle.cancel()
        if self.running:
            await asyncio.wait(self.running, timeout=5)


def build(settings: Settings) -> PlannerService:
    return PlannerService(settings)


async def _settle_delivery(
    delivery: NatsMessage, how: Literal["ack", "nack"], task: TaskSubmitted
) -> None:
    """Acknowledge (done) or give back (nack) a task; a failure only delays that.

    An ack that is lost makes the queue deliver the task again, and the
    replica that gets it finds it ended in the session state.
    """
    try:
        await (delivery.ack() if how == "ack" else delivery.nack())
    except Exception as exc:
        log.warning("could not %s task %s: %s", how, task.task_id, exc)


# Past this many queued tasks the look-ahead gives up: the task runs, and a
# newer task of its session that arrives later still replaces it.
_QUEUE_LOOKAHEAD = 200


async def newer_task_queued(broker: NatsBroker, task: TaskSubmitted, after: int) -> bool:
    """Whether the tasks queue holds a later task of ``task``'s session, past sequence ``after``.

    The queue keeps a task until it is acknowledged, so a newer task that is
    waiting or running elsewhere is still there. Read failures count as "no":
    the task runs, as it did before this check.
    """
    manager = jetstream(broker)
    sequence = after + 1
    try:
        for _ in range(_QUEUE_LOOKAHEAD):
            try:
                raw = await asyncio.wait_for(
                    manager.get_msg(
                        subjects.TASKS_STREAM, seq=sequence, subject=subjects.TASK_SUBMIT, next=True
                    ),
                    2.0,
                )
            except NotFoundError:
                return False  # nothing after it
            try:
                later = TaskSubmitted.model_validate_json(raw.data or b"")
            except ValidationError:
                later = None  # the planner that pulls it rejects it
            if (
                later is not None
                and later.session_id == task.session_id
                and later.task_id != task.task_id
                and later.submitted_at >= task.submitted_at
            ):
                return True
            sequence = (raw.seq or sequence) + 1
    except Exception as exc:
        log.warning("session %s: could not look at the tasks queue: %s", task.session_id, exc)
    return False


async def stopped_while_queued(broker: NatsBroker, task: TaskSubmitted) -> bool:
    """Whether the session's latest control, sent after this task, is a stop.

    When that cannot be read, the task runs: a stop sent later still reaches it.
    """
    try:
        last = await asyncio.wait_for(
            jetstream(broker).get_last_msg(
                subjects.CONTROLS_STREAM, subjects.session_control(task.session_id)
            ),
            2.0,
        )
    except NotFoundError:
        return False  # no control was ever sent for this session
    except TimeoutError:
        log.warning("session %s: no answer about its controls in time", task.session_id)
        return False
    except Exception:
        log.exception("session %s: could not read its latest control", task.session_id)
        return False
    try:
        command = ControlCommand.model_validate_json(last.data or b"")
    except ValidationError as exc:
        log.warning("session %s: unreadable latest control: %s", task.session_id, exc)
        return False
    return command.command == "stop" and command.sent_at >= task.submitted_at


async def prepare(broker: NatsBroker) -> None:
    """The streams every service declares, and the session-state bucket."""
    await ensure_streams(broker)
    await sessions.ensure_bucket(broker)
