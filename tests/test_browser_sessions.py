"""The web page's session list with per-session desktops, in a real headless Chromium.

A real native provisioner (in this process) gives each session its own Xvnc +
Xfce desktop; the gateway runs as its own process with
``GATEWAY_DESKTOPS=per_session``. The planner is played by publishing session
events on NATS. One desktop gets a large window (opened through its exec
endpoint) so the two desktops look different on the canvas.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from faststream.nats import NatsBroker
from playwright.async_api import Browser, Page, async_playwright

from selfagent.bus import RemoteError, request
from selfagent.bus.natsd import EmbeddedNats, free_port
from selfagent.gateway.tests.rfbclient import TcpRfbClient
from selfagent.gateway.tests.stack import GatewayProcess, start_gateway
from selfagent.provisioner.service import ProvisionerService
from selfagent.schemas import (
    ConnectRequest,
    SandboxEndpoint,
    SessionEvent,
    ShellAction,
    StepPlanned,
    TaskStarted,
    TaskSubmitted,
    subjects,
)
from tests.harness.provisioner import native_provisioner
from tests.test_browser import (
    CHROMIUM,
    CHROMIUM_ARGS,
    CSP_FOUND,
    EVENTS_LIVE,
    VNC_LIVE,
    _canvas_samples,
    _signed_in,
    tid,
    watch_csp,
)

pytestmark = [pytest.mark.browser, pytest.mark.desktop]

WIDTH, HEIGHT = 1024, 640


@pytest.fixture(scope="module")
def nats_server() -> Iterator[EmbeddedNats]:
    # A server of its own: sessions other tests recorded must not be listed here.
    server = EmbeddedNats().start()
    yield server
    server.cleanup()


@pytest.fixture(scope="module")
async def provisioner(
    nats_server: EmbeddedNats, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[ProvisionerService]:
    async with native_provisioner(
        nats_server.url,
        Path(tmp_path_factory.mktemp("provisioner")),
        "browser-test",
        screen_width=WIDTH,
        screen_height=HEIGHT,
        warm=1,
        max_per_host=3,
        # A desktop may take a while to start beside a full suite's load.
        lease_wait=30,
    ) as service:
        yield service


@pytest.fixture(scope="module")
def gateway(nats_server: EmbeddedNats, provisioner: ProvisionerService) -> Iterator[GatewayProcess]:
    # No fixed desktop: the VNC settings point nowhere and must not be used.
    gw = start_gateway(nats_server.url, free_port(), "unused", GATEWAY_DESKTOPS="per_session")
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
async def bus(nats_server: EmbeddedNats) -> AsyncIterator[NatsBroker]:
    broker = NatsBroker(nats_server.url)
    await broker.connect()
    yield broker
    await broker.stop()


@pytest.fixture
async def page() -> AsyncIterator[Page]:
    async with async_playwright() as pw:
        browser: Browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = await browser.new_context(viewport={"width": 1440, "height": 900})
        tab = await context.new_page()
        violations = await watch_csp(tab)
        yield tab
        await browser.close()
    CSP_FOUND.pop(tab, None)
    # The page, noVNC and the sign-in page work under the gateway's CSP.
    assert violations == [], violations


async def _endpoint(bus: NatsBroker, session_id: str) -> SandboxEndpoint:
    return await request(
        bus,
        subjects.PROVISIONER_CONNECT,
        ConnectRequest(session_id=session_id),
        SandboxEndpoint,
        timeout=10,
    )


async def _reference(endpoint: SandboxEndpoint) -> TcpRfbClient:
    """The desktop as read straight from its VNC server."""
    client = await TcpRfbClient.open_tcp(endpoint.vnc_port, endpoint.vnc_password)
    try:
        await client.request_update()
        await asyncio.wait_for(client.read_update(), 10)
    finally:
        await client.close()
    return client


def _matching(shown: dict[str, Any], reference: TcpRfbClient) -> float:
    if (shown["width"], shown["height"]) != (reference.width, reference.height):
        return 0.0
    same = sum(
        all(abs(a - b) <= 24 for a, b in zip(s[2:], reference.pixel(s[0], s[1]), strict=True))
        for s in shown["samples"]
    )
    return same / len(shown["samples"])


def _differing(one: TcpRfbClient, other: TcpRfbClient, step: int = 40) -> float:
    points = [(x, y) for y in range(0, HEIGHT, step) for x in range(0, WIDTH, step)]
    differ = sum(
        any(abs(a - b) > 24 for a, b in zip(one.pixel(x, y), other.pixel(x, y), strict=True))
        for x, y in points
    )
    return differ / len(points)


async def _canvas_shows(page: Page, reference: TcpRfbClient) -> None:
    """Until the canvas matches the desktop (a clock may differ; the whole must match)."""
    deadline = time.monotonic() + 20
    while True:
        canvases = await page.locator(tid("screen") + " canvas").count()
        if canvases == 1:
            shown = await _canvas_samples(page, 40)
            if _matching(shown, reference) >= 0.95:
                return
        assert time.monotonic() < deadline, (
            f"the canvas does not show the desktop ({canvases} canvases, "
            f"{_matching(shown, reference) if canvases == 1 else 0:.0%} matching)"
        )
        await asyncio.sleep(0.2)


async def _list(page: Page) -> list[str]:
    items = page.locator(tid("session-item"))
    return [
        await items.nth(i).get_attribute("data-session") or "" for i in range(await items.count())
    ]


async def _shows_session(page: Page, sid: str) -> None:
    await page.wait_for_function("(sid) => window.selfagent.sessionId === sid", arg=sid)
    await page.wait_for_selector(f'{tid("session-item")}.current[data-session="{sid}"]')
    await page.wait_for_selector(VNC_LIVE, timeout=20000)
    await page.wait_for_selector(EVENTS_LIVE, timeout=10000)


async def _close_all_sessions(gateway: GatewayProcess) -> None:
    """Close what an earlier try of a test left open: the stack lives for the whole module."""
    headers = {"Authorization": f"Bearer {gateway.token}"}
    async with httpx.AsyncClient(base_url=gateway.url, headers=headers, timeout=60) as http:
        listed = (await http.get("/api/sessions")).json()["sessions"]
        for session in listed:
            closed = await http.delete(f"/api/sessions/{session['session_id']}")
            assert closed.status_code == 200, closed.text


async def test_two_sessions_switch_desktop_and_steps(
    page: Page, gateway: GatewayProcess, bus: NatsBroker
) -> None:
    await _close_all_sessions(gateway)
    # No session yet: the page starts one (and its desktop).
    await _signed_in(page, gateway)
    first = await page.evaluate("window.selfagent.sessionId")
    await page.wait_for_function(
        "() => document.querySelectorAll('[data-testid=session-item]').length === 1"
    )

    await page.click(tid("new-session-side"))
    await page.wait_for_function("(sid) => window.selfagent.sessionId !== sid", arg=first)
    second = await page.evaluate("window.selfagent.sessionId")
    await _shows_session(page, second)
    await page.wait_for_function(
        "() => document.querySelectorAll('[data-testid=session-item]').length === 2"
    )
    assert await _list(page) == [second, first], "not newest first"

    desk_1, desk_2 = await _endpoint(bus, first), await _endpoint(bus, second)
    assert desk_1.sandbox_id != desk_2.sandbox_id
    # A large window on the second desktop only, so the two look different.
    async with httpx.AsyncClient(timeout=30) as http:
        opened = await http.post(
            f"{desk_2.exec_url}/exec",
            json={
                "command": "(xmessage -geometry 900x520+40+40 -bg '#c03030' "
                "'the second desktop' >/dev/null 2>&1 &) ; sleep 0.1"
            },
            headers={"Authorization": f"Bearer {desk_2.exec_token}"},
        )
    assert opened.status_code == 200, opened.text
    deadline = time.monotonic() + 20
    while _differing(ref_1 := await _reference(desk_1), ref_2 := await _reference(desk_2)) < 0.3:
        assert time.monotonic() < deadline, "the window never showed on the second desktop"
        await asyncio.sleep(0.3)

    events: list[SessionEvent] = [
        TaskStarted(session_id=first, task_id="t-first", prompt="Check the disk"),
        StepPlanned(
            session_id=first, task_id="t-first", step=1, action=ShellAction(command="df -h /")
        ),
        TaskStarted(session_id=second, task_id="t-second", prompt="Write a haiku"),
    ]
    for event in events:
        await bus.publish(event, subjects.session_event(event.session_id, event.kind))

    # The second session: its desktop (with the window) and its own steps only.
    await _canvas_shows(page, ref_2)
    await page.locator(tid("user-message")).filter(has_text="Write a haiku").wait_for()
    assert await page.locator(tid("step")).count() == 0
    assert await page.locator(tid("user-message")).count() == 1

    # Switching to the first: its desktop and its step, not the other's.
    await page.click(f'{tid("session-item")}[data-session="{first}"]')
    await _shows_session(page, first)
    await _canvas_shows(page, ref_1)
    step = page.locator(tid("step"))
    await step.wait_for()
    assert "Run $ df -h /" in await step.inner_text()
    assert await page.locator(tid("user-message")).inner_text() == "Check the disk"

    # Closing the other session removes it and frees its desktop.
    await page.click(f'{tid("session-item")}[data-session="{second}"] {tid("session-close")}')
    await page.wait_for_function(
        "() => document.querySelectorAll('[data-testid=session-item]').length === 1"
    )
    assert await _list(page) == [first]
    with pytest.raises(RemoteError):
        await _endpoint(bus, second)

    # Closing the one on screen moves to a new session with a desktop of its own.
    await page.click(f'{tid("session-item")}[data-session="{first}"] {tid("session-close")}')
    await page.wait_for_function("(sid) => window.selfagent.sessionId !== sid", arg=first)
    third = await page.evaluate("window.selfagent.sessionId")
    await _shows_session(page, third)
    assert await _list(page) == [third]
    assert third not in (first, second)
    assert (await _endpoint(bus, third)).sandbox_id not in (desk_1.sandbox_id, desk_2.sandbox_id)


async def test_attached_files_reach_the_desktop_and_the_model_and_come_back(
    page: Page, gateway: GatewayProcess, bus: NatsBroker, tmp_path: Path
) -> None:
    await _signed_in(page, gateway)
    sid = await page.evaluate("window.selfagent.sessionId")
    await _shows_session(page, sid)
    report = tmp_path / "report.txt"
    report.write_text("quarterly numbers\n")
    tasks: asyncio.Queue[bytes] = asyncio.Queue()

    async def on_task(msg: Any) -> None:
        await tasks.put(msg.data)

    sub = await bus.connection.subscribe(subjects.TASK_SUBMIT, cb=on_task)
    await bus.connection.flush()
    try:
        await page.set_input_files(tid("file-input"), str(report))
        await page.wait_for_selector(tid("attachment"))
        await page.fill(tid("prompt"), "Summarize the attached report")
        await page.keyboard.press("Enter")
        submitted = TaskSubmitted.model_validate_json(await asyncio.wait_for(tasks.get(), 20))
    finally:
        await sub.unsubscribe()
    assert submitted.session_id == sid
    assert submitted.prompt.endswith("Attached files: ~/Uploads/report.txt"), submitted.prompt
    assert await page.locator(tid("attachment")).count() == 0
    # On the session's own desktop, in its home.
    endpoint = await _endpoint(bus, sid)
    async with httpx.AsyncClient(timeout=30) as client:
        shown = await client.post(
            f"{endpoint.exec_url}/exec",
            json={"command": "cat ~/Uploads/report.txt; echo made > ~/Desktop/made.txt"},
            headers={"Authorization": f"Bearer {endpoint.exec_token}"},
        )
    assert shown.json()["stdout"] == "quarterly numbers\n"

    # What the agent made is listed, and downloads.
    await page.click(f"{tid('files')} summary")
    link = page.locator(tid("file-link"), has_text="Desktop/made.txt")
    await link.wait_for(timeout=10000)
    async with page.expect_download() as download_info:
        await link.click()
    download = await download_info.value
    saved = tmp_path / "made.txt"
    await download.save_as(saved)
    assert saved.read_text() == "made\n"
