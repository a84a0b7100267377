"""Session fixtures shared by every test folder: one real nats-server, one real desktop."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest

from selfagent.bus.natsd import EmbeddedNats, free_port
from tests.harness.desktop import Desktop, start_desktop


@pytest.fixture(scope="session")
def nats_server() -> Iterator[EmbeddedNats]:
    server = EmbeddedNats().start()
    yield server
    server.cleanup()


@pytest.fixture(scope="session")
def desktop() -> Iterator[Desktop]:
    """A sandbox desktop (Xvnc + Xfce) with its exec endpoint, via sandbox/start.sh."""
    started = start_desktop(exec_port=free_port(), exec_token=secrets.token_hex(16))
    yield started
    started.stop()
