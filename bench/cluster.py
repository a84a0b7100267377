"""One NATS server vs a three-node cluster: step overhead and event latency, in the same run.

    python -m bench.cluster [--tasks 6] [--steps 15] [--events 300]

For each bus (one nats-server, streams at one replica; three routed
nats-servers, streams at three replicas, services given the list of all
three), on one real desktop:

* step: scripted tasks of ``--steps`` mouse moves through the real planner
  and actuator, with an instant scripted model; a step's time is the gap
  between consecutive ``step.executed`` events (model call, action, settle,
  screenshot, events).
* event: ``--events`` session events published the way the planner publishes
  them (queued, then sent and acknowledged by the events stream in order),
  10 ms apart, read live by a client on another node of the cluster (the
  same server, single): the publish call and publish-to-receipt latency.

Prints p50/p95 of each and the cluster's cost against the single server.
Goal: the cluster adds at most 2 ms to a step's p50.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

import nats
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from selfagent.actuator.config import Settings as ActuatorSettings
from selfagent.actuator.service import build as build_actuator
from selfagent.bus import make_broker
from selfagent.bus.broker import start_with_retry
from selfagent.bus.natsd import EmbeddedCluster, EmbeddedNats
from selfagent.bus.settings import BusAuth
from selfagent.bus.streams import ensure_streams
from selfagent.planner.config import Settings as PlannerSettings
from selfagent.planner.service import build as build_planner
from selfagent.schemas import AgentMessage, TaskSubmitted, subjects
from tests.harness.desktop import Desktop, start_desktop
from tests.harness.fakellm import FakeLLM, tool_call
from tests.harness.tasks import RunningTask

SANDBOX = "bench-cluster"
GOAL_MS = 2.0
EVENT_GAP = 0.01


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@dataclass
class Figures:
    steps: list[float]
    publish: list[float]
    delivery: list[float]


@dataclass(frozen=True)
class Bus:
    name: str
    url: str
    # Where the event reader connects: another node than the publisher's, if any.
    reader_url: str
    replicas: int

    @property
    def sandbox(self) -> str:
        return f"{SANDBOX}-{self.name}"


@asynccontextmanager
async def services(bus: Bus, desktop: Desktop, llm: FakeLLM) -> AsyncIterator[None]:
    """A planner and an actuator on ``bus``, serving the desktop as ``bus.sandbox``."""
    actuator = build_actuator(
        ActuatorSettings(
            nats_url=bus.url,
            nats_replicas=bus.replicas,
            sandbox_id=bus.sandbox,
            vnc_port=desktop.vnc_port,
            vnc_password=desktop.password,
        )
    )
    planner = build_planner(
        PlannerSettings(
            nats_url=bus.url,
            nats_replicas=bus.replicas,
            sandbox_id=bus.sandbox,
            llm_api_base_url=llm.base_url,
            llm_model="fake-planner",
            mode="direct",
            canary=False,
        )
    )
    await actuator.start()
    try:
        await actuator.desktop.wait_ready(15.0)
        await planner.start()
        try:
            yield
        finally:
            await planner.stop()
    finally:
        await actuator.stop()


def stamper(arrivals: list[float]) -> Callable[[Msg], Awaitable[None]]:
    """A callback noting when each event arrives."""

    async def stamp(_msg: Msg) -> None:
        arrivals.append(time.perf_counter())

    return stamp


async def step_times(
    watcher: NatsClient, llm: FakeLLM, sandbox: str, run: int, steps: int
) -> list[float]:
    """One scripted task of ``steps`` moves: the gaps between its steps, in ms."""
    llm.reset()
    moves = [
        tool_call("computer", {"action": "move", "x": 100 + 37 * i % 900, "y": 200 + run})
        for i in range(steps)
    ]
    llm.push(*moves, tool_call("computer", {"action": "done", "message": "ok"}))
    arrivals: list[float] = []
    task = TaskSubmitted(prompt="move", sandbox_id=sandbox)
    stamp = stamper(arrivals)
    sub = await watcher.subscribe(
        subjects.session_event(task.session_id, "step.executed"), cb=stamp
    )
    outcome = await (await RunningTask(watcher, task, bound=120.0).start()).outcome()
    await sub.unsubscribe()
    if outcome.finished["status"] != "succeeded":
        raise RuntimeError(f"bench task failed: {outcome.finished}")
    return [(b - a) * 1000 for a, b in itertools.pairwise(arrivals)]


async def event_times(bus: Bus, count: int) -> tuple[list[float], list[float]]:
    publisher = make_broker(bus.url, "bench-events", BusAuth(replicas=bus.replicas))
    await start_with_retry(publisher, before_start=ensure_streams)
    reader = await nats.connect(bus.reader_url)
    session = "bench-events"
    received: dict[str, float] = {}
    arrived = asyncio.Event()

    async def seen(msg: Msg) -> None:
        received[json.loads(msg.data)["text"]] = time.perf_counter()
        if len(received) == count:
            arrived.set()

    await reader.subscribe(subjects.session_event(session, "message"), cb=seen)
    await reader.flush()
    sent: dict[str, float] = {}
    publish: list[float] = []
    try:
        for index in range(count):
            event = AgentMessage(session_id=session, task_id=session, text=str(index))
            started = time.perf_counter()
            sent[event.text] = started
            await publisher.publish(event, subjects.session_event(session, "message"))
            publish.append((time.perf_counter() - started) * 1000)
            # A step's few events, not a burst: each is acknowledged before the next is sent.
            await asyncio.sleep(EVENT_GAP)
        await asyncio.wait_for(arrived.wait(), 30)
    finally:
        await reader.close()
        await publisher.stop()
    delivery = [(received[key] - sent[key]) * 1000 for key in sent]
    return publish, delivery


async def measure(
    buses: tuple[Bus, ...], desktop: Desktop, llm: FakeLLM, args: argparse.Namespace
) -> dict[str, Figures]:
    """Both buses' services run at once and take turns, task by task, so that
    whatever else the machine does weighs on both alike."""
    steps: dict[str, list[float]] = {bus.name: [] for bus in buses}
    async with AsyncExitStack() as stack:
        watchers: dict[str, NatsClient] = {}
        for bus in buses:
            await stack.enter_async_context(services(bus, desktop, llm))
            watchers[bus.name] = await nats.connect(bus.reader_url)
            stack.push_async_callback(watchers[bus.name].close)
        for run in range(args.tasks):
            for bus in buses:
                steps[bus.name] += await step_times(
                    watchers[bus.name], llm, bus.sandbox, run, args.steps
                )
    results: dict[str, Figures] = {}
    for bus in buses:
        publish, delivery = await event_times(bus, args.events)
        results[bus.name] = Figures(steps[bus.name], publish, delivery)
    return results


def report(results: dict[str, Figures]) -> None:
    single, cluster = results["single"], results["cluster"]
    rows: list[tuple[str, list[float], list[float]]] = [
        ("step (move, instant model)", single.steps, cluster.steps),
        ("event publish call (the task goes on)", single.publish, cluster.publish),
        ("event publish to live receipt", single.delivery, cluster.delivery),
    ]
    print(
        f"{'':<40} {'single p50/p95 ms':>20} {'cluster p50/p95 ms':>20} {'p50 +ms':>8} {'ratio':>6}"
    )
    for name, one, three in rows:
        a50, a95, b50, b95 = pct(one, 0.5), pct(one, 0.95), pct(three, 0.5), pct(three, 0.95)
        print(
            f"{name:<40} {a50:9.2f} / {a95:8.2f} {b50:9.2f} / {b95:8.2f} "
            f"{b50 - a50:+8.2f} {b50 / a50:6.2f}x"
        )
    added = pct(cluster.steps, 0.5) - pct(single.steps, 0.5)
    verdict = "met" if added <= GOAL_MS else "missed"
    print(
        f"goal: the cluster adds at most {GOAL_MS} ms to a step's p50: {verdict} ({added:+.2f} ms)"
    )


async def main(args: argparse.Namespace) -> None:
    desktop = start_desktop()
    llm = FakeLLM().start()
    single = EmbeddedNats().start()
    cluster = EmbeddedCluster(3).start()
    try:
        buses = (
            Bus("single", single.url, single.url, 1),
            Bus("cluster", cluster.url, cluster.nodes[-1].url, 3),
        )
        results = await measure(buses, desktop, llm, args)
    finally:
        cluster.cleanup()
        single.cleanup()
        llm.stop()
        desktop.stop()
    report(results)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.cluster")
    parser.add_argument("--tasks", type=int, default=6)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--events", type=int, default=300)
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse()))
