"""The VNC bridge (``/ws/vnc``) to a real Xvnc + Xfce desktop.

The gateway service runs in this process (uvicorn on a real port, real
WebSockets), so a test can read the bridge's own counters instead of waiting
"long enough" for something not to happen. The tests play the planner by
publishing on a real nats-server.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from faststream.nats import NatsBroker
from websockets.exceptions import ConnectionClosed

from selfagent.bus.natsd import EmbeddedNats
from selfagent.errors import VncRefused
from selfagent.gateway.vnc_bridge import BridgeStats
from selfagent.schemas import ControlCommand, subjects
from tests.harness.desktop import Desktop

from .helpers import recv_close
from .inprocess import Served, serve, settings
from .rfbclient import TcpRfbClient, WsRfbClient
from .xstate import XState

SHIFT_L, CONTROL_L, ALT_L = 0xFFE1, 0xFFE3, 0xFFE9

pytestmark = pytest.mark.desktop


@pytest.fixture(scope="module")
async def gateway(nats_server: EmbeddedNats, desktop: Desktop) -> AsyncIterator[Served]:
    async with serve(
        settings(nats_server.url, desktop.vnc_port, vnc_password=desktop.password)
    ) as running:
        yield running


async def _open_vnc(gateway: Served, viewer: str | None = None) -> WsRfbClient:
    query = f"?viewer={viewer}" if viewer else ""
    return await WsRfbClient.open(gateway.ws_url + "/ws/vnc" + query, gateway.auth, open_timeout=5)


def _mouse(desktop: Desktop) -> tuple[int, int]:
    out = dict(p.split(":") for p in desktop.xdotool("getmouselocation").split() if ":" in p)
    return int(out["x"]), int(out["y"])


async def _mouse_reaches(desktop: Desktop, where: tuple[int, int]) -> None:
    deadline = time.monotonic() + 5
    while (now := await asyncio.to_thread(_mouse, desktop)) != where:
        assert time.monotonic() < deadline, f"pointer at {now}, not {where}"
        await asyncio.sleep(0.05)


async def _control(api: httpx.AsyncClient, command: str, viewer: str | None = None) -> bool:
    """Take over or release the fixed desktop (session "viewer"); whether ``viewer`` drives it."""
    body = {"command": command, **({"viewer": viewer} if viewer else {})}
    response = await api.post("/api/sessions/viewer/control", json=body)
    assert response.status_code == 202, response.text
    return bool(response.json()["in_control"])


async def _input_dropped(stats: BridgeStats, before: int) -> None:
    """Until the bridge has dropped input sent after ``before`` was read."""
    deadline = time.monotonic() + 5
    while stats.dropped_input <= before:
        assert time.monotonic() < deadline, "the bridge neither dropped nor forwarded the input"
        await asyncio.sleep(0.01)


async def test_vnc_bridge_shows_real_desktop_pixels(gateway: Served, desktop: Desktop) -> None:
    client = await _open_vnc(gateway)
    try:
        assert (client.width, client.height) == (desktop.width, desktop.height)
        await client.request_update()
        await asyncio.wait_for(client.read_update(), 10)
        colours = {
            client.pixel(x, y)
            for x in range(0, client.width, 37)
            for y in range(0, client.height, 29)
        }
        # A real Xfce desktop: wallpaper, panel, icons; never one flat colour.
        assert len(colours) > 20, colours
        assert any(sum(c) > 60 for c in colours), "the framebuffer is black"
    finally:
        await client.close()


async def test_vnc_bridge_view_only_drops_pointer_and_takeover_forwards_it(
    gateway: Served, desktop: Desktop, bus: NatsBroker
) -> None:
    def pointer() -> tuple[int, int]:
        return _mouse(desktop)

    stats = gateway.gateway.vnc
    desktop.xdotool("mousemove", "100", "100")
    assert pointer() == (100, 100)
    client = await _open_vnc(gateway, viewer="page-1")
    async with httpx.AsyncClient(base_url=gateway.url, headers=gateway.auth) as api:
        try:
            assert (await api.get("/api/takeover")).json()["takeover"] is False
            dropped = stats.dropped_input
            await client.pointer(640, 360)
            await client.request_update(incremental=True)
            # The bridge decides per message: once it has dropped this one, it
            # can never reach the desktop.
            await _input_dropped(stats, dropped)
            assert pointer() == (100, 100), "a watching browser moved the agent's pointer"

            # A take-over from another NATS client (e.g. an automation script)
            # pauses the agent but hands the input to no page.
            await bus.publish(
                ControlCommand(session_id="viewer", command="takeover"),
                subjects.session_control("viewer"),
            )
            deadline = time.monotonic() + 5
            while not (info := (await api.get("/api/takeover")).json())["takeover"]:
                assert time.monotonic() < deadline, "takeover never applied"
                await asyncio.sleep(0.05)
            assert info["viewer"] is None
            dropped = stats.dropped_input
            await client.pointer(640, 360)
            await _input_dropped(stats, dropped)
            assert pointer() == (100, 100), "a take-over over NATS unlocked a page's input"

            # The page takes over for its own connection: its input goes through.
            assert await _control(api, "takeover", viewer="page-1") is True
            assert (await api.get("/api/takeover")).json()["viewer"] == "page-1"
            await client.pointer(640, 360)
            await _mouse_reaches(desktop, (640, 360))

            released = await api.post("/api/sessions/viewer/control", json={"command": "release"})
            assert released.json()["takeover"] is False
            dropped = stats.dropped_input
            await client.pointer(300, 200)
            await _input_dropped(stats, dropped)
            assert pointer() == (640, 360)
        finally:
            await api.post("/api/sessions/viewer/control", json={"command": "release"})
            await client.close()


async def test_only_the_viewer_that_took_over_drives_the_desktop(
    gateway: Served, desktop: Desktop
) -> None:
    stats = gateway.gateway.vnc
    first = await _open_vnc(gateway, viewer="page-a")
    second = await _open_vnc(gateway, viewer="page-b")
    anonymous = await _open_vnc(gateway)
    async with httpx.AsyncClient(base_url=gateway.url, headers=gateway.auth) as api:
        try:
            assert await _control(api, "takeover", viewer="page-a") is True
            await first.pointer(210, 220)
            await _mouse_reaches(desktop, (210, 220))
            for other in (second, anonymous):
                dropped = stats.dropped_input
                await other.pointer(500, 500)
                await _input_dropped(stats, dropped)
            assert _mouse(desktop) == (210, 220), "a viewer who did not take over moved it"

            # Another page takes over: the input moves with it.
            assert await _control(api, "takeover", viewer="page-b") is True
            dropped = stats.dropped_input
            await first.pointer(230, 240)
            await _input_dropped(stats, dropped)
            await second.pointer(250, 260)
            await _mouse_reaches(desktop, (250, 260))
        finally:
            await api.post("/api/sessions/viewer/control", json={"command": "release"})
            for client in (first, second, anonymous):
                await client.close()


async def _held(x: XState) -> tuple[frozenset[int], frozenset[int]]:
    held = await asyncio.to_thread(x.held)
    return held.keycodes, held.buttons


async def _until_held(x: XState, keycodes: set[int], buttons: set[int]) -> None:
    """Until exactly these of ``keycodes``/``buttons`` watched are down on the X server."""
    deadline = time.monotonic() + 5
    while True:
        down_keys, down_buttons = await _held(x)
        if keycodes <= down_keys and buttons <= down_buttons:
            return
        assert time.monotonic() < deadline, f"held: keys {down_keys}, buttons {down_buttons}"
        await asyncio.sleep(0.05)


async def _until_released(x: XState, keycodes: set[int]) -> None:
    deadline = time.monotonic() + 5
    while True:
        down_keys, down_buttons = await _held(x)
        if not (keycodes & down_keys) and not down_buttons:
            return
        assert time.monotonic() < deadline, f"still held: keys {down_keys}, buttons {down_buttons}"
        await asyncio.sleep(0.05)


async def test_keys_and_buttons_held_when_takeover_ends_are_released(
    gateway: Served, desktop: Desktop
) -> None:
    stats = gateway.gateway.vnc
    x = XState(desktop.display)
    shift, control, alt = (x.keycode(k) for k in (SHIFT_L, CONTROL_L, ALT_L))
    page = await _open_vnc(gateway, viewer="holder")
    other = await _open_vnc(gateway, viewer="other")
    async with httpx.AsyncClient(base_url=gateway.url, headers=gateway.auth) as api:
        try:
            # 1. Released by the person (the Release button) mid-chord.
            assert await _control(api, "takeover", viewer="holder")
            await page.pointer(640, 400, buttons=1)
            await page.key(SHIFT_L, True)
            await _until_held(x, {shift}, {1})
            before = stats.released_input
            await _control(api, "release")
            await _until_released(x, {shift})
            assert stats.released_input == before + 2  # Shift up, button 1 up

            # 2. Another page takes over while keys are down on this one.
            assert await _control(api, "takeover", viewer="holder")
            await page.key(CONTROL_L, True)
            await _until_held(x, {control}, set())
            before = stats.released_input
            assert await _control(api, "takeover", viewer="other")
            await _until_released(x, {control})
            assert stats.released_input == before + 1
            # Its key-up arriving late is dropped: it is no longer in control.
            await page.key(CONTROL_L, False)

            # 3. The page in control goes away with a key down.
            assert await _control(api, "takeover", viewer="holder")
            await page.key(ALT_L, True)
            await _until_held(x, {alt}, set())
            before = stats.released_input
            await page.close()
            deadline = time.monotonic() + 5
            while stats.released_input != before + 1:
                assert time.monotonic() < deadline, "the closing bridge released nothing"
                await asyncio.sleep(0.02)
            await _until_released(x, {alt})
            # Still taken over (the agent stays paused) until someone releases.
            assert (await api.get("/api/takeover")).json()["takeover"] is True
        finally:
            await api.post("/api/sessions/viewer/control", json={"command": "release"})
            await page.close()
            await other.close()
            x.close()


async def test_vnc_bridge_wrong_password_is_a_clear_error(
    nats_server: EmbeddedNats, desktop: Desktop
) -> None:
    wrong = settings(nats_server.url, desktop.vnc_port, vnc_password="not-the-password")
    async with serve(wrong) as gw:
        with pytest.raises(VncRefused, match="VNC authentication failed"):
            await _open_vnc(gw)
        code, reason, _ = await recv_close(gw.ws_url + "/ws/vnc", additional_headers=gw.auth)
        assert code == 1011 and "authentication failed" in reason
        # Still serving, and only the bridge failed.
        assert not gw.service.server.should_exit
        async with httpx.AsyncClient(base_url=gw.url) as client:
            assert (await client.get("/healthz")).status_code == 200


async def test_vnc_bridge_rejects_garbage_from_the_browser(gateway: Served) -> None:
    client = await _open_vnc(gateway)
    await client.ws.send(b"\x63" + b"\x00" * 20)  # message type 99 does not exist
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            await asyncio.wait_for(client.ws.recv(), 5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1002
    assert "unknown client message type 99" in closed.value.rcvd.reason
    # The bridge is still usable by the next client.
    again = await _open_vnc(gateway)
    await again.request_update()
    await asyncio.wait_for(again.read_update(), 10)
    await again.close()


async def test_vnc_bridge_is_byte_exact_and_its_overhead_is_small(
    gateway: Served, desktop: Desktop
) -> None:
    """Bridged frames equal direct ones; prints full-frame times for both paths."""

    async def full_frames(client: WsRfbClient, count: int) -> float:
        started = time.perf_counter()
        for _ in range(count):
            await client.request_update()
            await asyncio.wait_for(client.read_update(), 10)
        return (time.perf_counter() - started) / count

    direct = await TcpRfbClient.open_tcp(desktop.vnc_port, desktop.password)
    bridged = await _open_vnc(gateway)
    try:
        await full_frames(direct, 1)
        await full_frames(bridged, 1)
        direct_s = await full_frames(direct, 5)
        bridged_s = await full_frames(bridged, 5)
        await full_frames(direct, 1)
        total = direct.width * direct.height
        differing = sum(
            direct.pixels[i * 4 : i * 4 + 3] != bridged.pixels[i * 4 : i * 4 + 3]
            for i in range(0, total, 7)
        )
        # Only the panel clock may tick between the two reads.
        assert differing < 0.002 * total / 7, f"{differing} sampled pixels differ"
        mb = total * 4 / 1e6
        print(
            f"\nfull {direct.width}x{direct.height} Raw frame ({mb:.1f} MB): direct "
            f"{direct_s * 1000:.1f} ms, through the gateway {bridged_s * 1000:.1f} ms "
            f"({mb / bridged_s:.0f} MB/s)"
        )
        assert bridged_s < 2.0
    finally:
        await direct.close()
        await bridged.close()
