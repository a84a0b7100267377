"""A real actuator, in this process, on a real desktop: what the planner's
tests and benchmarks put beneath the planner."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from selfagent.actuator.config import Settings
from selfagent.actuator.service import ActuatorService, build
from tests.harness.desktop import Desktop


@asynccontextmanager
async def running_actuator(
    nats_url: str, desktop: Desktop, sandbox_id: str, *, ready_within: float = 15.0
) -> AsyncIterator[ActuatorService]:
    """Started, with its VNC link up (so the first step does not wait for it), then stopped."""
    actuator = build(
        Settings(
            nats_url=nats_url,
            sandbox_id=sandbox_id,
            vnc_port=desktop.vnc_port,
            vnc_password=desktop.password,
        )
    )
    try:
        await actuator.start()
        await actuator.desktop.wait_ready(ready_within)
        yield actuator
    finally:
        await actuator.stop()
