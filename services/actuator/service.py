"""The actuator as a service: act and observe requests for the desktops it serves.

``fixed`` desktops: it serves the one desktop its settings describe.
``per_session``: it serves every desktop the provisioner leases (one
wildcard subscription; see fleet.py). Either way it publishes a heartbeat
every second, so a planner waiting on an action learns within seconds that
the actuator died under it.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from datetime import UTC, datetime

from faststream.nats.annotations import NatsMessage
from pydantic import BaseModel

from selfagent.bus import (
    NO_REPLY,
    RemoteError,
    RequestTimeout,
    Service,
    make_broker,
    metrics,
    parse,
    request,
    start_with_retry,
    typed_handler,
    typed_subject_handler,
)
from selfagent.bus.heartbeat import beat_forever
from selfagent.bus.hosts import Peers
from selfagent.errors import DesktopUnavailable, InvalidMessage
from selfagent.schemas import (
    ActionResult,
    ActRequest,
    ActuatorHeartbeat,
    ConnectRequest,
    ControlCommand,
    ErrorCode,
    ErrorInfo,
    HostCapacity,
    Observation,
    ObserveRequest,
    ProvisionerStatus,
    SandboxEndpoint,
    StatusRequest,
    subjects,
)
from selfagent.schemas.sandboxes import SandboxLeased, SandboxLost, SandboxReleased

from .backend import VncDesktop
from .config import Settings
from .fleet import Fleet, Served
from .gate import ApprovalGate, Verdict
from .policy import load_policy

log = logging.getLogger(__name__)

SERVICE = "actuator"
# Desktops of different sessions are driven at the same time.
WORKERS = 64


def _fixed_endpoint(settings: Settings) -> SandboxEndpoint:
    password, token = settings.vnc_password, settings.exec_token
    return SandboxEndpoint(
        sandbox_id=settings.sandbox_id,
        vnc_host=settings.vnc_host,
        vnc_port=settings.vnc_port,
        vnc_password=password.get_secret_value() if password else "",
        exec_url=settings.exec_url or "",
        exec_token=token.get_secret_value() if token else "",
    )


def _unavailable(exc: DesktopUnavailable) -> ErrorInfo:
    return ErrorInfo(code=ErrorCode.SANDBOX_UNAVAILABLE, message=str(exc))


def _sandbox_of(subject: str) -> str:
    # agent.sandbox.<box>.act: the wildcard matched exactly one token.
    return subject.split(".")[2]


class ActuatorService(Service):
    def __init__(self, settings: Settings) -> None:
        super().__init__()
        self.settings = settings
        self.instance = f"{SERVICE}-{secrets.token_hex(4)}"
        self.started_at = datetime.now(UTC)
        name = SERVICE if settings.desktops == "per_session" else f"{SERVICE}-{settings.sandbox_id}"
        self.broker = make_broker(settings.nats_url, name, settings.bus_auth())
        self.fleet = Fleet(settings, self._connect)
        self.gate = ApprovalGate(load_policy(settings.policy_file), self._publish)
        metrics.APPROVALS_PENDING.set_function(lambda: len(self.gate.waiting))
        self.fixed: set[str] = set()
        self._opening: set[asyncio.Task[None]] = set()
        # With a host of its own: what the other hosts hold, from their
        # capacity announcements and the events of their leases.
        self.host = settings.host if settings.desktops == "per_session" else None
        self.peers = Peers(self.host or "", self.instance)
        self._elsewhere: dict[str, str] = {}
        if settings.desktops == "fixed":
            self.fixed.add(settings.sandbox_id)
            self.fleet.add(Served.open(settings.sandbox_id, _fixed_endpoint(settings), settings))
        # Released in reverse: the bus first (no new actions), then the desktops.
        self.resources.push_async_callback(self.fleet.close_all)
        self.resources.push_async_callback(self.broker.stop)
        if settings.desktops == "fixed":
            self._subscribe_fixed(settings.sandbox_id)
        else:
            self._subscribe_leased()
        self._subscribe_controls()

    @property
    def desktop(self) -> VncDesktop:
        """The fixed desktop's VNC link."""
        served = self.fleet.served(self.settings.sandbox_id)
        if served is None:
            raise DesktopUnavailable("this actuator serves leased desktops, no fixed one")
        return served.desktop

    # -- requests --------------------------------------------------------------

    async def _act(self, sandbox_id: str, request: ActRequest) -> ActionResult:
        try:
            served = await self.fleet.get(sandbox_id)
            verdict = await self.gate.check(request, sandbox_id, served.session_id)
        except DesktopUnavailable as exc:
            verdict = Verdict(go=False, error=_unavailable(exc))
        if not verdict.go:
            return ActionResult(
                ok=False, action_id=request.action.id, actuator=self.instance, error=verdict.error
            )
        result = await served.executor.act(request)
        metrics.ACTION_SECONDS.labels(request.action.action).observe(result.duration_ms / 1000)
        update: dict[str, object] = {"actuator": self.instance}
        if verdict.note:
            # The model reads the person's words with the outcome.
            update["output"] = f"Approved by the user: {verdict.note}\n" + (result.output or "")
        return result.model_copy(update=update)

    async def _publish(self, message: BaseModel, subject: str) -> None:
        await self.broker.publish(message, subject)

    async def _observe(self, sandbox_id: str, request: ObserveRequest) -> Observation:
        try:
            served = await self.fleet.get(sandbox_id)
        except DesktopUnavailable as exc:
            return Observation(ok=False, actuator=self.instance, error=_unavailable(exc))
        observation = await served.executor.observe(request)
        observation.actuator = self.instance
        return observation

    def _subscribe_fixed(self, sandbox_id: str) -> None:
        broker = self.broker
        act_subject = subjects.sandbox_act(sandbox_id)
        observe_subject = subjects.sandbox_observe(sandbox_id)

        @broker.subscriber(act_subject, title="act", description="Execute one action")
        @typed_handler(broker, SERVICE, ActRequest, act_subject)
        async def act(request: ActRequest) -> ActionResult:
            return await self._act(sandbox_id, request)

        @broker.subscriber(observe_subject, title="observe", description="Take a screenshot")
        @typed_handler(broker, SERVICE, ObserveRequest, observe_subject)
        async def observe(request: ObserveRequest) -> Observation:
            return await self._observe(sandbox_id, request)

    def _subscribe_leased(self) -> None:
        broker = self.broker

        @broker.subscriber(
            subjects.SANDBOX_ACT_ALL,
            max_workers=WORKERS,
            title="act",
            description="Execute one action on a leased desktop",
        )
        @typed_subject_handler(broker, SERVICE, ActRequest, subjects.SANDBOX_ACT_ALL)
        async def act(request: ActRequest, subject: str) -> ActionResult | BaseModel:
            sandbox_id = _sandbox_of(subject)
            if self._other_hosts(sandbox_id):
                return NO_REPLY
            return await self._act(sandbox_id, request)

        @broker.subscriber(
            subjects.SANDBOX_OBSERVE_ALL,
            max_workers=WORKERS,
            title="observe",
            description="Take a screenshot of a leased desktop",
        )
        @typed_subject_handler(broker, SERVICE, ObserveRequest, subjects.SANDBOX_OBSERVE_ALL)
        async def observe(request: ObserveRequest, subject: str) -> Observation | BaseModel:
            sandbox_id = _sandbox_of(subject)
            if self._other_hosts(sandbox_id):
                return NO_REPLY
            return await self._observe(sandbox_id, request)

        @broker.subscriber(subjects.PROVISIONER_EVENTS_ALL, title="sandbox events")
        async def on_sandbox_event(msg: NatsMessage) -> None:
            subject = msg.raw_message.subject
            try:
                if subject.endswith(".sandbox.leased"):
                    leased = parse(SandboxLeased, msg.body, subject)
                    if self.host is not None and leased.host != self.host:
                        self._elsewhere[leased.sandbox_id] = leased.host
                        return
                    # In the background: opening waits for the VNC handshake.
                    opening = asyncio.create_task(self.fleet.open_soon(leased.sandbox_id))
                    self._opening.add(opening)
                    opening.add_done_callback(self._opening.discard)
                elif subject.endswith(".sandbox.released"):
                    released = parse(SandboxReleased, msg.body, subject)
                    self._elsewhere.pop(released.sandbox_id, None)
                    await self.fleet.close(released.sandbox_id, f"released ({released.reason})")
                elif subject.endswith(".sandbox.lost"):
                    lost = parse(SandboxLost, msg.body, subject)
                    self._elsewhere.pop(lost.sandbox_id, None)
                    await self.fleet.close(lost.sandbox_id, f"lost: {lost.reason}")
            except InvalidMessage as exc:
                log.warning("ignoring a sandbox event: %s", exc)

        if self.host is not None:

            @broker.subscriber(subjects.PROVISIONER_CAPACITY, title="host capacity")
            @typed_handler(broker, SERVICE, HostCapacity, subjects.PROVISIONER_CAPACITY)
            async def on_capacity(announced: HostCapacity) -> None:
                self.peers.heard(announced)

    def _other_hosts(self, sandbox_id: str) -> bool:
        """Whether another host's actuator answers for this sandbox (only with a host set).

        A sandbox this actuator serves, or nobody is known to hold, is answered
        here: by the desktop, or by the error that it is unavailable.
        """
        if self.host is None or self.fleet.served(sandbox_id) is not None:
            return False
        elsewhere = self._elsewhere.get(sandbox_id) or self.peers.holder_of_sandbox(sandbox_id)
        return elsewhere is not None and elsewhere != self.host

    def _subscribe_controls(self) -> None:
        broker = self.broker

        @broker.subscriber(subjects.SESSION_CONTROL_ALL, title="approvals")
        @typed_handler(broker, SERVICE, ControlCommand, subjects.SESSION_CONTROL_ALL)
        async def on_control(command: ControlCommand) -> None:
            self.gate.on_control(command)

    def _provisioner(self, op: str) -> str:
        """Its own host's provisioner when it has one, else whichever the bus picks."""
        if self.host is None:
            return {"connect": subjects.PROVISIONER_CONNECT, "status": subjects.PROVISIONER_STATUS}[
                op
            ]
        return subjects.provisioner_host(self.host, op)

    async def _connect(self, sandbox_id: str) -> SandboxEndpoint:
        return await request(
            self.broker,
            self._provisioner("connect"),
            ConnectRequest(sandbox_id=sandbox_id),
            SandboxEndpoint,
            timeout=self.settings.connect_timeout,
        )

    # -- background ------------------------------------------------------------

    def _beat(self) -> ActuatorHeartbeat:
        return ActuatorHeartbeat(
            instance=self.instance, started_at=self.started_at, sandboxes=self.fleet.sandbox_ids
        )

    async def _reconcile(self) -> None:
        """Close desktops whose release this actuator missed (it was away, or the event was)."""
        while True:
            await asyncio.sleep(self.settings.reconcile_interval)
            try:
                status = await request(
                    self.broker,
                    self._provisioner("status"),
                    StatusRequest(),
                    ProvisionerStatus,
                    timeout=self.settings.connect_timeout,
                )
            except (RemoteError, RequestTimeout) as exc:
                log.debug("no provisioner status: %s", exc)
                continue
            leased = {info.sandbox_id for info in status.sandboxes if info.state == "leased"}
            await self.fleet.keep_only(leased, self.fixed)

    async def _start(self) -> None:
        if self.fixed:
            # The VNC link comes up (and keeps coming back) in the background;
            # an action before it is up gets a clear "not executed" error.
            await self.desktop.start()
        await start_with_retry(self.broker)
        self.spawn(
            beat_forever(
                self.broker,
                subjects.ACTUATOR_HEARTBEAT,
                self._beat,
                self.settings.heartbeat_interval,
            ),
            name="actuator-heartbeat",
        )
        if self.settings.desktops == "per_session":
            self.spawn(self._reconcile(), name="actuator-reconcile")
            log.info(
                "actuator %s ready: serving every leased desktop%s",
                self.instance,
                f" of host {self.host}" if self.host else "",
            )
        else:
            log.info("actuator %s ready for sandbox %r", self.instance, self.settings.sandbox_id)


def build(settings: Settings) -> ActuatorService:
    return ActuatorService(settings)
