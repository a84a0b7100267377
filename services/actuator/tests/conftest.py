from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import pytest

from selfagent.actuator.config import Settings
from selfagent.actuator.service import ActuatorService, build
from selfagent.bus import make_broker
from selfagent.bus.natsd import EmbeddedNats, free_port
from tests.harness.desktop import Desktop, start_desktop


@dataclass
class Running:
    settings: Settings
    service: ActuatorService
    client: object


@pytest.fixture(
    scope="session", params=["native", pytest.param("container", marks=pytest.mark.docker)]
)
def desktop(request: pytest.FixtureRequest) -> Iterator[Desktop]:
    """Every action test runs against the native desktop and the sandbox image."""
    if request.param == "container":
        from tests.harness.container_desktop import start_container_desktop

        started: Desktop = start_container_desktop()
    else:
        started = start_desktop(exec_port=free_port(), exec_token=secrets.token_hex(16))
    yield started
    started.stop()


@pytest.fixture(scope="session")
async def actuator(nats_server: EmbeddedNats, desktop: Desktop) -> AsyncIterator[Running]:
    settings = Settings(
        nats_url=nats_server.url,
        sandbox_id="test",
        vnc_port=desktop.vnc_port,
        vnc_password=desktop.password,
        exec_url=f"http://127.0.0.1:{desktop.exec_port}",
        exec_token=desktop.exec_token,
    )
    service = build(settings)
    await service.start()
    await service.desktop.wait_ready(15)
    client = make_broker(nats_server.url, "actuator-test-client")
    await client.start()
    yield Running(settings, service, client)
    await client.stop()
    await service.stop()
    await asyncio.sleep(0)
