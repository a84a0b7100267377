"""Sessions with per-session desktops: the gateway with a real native provisioner.

The gateway service runs in this process (real port, real WebSockets), the
provisioner too (``ProvisionerService`` with the native backend: real Xvnc +
Xfce desktops), both on the real nats-server. A desktop's pointer position,
read with ``xdotool`` through the desktop's own exec endpoint, tells which
desktop a bridge reached.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from faststream.nats import NatsBroker

from selfagent.bus import request
from selfagent.bus.natsd import EmbeddedNats
from selfagent.errors import VncRefused
from selfagent.provisioner.service import ProvisionerService
from selfagent.schemas import (
    ConnectRequest,
    ControlCommand,
    Lease,
    LeaseRequest,
    SandboxEndpoint,
    TaskSubmitted,
    subjects,
)
from tests.harness.provisioner import native_provisioner

from .helpers import Subscription
from .inprocess import Served, serve, settings
from .rfbclient import WsRfbClient

pytestmark = pytest.mark.desktop

WIDTH, HEIGHT = 1024, 640
# A lease may start a desktop (tens of seconds on a loaded machine).
LEASE_BUDGET = 150.0


@pytest.fixture(scope="module")
async def provisioner(
    nats_server: EmbeddedNats, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[ProvisionerService]:
    async with native_provisioner(
        nats_server.url,
        Path(tmp_path_factory.mktemp("provisioner")),
        "gw-test",
        screen_width=WIDTH,
        screen_height=HEIGHT,
        warm=1,
        max_per_host=2,
        lease_wait=1.5,
    ) as service:
        yield service


@pytest.fixture(scope="module")
async def gateway(
    nats_server: EmbeddedNats, provisioner: ProvisionerService
) -> AsyncIterator[Served]:
    async with serve(
        settings(nats_server.url, GATEWAY_DESKTOPS="per_session", lease_timeout=LEASE_BUDGET)
    ) as running:
        yield running


def _client(gateway: Served) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=gateway.url, headers=gateway.auth, timeout=LEASE_BUDGET)


async def _endpoint(bus: NatsBroker, session_id: str) -> SandboxEndpoint:
    return await request(
        bus,
        subjects.PROVISIONER_CONNECT,
        ConnectRequest(session_id=session_id),
        SandboxEndpoint,
        timeout=10,
    )


async def _pointer(endpoint: SandboxEndpoint) -> tuple[int, int]:
    """Where the desktop's pointer is, asked on the desktop itself."""
    async with httpx.AsyncClient(timeout=30) as client:
        reply = await client.post(
            f"{endpoint.exec_url}/exec",
            json={"command": "xdotool getmouselocation"},
            headers={"Authorization": f"Bearer {endpoint.exec_token}"},
        )
    reply.raise_for_status()
    out: dict[str, Any] = reply.json()
    fields = dict(p.split(":") for p in out["stdout"].split() if ":" in p)
    return int(fields["x"]), int(fields["y"])


async def _pointer_reaches(endpoint: SandboxEndpoint, where: tuple[int, int]) -> None:
    deadline = time.monotonic() + 10
    while (seen := await _pointer(endpoint)) != where:
        assert time.monotonic() < deadline, f"the pointer is at {seen}, not {where}"
        await asyncio.sleep(0.1)


async def _open_vnc(gateway: Served, query: str) -> WsRfbClient:
    return await WsRfbClient.open(gateway.ws_url + "/ws/vnc" + query, gateway.auth, open_timeout=5)


async def _takeover(
    gateway: Served, session_id: str, command: str, viewer: str | None = None
) -> None:
    """Take over (for the page connection ``viewer``) or release a session's desktop."""
    body = {"command": command, **({"viewer": viewer} if viewer else {})}
    async with _client(gateway) as client:
        response = await client.post(f"/api/sessions/{session_id}/control", json=body)
    assert response.status_code == 202, response.text
    assert response.json()["takeover"] is (command == "takeover")
    assert response.json()["in_control"] is (command == "takeover" and viewer is not None)


