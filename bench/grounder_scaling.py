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
import os
import shutil
import subprocess
import sys
import tempfile
import time
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


async def run_load(broker: Any, total: int, clients: int) -> tuple[float, int]:
    remaining = total
    failures = 0
    message = make_request()

    async def caller() -> None:
        nonlocal remaining, failures
        while remaining > 0:
            remaining -= 1
            try:
                result = await request(broker, subjects.GROUND, message, GroundResult, timeout=120)
                if not result.found:
                    failures += 1
            except Exception:
                failures += 1

    started = time.monotonic()
    await asyncio.gather(*(caller() for _ in range(clients)))
    return time.monotonic() - started, failures


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delay", type=float, default=0.2, help="VLM seconds per call")
    parser.add_argument("--requests-per-replica", type=int, default=50)
    parser.add_argument("--clients-per-replica", type=int, default=16)
    parser.add_argument("--replicas", default="1,2,4")
    args = parser.parse_args()

    answer = {"delay": args.delay, "content": "Action: click(point='<point>100 60</point>')"}
    vlm = FakeLLM(default=answer).start()
    nats = EmbeddedNats().start()
    logs = Path(tempfile.mkdtemp(prefix="grounder-bench-"))
    broker = make_broker(nats.url, "grounder-bench")
    await broker.start()
    rows: list[tuple[int, int, int, float, float]] = []
    try:
        for count in (int(c) for c in args.replicas.split(",")):
            procs, files = start_replicas(count, nats.url, vlm.base_url, logs)
            try:
                await wait_until_ready(procs, files)
                total = args.requests_per_replica * count
                clients = args.clients_per_replica * count
                elapsed, failures = await run_load(broker, total, clients)
            finally:
                stop_replicas(procs)
            if failures:
                raise SystemExit(f"{failures} of {total} requests failed with {count} replicas")
            rows.append((count, total, clients, elapsed, total / elapsed))
            print(f"  {count} replica(s): {total} requests in {elapsed:.2f}s", flush=True)
    finally:
        await broker.stop()
        nats.cleanup()
        vlm.stop()
        shutil.rmtree(logs, ignore_errors=True)

    print()
    print(f"grounder scaling: fake VLM {args.delay * 1000:.0f} ms/call, GROUNDER_CONCURRENCY=1 per")
    print("replica (so replicas are what scales), closed-loop callers, real nats-server")
    print(f"ideal throughput per replica: {1 / args.delay:.1f} req/s")
    print()
    print(
        f"{'replicas':>8} {'requests':>8} {'callers':>8} {'seconds':>8} {'req/s':>8} "
        f"{'vs 1':>6} {'efficiency':>10}"
    )
    base = rows[0][4] / rows[0][0]
    for count, total, clients, elapsed, rate in rows:
        ratio = rate / base
        print(
            f"{count:>8} {total:>8} {clients:>8} {elapsed:>8.2f} {rate:>8.2f} "
            f"{ratio:>6.2f} {ratio / count:>10.0%}"
        )


if __name__ == "__main__":
    asyncio.run(main())
