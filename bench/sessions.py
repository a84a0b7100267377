"""A new session's desktop: from the lease request to the first VNC frame, warm pool vs cold.

    python -m bench.sessions [--runs 5] [--backend native|docker|both]

Runs the provisioner service in this process on an embedded nats-server and
goes the way the actuator and gateway will: ``agent.provisioner.lease``, then
``agent.provisioner.connect`` for the endpoint and its secrets, then a VNC
login until the first full frame (the actuator's RFB client). Each figure is
the p50 over ``--runs`` sessions, with the warm pool on (1 desktop) and off
(0: every desktop is a cold start); the ratio is cold / warm. Then the idle
memory of one desktop: the PSS of its processes natively (shared pages split
between processes, so the sum is honest), ``docker stats`` for a container.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from selfagent.bus import make_broker, request
from selfagent.bus.natsd import EmbeddedNats
from selfagent.provisioner.config import Settings
from selfagent.provisioner.native import marked_processes
from selfagent.provisioner.service import ProvisionerService
from selfagent.rfb import RFBClient
from selfagent.schemas import (
    ConnectRequest,
    Lease,
    LeaseRequest,
    ProvisionerStatus,
    Released,
    ReleaseRequest,
    SandboxEndpoint,
    StatusRequest,
    subjects,
)

IMAGE = "selfagent/sandbox:test"


def _pss_mib(pids: set[int]) -> float:
    total = 0
    for pid in pids:
        try:
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
        except OSError:
            continue
        for line in rollup[1:]:
            if line.startswith("Pss:"):
                total += int(line.split()[1])
    return total / 1024


class Bench:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.service = ProvisionerService(settings)
        self.broker = make_broker(settings.nats_url, "bench-sessions")

    async def __aenter__(self) -> Bench:
        await self.service.start()
        await self.broker.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.broker.stop()
        await self.service.stop()

    async def status(self) -> ProvisionerStatus:
        return await request(
            self.broker, subjects.PROVISIONER_STATUS, StatusRequest(), ProvisionerStatus, timeout=10
        )

    async def wait_warm(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(info.state == "warm" for info in (await self.status()).sandboxes):
                return
            await asyncio.sleep(0.1)
        raise TimeoutError("no warm desktop")

    async def session(self, session_id: str) -> tuple[float, Lease]:
        """Seconds from the lease request to the first frame."""
        began = time.monotonic()
        lease = await request(
            self.broker,
            subjects.PROVISIONER_LEASE,
            LeaseRequest(session_id=session_id),
            Lease,
            timeout=300,
        )
        endpoint = await request(
            self.broker,
            subjects.PROVISIONER_CONNECT,
            ConnectRequest(sandbox_id=lease.sandbox_id),
            SandboxEndpoint,
            timeout=10,
        )
        client = RFBClient(endpoint.vnc_host, endpoint.vnc_port, endpoint.vnc_password)
        await client.connect(timeout=30)
        elapsed = time.monotonic() - began
        await client.close()
        return elapsed, lease

    async def release(self, session_id: str) -> None:
        await request(
            self.broker,
            subjects.PROVISIONER_RELEASE,
            ReleaseRequest(session_id=session_id, keep_home=False),
            Released,
            timeout=60,
        )


async def measure(base: Settings, runs: int) -> dict[str, float]:
    figures: dict[str, float] = {}
    for mode, warm in (("warm", 1), ("cold", 0)):
        times = []
        async with Bench(base.model_copy(update={"warm": warm})) as bench:
            for run in range(runs):
                if warm:
                    await bench.wait_warm()
                session = f"bench-{mode}-{run}-{uuid.uuid4().hex[:6]}"
                elapsed, lease = await bench.session(session)
                assert lease.warm == bool(warm), lease
                times.append(elapsed)
                await bench.release(session)
        figures[mode] = statistics.median(times)
        print(
            f"  {mode:<4} lease -> first frame: p50 {figures[mode] * 1000:7.0f} ms "
            f"(min {min(times) * 1000:.0f}, max {max(times) * 1000:.0f}, n={runs})"
        )
    print(f"  warm pool is {figures['cold'] / figures['warm']:.0f}x faster than a cold start")
    return figures


async def memory(base: Settings) -> None:
    async with Bench(base.model_copy(update={"warm": 0})) as bench:
        session = f"bench-mem-{uuid.uuid4().hex[:6]}"
        _, lease = await bench.session(session)
        await asyncio.sleep(5)
        if base.backend == "native":
            pids = marked_processes(bench.service.pool.host).get(lease.sandbox_id, set())
            print(f"  idle desktop: PSS {_pss_mib(pids):.0f} MiB over {len(pids)} processes")
        else:
            name = next(
                line
                for line in subprocess.run(
                    ["docker", "ps", "--format", "{{.Names}}"], capture_output=True, text=True
                ).stdout.split()
                if lease.sandbox_id in line
            )
            usage = subprocess.run(
                ["docker", "stats", "--no-stream", "--format", "{{.MemUsage}}", name],
                capture_output=True,
                text=True,
            ).stdout.strip()
            print(f"  idle desktop: docker stats {usage}")
        await bench.release(session)


async def run_backend(backend: str, nats_url: str, runs: int) -> None:
    with tempfile.TemporaryDirectory(prefix="selfagent-bench-") as data:
        base = Settings(
            nats_url=nats_url,
            backend=backend,
            host_name=f"bench-{uuid.uuid4().hex[:8]}",
            data_dir=Path(data),
            max_per_host=2,
            idle_release=0,
            # Each phase starts from nothing: no desktop adopted from the last.
            keep_on_stop=False,
        )
        network = None
        if backend == "docker":
            from tests.harness.docker import build_image

            build_image("sandbox/Dockerfile", IMAGE)
            network = f"selfagent-bench-{uuid.uuid4().hex[:8]}"
            subprocess.run(
                ["docker", "network", "create", network], check=True, capture_output=True
            )
            base = base.model_copy(update={"docker_image": IMAGE, "docker_network": network})
        print(f"{backend} backend ({base.screen_width}x{base.screen_height}):")
        try:
            await measure(base, runs)
            await memory(base)
        finally:
            if network:
                subprocess.run(["docker", "network", "rm", network], capture_output=True)


async def main_async(backends: list[str], runs: int) -> None:
    nats = EmbeddedNats().start()
    try:
        for backend in backends:
            await run_backend(backend, nats.url, runs)
    finally:
        nats.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--backend", choices=("native", "docker", "both"), default="both")
    args = parser.parse_args()
    backends = ["native", "docker"] if args.backend == "both" else [args.backend]
    if "docker" in backends and subprocess.run(["docker", "info"], capture_output=True).returncode:
        print("docker: no engine; skipped")
        backends.remove("docker")
    asyncio.run(main_async(backends, args.runs))


if __name__ == "__main__":
    main()