async def test_two_sessions_two_desktops(gateway: Served, bus: NatsBroker) -> None:
    async with _client(gateway) as client:
        first = await client.post("/api/sessions")
        assert first.status_code == 201, first.text
        second = await client.post("/api/sessions")
        assert second.status_code == 201, second.text
    a, b = first.json(), second.json()
    assert a["session_id"] != b["session_id"]
    assert a["sandbox_id"] and b["sandbox_id"] and a["sandbox_id"] != b["sandbox_id"]
    assert isinstance(a["warm"], bool) and a["wait_ms"] >= 0
    sid_a, sid_b = a["session_id"], b["session_id"]
    try:
        async with _client(gateway) as client:
            listing = (await client.get("/api/sessions")).json()
        assert listing["desktops"] == "per_session" and listing["complete"] is True
        listed = {s["session_id"]: s for s in listing["sessions"]}
        assert listed[sid_a]["status"] == listed[sid_b]["status"] == "idle"
        assert listed[sid_a]["sandbox_id"] == a["sandbox_id"]
        assert listed[sid_b]["sandbox_id"] == b["sandbox_id"]
        order = [s["session_id"] for s in listing["sessions"]]
        assert order.index(sid_b) < order.index(sid_a), "not newest first"

        desk_a, desk_b = await _endpoint(bus, sid_a), await _endpoint(bus, sid_b)
        assert desk_a.vnc_port != desk_b.vnc_port
        view_a = await _open_vnc(gateway, f"?session_id={sid_a}&viewer=page-a")
        view_b = await _open_vnc(gateway, f"?session_id={sid_b}&viewer=page-b")
        try:
            for view in (view_a, view_b):
                assert (view.width, view.height) == (WIDTH, HEIGHT)
                # A desktop just started may still be painting its background.
                deadline = time.monotonic() + 20
                while True:
                    await view.request_update()
                    await asyncio.wait_for(view.read_update(), 10)
                    colours = {
                        view.pixel(x, y) for x in range(0, WIDTH, 37) for y in range(0, HEIGHT, 29)
                    }
                    if len(colours) > 20 or time.monotonic() > deadline:
                        break
                    await asyncio.sleep(0.3)
                assert len(colours) > 20, "not a real desktop"

            # Taken over, each bridge moves the pointer of its own session's desktop.
            await _takeover(gateway, sid_a, "takeover", viewer="page-a")
            await _takeover(gateway, sid_b, "takeover", viewer="page-b")
            await view_a.pointer(111, 222)
            await view_b.pointer(333, 444)
            await _pointer_reaches(desk_a, (111, 222))
            await _pointer_reaches(desk_b, (333, 444))

            # Releasing B locks B's bridge only.
            await _takeover(gateway, sid_b, "release")
            stats = gateway.gateway.vnc
            dropped = stats.dropped_input
            await view_b.pointer(50, 60)
            deadline = time.monotonic() + 5
            while stats.dropped_input <= dropped:
                assert time.monotonic() < deadline, "B's input was neither dropped nor forwarded"
                await asyncio.sleep(0.01)
            await view_a.pointer(150, 160)
            await _pointer_reaches(desk_a, (150, 160))
            assert await _pointer(desk_b) == (333, 444), "input reached a desktop not taken over"
            async with _client(gateway) as client:
                info = (await client.get("/api/takeover", params={"session_id": sid_b})).json()
                assert info["takeover"] is False and info["sessions"] == [sid_a]
                info = (await client.get("/api/takeover", params={"session_id": sid_a})).json()
                assert info["takeover"] is True and info["session_id"] == sid_a
        finally:
            await view_a.close()
            await view_b.close()

        # The host is full (two desktops): a third session is refused with the reason.
        async with _client(gateway) as client:
            refused = await client.post("/api/sessions")
            assert refused.status_code == 503, refused.text
            assert "no desktop for a new session" in refused.json()["detail"]

            # Tasks of a session go to its own desktop (sandbox_id None: the planner leases it).
            async with Subscription(bus, subjects.TASK_SUBMIT) as sub:
                accepted = await client.post(
                    "/api/tasks", json={"prompt": "hello", "session_id": sid_a}
                )
                assert accepted.status_code == 202, accepted.text
                task = TaskSubmitted.model_validate_json(await sub.next())
                assert task.session_id == sid_a and task.sandbox_id is None

            async with Subscription(bus, subjects.session_control(sid_a)) as controls:
                closed = await client.delete(f"/api/sessions/{sid_a}")
                assert closed.status_code == 200, closed.text
                assert closed.json() == {
                    "session_id": sid_a,
                    "sandbox_id": a["sandbox_id"],
                    "home_deleted": False,
                }
                stop = ControlCommand.model_validate_json(await controls.next())
                assert stop.command == "stop"
            assert gateway.gateway.takeover.active_for(sid_a) is False
            closed = await client.delete(f"/api/sessions/{sid_b}", params={"keep_home": "false"})
            assert closed.status_code == 200, closed.text
            assert closed.json()["home_deleted"] is True

            listing = (await client.get("/api/sessions")).json()
            assert not {sid_a, sid_b} & {s["session_id"] for s in listing["sessions"]}
            for sid in (sid_a, sid_b):
                assert (await client.delete(f"/api/sessions/{sid}")).status_code == 404
                gone = await client.post("/api/tasks", json={"prompt": "x", "session_id": sid})
                assert gone.status_code == 404, gone.text
    finally:
        async with _client(gateway) as client:
            for sid in (sid_a, sid_b):
                await client.delete(f"/api/sessions/{sid}")


