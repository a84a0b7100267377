"""The VNC link failing: no server, wrong password, server killed and restarted mid-run."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest
from faststream.nats import NatsBroker

from selfagent.actuator.config import Settings
from selfagent.actuator.service import build
from selfagent.bus import RemoteError, make_broker, request
from selfagent.bus.natsd import EmbeddedNats, free_port
from selfagent.schemas import (
    ActionResult,
    ActRequest,
    ErrorCode,
    ErrorReply,
    MoveAction,
    Observation,
    ObserveRequest,
    subjects,
)
from tests.harness.bus import BusVariant, bus_variant
from tests.harness.desktop import Desktop, start_desktop

__all__ = ["bus_variant"]


async def _observe(client: NatsBroker, sandbox: str, timeout: float = 10) -> Observation:
    return await request(
        client,
        subjects.sandbox_observe(sandbox),
        ObserveRequest(),
        Observation,
        timeout=timeout,
    )


@pytest.fixture
async def own_desktop() -> AsyncIterator[Desktop]:
    desktop = start_desktop()
    yield desktop
    desktop.stop()


async def test_no_vnc_server_is_a_clear_error_and_bad_requests_are_typed(
    bus_variant: BusVariant,
) -> None:
    """The request handlers without any desktop, on the in-memory broker and on NATS."""
    sandbox = f"nodesk{uuid.uuid4().hex[:8]}"
    settings = Settings(
        nats_url=bus_variant.url,
        sandbox_id=sandbox,
        vnc_port=free_port(),  # nothing listens there
        vnc_wait_for_link=0.1,
        # One refused attempt is all this needs. A retry that fails just as
        # stop() cancels the link can swallow the cancellation on Python 3.11
        # (asyncio.wait_for in the RFB client), and stop() then never returns.
        vnc_retry_interval=60,
    )
    service = build(settings)
    client = make_broker(bus_variant.url, "faults-client")
    if not bus_variant.real:
        # The service's own start() would also dial NATS; its VNC link is
        # what this test needs running.
        await service.desktop.start()
    async with bus_variant.running(service.broker, client, start=service.start, stop=service.stop):
        for _ in range(2):  # twice: the first error must not take the service down
            with pytest.raises(RemoteError) as caught:
                await _observe(client, sandbox)
            assert caught.value.code == ErrorCode.VNC_UNAVAILABLE
            assert f"127.0.0.1:{settings.vnc_port} is unreachable" in str(caught.value)
            with pytest.raises(RemoteError) as act_error:
                await request(
                    client,
                    subjects.sandbox_act(sandbox),
                    ActRequest(action=MoveAction(x=1, y=1)),
                    ActionResult,
                    timeout=10,
                )
            assert act_error.value.code == ErrorCode.VNC_UNAVAILABLE
            assert "not executed" in str(act_error.value)

        for subject, body, field in (
            (subjects.sandbox_act(sandbox), b'{"action": {"action": "teleport"}}', "action"),
            (subjects.sandbox_observe(sandbox), b'{"quality": 500}', "quality"),
        ):
            raw = await client.request(body, subject, timeout=10)
            reply = ErrorReply.model_validate_json(raw.body)
            assert reply.error is not None and reply.error.code == ErrorCode.INVALID_MESSAGE
            assert field in reply.error.message


@pytest.mark.desktop
async def test_wrong_password_is_a_clear_error_and_service_keeps_serving(
    nats_server: EmbeddedNats, own_desktop: Desktop
) -> None:
    settings = Settings(
        nats_url=nats_server.url,
        sandbox_id="wrongpw",
        vnc_port=own_desktop.vnc_port,
        vnc_password="not-it",
        vnc_wait_for_link=0.5,
    )
    service = build(settings)
    await service.start()
    client = make_broker(nats_server.url, "faults-client")
    await client.start()
    try:
        for _ in range(2):  # twice: the first error must not take the service down
            with pytest.raises(RemoteError) as caught:
                await _observe(client, "wrongpw")
            assert caught.value.code == ErrorCode.VNC_UNAVAILABLE
            assert "authentication failed" in str(caught.value).lower()
            with pytest.raises(RemoteError) as act_error:
                await request(
                    client,
                    subjects.sandbox_act("wrongpw"),
                    ActRequest(action=MoveAction(x=1, y=1)),
                    ActionResult,
                    timeout=10,
                )
            assert "not executed" in str(act_error.value)
    finally:
        await client.stop()
        await service.stop()


@pytest.mark.desktop
async def test_vnc_server_killed_and_restarted(nats_server: EmbeddedNats) -> None:
    desktop = start_desktop()
    settings = Settings(
        nats_url=nats_server.url,
        sandbox_id="restart",
        vnc_port=desktop.vnc_port,
        vnc_password=desktop.password,
        vnc_wait_for_link=0.5,
    )
    service = build(settings)
    await service.start()
    await service.desktop.wait_ready(15)
    client = make_broker(nats_server.url, "restart-client")
    await client.start()
    try:
        first = await _observe(client, "restart")
        assert first.screenshot is not None

        desktop.stop()  # kills Xvnc and the whole session mid-run
        with pytest.raises(RemoteError) as caught:
            await request(
                client,
                subjects.sandbox_act("restart"),
                ActRequest(action=MoveAction(x=5, y=5)),
                ActionResult,
                timeout=10,
            )
        assert caught.value.code == ErrorCode.VNC_UNAVAILABLE
        assert "not executed" in str(caught.value) or "may have partly run" in str(caught.value)

        desktop = start_desktop(display_num=desktop.display_num, password=desktop.password)
        back_at = time.monotonic()
        while True:
            try:
                observation = await _observe(client, "restart", timeout=5)
                break
            except RemoteError:
                assert time.monotonic() - back_at < 5.0, "no reconnect within 5 s"
                # Not time.sleep: the actuator reconnects in this same event loop.
                await asyncio.sleep(0.1)
        assert observation.screenshot is not None
        moved = await request(
            client,
            subjects.sandbox_act("restart"),
            ActRequest(action=MoveAction(x=50, y=60)),
            ActionResult,
            timeout=10,
        )
        assert moved.ok and not moved.replayed
        location = desktop.xdotool("getmouselocation")
        assert location.startswith("x:50 y:60"), location
    finally:
        await client.stop()
        await service.stop()
        desktop.stop()
