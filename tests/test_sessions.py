"""Per-session desktops through the real local stack: the provisioner, one actuator, the planner.

Every session gets its own native desktop (Xvnc + Xfce) from the provisioner;
the scripted model routes its replies by a tag in each task's prompt, so
several sessions can run at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from faststream.nats import NatsBroker

from selfagent.bus import make_broker, request
from selfagent.local import LocalStack
from selfagent.provisioner.native import marked_processes
from selfagent.schemas import (
    LeaseRequest,
    subjects,
)
from selfagent.schemas.sandboxes import Lease
from tests.harness.api import (
    auth_headers,
    computer,
    desktop_of,
    fetch_events,
    release_sessions,
    scripted_stack,
    submit_task,
)
from tests.harness.fakellm import FakeLLM, TaggedScripts

pytestmark = pytest.mark.desktop

HOST = f"sessions-{uuid.uuid4().hex[:8]}"
LEASE_WAIT = 3.0


@pytest.fixture(scope="module")
def router(fake_llm: FakeLLM) -> Iterator[TaggedScripts]:
    routes = TaggedScripts()
    fake_llm.reset(default=routes)
    yield routes
    fake_llm.reset()


@pytest.fixture(scope="module")
def sessions_stack(fake_llm: FakeLLM, router: TaggedScripts) -> Iterator[LocalStack]:
    local = scripted_stack(
        fake_llm,
        "sessions",
        "per_session",
        PROVISIONER_HOST_NAME=HOST,
        PROVISIONER_WARM="1",
        PROVISIONER_MAX_PER_HOST="2",
        PROVISIONER_LEASE_WAIT=str(LEASE_WAIT),
        # A killed desktop is noticed within a second.
        PROVISIONER_CHECK_INTERVAL="1",
    )
    local.start()
    yield local
    local.stop(remove=True)


@pytest.fixture
async def bus(sessions_stack: LocalStack) -> AsyncIterator[NatsBroker]:
    broker = make_broker(sessions_stack.nats_url_as("admin"), "sessions-test")
    await broker.start()
    try:
        yield broker
    finally:
        await broker.stop()


async def _finished(
    stack: LocalStack, session_id: str, tasks: int = 1, timeout: float = 90
) -> list[dict[str, Any]]:
    """The session's events once ``tasks`` tasks have finished in it."""
    deadline = time.monotonic() + timeout
    while True:
        events = await fetch_events(stack, session_id)
        if sum(1 for e in events if e["kind"] == "task.finished") >= tasks:
            return events
        if time.monotonic() > deadline:
            raise AssertionError(f"session {session_id} did not finish: {events[-5:]}")
        await asyncio.sleep(0.2)


def _outputs(events: list[dict[str, Any]]) -> list[str]:
    return [e["output"] or "" for e in events if e["kind"] == "step.executed" and e["ok"]]


def _last_finish(events: list[dict[str, Any]]) -> dict[str, Any]:
    return [e for e in events if e["kind"] == "task.finished"][-1]


async def test_two_sessions_run_at_once_each_on_its_own_desktop(
    sessions_stack: LocalStack, router: TaggedScripts, bus: NatsBroker
) -> None:
    for tag in ("one", "two"):
        router.scripts[tag] = [
            computer(action="shell", command=f"echo $DISPLAY; echo {tag} > ~/marker.txt"),
            # Both tasks are on their desktops at the same time while they wait.
            computer(action="wait", seconds=2),
            computer(action="done", message=f"{tag} done"),
        ]
    first, second = await asyncio.gather(
        submit_task(sessions_stack, "[one] write a marker"),
        submit_task(sessions_stack, "[two] write a marker"),
    )
    events_one, events_two = await asyncio.gather(
        _finished(sessions_stack, first), _finished(sessions_stack, second)
    )
    assert _last_finish(events_one)["status"] == "succeeded", events_one[-3:]
    assert _last_finish(events_two)["status"] == "succeeded", events_two[-3:]
    display_one = _outputs(events_one)[0].split()[0]
    display_two = _outputs(events_two)[0].split()[0]
    assert display_one.startswith(":") and display_two.startswith(":")
    assert display_one != display_two, "two sessions acted on the same desktop"
    desktop_one, desktop_two = await desktop_of(bus, first), await desktop_of(bus, second)
    assert desktop_one != desktop_two

    # The waits overlapped: neither session waited for the other's task.
    def span(events: list[dict[str, Any]]) -> tuple[str, str]:
        return events[0]["at"], _last_finish(events)["at"]

    (start_one, end_one), (start_two, end_two) = span(events_one), span(events_two)
    assert start_one < end_two and start_two < end_one

    # A follow-up in the first session sees its screen and files.
    router.scripts["again"] = [
        computer(action="shell", command="echo $DISPLAY; cat ~/marker.txt"),
        computer(action="done", message="read it"),
    ]
    assert await submit_task(sessions_stack, "[again] read the marker", first) == first
    events = await _finished(sessions_stack, first, tasks=2)
    assert _last_finish(events)["status"] == "succeeded"
    assert _outputs(events)[-1].split() == [display_one, "one"]
    assert await desktop_of(bus, first) == desktop_one
    await release_sessions(bus, first, second)


