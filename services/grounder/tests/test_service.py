"""The grounder on a real nats-server, talking to a scripted VLM over HTTP.

The request handler's answers (a point, not found, a typed error) are
checked with the same test body on FastStream's in-memory broker and on the
real server (``bus_variant``); timing and concurrency only on the real one.
"""

from __future__ import annotations

import asyncio
import base64
import io
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from faststream.nats import NatsBroker
from PIL import Image

from selfagent.bus import RemoteError, make_broker, request
from selfagent.bus.natsd import EmbeddedNats
from selfagent.grounder.canary import run_canary
from selfagent.grounder.config import Settings
from selfagent.grounder.grounder import Grounder
from selfagent.grounder.resize import smart_resize
from selfagent.grounder.service import build
from selfagent.schemas import ErrorCode, ErrorReply, GroundResult, subjects
from tests.harness.bus import BusVariant, bus_variant
from tests.harness.fakellm import FakeLLM

from .conftest import ground_request

__all__ = ["bus_variant"]

pytestmark = pytest.mark.asyncio(loop_scope="session")


def sent_image_size(body: dict[str, Any]) -> tuple[int, int]:
    for message in body["messages"]:
        if isinstance(message["content"], list):
            for part in message["content"]:
                if part["type"] == "image_url":
                    data = part["image_url"]["url"].split(",", 1)[1]
                    return Image.open(io.BytesIO(base64.b64decode(data))).size
    raise AssertionError("no image in the request")


def tars_answer_for(screen_point: tuple[int, int], screen: tuple[int, int]) -> Any:
    """A UI-TARS-1.5 stand-in: answers the point in pixels of the image it received."""

    def reply(body: dict[str, Any]) -> dict[str, Any]:
        w, h = sent_image_size(body)
        mx = round(screen_point[0] * w / screen[0])
        my = round(screen_point[1] * h / screen[1])
        return {"content": f"Thought: found it.\nAction: click(point='<point>{mx} {my}</point>')"}

    return reply


def tars_settings(nats_url: str, fake: FakeLLM) -> Settings:
    return Settings(
        nats_url=nats_url,
        api_base_url=fake.base_url,
        model="UI-TARS-1.5-7B",
        family="ui-tars-1.5",
        timeout=1.0,
        retries=1,
        deadline=4.0,
        canary=False,
        concurrency=4,
    )


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def grounder_service(nats: EmbeddedNats, fake: FakeLLM) -> AsyncIterator[Grounder]:
    service = build(tars_settings(nats.url, fake))
    await service.start()
    yield service.grounder
    await service.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def bus_client(bus_variant: BusVariant, fake: FakeLLM) -> AsyncIterator[NatsBroker]:
    """A client of a grounder service built as in production, on either bus."""
    service = build(tars_settings(bus_variant.url, fake))
    client = make_broker(bus_variant.url, "grounder-test-client")
    async with bus_variant.running(service.broker, client, start=service.start, stop=service.stop):
        yield client


async def ground(client: NatsBroker, **kwargs: Any) -> GroundResult:
    return await request(
        client, subjects.GROUND, ground_request(**kwargs), GroundResult, timeout=10
    )


async def test_maps_smart_resized_pixels_back_to_the_screen(
    bus_client: NatsBroker, fake: FakeLLM
) -> None:
    fake.reset()
    fake.push(tars_answer_for((901, 153), (1280, 720)))
    result = await ground(bus_client)
    assert result.ok and result.found
    # The model saw the smart-resized image, not the raw screenshot.
    assert sent_image_size(fake.requests[0]) == (1288, 728)
    body = fake.requests[0]
    assert body["temperature"] == 0 and body["max_tokens"] <= 256
    assert abs(result.x - 901) <= 1 and abs(result.y - 153) <= 1  # type: ignore[operator]
    assert result.method.startswith("ui-tars-1.5")
    assert result.raw and "<point>" in result.raw


async def test_downscaled_screenshot_still_answers_in_screen_pixels(
    client: NatsBroker, fake: FakeLLM, grounder_service: Grounder
) -> None:
    fake.reset()
    fake.push(tars_answer_for((1100, 620), (1280, 720)))
    result = await ground(client, image=(640, 360), screen=(1280, 720))
    h, w = smart_resize(360, 640, min_pixels=100 * 28 * 28)
    assert sent_image_size(fake.requests[0]) == (w, h) == (644, 364)
    # One model pixel is ~2 screen pixels here.
    assert abs(result.x - 1100) <= 2 and abs(result.y - 620) <= 2  # type: ignore[operator]


async def test_refusal_is_not_found_not_a_click(bus_client: NatsBroker, fake: FakeLLM) -> None:
    fake.reset()
    fake.push({"content": "Action: click(point='<point>-1 -1</point>')"})
    result = await ground(bus_client)
    assert result.ok and not result.found
    assert result.x is None and result.y is None
    assert result.error is not None and result.error.code == ErrorCode.NOT_FOUND
    fake.push({"content": "I can't find that element on this screen."})
    result = await ground(bus_client)
    assert not result.found and result.error and result.error.code == ErrorCode.NOT_FOUND


