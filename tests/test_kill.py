"""Every part dies once, mid-task: a grounder replica, the provisioner, the gateway.

The planner (tests/test_handover.py), the actuator and a desktop
(tests/test_sessions.py) and a NATS node (tests/test_cluster_failover.py) are
killed in their own files. Here, on one real per-session stack in grounded
mode with two grounder replicas, each part is killed with SIGKILL while a
task runs, and each test checks the goals: no task lost, no action carried
out twice, and the task goes on (or the page catches up) within 10 s of the
kill or of the replacement being up. The measured times are printed (run
with ``-s``); the README's table quotes them.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from typing import Any

import httpx
import pytest
from faststream.nats import NatsBroker
from playwright.async_api import Browser, Page, async_playwright

from selfagent.bus import jetstream, make_broker
from selfagent.bus.natsd import free_port
from selfagent.local import LocalStack
from selfagent.schemas import (
    subjects,
)
from tests.harness.api import (
    auth_headers,
    computer,
    desktop_of,
    fetch_events,
    provisioner_status,
    release_sessions,
    submit_task,
)
from tests.harness.fakellm import FakeLLM, TaggedScripts
from tests.test_browser import CHROMIUM, CHROMIUM_ARGS, EVENTS_LIVE, VNC_LIVE, tid

pytestmark = pytest.mark.desktop

HOST = f"kill-{uuid.uuid4().hex[:8]}"
# The goal for every part: the task goes on, or the page catches up, within this.
RECOVERY = 10.0
# How long the killed grounder's model call takes: far longer than the goal,
# so only a second ask can meet it.
SLOW_GROUNDING = 40.0


class Grounding:
    """The grounding model of both replicas (UI-TARS-1.5 syntax): a point on the bare
    desktop. The first call of all hangs, as a model call in flight does when
    its replica is killed."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self._lock = threading.Lock()

    def answer(self, replica: str) -> Any:
        def reply(body: dict[str, Any]) -> dict[str, Any]:
            with self._lock:
                self.calls.append(replica)
                first = len(self.calls) == 1
            answer = {"content": "Action: click(point='<point>700 300</point>')"}
            return {**answer, "delay": SLOW_GROUNDING} if first else answer

        return reply


@pytest.fixture(scope="module")
def planner_llm() -> Iterator[FakeLLM]:
    server = FakeLLM().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def router(planner_llm: FakeLLM) -> Iterator[TaggedScripts]:
    routes = TaggedScripts()
    planner_llm.reset(default=routes)
    yield routes
    planner_llm.reset()


@pytest.fixture(scope="module")
def grounding() -> Grounding:
    return Grounding()


@pytest.fixture(scope="module")
def vlms(grounding: Grounding) -> Iterator[dict[str, FakeLLM]]:
    servers = {
        name: FakeLLM(default=grounding.answer(name)).start() for name in ("grounder", "grounder-b")
    }
    yield servers
    for server in servers.values():
        server.stop()


@pytest.fixture(scope="module")
def kill_stack(
    planner_llm: FakeLLM, router: TaggedScripts, vlms: dict[str, FakeLLM]
) -> Iterator[LocalStack]:
    local = LocalStack(
        desktops="per_session",
        gateway_port=free_port(),
        token="kill-" + secrets.token_urlsafe(24),
        extra_env={
            "LLM_API_BASE_URL": planner_llm.base_url,
            "LLM_MODEL": "fake-planner",
            "PLANNER_MODE": "grounded",
            "PLANNER_CANARY": "false",
            "GROUNDER_API_BASE_URL": vlms["grounder"].base_url,
            "GROUNDER_MODEL": "UI-TARS-1.5-7B",
            "GROUNDER_FAMILY": "ui-tars-1.5",
            "GROUNDER_CANARY": "false",
            "GROUNDER_TIMEOUT": str(SLOW_GROUNDING + 20),
            "GROUNDER_DEADLINE": str(SLOW_GROUNDING + 20),
            "PROVISIONER_HOST_NAME": HOST,
            "PROVISIONER_WARM": "1",
            "PROVISIONER_MAX_PER_HOST": "3",
            "PROVISIONER_CHECK_INTERVAL": "1",
        },
    )
    local.start()
    # The second grounder replica, with its own model endpoint so that the
    # test knows which replica holds the hanging call.
    local.start_service(
        "grounder", replica="grounder-b", env={"GROUNDER_API_BASE_URL": vlms["grounder-b"].base_url}
    )
    _wait_log(local, "grounder-b", "grounder ready", 1, 30)
    yield local
    local.stop(remove=True)


