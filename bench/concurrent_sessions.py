"""Many sessions at once on one machine: first screenshot, step overhead, throughput, memory.

    python -m bench.concurrent_sessions [--sizes 1,2,4,8] [--steps 10] [--runs 5]

Runs the real local stack with per-session desktops (embedded nats-server,
native provisioner, one actuator, planner, gateway) and the scripted model
server, which answers at once, so every second measured is selfagent's own.

1. A new session's desktop to its first screenshot: ``POST /api/sessions``
   (the page's "New session"), then ``agent.sandbox.<box>.observe`` through
   the actuator; from the warm pool, and with the pool empty (a cold start).
   Ratio cold / warm.
2. N sessions at once, each running a scripted task of ``--steps`` steps
   (pointer moves, then done) on its own desktop: throughput (steps/s) and
   step time p50/p95, where a step is one turn of the loop (screenshot to
   the model, its reply, the action and its settling). N = 1 is the baseline
   of the ratios.
3. Memory: the one actuator serving every desktop, against an actuator
   process per desktop (one fixed-desktop actuator measured, times N).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import nats
from faststream.nats import NatsBroker
from nats.aio.msg import Msg

from selfagent.bus import make_broker, request
from selfagent.bus.natsd import free_port
from selfagent.local import LocalStack
from selfagent.schemas import (
    ConnectRequest,
    Lease,
    LeaseRequest,
    Observation,
    ObserveRequest,
    ProvisionerStatus,
    Released,
    ReleaseRequest,
    SandboxEndpoint,
    StatusRequest,
    TaskSubmitted,
    subjects,
)
from tests.harness.fakellm import FakeLLM, TaggedScripts, tool_call


def pss_mib(pid: int) -> float:
    """Proportional set size: shared pages split between their users."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no Pss for {pid}")


