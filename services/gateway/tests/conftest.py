from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from faststream.nats import NatsBroker

from selfagent.bus.natsd import EmbeddedNats
from tests.harness.desktop import Desktop

from .stack import GatewayProcess, start_gateway


@pytest.fixture(scope="session")
def gateway(nats_server: EmbeddedNats, desktop: Desktop) -> Iterator[GatewayProcess]:
    gw = start_gateway(
        nats_server.url, desktop.vnc_port, desktop.password, GATEWAY_CHAT_TIMEOUT="3"
    )
    yield gw
    gw.stop()


@pytest.fixture(scope="session")
async def bus(nats_server: EmbeddedNats) -> AsyncIterator[NatsBroker]:
    """An automation client on the real bus (plays the planner where a test needs one)."""
    broker = NatsBroker(nats_server.url)
    await broker.connect()
    yield broker
    await broker.stop()
