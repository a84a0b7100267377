"""One instruction end to end through the real stack, and bad input on the way."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import shlex
import time
import zipfile
from typing import Any

import httpx
import pytest

from selfagent.local import LocalStack
from tests.harness.api import chat, computer, session_events
from tests.harness.fakellm import FakeLLM

pytestmark = pytest.mark.desktop


def test_instruction_creates_file_on_real_desktop(stack: LocalStack, llm: FakeLLM) -> None:
    llm.push(
        computer(action="key", keys="ctrl+alt+t"),
        computer(action="type", text="echo hello > ~/Desktop/hello.txt"),
        computer(action="key", keys="Return"),
        computer(action="done", message="I created hello.txt on the desktop."),
    )
    reply = chat(stack, "open a terminal and create a file on the desktop")

    assert reply["status"] == "succeeded", reply
    assert reply["reply"] == "I created hello.txt on the desktop."
    assert stack.sandbox_home is not None
    created = stack.sandbox_home / "Desktop" / "hello.txt"
    deadline = time.monotonic() + 5
    while not created.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert created.read_text() == "hello\n"

    events = session_events(stack, reply["session_id"])
    executed = [e for e in events if e["kind"] == "step.executed"]
    assert [e["action"]["action"] for e in executed] == ["key", "type", "key"]
    assert all(e["ok"] for e in executed)
    finished = [e for e in events if e["kind"] == "task.finished"]
    assert len(finished) == 1 and finished[0]["reply"] == reply["reply"]

    # The planner's record of the session, as a program would poll it.
    headers = {"Authorization": f"Bearer {stack.token}"}
    state = httpx.get(f"{stack.gateway_url}/api/sessions/{reply['session_id']}", headers=headers)
    assert state.status_code == 200, state.text
    assert state.json()["status"] == "succeeded" and state.json()["steps"] == 4
    unknown = httpx.get(f"{stack.gateway_url}/api/sessions/no-such-session", headers=headers)
    assert unknown.status_code == 404

    # The model saw real screenshots: every call carried an image data URI.
    # (The current one is no longer in the last message: the closing ask
    # follows it, so that a prefix cache can reuse it as a past step.)
    for request in llm.requests:
        images = [
            part
            for message in request["messages"]
            if isinstance(message["content"], list)
            for part in message["content"]
            if part.get("type") == "image_url"
        ]
        assert images and images[-1]["image_url"]["url"].startswith("data:image/jpeg;base64,")

    # On the locked bus the planner keeps each step's screenshots and the
    # gateway reads them back: one of them, and all as a trajectory.
    sid = reply["session_id"]
    shot = httpx.get(
        f"{stack.gateway_url}/api/sessions/{sid}/steps/3/screenshot",
        params={"when": "after"},
        headers=headers,
    )
    assert shot.status_code == 200, shot.text
    assert shot.headers["content-type"] == "image/jpeg" and shot.content[:3] == b"\xff\xd8\xff"
    trip = httpx.get(f"{stack.gateway_url}/api/sessions/{sid}/trajectory", headers=headers)
    assert trip.status_code == 200, trip.text
    with zipfile.ZipFile(io.BytesIO(trip.content)) as archive:
        lines = [json.loads(line) for line in archive.read("steps.jsonl").splitlines()]
        assert [line["action"]["action"] for line in lines] == ["key", "type", "key", "done"]
        assert all(line["images"]["before"] in archive.namelist() for line in lines)
        assert archive.read(lines[2]["images"]["after"]) == shot.content
        assert all(line["model"]["reply"]["tool_calls"] for line in lines)


def test_bad_model_output_fails_clearly_and_services_survive(
    stack: LocalStack, llm: FakeLLM
) -> None:
    llm.push(
        {"content": "I think I should maybe click somewhere? Not sure."},
        computer(action="teleport", x=10, y=10),
        computer(action="click", x=5000, y=10),
    )
    reply = chat(stack, "do something impossible")
    assert reply["status"] == "failed"
    assert "outside" in reply["reply"] and "5000" in reply["reply"], reply["reply"]

    events = session_events(stack, reply["session_id"])
    feedback = [e["text"] for e in events if e["kind"] == "message" and e["role"] == "system"]
    assert any("teleport" in text for text in feedback), feedback
    assert not [e for e in events if e["kind"] == "step.executed"], "nothing may run"

    # The model was told exactly what was wrong before each retry.
    retry_prompt = json.dumps(llm.requests[1]["messages"][-1])
    assert "not a valid action" in retry_prompt

    for name, process in stack.processes.items():
        assert process.poll() is None, f"{name} died:\n{stack.log(name)[-3000:]}"

    llm.push(
        computer(action="move", x=640, y=360),
        computer(action="done", message="Moved the pointer."),
    )
    again = chat(stack, "move the mouse to the middle")
    assert again["status"] == "succeeded" and again["reply"] == "Moved the pointer."


def test_unauthenticated_requests_are_refused(stack: LocalStack) -> None:
    base = stack.gateway_url
    assert httpx.get(f"{base}/").status_code == 401
    assert httpx.post(f"{base}/api/chat", json={"prompt": "x"}).status_code == 401
    assert httpx.get(f"{base}/api/sessions/abc/events").status_code == 401
    wrong = {"Authorization": "Bearer wrong"}
    assert httpx.post(f"{base}/api/chat", json={"prompt": "x"}, headers=wrong).status_code == 401

    import websockets

    async def refused(path: str) -> bool:
        url = base.replace("http", "ws") + path
        try:
            async with websockets.connect(url) as ws:
                await asyncio.wait_for(ws.recv(), 5)
        except websockets.exceptions.InvalidStatus:
            return True
        except websockets.exceptions.ConnectionClosed as closed:
            return closed.rcvd is not None and closed.rcvd.code == 1008
        return False

    assert asyncio.run(refused("/ws/events"))
    assert asyncio.run(refused("/ws/vnc"))


def test_bus_survives_invalid_messages(stack: LocalStack, llm: FakeLLM) -> None:
    """Garbage published on the task and act subjects: dead-lettered or answered, no crash."""
    import nats

    async def poke() -> dict[str, Any]:
        # As the admin: garbage on subjects no single identity may both use.
        client = await nats.connect(stack.nats_url_as("admin"))
        letters = await client.subscribe("agent.deadletter.>")
        await client.publish("agent.task.submit", b"{not json")
        reply = await client.request(
            "agent.sandbox.default.act", b'{"action": {"action": "fly"}}', timeout=5
        )
        letter = await letters.next_msg(timeout=5)
        await client.close()
        return {"reply": json.loads(reply.data), "letter": json.loads(letter.data)}

    got = asyncio.run(poke())
    assert got["reply"]["ok"] is False and got["reply"]["error"]["code"] == "invalid_message"
    assert got["letter"]["service"] == "planner" and got["letter"]["payload"] == "{not json"
    for name, process in stack.processes.items():
        assert process.poll() is None, f"{name} died"


def test_sandbox_sees_no_secrets(stack: LocalStack, llm: FakeLLM) -> None:
    """The agent's own shell: no LLM key, no gateway token, no exec or VNC secret."""
    from tests.conftest import LAUNCHER_SECRET

    llm.push(
        computer(action="shell", command="env; echo ----processes----; ps -eo args"),
        computer(action="done", message="Listed the environment."),
    )
    reply = chat(stack, "show me the environment")
    assert reply["status"] == "succeeded", reply
    executed = [
        e for e in session_events(stack, reply["session_id"]) if e["kind"] == "step.executed"
    ]
    output = executed[0]["output"]
    assert "HOME=" in output  # the command really ran and printed its environment
    # This stack's secret values: nowhere, neither in the shell's environment
    # nor in any command line it can see.
    for secret in (LAUNCHER_SECRET, stack.token, stack.exec_token, stack.vnc_password):
        assert secret and secret not in output
    # No secret-bearing variable in its own environment. (Command lines of
    # other programs on this machine, such as another test's `docker run -e`,
    # are not the sandbox's environment.)
    environment = output.split("----processes----", 1)[0]
    for name in (
        "LLM_API_KEY",
        "SELFAGENT_TOKEN",
        "SANDBOX_EXEC_TOKEN",
        "VNC_PASSWORD",
        "NATS_URL",
    ):
        assert f"{name}=" not in environment, name