async def test_vnc_without_a_desktop_is_refused_with_the_reason(gateway: Served) -> None:
    for query, reason in (
        ("", r"needs \?session_id="),
        ("?session_id=a.b", "invalid session_id"),
        ("?session_id=nobody-here", "session nobody-here has no desktop"),
    ):
        with pytest.raises(VncRefused, match=reason):
            await _open_vnc(gateway, query)


async def test_a_desktop_without_a_task_is_a_known_idle_session(
    gateway: Served, bus: NatsBroker
) -> None:
    """A desktop leased by another gateway (or before a restart) makes its session known."""
    lease = await request(
        bus,
        subjects.PROVISIONER_LEASE,
        LeaseRequest(session_id="leased-elsewhere"),
        Lease,
        timeout=LEASE_BUDGET,
    )
    try:
        async with _client(gateway) as client:
            listing = (await client.get("/api/sessions")).json()
            listed = {s["session_id"]: s for s in listing["sessions"]}
            assert listed["leased-elsewhere"]["status"] == "idle"
            assert listed["leased-elsewhere"]["sandbox_id"] == lease.sandbox_id
            accepted = await client.post(
                "/api/tasks", json={"prompt": "x", "session_id": "leased-elsewhere"}
            )
            assert accepted.status_code == 202, accepted.text
    finally:
        async with _client(gateway) as client:
            closed = await client.delete("/api/sessions/leased-elsewhere")
            assert closed.status_code == 200 and closed.json()["sandbox_id"] == lease.sandbox_id


async def test_files_go_in_and_out_of_the_sessions_desktop(
    gateway: Served, bus: NatsBroker
) -> None:
    async with _client(gateway) as client:
        created = await client.post("/api/sessions")
        assert created.status_code == 201, created.text
        sid = created.json()["session_id"]
        blob = bytes(range(256)) * (3 * 4096 + 7)  # about 3 MiB, every byte value
        reply = await client.post(
            f"/api/sessions/{sid}/files",
            files=[("files", ("notes.txt", b"hello\n")), ("files", ("data.bin", blob))],
        )
        assert reply.status_code == 201, reply.text
        assert reply.json()["files"] == [
            {"path": "~/Uploads/notes.txt", "size": 6},
            {"path": "~/Uploads/data.bin", "size": len(blob)},
        ]
        listed = await client.get(f"/api/sessions/{sid}/files/list", params={"path": "Uploads"})
        assert listed.status_code == 200, listed.text
        entries = {e["path"]: e for e in listed.json()["entries"]}
        assert entries["Uploads/data.bin"]["size"] == len(blob)
        assert entries["Uploads/notes.txt"]["type"] == "file"
        whole = await client.get(f"/api/sessions/{sid}/files/list", params={"recursive": "true"})
        assert "Uploads/notes.txt" in {e["path"] for e in whole.json()["entries"]}

        got = await client.get(f"/api/sessions/{sid}/files", params={"path": "~/Uploads/data.bin"})
        assert got.status_code == 200 and got.content == blob
        assert "data.bin" in got.headers["content-disposition"]

        # The desktop itself saw the upload in the session's home.
        endpoint = await _endpoint(bus, sid)
        async with httpx.AsyncClient(timeout=30) as desk:
            shown = await desk.post(
                f"{endpoint.exec_url}/exec",
                json={"command": "cat ~/Uploads/notes.txt; ln -sfn /etc ~/etc-link"},
                headers={"Authorization": f"Bearer {endpoint.exec_token}"},
            )
        assert shown.json()["stdout"] == "hello\n"

        for path, status in (
            ("../../etc/passwd", 400),
            ("/etc/passwd", 403),
            ("etc-link/passwd", 403),  # a link inside the home that leads out
            ("Uploads/none.txt", 404),
        ):
            refused = await client.get(f"/api/sessions/{sid}/files", params={"path": path})
            assert refused.status_code == status, (path, refused.text)
        sneaky = await client.post(
            f"/api/sessions/{sid}/files",
            params={"to": "../outside"},
            files=[("files", ("x", b"x"))],
        )
        assert sneaky.status_code == 400, sneaky.text
        assert (
            await client.get("/api/sessions/no-such/files", params={"path": "x"})
        ).status_code == 404

        limit = gateway.gateway.settings.max_upload_bytes
        gateway.gateway.settings.max_upload_bytes = 1000
        try:
            big = await client.post(
                f"/api/sessions/{sid}/files", files=[("files", ("big.bin", b"x" * 5000))]
            )
        finally:
            gateway.gateway.settings.max_upload_bytes = limit
        assert big.status_code == 413, big.text
        await client.delete(f"/api/sessions/{sid}")
