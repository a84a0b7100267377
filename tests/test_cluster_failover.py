"""A task survives the death of the NATS node its planner and actuator are on.

Real parts: three nats-servers routed into one JetStream cluster (streams and
the session bucket at three replicas), Xvnc + Xfce, the actuator and the
planner services, all told the cluster's list of servers. Only the planner's
model is scripted. Mid-task (while the model is thinking about the second
step) the node both services are connected to is killed with SIGKILL.

Before the kill, that node is made the leader of every stream the task uses
(tasks, events, controls, the session bucket), so its death leaves each of
them leaderless for a few seconds while the task goes on.

Pass: the task completes; the session's events in the events stream are the
whole task (contiguous stream sequence numbers, each step once, ending in
one ``task.finished``, the same events a live subscriber saw); and the
actuator ran each action exactly once.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from typing import Any

import nats
import nats.aio.client
import pytest
import pytest_asyncio
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy

from selfagent.actuator.config import Settings as ActuatorSettings
from selfagent.actuator.service import ActuatorService
from selfagent.actuator.service import build as build_actuator
from selfagent.bus.natsd import EmbeddedCluster
from selfagent.planner.config import Settings
from selfagent.planner.service import PlannerService, build
from selfagent.schemas import ActionResult, ActRequest, TaskSubmitted, subjects
from tests.harness.desktop import Desktop, start_desktop
from tests.harness.fakellm import FakeLLM, tool_call
from tests.harness.tasks import RunningTask

pytestmark = [pytest.mark.desktop, pytest.mark.asyncio(loop_scope="session")]

SANDBOX = "cluster"
REPLICAS = 3
TASK_BOUND = 45.0


def computer(**arguments: Any) -> dict[str, Any]:
    return tool_call("computer", arguments)


@pytest.fixture(scope="module")
def in_listed_order() -> Iterator[None]:
    """nats-py shuffles its server list (spreading clients over a cluster); here
    both services must be on the same, known node, so the list is kept in order.
    The shuffle on reconnect is kept out too: both fail over to the same node,
    and the test does not depend on chance."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(nats.aio.client, "shuffle", lambda _servers: None)
        yield


@pytest.fixture(scope="module")
def cluster() -> Iterator[EmbeddedCluster]:
    nodes = EmbeddedCluster(3).start()
    yield nodes
    nodes.cleanup()


@pytest.fixture(scope="module")
def desktop() -> Iterator[Desktop]:
    d = start_desktop()
    yield d
    d.stop()


@pytest.fixture(scope="module")
def llm() -> Iterator[FakeLLM]:
    server = FakeLLM().start()
    yield server
    server.stop()


class Counting:
    """How many times the actuator really carried out each action id (replays excluded)."""

    def __init__(self) -> None:
        self.runs: Counter[str] = Counter()


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def actuator(
    cluster: EmbeddedCluster, desktop: Desktop, in_listed_order: None
) -> AsyncIterator[tuple[ActuatorService, Counting]]:
    service = build_actuator(
        ActuatorSettings(
            nats_url=cluster.url,
            nats_replicas=REPLICAS,
            sandbox_id=SANDBOX,
            vnc_port=desktop.vnc_port,
            vnc_password=desktop.password,
        )
    )
    counting = Counting()
    served = service.fleet.served(SANDBOX)
    assert served is not None
    executor = served.executor
    # Below the executor's idempotency cache: what reaches here touches the desktop.
    really_act = executor._act

    async def counted(request: ActRequest) -> ActionResult:
        counting.runs[request.action.id] += 1
        return await really_act(request)

    executor._act = counted  # type: ignore[method-assign]
    try:
        await service.start()
        await service.desktop.wait_ready(15.0)
        yield service, counting
    finally:
        await service.stop()


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def planner(
    cluster: EmbeddedCluster, llm: FakeLLM, actuator: tuple[ActuatorService, Counting]
) -> AsyncIterator[PlannerService]:
    service = build(
        Settings(
            nats_url=cluster.url,
            nats_replicas=REPLICAS,
            sandbox_id=SANDBOX,
            llm_api_base_url=llm.base_url,
            llm_model="fake-planner",
            mode="direct",
            llm_timeout=5.0,
            llm_max_attempts=2,
            observe_timeout=5.0,
            act_timeout=10.0,
            max_wall_seconds=TASK_BOUND,
            canary=False,
        )
    )
    await service.start()
    yield service
    await service.stop()


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def watcher(cluster: EmbeddedCluster, planner: PlannerService) -> AsyncIterator[NatsClient]:
    """The test's own client, on the last node only: the one that is never killed."""
    client = await nats.connect(cluster.nodes[-1].url)
    yield client
    await client.close()


def connected_url(client: NatsClient) -> str:
    url = client.connected_url
    assert url is not None
    return f"{url.scheme}://{url.hostname}:{url.port}"


