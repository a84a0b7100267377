"""The gateway's WebSockets over a real socket: the service runs in this process, no desktop.

``/ws/events`` relays what the tests publish on a real nats-server (playing
the planner); ``/ws/vnc`` is refused before any byte without the token, and
explains itself when no VNC server is there. The bridge to a real desktop
is in test_gateway.py.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from faststream.nats import NatsBroker
from websockets.asyncio.client import connect

from selfagent.bus.natsd import EmbeddedNats
from selfagent.errors import VncRefused
from selfagent.schemas import (
    AgentMessage,
    ClickAction,
    StepExecuted,
    StepPlanned,
    TaskFinished,
    TaskStarted,
    subjects,
)

from .helpers import recv_close
from .inprocess import Served, serve, settings
from .rfbclient import WsRfbClient


@pytest.fixture(scope="module")
async def served(nats_server: EmbeddedNats) -> AsyncIterator[Served]:
    """The gateway service with no VNC server behind it."""
    async with serve(settings(nats_server.url)) as running:
        yield running


async def test_unauthenticated_websockets_are_refused(served: Served) -> None:
    # The HTTP side of the same rule: test_api.py.
    for path in ("/ws/events", "/ws/vnc"):
        code, reason, data = await recv_close(served.ws_url + path)
        assert code == 1008, (path, code, reason)
        assert data == [], f"{path} sent data before refusing: {data!r}"
        code, _, data = await recv_close(
            served.ws_url + path, additional_headers={"Authorization": "Bearer wrong"}
        )
        assert code == 1008 and data == []


async def test_ws_from_another_site_is_refused(served: Served) -> None:
    code, _, data = await recv_close(
        served.ws_url + "/ws/events",
        additional_headers=served.auth,
        origin="http://evil.invalid",
    )
    assert code == 1008 and data == []


async def test_ws_events_checks_the_id_rule_of_the_schemas(served: Served) -> None:
    code, reason, _ = await recv_close(
        served.ws_url + "/ws/events?session_id=abc%0A", additional_headers=served.auth
    )
    assert code == 4400 and subjects.ID_PATTERN in reason


def _events(session_id: str, task_id: str) -> list[object]:
    click = ClickAction(target="the Terminal icon in the dock")
    return [
        TaskStarted(session_id=session_id, task_id=task_id, prompt="open a terminal"),
        StepPlanned(session_id=session_id, task_id=task_id, step=1, action=click, thought="t"),
        StepExecuted(
            session_id=session_id, task_id=task_id, step=1, action=click, ok=True, duration_ms=42
        ),
        AgentMessage(session_id=session_id, task_id=task_id, text="Terminal is open."),
        TaskFinished(
            session_id=session_id, task_id=task_id, status="succeeded", reply="ok", steps=1
        ),
    ]


async def test_ws_events_relays_and_history_replays(served: Served, bus: NatsBroker) -> None:
    sid, other = f"s{uuid.uuid4().hex[:8]}", f"o{uuid.uuid4().hex[:8]}"
    async with (
        connect(
            served.ws_url + f"/ws/events?session_id={sid}", additional_headers=served.auth
        ) as mine,
        connect(served.ws_url + "/ws/events", additional_headers=served.auth) as everything,
    ):
        hello = json.loads(await asyncio.wait_for(mine.recv(), 5))
        assert hello["kind"] == "gateway.takeover" and hello["takeover"] is False
        await asyncio.wait_for(everything.recv(), 5)

        await bus.publish(
            TaskStarted(session_id=other, task_id="t0", prompt="elsewhere"),
            subjects.session_event(other, "task.started"),
        )
        for event in _events(sid, "t1"):
            await bus.publish(event, subjects.session_event(sid, event.kind))  # type: ignore[attr-defined]

        got = [json.loads(await asyncio.wait_for(mine.recv(), 5)) for _ in range(5)]
        assert [e["kind"] for e in got] == [
            "task.started",
            "step.planned",
            "step.executed",
            "message",
            "task.finished",
        ]
        assert got[1]["action"]["target"] == "the Terminal icon in the dock"
        assert got[2]["duration_ms"] == 42
        all_sessions = [json.loads(await asyncio.wait_for(everything.recv(), 5)) for _ in range(6)]
        assert {e["session_id"] for e in all_sessions} == {sid, other}

    async with httpx.AsyncClient(base_url=served.url, headers=served.auth) as client:
        history = (await client.get(f"/api/sessions/{sid}/events")).json()
        assert [e["kind"] for e in history["events"]] == [e["kind"] for e in got]
        assert history["events"][4]["reply"] == "ok"
        assert history["truncated"] is False
        limited = (await client.get(f"/api/sessions/{sid}/events", params={"limit": 2})).json()
        assert len(limited["events"]) == 2 and limited["truncated"] is True
        empty = (await client.get("/api/sessions/never-used/events")).json()
        assert empty["events"] == []

    code, reason, _ = await recv_close(
        served.ws_url + "/ws/events?session_id=a.b", additional_headers=served.auth
    )
    assert code == 4400 and "session_id" in reason


async def test_invalid_event_on_the_bus_does_not_break_the_relay(
    served: Served, bus: NatsBroker
) -> None:
    sid = f"s{uuid.uuid4().hex[:8]}"
    async with connect(
        served.ws_url + f"/ws/events?session_id={sid}", additional_headers=served.auth
    ) as ws:
        await asyncio.wait_for(ws.recv(), 5)
        await bus.publish(b"{garbage", subjects.session_event(sid, "message"))
        await bus.publish(
            AgentMessage(session_id=sid, task_id="t", text="still here"),
            subjects.session_event(sid, "message"),
        )
        event = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert event["text"] == "still here"


async def test_vnc_bridge_unreachable_server_is_a_clear_error(served: Served) -> None:
    with pytest.raises(VncRefused, match="cannot reach the sandbox VNC server"):
        await WsRfbClient.open(served.ws_url + "/ws/vnc", served.auth, open_timeout=5)
    async with httpx.AsyncClient(base_url=served.url) as client:
        # Still serving, and only the bridge failed.
        assert (await client.get("/healthz")).status_code == 200
    assert not served.service.server.should_exit


async def test_a_repeated_event_reaches_the_page_once(served: Served, bus: NatsBroker) -> None:
    """A publisher that lost its NATS node sends an unacknowledged event again."""
    sid = f"s{uuid.uuid4().hex[:8]}"
    async with connect(
        served.ws_url + f"/ws/events?session_id={sid}", additional_headers=served.auth
    ) as ws:
        await asyncio.wait_for(ws.recv(), 5)
        first = AgentMessage(session_id=sid, task_id="t", text="once")
        for event in (first, first, AgentMessage(session_id=sid, task_id="t", text="once")):
            await bus.publish(event, subjects.session_event(sid, "message"))
        await bus.publish(
            AgentMessage(session_id=sid, task_id="t", text="last"),
            subjects.session_event(sid, "message"),
        )
        texts: list[str] = []
        while not texts or texts[-1] != "last":
            texts.append(json.loads(await asyncio.wait_for(ws.recv(), 5))["text"])
        # The same event twice is one; another event with the same words is not.
        assert texts == ["once", "once", "last"], texts