@pytest.fixture
async def bus(kill_stack: LocalStack) -> AsyncIterator[NatsBroker]:
    broker = make_broker(kill_stack.nats_url_as("admin"), "kill-test")
    await broker.start()
    try:
        yield broker
    finally:
        await broker.stop()


# --- helpers -------------------------------------------------------------------


def _wait_log(stack: LocalStack, name: str, line: str, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while stack.log(name).count(line) < count:
        assert time.monotonic() < deadline, f"{name}: no {line!r} within {timeout}s"
        time.sleep(0.1)


def _kill(stack: LocalStack, name: str) -> float:
    """SIGKILL a service's process group; the monotonic time of the kill."""
    process = stack.processes.pop(name)
    killed = time.monotonic()
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    return killed


async def _until_events(
    stack: LocalStack, session_id: str, test: Any, what: str, timeout: float = 90
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        events = await fetch_events(stack, session_id)
        if test(events):
            return events
        assert time.monotonic() < deadline, f"no {what} in {session_id}: {events[-4:]}"
        await asyncio.sleep(0.2)


def _of(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in events if e["kind"] == kind]


async def _finished(stack: LocalStack, session_id: str, tasks: int = 1) -> list[dict[str, Any]]:
    return await _until_events(
        stack, session_id, lambda ev: len(_of(ev, "task.finished")) >= tasks, "end"
    )


def _once_each(events: list[dict[str, Any]]) -> None:
    """No action carried out twice: one step.executed per task and step, one end per task."""
    executed = [(e["task_id"], e["step"]) for e in _of(events, "step.executed")]
    assert len(executed) == len(set(executed)), executed
    ends = [e["task_id"] for e in _of(events, "task.finished")]
    assert len(ends) == len(set(ends)), ends


async def _stored(bus: NatsBroker, session_id: str) -> list[dict[str, Any]]:
    """The session's events as the stream keeps them, read without the gateway."""
    js = jetstream(bus)
    sub = await js.subscribe(
        subjects.session_events(session_id), stream=subjects.EVENTS_STREAM, ordered_consumer=True
    )
    events: list[dict[str, Any]] = []
    try:
        pending = (await sub.consumer_info()).num_pending or 0
        while len(events) < pending:
            msg = await sub.next_msg(timeout=5)
            events.append(json.loads(msg.data))
    finally:
        await sub.unsubscribe()
    return events


def _at(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["at"]).timestamp()


def _restart_gateway(stack: LocalStack) -> float:
    """Start the gateway again; the monotonic time it answers /healthz."""
    stack.start_service("gateway")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{stack.gateway_url}/healthz", timeout=1).status_code == 200:
                return time.monotonic()
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise AssertionError("the gateway did not come back")


# --- a grounder replica --------------------------------------------------------


async def test_a_grounder_replica_killed_mid_grounding_the_other_answers(
    kill_stack: LocalStack,
    router: TaggedScripts,
    grounding: Grounding,
    vlms: dict[str, FakeLLM],
    bus: NatsBroker,
) -> None:
    router.scripts["ground"] = [
        computer(action="click", target="the empty desktop background"),
        computer(action="done", message="clicked"),
    ]
    session = await submit_task(kill_stack, "[ground] click the background")
    deadline = time.monotonic() + 60
    while not grounding.calls:
        assert time.monotonic() < deadline, "no grounding was asked for"
        await asyncio.sleep(0.05)
    holder = grounding.calls[0]
    _kill(kill_stack, holder)
    killed_at = time.time()
    events = await _finished(kill_stack, session)
    took = _at(_of(events, "step.grounded")[0]) - killed_at
    assert _of(events, "task.finished")[0]["status"] == "succeeded", events[-3:]
    # Grounded once (by the other replica), clicked once.
    assert len(_of(events, "step.grounded")) == 1
    clicks = [e for e in _of(events, "step.executed") if e["action"]["action"] == "click"]
    assert len(clicks) == 1 and clicks[0]["ok"], clicks
    _once_each(events)
    other = "grounder-b" if holder == "grounder" else "grounder"
    assert grounding.calls == [holder, other], grounding.calls
    assert "went silent with request" in kill_stack.log("planner")
    print(f"grounder replica killed: grounded by the other {took:.1f}s after the kill")
    assert took < RECOVERY, f"the grounding came {took:.1f}s after its replica died"
    # Two replicas again for whoever comes next.
    kill_stack.start_service(
        "grounder", replica=holder, env={"GROUNDER_API_BASE_URL": vlms[holder].base_url}
    )
    await release_sessions(bus, session)


# --- the provisioner -----------------------------------------------------------


async def test_a_killed_provisioner_leaves_the_task_running_and_its_successor_adopts(
    kill_stack: LocalStack, router: TaggedScripts, bus: NatsBroker
) -> None:
    router.scripts["prov"] = [
        computer(action="shell", command="echo $DISPLAY"),
        computer(action="shell", command="sleep 3; echo slept"),
        computer(action="shell", command="echo after"),
        computer(action="done", message="went on"),
    ]
    session = await submit_task(kill_stack, "[prov] keep going")
    await _until_events(kill_stack, session, lambda ev: len(_of(ev, "step.planned")) >= 2, "step 2")
    desktop = await desktop_of(bus, session)
    killed = _kill(kill_stack, "provisioner")
    # The leased desktop keeps working without its provisioner.
    events = await _finished(kill_stack, session)
    went_on = time.monotonic() - killed
    assert _of(events, "task.finished")[0]["status"] == "succeeded", events[-3:]
    outputs = [(e["output"] or "").strip() for e in _of(events, "step.executed")]
    display = outputs[0]
    assert outputs == [display, "slept", "after"], outputs
    _once_each(events)
    print(f"provisioner killed: the task finished {went_on:.1f}s after the kill (never stopped)")

    ready = kill_stack.log("provisioner").count("ready")
    restarted = time.monotonic()
    kill_stack.start_service("provisioner")
    deadline = restarted + 30
    while True:
        try:
            status = await provisioner_status(bus)
            break
        except Exception:
            assert time.monotonic() < deadline, kill_stack.log("provisioner")[-2000:]
            await asyncio.sleep(0.2)
    back = time.monotonic() - restarted
    # It may answer a moment before it logs that it is ready.
    while kill_stack.log("provisioner").count("ready") <= ready:
        assert time.monotonic() < deadline, kill_stack.log("provisioner")[-2000:]
        await asyncio.sleep(0.1)
    # Adopted: the session still holds the same desktop, and its next task runs there.
    assert await desktop_of(bus, session) == desktop, status
    router.scripts["prov2"] = [
        computer(action="shell", command="echo $DISPLAY"),
        computer(action="done", message="same desktop"),
    ]
    await submit_task(kill_stack, "[prov2] where am I", session)
    events = await _finished(kill_stack, session, tasks=2)
    assert _of(events, "task.finished")[-1]["status"] == "succeeded", events[-3:]
    assert (_of(events, "step.executed")[-1]["output"] or "").strip() == display
    # A new session gets a desktop from the new provisioner.
    fresh_start = time.monotonic()
    router.scripts["prov3"] = [
        computer(action="shell", command="echo new"),
        computer(action="done", message="new session"),
    ]
    fresh = await submit_task(kill_stack, "[prov3] a new session")
    events = await _finished(kill_stack, fresh)
    assert _of(events, "task.finished")[0]["status"] == "succeeded", events[-3:]
    fresh_took = time.monotonic() - fresh_start
    print(
        f"provisioner restarted: answering {back:.1f}s after its start; "
        f"a new session's task done {fresh_took:.1f}s after submitting"
    )
    assert back < RECOVERY
    await release_sessions(bus, session, fresh)


# --- the gateway, with the page in Chromium --------------------------------------


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        await chromium.close()


async def _open_page(browser: Browser, stack: LocalStack, session_id: str | None = None) -> Page:
    context = await browser.new_context(viewport={"width": 1440, "height": 900})
    if session_id is not None:
        # The page reopens the session it showed last.
        await context.add_init_script(f"localStorage.setItem('selfagent.session', {session_id!r})")
    tab = await context.new_page()
    response = await tab.goto(f"{stack.gateway_url}/?token={stack.token}")
    assert response is not None and response.status == 200
    await tab.wait_for_selector(EVENTS_LIVE, timeout=20000)
    if session_id is not None:
        assert await tab.evaluate("window.selfagent.sessionId") == session_id
    return tab


async def _new_session(stack: LocalStack) -> str:
    async with httpx.AsyncClient() as client:
        reply = await client.post(
            f"{stack.gateway_url}/api/sessions", headers=auth_headers(stack), timeout=60
        )
    assert reply.status_code in (200, 201), reply.text
    session: str = reply.json()["session_id"]
    return session


STEPS_AT_LEAST = "(n) => document.querySelectorAll('[data-testid=\"step\"]').length >= n"


async def _page_steps(page: Page) -> list[str]:
    numbers: list[str] = await page.eval_on_selector_all(
        tid("step"), "nodes => nodes.map(n => n.querySelector('.step-no').textContent)"
    )
    return numbers


@pytest.mark.browser
async def test_a_killed_gateway_loses_no_task_and_the_page_replays_what_it_missed(
    kill_stack: LocalStack, router: TaggedScripts, browser: Browser, bus: NatsBroker
) -> None:
    steps = 8
    router.scripts["gw"] = [
        *(computer(action="shell", command=f"sleep 0.6; echo step-{n}") for n in range(1, steps)),
        computer(action="done", message="all steps done"),
    ]
    session = await _new_session(kill_stack)
    page = await _open_page(browser, kill_stack, session)
    await page.wait_for_selector(VNC_LIVE, timeout=20000)
    await submit_task(kill_stack, "[gw] count while the gateway restarts", session)
    await page.wait_for_function(STEPS_AT_LEAST, arg=2, timeout=60000)
    executed_before = len(_of(await _stored(bus, session), "step.executed"))
    # The page keeps its place in the events stream...
    await page.wait_for_function("() => window.selfagent.lastSeq > 0", timeout=10000)
    reads: list[str] = []
    page.on(
        "request",
        lambda req: reads.append(req.url) if f"/api/sessions/{session}/events" in req.url else None,
    )
    _kill(kill_stack, "gateway")
    await page.wait_for_selector('[data-testid="events-status"][data-state="error"]')
    # The task runs in the planner: steps go on while no gateway is up.
    deadline = time.monotonic() + 30
    while len(_of(await _stored(bus, session), "step.executed")) < executed_before + 2:
        assert time.monotonic() < deadline, "no steps while the gateway was down"
        await asyncio.sleep(0.1)
    up = await asyncio.to_thread(_restart_gateway, kill_stack)
    stored = await fetch_events(kill_stack, session)
    executed_now = len(_of(stored, "step.executed"))
    await page.wait_for_selector(EVENTS_LIVE, timeout=RECOVERY * 1000)
    await page.wait_for_function(STEPS_AT_LEAST, arg=executed_now, timeout=RECOVERY * 1000)
    caught_up = time.monotonic() - up
    await page.wait_for_selector(VNC_LIVE, timeout=RECOVERY * 1000)
    vnc_back = time.monotonic() - up
    events = await _finished(kill_stack, session)
    await page.wait_for_selector(tid("result"), timeout=10000)
    assert _of(events, "task.finished")[0]["status"] == "succeeded", events[-3:]
    _once_each(events)
    outputs = [(e["output"] or "").strip() for e in _of(events, "step.executed")]
    assert outputs == [f"step-{n}" for n in range(1, steps)], outputs
    # The page: every step once, in order, and one result.
    await asyncio.sleep(0.5)
    assert await _page_steps(page) == [str(n) for n in range(1, steps + 1)]
    assert len(await page.query_selector_all(tid("result"))) == 1
    # ...and read on from it after the restart, not the whole history again.
    assert reads and all("events?after=" in url for url in reads), reads
    print(
        f"gateway killed: the page caught up {caught_up:.1f}s after the new gateway was up "
        f"(desktop view back after {vnc_back:.1f}s)"
    )
    assert caught_up < RECOVERY
    await page.context.close()
    await release_sessions(bus, session)


# --- take-over, across a gateway restart ----------------------------------------


def _xdotool(display: str, *args: str) -> str:
    done = subprocess.run(
        ["xdotool", *args],
        env={**os.environ, "DISPLAY": display},
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    return done.stdout


def _pointer(display: str) -> tuple[int, int]:
    fields = dict(part.split(":", 1) for part in _xdotool(display, "getmouselocation").split())
    return int(fields["x"]), int(fields["y"])


async def _page_point(page: Page, x: int, y: int) -> tuple[float, float]:
    box = await page.eval_on_selector(
        f"{tid('screen')} canvas",
        "c => { const r = c.getBoundingClientRect(); "
        "return [r.left, r.top, r.width / c.width, r.height / c.height]; }",
    )
    left, top, sx, sy = box
    return left + x * sx, top + y * sy


async def _pointer_at(display: str, expected: tuple[int, int], timeout: float = 5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        x, y = await asyncio.to_thread(_pointer, display)
        if abs(x - expected[0]) <= 2 and abs(y - expected[1]) <= 2:
            return True
        await asyncio.sleep(0.1)
    return False


@pytest.mark.browser
async def test_take_over_survives_a_gateway_restart(
    kill_stack: LocalStack, router: TaggedScripts, browser: Browser, bus: NatsBroker
) -> None:
    router.scripts["hold"] = [
        computer(action="shell", command="echo $DISPLAY"),
        *(computer(action="wait", seconds=0.5) for _ in range(20)),
        computer(action="done", message="released and done"),
    ]
    session = await _new_session(kill_stack)
    holder = await _open_page(browser, kill_stack, session)
    await holder.wait_for_selector(VNC_LIVE, timeout=20000)
    await submit_task(kill_stack, "[hold] work until someone takes over", session)
    events = await _until_events(
        kill_stack, session, lambda ev: len(_of(ev, "step.executed")) >= 2, "two steps"
    )
    display = (_of(events, "step.executed")[0]["output"] or "").strip()
    assert display.startswith(":"), display
    await holder.click(tid("btn-takeover"))
    await holder.wait_for_selector(f'{tid("mode-badge")}[data-mode="control"]', timeout=5000)
    await _until_events(
        kill_stack,
        session,
        lambda ev: any(e.get("state") == "takeover" for e in _of(ev, "task.state")),
        "take-over",
    )
    viewer = await holder.evaluate("window.selfagent.viewerId")

    _kill(kill_stack, "gateway")
    up = await asyncio.to_thread(_restart_gateway, kill_stack)
    async with httpx.AsyncClient() as client:
        reply = await client.get(
            f"{kill_stack.gateway_url}/api/takeover",
            params={"session_id": session},
            headers=auth_headers(kill_stack),
            timeout=10,
        )
    assert reply.status_code == 200, reply.text
    state = reply.json()
    assert state["takeover"] is True and state["viewer"] == viewer, state
    # The page reconnects and is in control again, with its input going through.
    await holder.wait_for_selector(VNC_LIVE, timeout=RECOVERY * 1000)
    await holder.wait_for_selector(
        f'{tid("mode-badge")}[data-mode="control"]', timeout=RECOVERY * 1000
    )
    back = time.monotonic() - up
    spot, other = (900, 420), (1000, 300)
    await holder.mouse.click(*await _page_point(holder, *spot))
    assert await _pointer_at(display, spot), await asyncio.to_thread(_pointer, display)
    landed = await asyncio.to_thread(_pointer, display)
    # Another page's input is still dropped, even when it sends it anyway.
    watcher = await _open_page(browser, kill_stack, session)
    await watcher.wait_for_selector(VNC_LIVE, timeout=20000)
    await watcher.wait_for_selector(f'{tid("mode-badge")}[data-mode="view"]', timeout=5000)
    await watcher.evaluate("window.selfagent.rfb.viewOnly = false")
    await watcher.mouse.click(*await _page_point(watcher, *other))
    await asyncio.sleep(0.5)
    assert await asyncio.to_thread(_pointer, display) == landed
    # The agent stayed paused all along.
    held = await fetch_events(kill_stack, session)
    executed = len(_of(held, "step.executed"))
    await asyncio.sleep(1.5)
    assert len(_of(await fetch_events(kill_stack, session), "step.executed")) == executed
    print(f"gateway restarted under a take-over: the page in control again {back:.1f}s after")
    assert back < RECOVERY

    await holder.click(tid("btn-release"))
    await holder.wait_for_selector(f'{tid("mode-badge")}[data-mode="view"]', timeout=5000)
    events = await _finished(kill_stack, session)
    finish = _of(events, "task.finished")[0]
    assert finish["status"] == "succeeded", (finish["reply"], finish["error"], events[-4:-1])
    _once_each(events)
    await holder.context.close()
    await watcher.context.close()
    await release_sessions(bus, session)
