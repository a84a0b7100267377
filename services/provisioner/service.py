"""The provisioner on the bus: lease, release, connect and status requests; sandbox events.

``build(settings)`` wires everything without I/O; ``start()`` opens the
backend, connects, adopts what still runs and starts answering; ``stop()``
keeps or stops the desktops (``keep_on_stop``) while the bus is still up,
then disconnects.

Only one provisioner should answer on a bus for now: the subjects carry no
host, so with two, a release could reach the one that does not hold the
session (see docs/architecture.md, "Provisioner").
"""

from __future__ import annotations

import asyncio
import logging
import time

from faststream.nats import NatsBroker
from faststream.nats.annotations import NatsMessage

from selfagent.bus import (
    RemoteError,
    RequestTimeout,
    Service,
    error_reply,
    make_broker,
    metrics,
    request,
    start_with_retry,
    typed_handler,
)
from selfagent.errors import (
    CapacityExhausted,
    ConfigError,
    ProvisionerError,
    SandboxStartFailed,
    UnknownSandbox,
)
from selfagent.schemas import (
    ConnectRequest,
    ErrorCode,
    ErrorReply,
    Lease,
    LeaseRequest,
    ProvisionerStatus,
    Released,
    ReleaseRequest,
    SandboxEndpoint,
    StatusRequest,
    subjects,
)
from selfagent.schemas.sandboxes import SandboxEvent

from .backend import SandboxBackend
from .config import Settings, this_host
from .pool import Pool
from .state import StateStore

log = logging.getLogger(__name__)

SERVICE = "provisioner"
# Waiting leases each hold a handler until they get a place or give up.
LEASE_WORKERS = 64


def make_backend(settings: Settings, state: StateStore) -> SandboxBackend:
    screen = (settings.screen_width, settings.screen_height)
    if settings.backend == "docker":
        try:
            from .docker_backend import DockerBackend
        except ImportError as exc:
            raise ConfigError(
                "the docker backend needs the Docker SDK: pip install 'selfagent[provisioner]'"
            ) from exc
        return DockerBackend(
            state,
            host=settings.host_name,
            image=settings.docker_image,
            network=settings.docker_network,
            address=settings.docker_address,
            cpus=settings.docker_cpus,
            memory=settings.docker_memory,
            pids=settings.docker_pids,
            shm=settings.docker_shm,
            screen=screen,
            start_timeout=settings.start_timeout,
            stop_timeout=settings.docker_stop_timeout,
            ready_probe=settings.docker_ready_probe,
            proxy=settings.docker_proxy,
        )
    from .native import NativeBackend

    return NativeBackend(
        state,
        host=settings.host_name or this_host(),
        screen=screen,
        start_timeout=settings.start_timeout,
        sandbox_dir=settings.sandbox_dir,
    )


