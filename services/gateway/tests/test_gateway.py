"""The gateway against a real nats-server and a real Xvnc + Xfce desktop.

The gateway runs as its own process (``python -m selfagent.gateway``); the
tests talk to it over HTTP/WebSocket like a browser or automation client,
and play the planner by publishing events on NATS.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import httpx
import pytest
from faststream.nats import NatsBroker
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from selfagent.bus import sessions
from selfagent.bus.natsd import EmbeddedNats, free_port
from selfagent.errors import VncRefused
from selfagent.schemas import (
    AgentMessage,
    ClickAction,
    ControlCommand,
    SessionState,
    StepExecuted,
    StepPlanned,
    TaskFinished,
    TaskStarted,
    TaskStateChanged,
    TaskSubmitted,
    subjects,
)
from selfagent.schemas.export import JSON_DIR
from tests.harness.desktop import Desktop

from .rfbclient import TcpRfbClient, WsRfbClient
from .stack import GatewayProcess, start_gateway

pytestmark = pytest.mark.desktop


async def _recv_close(ws_url: str, **kw: object) -> tuple[int | None, str, list[object]]:
    """Connect, read whatever arrives until the server closes; return code, reason, data."""
    received: list[object] = []
    async with connect(ws_url, open_timeout=5, **kw) as ws:  # type: ignore[arg-type]
        try:
            while True:
                received.append(await asyncio.wait_for(ws.recv(), 5))
        except ConnectionClosed as closed:
            assert closed.rcvd is not None, "server closed without a close frame"
            return closed.rcvd.code, closed.rcvd.reason, received
    raise AssertionError("unreachable")


class _Subscription:
    """Collect what arrives on a subject, as an automation client would."""

    def __init__(self, broker: NatsBroker, subject: str) -> None:
        self.broker, self.subject = broker, subject
        self.messages: asyncio.Queue[bytes] = asyncio.Queue()

    async def __aenter__(self) -> _Subscription:
        async def handler(msg: object) -> None:
            await self.messages.put(msg.data)  # type: ignore[attr-defined]

        self.sub = await self.broker.connection.subscribe(self.subject, cb=handler)
        await self.broker.connection.flush()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.sub.unsubscribe()

    async def next(self) -> bytes:
        return await asyncio.wait_for(self.messages.get(), 5.0)


# --- authentication ---------------------------------------------------------


async def test_unauthenticated_requests_are_refused(gateway: GatewayProcess) -> None:
    async with httpx.AsyncClient(base_url=gateway.url) as client:
        page = await client.get("/")
        assert page.status_code == 401
        assert 'data-testid="login-form"' in page.text
        assert "rfb.js" not in page.text and "app.js" not in page.text

        for path in (
            "/ui/app.js",
            "/novnc/core/rfb.js",
            "/api/takeover",
            "/api/schemas/TaskSubmitted.json",
        ):
            assert (await client.get(path)).status_code == 401, path

        api = await client.post("/api/tasks", json={"prompt": "hi"})
        assert api.status_code == 401
        assert api.headers["content-type"].startswith("application/json")
        assert "Bearer" in api.json()["detail"]

        wrong = await client.post(
            "/api/tasks", json={"prompt": "hi"}, headers={"Authorization": "Bearer nope"}
        )
        assert wrong.status_code == 401

        wrong_url = await client.get("/", params={"token": "nope"})
        assert wrong_url.status_code == 401
        assert "selfagent_token" not in wrong_url.headers.get("set-cookie", "")

        health = await client.get("/healthz")
        assert health.status_code == 200
        assert health.json()["nats"] == "connected"

    for path in ("/ws/events", "/ws/vnc"):
        code, reason, data = await _recv_close(gateway.ws_url + path)
        assert code == 1008, (path, code, reason)
        assert data == [], f"{path} sent data before refusing: {data!r}"
        code, _, data = await _recv_close(
            gateway.ws_url + path, additional_headers={"Authorization": "Bearer wrong"}
        )
        assert code == 1008 and data == []


async def test_ws_from_another_site_is_refused(gateway: GatewayProcess) -> None:
    code, _, data = await _recv_close(
        gateway.ws_url + "/ws/events",
        additional_headers=gateway.auth,
        origin="http://evil.invalid",
    )
    assert code == 1008 and data == []


async def test_token_in_url_becomes_cookie(gateway: GatewayProcess) -> None:
    async with httpx.AsyncClient(base_url=gateway.url) as client:
        first = await client.get("/", params={"token": gateway.token, "x": "1"})
        assert first.status_code == 303
        assert first.headers["location"] == "/?x=1"
        cookie = first.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie
        page = await client.get("/")
        assert page.status_code == 200
        assert 'data-testid="desktop"' in page.text

    async with httpx.AsyncClient(base_url=gateway.url) as client:
        login = await client.post("/login", data={"token": gateway.token})
        assert login.status_code == 303
        assert (await client.get("/api/takeover")).status_code == 200
        bad = await client.post("/login", data={"token": "bad"})
        assert bad.status_code == 401 and "not valid" in bad.text


def test_gateway_refuses_an_empty_token(nats_server: EmbeddedNats, desktop: Desktop) -> None:
    with pytest.raises(RuntimeError, match="SELFAGENT_TOKEN is empty"):
        start_gateway(nats_server.url, desktop.vnc_port, desktop.password, token=" ")


# --- tasks, chat, control, events --------------------------------------------


async def test_post_task_publishes_task_submitted(gateway: GatewayProcess, bus: NatsBroker) -> None:
    async with (
        _Subscription(bus, subjects.TASK_SUBMIT) as sub,
        httpx.AsyncClient(base_url=gateway.url, headers=gateway.auth) as client,
    ):
        response = await client.post(
            "/api/tasks", json={"prompt": "open a terminal", "session_id": "sess-1"}
        )
        assert response.status_code == 202
        body = response.json()
        task = TaskSubmitted.model_validate_json(await sub.next())
        assert task.task_id == body["task_id"]
        assert task.session_id == body["session_id"] == "sess-1"
        assert task.prompt == "open a terminal"

        fresh = (await client.post("/api/tasks", json={"prompt": "again"})).json()
        task2 = TaskSubmitted.model_validate_json(await sub.next())
        assert task2.session_id == fresh["session_id"] != "sess-1"


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ("{not json", "body"),
        (json.dumps({}), "body.prompt"),
        (json.dumps({"prompt": ""}), "body.prompt"),
        (json.dumps({"prompt": "   "}), "body.prompt"),
        (json.dumps({"prompt": "x", "session_id": "a.b"}), "body.session_id"),
        (json.dumps({"prompt": "x", "colour": "red"}), "body.colour"),
        (json.dumps(["prompt"]), "body"),
    ],
)
async def test_invalid_bodies_are_422(gateway: GatewayProcess, body: str, where: str) -> None:
    async with httpx.AsyncClient(base_url=gateway.url, headers=gateway.auth) as client:
        for path in ("/api/tasks", "/api/chat"):
            response = await client.post(
                path, content=body, headers={"content-type": "application/json"}
            )
            assert response.status_code == 422, (path, response.text)
            payload = response.json()
            assert payload["message"].startswith("invalid request: " + where), payload


async def test_invalid_control_is_422(gateway: GatewayProcess) -> None:
    async with httpx.AsyncClient(base_url=gateway.url, headers=gateway.auth) as client:
        bad_verb = await client.post("/api/sessions/s1/control", json={"command": "explode"})
        assert bad_verb.status_code == 422
        assert "command" in bad_verb.json()["message"]
        bad_sid = await client.post("/api/sessions/a.b/control", json={"command": "pause"})
        assert bad_sid.status_code == 422
        assert "session_id" in bad_sid.json()["message"]
        assert (await client.get("/api/sessions/a%2Ab/events")).status_code == 422


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("GET", "/api/sessions/a.b", None, 422),
        ("GET", "/api/sessions/a*b/events", None, 422),
        ("GET", f"/api/sessions/{'x' * 65}", None, 422),
        # A trailing newline passes re.match with "$"; the one rule refuses it everywhere.
        ("GET", "/api/sessions/abc%0A/events", None, 422),
        ("POST", "/api/sessions/a%20b/control", {"command": "stop"}, 422),
        ("GET", "/api/sessions/a%2Fb/events", None, 404),
        ("POST", "/api/tasks", {"prompt": "x", "session_id": "abc\n"}, 422),
        ("POST", "/api/tasks", {"prompt": "x", "session_id": "x" * 65}, 422),
    ],
)
async def test_bad_ids_are_refused(
    gateway: GatewayProcess, method: str, path: str, body: object, status: int
) -> None:
    async with httpx.AsyncClient(base_url=gateway.url, headers=gateway.auth) as client:
        response = await client.request(method, path, json=body)
    assert response.status_code == status, response.text
    if status == 422:
        assert "session_id" in response.json()["message"]


async def test_the_page_reads_the_id_rule_from_the_schema(gateway: GatewayProcess) -> None:
    async with httpx.AsyncClient(base_url=gateway.url, headers=gateway.auth) as client:
        # What ui/app.js fetches at start.
        served = (await client.get("/api/schemas/TaskSubmitted.json")).json()
        assert served == json.loads((JSON_DIR / "TaskSubmitted.json").read_text())
        for field in ("session_id", "task_id", "sandbox_id"):
            assert served["properties"][field]["pattern"] == subjects.ID_PATTERN
        assert (await client.get("/api/schemas/Nope.json")).status_code == 404
    code, reason, _ = await _recv_close(
        gateway.ws_url + "/ws/events?session_id=abc%0A", additional_headers=gateway.auth
    )
    assert code == 4400 and subjects.ID_PATTERN in reason


async def test_chat_returns_the_reply(gateway: GatewayProcess, bus: NatsBroker) -> None:
    async def planner() -> None:
        async with _Subscription(bus, subjects.TASK_SUBMIT) as sub:
            ready.set()
            task = TaskSubmitted.model_validate_json(await sub.next())
            # Finishing at once is the hard case: the gateway must already listen.
            await bus.publish(
                TaskFinished(
                    session_id=task.session_id,
                    task_id=task.task_id,
                    status="succeeded",
                    reply=f"done: {task.prompt}",
                    steps=3,
                ),
                subjects.session_event(task.session_id, "task.finished"),
            )

    ready = asyncio.Event()
    fake = asyncio.create_task(planner())
    await ready.wait()
    async with httpx.AsyncClient(base_url=gateway.url, headers=gateway.auth) as client:
        response = await client.post("/api/chat", json={"prompt": "what is 2+2"})
    await fake
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["reply"] == "done: what is 2+2"
    assert body["status"] == "succeeded"
    assert body["steps"] == 3
    assert body["task_id"] and body["session_id"]


async def test_chat_returns_the_question_of_a_task_that_asks(
    gateway: GatewayProcess, bus: NatsBroker
) -> None:
    """A task that waits for the person answers the request with its question, at once."""

    async def planner() -> None:
        async with _Subscription(bus, subjects.TASK_SUBMIT) as sub:
            ready.set()
            task = TaskSubmitted.model_validate_json(await sub.next())
            await bus.publish(
                TaskStateChanged(
                    session_id=task.session_id,
                    task_id=task.task_id,
                    state="needs_user",
                    question="Which file: report.pdf or notes.txt?",
                ),
                subjects.session_event(task.session_id, "task.state"),
            )

    ready = asyncio.Event()
    fake = asyncio.create_task(planner())
    await ready.wait()
    started = time.monotonic()
    async with httpx.AsyncClient(base_url=gateway.url, headers=gateway.auth) as client:
        response = await client.post("/api/chat", json={"prompt": "open my file"})
    await fake
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["status"], body["reply"]) == ("needs_user", "Which file: report.pdf or notes.txt?")
    assert time.monotonic() - started < 2.5, "it waited for the end instead of returning"


async def test_chat_times_out_with_504(gateway: GatewayProcess) -> None:
    started = time.monotonic()
    async with httpx.AsyncClient(base_url=gateway.url, headers=gateway.auth) as client:
        response = await client.post("/api/chat", json={"prompt": "nobody answers"})
    assert response.status_code == 504
    assert "did not finish within 3s" in response.json()["detail"]
    assert 2.5 < time.monotonic() - started < 10


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


async def test_ws_events_relays_and_history_replays(
    gateway: GatewayProcess, bus: NatsBroker
) -> None:
    sid, other = f"s{uuid.uuid4().hex[:8]}", f"o{uuid.uuid4().hex[:8]}"
    async with (
        connect(
            gateway.ws_url + f"/ws/events?session_id={sid}", additional_headers=gateway.auth
        ) as mine,
        connect(gateway.ws_url + "/ws/events", additional_headers=gateway.auth) as everything,
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

    async with httpx.AsyncClient(base_url=gateway.url, headers=gateway.auth) as client:
        history = (await client.get(f"/api/sessions/{sid}/events")).json()
        assert [e["kind"] for e in history["events"]] == [e["kind"] for e in got]
        assert history["events"][4]["reply"] == "ok"
        assert history["truncated"] is False
        limited = (await client.get(f"/api/sessions/{sid}/events", params={"limit": 2})).json()
        assert len(limited["events"]) == 2 and limited["truncated"] is True
        empty = (await client.get("/api/sessions/never-used/events")).json()
        assert empty["events"] == []

    code, reason, _ = await _recv_close(
        gateway.ws_url + "/ws/events?session_id=a.b", additional_headers=gateway.auth
    )
    assert code == 4400 and "session_id" in reason


async def test_control_publishes_command(gateway: GatewayProcess, bus: NatsBroker) -> None:
    async with (
        _Subscription(bus, subjects.session_control("ctl-1")) as sub,
        httpx.AsyncClient(base_url=gateway.url, headers=gateway.auth) as client,
    ):
        for verb in ("pause", "resume", "stop"):
            response = await client.post("/api/sessions/ctl-1/control", json={"command": verb})
            assert response.status_code == 202
            command = ControlCommand.model_validate_json(await sub.next())
            assert (command.session_id, command.command) == ("ctl-1", verb)


async def _record_state(bus: NatsBroker, session_id: str, status: str) -> None:
    """Write a session's state as a planner would (the gateway reads it back)."""
    task = TaskSubmitted(session_id=session_id, prompt="open my file")
    state = SessionState.fresh(task).model_copy(update={"status": status})
    await sessions.ensure_bucket(bus)
    bucket = await sessions.open_bucket(bus)
    await bucket.put(session_id, state.model_dump_json().encode())


