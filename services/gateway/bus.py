"""The gateway's side of NATS: publishing tasks and commands, following events, history.

It has the shape of every service (``start``/``stop``, see ``selfagent.bus.service``);
the web app's lifespan calls both.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any, TypeVar

from faststream.exceptions import IncorrectState
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import BucketNotFoundError

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
from selfagent.bus.streams import ensure_streams
from selfagent.errors import BusAuthError, BusUnavailable
from selfagent.schemas import ControlCommand, ModelStatus, SessionState, TaskSubmitted, subjects
from selfagent.schemas.messages import Message, Reply

from .config import Settings
from .hub import SESSION_EVENT, EventHub, TakeoverState

log = logging.getLogger(__name__)

SERVICE = "gateway"

ReplyT = TypeVar("ReplyT", bound=Reply)


@dataclass
class History:
    events: list[dict[str, Any]]
    truncated: bool


class GatewayBus(Service):
    def __init__(self, settings: Settings, hub: EventHub, takeover: TakeoverState) -> None:
        super().__init__()
        self.settings = settings
        self.hub = hub
        self.takeover = takeover
        self.broker = make_broker(settings.nats_url, name=SERVICE, auth=settings.bus_auth())
        self._ready = asyncio.Event()
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
        self._ready.set()
        log.info("connected to NATS at %s", self.broker.address)

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

    async def history(self, session_id: str, limit: int) -> History:
        """A session's events in order, read from the JetStream stream."""
        self._require()
        js = jetstream(self.broker)
        psub = await js.pull_subscribe(
            subjects.session_events(session_id),
            stream=subjects.EVENTS_STREAM,
            config=ConsumerConfig(
                deliver_policy=DeliverPolicy.ALL,
                ack_policy=AckPolicy.NONE,
                inactive_threshold=30.0,
            ),
        )
        events: list[dict[str, Any]] = []
        consumer: str | None = None
        pending = 0
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
        return History(events=events, truncated=pending > limit)
