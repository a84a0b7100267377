"""The provisioner on a real nats-server, with real native desktops."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
from faststream.nats import NatsBroker
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from selfagent.bus import RemoteError, make_broker, request
from selfagent.bus.natsd import EmbeddedNats
from selfagent.provisioner.config import Settings
from selfagent.provisioner.native import marked_processes
from selfagent.provisioner.service import ProvisionerService
from selfagent.schemas import (
    ConnectRequest,
    ErrorCode,
    Lease,
    LeaseRequest,
    ProvisionerStatus,
    Released,
    ReleaseRequest,
    SandboxEndpoint,
    StatusRequest,
    StepExecuted,
    WaitAction,
    subjects,
)

from .helpers import first_frame, unique_host, wait_until

pytestmark = pytest.mark.desktop

# Longer than any lease waits in these tests (capacity wait + a cold start).
REQUEST_TIMEOUT = 120.0


class Bus:
    """A client: typed requests through a broker, and every provisioner event as raw JSON."""

    def __init__(self, broker: NatsBroker, nc: NatsClient) -> None:
        self.broker = broker
        self.nc = nc
        self.events: list[dict[str, object]] = []
        self.raw_events: list[bytes] = []

    async def on_event(self, msg: Msg) -> None:
        self.raw_events.append(msg.data)
        self.events.append({"subject": msg.subject, **json.loads(msg.data)})

    def kinds(self) -> list[object]:
        return [event["kind"] for event in self.events]


@pytest.fixture
async def bus(nats_server: EmbeddedNats) -> AsyncIterator[Bus]:
    broker = make_broker(nats_server.url, "provisioner-test-client")
    await broker.start()
    nc = await nats.connect(nats_server.url)
    client = Bus(broker, nc)
    await nc.subscribe(subjects.PROVISIONER_EVENTS_ALL, cb=client.on_event)
    yield client
    await nc.close()
    await broker.stop()


@pytest.fixture
def settings(nats_server: EmbeddedNats, tmp_path: Path) -> Settings:
    return Settings(
        nats_url=nats_server.url,
        backend="native",
        host_name=unique_host(),
        data_dir=tmp_path / "provisioner",
        screen_width=1024,
        screen_height=640,
        warm=1,
        max_per_host=2,
        lease_wait=1.5,
        check_interval=0.3,
    )


async def started(settings: Settings) -> ProvisionerService:
    service = ProvisionerService(settings)
    await service.start()
    return service


async def test_lease_connect_release_over_the_bus(bus: Bus, settings: Settings) -> None:
    service = await started(settings)
    try:
        await wait_until(lambda: "sandbox.ready" in bus.kinds(), 120, "a warm desktop")
        lease = await request(
            bus.broker,
            subjects.PROVISIONER_LEASE,
            LeaseRequest(session_id="bus-session"),
            Lease,
            timeout=REQUEST_TIMEOUT,
        )
        assert lease.warm and lease.session_id == "bus-session"
        assert (lease.screen_width, lease.screen_height) == (1024, 640)
        assert lease.host == settings.host_name
        assert lease.home.startswith("selfagent-home-")
        # A warm lease is bookkeeping; the bound leaves room for a loaded machine.
        assert lease.wait_ms < 800

        endpoint = await request(
            bus.broker,
            subjects.PROVISIONER_CONNECT,
            ConnectRequest(sandbox_id=lease.sandbox_id),
            SandboxEndpoint,
            timeout=10,
        )
        assert endpoint.session_id == "bus-session"
        assert endpoint.vnc_password and endpoint.exec_token
        assert endpoint.vnc_password not in repr(endpoint)
        assert endpoint.exec_token not in repr(endpoint)
        size = await first_frame(endpoint.vnc_host, endpoint.vnc_port, endpoint.vnc_password)
        assert size == (1024, 640)

        status = await request(
            bus.broker, subjects.PROVISIONER_STATUS, StatusRequest(), ProvisionerStatus, timeout=10
        )
        assert status.backend == "native" and status.max_per_host == 2
        states = {info.sandbox_id: info.state for info in status.sandboxes}
        assert states[lease.sandbox_id] == "leased"

        released = await request(
            bus.broker,
            subjects.PROVISIONER_RELEASE,
            ReleaseRequest(session_id="bus-session"),
            Released,
            timeout=30,
        )
        assert released.sandbox_id == lease.sandbox_id and not released.home_deleted
        with pytest.raises(RemoteError) as gone:
            await request(
                bus.broker,
                subjects.PROVISIONER_CONNECT,
                ConnectRequest(sandbox_id=lease.sandbox_id),
                SandboxEndpoint,
                timeout=10,
            )
        assert gone.value.code == ErrorCode.NOT_FOUND

        await wait_until(lambda: "sandbox.released" in bus.kinds(), 10, "sandbox.released")
        assert {"sandbox.ready", "sandbox.leased", "sandbox.released"} <= set(bus.kinds())
        for event in bus.events:
            assert event["subject"] == f"agent.provisioner.event.{event['kind']}"
            assert event["host"] == settings.host_name
        # No event carries a secret.
        for raw in bus.raw_events:
            assert endpoint.vnc_password.encode() not in raw
            assert endpoint.exec_token.encode() not in raw
    finally:
        await service.stop()
    assert marked_processes(service.pool.host) == {}


async def test_bad_requests_and_a_full_host_get_typed_errors(bus: Bus, settings: Settings) -> None:
    service = await started(settings.model_copy(update={"warm": 0}))
    try:
        with pytest.raises(RemoteError) as bad:
            await request(
                bus.broker,
                subjects.PROVISIONER_LEASE,
                # Sent raw: the model would refuse to build it.
                LeaseRequest.model_construct(session_id="a.b"),
                Lease,
                timeout=10,
            )
        assert bad.value.code == ErrorCode.INVALID_MESSAGE

        for session in ("full-1", "full-2"):
            await request(
                bus.broker,
                subjects.PROVISIONER_LEASE,
                LeaseRequest(session_id=session),
                Lease,
                timeout=REQUEST_TIMEOUT,
            )
        began = time.monotonic()
        with pytest.raises(RemoteError) as full:
            await request(
                bus.broker,
                subjects.PROVISIONER_LEASE,
                LeaseRequest(session_id="full-3"),
                Lease,
                timeout=REQUEST_TIMEOUT,
            )
        assert full.value.code == ErrorCode.SANDBOX_UNAVAILABLE
        assert "2 of 2 in use" in full.value.error.message
        assert 1.4 < time.monotonic() - began < 5
    finally:
        await service.stop()
    assert marked_processes(service.pool.host) == {}


async def test_session_events_keep_a_desktop_from_idling_out(bus: Bus, settings: Settings) -> None:
    service = await started(settings.model_copy(update={"warm": 0, "idle_release": 6.0}))
    stop = asyncio.Event()

    async def keep_working() -> None:
        step = 0
        while not stop.is_set():
            step += 1
            # What the planner publishes after each step.
            event = StepExecuted(
                session_id="working", task_id="t", step=step, action=WaitAction(), ok=True
            )
            await bus.broker.publish(event, subjects.session_event("working", event.kind))
            await asyncio.sleep(0.3)

    # Busy from before its desktop is ready: however long either start takes
    # on a loaded machine, "working" never has an idle moment.
    worker = asyncio.create_task(keep_working())
    try:
        await asyncio.gather(
            *(
                request(
                    bus.broker,
                    subjects.PROVISIONER_LEASE,
                    LeaseRequest(session_id=session),
                    Lease,
                    timeout=REQUEST_TIMEOUT,
                )
                for session in ("working", "quiet")
            )
        )
        await wait_until(
            lambda: any(e["kind"] == "sandbox.released" for e in bus.events),
            30,
            "the quiet desktop to idle out",
        )
        # Longer than the idle time (6 s: room for a loaded machine's event
        # delays) since "working" got its desktop.
        await asyncio.sleep(6.5)
        status = await request(
            bus.broker, subjects.PROVISIONER_STATUS, StatusRequest(), ProvisionerStatus, timeout=10
        )
        assert [info.session_id for info in status.sandboxes] == ["working"]
        idle = [e for e in bus.events if e["kind"] == "sandbox.released"]
        assert [(e["session_id"], e["reason"]) for e in idle] == [("quiet", "idle")]
    finally:
        stop.set()
        await worker
        await service.stop()
    assert marked_processes(service.pool.host) == {}


def test_the_service_runs_as_a_process_and_stops_on_sigterm(
    nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    host = unique_host()
    env = {
        **os.environ,
        "NATS_URL": nats_server.url,
        "PROVISIONER_HOST_NAME": host,
        "PROVISIONER_DATA_DIR": str(tmp_path / "data"),
        "PROVISIONER_WARM": "1",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "selfagent.provisioner"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not marked_processes(host) or not _has_warm(nats_server.url):
            assert process.poll() is None, process.communicate()[0]
            assert time.monotonic() < deadline, "no warm desktop from the service process"
            time.sleep(0.5)
    finally:
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=60)[0]
    assert process.returncode == 0, output
    assert "provisioner " + host + " ready" in output
    # Native desktops stop with the service.
    assert marked_processes(host) == {}


def _has_warm(url: str) -> bool:
    async def ask() -> bool:
        broker = make_broker(url, "provisioner-test-probe")
        await broker.start()
        try:
            status = await request(
                broker, subjects.PROVISIONER_STATUS, StatusRequest(), ProvisionerStatus, timeout=5
            )
        except Exception:
            return False
        finally:
            await broker.stop()
        return any(info.state == "warm" for info in status.sandboxes)

    return asyncio.run(ask())
