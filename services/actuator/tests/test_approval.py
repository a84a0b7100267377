"""The approval gate on a real desktop: a risky command waits for a person, whoever sent it.

The requests here are published straight onto the act subject, as any client
on the bus could: the gate is in the actuator, so no planner is needed to
hold an action back.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import nats
import pytest
from nats.aio.msg import Msg

from selfagent.actuator.policy import Policy
from selfagent.bus import RemoteError, request
from selfagent.schemas import (
    ActionResult,
    ActRequest,
    ControlCommand,
    ErrorCode,
    ShellAction,
    subjects,
)
from tests.harness.desktop import Desktop

pytestmark = pytest.mark.desktop
ACT = subjects.sandbox_act("test")


class Events:
    """Every session event on the bus, as JSON."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self.arrived = asyncio.Event()

    async def on(self, msg: Msg) -> None:
        self.seen.append(json.loads(msg.data))
        self.arrived.set()

    async def next(self, kind: str, session_id: str, timeout: float = 10) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                for event in self.seen:
                    if event["kind"] == kind and event["session_id"] == session_id:
                        self.seen.remove(event)
                        return event
                self.arrived.clear()
                await self.arrived.wait()


@pytest.fixture
async def events(actuator: Any) -> AsyncIterator[Events]:
    collected = Events()
    client = await nats.connect(actuator.settings.nats_url)
    await client.subscribe(subjects.SESSION_EVENTS_ALL, cb=collected.on)
    await client.flush()
    yield collected
    await client.close()


async def shell(running: Any, command: str, session: str, timeout: float = 30) -> ActionResult:
    return await request(
        running.client,
        ACT,
        ActRequest(action=ShellAction(command=command), session_id=session, task_id="t-1"),
        ActionResult,
        timeout=timeout,
    )


async def control(running: Any, session: str, **fields: Any) -> None:
    command = ControlCommand(session_id=session, **fields)
    await running.client.publish(command, subjects.session_control(session))


async def documents(running: Any, desktop: Desktop, session: str) -> str:
    result = await shell(running, "ls ~/Documents/keep 2>/dev/null || echo gone", session)
    return (result.output or "").strip()


async def test_a_risky_command_waits_for_a_person_and_a_deny_keeps_the_files(
    actuator: Any, desktop: Desktop, events: Events
) -> None:
    session = f"appr-{uuid.uuid4().hex[:6]}"
    await shell(actuator, "mkdir -p ~/Documents/keep && echo x > ~/Documents/keep/a.txt", session)
    removal = asyncio.ensure_future(shell(actuator, "rm -rf ~/Documents/keep", session, 60))
    asked = await events.next("approval.requested", session)
    assert asked["rule"] == "recursive removal"
    assert asked["action"]["command"] == "rm -rf ~/Documents/keep"
    assert asked["task_id"] == "t-1" and asked["sandbox_id"] == "test"
    await asyncio.sleep(0.3)
    assert not removal.done(), "the command did not wait for the person"
    # An answer on another session's subject is not this session's answer.
    await control(actuator, "someone-else", command="approve", approval_id=asked["approval_id"])
    await asyncio.sleep(0.3)
    assert not removal.done()
    await control(
        actuator,
        session,
        command="deny",
        approval_id=asked["approval_id"],
        text="not now",
        by="tester",
    )
    with pytest.raises(RemoteError) as denied:
        await removal
    assert denied.value.code == ErrorCode.DENIED
    assert "not now" in str(denied.value) and "denied by the user" in str(denied.value)
    decided = await events.next("approval.decided", session)
    assert (decided["decision"], decided["by"], decided["note"]) == ("denied", "tester", "not now")
    assert await documents(actuator, desktop, session) == "a.txt"


async def test_no_answer_in_time_is_a_deny(actuator: Any, desktop: Desktop, events: Events) -> None:
    session = f"appr-{uuid.uuid4().hex[:6]}"
    await shell(actuator, "mkdir -p ~/Documents/keep && echo x > ~/Documents/keep/a.txt", session)
    gate = actuator.service.gate
    policy = gate.policy
    gate.policy = Policy(timeout=1.0)
    try:
        with pytest.raises(RemoteError) as denied:
            await shell(actuator, "rm -rf ~/Documents/keep", session)
    finally:
        gate.policy = policy
    assert denied.value.code == ErrorCode.DENIED and "nobody answered" in str(denied.value)
    decided = await events.next("approval.decided", session)
    assert decided["decision"] == "denied" and decided["by"] == "timeout"
    assert await documents(actuator, desktop, session) == "a.txt"


async def test_an_approval_runs_it_and_autonomous_mode_never_asks(
    actuator: Any, desktop: Desktop, events: Events
) -> None:
    session = f"appr-{uuid.uuid4().hex[:6]}"
    await shell(actuator, "mkdir -p ~/Documents/keep && echo x > ~/Documents/keep/a.txt", session)
    removal = asyncio.ensure_future(shell(actuator, "rm -rf ~/Documents/keep", session, 60))
    asked = await events.next("approval.requested", session)
    await control(
        actuator, session, command="approve", approval_id=asked["approval_id"], text="go ahead"
    )
    result = await removal
    assert result.ok and result.output is not None
    assert result.output.startswith("Approved by the user: go ahead")
    decided = await events.next("approval.decided", session)
    assert decided["decision"] == "approved" and decided["by"] == "unnamed"
    assert await documents(actuator, desktop, session) == "gone"

    await shell(actuator, "mkdir -p ~/Documents/keep && echo x > ~/Documents/keep/a.txt", session)
    # A live subscriber may see an event twice while its stream acknowledges
    # late (a retried publish): what counts is that no new approval is asked.
    known = {e["approval_id"] for e in events.seen if e["kind"] == "approval.requested"}
    known.add(asked["approval_id"])
    await control(actuator, session, command="set_mode", mode="autonomous")
    deadline = time.monotonic() + 10
    while actuator.service.gate.mode_of(session) != "autonomous":
        assert time.monotonic() < deadline, "the mode never reached the actuator"
        await asyncio.sleep(0.05)
    result = await shell(actuator, "rm -rf ~/Documents/keep", session)
    assert result.ok
    assert await documents(actuator, desktop, session) == "gone"
    asked_again = [
        e
        for e in events.seen
        if e["kind"] == "approval.requested" and e["approval_id"] not in known
    ]
    assert not asked_again, asked_again
    # Other sessions keep the default mode.
    other = f"appr-{uuid.uuid4().hex[:6]}"
    pending = asyncio.ensure_future(shell(actuator, "sudo true", other, 60))
    asked = await events.next("approval.requested", other)
    assert asked["rule"] == "sudo or su"
    await control(actuator, other, command="deny", approval_id=asked["approval_id"])
    with pytest.raises(RemoteError):
        await pending
