"""The look into the tasks queue behind a redelivered task, on a real locked nats-server.

The planner reads the queue with its own identity, so the permission the
look needs is part of what is tested.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
import pytest_asyncio

from selfagent.bus import jetstream, make_broker
from selfagent.bus.auth import generate_passwords, server_config
from selfagent.bus.broker import Broker
from selfagent.bus.natsd import EmbeddedNats
from selfagent.bus.settings import BusAuth
from selfagent.bus.streams import ensure_streams
from selfagent.planner.service import newer_task_queued
from selfagent.schemas import TaskSubmitted, subjects

pytestmark = pytest.mark.asyncio(loop_scope="module")

PASSWORDS = generate_passwords()


@pytest.fixture(scope="module")
def locked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedNats]:
    store: Path = tmp_path_factory.mktemp("nats")
    server = EmbeddedNats(store_dir=store, extra_config=server_config(PASSWORDS)).start()
    yield server
    server.cleanup()


@dataclass
class Bus:
    planner: Broker
    gateway: Broker  # tasks come from the gateway; the planner may only read them

    async def publish(self, body: bytes) -> int:
        ack = await jetstream(self.gateway).publish(subjects.TASK_SUBMIT, body)
        return ack.seq

    async def queue(self, task: TaskSubmitted) -> int:
        return await self.publish(task.model_dump_json().encode())


def identity(server: EmbeddedNats, user: str) -> Broker:
    return make_broker(server.url, f"queue-{user}", BusAuth(user, PASSWORDS[user]))


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def bus(locked: EmbeddedNats) -> AsyncIterator[Bus]:
    admin = identity(locked, "admin")
    await admin.start()
    await ensure_streams(admin)
    await admin.stop()
    both = Bus(identity(locked, "planner"), identity(locked, "gateway"))
    await both.planner.start()
    await both.gateway.start()
    yield both
    await both.planner.stop()
    await both.gateway.stop()


async def test_a_later_task_of_the_same_session_is_found(bus: Bus) -> None:
    old = TaskSubmitted(session_id="s-found", prompt="the first task")
    old_seq = await bus.queue(old)
    # Other sessions' tasks and garbage in between are passed over.
    await bus.queue(TaskSubmitted(session_id="s-other", prompt="another session"))
    await bus.publish(b"not a task")
    assert not await newer_task_queued(bus.planner, old, old_seq)

    await bus.queue(TaskSubmitted(session_id="s-found", prompt="the second task"))
    assert await newer_task_queued(bus.planner, old, old_seq)


async def test_an_older_task_behind_it_does_not_count(bus: Bus) -> None:
    task = TaskSubmitted(session_id="s-older", prompt="the task")
    seq = await bus.queue(task)
    # Queued later, but submitted before (a publisher that retried it late).
    late = TaskSubmitted(
        session_id="s-older", prompt="late", submitted_at=task.submitted_at - timedelta(seconds=5)
    )
    await bus.queue(late)
    assert not await newer_task_queued(bus.planner, task, seq)
    # Nothing behind the last message at all.
    last = await bus.queue(TaskSubmitted(session_id="s-last", prompt="last"))
    assert not await newer_task_queued(
        bus.planner, TaskSubmitted(session_id="s-last", prompt="x"), last
    )
