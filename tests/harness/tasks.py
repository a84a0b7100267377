"""A task submitted straight to the bus, its session's events collected: the
planner's tests watch a task through this."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nats.aio.client import Client as NatsClient

from selfagent.schemas import ControlCommand, TaskSubmitted, subjects
from selfagent.schemas.subjects import SESSIONS_BUCKET

# Anything published after the end (a second task.finished, a late step)
# arrives within this grace period.
AFTER_THE_END = 0.5


@dataclass
class Outcome:
    finished: dict[str, Any]
    events: list[dict[str, Any]]

    def kinds(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["kind"] == kind]


class RunningTask:
    def __init__(self, bus: NatsClient, task: TaskSubmitted, *, bound: float = 90.0) -> None:
        self.bus = bus
        self.task = task
        self.bound = bound
        self.events: list[dict[str, Any]] = []
        self.arrived = asyncio.Event()

    async def start(self) -> RunningTask:
        async def collect(msg: Any) -> None:
            self.events.append(json.loads(msg.data))
            self.arrived.set()

        self._sub = await self.bus.subscribe(
            subjects.session_events(self.task.session_id), cb=collect
        )
        await self.bus.jetstream().publish(
            subjects.TASK_SUBMIT, self.task.model_dump_json().encode()
        )
        return self

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["kind"] == kind]

    def kinds(self) -> list[str]:
        return [e["kind"] for e in self.events]

    async def until(
        self, test: Callable[[], bool], what: str, timeout: float | None = None
    ) -> None:
        """Wait for the collected events to pass ``test``, woken by each new event."""
        bound = self.bound if timeout is None else timeout
        deadline = time.monotonic() + bound
        while not test():
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no {what} within {bound}s: {self.kinds()}"
            self.arrived.clear()
            try:
                await asyncio.wait_for(self.arrived.wait(), remaining)
            except TimeoutError:
                continue

    async def wait_for(self, kind: str, timeout: float | None = None, count: int = 1) -> None:
        await self.until(lambda: len(self.of(kind)) >= count, f"{count} {kind}", timeout)

    async def control(self, command: str, text: str | None = None) -> None:
        message = ControlCommand(session_id=self.task.session_id, command=command, text=text)
        await self.bus.publish(
            subjects.session_control(self.task.session_id), message.model_dump_json().encode()
        )
        await self.bus.flush()

    async def outcome(self) -> Outcome:
        """Exactly one task.finished, and it is the last event."""
        await self.wait_for("task.finished")
        await asyncio.sleep(AFTER_THE_END)
        await self._sub.unsubscribe()
        finished = self.of("task.finished")
        assert len(finished) == 1, f"task.finished {len(finished)} times: {self.kinds()}"
        assert self.events[-1]["kind"] == "task.finished", self.kinds()
        return Outcome(finished[0], self.events)


async def session_state(bus: NatsClient, session_id: str) -> dict[str, Any]:
    entry = await (await bus.jetstream().key_value(SESSIONS_BUCKET)).get(session_id)
    assert entry.value is not None
    state: dict[str, Any] = json.loads(entry.value)
    return state
