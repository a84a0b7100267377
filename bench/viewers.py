"""One gateway relaying session events to many WebSocket viewers: events/s and CPU per 1,000 events.

    python -m bench.viewers [--viewers 50] [--events 2000] [--rate 0]

A real nats-server and a real gateway process (``python -m selfagent.gateway``,
no desktop needed); ``--viewers`` WebSocket clients on ``/ws/events`` for one
session, as browser tabs watching it would be. Session events are published
on the bus as the planner publishes them (``agent.session.<id>.event.message``,
with a plausible payload), ``--rate`` per second (0: as fast as the gateway
takes them, paced by the last viewer's receipt of every 100th event so that
nothing is cut off for being slow).

For each viewer count (1, the baseline of the ratios, then ``--viewers``):

* relayed: events per second that reached every viewer, and frames per second
  sent in total (events x viewers);
* latency: publish to receipt, p50 and p95, over all viewers;
* CPU: the gateway process's user+system time (from /proc) per 1,000 events,
  and per 1,000 frames sent.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from contextlib import suppress
from pathlib import Path

import httpx
import nats
import websockets

from selfagent.bus.natsd import EmbeddedNats, free_port
from selfagent.schemas import AgentMessage, subjects

SESSION = "bench-viewers"
PACE_EVERY = 100


def cpu_seconds(pid: int) -> float:
    """User + system time of ``pid`` so far (fields 14 and 15 of /proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class Gateway:
    def __init__(self, nats_url: str, run_dir: Path) -> None:
        self.port = free_port()
        self.token = secrets.token_urlsafe(24)
        env = {
            **os.environ,
            "NATS_URL": nats_url,
            "GATEWAY_HOST": "127.0.0.1",
            "GATEWAY_PORT": str(self.port),
            "SELFAGENT_TOKEN": self.token,
            "SELFAGENT_DESKTOPS": "per_session",
            "PYTHONUNBUFFERED": "1",
        }
        self.log = (run_dir / "gateway.log").open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "selfagent.gateway"], env=env, stdout=self.log, stderr=self.log
        )

    async def wait_healthy(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient() as http:
            while time.monotonic() < deadline:
                with suppress(httpx.HTTPError):
                    reply = await http.get(f"http://127.0.0.1:{self.port}/healthz")
                    if reply.status_code == 200:
                        return
                await asyncio.sleep(0.2)
        raise RuntimeError("the gateway did not become healthy")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(15)
        self.log.close()


class Viewer:
    """One WebSocket client; records when each bench event arrived."""

    def __init__(self) -> None:
        self.arrivals: dict[int, float] = {}
        self.progress = asyncio.Event()
        self.last = -1

    async def watch(self, url: str, token: str, ready: asyncio.Event, total: int) -> None:
        headers = {"Authorization": f"Bearer {token}"}
        async with websockets.connect(url, additional_headers=headers, max_queue=None) as ws:
            await ws.recv()  # the take-over notice comes first
            ready.set()
            while len(self.arrivals) < total:
                frame = json.loads(await ws.recv())
                if frame.get("kind") != "message":
                    continue
                number = int(frame["text"].split(" ", 1)[0])
                self.arrivals[number] = time.perf_counter()
                self.last = max(self.last, number)
                self.progress.set()


async def wait_all(viewers: list[Viewer], number: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    for viewer in viewers:
        while viewer.last < number:
            viewer.progress.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"event {number} did not reach every viewer in {timeout} s")
            with suppress(TimeoutError):
                await asyncio.wait_for(viewer.progress.wait(), left)


async def run_once(
    gateway: Gateway, nats_url: str, viewers: int, events: int, rate: float
) -> dict[str, float]:
    url = f"ws://127.0.0.1:{gateway.port}/ws/events?session_id={SESSION}"
    watchers = [Viewer() for _ in range(viewers)]
    readies = [asyncio.Event() for _ in watchers]
    tasks = [
        asyncio.create_task(w.watch(url, gateway.token, r, events))
        for w, r in zip(watchers, readies, strict=True)
    ]
    await asyncio.wait_for(asyncio.gather(*(r.wait() for r in readies)), 60)
    client = await nats.connect(nats_url)
    subject = subjects.session_event(SESSION, "message")
    # A realistic event: the agent's note of a step, a few hundred bytes.
    filler = "The agent looked at the screen and chose the next action. " * 4
    sent: dict[int, float] = {}
    cpu_before = cpu_seconds(gateway.process.pid)
    started = time.perf_counter()
    for number in range(events):
        event = AgentMessage(session_id=SESSION, task_id="bench", text=f"{number} {filler}")
        sent[number] = time.perf_counter()
        await client.publish(subject, event.model_dump_json().encode())
        if rate > 0:
            await asyncio.sleep(max(0.0, started + (number + 1) / rate - time.perf_counter()))
        elif number % PACE_EVERY == PACE_EVERY - 1:
            await client.flush()
            await wait_all(watchers, number)
    await client.flush()
    await wait_all(watchers, events - 1)
    elapsed = time.perf_counter() - started
    cpu = cpu_seconds(gateway.process.pid) - cpu_before
    await client.close()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    latencies = [
        (arrived - sent[number]) * 1000
        for watcher in watchers
        for number, arrived in watcher.arrivals.items()
    ]
    frames = events * viewers
    return {
        "events_per_s": events / elapsed,
        "frames_per_s": frames / elapsed,
        "p50_ms": pct(latencies, 0.5),
        "p95_ms": pct(latencies, 0.95),
        "cpu_per_1000_events_s": cpu / events * 1000,
        "cpu_per_1000_frames_s": cpu / frames * 1000,
    }


async def main(args: argparse.Namespace) -> None:
    server = EmbeddedNats().start()
    run_dir = Path(tempfile.mkdtemp(prefix="selfagent-bench-viewers-"))
    gateway = Gateway(server.url, run_dir)
    try:
        await gateway.wait_healthy()
        results: dict[int, dict[str, float]] = {}
        for count in (1, args.viewers):
            # A short warm-up, so imports and first connections are not counted.
            await run_once(gateway, server.url, count, 200, 0)
            results[count] = await run_once(gateway, server.url, count, args.events, args.rate)
    finally:
        gateway.stop()
        server.cleanup()
    base = results[1]
    print(
        f"{args.events} events, one session, published as the planner does; rate "
        f"{'as fast as relayed' if args.rate <= 0 else f'{args.rate:.0f}/s'}"
    )
    print(
        f"{'viewers':>8} {'events/s':>9} {'frames/s':>9} {'p50 ms':>7} {'p95 ms':>7} "
        f"{'CPU s/1k ev':>12} {'CPU s/1k frames':>16}"
    )
    for count, r in results.items():
        print(
            f"{count:>8} {r['events_per_s']:>9.0f} {r['frames_per_s']:>9.0f} {r['p50_ms']:>7.1f} "
            f"{r['p95_ms']:>7.1f} {r['cpu_per_1000_events_s']:>12.3f} "
            f"{r['cpu_per_1000_frames_s']:>16.4f}"
        )
    top = results[args.viewers]
    print(
        f"ratios {args.viewers} viewers vs 1: "
        f"events/s x{top['events_per_s'] / base['events_per_s']:.2f}, "
        f"frames/s x{top['frames_per_s'] / base['frames_per_s']:.1f}, "
        f"CPU per event x{top['cpu_per_1000_events_s'] / base['cpu_per_1000_events_s']:.1f}, "
        f"CPU per frame x{top['cpu_per_1000_frames_s'] / base['cpu_per_1000_frames_s']:.2f}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--viewers", type=int, default=50)
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=0.0, help="events/s; 0: as fast as relayed")
    asyncio.run(main(parser.parse_args()))
