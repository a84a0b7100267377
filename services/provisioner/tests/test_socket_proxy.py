"""The filtering Docker API proxy against the real engine: the backend works through it,
and what could take the host is refused."""

from __future__ import annotations

import contextlib
import json
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pytest
from docker.errors import APIError, NotFound

from selfagent.provisioner.backend import LABEL_HOME, LABEL_HOST, LABEL_SANDBOX
from selfagent.provisioner.docker_backend import DockerBackend
from selfagent.provisioner.socket_proxy import Settings
from selfagent.provisioner.state import StateStore
from tests.harness.docker import build_image, require_engine

from .helpers import (
    ProxyThread,
    first_frame,
    free_tcp_port,
    running_pool,
    shell,
    unique_host,
    wait_until,
    warm_count,
)

pytestmark = pytest.mark.docker

IMAGE = "selfagent/sandbox:test"
SCREEN = (1024, 640)
NNP = ["no-new-privileges:true"]


@dataclass
class Proxied:
    direct: docker.DockerClient
    client: docker.DockerClient
    port: int
    network: str
    host: str

    def sandbox_kwargs(self, **overrides: Any) -> dict[str, Any]:
        """What a legitimate sandbox create looks like; a test changes one thing."""
        kwargs: dict[str, Any] = {
            "name": f"selfagent-sandbox-t{uuid.uuid4().hex[:8]}",
            "labels": {LABEL_SANDBOX: "1", LABEL_HOST: self.host},
            "network": self.network,
            "security_opt": NNP,
            "cap_drop": ["ALL"],
        }
        kwargs.update(overrides)
        return kwargs

    def raw(self, method: str, path: str, body: bytes = b"") -> tuple[int, dict[str, Any]]:
        """One HTTP request to the proxy, bypassing the SDK's own checks."""
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: proxy\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        with socket.create_connection(("127.0.0.1", self.port), timeout=30) as sock:
            sock.sendall(head.encode() + body)
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        head_bytes, _, payload = data.partition(b"\r\n\r\n")
        status = int(head_bytes.split(b" ", 2)[1])
        return status, json.loads(payload) if payload else {}


@pytest.fixture(scope="module")
def image() -> str:
    require_engine()
    build_image("sandbox/Dockerfile", IMAGE)
    return IMAGE


@pytest.fixture
def proxied(image: str) -> Iterator[Proxied]:
    direct = docker.from_env()
    network = direct.networks.create(f"selfagent-test-desktop-{uuid.uuid4().hex[:8]}")
    port = free_tcp_port()
    settings = Settings(listen_host="127.0.0.1", port=port, image=image, network=network.name or "")
    with ProxyThread(settings):
        client = docker.DockerClient(base_url=f"tcp://127.0.0.1:{port}", timeout=60)
        found = Proxied(direct, client, port, network.name or "", unique_host())
        try:
            yield found
        finally:
            client.close()
            for container in direct.containers.list(
                all=True, filters={"label": f"{LABEL_HOST}={found.host}"}
            ):
                container.remove(force=True)
            for volume in direct.volumes.list(filters={"label": f"{LABEL_HOST}={found.host}"}):
                volume.remove(force=True)
            network.remove()
            direct.close()


@contextlib.contextmanager
def foreign_container(direct: docker.DockerClient) -> Iterator[Any]:
    """A container that is not selfagent's (no label), started behind the proxy's back."""
    container = direct.containers.run(
        "debian:bookworm-slim", ["sleep", "300"], detach=True, name=f"other-{uuid.uuid4().hex[:8]}"
    )
    try:
        yield container
    finally:
        container.remove(force=True)


def _refused(call: Any, *words: str) -> str:
    with pytest.raises(APIError) as caught:
        call()
    assert caught.value.status_code == 403, caught.value
    message = str(caught.value.explanation)
    assert message.startswith("selfagent docker proxy:"), message
    for word in words:
        assert word in message, message
    return message