async def test_a_killed_desktop_fails_its_task_and_the_next_task_keeps_the_home(
    sessions_stack: LocalStack, router: TaggedScripts, bus: NatsBroker
) -> None:
    router.scripts["doomed"] = [
        computer(action="shell", command="echo kept > ~/kept.txt"),
        computer(action="wait", seconds=60),
        computer(action="done", message="should not get here"),
    ]
    session = await submit_task(sessions_stack, "[doomed] keep a file, then wait")
    deadline = time.monotonic() + 60
    while not any(
        e["kind"] == "step.planned" and e["step"] == 2
        for e in await fetch_events(sessions_stack, session)
    ):
        assert time.monotonic() < deadline, "the task never reached its wait"
        await asyncio.sleep(0.2)
    desktop = await desktop_of(bus, session)
    pids = marked_processes(HOST).get(desktop, set())
    assert pids, f"no processes of {desktop} found"
    killed_at = time.monotonic()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    events = await _finished(sessions_stack, session, timeout=30)
    took = time.monotonic() - killed_at
    finish = _last_finish(events)
    assert finish["status"] == "failed"
    assert finish["error"]["code"] == "sandbox_unavailable", finish
    assert "desktop" in finish["reply"].lower(), finish["reply"]
    print(f"lost desktop noticed after {took:.1f}s")
    assert took < 10, f"the task noticed its lost desktop only after {took:.1f}s"

    # The next task of the session gets a new desktop with the same home.
    router.scripts["after"] = [
        computer(action="shell", command="cat ~/kept.txt"),
        computer(action="done", message="found it"),
    ]
    await submit_task(sessions_stack, "[after] read the kept file", session)
    events = await _finished(sessions_stack, session, tasks=2)
    assert _last_finish(events)["status"] == "succeeded", events[-3:]
    assert _outputs(events)[-1].strip() == "kept"
    assert await desktop_of(bus, session) != desktop
    await release_sessions(bus, session)


async def test_a_full_host_shows_waiting_then_refuses_with_the_reason(
    sessions_stack: LocalStack, router: TaggedScripts, bus: NatsBroker
) -> None:
    holders = [f"holder-{uuid.uuid4().hex[:8]}" for _ in range(2)]
    for holder in holders:
        await request(
            bus, subjects.PROVISIONER_LEASE, LeaseRequest(session_id=holder), Lease, timeout=60
        )
    router.scripts["crowded"] = [computer(action="done", message="ran")]
    try:
        session = await submit_task(sessions_stack, "[crowded] anything")
        events = await _finished(sessions_stack, session, timeout=LEASE_WAIT + 30)
        states = [e["state"] for e in events if e["kind"] == "task.state"]
        assert "waiting" in states, events
        finish = _last_finish(events)
        assert finish["status"] == "failed"
        assert finish["error"]["code"] == "sandbox_unavailable"
        assert "No desktop for this session" in finish["reply"], finish["reply"]
        # Nothing is lost: with room again, the same session runs.
        await release_sessions(bus, holders[0])
        await submit_task(sessions_stack, "[crowded] anything", session)
        events = await _finished(sessions_stack, session, tasks=2)
        assert _last_finish(events)["status"] == "succeeded", events[-3:]
    finally:
        await release_sessions(bus, *holders)
    await release_sessions(bus, session)


