"""A planner that stops or dies mid-task hands the task over; nothing is lost or run twice."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import nats
import pytest

from selfagent.bus.natsd import free_port
from selfagent.local import LocalStack
from tests.harness.fakellm import FakeLLM, tool_call

pytestmark = pytest.mark.desktop


@pytest.fixture(scope="module")
def handover_stack(fake_llm: FakeLLM) -> Iterator[LocalStack]:
    local = LocalStack(
        gateway_port=free_port(),
        token="handover-" + uuid.uuid4().hex,
        extra_env={
            "LLM_API_BASE_URL": fake_llm.base_url,
            "LLM_MODEL": "fake-planner",
            "GROUNDER_FAMILY": "ocr",
            "GROUNDER_CANARY": "false",
            # A dead planner's task returns to the queue after 3 s.
            "PLANNER_TASK_ACK_WAIT": "3",
        },
    )
    local.start()
    yield local
    local.stop(remove=True)


def move(x: int, y: int, delay: float = 0.0) -> dict[str, Any]:
    reply = tool_call("computer", {"action": "move", "x": x, "y": y})
    return {**reply, "delay": delay} if delay else reply


async def run_with_interruption(
    stack: LocalStack, llm: FakeLLM, interrupt: signal.Signals
) -> tuple[list[dict[str, Any]], FakeLLM]:
    llm.reset()
    # Step 1 runs on the first planner; its call for step 2 is slow, and the
    # planner is interrupted while waiting for it.
    llm.push(move(100, 100), move(200, 200, delay=4.0))
    session = uuid.uuid4().hex
    client = await nats.connect(stack.nats_url)
    events = await client.subscribe(f"agent.session.{session}.event.>")
    seen: list[dict[str, Any]] = []

    async def next_event(timeout: float = 60) -> dict[str, Any]:
        message = await events.next_msg(timeout=timeout)
        event: dict[str, Any] = json.loads(message.data)
        seen.append(event)
        return event

    async with httpx.AsyncClient() as http:
        accepted = await http.post(
            f"{stack.gateway_url}/api/tasks",
            json={"prompt": "move around", "session_id": session},
            headers={"Authorization": f"Bearer {stack.token}"},
        )
        assert accepted.status_code == 202, accepted.text
    while not (seen and seen[-1]["kind"] == "step.executed"):
        await next_event()
    while len(llm.requests) < 2:  # the first planner is now waiting on the model
        await asyncio.sleep(0.05)

    planner = stack.processes.pop("planner")
    os.killpg(planner.pid, interrupt)
    planner.wait(15)
    # The next planner gets the rest of the script.
    llm.push(move(300, 300), tool_call("computer", {"action": "done", "message": "Moved."}))
    stack.start_service("planner")
    while seen[-1]["kind"] != "task.finished":
        await next_event()
    # Nothing more may arrive for this session (no second run of the task).
    with pytest.raises(nats.errors.TimeoutError):
        await next_event(timeout=4)
    await client.close()
    return seen, llm


@pytest.mark.parametrize("interrupt", [signal.SIGTERM, signal.SIGKILL], ids=["stop", "crash"])
def test_interrupted_task_resumes_on_the_next_planner(
    handover_stack: LocalStack, llm: FakeLLM, interrupt: signal.Signals
) -> None:
    seen, fake = asyncio.run(run_with_interruption(handover_stack, llm, interrupt))
    kinds = [e["kind"] for e in seen]
    assert kinds.count("task.started") == 1
    finished = [e for e in seen if e["kind"] == "task.finished"]
    assert len(finished) == 1 and finished[0]["status"] == "succeeded", finished
    assert finished[0]["reply"] == "Moved."
    planned = [e["step"] for e in seen if e["kind"] == "step.planned"]
    assert planned == [1, 2, 3], planned
    executed = [(e["action"]["x"], e["action"]["y"]) for e in seen if e["kind"] == "step.executed"]
    assert executed == [(100, 100), (300, 300)], "the slow reply to the dead planner never ran"
    notes = [e["text"] for e in seen if e["kind"] == "message"]
    assert any("Resumed on another planner after step 1" in n for n in notes), notes
    if interrupt == signal.SIGTERM:
        assert any("another planner will continue" in n for n in notes), notes
    # The resumed model was told why it does not see the earlier steps.
    resumed = fake.requests[2]["messages"]
    assert "interrupted after 1 steps" in json.dumps(resumed[-1])
    # ...and still knows what it did before: step 1 comes back from the session state.
    earlier = [m["content"] for m in resumed if m["role"] == "assistant"]
    assert len(earlier) == 1 and json.loads(earlier[0])["x"] == 100, earlier
    assert finished[0]["steps"] == 3


async def newer_task_wins(stack: LocalStack, llm: FakeLLM) -> list[dict[str, Any]]:
    llm.reset()
    llm.push(move(100, 100), move(200, 200, delay=4.0))
    session = uuid.uuid4().hex
    client = await nats.connect(stack.nats_url)
    events = await client.subscribe(f"agent.session.{session}.event.>")
    seen: list[dict[str, Any]] = []

    async def next_event(timeout: float = 60) -> dict[str, Any]:
        message = await events.next_msg(timeout=timeout)
        event: dict[str, Any] = json.loads(message.data)
        seen.append(event)
        return event

    async def submit(prompt: str) -> str:
        async with httpx.AsyncClient() as http:
            accepted = await http.post(
                f"{stack.gateway_url}/api/tasks",
                json={"prompt": prompt, "session_id": session},
                headers={"Authorization": f"Bearer {stack.token}"},
            )
        assert accepted.status_code == 202, accepted.text
        task_id: str = accepted.json()["task_id"]
        return task_id

    await submit("the first task")
    while not (seen and seen[-1]["kind"] == "step.executed"):
        await next_event()
    planner = stack.processes.pop("planner")
    os.killpg(planner.pid, signal.SIGKILL)
    planner.wait(15)
    # The person gives up on the stuck task and asks for something else.
    second = await submit("the second task")
    llm.push(tool_call("computer", {"action": "done", "message": "Second task done."}))
    stack.start_service("planner")
    while not (seen[-1]["kind"] == "task.finished" and seen[-1]["task_id"] == second):
        await next_event()
    # The first task comes back from the queue after its lease runs out
    # (3 s here) and must be dropped, not started over.
    with pytest.raises(nats.errors.TimeoutError):
        await next_event(timeout=8)
    await client.close()
    return seen


def test_redelivered_task_does_not_override_a_newer_one(
    handover_stack: LocalStack, llm: FakeLLM
) -> None:
    seen = asyncio.run(newer_task_wins(handover_stack, llm))
    started = [e["task_id"] for e in seen if e["kind"] == "task.started"]
    finished = [(e["task_id"], e["status"]) for e in seen if e["kind"] == "task.finished"]
    assert len(started) == 2 and len(set(started)) == 2, started
    assert finished == [(started[1], "succeeded")], finished
    notes = [e["text"] for e in seen if e["kind"] == "message"]
    assert not any("Resumed" in n for n in notes), notes
    assert len(llm.requests) == 3, "the first task was not run again"


async def stop_while_queued(stack: LocalStack, llm: FakeLLM) -> list[dict[str, Any]]:
    llm.reset()
    stack.stop_service("planner")  # no planner: the task waits in the queue
    session = uuid.uuid4().hex
    client = await nats.connect(stack.nats_url)
    events = await client.subscribe(f"agent.session.{session}.event.>")
    headers = {"Authorization": f"Bearer {stack.token}"}
    async with httpx.AsyncClient(base_url=stack.gateway_url, headers=headers) as http:
        accepted = await http.post("/api/tasks", json={"prompt": "x", "session_id": session})
        assert accepted.status_code == 202, accepted.text
        stopped = await http.post(f"/api/sessions/{session}/control", json={"command": "stop"})
        assert stopped.status_code == 202, stopped.text
    stack.start_service("planner")
    seen: list[dict[str, Any]] = []
    while not (seen and seen[-1]["kind"] == "task.finished"):
        seen.append(json.loads((await events.next_msg(timeout=60)).data))
    await client.close()
    return seen


def test_stop_sent_while_the_task_is_queued_is_honoured(
    handover_stack: LocalStack, llm: FakeLLM
) -> None:
    seen = asyncio.run(stop_while_queued(handover_stack, llm))
    finished = seen[-1]
    assert finished["status"] == "stopped" and finished["steps"] == 0, finished
    assert "before it started" in finished["reply"]
    assert not [e for e in seen if e["kind"] == "step.planned"]
    assert llm.requests == [], "the model was never asked"