async def test_answer_is_published_with_its_text(gateway: GatewayProcess, bus: NatsBroker) -> None:
    """The reply to a task waiting in needs_user goes to the planner as an answer control."""
    async with (
        _Subscription(bus, subjects.session_control("ask-1")) as sub,
        httpx.AsyncClient(base_url=gateway.url, headers=gateway.auth) as client,
    ):
        # Nobody is asking yet: an answer would vanish, so it is refused.
        await _record_state(bus, "ask-1", "running")
        early = await client.post(
            "/api/sessions/ask-1/control", json={"command": "answer", "text": "notes.txt"}
        )
        assert early.status_code == 409, early.text
        assert "not waiting for an answer" in early.text
        unknown = await client.post(
            "/api/sessions/nobody-asked/control", json={"command": "answer", "text": "x"}
        )
        assert unknown.status_code == 409, unknown.text
        assert sub.messages.empty(), "a refused answer was published"

        await _record_state(bus, "ask-1", "needs_user")
        response = await client.post(
            "/api/sessions/ask-1/control", json={"command": "answer", "text": "notes.txt"}
        )
        assert response.status_code == 202, response.text
        command = ControlCommand.model_validate_json(await sub.next())
        assert (command.session_id, command.command, command.text) == (
            "ask-1",
            "answer",
            "notes.txt",
        )
        for body in ({"command": "answer"}, {"command": "answer", "text": "  "}):
            refused = await client.post("/api/sessions/ask-1/control", json=body)
            assert refused.status_code == 422, body
            assert "answer needs a non-empty text" in refused.json()["message"]
        assert sub.messages.empty(), "a refused answer was published"