async def test_invalid_request_gets_a_typed_error(bus_client: NatsBroker) -> None:
    response = await bus_client.request(b'{"description": ""}', subjects.GROUND, timeout=5)
    reply = ErrorReply.model_validate_json(response.body)
    assert not reply.ok and reply.error and reply.error.code == ErrorCode.INVALID_MESSAGE
    assert "screenshot" in reply.error.message


async def test_undecodable_image_gets_a_typed_error(bus_client: NatsBroker) -> None:
    bad = ground_request()
    bad.screenshot.data_b64 = base64.b64encode(b"not an image").decode()
    with pytest.raises(RemoteError) as info:
        await request(bus_client, subjects.GROUND, bad, GroundResult, timeout=5)
    assert info.value.code == ErrorCode.INVALID_MESSAGE


async def test_vlm_500_is_a_clear_error_and_the_service_goes_on(
    bus_client: NatsBroker, fake: FakeLLM
) -> None:
    fake.reset()
    boom = {"status": 500, "body": {"error": {"message": "model crashed"}}}
    fake.push(boom, boom)  # first try and the one retry
    with pytest.raises(RemoteError) as info:
        await ground(bus_client)
    assert info.value.code == ErrorCode.LLM_ERROR
    assert "500" in str(info.value)
    assert len(fake.requests) == 2
    fake.push(tars_answer_for((10, 10), (1280, 720)))
    assert (await ground(bus_client)).found


async def test_vlm_timeout_is_bounded(
    client: NatsBroker, fake: FakeLLM, grounder_service: Grounder
) -> None:
    fake.reset()
    slow = {"delay": 3.0, "content": "(1,1)"}
    fake.push(slow, slow)
    started = time.monotonic()
    with pytest.raises(RemoteError) as info:
        await ground(client)
    elapsed = time.monotonic() - started
    assert info.value.code == ErrorCode.TIMEOUT
    # timeout 1 s, one retry, deadline 4 s.
    assert elapsed < 4.5
    fake.push(tars_answer_for((10, 10), (1280, 720)))
    assert (await ground(client)).found


async def test_429_waits_retry_after_then_succeeds(
    client: NatsBroker, fake: FakeLLM, grounder_service: Grounder
) -> None:
    fake.reset()
    fake.push(
        {"status": 429, "headers": {"Retry-After": "0.3"}, "body": {"error": {"message": "slow"}}},
        tars_answer_for((640, 360), (1280, 720)),
    )
    started = time.monotonic()
    result = await ground(client)
    assert result.found and time.monotonic() - started >= 0.3
    assert len(fake.requests) == 2


async def test_client_error_is_not_retried(bus_client: NatsBroker, fake: FakeLLM) -> None:
    fake.reset()
    fake.push({"status": 400, "body": {"error": {"message": "image input is not supported"}}})
    with pytest.raises(RemoteError) as info:
        await ground(bus_client)
    assert "image input is not supported" in str(info.value)
    assert len(fake.requests) == 1


async def test_truncated_body_is_an_error_not_a_crash(
    bus_client: NatsBroker, fake: FakeLLM
) -> None:
    fake.reset()
    fake.push({"raw": b'{"id": "x", "choices": [{"mess'})
    with pytest.raises(RemoteError) as info:
        await ground(bus_client)
    assert info.value.code == ErrorCode.LLM_ERROR


async def test_one_replica_runs_requests_concurrently(
    client: NatsBroker, fake: FakeLLM, grounder_service: Grounder
) -> None:
    fake.reset()
    answer = tars_answer_for((50, 60), (1280, 720))
    fake.reset(default=lambda body: {**answer(body), "delay": 0.6})
    results = await asyncio.gather(*(ground(client) for _ in range(4)))
    overlap = fake.max_in_flight
    fake.reset()
    assert all(r.found for r in results)
    # The VLM saw the four requests at the same time: one replica did not
    # serialize them.
    assert overlap >= 4, overlap


async def test_canary_agrees_with_the_right_format(fake: FakeLLM) -> None:
    settings = Settings(
        api_base_url=fake.base_url, model="UI-TARS-1.5-7B", family="ui-tars-1.5", timeout=2
    )
    grounder = Grounder.from_settings(settings)
    try:
        fake.reset()
        fake.push(tars_answer_for((952, 492), (1280, 720)))
        first = await run_canary(grounder)
        assert first is not None and first.agrees
        # The same answer read by a model that really speaks 0-1000 lands elsewhere.
        fake.push({"content": "Action: click(point='<point>744 683</point>')"})
        outcome = await run_canary(grounder)
        assert outcome is not None and not outcome.agrees and outcome.answered is not None
        # An endpoint that is down is logged, not raised.
        fake.push({"status": 503, "body": {}}, {"status": 503, "body": {}}, {"status": 503})
        down = await run_canary(grounder)
        assert down is not None and not down.agrees and down.answered is None
    finally:
        fake.reset()
        await grounder.aclose()


async def test_canary_is_skipped_without_a_model() -> None:
    assert await run_canary(Grounder.from_settings(Settings(family="ocr"))) is None
