"""The provisioner image: its Dockerfile, and the image run against the real engine."""

from __future__ import annotations

import asyncio
import os
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from selfagent.bus import make_broker, request
from selfagent.bus.natsd import EmbeddedNats
from selfagent.provisioner.backend import LABEL_HOST
from selfagent.schemas import ProvisionerStatus, StatusRequest, subjects
from tests.harness.docker import build_image, require_engine

ROOT = Path(__file__).resolve().parents[3]
DOCKERFILE = ROOT / "services" / "provisioner" / "Dockerfile"
SOCKET = "/var/run/docker.sock"
# The tag compose and the test prebuild give every service image.
IMAGE = "selfagent/provisioner:latest"
SANDBOX_IMAGE = "selfagent/sandbox:test"


def test_dockerfile_has_the_shape_of_the_other_services() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"(?m)^FROM debian:bookworm-slim$", text)
    users = re.findall(r"(?m)^USER (\S+)$", text)
    assert users and users[-1] not in ("root", "0")
    assert "HEALTHCHECK" in text
    assert 'CMD ["python", "-m", "selfagent.provisioner"]' in text
    assert "PROVISIONER_BACKEND=docker" in text
    assert '".[provisioner]"' in text
    assert 'CMD ["python", "-m", "selfagent.bus.healthcheck", "provisioner"]' in text
    # Third-party dependencies are a layer of their own, before the source.
    dependencies = text.index("pip install -r /tmp/requirements.txt")
    assert text.index("COPY pyproject.toml ./") < dependencies < text.index("COPY services ")

    def shape(service: str, text: str) -> str:
        # Up to the package install, the service images are one text.
        text = text[text.index("FROM ") : text.index("rm -rf /src/build")]
        return text.replace(service, "SERVICE")

    planner = (ROOT / "services" / "planner" / "Dockerfile").read_text()
    assert shape("provisioner", text) == shape("planner", planner)


def _status(url: str) -> ProvisionerStatus | None:
    async def ask() -> ProvisionerStatus | None:
        broker = make_broker(url, "provisioner-image-test")
        await broker.start()
        try:
            return await request(
                broker, subjects.PROVISIONER_STATUS, StatusRequest(), ProvisionerStatus, timeout=3
            )
        except Exception:
            return None
        finally:
            await broker.stop()

    return asyncio.run(ask())


def _wait_warm(url: str, timeout: float) -> ProvisionerStatus:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = _status(url)
        if status is not None and any(info.state == "warm" for info in status.sandboxes):
            return status
        time.sleep(0.5)
    raise AssertionError(f"no warm desktop from the provisioner image within {timeout:.0f}s")


@pytest.fixture
def engine() -> Iterator[docker.DockerClient]:
    require_engine()
    if not os.path.exists(SOCKET):
        pytest.fail(f"the engine is not on {SOCKET}; the image needs its socket", pytrace=False)
    build_image("sandbox/Dockerfile", SANDBOX_IMAGE)
    build_image("services/provisioner/Dockerfile", IMAGE)
    client = docker.from_env()
    yield client
    client.close()


@pytest.mark.docker
def test_the_image_runs_desktops_and_a_restarted_one_adopts_them(
    engine: docker.DockerClient, nats_server: EmbeddedNats
) -> None:
    host = f"test-image-{uuid.uuid4().hex[:8]}"
    network_name = f"selfagent-test-desktop-{uuid.uuid4().hex[:8]}"
    network = engine.networks.create(network_name)
    data = engine.volumes.create(f"selfagent-test-provisioner-{uuid.uuid4().hex[:8]}")
    started: list[str] = []

    def run_provisioner() -> None:
        container = engine.containers.run(
            IMAGE,
            detach=True,
            name=f"selfagent-test-provisioner-{uuid.uuid4().hex[:8]}",
            # The test's nats-server listens on this host's loopback.
            network_mode="host",
            group_add=[str(os.stat(SOCKET).st_gid)],
            volumes={
                SOCKET: {"bind": SOCKET, "mode": "rw"},
                data.name: {"bind": "/var/lib/selfagent/provisioner", "mode": "rw"},
            },
            environment={
                "NATS_URL": nats_server.url,
                "PROVISIONER_HOST_NAME": host,
                "PROVISIONER_DOCKER_NETWORK": network_name,
                "PROVISIONER_DOCKER_IMAGE": SANDBOX_IMAGE,
                "PROVISIONER_WARM": "1",
            },
        )
        started.append(container.id or "")

    try:
        run_provisioner()
        first = _wait_warm(nats_server.url, 180)
        assert first.backend == "docker" and first.host == host
        warm_id = next(info.sandbox_id for info in first.sandboxes if info.state == "warm")

        # Stopped, the provisioner leaves its desktops running ...
        engine.containers.get(started[0]).stop(timeout=30)
        running = engine.containers.list(filters={"label": f"{LABEL_HOST}={host}"})
        assert [c.labels["selfagent.sandbox-id"] for c in running] == [warm_id]
        # ... and the next one adopts them instead of starting new ones.
        run_provisioner()
        second = _wait_warm(nats_server.url, 60)
        assert [info.sandbox_id for info in second.sandboxes] == [warm_id]
        logs = engine.containers.get(started[1]).logs().decode()
        assert f"adopted sandbox {warm_id}" in logs
    finally:
        for container_id in started:
            engine.containers.get(container_id).remove(force=True)
        for sandbox in engine.containers.list(all=True, filters={"label": f"{LABEL_HOST}={host}"}):
            sandbox.remove(force=True)
        for volume in engine.volumes.list(filters={"label": f"{LABEL_HOST}={host}"}):
            volume.remove(force=True)
        data.remove(force=True)
        network.remove()
