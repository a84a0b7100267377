"""The gateway process as a service: the shared runner's stop and start-failure paths.

The one place the gateway runs as ``python -m selfagent.gateway`` here; the
routes, WebSockets and the VNC bridge are tested with the service in process.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys

import httpx
import pytest

from selfagent.bus.natsd import EmbeddedNats, free_port

from .stack import start_gateway


def test_sigterm_stops_http_and_bus_then_exits_0(nats_server: EmbeddedNats) -> None:
    # No desktop: the VNC server is only dialled when a browser opens /ws/vnc.
    gw = start_gateway(nats_server.url, free_port(), "unused")
    try:
        assert httpx.get(f"{gw.url}/healthz", timeout=5).json()["nats"] == "connected"
        gw.process.terminate()
        assert gw.process.wait(15) == 0, gw.log()
        log = gw.log()
        # The lifespan stopped the bus side, then the runner said so.
        assert "Application shutdown complete" in log
        assert log.index("Application shutdown complete") < log.index(
            "INFO selfagent.gateway: stopped"
        )
        assert "Traceback" not in log
    finally:
        gw.stop()


def test_gateway_refuses_an_empty_token(nats_server: EmbeddedNats) -> None:
    with pytest.raises(RuntimeError, match="SELFAGENT_TOKEN is empty"):
        start_gateway(nats_server.url, free_port(), "unused", token=" ")


def test_port_in_use_is_one_clear_line_and_exit_2(nats_server: EmbeddedNats) -> None:
    port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        done = subprocess.run(
            [sys.executable, "-m", "selfagent.gateway"],
            env={
                **os.environ,
                "SELFAGENT_TOKEN": secrets.token_urlsafe(24),
                "NATS_URL": nats_server.url,
                "GATEWAY_HOST": "127.0.0.1",
                "GATEWAY_PORT": str(port),
            },
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 2, done.stderr
    ours = [line for line in done.stderr.splitlines() if "selfagent.gateway:" in line]
    assert ours == [ours[0]] and f"cannot run: cannot serve on 127.0.0.1:{port}" in ours[0]
    assert "address already in use" in done.stderr
    assert "Traceback" not in done.stderr
