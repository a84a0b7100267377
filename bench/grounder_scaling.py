"""How grounder throughput scales with replicas in the NATS queue group.

Starts a real nats-server, a scripted VLM that takes 200 ms per call, and
1, 2 and 4 grounder replicas as separate processes (``python -m
selfagent.grounder``). Each replica runs with ``GROUNDER_CONCURRENCY=1`` so
that replicas, not concurrency inside one replica, are what scales. Load is
closed-loop: ``clients-per-replica x replicas`` callers each send the next
request as soon as the previous one is answered, ``requests-per-replica x
replicas`` requests in all.

    python -m bench.grounder_scaling [--delay 0.2] [--requests-per-replica 50]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from PIL import Image

from selfagent.bus import make_broker, request
from selfagent.bus.natsd import EmbeddedNats
from selfagent.schemas import GroundRequest, GroundResult, Screenshot, subjects
from tests.harness.fakellm import FakeLLM


def make_request() -> GroundRequest:
    buffer = io.BytesIO()
    Image.new("RGB", (320, 180), (90, 120, 150)).save(buffer, format="PNG")
    return GroundRequest(
        description='the "OK" button',
        screenshot=Screenshot(
            format="png",
            width=320,
            height=180,
            data_b64=base64.b64encode(buffer.getvalue()).decode(),
        ),
        screen_width=1280,
        screen_height=720,
    )


def start_replicas(
    count: int, nats_url: str, vlm_url: str, logs: Path
) -> tuple[list[subprocess.Popen[bytes]], list[Path]]:
    env = {
        **os.environ,
        "NATS_URL": nats_url,
        "GROUNDER_API_BASE_URL": vlm_url,
        "GROUNDER_MODEL": "UI-TARS-1.5-7B",
        "GROUNDER_FAMILY": "ui-tars-1.5",
        "GROUNDER_CONCURRENCY": "1",
        "GROUNDER_CANARY": "false",
        "GROUNDER_TIMEOUT": "10",
        # INFO, for the "grounder ready" line the bench waits for.
        "LOG_LEVEL": "INFO",
    }
    procs = []
    files = []
    for i in range(count):
        log = logs / f"grounder-{count}-{i}.log"
        files.append(log)
        with log.open("wb") as out:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "selfagent.grounder"], env=env, stdout=out, stderr=out
                )
            )
    return procs, files


def stop_replicas(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def wait_until_ready(procs: list[subprocess.Popen[bytes]], logs: list[Path]) -> None:
    """Until every replica has logged that it joined the queue group."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for proc, log in zip(procs, logs, strict=True):
            if proc.poll() is not None:
                raise SystemExit(f"a grounder replica exited: {log.read_text()[-2000:]}")
        if all("grounder ready" in log.read_text() for log in logs):
            return
        await asyncio.sleep(0.1)
    raise SystemExit("grounder replicas did not start within 60s")


async def run_load(broker: Any, total: int, clients: int) -> tuple[float, float, int]:
    """Returns (seconds to the last reply, steady-state req/s, failures).

    Steady state is the rate between the 10% and 80% completion marks, when
    every replica has requests waiting. The last stretch of a fixed batch is
    shaped by how evenly the queue group happened to spread it (each request
    goes to a random member), which is a tail effect, not capacity.
    """
    remaining = total
    failures = 0
    message = make_request()
    done_at: list[float] = []

    async def caller() -> None:
        nonlocal remaining, failures
        while remaining > 0:
            remaining -= 1
            try:
                result = await request(broker, subjects.GROUND, message, GroundResult, timeout=120)
                done_at.append(time.monotonic())
                if not result.found:
                    failures += 1
            except Exception:
                failures += 1

    started = time.monotonic()
    await asyncio.gather(*(caller() for _ in range(clients)))
    elapsed = time.monotonic() - started
    done_at.sort()
    first, last = int(0.1 * len(done_at)), int(0.8 * len(done_at))
    steady = (last - first) / (done_at[last] - done_at[first]) if last > first else 0.0
    return elapsed, steady, failures


def _serve_fake_vlm(answer: dict[str, Any], port_out: Connection) -> None:
    server = FakeLLM(default=answer).start()
    port_out.send(server.base_url)
    threading.Event().wait()


def start_fake_vlm(answer: dict[str, Any]) -> tuple[str, BaseProcess]:
    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_serve_fake_vlm, args=(answer, sender), daemon=True)
    process.start()
    url: str = receiver.recv()
    return url, process


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delay", type=float, default=0.2, help="VLM seconds per call")
    parser.add_argument("--requests-per-replica", type=int, default=50)
    parser.add_argument("--clients-per-replica", type=int, default=16)
    parser.add_argument("--replicas", default="1,2,4")
    args = parser.parse_args()

    answer = {"delay": args.delay, "content": "Action: click(point='<point>100 60</point>')"}
    # The fake VLM gets a process of its own: sharing the load generator's
    # interpreter (and its GIL) would make the VLM, not the grounders, the
    # bottleneck at 4 replicas.
    vlm_url, vlm_process = start_fake_vlm(answer)
    nats = EmbeddedNats().start()
    logs = Path(tempfile.mkdtemp(prefix="grounder-bench-"))
    broker = make_broker(nats.url, "grounder-bench")
    await broker.start()
    rows: list[tuple[int, int, int, float, float, float]] = []
    try:
        for count in (int(c) for c in args.replicas.split(",")):
            procs, files = start_replicas(count, nats.url, vlm_url, logs)
            try:
                await wait_until_ready(procs, files)
                total = args.requests_per_replica * count
                clients = args.clients_per_replica * count
                elapsed, steady, failures = await run_load(broker, total, clients)
            finally:
                stop_replicas(procs)
            if failures:
                raise SystemExit(f"{failures} of {total} requests failed with {count} replicas")
            rows.append((count, total, clients, elapsed, total / elapsed, steady))
            print(f"  {count} replica(s): {total} requests in {elapsed:.2f}s", flush=True)
    finally:
        await broker.stop()
        nats.cleanup()
        vlm_process.terminate()
        vlm_process.join(5)
        shutil.rmtree(logs, ignore_errors=True)

    print()
    print(f"grounder scaling: fake VLM {args.delay * 1000:.0f} ms/call, GROUNDER_CONCURRENCY=1 per")
    print("replica (so replicas are what scales), closed-loop callers, real nats-server")
    print(f"ideal throughput per replica: {1 / args.delay:.1f} req/s")
    print()
    print(
        f"{'replicas':>8} {'requests':>8} {'callers':>8} {'steady req/s':>12} {'vs 1':>6} "
        f"{'efficiency':>10}   {'batch s':>8} {'batch req/s':>11} {'efficiency':>10}"
    )
    base_steady = rows[0][5] / rows[0][0]
    base_batch = rows[0][4] / rows[0][0]
    for count, total, clients, elapsed, rate, steady in rows:
        print(
            f"{count:>8} {total:>8} {clients:>8} {steady:>12.2f} {steady / base_steady:>6.2f} "
            f"{steady / base_steady / count:>10.0%}   {elapsed:>8.2f} {rate:>11.2f} "
            f"{rate / base_batch / count:>10.0%}"
        )
    print()
    print("steady: rate between 10% and 80% of replies, every replica busy (the capacity).")
    print("batch: to the last reply; a queue group sends each request to a random member,")
    print("so one replica may get more of a fixed batch than another and finish last.")


if __name__ == "__main__":
    asyncio.run(main())