async def test_an_actuator_killed_mid_action_is_noticed_and_the_task_goes_on(
    sessions_stack: LocalStack, router: TaggedScripts, bus: NatsBroker
) -> None:
    router.scripts["survive"] = [
        computer(action="shell", command="sleep 30; echo slept"),
        computer(action="shell", command="echo $DISPLAY"),
        computer(action="done", message="carried on"),
    ]
    session = await submit_task(sessions_stack, "[survive] sleep, then look")
    deadline = time.monotonic() + 60
    while not any(e["kind"] == "step.planned" for e in await fetch_events(sessions_stack, session)):
        assert time.monotonic() < deadline, "the task never planned its first step"
        await asyncio.sleep(0.2)
    await asyncio.sleep(1.0)  # the shell command is running in the sandbox
    actuator = sessions_stack.processes.pop("actuator")
    os.killpg(actuator.pid, signal.SIGKILL)
    actuator.wait()
    await asyncio.sleep(1.0)
    ready_before = sessions_stack.log("actuator").count("ready: serving every leased desktop")
    sessions_stack.start_service("actuator")
    while sessions_stack.log("actuator").count("ready: serving") == ready_before:
        assert time.monotonic() < deadline + 60, "the actuator did not come back"
        await asyncio.sleep(0.1)
    back = time.monotonic()
    events = await _finished(sessions_stack, session, timeout=60)
    took = time.monotonic() - back
    assert _last_finish(events)["status"] == "succeeded", events[-4:]
    executed = [e for e in events if e["kind"] == "step.executed"]
    assert not executed[0]["ok"] and "unknown" in executed[0]["error"]["message"]
    # Not replayed: the model was told and chose its next action itself.
    told = json.dumps(router.seen["survive"][1]["messages"])
    assert "whether it ran is unknown" in told
    assert executed[1]["ok"] and executed[1]["action"]["command"] == "echo $DISPLAY"
    print(f"task went on {took:.1f}s after the actuator was back")
    assert took < 10, f"the task went on only {took:.1f}s after the actuator was back"
    await release_sessions(bus, session)


async def test_a_denied_command_is_not_run_and_the_model_is_told(
    sessions_stack: LocalStack, router: TaggedScripts, bus: NatsBroker
) -> None:
    router.scripts["gate"] = [
        computer(action="shell", command="mkdir -p ~/Documents/keep && touch ~/Documents/keep/a"),
        computer(action="shell", command="rm -rf ~/Documents/keep"),
        computer(action="shell", command="ls ~/Documents/keep"),
        computer(action="done", message="kept"),
    ]
    session = await submit_task(sessions_stack, "[gate] tidy up my documents")
    deadline = time.monotonic() + 60
    while True:
        events = await fetch_events(sessions_stack, session)
        asked = [e for e in events if e["kind"] == "approval.requested"]
        if asked:
            break
        assert time.monotonic() < deadline, "no approval was asked for"
        await asyncio.sleep(0.2)
    assert asked[0]["rule"] == "recursive removal"
    async with httpx.AsyncClient() as client:
        reply = await client.post(
            f"{sessions_stack.gateway_url}/api/sessions/{session}/control",
            json={"command": "deny", "approval_id": asked[0]["approval_id"], "text": "keep them"},
            headers=auth_headers(sessions_stack),
            timeout=10,
        )
    assert reply.status_code == 202, reply.text
    events = await _finished(sessions_stack, session)
    # A deny does not end the task: the model hears it and goes on.
    assert _last_finish(events)["status"] == "succeeded", events[-4:]
    assert _outputs(events)[-1].strip() == "a"
    told = json.dumps(router.seen["gate"][2]["messages"])
    assert "denied by the user" in told and "keep them" in told
    decided = [e for e in events if e["kind"] == "approval.decided"]
    assert [(d["decision"], d["by"]) for d in decided] == [("denied", "web user")]
    await release_sessions(bus, session)
