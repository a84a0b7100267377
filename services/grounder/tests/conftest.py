from __future__ import annotations

import base64
import io
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio
from faststream.nats import NatsBroker
from PIL import Image

from selfagent.bus import make_broker
from selfagent.bus.natsd import EmbeddedNats
from selfagent.schemas import GroundRequest, Screenshot
from tests.harness.fakellm import FakeLLM


def png_b64(width: int, height: int) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 210, 220)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def ground_request(
    description: str = 'the "Save" button',
    image: tuple[int, int] = (1280, 720),
    screen: tuple[int, int] = (1280, 720),
) -> GroundRequest:
    return GroundRequest(
        description=description,
        screenshot=Screenshot(
            format="png", width=image[0], height=image[1], data_b64=png_b64(*image)
        ),
        screen_width=screen[0],
        screen_height=screen[1],
    )


@pytest.fixture(scope="module")
def nats() -> Iterator[EmbeddedNats]:
    server = EmbeddedNats().start()
    yield server
    server.cleanup()


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeLLM]:
    server = FakeLLM().start()
    yield server
    server.stop()


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def client(nats: EmbeddedNats) -> AsyncIterator[NatsBroker]:
    broker = make_broker(nats.url, "grounder-test-client")
    await broker.start()
    yield broker
    await broker.stop()
