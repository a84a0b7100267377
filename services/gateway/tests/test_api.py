"""The gateway's HTTP side, called in process (ASGI) with its bus side on a real nats-server.

No server process and no desktop: what the routes answer, how they validate
and authenticate, and what they publish. The tests play the planner by
publishing events on NATS. WebSockets and the VNC bridge are in
test_websockets.py and test_gateway.py, the process itself in test_lifecycle.py.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from faststream.nats import NatsBroker

from selfagent.bus import sessions
from selfagent.bus.natsd import EmbeddedNats, free_port
from selfagent.schemas import (
    ControlCommand,
    SessionState,
    TaskFinished,
    TaskStateChanged,
    TaskSubmitted,
    subjects,
)
from selfagent.schemas.export import JSON_DIR

from .helpers import Subscription
from .inprocess import AppOnBus, app_on_bus, settings

# --- authentication ---------------------------------------------------------


async def test_unauthenticated_requests_are_refused(app: AppOnBus) -> None:
    async with app.client(authenticated=False) as client:
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


async def test_token_in_url_becomes_cookie(app: AppOnBus) -> None:
    async with app.client(authenticated=False) as client:
        first = await client.get("/", params={"token": app.token, "x": "1"})
        assert first.status_code == 303
        assert first.headers["location"] == "/?x=1"
        cookie = first.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie
        page = await client.get("/")
        assert page.status_code == 200
        assert 'data-testid="desktop"' in page.text

    async with app.client(authenticated=False) as client:
        login = await client.post("/login", data={"token": app.token})
        assert login.status_code == 303
        assert (await client.get("/api/takeover")).status_code == 200
        bad = await client.post("/login", data={"token": "bad"})
        assert bad.status_code == 401 and "not valid" in bad.text


# --- tasks, chat, control ------------------------------------------------------


async def test_post_task_publishes_task_submitted(app: AppOnBus, bus: NatsBroker) -> None:
    async with Subscription(bus, subjects.TASK_SUBMIT) as sub, app.client() as client:
        created = await client.post("/api/sessions")
        assert created.status_code == 201, created.text
        sid = created.json()["session_id"]
        assert subjects.is_subject_id(sid)
        response = await client.post(
            "/api/tasks", json={"prompt": "open a terminal", "session_id": sid}
        )
        assert response.status_code == 202
        body = response.json()
        task = TaskSubmitted.model_validate_json(await sub.next())
        assert task.task_id == body["task_id"]
        assert task.session_id == body["session_id"] == sid
        assert task.prompt == "open a terminal"
        # The fixed desktop: every task names it.
        assert task.sandbox_id == app.gateway.settings.sandbox_id

        fresh = (await client.post("/api/tasks", json={"prompt": "again"})).json()
        task2 = TaskSubmitted.model_validate_json(await sub.next())
        assert task2.session_id == fresh["session_id"] != sid
        # A session started by a task is known at once, before any planner records it.
        again = await client.post(
            "/api/tasks", json={"prompt": "more", "session_id": fresh["session_id"]}
        )
        assert again.status_code == 202, again.text
        assert TaskSubmitted.model_validate_json(await sub.next()).session_id == fresh["session_id"]


async def test_unknown_sessions_are_404_and_start_nothing(app: AppOnBus, bus: NatsBroker) -> None:
    async with Subscription(bus, subjects.TASK_SUBMIT) as sub, app.client() as client:
        for path in ("/api/tasks", "/api/chat"):
            response = await client.post(path, json={"prompt": "x", "session_id": "nobody-here"})
            assert response.status_code == 404, (path, response.text)
            assert "no session 'nobody-here'" in response.json()["detail"]
        closed = await client.delete("/api/sessions/nobody-here")
        assert closed.status_code == 404, closed.text
        assert sub.messages.empty(), "a task for an unknown session was published"

        # A session the planner recorded is known, whoever started it.
        await _record_state(bus, "recorded-1", "succeeded")
        accepted = await client.post("/api/tasks", json={"prompt": "x", "session_id": "recorded-1"})
        assert accepted.status_code == 202, accepted.text
        assert TaskSubmitted.model_validate_json(await sub.next()).session_id == "recorded-1"


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
async def test_invalid_bodies_are_422(app: AppOnBus, body: str, where: str) -> None:
    async with app.client() as client:
        for path in ("/api/tasks", "/api/chat"):
            response = await client.post(
                path, content=body, headers={"content-type": "application/json"}
            )
            assert response.status_code == 422, (path, response.text)
            payload = response.json()
            assert payload["message"].startswith("invalid request: " + where), payload


async def test_invalid_control_is_422(app: AppOnBus) -> None:
    async with app.client() as client:
        bad_verb = await client.post("/api/sessions/s1/control", json={"command": "explode"})
        assert bad_verb.status_code == 422
        assert "command" in bad_verb.json()["message"]
        bad_sid = await client.post("/api/sessions/a.b/control", json={"command": "pause"})
        assert bad_sid.status_code == 422
        assert "session_id" in bad_sid.json()["message"]
        assert (await client.get("/api/sessions/a%2Ab/events")).status_code == 422
        bad_viewer = await client.post(
            "/api/sessions/s1/control", json={"command": "takeover", "viewer": "a b"}
        )
        assert bad_viewer.status_code == 422 and "viewer" in bad_viewer.json()["message"]


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
    app: AppOnBus, method: str, path: str, body: object, status: int
) -> None:
    async with app.client() as client:
        response = await client.request(method, path, json=body)
    assert response.status_code == status, response.text
    if status == 422:
        assert "session_id" in response.json()["message"]


async def test_the_page_reads_the_id_rule_from_the_schema(app: AppOnBus) -> None:
    # The event socket refuses a bad id with the same rule: test_websockets.py.
    async with app.client() as client:
        # What ui/app.js fetches at start.
        served = (await client.get("/api/schemas/TaskSubmitted.json")).json()
        assert served == json.loads((JSON_DIR / "TaskSubmitted.json").read_text())
        for field in ("session_id", "task_id"):
            assert served["properties"][field]["pattern"] == subjects.ID_PATTERN
        assert (await client.get("/api/schemas/Nope.json")).status_code == 404


async def test_chat_returns_the_reply(app: AppOnBus, bus: NatsBroker) -> None:
    async def planner() -> None:
        async with Subscription(bus, subjects.TASK_SUBMIT) as sub:
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
    async with app.client() as client:
        response = await client.post("/api/chat", json={"prompt": "what is 2+2"})
    await fake
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["reply"] == "done: what is 2+2"
    assert body["status"] == "succeeded"
    assert body["steps"] == 3
    assert body["task_id"] and body["session_id"]


async def test_chat_times_out_with_504(nats_server: EmbeddedNats) -> None:
    # The wait is what is tested; one second shows it as well as ten.
    async with app_on_bus(settings(nats_server.url, chat_timeout=1)) as short:
        started = time.monotonic()
        async with short.client() as client:
            response = await client.post("/api/chat", json={"prompt": "nobody answers"})
        elapsed = time.monotonic() - started
    assert response.status_code == 504
    assert "did not finish within 1s" in response.json()["detail"]
    assert 1.0 <= elapsed < 10


async def test_control_publishes_command(app: AppOnBus, bus: NatsBroker) -> None:
    async with (
        Subscription(bus, subjects.session_control("ctl-1")) as sub,
        app.client() as client,
    ):
        for verb in ("pause", "resume", "stop"):
            response = await client.post("/api/sessions/ctl-1/control", json={"command": verb})
            assert response.status_code == 202
            command = ControlCommand.model_validate_json(await sub.next())
            assert (command.session_id, command.command) == ("ctl-1", verb)


async def test_chat_returns_the_question_of_a_task_that_asks(
    app: AppOnBus, bus: NatsBroker
) -> None:
    """A task that waits for the person answers the request with its question, at once."""

    async def planner() -> None:
        async with Subscription(bus, subjects.TASK_SUBMIT) as sub:
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
    async with app.client() as client:
        response = await client.post("/api/chat", json={"prompt": "open my file"})
    await fake
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["status"], body["reply"]) == ("needs_user", "Which file: report.pdf or notes.txt?")
    assert time.monotonic() - started < 2.5, "it waited for the end instead of returning"


async def _record_state(bus: NatsBroker, session_id: str, status: str) -> None:
    """Write a session's state as a planner would (the gateway reads it back)."""
    task = TaskSubmitted(session_id=session_id, prompt="open my file")
    state = SessionState.fresh(task).model_copy(update={"status": status})
    await sessions.ensure_bucket(bus)
    bucket = await sessions.open_bucket(bus)
    await bucket.put(session_id, state.model_dump_json().encode())


