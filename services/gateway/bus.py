"""The gateway's side of NATS: publishing tasks and commands, following events, history.

It has the shape of every service (``start``/``stop``, see ``selfagent.bus.service``);
the web app's lifespan calls both.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from faststream.exceptions import IncorrectState
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, KeyValueConfig, StorageType
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, NotFoundError
from nats.js.kv import KeyValue

from selfagent.bus import (
    Service,
    jetstream,
    make_broker,
    metrics,
    request,
    screens,
    sessions,
    start_with_retry,
    typed_handler,
)
from selfagent.bus.broker import replicas_of
from selfagent.bus.streams import ensure_streams
from selfagent.errors import BusAuthError, BusUnavailable
from selfagent.schemas import ControlCommand, ModelStatus, SessionState, TaskSubmitted, subjects
from selfagent.schemas.messages import Message, Reply

from .config import Settings
from .hub import SESSION_EVENT, EventHub, TakeoverState

log = logging.getLogger(__name__)

SERVICE = "gateway"

ReplyT = TypeVar("ReplyT", bound=Reply)

# The one key of the take-over bucket: every held desktop in one value, so a
# restart reads it in one get (one gateway replica writes it).
TAKEOVER_KEY = "holders"
# Saving the take-over must not hold anything up; a failed save is retried.
TAKEOVER_TIMEOUT = 2.0


@dataclass
class History:
    events: list[dict[str, Any]]
    truncated: bool
    # The stream sequence of the last event read (0: none); read on with ``after``.
    last_seq: int = 0


class GatewayBus(Service):
    def __init__(self, settings: Settings, hub: EventHub, takeover: TakeoverState) -> None:
        super().__init__()
        self.settings = settings
        self.hub = hub
        self.takeover = takeover
        self.broker = make_broker(settings.nats_url, name=SERVICE, auth=settings.bus_auth())
        self._ready = asyncio.Event()
        self._takeover_dirty = asyncio.Event()
        takeover.on_change = self._takeover_dirty.set
        self.resources.push_async_callback(self.broker.stop)

        @self.broker.subscriber(subjects.SESSION_EVENTS_ALL)
        @typed_handler(self.broker, SERVICE, SESSION_EVENT, subjects.SESSION_EVENTS_ALL)
        async def on_event(event: Any) -> None:
            metrics.EVENTS_RELAYED.inc()
            self.hub.dispatch(event)

        # What the planner and the grounder last said about their model endpoints.
        self.model_status: dict[str, ModelStatus] = {}

        @self.broker.subscriber(subjects.STATUS_ALL)
        @typed_handler(self.broker, SERVICE, ModelStatus, subjects.STATUS_ALL)
        async def on_status(status: ModelStatus) -> None:
            self.model_status[status.service] = status

        @self.broker.subscriber(subjects.SESSION_CONTROL_ALL)
        @typed_handler(self.broker, SERVICE, ControlCommand, subjects.SESSION_CONTROL_ALL)
        async def on_control(command: ControlCommand) -> None:
            self.takeover.apply(command)

    # --- lifecycle ---------------------------------------------------------

    async def _start(self) -> None:
        """Connect in the background: the page and /healthz work while NATS is still down."""
        # Refused credentials end the connecting, and the gateway with it.
        self.spawn(self._connect(), name="gateway-nats-connect", errors_are_fatal=True)

    async def _connect(self) -> None:
        await start_with_retry(self.broker)
        while True:
            try:
                await self.ensure_stream()
                break
            except BusAuthError:
                raise  # a refused permission does not heal by waiting
            except Exception as exc:
                log.warning(
                    "could not create the %s stream (%s); retrying", subjects.EVENTS_STREAM, exc
                )
                await asyncio.sleep(1.0)
        await self._restore_takeover()
        self.spawn(self._keep_takeover(), name="gateway-takeover-save")
        self._ready.set()
        log.info("connected to NATS at %s", self.broker.address)

    # --- take-over, kept on the bus ------------------------------------------

    async def _takeover_bucket(self) -> KeyValue:
        js = jetstream(self.broker)
        try:
            return await js.key_value(subjects.TAKEOVER_BUCKET)
        except BucketNotFoundError:
            return await js.create_key_value(
                KeyValueConfig(
                    bucket=subjects.TAKEOVER_BUCKET,
                    description="the gateway's take-over state: who holds which desktop",
                    history=1,
                    storage=StorageType.FILE,
                    replicas=replicas_of(self.broker),
                )
            )

    async def _restore_takeover(self) -> None:
        """What an earlier gateway saved, less the sessions released since (on the bus,
        while no gateway listened: the controls stream keeps each session's last)."""
        try:
            bucket = await asyncio.wait_for(self._takeover_bucket(), TAKEOVER_TIMEOUT)
            entry = await asyncio.wait_for(bucket.get(TAKEOVER_KEY), TAKEOVER_TIMEOUT)
        except KeyNotFoundError:
            return
        except (TimeoutError, NatsTimeoutError) as exc:
            log.warning("could not read the saved take-over state (%s); starting released", exc)
            return
        try:
            saved = json.loads(entry.value or b"{}")
        except ValueError:
            log.warning("unreadable saved take-over state; starting released")
            return
        if not isinstance(saved, dict):
            return
        last: dict[str, ControlCommand] = {}
        for raw in dict(saved.get("holders") or {}).values():
            session_id = raw.get("session_id") if isinstance(raw, dict) else None
            if isinstance(session_id, str) and session_id not in last:
                command = await self._last_control(session_id)
                if command is not None:
                    last[session_id] = command

        def released(session_id: str, since: datetime) -> bool:
            command = last.get(session_id)
            return command is not None and command.command == "release" and command.sent_at > since

        self.takeover.restore(saved, released)

    async def _last_control(self, session_id: str) -> ControlCommand | None:
        try:
            msg = await asyncio.wait_for(
                jetstream(self.broker).get_last_msg(
                    subjects.CONTROLS_STREAM, subjects.session_control(session_id)
                ),
                TAKEOVER_TIMEOUT,
            )
            return ControlCommand.model_validate_json(msg.data or b"")
        except (NotFoundError, TimeoutError, NatsTimeoutError, ValueError):
            return None

    async def _keep_takeover(self) -> None:
        """Save the take-over state after each change, the newest state each time."""
        while True:
            await self._takeover_dirty.wait()
            self._takeover_dirty.clear()
            data = json.dumps(self.takeover.dump()).encode()
            try:
                bucket = await asyncio.wait_for(self._takeover_bucket(), TAKEOVER_TIMEOUT)
                await asyncio.wait_for(bucket.put(TAKEOVER_KEY, data), TAKEOVER_TIMEOUT)
            except Exception as exc:
                log.warning("could not save the take-over state (%s); retrying", exc)
                self._takeover_dirty.set()
                await asyncio.sleep(1.0)

    async def wait_ready(self) -> None:
        await self._ready.wait()

    @property
    def connected(self) -> bool:
        if not self._ready.is_set():
            return False
        try:
            return bool(self.broker.connection.is_connected)
        except IncorrectState:  # stopped since
            return False

    def _require(self) -> None:
        if not self.connected:
            raise BusUnavailable("the gateway is not connected to NATS; try again shortly")

    async def ensure_stream(self) -> None:
        """Create the JetStream streams if no other service has yet (idempotent)."""
        await ensure_streams(self.broker)

    # --- publishing --------------------------------------------------------

    async def submit(self, task: TaskSubmitted) -> None:
        self._require()
        # Through the tasks stream: the PubAck means the task is stored and
        # will reach a planner even if none is running right now.
        await self.broker.publish(task, subjects.TASK_SUBMIT, stream=subjects.TASKS_STREAM)

    async def control(self, command: ControlCommand) -> None:
        self._require()
        await self.broker.publish(command, subjects.session_control(command.session_id))

    async def ask(
        self, subject: str, message: Message, reply: type[ReplyT], timeout: float
    ) -> ReplyT:
        """A request to another service (the provisioner); raises RemoteError / RequestTimeout."""
        self._require()
        return await request(self.broker, subject, message, reply, timeout=timeout)

    # --- history -----------------------------------------------------------

    async def session_states(self, timeout: float) -> tuple[list[SessionState], bool]:
        """Every record of the ``agent_sessions`` bucket; and whether all were read in time.

        One watcher delivers the latest value of each key, which costs one
        round trip instead of one per session.
        """
        self._require()
        states: list[SessionState] = []
        try:
            bucket = await sessions.open_bucket(self.broker)
        except (BucketNotFoundError, TimeoutError):
            return states, True  # no planner has written any yet
        watcher = await bucket.watchall(ignore_deletes=True)
        complete = False
        try:
            async with asyncio.timeout(timeout):
                while (entry := await watcher.updates(timeout)) is not None:  # type: ignore[no-untyped-call]
                    if not entry.value:
                        continue
                    try:
                        states.append(SessionState.model_validate_json(entry.value))
                    except ValueError:
                        log.warning("session %s: unreadable state in the KV bucket", entry.key)
                complete = True
        except (TimeoutError, NatsTimeoutError):
            log.warning("reading the session records took over %.1fs; listing part", timeout)
        finally:
            with contextlib.suppress(Exception):
                await watcher.stop()  # type: ignore[no-untyped-call]
        return states, complete

    async def session_state(self, session_id: str) -> SessionState | None:
        """The planner's record of a session (the ``agent_sessions`` KV bucket)."""
        self._require()
        return await sessions.load_state(self.broker, session_id)

    async def screenshot(
        self, session_id: str, step: int, when: str, task_id: str | None = None
    ) -> screens.StoredShot | None:
        """A step's kept screenshot (the ``AGENT_SCREENS`` stream), if it is still kept."""
        self._require()
        return await screens.fetch(self.broker, session_id, step, when, task_id)

    async def history(self, session_id: str, limit: int, after: int = 0) -> History:
        """A session's events in order, read from the JetStream stream; with ``after``,
        only those stored after that stream sequence (a page reconnecting
        reads on from the ``last_seq`` it was given)."""
        self._require()
        js = jetstream(self.broker)
        psub = await js.pull_subscribe(
            subjects.session_events(session_id),
            stream=subjects.EVENTS_STREAM,
            config=ConsumerConfig(
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE if after else DeliverPolicy.ALL,
                opt_start_seq=after + 1 if after else None,
                ack_policy=AckPolicy.NONE,
                inactive_threshold=30.0,
            ),
        )
        events: list[dict[str, Any]] = []
        consumer: str | None = None
        pending = 0
        last_seq = after
        try:
            info = await psub.consumer_info()
            consumer = info.name
            pending = int(info.num_pending or 0)
            wanted = min(pending, limit)
            while len(events) < wanted:
                try:
                    batch = await psub.fetch(min(256, wanted - len(events)), timeout=2.0)
                except (NatsTimeoutError, TimeoutError):
                    break
                for msg in batch:
                    last_seq = max(last_seq, msg.metadata.sequence.stream)
                    try:
                        events.append(SESSION_EVENT.validate_json(msg.data).model_dump(mode="json"))
                    except ValueError:
                        log.warning("skipping an invalid event in the stream on %s", msg.subject)
        finally:
            with contextlib.suppress(Exception):
                await psub.unsubscribe()
            if consumer:
                with contextlib.suppress(Exception):
                    await js.delete_consumer(subjects.EVENTS_STREAM, consumer)
        return History(events=events, truncated=pending > limit, last_seq=last_seq)
