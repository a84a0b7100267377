"""A gateway whose NATS credentials are refused stops with one clear line (status 2)
instead of serving a page that can never reach the bus."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator

import pytest

from selfagent.bus.natsd import EmbeddedNats, free_port

USERS = 'authorization { users: [ { user: gateway, password: "the-right-one" } ] }\n'


@pytest.fixture(scope="module")
def locked_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedNats]:
    server = EmbeddedNats(store_dir=tmp_path_factory.mktemp("nats"), extra_config=USERS)
    server.start()
    yield server
    server.cleanup()


def test_refused_credentials_stop_the_gateway_with_status_2(locked_nats: EmbeddedNats) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "selfagent.gateway"],
        env={
            **os.environ,
            "SELFAGENT_TOKEN": secrets.token_urlsafe(24),
            "NATS_URL": f"nats://gateway:a-wrong-one@127.0.0.1:{locked_nats.port}",
            "GATEWAY_HOST": "127.0.0.1",
            "GATEWAY_PORT": str(free_port()),
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    ours = [line for line in done.stderr.splitlines() if "selfagent.gateway:" in line]
    assert any("cannot run:" in line and "authorization" in line.lower() for line in ours), ours
    assert "a-wrong-one" not in done.stderr, "the password reached the log"
    assert "Traceback" not in done.stderr
