"""Planner replicas watching each other: who hands a silent replica's tasks back, the
hand-back itself on a real locked nats-server, and the fencing of a replica that
was only cut off (two runners on one task, on a real nats-server)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import nats
import pytest
import pytest_asyncio
from nats.js.api import ConsumerConfig

from selfagent.bus import jetstream, make_broker, sessions
from selfagent.bus.auth import generate_passwords, server_config
from selfagent.bus.broker import Broker
from selfagent.bus.natsd import EmbeddedNats
from selfagent.bus.settings import BusAuth
from selfagent.llm import LLMClient
from selfagent.planner.config import Settings
from selfagent.planner.peers import PeerWatch, hand_back
from selfagent.planner.runner import TaskRunner
from selfagent.planner.service import prepare
from selfagent.schemas import HeldTask, PlannerHeartbeat, SessionState, TaskSubmitted, subjects

PASSWORDS = generate_passwords()


def held(task_id: str) -> HeldTask:
    return HeldTask(
        task_id=task_id,
        session_id=f"s-{task_id}",
        ack_subject=f"$JS.ACK.AGENT_TASKS.planner.1.{task_id[-1]}.1.0.0",
    )


def beat(instance: str, *tasks: HeldTask) -> PlannerHeartbeat:
    return PlannerHeartbeat(instance=instance, started_at=datetime.now(UTC), tasks=list(tasks))


# --- who hands back what ---------------------------------------------------------


def test_a_silent_peers_tasks_are_handed_back_by_the_lowest_live_replica() -> None:
    low, high = PeerWatch("planner-a"), PeerWatch("planner-c")
    for watch in (low, high):
        watch.beat(beat("planner-a"), now=0.0)
        watch.beat(beat("planner-c"), now=0.0)
        watch.beat(beat("planner-b", held("t1"), held("t2")), now=0.0)
        # a and c keep beating; b stops after t=0.
        watch.beat(beat("planner-a"), now=3.0)
        watch.beat(beat("planner-c"), now=3.0)
    assert low.silent(3.5, set(), now=3.0) == {}, "not silent long enough yet"
    assert low.silent(3.5, set(), now=3.6) == {"planner-b": [held("t1"), held("t2")]}
    # The other survivor leaves it to planner-a: a second -NAK would start it twice.
    assert high.silent(3.5, set(), now=3.6) == {"planner-b": []}
    # Forgotten once handed back: never a second time.
    assert low.silent(3.5, set(), now=10.0) == {"planner-c": []}
    assert low.peers() == []


def test_a_task_some_live_replica_runs_is_not_handed_back() -> None:
    watch = PeerWatch("planner-a")
    watch.beat(beat("planner-b", held("t1"), held("t2"), held("t3")), now=0.0)
    # t2 was handed over already and runs on planner-c; t3 runs here.
    watch.beat(beat("planner-c", held("t2")), now=3.0)
    assert watch.silent(3.5, {"t3"}, now=3.6) == {"planner-b": [held("t1")]}


def test_its_own_heartbeat_is_no_peer() -> None:
    watch = PeerWatch("planner-a")
    watch.beat(beat("planner-a", held("t1")), now=0.0)
    assert watch.silent(3.5, set(), now=100.0) == {}
    assert watch.peers() == []


# --- the hand-back on a real server ------------------------------------------------


@pytest.fixture(scope="module")
def locked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedNats]:
    store: Path = tmp_path_factory.mktemp("nats")
    server = EmbeddedNats(store_dir=store, extra_config=server_config(PASSWORDS)).start()
    yield server
    server.cleanup()


def identity(server: EmbeddedNats, user: str) -> Broker:
    return make_broker(server.url, f"peers-{user}", BusAuth(user, PASSWORDS[user]))


@pytest.mark.asyncio(loop_scope="function")
async def test_a_handed_back_task_is_handed_out_again_at_once(locked: EmbeddedNats) -> None:
    admin, planner = identity(locked, "admin"), identity(locked, "planner")
    await admin.start()
    await planner.start()
    try:
        await prepare(admin)
        task = TaskSubmitted(prompt="go", sandbox_id="nowhere")
        await jetstream(admin).publish(subjects.TASK_SUBMIT, task.model_dump_json().encode())
        # The replica that dies: its delivery stays unacked for the ack wait.
        queue = await jetstream(admin).pull_subscribe(
            subjects.TASK_SUBMIT,
            durable=subjects.PLANNER_DURABLE,
            stream=subjects.TASKS_STREAM,
            config=ConsumerConfig(ack_wait=30),
        )
        first = (await queue.fetch(1, timeout=5))[0]
        assert first.metadata.num_delivered == 1
        ack = HeldTask(task_id=task.task_id, session_id=task.session_id, ack_subject=first.reply)
        forged = ack.model_copy(update={"ack_subject": "agent.task.submit"})
        assert not await hand_back(planner, forged, "planner-z"), "only ack subjects are followed"
        # As the planner identity: its permissions must allow it.
        assert await hand_back(planner, ack, "planner-z")
        again = (await queue.fetch(1, timeout=3))[0]  # well before the 30 s ack wait
        assert again.metadata.num_delivered == 2
        assert TaskSubmitted.model_validate_json(again.data).task_id == task.task_id
        await again.ack()
    finally:
        await planner.stop()
        await admin.stop()


# --- fencing -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[EmbeddedNats]:
    running = EmbeddedNats().start()
    yield running
    running.cleanup()


@pytest_asyncio.fixture(loop_scope="function")
async def broker(server: EmbeddedNats) -> AsyncIterator[Broker]:
    bus = make_broker(server.url, "peers-test")
    await bus.start()
    await prepare(bus)
    yield bus
    await bus.stop()


def runner(bus: Broker, task: TaskSubmitted, instance: str, desktop_wait: float) -> TaskRunner:
    # The desktop never answers: each runner looks for it until desktop_wait
    # runs out and then ends the task, which writes the state once more.
    settings = Settings(
        nats_url="nats://unused",
        sandbox_id="nowhere",
        desktops="fixed",
        desktop_wait=desktop_wait,
        canary=False,
        screenshot_retention_days=0,
    )
    llm = LLMClient(base_url="http://127.0.0.1:9/v1", model="never-asked")
    return TaskRunner(bus, llm, settings, task, instance=instance)


async def saved(bus: Broker, session_id: str) -> SessionState:
    """The session's state, once the runner has written it."""
    for _ in range(200):
        state = await sessions.load_state(bus, session_id)
        if state is not None:
            return state
        await asyncio.sleep(0.05)
    raise AssertionError(f"no state for session {session_id}")