async def test_the_backend_runs_sandboxes_through_the_proxy(
    proxied: Proxied, tmp_path: Path
) -> None:
    state = StateStore(tmp_path)
    backend = DockerBackend(
        state,
        host=proxied.host,
        image=IMAGE,
        network=proxied.network,
        screen=SCREEN,
        start_timeout=180,
        # The proxy refuses exec: readiness through the desktop's own endpoint.
        ready_probe="endpoint",
        client=proxied.client,
    )
    await backend.open()
    async with running_pool(backend, state, warm=1, max_per_host=3) as (pool, _events):
        await wait_until(lambda: warm_count(pool) == 1, 180, "a warm container")
        warm = await pool.lease("via-warm")
        cold = await pool.lease("via-cold")
        # The second may wait for the warm refill already starting, or start cold.
        assert warm.warm
        for outcome, session in ((warm, "via-warm"), (cold, "via-cold")):
            handle = outcome.handle
            attrs = proxied.direct.containers.get(handle.ref).attrs
            assert attrs["Config"]["Labels"][LABEL_SANDBOX] == "1"
            assert list(attrs["NetworkSettings"]["Networks"]) == [proxied.network]
            assert attrs["HostConfig"]["CapDrop"] == ["ALL"]
            assert not attrs["HostConfig"]["Privileged"]
            assert attrs["Config"]["User"] == "agent"
            # The rename of a warm desktop went through too.
            assert attrs["Name"].endswith(f"-{session}")
            assert (
                await first_frame(
                    handle.endpoint.vnc_host, handle.endpoint.vnc_port, handle.secrets.vnc_password
                )
                == SCREEN
            )
            assert (await shell(handle, "id -un")).json()["stdout"] == "agent\n"
        # Listing and inspecting through the proxy: only selfagent's objects.
        with foreign_container(proxied.direct) as other:
            listed = {c.id for c in proxied.client.containers.list(all=True)}
            assert other.id not in listed
            assert {warm.handle.ref, cold.handle.ref} <= listed
        homes = {v.name for v in proxied.client.volumes.list()}
        assert {warm.handle.home, cold.handle.home} <= homes
        assert all(name and name.startswith("selfagent-home-") for name in homes)
        assert await backend.alive(cold.handle)
        await pool.release("via-warm", keep_home=False)
        await pool.release("via-cold", keep_home=False)
        with pytest.raises(NotFound):
            proxied.direct.containers.get(cold.handle.ref)
    # The pool's stop removed the refilled warm desktop and its home, through the proxy.
    assert not proxied.direct.containers.list(
        all=True, filters={"label": f"{LABEL_HOST}={proxied.host}"}
    )
    assert not proxied.direct.volumes.list(filters={"label": f"{LABEL_HOST}={proxied.host}"})
    # The engine's details stay behind the proxy: its name and version only.
    info = proxied.client.info()
    assert set(info) == {"Name", "ServerVersion", "OSType", "Architecture"}
    assert info["Name"] == proxied.direct.info()["Name"]
    await backend.close()


