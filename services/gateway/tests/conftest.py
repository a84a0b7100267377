from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from faststream.nats import NatsBroker

from selfagent.bus.natsd import EmbeddedNats

from .inprocess import AppOnBus, app_on_bus, settings


@pytest.fixture(scope="session")
async def app(nats_server: EmbeddedNats) -> AsyncIterator[AppOnBus]:
    """The web app in this process, its bus side on the real nats-server."""
    async with app_on_bus(settings(nats_server.url, chat_timeout=10)) as running:
        yield running


@pytest.fixture(scope="session")
async def bus(nats_server: EmbeddedNats) -> AsyncIterator[NatsBroker]:
    """An automation client on the real bus (plays the planner where a test needs one)."""
    broker = NatsBroker(nats_server.url)
    await broker.connect()
    yield broker
    await broker.stop()
