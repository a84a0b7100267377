"""Two provisioner hosts on one bus: placement, stickiness, and one host stopping.

Two provisioners with the native backend act as two hosts on this machine
(distinct host names and data directories), each with its own actuator
(``ACTUATOR_HOST``), beside one nats-server, one planner and one gateway
with the scripted model. Every desktop marks its processes with its host
(``SELFAGENT_SANDBOX_HOST``), so a shell action shows which host's desktop
it really ran on.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from faststream.nats import NatsBroker

from selfagent.bus import make_broker, request
from selfagent.local import LocalStack
from selfagent.schemas import (
    ProvisionerStatus,
    Released,
    ReleaseRequest,
    StatusRequest,
    subjects,
)
from tests.harness.api import computer, fetch_events, scripted_stack, submit_task
from tests.harness.fakellm import FakeLLM, TaggedScripts

pytestmark = pytest.mark.desktop

RUN = uuid.uuid4().hex[:6]
HOST_A = f"host-a-{RUN}"
HOST_B = f"host-b-{RUN}"
# Room for more than half the sessions on either host: where they go is
# placement's doing, not a full host's.
MAX_PER_HOST = 3


@pytest.fixture(scope="module")
def router(fake_llm: FakeLLM) -> Iterator[TaggedScripts]:
    routes = TaggedScripts()
    fake_llm.reset(default=routes)
    yield routes
    fake_llm.reset()


@pytest.fixture(scope="module")
def two_hosts(fake_llm: FakeLLM, router: TaggedScripts) -> Iterator[LocalStack]:
    common = {
        "PROVISIONER_WARM": "0",
        "PROVISIONER_MAX_PER_HOST": str(MAX_PER_HOST),
        "PROVISIONER_CAPACITY_INTERVAL": "1",
        "PROVISIONER_SCREEN_WIDTH": "1024",
        "PROVISIONER_SCREEN_HEIGHT": "640",
    }
    local = scripted_stack(
        fake_llm,
        "hosts",
        "per_session",
        PROVISIONER_HOST_NAME=HOST_A,
        ACTUATOR_HOST=HOST_A,
        **common,
    )
    local.start()
    try:
        assert local.run_dir is not None
        # The second host: its own provisioner (own name, own records and
        # homes) and its own actuator, with the same identities as the first.
        local.start_service(
            "provisioner",
            replica="provisioner-b",
            env={
                "PROVISIONER_HOST_NAME": HOST_B,
                "PROVISIONER_DATA_DIR": str(local.run_dir / "provisioner-b"),
            },
        )
        local.start_service("actuator", replica="actuator-b", env={"ACTUATOR_HOST": HOST_B})
        yield local
    finally:
        local.stop(remove=True)


@pytest.fixture
async def bus(two_hosts: LocalStack) -> AsyncIterator[NatsBroker]:
    broker = make_broker(two_hosts.nats_url_as("admin"), "hosts-test")
    await broker.start()
    try:
        yield broker
    finally:
        await broker.stop()


async def _status(bus: NatsBroker) -> ProvisionerStatus:
    return await request(
        bus, subjects.PROVISIONER_STATUS, StatusRequest(), ProvisionerStatus, timeout=5
    )


async def _until(what: str, check: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what} within {timeout:.0f} s"
        await asyncio.sleep(0.2)


def _finish(events: list[dict[str, Any]]) -> dict[str, Any] | None:
    finished = [e for e in events if e["kind"] == "task.finished"]
    return finished[-1] if finished else None


async def _host_ran_on(stack: LocalStack, session_id: str) -> str:
    """The host whose desktop ran the session's first shell action (it echoes its mark)."""

    async def ran() -> str | None:
        events = await fetch_events(stack, session_id)
        finish = _finish(events)
        assert finish is None, f"session {session_id} ended early: {finish}"
        for event in events:
            if event["kind"] == "step.executed" and event["ok"]:
                return str(event["output"] or "").strip()
        return None

    host: str = await _until(f"session {session_id} ran its first action", ran, 90)
    return host


async def test_sessions_spread_over_two_hosts_and_a_stopped_host_ends_its_own(
    two_hosts: LocalStack, router: TaggedScripts, bus: NatsBroker
) -> None:
    async def both_heard() -> bool:
        return sorted((await _status(bus)).hosts) == sorted([HOST_A, HOST_B])

    # The shared status gathers every live host's: both are up and heard.
    await _until("both hosts announced", both_heard, 60)

    router.scripts["busy"] = [
        computer(action="shell", command="echo $SELFAGENT_SANDBOX_HOST"),
        computer(action="wait", seconds=60),
        computer(action="done", message="should not get here"),
    ]
    # One after another, as people open sessions: each placement sees the
    # previous one in the hosts' announcements.
    ran_on: dict[str, str] = {}
    for n in range(4):
        session = await submit_task(two_hosts, f"[busy] session {n}")
        ran_on[session] = await _host_ran_on(two_hosts, session)
    by_host = {h: [s for s, on in ran_on.items() if on == h] for h in (HOST_A, HOST_B)}
    print(f"placement: { {h: len(s) for h, s in by_host.items()} }")
    assert sorted(ran_on.values()) == sorted([HOST_A, HOST_A, HOST_B, HOST_B]), ran_on

    # What the provisioners say matches where the actions ran.
    status = await _status(bus)
    leased = {i.session_id: i.host for i in status.sandboxes if i.state == "leased"}
    assert {s: leased.get(s) for s in ran_on} == ran_on

    # Host B's provisioner stops (SIGTERM): its desktops go, and its
    # sessions' tasks end with the reason; host A's keep running.
    stopped_at = time.monotonic()
    two_hosts.stop_service("provisioner-b")

    async def b_sessions_ended() -> list[dict[str, Any]] | None:
        finishes = [_finish(await fetch_events(two_hosts, s)) for s in by_host[HOST_B]]
        return None if any(f is None for f in finishes) else [f for f in finishes if f]

    finishes = await _until("host B's sessions ended", b_sessions_ended, 30)
    took = time.monotonic() - stopped_at
    print(f"host B's sessions ended {took:.1f} s after its provisioner was told to stop")
    assert took < 10, f"host B's sessions ended only after {took:.1f} s"
    for finish in finishes:
        assert finish["status"] == "failed", finish
        assert finish["error"]["code"] == "sandbox_unavailable", finish
        assert f"host {HOST_B} stopped" in finish["reply"], finish["reply"]
    for session in by_host[HOST_A]:
        assert _finish(await fetch_events(two_hosts, session)) is None, "host A's session ended"

    async def only_a() -> bool:
        return (await _status(bus)).hosts == [HOST_A]

    await _until("host B gone from the status", only_a, 10)

    # A new session goes to the host that is left.
    session = await submit_task(two_hosts, "[busy] after host B stopped")
    assert await _host_ran_on(two_hosts, session) == HOST_A
    for sid in [*by_host[HOST_A], session, *by_host[HOST_B]]:
        await request(
            bus, subjects.PROVISIONER_RELEASE, ReleaseRequest(session_id=sid), Released, timeout=30
        )