async def stored_events(client: NatsClient, session_id: str) -> list[tuple[int, dict[str, Any]]]:
    """Every event of the session in the events stream, with its stream sequence number.

    Right after a node's death the JetStream API may not answer for a few
    seconds (the cluster elects new leaders for what the dead node led):
    asked again until it does.
    """
    js = client.jetstream(timeout=2.0)
    deadline = time.monotonic() + 20
    while True:
        try:
            subscription = await js.subscribe(
                subjects.session_events(session_id),
                stream=subjects.EVENTS_STREAM,
                ordered_consumer=True,
                config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
            )
            break
        except nats.errors.TimeoutError:
            assert time.monotonic() < deadline, "JetStream did not answer within 20 s"
    stored: list[tuple[int, dict[str, Any]]] = []
    try:
        while True:
            message = await subscription.next_msg(timeout=2.0)
            stored.append((message.metadata.sequence.stream, json.loads(message.data)))
            if message.metadata.num_pending == 0:
                return stored
    finally:
        await subscription.unsubscribe()


LED = (
    subjects.TASKS_STREAM,
    subjects.EVENTS_STREAM,
    subjects.CONTROLS_STREAM,
    f"KV_{subjects.SESSIONS_BUCKET}",
)


async def lead_from(client: NatsClient, server_name: str) -> None:
    """Make ``server_name`` the leader of every stream a task uses: its death then
    forces an election for each of them, mid-task (the hardest case for "nothing lost")."""
    js = client.jetstream(timeout=5.0)
    deadline = time.monotonic() + 20
    for stream in LED:
        while (await js.stream_info(stream)).cluster.leader != server_name:  # type: ignore[union-attr]
            assert time.monotonic() < deadline, f"{stream} not led from {server_name}"
            request = json.dumps({"placement": {"preferred": server_name}}).encode()
            await client.request(f"$JS.API.STREAM.LEADER.STEPDOWN.{stream}", request, timeout=5)
            await asyncio.sleep(0.3)


async def test_task_survives_its_node_being_killed(
    cluster: EmbeddedCluster,
    llm: FakeLLM,
    actuator: tuple[ActuatorService, Counting],
    planner: PlannerService,
    watcher: NatsClient,
) -> None:
    service, counting = actuator
    victim = cluster.nodes[0]
    for client in (planner.broker, service.broker):
        connection = client.config.connection_state.connection
        assert connected_url(connection) == victim.url, "both services start on the first node"

    assert victim.membership is not None
    await lead_from(watcher, victim.membership.server_name)

    llm.push(
        computer(action="move", x=200, y=200),
        # The node dies while the model "thinks" about this step.
        {"delay": 2.0, **computer(action="move", x=400, y=300)},
        computer(action="move", x=600, y=400),
        computer(action="done", message="still here"),
    )
    task = TaskSubmitted(prompt="move around", sandbox_id=SANDBOX)
    # Live, an event the stream did not acknowledge in time is seen again (the
    # publisher's retry, under the same message id): count each id once.
    live: dict[str, str] = {}

    async def seen(msg: Msg) -> None:
        live.setdefault((msg.headers or {}).get("Nats-Msg-Id", ""), json.loads(msg.data)["kind"])

    following = await watcher.subscribe(subjects.session_events(task.session_id), cb=seen)
    running = await RunningTask(watcher, task, bound=TASK_BOUND).start()
    started = time.monotonic()
    await running.wait_for("step.executed")
    deadline = time.monotonic() + 10
    while len(llm.requests) < 2:
        assert time.monotonic() < deadline, "the second model call never came"
        await asyncio.sleep(0.02)
    await asyncio.to_thread(victim.kill)

    try:
        outcome = await running.outcome()
        elapsed = time.monotonic() - started
        assert outcome.finished["status"] == "succeeded", outcome.finished
        assert outcome.finished["reply"] == "still here"
        for client in (planner.broker, service.broker):
            connection = client.config.connection_state.connection
            assert connected_url(connection) != victim.url, "failed over to a live node"

        # Nothing lost: the stream holds the whole task, seen live as well.
        stored = await stored_events(watcher, task.session_id)
        sequences = [sequence for sequence, _ in stored]
        assert sequences == list(range(sequences[0], sequences[0] + len(sequences))), sequences
        kinds = [event["kind"] for _, event in stored]
        assert "" not in live, "every event carries a message id"
        assert kinds == list(live.values()), (kinds, live)
        assert kinds[0] == "task.started" and kinds.count("task.finished") == 1, kinds
        assert kinds[-1] == "task.finished", kinds
        executed = [event for _, event in stored if event["kind"] == "step.executed"]
        assert [event["step"] for event in executed] == [1, 2, 3], executed
        assert all(event["ok"] for event in executed), executed

        # No action ran twice, none was skipped.
        ids = [event["action"]["id"] for event in executed]
        assert len(set(ids)) == 3, ids
        assert {action_id: counting.runs[action_id] for action_id in ids} == dict.fromkeys(ids, 1)
        assert sum(counting.runs.values()) == 3, counting.runs

        # The task is not redelivered from the work queue after the failover.
        await asyncio.sleep(1.5)
        again = await stored_events(watcher, task.session_id)
        assert [sequence for sequence, _ in again] == sequences
        # The session's record in the KV bucket is not checked: the planner
        # gives each save 2 s, the bucket's new leader takes about 5 s, so a
        # save in that window is skipped (the planner logs it), and when the
        # skipped save is the last, the record says "running" (a known gap,
        # services/planner/runner.py _save_state; the events above are whole).
        assert elapsed < TASK_BOUND
    finally:
        await following.unsubscribe()
        victim.start()
        await asyncio.to_thread(cluster.wait_ready)