async def test_answer_is_published_with_its_text(app: AppOnBus, bus: NatsBroker) -> None:
    """The reply to a task waiting in needs_user goes to the planner as an answer control."""
    async with (
        Subscription(bus, subjects.session_control("ask-1")) as sub,
        app.client() as client,
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


async def test_gateway_starts_before_nats() -> None:
    port = free_port()
    server = EmbeddedNats(port=port)
    try:
        async with (
            app_on_bus(settings(f"nats://127.0.0.1:{port}"), wait_for_nats=False) as early,
            early.client() as client,
        ):
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
        server.cleanup()


# --- sessions ---------------------------------------------------------------------


async def test_sessions_with_the_fixed_desktop(app: AppOnBus, bus: NatsBroker) -> None:
    async with app.client() as client:
        await _record_state(bus, "listed-old", "succeeded")
        created = await client.post("/api/sessions")
        assert created.status_code == 201, created.text
        body = created.json()
        sid = body["session_id"]
        # Every session shares the one desktop: nothing to lease, nothing to wait for.
        assert body["sandbox_id"] == app.gateway.settings.sandbox_id and body["wait_ms"] == 0

        listing = await client.get("/api/sessions")
        assert listing.status_code == 200, listing.text
        payload = listing.json()
        assert payload["desktops"] == "fixed" and payload["complete"] is True
        order = [s["session_id"] for s in payload["sessions"]]
        assert order.index(sid) < order.index("listed-old"), "not newest first"
        fresh = payload["sessions"][order.index(sid)]
        assert (fresh["status"], fresh["steps"], fresh["last_prompt"]) == ("idle", 0, None)
        old = payload["sessions"][order.index("listed-old")]
        assert (old["status"], old["last_prompt"]) == ("succeeded", "open my file")
        stamps = [s["created"] for s in payload["sessions"]]
        assert stamps == sorted(stamps, reverse=True)

        async with Subscription(bus, subjects.session_control(sid)) as controls:
            closed = await client.delete(f"/api/sessions/{sid}")
            assert closed.status_code == 200, closed.text
            assert closed.json() == {"session_id": sid, "sandbox_id": None, "home_deleted": False}
            stop = ControlCommand.model_validate_json(await controls.next())
            assert (stop.session_id, stop.command) == (sid, "stop")
        # Without a task it had no record: closed, it is gone.
        listed = {s["session_id"] for s in (await client.get("/api/sessions")).json()["sessions"]}
        assert sid not in listed and "listed-old" in listed
        assert (await client.delete(f"/api/sessions/{sid}")).status_code == 404
        # A recorded session stays listed as history after closing.
        assert (await client.delete("/api/sessions/listed-old")).status_code == 200
        assert (await client.delete("/api/sessions/a.b")).status_code == 422


async def test_fixed_desktop_takeover_is_shared_by_all_sessions(app: AppOnBus) -> None:
    async with app.client() as client:
        taken = await client.post("/api/sessions/fx-a/control", json={"command": "takeover"})
        assert taken.status_code == 202 and taken.json()["takeover"] is True
        try:
            # The one desktop is taken over, whichever session watches it.
            other = (await client.get("/api/takeover", params={"session_id": "fx-b"})).json()
            assert other == {
                "takeover": True,
                "session_id": "fx-a",
                "viewer": None,
                "sessions": ["fx-a"],
            }
            assert app.gateway.takeover.active_for("fx-b") and app.gateway.takeover.active_for(None)
            bad = await client.get("/api/takeover", params={"session_id": "a.b"})
            assert bad.status_code == 422
        finally:
            released = await client.post("/api/sessions/fx-b/control", json={"command": "release"})
        assert released.json()["takeover"] is False
        assert (await client.get("/api/takeover")).json()["takeover"] is False


async def test_per_session_without_a_provisioner() -> None:
    """No provisioner, or one that never answers: refusals in bounded time, never a hang."""
    # A server of its own: no provisioner of another test can answer here.
    server = EmbeddedNats(port=free_port()).start()
    try:
        await _without_a_provisioner(server.url)
    finally:
        server.cleanup()


async def _without_a_provisioner(nats_url: str) -> None:
    async with (
        app_on_bus(
            settings(nats_url, GATEWAY_DESKTOPS="per_session", provisioner_timeout=1.0)
        ) as gw,
        gw.client() as client,
    ):
        refused = await client.post("/api/sessions")
        assert refused.status_code == 503, refused.text
        assert "no desktop for a new session" in refused.json()["detail"]
        listing = await client.get("/api/sessions")
        assert listing.status_code == 200 and listing.json()["complete"] is False
        unknown = await client.post("/api/tasks", json={"prompt": "x", "session_id": "nope"})
        assert unknown.status_code == 503, unknown.text

        # A provisioner that takes the request and never replies.
        async def ignore(_msg: object) -> None:
            return None

        nc = gw.gateway.bus.broker.connection
        stalled = await nc.subscribe(subjects.PROVISIONER_STATUS, cb=ignore)
        try:
            started = time.monotonic()
            listing = await client.get("/api/sessions")
            elapsed = time.monotonic() - started
        finally:
            await stalled.unsubscribe()
        assert listing.status_code == 200 and listing.json()["complete"] is False
        assert 1.0 <= elapsed < 5, elapsed

        # A task without a session starts one; its sandbox is the session's own.
        async with Subscription(gw.gateway.bus.broker, subjects.TASK_SUBMIT) as sub:
            accepted = await client.post("/api/tasks", json={"prompt": "x"})
            assert accepted.status_code == 202, accepted.text
            task = TaskSubmitted.model_validate_json(await sub.next())
            assert task.sandbox_id is None