@pytest.mark.asyncio(loop_scope="function")
async def test_a_replaced_planner_stops_at_its_next_save_without_a_word(
    server: EmbeddedNats, broker: Broker
) -> None:
    task = TaskSubmitted(prompt="go", sandbox_id="nowhere")
    watcher = await nats.connect(server.url)
    events = await watcher.subscribe(subjects.session_event(task.session_id, ">"))
    try:
        # Long enough that the new runner takes over before the old one's
        # next save even on a loaded machine (3 s was once too short).
        old = runner(broker, task, "planner-old", desktop_wait=8.0)
        first = asyncio.create_task(old.run())
        state = await saved(broker, task.session_id)
        assert state.planner == "planner-old"
        # The old one is taken for dead (cut off) and the task resumes elsewhere.
        new = runner(broker, task, "planner-new", desktop_wait=10.0)
        second = asyncio.create_task(new.run(resume=state))
        assert await asyncio.wait_for(first, 30) is None
        assert old.superseded
        taken = await sessions.load_state(broker, task.session_id)
        assert taken is not None
        assert (taken.planner, taken.status) == ("planner-new", "running"), taken
        finished = await asyncio.wait_for(second, 30)
        assert finished is not None and finished.status == "failed"
        assert not new.superseded
        kinds: list[str] = []
        while True:
            try:
                message = await events.next_msg(timeout=1)
            except nats.errors.TimeoutError:
                break
            kinds.append(json.loads(message.data)["kind"])
        # One start (the old one's), one resume, one end (the new one's).
        assert kinds.count("task.started") == 1, kinds
        assert kinds.count("task.finished") == 1, kinds
        assert kinds.count("message") == 1, kinds
        last = await sessions.load_state(broker, task.session_id)
        assert last is not None and (last.planner, last.status) == ("planner-new", "failed")
    finally:
        await watcher.close()
