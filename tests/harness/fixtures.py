"""Session fixtures shared by every test folder: one real nats-server, one real desktop."""

from __future__ import annotations

import os
import secrets
import tempfile
from collections.abc import Iterator

import pytest

from selfagent.bus.natsd import EmbeddedNats, free_port
from tests.harness import prebuild
from tests.harness.desktop import Desktop, start_desktop
from tests.harness.docker import SKIP_ENV, engine_available


def _is_xdist_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


class _DockerLast:
    """Without xdist, Docker tests run last so that the builds overlap the rest."""

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        docker = [item for item in items if item.get_closest_marker("docker")]
        items[:] = [item for item in items if not item.get_closest_marker("docker")] + docker


def pytest_configure(config: pytest.Config) -> None:
    if not _is_xdist_worker(config) and config.getoption("dist", "no") == "no":
        config.pluginmanager.register(_DockerLast(), "selfagent-docker-last")
    # One status directory for the whole run, made before xdist starts its
    # workers so that they all inherit it.
    if not _is_xdist_worker(config) and prebuild.DIR_ENV not in os.environ:
        os.environ[prebuild.DIR_ENV] = tempfile.mkdtemp(prefix="selfagent-prebuild-")


def pytest_unconfigure(config: pytest.Config) -> None:
    if not _is_xdist_worker(config):
        prebuild.stop_builder()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Start the image builds as soon as a Docker test is collected, and tell
    the xdist scheduler (below) which tests need Docker."""
    docker = [item for item in items if item.get_closest_marker("docker")]
    if docker and os.environ.get(SKIP_ENV) != "1" and engine_available() is None:
        prebuild.ensure_started()
    if _is_xdist_worker(config):
        prebuild.record_docker_tests([item.nodeid for item in docker])


def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object | None:
    """With `--dist loadgroup`: each test file on one worker (its module
    fixtures start a desktop or a stack once), and every Docker test on one
    worker, which waits for the image builds while the others run the rest.

    (xdist's own `xdist_group` marks do not take effect under pytest 9, whose
    items ignore the node-id suffix xdist writes, so the grouping is done
    here, in the scheduler.)
    """
    if config.getoption("dist", "no") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class FileOrDockerScheduling(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            if nodeid in prebuild.docker_tests():
                return "docker"
            return nodeid.split("::", 1)[0]

    return FileOrDockerScheduling(config, log)


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
