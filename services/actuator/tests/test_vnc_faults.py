"""The VNC link failing: wrong password, server killed and restarted mid-run."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest
from faststream.nats import NatsBroker

from selfagent.actuator.config import Settings
from selfagent.actuator.service import build
from selfagent.bus import RemoteError, make_broker, request
from selfagent.bus.natsd import EmbeddedNats
from selfagent.schemas import (
    ActionResult,
    ActRequest,
    ErrorCode,
    MoveAction,
    Observation,
    ObserveRequest,
    subjects,
)
from tests.harness.desktop import Desktop, start_desktop

pytestmark = pytest.mark.desktop


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
                time.sleep(0.1)
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