class ProvisionerService(Service):
    def __init__(self, settings: Settings, backend: SandboxBackend | None = None) -> None:
        super().__init__()
        self.settings = settings
        self.state = StateStore(settings.data_dir)
        self.backend = backend or make_backend(settings, self.state)
        self.broker: NatsBroker = make_broker(
            settings.nats_url,
            f"{SERVICE}-{settings.host_name or this_host()}",
            settings.bus_auth(),
        )
        self.pool = Pool(
            self.backend,
            self.state,
            # The backend's name for this host is final once it is open.
            host=settings.host_name or "",
            warm=settings.warm,
            max_per_host=settings.max_per_host,
            max_starting=settings.max_starting,
            lease_wait=settings.lease_wait,
            idle_release=settings.idle_release,
            check_interval=settings.check_interval,
            publish=self._publish,
        )
        pool = self.pool
        metrics.watch_sandboxes(lambda: [s.state for s in pool.sandboxes()], lambda: pool.waiting)
        # Released in reverse: the pool (see _stop_pool) and the backend go
        # before the broker.
        self.resources.push_async_callback(self.broker.stop)
        self._subscribe()

    async def _publish(self, event: SandboxEvent) -> None:
        await self.broker.publish(event, subjects.provisioner_event(event.kind))

    def _subscribe(self) -> None:
        broker, pool = self.broker, self.pool
        settings = self.settings

        @broker.subscriber(
            subjects.PROVISIONER_LEASE,
            max_workers=LEASE_WORKERS,
            title="lease",
            description="LeaseRequest -> Lease",
        )
        @typed_handler(broker, SERVICE, LeaseRequest, subjects.PROVISIONER_LEASE)
        async def lease(request: LeaseRequest) -> Lease | ErrorReply:
            try:
                outcome = await pool.lease(request.session_id)
            except (CapacityExhausted, SandboxStartFailed) as exc:
                return error_reply(ErrorCode.SANDBOX_UNAVAILABLE, str(exc))
            except ProvisionerError as exc:
                return error_reply(ErrorCode.SANDBOX_UNAVAILABLE, str(exc))
            handle = outcome.handle
            return Lease(
                sandbox_id=handle.sandbox_id,
                session_id=request.session_id,
                screen_width=handle.screen[0],
                screen_height=handle.screen[1],
                warm=outcome.warm,
                home=handle.home,
                host=pool.host,
                wait_ms=outcome.wait_s * 1000,
            )

        @broker.subscriber(
            subjects.PROVISIONER_RELEASE,
            max_workers=16,
            title="release",
            description="ReleaseRequest -> Released",
        )
        @typed_handler(broker, SERVICE, ReleaseRequest, subjects.PROVISIONER_RELEASE)
        async def release(request: ReleaseRequest) -> Released | ErrorReply:
            try:
                sandbox_id, deleted = await pool.release(request.session_id, request.keep_home)
            except ProvisionerError as exc:
                return error_reply(ErrorCode.INTERNAL, str(exc))
            return Released(
                session_id=request.session_id, sandbox_id=sandbox_id, home_deleted=deleted
            )

        @broker.subscriber(
            subjects.PROVISIONER_CONNECT,
            max_workers=16,
            title="connect",
            description="ConnectRequest -> SandboxEndpoint (secrets: a reply only)",
        )
        @typed_handler(broker, SERVICE, ConnectRequest, subjects.PROVISIONER_CONNECT)
        async def connect(request: ConnectRequest) -> SandboxEndpoint | ErrorReply:
            try:
                if request.session_id is not None:
                    handle = pool.endpoint_of_session(request.session_id)
                else:
                    assert request.sandbox_id is not None  # the request checks for one
                    handle = pool.endpoint(request.sandbox_id)
            except UnknownSandbox as exc:
                return error_reply(ErrorCode.NOT_FOUND, str(exc))
            return SandboxEndpoint(
                sandbox_id=handle.sandbox_id,
                session_id=handle.session_id,
                vnc_host=handle.endpoint.vnc_host,
                vnc_port=handle.endpoint.vnc_port,
                vnc_password=handle.secrets.vnc_password,
                exec_url=handle.endpoint.exec_url,
                exec_token=handle.secrets.exec_token,
                screen_width=handle.screen[0],
                screen_height=handle.screen[1],
            )

        @broker.subscriber(subjects.PROVISIONER_STATUS, title="status")
        @typed_handler(broker, SERVICE, StatusRequest, subjects.PROVISIONER_STATUS)
        async def status(_request: StatusRequest) -> ProvisionerStatus:
            return ProvisionerStatus(
                host=pool.host,
                backend=self.backend.name,
                max_per_host=settings.max_per_host,
                warm_target=settings.warm,
                waiting=pool.waiting,
                sandboxes=pool.sandboxes(),
            )

        # Any event of a session (a step, a message) means its desktop is in use.
        @broker.subscriber(subjects.SESSION_EVENTS_ALL, title="activity", include_in_schema=False)
        async def activity(msg: NatsMessage) -> None:
            parts = msg.raw_message.subject.split(".")
            if len(parts) > 2:
                pool.touch(parts[2])

    async def _adopt(self, _broker: NatsBroker) -> None:
        # Once connected (events can be published) and before requests are
        # answered: a lease must see the desktops that still run.
        await self.pool.start()

    async def _stop_pool(self) -> None:
        # While the bus is up: waiting leases get their "shutting down"
        # answer and starts in flight their events.
        keep = self.settings.keep_on_stop
        await self.pool.stop(keep_running=self.backend.keeps_running if keep is None else keep)

    async def _start(self) -> None:
        await self.backend.open()
        self.resources.push_async_callback(self.backend.close)
        self.pool.host = self.backend.host
        # Harmless for a pool that never started (the connection failed).
        self.resources.push_async_callback(self._stop_pool)
        await start_with_retry(self.broker, before_start=self._adopt)
        # The pool's refill and check loops failing for good ends the service.
        self.spawn(self.pool.wait(), name="provisioner-pool", errors_are_fatal=True)
        await self._answering()
        log.info(
            "provisioner %s ready: %s backend, warm %d, at most %d desktops",
            self.pool.host,
            self.backend.name,
            self.settings.warm,
            self.settings.max_per_host,
        )

    async def _answering(self, timeout: float = 5.0) -> None:
        """Return once the server routes requests to us.

        Subscribing (even with a flush) can return a moment before the
        server routes requests to the new subscriptions; a client that asks
        right after start() would meet "no responders". Asking ourselves
        closes that gap.
        """
        deadline = time.monotonic() + timeout
        while True:
            try:
                await request(
                    self.broker,
                    subjects.PROVISIONER_STATUS,
                    StatusRequest(),
                    ProvisionerStatus,
                    timeout=1.0,
                )
                return
            except (RemoteError, RequestTimeout):
                if time.monotonic() > deadline:
                    log.warning("requests do not reach this provisioner yet")
                    return
                await asyncio.sleep(0.02)


def build(settings: Settings) -> ProvisionerService:
    return ProvisionerService(settings)