def test_what_could_take_the_host_is_refused(proxied: Proxied) -> None:
    create = proxied.client.containers.create
    _refused(lambda: create(IMAGE, **proxied.sandbox_kwargs(privileged=True)), "Privileged")
    _refused(
        lambda: create(IMAGE, **proxied.sandbox_kwargs(volumes={"/": {"bind": "/host"}})),
        "never a host path",
    )
    _refused(
        lambda: create(
            IMAGE,
            **proxied.sandbox_kwargs(
                mounts=[docker.types.Mount("/host", "/etc", type="bind", read_only=True)]
            ),
        ),
        "Mounts",
    )
    _refused(lambda: create(IMAGE, **proxied.sandbox_kwargs(labels={})), LABEL_SANDBOX)
    _refused(lambda: create("debian:bookworm-slim", **proxied.sandbox_kwargs()), "only " + IMAGE)
    _refused(lambda: create(IMAGE, **proxied.sandbox_kwargs(cap_add=["SYS_ADMIN"])), "CapAdd")
    _refused(
        lambda: create(IMAGE, **proxied.sandbox_kwargs(devices=["/dev/kmsg:/dev/kmsg"])),
        "Devices",
    )
    _refused(
        lambda: create(IMAGE, **proxied.sandbox_kwargs(network=None, network_mode="host")),
        "NetworkMode",
    )
    _refused(lambda: create(IMAGE, **proxied.sandbox_kwargs(pid_mode="host")), "PidMode")
    _refused(lambda: create(IMAGE, **proxied.sandbox_kwargs(ipc_mode="host")), "IpcMode")
    _refused(lambda: create(IMAGE, **proxied.sandbox_kwargs(userns_mode="host")), "UsernsMode")
    _refused(lambda: create(IMAGE, **proxied.sandbox_kwargs(ports={"5901/tcp": 5901})), "Port")
    _refused(lambda: create(IMAGE, **proxied.sandbox_kwargs(user="root")), "root")
    _refused(lambda: create(IMAGE, **proxied.sandbox_kwargs(security_opt=[])), "no-new-priv")
    _refused(
        lambda: create(IMAGE, **proxied.sandbox_kwargs(security_opt=[*NNP, "seccomp=unconfined"])),
        "seccomp",
    )
    _refused(
        lambda: create(IMAGE, **proxied.sandbox_kwargs(name="not-a-sandbox")), "selfagent-sandbox"
    )
    _refused(
        lambda: proxied.client.volumes.create(
            "selfagent-home-x",
            driver_opts={"type": "none", "o": "bind", "device": "/"},
            labels={LABEL_HOME: "1"},
        ),
        "DriverOpts",
    )
    _refused(lambda: proxied.client.volumes.create("selfagent-home-y"), LABEL_HOME)
    # Go reads JSON keys case-insensitively: a lower-case twin is not a way round the checks.
    legit = {
        "Image": IMAGE,
        "Labels": {LABEL_SANDBOX: "1"},
        "HostConfig": {"NetworkMode": proxied.network, "SecurityOpt": NNP, "privileged": True},
    }
    name = f"selfagent-sandbox-t{uuid.uuid4().hex[:8]}"
    status, body = proxied.raw(
        "POST", f"/containers/create?name={name}", json.dumps(legit).encode()
    )
    assert status == 403 and "Privileged" in body["message"], body
    legit["HostConfig"] = {
        "NetworkMode": proxied.network,
        "SecurityOpt": NNP,
        "networkmode": "",
    }
    status, body = proxied.raw(
        "POST", f"/containers/create?name={name}", json.dumps(legit).encode()
    )
    assert status == 403 and "twice" in body["message"], body
    # Nothing of all that was created.
    assert not proxied.direct.containers.list(all=True, filters={"label": f"{LABEL_SANDBOX}=1"})
    assert "selfagent-home-x" not in {v.name for v in proxied.direct.volumes.list()}

    # What is allowed on a sandbox is refused on anybody else's container.
    with foreign_container(proxied.direct) as other:
        for call in (
            lambda: proxied.client.containers.get(other.id),
            lambda: proxied.client.api.stop(other.id),
            lambda: proxied.client.api.kill(other.id),
            lambda: proxied.client.api.remove_container(other.id, force=True),
            lambda: proxied.client.api.logs(other.id),
            lambda: proxied.client.api.rename(other.id, "selfagent-sandbox-stolen"),
        ):
            _refused(call, "not a selfagent sandbox")
        # And exec, attach and the rest are refused on every container.
        _refused(lambda: proxied.client.api.exec_create(other.id, ["id"]), "allow-list")
        other.reload()
        assert other.status == "running" and other.name.startswith("other-")

    # Exec is refused even on a sandbox; a followed log too.
    sandbox = create(IMAGE, **proxied.sandbox_kwargs())
    sid = str(sandbox.id)
    _refused(lambda: proxied.client.api.exec_create(sid, ["id"]), "allow-list")
    _refused(lambda: proxied.client.api.attach(sid, stream=False), "not allowed")
    _refused(lambda: proxied.client.api.put_archive(sid, "/tmp", b""), "allow-list")
    _refused(lambda: proxied.client.api.logs(sid, follow=True, stream=True), "follow")
    # Labels are not a way in: renaming keeps a sandbox name, start takes no HostConfig.
    _refused(lambda: proxied.client.api.rename(sid, "innocent"), "selfagent-sandbox")
    status, body = proxied.raw(
        "POST", f"/containers/{sid}/start", json.dumps({"Privileged": True}).encode()
    )
    assert status == 403 and "no body" in body["message"], body
    sandbox.remove(force=True)

    # Nothing else of the engine: images, networks, the swarm, events, building.
    _refused(lambda: proxied.client.images.get("debian:bookworm-slim"), "only the image")
    _refused(lambda: proxied.client.images.list(), "allow-list")
    _refused(lambda: proxied.client.networks.list(), "allow-list")
    _refused(lambda: proxied.client.networks.get("bridge"), "only the network")
    _refused(lambda: proxied.client.networks.create("selfagent-x"), "allow-list")
    _refused(lambda: proxied.client.images.pull("debian", tag="bookworm-slim"), "allow-list")
    for method, path in (
        ("GET", "/events"),
        ("POST", "/build"),
        ("GET", "/containers/../info"),
        ("POST", "/v1.41/swarm/init"),
    ):
        status, body = proxied.raw(method, path)
        assert status == 403, (method, path, body)

    # Volumes: only labelled homes, even under a home's name.
    stranger = proxied.direct.volumes.create("selfagent-home-stranger")
    try:
        _refused(lambda: proxied.client.volumes.get("selfagent-home-stranger"), "not a selfagent")
        _refused(lambda: proxied.client.api.remove_volume("selfagent-home-stranger"), "not a")
        _refused(lambda: proxied.client.volumes.get("some-volume"), "selfagent-home")
        assert "selfagent-home-stranger" not in {v.name for v in proxied.client.volumes.list()}
    finally:
        stranger.remove(force=True)
