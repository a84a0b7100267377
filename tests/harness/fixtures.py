"""Session fixtures shared by every test folder: one real nats-server, one real desktop."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator

import pytest

from selfagent.bus.natsd import EmbeddedNats, free_port
from tests.harness import prebuild
from tests.harness.desktop import Desktop, start_desktop
from tests.harness.docker import SKIP_ENV, engine_available


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Docker tests last, with their images built in the background meanwhile
    (see tests/harness/prebuild.py)."""
    docker = [item for item in items if item.get_closest_marker("docker")]
    if not docker or os.environ.get(SKIP_ENV) == "1" or engine_available() is not None:
        return
    prebuild.start()
    items[:] = [item for item in items if not item.get_closest_marker("docker")] + docker


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