async def test_invalid_event_on_the_bus_does_not_break_the_relay(
    gateway: GatewayProcess, bus: NatsBroker
) -> None:
    sid = f"s{uuid.uuid4().hex[:8]}"
    async with connect(
        gateway.ws_url + f"/ws/events?session_id={sid}", additional_headers=gateway.auth
    ) as ws:
        await asyncio.wait_for(ws.recv(), 5)
        await bus.publish(b"{garbage", subjects.session_event(sid, "message"))
        await bus.publish(
            AgentMessage(session_id=sid, task_id="t", text="still here"),
            subjects.session_event(sid, "message"),
        )
        event = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert event["text"] == "still here"


# --- the VNC bridge ----------------------------------------------------------


async def _open_vnc(gateway: GatewayProcess) -> WsRfbClient:
    return await WsRfbClient.open(gateway.ws_url + "/ws/vnc", gateway.auth, open_timeout=5)


async def test_vnc_bridge_shows_real_desktop_pixels(
    gateway: GatewayProcess, desktop: Desktop
) -> None:
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
    gateway: GatewayProcess, desktop: Desktop, bus: NatsBroker
) -> None:
    def pointer() -> tuple[int, int]:
        out = dict(p.split(":") for p in desktop.xdotool("getmouselocation").split() if ":" in p)
        return int(out["x"]), int(out["y"])

    desktop.xdotool("mousemove", "100", "100")
    assert pointer() == (100, 100)
    client = await _open_vnc(gateway)
    async with httpx.AsyncClient(base_url=gateway.url, headers=gateway.auth) as api:
        try:
            assert (await api.get("/api/takeover")).json()["takeover"] is False
            await client.pointer(640, 360)
            await client.request_update(incremental=True)
            await asyncio.sleep(1.0)
            assert pointer() == (100, 100), "a watching browser moved the agent's pointer"

            # Take over from another NATS client (e.g. an automation script).
            await bus.publish(
                ControlCommand(session_id="viewer", command="takeover"),
                subjects.session_control("viewer"),
            )
            deadline = time.monotonic() + 5
            while not (await api.get("/api/takeover")).json()["takeover"]:
                assert time.monotonic() < deadline, "takeover never applied"
                await asyncio.sleep(0.05)
            await client.pointer(640, 360)
            deadline = time.monotonic() + 5
            while pointer() != (640, 360):
                assert time.monotonic() < deadline, f"pointer at {pointer()}"
                await asyncio.sleep(0.05)

            released = await api.post("/api/sessions/viewer/control", json={"command": "release"})
            assert released.json()["takeover"] is False
            await client.pointer(300, 200)
            await asyncio.sleep(1.0)
            assert pointer() == (640, 360)
        finally:
            await api.post("/api/sessions/viewer/control", json={"command": "release"})
            await client.close()