def pctl(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Bench:
    def __init__(self, stack: LocalStack, broker: NatsBroker, scripts: TaggedScripts) -> None:
        self.stack, self.broker, self.scripts = stack, broker, scripts

    async def status(self) -> ProvisionerStatus:
        return await request(
            self.broker, subjects.PROVISIONER_STATUS, StatusRequest(), ProvisionerStatus, timeout=5
        )

    async def warm_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not any(s.state == "warm" for s in (await self.status()).sandboxes):
            if time.monotonic() > deadline:
                raise RuntimeError("the warm pool did not refill")
            await asyncio.sleep(0.1)

    async def lease(self, session: str) -> Lease:
        return await request(
            self.broker,
            subjects.PROVISIONER_LEASE,
            LeaseRequest(session_id=session),
            Lease,
            timeout=120,
        )

    async def release(self, *sessions: str) -> None:
        for session in sessions:
            await request(
                self.broker,
                subjects.PROVISIONER_RELEASE,
                ReleaseRequest(session_id=session),
                Released,
                timeout=60,
            )

    async def first_screenshot(self) -> tuple[float, bool, str]:
        """POST /api/sessions, as the page's "New session" does, then a screenshot of it."""
        started = time.perf_counter()
        async with httpx.AsyncClient(
            base_url=self.stack.gateway_url,
            headers={"Authorization": f"Bearer {self.stack.token}"},
            timeout=120,
        ) as client:
            reply = await client.post("/api/sessions")
        reply.raise_for_status()
        created = reply.json()
        observation = await request(
            self.broker,
            subjects.sandbox_observe(created["sandbox_id"]),
            ObserveRequest(),
            Observation,
            timeout=30,
        )
        assert observation.screenshot is not None
        return (time.perf_counter() - started) * 1000, bool(created["warm"]), created["session_id"]

    async def run_tasks(self, n: int, steps: int) -> tuple[float, list[float], float]:
        """N sessions' tasks at once: (steps/s, step times in ms, wall seconds)."""
        run = uuid.uuid4().hex[:6]
        sessions = [f"bench-{run}-{i}" for i in range(n)]
        # Desktops first: starting them is measured above, not here.
        await asyncio.gather(*(self.lease(s) for s in sessions))
        for i, session in enumerate(sessions):
            script: list[dict[str, Any]] = [
                tool_call("computer", {"action": "move", "x": 200 + 40 * (k % 2), "y": 200 + i})
                for k in range(steps - 1)
            ]
            script.append(tool_call("computer", {"action": "done", "message": "done"}))
            self.scripts.scripts[session] = script
        planned: dict[str, list[datetime]] = {s: [] for s in sessions}
        finished: dict[str, datetime] = {}
        done = asyncio.Event()

        async def on_event(msg: Msg) -> None:
            body = json.loads(msg.data)
            session = body.get("session_id")
            if session not in planned:
                return
            at = datetime.fromisoformat(body["at"])
            if body["kind"] == "step.planned":
                planned[session].append(at)
            elif body["kind"] == "task.finished":
                if body["status"] != "succeeded":
                    raise RuntimeError(f"{session}: {body['reply']}")
                finished[session] = at
                if len(finished) == n:
                    done.set()

        events = await nats.connect(self.stack.nats_url_as("admin"))
        await events.subscribe(subjects.SESSION_EVENTS_ALL, cb=on_event)
        started = time.perf_counter()
        try:
            for session in sessions:
                task = TaskSubmitted(session_id=session, prompt=f"[{session}] move around")
                await self.broker.publish(task, subjects.TASK_SUBMIT, stream=subjects.TASKS_STREAM)
            await asyncio.wait_for(done.wait(), 120 + 10 * n * steps)
        finally:
            await events.close()
        wall = time.perf_counter() - started
        times: list[float] = []
        for session in sessions:
            marks = [*planned[session], finished[session]]
            times += [(b - a).total_seconds() * 1000 for a, b in itertools.pairwise(marks)]
        await self.release(*sessions)
        return n * steps / wall, times, wall

    async def fixed_actuator_pss(self) -> float:
        """One more actuator, serving one desktop the old way (fixed), after one screenshot."""
        session = f"bench-fixed-{uuid.uuid4().hex[:6]}"
        lease = await self.lease(session)
        endpoint = await request(
            self.broker,
            subjects.PROVISIONER_CONNECT,
            ConnectRequest(sandbox_id=lease.sandbox_id),
            SandboxEndpoint,
            timeout=10,
        )
        env = {
            **os.environ,
            **self.stack.credentials("actuator").env(),
            "ACTUATOR_DESKTOPS": "fixed",
            "ACTUATOR_SANDBOX_ID": "benchfixed",
            "ACTUATOR_VNC_HOST": endpoint.vnc_host,
            "ACTUATOR_VNC_PORT": str(endpoint.vnc_port),
            "ACTUATOR_VNC_PASSWORD": endpoint.vnc_password,
            "ACTUATOR_EXEC_URL": endpoint.exec_url,
            "ACTUATOR_EXEC_TOKEN": endpoint.exec_token,
        }
        process = subprocess.Popen(
            [sys.executable, "-m", "selfagent.actuator"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    await request(
                        self.broker,
                        subjects.sandbox_observe("benchfixed"),
                        ObserveRequest(),
                        Observation,
                        timeout=5,
                    )
                    break
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.3)
            return pss_mib(process.pid)
        finally:
            process.terminate()
            process.wait(10)
            await self.release(session)


async def main_async(sizes: list[int], steps: int, runs: int) -> None:
    llm = FakeLLM().start()
    scripts = TaggedScripts()
    llm.reset(default=scripts)
    stack = LocalStack(
        desktops="per_session",
        gateway_port=free_port(),
        extra_env={
            "LLM_API_BASE_URL": llm.base_url,
            "LLM_MODEL": "fake-planner",
            "GROUNDER_FAMILY": "ocr",
            "GROUNDER_CANARY": "false",
            "PLANNER_CANARY": "false",
            "PROVISIONER_WARM": "1",
            "PROVISIONER_MAX_PER_HOST": str(max(sizes) + 2),
            "PROVISIONER_IDLE_RELEASE": "0",
        },
    )
    stack.start()
    broker = make_broker(stack.nats_url_as("admin"), "bench")
    await broker.start()
    bench = Bench(stack, broker, scripts)
    try:
        print(f"screen {stack.screen[0]}x{stack.screen[1]}, machine: {os.cpu_count()} cores")
        warm: list[float] = []
        cold: list[float] = []
        for _ in range(runs):
            await bench.warm_ready()
            # Two at once with one warm desktop: one gets it, the other starts cold.
            pair = await asyncio.gather(bench.first_screenshot(), bench.first_screenshot())
            for took, was_warm, _ in pair:
                (warm if was_warm else cold).append(took)
            await bench.release(*(session for _, _, session in pair))
        print("POST /api/sessions -> first screenshot through the actuator:")
        print(f"  warm pool  p50 {statistics.median(warm):7.0f} ms  ({len(warm)} runs)")
        print(
            f"  pool empty p50 {statistics.median(cold):7.0f} ms  ({len(cold)} runs)"
            f"  ratio {statistics.median(cold) / statistics.median(warm):.0f}x"
        )
        await bench.warm_ready()

        print(f"\nN sessions at once, {steps}-step scripted tasks (instant model):")
        print("   N  steps/s  ratio   step p50   step p95   p50 ratio")
        base: tuple[float, float] | None = None
        for n in sizes:
            rate, times, _ = await bench.run_tasks(n, steps)
            p50, p95 = pctl(times, 0.5), pctl(times, 0.95)
            base = base or (rate, p50)
            print(
                f"  {n:2d}  {rate:7.2f}  {rate / base[0]:5.2f}   {p50:6.0f} ms  {p95:6.0f} ms"
                f"   {p50 / base[1]:5.2f}"
            )
        actuator = stack.processes["actuator"].pid
        served = pss_mib(actuator)
        fixed = await bench.fixed_actuator_pss()
        most = max(sizes)
        print("\nactuator memory (PSS):")
        print(f"  one actuator, after serving {most} desktops at once: {served:6.1f} MiB")
        print(f"  one fixed-desktop actuator:                        {fixed:6.1f} MiB")
        print(
            f"  an actuator per desktop for {most} desktops:       {fixed * most:6.1f} MiB"
            f"  ratio {fixed * most / served:.1f}x"
        )
    finally:
        await broker.stop()
        stack.stop(remove=True)
        llm.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,2,4,8")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    asyncio.run(main_async(sizes, args.steps, args.runs))


if __name__ == "__main__":
    main()