async def _automate(stack: LocalStack, llm: FakeLLM) -> tuple[list[Any], Any, Any]:
    from selfagent.client import AutomationClient

    async with await AutomationClient.connect(
        credentials_file=stack.automation_credentials
    ) as client:
        llm.push(
            computer(action="shell", command="echo automated"),
            computer(action="done", message="Ran it."),
        )
        task = await client.submit("run echo automated")
        done = [event async for event in client.follow(task)]
        # Following again from the start replays the same events, none missing.
        again = [event async for event in client.follow(task)]
        assert again == done
        # A task held in a slow model call, stopped from outside.
        llm.push({"delay": 20.0, **computer(action="done", message="too late")})
        slow = await client.submit("wait for the model", session_id=task.session_id)
        async with contextlib.aclosing(client.follow(slow)) as events:
            async for event in events:
                if event.kind == "task.started":
                    await client.stop(slow.session_id)
                    break
        stopped = await client.wait(slow, timeout=15)
        return done, await client.wait(task, timeout=5), stopped


def test_automation_client_submits_follows_and_stops(stack: LocalStack, llm: FakeLLM) -> None:
    """selfagent.client with the credentials `selfagent up` writes, through the real services."""
    done, finished, stopped = asyncio.run(_automate(stack, llm))
    kinds = [event.kind for event in done]
    assert kinds[0] == "task.started" and kinds[-1] == "task.finished", kinds
    executed = [event for event in done if event.kind == "step.executed"]
    assert executed and "automated" in (executed[0].output or "")
    assert finished.status == "succeeded" and finished.reply == "Ran it."
    assert stopped.status == "stopped", stopped


def test_the_desktop_cannot_use_the_bus(stack: LocalStack) -> None:
    """A NATS client run from a shell inside the sandbox desktop is refused.

    The desktop's environment holds no NATS credentials, and the server wants
    them: the shell action it tries to publish never reaches the actuator.
    """
    import sys

    script = (
        "import asyncio, nats\n"
        "async def main():\n"
        "    try:\n"
        f"        nc = await nats.connect({stack.nats_url!r}, allow_reconnect=False)\n"
        "    except Exception as exc:\n"
        "        print('REFUSED', exc)\n"
        "        return\n"
        "    await nc.publish('agent.sandbox.default.act', b'{}')\n"
        "    print('CONNECTED')\n"
        "asyncio.run(main())\n"
    )
    reply = httpx.post(
        f"http://127.0.0.1:{stack.exec_port}/exec",
        json={"command": f"env | grep -c NATS_; {sys.executable} -c {shlex.quote(script)}"},
        headers={"Authorization": f"Bearer {stack.exec_token}"},
        timeout=30,
    )
    assert reply.status_code == 200, reply.text
    output = reply.json()["stdout"]
    lines = output.splitlines()
    assert lines[0] == "0", output  # no NATS_ variable at all
    assert "REFUSED" in output and "authorization violation" in output.lower(), output
    assert "CONNECTED" not in output