async def test_vnc_bridge_wrong_password_is_a_clear_error(
    nats_server: EmbeddedNats, desktop: Desktop
) -> None:
    gw = start_gateway(nats_server.url, desktop.vnc_port, "not-the-password")
    try:
        with pytest.raises(VncRefused, match="VNC authentication failed"):
            await _open_vnc(gw)
        code, reason, _ = await _recv_close(gw.ws_url + "/ws/vnc", additional_headers=gw.auth)
        assert code == 1011 and "authentication failed" in reason
        assert gw.alive()
        assert (await asyncio.to_thread(httpx.get, gw.url + "/healthz")).status_code == 200
    finally:
        gw.stop()


async def test_vnc_bridge_unreachable_server_is_a_clear_error(
    nats_server: EmbeddedNats,
) -> None:
    gw = start_gateway(nats_server.url, free_port(), "x")
    try:
        with pytest.raises(VncRefused, match="cannot reach the sandbox VNC server"):
            await _open_vnc(gw)
        assert gw.alive()
    finally:
        gw.stop()


async def test_vnc_bridge_rejects_garbage_from_the_browser(gateway: GatewayProcess) -> None:
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


async def test_gateway_starts_before_nats(desktop: Desktop) -> None:
    port = free_port()
    gw = start_gateway(
        f"nats://127.0.0.1:{port}", desktop.vnc_port, desktop.password, wait_for_nats=False
    )
    server = EmbeddedNats(port=port)
    try:
        async with httpx.AsyncClient(base_url=gw.url, headers=gw.auth) as client:
            assert (await client.get("/healthz")).json()["nats"] == "disconnected"
            down = await client.post("/api/tasks", json={"prompt": "x"})
            assert down.status_code == 503 and "not connected to NATS" in down.json()["detail"]
            server.start()
            deadline = time.monotonic() + 15
            while (await client.get("/healthz")).status_code != 200:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.2)
            assert (await client.post("/api/tasks", json={"prompt": "x"})).status_code == 202
    finally:
        gw.stop()
        server.cleanup()


async def test_vnc_bridge_is_byte_exact_and_its_overhead_is_small(
    gateway: GatewayProcess, desktop: Desktop
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
