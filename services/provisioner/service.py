"""The provisioner on the bus: lease, release, connect and status requests; sandbox events.

``build(settings)`` wires everything without I/O; ``start()`` opens the
backend, connects, adopts what still runs and starts answering; ``stop()``
keeps or stops the desktops (``keep_on_stop``) while the bus is still up,
then disconnects.

Several provisioners (one per host) may share a bus. Each announces its
capacity (``agent.provisioner.capacity``) and answers its own subjects
(``agent.provisioner.<host>.<op>``); the shared subjects go to one of them
(queue group), which answers itself or hands the request to the host that
holds the session, or for a new session to the host with the most room
(see docs/architecture.md, "Several hosts").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from typing import TypeVar

from faststream.nats import NatsBroker
from faststream.nats.annotations import NatsMessage

from selfagent.bus import (
    BusError,
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
from selfagent.bus.hosts import Peers
from selfagent.errors import ConfigError, ProvisionerError, UnknownSandbox
from selfagent.schemas import (
    ConnectRequest,
    ErrorCode,
    ErrorReply,
    HostCapacity,
    Lease,
    LeaseRequest,
    ProvisionerStatus,
    Released,
    ReleaseRequest,
    SandboxEndpoint,
    StatusRequest,
    subjects,
)
from selfagent.schemas.messages import Message, Reply
from selfagent.schemas.sandboxes import SandboxEvent

from .backend import SandboxBackend
from .config import Settings, this_host
from .pool import Pool
from .state import StateStore

log = logging.getLogger(__name__)

SERVICE = "provisioner"
# Waiting leases each hold a handler until they get a place or give up.
LEASE_WORKERS = 64
# A lease handed to another host may wait there as long as here, plus this.
FORWARD_MARGIN = 10.0
# Connect, status and home deletion on the other hosts: they answer at once.
FORWARD_QUICK = 2.0

ReplyT = TypeVar("ReplyT", bound=Reply)


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
        self.instance = secrets.token_hex(4)
        self.broker: NatsBroker = make_broker(
            settings.nats_url,
            f"{SERVICE}-{settings.host_name or this_host()}",
            settings.bus_auth(),
        )
        self._capacity_changed = asyncio.Event()
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
            on_change=self._capacity_changed.set,
        )
        self.peers = Peers(self.pool.host, self.instance)
        pool = self.pool
        metrics.watch_sandboxes(lambda: [s.state for s in pool.sandboxes()], lambda: pool.waiting)
        # Released in reverse: the pool (see _stop_pool) and the backend go
        # before the broker.
        self.resources.push_async_callback(self.broker.stop)
        self._subscribe_shared()

    async def _publish(self, event: SandboxEvent) -> None:
        await self.broker.publish(event, subjects.provisioner_event(event.kind))

    # -- this host's answers -----------------------------------------------------

    async def _lease_here(self, request: LeaseRequest) -> Lease | ErrorReply:
        pool = self.pool
        try:
            outcome = await pool.lease(request.session_id)
        except ProvisionerError as exc:
            return error_reply(ErrorCode.SANDBOX_UNAVAILABLE, str(exc))
        # Announced before the reply: whoever learns of this lease from the
        # reply finds the session under this host in every announcement after.
        await self._announce()
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

    async def _release_here(self, request: ReleaseRequest) -> Released | ErrorReply:
        try:
            sandbox_id, deleted = await self.pool.release(request.session_id, request.keep_home)
        except ProvisionerError as exc:
            return error_reply(ErrorCode.INTERNAL, str(exc))
        return Released(session_id=request.session_id, sandbox_id=sandbox_id, home_deleted=deleted)

    def _connect_here(self, request: ConnectRequest) -> SandboxEndpoint:
        """Raises UnknownSandbox when this host does not hold it."""
        pool = self.pool
        if request.session_id is not None:
            handle = pool.endpoint_of_session(request.session_id)
        else:
            assert request.sandbox_id is not None  # the request checks for one
            handle = pool.endpoint(request.sandbox_id)
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

    def _status_here(self) -> ProvisionerStatus:
        pool = self.pool
        return ProvisionerStatus(
            host=pool.host,
            backend=self.backend.name,
            max_per_host=self.settings.max_per_host,
            warm_target=self.settings.warm,
            waiting=pool.waiting,
            sandboxes=pool.sandboxes(),
            hosts=[pool.host],
        )

    # -- shared subjects: answered here, or by the host that holds the session ----

    async def _ask_host(
        self, host: str, op: str, message: Message, model: type[ReplyT], timeout: float
    ) -> ReplyT:
        return await request(
            self.broker, subjects.provisioner_host(host, op), message, model, timeout=timeout
        )

    async def _lease_shared(self, request: LeaseRequest) -> Lease | ErrorReply:
        session_id = request.session_id
        if self.pool.holds(session_id):
            return await self._lease_here(request)
        # Sticky: a session's follow-up goes where its desktop is.
        target = self.peers.holder_of_session(session_id)
        if target is None:
            target = self.peers.choose(self._capacity())
        if target == self.pool.host:
            return await self._lease_here(request)
        timeout = self.settings.lease_wait + self.settings.start_timeout + FORWARD_MARGIN
        token = self.peers.placing(target)
        try:
            return await self._ask_host(target, "lease", request, Lease, timeout)
        except RemoteError as exc:
            if exc.code != ErrorCode.TIMEOUT:
                return ErrorReply(error=exc.error)
            # Nobody listens there any more: the host went away since its
            # last announcement. This host takes the session instead.
            log.warning("host %s did not take session %s: %s", target, session_id, exc)
        except RequestTimeout as exc:
            # It may still start a desktop there; starting another here
            # would give the session two.
            return error_reply(ErrorCode.SANDBOX_UNAVAILABLE, f"host {target}: {exc}")
        finally:
            self.peers.placed(target, token)
        return await self._lease_here(request)

    async def _release_shared(self, request: ReleaseRequest) -> Released | ErrorReply:
        session_id = request.session_id
        holder = None if self.pool.holds(session_id) else self.peers.holder_of_session(session_id)
        if holder is not None:
            try:
                return await self._ask_host(
                    holder, "release", request, Released, self.settings.start_timeout
                )
            except RemoteError as exc:
                if exc.code != ErrorCode.TIMEOUT:
                    return ErrorReply(error=exc.error)
            except RequestTimeout as exc:
                return error_reply(ErrorCode.INTERNAL, f"host {holder}: {exc}")
        here = await self._release_here(request)
        if request.keep_home or not isinstance(here, Released):
            return here
        # A home stays on the host its desktop ran on: delete it wherever it is.
        others = await self._ask_all("release", request, Released, FORWARD_QUICK)
        return here.model_copy(
            update={
                "sandbox_id": here.sandbox_id
                or next((r.sandbox_id for r in others if r.sandbox_id), None),
                "home_deleted": here.home_deleted or any(r.home_deleted for r in others),
            }
        )

    async def _connect_shared(self, request: ConnectRequest) -> SandboxEndpoint | ErrorReply:
        try:
            return self._connect_here(request)
        except UnknownSandbox as exc:
            missing = str(exc)
        if request.session_id is not None:
            holder = self.peers.holder_of_session(request.session_id)
        else:
            assert request.sandbox_id is not None
            holder = self.peers.holder_of_sandbox(request.sandbox_id)
        # Not announced (a lease a moment old): ask every host.
        hosts = [holder] if holder is not None else [p.host for p in self.peers.live()]
        for reply in await self._ask_all(
            "connect", request, SandboxEndpoint, FORWARD_QUICK, hosts=hosts
        ):
            return reply
        if self.peers.live():
            missing = f"{missing} nor on any other host"
        return error_reply(ErrorCode.NOT_FOUND, missing)

    async def _status_shared(self) -> ProvisionerStatus:
        here = self._status_here()
        others = await self._ask_all("status", StatusRequest(), ProvisionerStatus, FORWARD_QUICK)
        if not others:
            return here
        return here.model_copy(
            update={
                "waiting": here.waiting + sum(o.waiting for o in others),
                "sandboxes": [*here.sandboxes, *(s for o in others for s in o.sandboxes)],
                "hosts": [*here.hosts, *(o.host for o in others)],
            }
        )

    async def _ask_all(
        self,
        op: str,
        message: Message,
        model: type[ReplyT],
        timeout: float,
        hosts: list[str] | None = None,
    ) -> list[ReplyT]:
        """The successful answers of the other live hosts (or ``hosts``), in parallel."""
        names = [p.host for p in self.peers.live()] if hosts is None else hosts
        results = await asyncio.gather(
            *(self._ask_host(h, op, message, model, timeout) for h in names),
            return_exceptions=True,
        )
        replies: list[ReplyT] = []
        for host, result in zip(names, results, strict=True):
            if isinstance(result, BaseException):
                if not isinstance(result, BusError):
                    raise result
                log.debug("host %s: %s: %s", host, op, result)
            else:
                replies.append(result)
        return replies

    def _subscribe_shared(self) -> None:
        """The subjects every requester uses: one provisioner of the queue group takes each."""
        broker = self.broker
        queue = subjects.PROVISIONER_QUEUE

        @broker.subscriber(
            subjects.PROVISIONER_LEASE,
            queue=queue,
            max_workers=LEASE_WORKERS,
            title="lease",
            description="LeaseRequest -> Lease",
        )
        @typed_handler(broker, SERVICE, LeaseRequest, subjects.PROVISIONER_LEASE)
        async def lease(request: LeaseRequest) -> Lease | ErrorReply:
            return await self._lease_shared(request)

        @broker.subscriber(
            subjects.PROVISIONER_RELEASE,
            queue=queue,
            max_workers=16,
            title="release",
            description="ReleaseRequest -> Released",
        )
        @typed_handler(broker, SERVICE, ReleaseRequest, subjects.PROVISIONER_RELEASE)
        async def release(request: ReleaseRequest) -> Released | ErrorReply:
            return await self._release_shared(request)

        @broker.subscriber(
            subjects.PROVISIONER_CONNECT,
            queue=queue,
            max_workers=16,
            title="connect",
            description="ConnectRequest -> SandboxEndpoint (secrets: a reply only)",
        )
        @typed_handler(broker, SERVICE, ConnectRequest, subjects.PROVISIONER_CONNECT)
        async def connect(request: ConnectRequest) -> SandboxEndpoint | ErrorReply:
            return await self._connect_shared(request)

        @broker.subscriber(subjects.PROVISIONER_STATUS, queue=queue, max_workers=16, title="status")
        @typed_handler(broker, SERVICE, StatusRequest, subjects.PROVISIONER_STATUS)
        async def status(_request: StatusRequest) -> ProvisionerStatus:
            return await self._status_shared()

        @broker.subscriber(subjects.PROVISIONER_CAPACITY, title="capacity")
        @typed_handler(broker, SERVICE, HostCapacity, subjects.PROVISIONER_CAPACITY)
        async def capacity(announced: HostCapacity) -> None:
            self.peers.heard(announced)

        # Any event of a session (a step, a message) means its desktop is in use.
        @broker.subscriber(subjects.SESSION_EVENTS_ALL, title="activity", include_in_schema=False)
        async def activity(msg: NatsMessage) -> None:
            parts = msg.raw_message.subject.split(".")
            if len(parts) > 2:
                self.pool.touch(parts[2])

    def _subscribe_host(self, host: str) -> None:
        """This host's own subjects: always answered here, never handed on (no loops)."""
        broker = self.broker
        lease_subject = subjects.provisioner_host(host, "lease")
        release_subject = subjects.provisioner_host(host, "release")
        connect_subject = subjects.provisioner_host(host, "connect")
        status_subject = subjects.provisioner_host(host, "status")

        @broker.subscriber(lease_subject, max_workers=LEASE_WORKERS, title="host lease")
        @typed_handler(broker, SERVICE, LeaseRequest, lease_subject)
        async def lease(request: LeaseRequest) -> Lease | ErrorReply:
            return await self._lease_here(request)

        @broker.subscriber(release_subject, max_workers=16, title="host release")
        @typed_handler(broker, SERVICE, ReleaseRequest, release_subject)
        async def release(request: ReleaseRequest) -> Released | ErrorReply:
            return await self._release_here(request)

        @broker.subscriber(connect_subject, max_workers=16, title="host connect")
        @typed_handler(broker, SERVICE, ConnectRequest, connect_subject)
        async def connect(request: ConnectRequest) -> SandboxEndpoint | ErrorReply:
            try:
                return self._connect_here(request)
            except UnknownSandbox as exc:
                return error_reply(ErrorCode.NOT_FOUND, str(exc))

        @broker.subscriber(status_subject, title="host status")
        @typed_handler(broker, SERVICE, StatusRequest, status_subject)
        async def status(_request: StatusRequest) -> ProvisionerStatus:
            return self._status_here()

    # -- capacity ------------------------------------------------------------------

    def _capacity(self, stopping: bool = False) -> HostCapacity:
        return self.pool.capacity(
            instance=self.instance, interval=self.settings.capacity_interval, stopping=stopping
        )

    async def _announce(self, stopping: bool = False) -> None:
        try:
            await self.broker.publish(self._capacity(stopping), subjects.PROVISIONER_CAPACITY)
        except Exception as exc:
            # The next period tries again; peers wait three periods.
            log.debug("capacity not announced: %s", exc)

    async def _announce_loop(self) -> None:
        """Every interval, and at once on a change of the pool."""
        changed = self._capacity_changed
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), self.settings.capacity_interval)
            changed.clear()
            await self._announce()

    async def _adopt(self, _broker: NatsBroker) -> None:
        # Once connected (events can be published) and before requests are
        # answered: a lease must see the desktops that still run.
        await self.pool.start()

    async def _stop_pool(self) -> None:
        # While the bus is up: the other hosts stop sending sessions here,
        # waiting leases get their "shutting down" answer and starts in
        # flight their events.
        await self._announce(stopping=True)
        keep = self.settings.keep_on_stop
        await self.pool.stop(keep_running=self.backend.keeps_running if keep is None else keep)

    async def _start(self) -> None:
        await self.backend.open()
        self.resources.push_async_callback(self.backend.close)
        self.pool.host = self.peers.own_host = self.backend.host
        # The host's name is known now (Docker: the engine's), and the broker
        # has not started: its own subjects can still be added.
        self._subscribe_host(self.pool.host)
        # Harmless for a pool that never started (the connection failed).
        self.resources.push_async_callback(self._stop_pool)
        await start_with_retry(self.broker, before_start=self._adopt)
        # The pool's refill and check loops failing for good ends the service.
        self.spawn(self.pool.wait(), name="provisioner-pool", errors_are_fatal=True)
        self.spawn(self._announce_loop(), name="provisioner-capacity")
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
                    subjects.provisioner_host(self.pool.host, "status"),
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
