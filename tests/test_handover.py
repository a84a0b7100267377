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

from selfagent.local import LocalStack
from tests.harness.api import scripted_stack
from tests.harness.fakellm import FakeLLM, tool_call

pytestmark = pytest.mark.desktop


@pytest.fixture(scope="module")
def handover_stack(fake_llm: FakeLLM) -> Iterator[LocalStack]:
    local = scripted_stack(
        fake_llm,
        "handover",
        "fixed",
        # A dead planner's task returns to the queue after 10 s: short for a
        # test, yet longer than a replacement planner takes to start on a
        # loaded machine (the "stale-first" case below waits it out on purpose).
        PLANNER_TASK_ACK_WAIT="10",
    )
    local.start()
    yield local
    local.stop(remove=True)


def move(x: int, y: int, delay: float = 0.0) -> dict[str, Any]:
    reply = tool_call("computer", {"action": "move", "x": x, "y": y})
    return {**reply, "delay": delay} if delay else reply


class Session:
    """One session watched on the bus, with tasks submitted through the gateway."""

    def __init__(self, stack: LocalStack) -> None:
        self.stack = stack
        self.id = uuid.uuid4().hex
        self.seen: list[dict[str, Any]] = []

    async def __aenter__(self) -> Session:
        # The gateway accepts tasks only for sessions it knows: this one starts here.
        headers = {"Authorization": f"Bearer {self.stack.token}"}
        async with httpx.AsyncClient(base_url=self.stack.gateway_url, headers=headers) as http:
            created = await http.post("/api/sessions")
        assert created.status_code == 201, created.text
        self.id = created.json()["session_id"]
        self._client = await nats.connect(self.stack.nats_url_as("admin"))
        self._events = await self._client.subscribe(f"agent.session.{self.id}.event.>")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._client.close()

    async def next_event(self, timeout: float = 60) -> dict[str, Any]:
        message = await self._events.next_msg(timeout=timeout)
        event: dict[str, Any] = json.loads(message.data)
        self.seen.append(event)
        return event

    async def until(self, kind: str, task_id: str | None = None) -> None:
        while not (
            self.seen
            and self.seen[-1]["kind"] == kind
            and task_id in (None, self.seen[-1]["task_id"])
        ):
            await self.next_event()

    async def quiet(self, seconds: float) -> None:
        """Nothing more may arrive for this session (no second run of a task)."""
        with pytest.raises(nats.errors.TimeoutError):
            await self.next_event(timeout=seconds)

    async def submit(self, prompt: str) -> str:
        task_id: str = (await self.post("/api/tasks", {"prompt": prompt, "session_id": self.id}))[
            "task_id"
        ]
        return task_id

    async def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {self.stack.token}"}
        async with httpx.AsyncClient(base_url=self.stack.gateway_url, headers=headers) as http:
            accepted = await http.post(path, json=body)
        assert accepted.status_code == 202, accepted.text
        reply: dict[str, Any] = accepted.json()
        return reply


def interrupt_planner(stack: LocalStack, how: signal.Signals) -> None:
    planner = stack.processes.pop("planner")
    os.killpg(planner.pid, how)
    planner.wait(15)


async def run_with_interruption(
    stack: LocalStack, llm: FakeLLM, interrupt: signal.Signals
) -> tuple[list[dict[str, Any]], FakeLLM]:
    llm.reset()
    # Step 1 runs on the first planner; its call for step 2 is slow, and the
    # planner is interrupted while waiting for it.
    llm.push(move(100, 100), move(200, 200, delay=4.0))
    async with Session(stack) as session:
        await session.submit("move around")
        await session.until("step.executed")
        while len(llm.requests) < 2:  # the first planner is now waiting on the model
            await asyncio.sleep(0.05)
        interrupt_planner(stack, interrupt)
        # The next planner gets the rest of the script.
        llm.push(move(300, 300), tool_call("computer", {"action": "done", "message": "Moved."}))
        stack.start_service("planner")
        await session.until("task.finished")
        await session.quiet(4)
    return session.seen, llm


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


async def newer_task_wins(
    stack: LocalStack, llm: FakeLLM, planner_back_after: float
) -> list[dict[str, Any]]:
    llm.reset()
    llm.push(move(100, 100), move(200, 200, delay=4.0))
    async with Session(stack) as session:
        await session.submit("the first task")
        await session.until("step.executed")
        interrupt_planner(stack, signal.SIGKILL)
        # The person gives up on the stuck task and asks for something else.
        second = await session.submit("the second task")
        llm.push(tool_call("computer", {"action": "done", "message": "Second task done."}))
        # Late enough, the first task's lease has run out before any planner
        # is back, and the queue may hand it out before the second.
        await asyncio.sleep(planner_back_after)
        stack.start_service("planner")
        await session.until("task.finished", task_id=second)
        # The first task comes back from the queue after its lease runs out
        # (10 s here) and must be dropped, not started over.
        await session.quiet(14)
    return session.seen


@pytest.mark.parametrize("planner_back_after", [0.0, 14.0], ids=["newer-first", "stale-first"])
def test_redelivered_task_does_not_override_a_newer_one(
    handover_stack: LocalStack, llm: FakeLLM, planner_back_after: float
) -> None:
    seen = asyncio.run(newer_task_wins(handover_stack, llm, planner_back_after))
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
    async with Session(stack) as session:
        await session.submit("x")
        await session.post(f"/api/sessions/{session.id}/control", {"command": "stop"})
        stack.start_service("planner")
        await session.until("task.finished")
    return session.seen


def test_stop_sent_while_the_task_is_queued_is_honoured(
    handover_stack: LocalStack, llm: FakeLLM
) -> None:
    seen = asyncio.run(stop_while_queued(handover_stack, llm))
    finished = seen[-1]
    assert finished["status"] == "stopped" and finished["steps"] == 0, finished
    assert "before it started" in finished["reply"]
    assert not [e for e in seen if e["kind"] == "step.planned"]
    assert llm.requests == [], "the model was never asked"
