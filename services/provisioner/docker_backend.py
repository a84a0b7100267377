"""Sandbox desktops as containers of the sandbox image, through the Docker Engine API.

Each container runs as the image's non-root user with every capability
dropped, ``no-new-privileges``, CPU/memory/pids limits, 512 MiB of shared
memory (Firefox), on the desktop network only (never the bus), with its
home on a named volume. Its secrets are generated here, given to it as the
environment ``sandbox/start.sh`` reads (``VNC_PASSWORD``,
``SANDBOX_EXEC_TOKEN``; the script hands them to the two servers and
removes them from the desktop session) and kept in the state store, not in
labels: ``docker inspect`` shows labels to whoever can list containers.
(It shows the environment too, to the same people; but they can also exec
into the container, so that is the engine's trust boundary, not ours.)

Readiness (the Xfce panel shows, then VNC greets) is probed either with
``docker exec`` (no route to the desktop network needed) or, behind the
filtering Docker proxy of compose, which refuses exec, through the desktop's
own exec endpoint with its own token (the provisioner then joins the desktop
network).

The Docker SDK is synchronous; every call runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
import urllib.request
from dataclasses import replace
from typing import Any, Literal

import docker
from docker.errors import APIError, DockerException, ImageNotFound, NotFound
from docker.models.containers import Container
from docker.types import LogConfig

from selfagent.errors import ConfigError, ProvisionerError, SandboxStartFailed

from .backend import (
    LABEL_HOME,
    LABEL_HOST,
    LABEL_SANDBOX,
    LABEL_SANDBOX_ID,
    LABEL_SESSION,
    Endpoint,
    SandboxBackend,
    SandboxHandle,
    Secrets,
    home_name,
    now,
)
from .config import tame_host
from .state import StateStore

log = logging.getLogger(__name__)

# Fixed by the sandbox image (sandbox/Dockerfile).
SANDBOX_HOME = "/home/agent"
SANDBOX_USER = "agent"
VNC_PORT = 5901
EXEC_PORT = 8700
HEALTHCHECK = "/opt/selfagent/sandbox/healthcheck.sh"
PANEL_PROBE = ["xdotool", "search", "--onlyvisible", "--name", "xfce4-panel"]
ReadyProbe = Literal["exec", "endpoint"]
# Never through an HTTP proxy from the environment: the desktop is on a local network.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))
# `docker exec` gives its process the container's environment, secrets
# included, and a probe runs while the desktop session does: blank them, so
# no probe is a process the desktop user could read them from. The health
# check still probes the exec endpoint (it would infer that from the token).
_PROBE_ENV = {
    "DISPLAY": ":1",
    "VNC_PASSWORD": "",
    "SANDBOX_EXEC_TOKEN": "",
    "SANDBOX_EXEC_ENABLED": "1",
}


class DockerBackend(SandboxBackend):
    name = "docker"
    keeps_running = True

    def __init__(
        self,
        state: StateStore,
        *,
        host: str | None,
        image: str = "selfagent/sandbox:latest",
        network: str = "selfagent-desktop",
        address: str = "ip",
        cpus: float = 1.0,
        memory: str = "1g",
        pids: int = 512,
        shm: str = "512m",
        screen: tuple[int, int] = (1280, 720),
        start_timeout: float = 90.0,
        stop_timeout: int = 3,
        ready_settle: float = 1.0,
        ready_probe: ReadyProbe = "exec",
        proxy: str = "",
        client: docker.DockerClient | None = None,
    ) -> None:
        self.state = state
        self.image = image
        self.network = network
        self.address = address
        self.cpus = cpus
        self.memory = memory
        self.pids = pids
        self.shm = shm
        self.screen = screen
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        # Like local mode: the panel is the last part of Xfce to appear, and
        # a moment later the desktop is drawn.
        self.ready_settle = ready_settle
        self.ready_probe = ready_probe
        self.proxy = proxy
        self._client = client
        # Known once the engine answers, if not given.
        self._host = host

    @property
    def host(self) -> str:
        if self._host is None:
            raise ProvisionerError("the Docker backend is not open")
        return self._host

    @property
    def client(self) -> docker.DockerClient:
        if self._client is None:
            raise ProvisionerError("the Docker backend is not open")
        return self._client

    def _open(self) -> None:
        if self._client is None:
            try:
                # Several starts and checks run at once, each in its own thread.
                self._client = docker.from_env(max_pool_size=16)
                self._client.ping()
            except DockerException as exc:
                self._client = None
                raise ConfigError(f"no Docker engine answers: {exc}") from exc
        if self._host is None:
            # The engine's machine: stable across restarts of a provisioner
            # container, whose own host name changes every time.
            self._host = tame_host(str(self.client.info().get("Name") or "docker"))
        try:
            self.client.images.get(self.image)
        except ImageNotFound as exc:
            raise ConfigError(
                f"sandbox image {self.image} not found: build it with "
                "`docker build -f sandbox/Dockerfile -t selfagent/sandbox:latest .`"
            ) from exc
        try:
            self.client.networks.get(self.network)
        except NotFound as exc:
            raise ConfigError(
                f"docker network {self.network} not found: sandboxes join only the desktop "
                "network; create it or set PROVISIONER_DOCKER_NETWORK"
            ) from exc

    async def open(self) -> None:
        await asyncio.to_thread(self._open)

    async def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    # -- starting ------------------------------------------------------------

    def _container_name(self, sandbox_id: str, session_id: str | None) -> str:
        return f"selfagent-sandbox-{sandbox_id}" + (f"-{session_id}" if session_id else "")

    def _endpoint(self, container: Container) -> Endpoint:
        container.reload()
        if self.address == "name":
            where = container.name or ""
        else:
            networks = container.attrs["NetworkSettings"]["Networks"]
            where = (networks.get(self.network) or {}).get("IPAddress") or ""
            if not where:
                if container.status not in ("created", "running"):
                    raise self._stopped(container)
                raise SandboxStartFailed(f"container has no address on network {self.network}")
        return Endpoint(where, VNC_PORT, f"http://{where}:{EXEC_PORT}")

    def _proxy_env(self) -> dict[str, str]:
        if not self.proxy:
            return {}
        # Both spellings: programs differ in which they read.
        env = {
            "HTTP_PROXY": self.proxy,
            "HTTPS_PROXY": self.proxy,
            "NO_PROXY": "localhost,127.0.0.1",
        }
        return env | {name.lower(): value for name, value in env.items()}

    def _labels(self, sandbox_id: str, session_id: str | None, home: str) -> dict[str, str]:
        return {
            LABEL_SANDBOX: "1",
            LABEL_SANDBOX_ID: sandbox_id,
            # Labels cannot change after creation: a warm container keeps an
            # empty session label; its record and its name say who leased it.
            LABEL_SESSION: session_id or "",
            LABEL_HOST: self.host,
            LABEL_HOME: home,
        }

    def _new_home(self, home: str) -> bool:
        """Make sure the home volume exists; True if this call created it."""
        try:
            self.client.volumes.get(home)
            return False
        except NotFound:
            # Created with labels so that tests and operators can find every home.
            self.client.volumes.create(name=home, labels={LABEL_HOME: "1", LABEL_HOST: self.host})
            return True

    def _run(self, sandbox_id: str, session_id: str | None, home: str) -> SandboxHandle:
        secrets = Secrets.generate()
        labels = self._labels(sandbox_id, session_id, home)
        name = self._container_name(sandbox_id, session_id)
        try:
            container = self.client.containers.run(
                self.image,
                detach=True,
                name=name,
                environment={
                    "VNC_PASSWORD": secrets.vnc_password,
                    "SANDBOX_EXEC_TOKEN": secrets.exec_token,
                    "SCREEN_WIDTH": str(self.screen[0]),
                    "SCREEN_HEIGHT": str(self.screen[1]),
                    **self._proxy_env(),
                },
                labels=labels,
                volumes={home: {"bind": SANDBOX_HOME, "mode": "rw"}},
                network=self.network,
                nano_cpus=int(self.cpus * 1_000_000_000),
                mem_limit=self.memory,
                # The same figure: no swap on top of the memory limit.
                memswap_limit=self.memory,
                pids_limit=self.pids,
                shm_size=self.shm,
                cap_drop=["ALL"],
                security_opt=["no-new-privileges:true"],
                log_config=LogConfig(
                    type=LogConfig.types.JSON, config={"max-size": "10m", "max-file": "2"}
                ),
            )
        except DockerException:
            # `run` creates, then starts: a container that failed to start still exists.
            with contextlib.suppress(DockerException):
                self.client.containers.get(name).remove(force=True)
            raise
        try:
            handle = SandboxHandle(
                sandbox_id=sandbox_id,
                session_id=session_id,
                home=home,
                endpoint=self._endpoint(container),
                secrets=secrets,
                labels=labels,
                started_at=now(),
                screen=self.screen,
                ref=str(container.id),
            )
            # Recorded before it is ready: a provisioner that dies now can
            # still adopt it (or remove it) at its next start.
            self.state.save_sandbox(sandbox_id, handle.record(self.name, name=container.name))
            if self.ready_probe == "endpoint":
                self._wait_ready_endpoint(container, handle)
            else:
                self._wait_ready(container)
        except BaseException:
            self._remove(container, sandbox_id)
            raise
        return handle

    @staticmethod
    def _stopped(container: Container) -> SandboxStartFailed:
        tail = container.logs(tail=20).decode(errors="replace").strip()
        return SandboxStartFailed(
            f"sandbox container stopped while starting ({container.status}): {tail}"
        )

    def _exec_ok(self, container: Container, cmd: list[str]) -> bool:
        try:
            code, out = container.exec_run(cmd, user=SANDBOX_USER, environment=_PROBE_ENV)
        except APIError:
            return False
        return code == 0 and isinstance(out, bytes) and bool(out.strip())

    def _wait_ready(self, container: Container) -> None:
        deadline = time.monotonic() + self.start_timeout
        probe = PANEL_PROBE
        while time.monotonic() < deadline:
            container.reload()
            if container.status not in ("created", "running"):
                raise self._stopped(container)
            if self._exec_ok(container, probe):
                if probe is PANEL_PROBE:
                    # The panel is up; now the VNC banner and the exec endpoint.
                    probe = ["sh", "-c", f"{HEALTHCHECK} && echo ok"]
                    continue
                time.sleep(self.ready_settle)
                return
            time.sleep(0.2)
        raise SandboxStartFailed(f"sandbox desktop not ready within {self.start_timeout:.0f}s")

    @staticmethod
    def _endpoint_ok(handle: SandboxHandle, command: str) -> bool:
        request = urllib.request.Request(
            f"{handle.endpoint.exec_url}/exec",
            data=json.dumps({"command": command, "timeout": 5}).encode(),
            headers={
                "Authorization": f"Bearer {handle.secrets.exec_token}",
                "Content-Type": "application/json",
            },
            method="POST",
        )
        try:
            with _DIRECT.open(request, timeout=10) as reply:
                result = json.loads(reply.read())
        except (OSError, ValueError):
            return False
        return (
            isinstance(result, dict)
            and result.get("exit_code") == 0
            and bool(str(result.get("stdout") or "").strip())
        )

    @staticmethod
    def _vnc_greets(handle: SandboxHandle) -> bool:
        try:
            with socket.create_connection(
                (handle.endpoint.vnc_host, handle.endpoint.vnc_port), timeout=3
            ) as sock:
                return sock.recv(12).startswith(b"RFB ")
        except OSError:
            return False

    def _wait_ready_endpoint(self, container: Container, handle: SandboxHandle) -> None:
        deadline = time.monotonic() + self.start_timeout
        panel = " ".join(PANEL_PROBE)
        while time.monotonic() < deadline:
            container.reload()
            if container.status not in ("created", "running"):
                raise self._stopped(container)
            if self._endpoint_ok(handle, panel) and self._vnc_greets(handle):
                time.sleep(self.ready_settle)
                return
            time.sleep(0.2)
        raise SandboxStartFailed(f"sandbox desktop not ready within {self.start_timeout:.0f}s")

    async def create(self, sandbox_id: str, session_id: str | None, home: str) -> SandboxHandle:
        try:
            fresh = await asyncio.to_thread(self._new_home, home)
        except DockerException as exc:
            raise SandboxStartFailed(f"cannot create home {home}: {exc}") from exc
        try:
            return await asyncio.to_thread(self._run, sandbox_id, session_id, home)
        except BaseException as exc:
            if fresh:
                # Made for this start and never used: nobody's data is in it.
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(self._remove_volume, home)
            if isinstance(exc, DockerException):
                raise SandboxStartFailed(f"desktop {sandbox_id} did not start: {exc}") from exc
            raise

    def _bind(self, handle: SandboxHandle, session_id: str) -> SandboxHandle:
        bound = handle.bound_to(session_id)
        name = self._container_name(handle.sandbox_id, session_id)
        try:
            container = self.client.containers.get(handle.ref)
            # So that `docker ps` shows whose desktop it is.
            container.rename(name)
            if self.address == "name":
                bound = replace(bound, endpoint=self._endpoint(container))
        except APIError as exc:
            log.warning("could not rename sandbox %s: %s", handle.sandbox_id, exc)
        self.state.save_sandbox(handle.sandbox_id, bound.record(self.name, name=name))
        return bound

    async def bind(self, handle: SandboxHandle, session_id: str) -> SandboxHandle:
        return await asyncio.to_thread(self._bind, handle, session_id)

    # -- stopping ------------------------------------------------------------

    def _remove(self, container: Container, sandbox_id: str) -> None:
        try:
            if container.status == "running":
                container.stop(timeout=self.stop_timeout)
            container.remove(force=True)
        except NotFound:
            pass
        self.state.drop_sandbox(sandbox_id)

    def _remove_volume(self, name: str) -> bool:
        # The engine may still hold the volume for a moment after the
        # container that used it is gone.
        for attempt in range(20):
            try:
                self.client.volumes.get(name).remove()
                return True
            except NotFound:
                return False
            except APIError as exc:
                if exc.status_code != 409 or attempt == 19:
                    raise ProvisionerError(f"cannot delete home {name}: {exc}") from exc
                time.sleep(0.1)
        return False

    def _destroy(self, handle: SandboxHandle, keep_home: bool) -> None:
        try:
            container = self.client.containers.get(handle.ref)
        except NotFound:
            self.state.drop_sandbox(handle.sandbox_id)
        else:
            self._remove(container, handle.sandbox_id)
        if not keep_home:
            self._remove_volume(handle.home)

    async def destroy(self, handle: SandboxHandle, keep_home: bool) -> None:
        await asyncio.to_thread(self._destroy, handle, keep_home)

    async def delete_home(self, session_id: str) -> bool:
        home = self.state.unbind_home(session_id) or home_name(session_id)
        return await asyncio.to_thread(self._remove_volume, home)

    # -- finding and checking ------------------------------------------------

    def _state_of(self, handle: SandboxHandle) -> dict[str, Any] | None:
        try:
            container = self.client.containers.get(handle.ref)
        except NotFound:
            return None
        state: dict[str, Any] = container.attrs.get("State") or {}
        return state

    async def alive(self, handle: SandboxHandle) -> bool:
        try:
            state = await asyncio.to_thread(self._state_of, handle)
        except DockerException as exc:
            # The engine not answering says nothing about the desktop.
            log.warning("cannot check sandbox %s: %s", handle.sandbox_id, exc)
            return True
        return bool(state and state.get("Running"))

    async def why_dead(self, handle: SandboxHandle) -> str:
        try:
            state = await asyncio.to_thread(self._state_of, handle)
        except DockerException as exc:
            return f"the engine cannot tell: {exc}"
        if state is None:
            return "the container was removed"
        reason = f"the container {state.get('Status', 'stopped')} with code {state.get('ExitCode')}"
        if state.get("OOMKilled"):
            reason += " (killed: out of memory)"
        if state.get("Error"):
            reason += f": {state['Error']}"
        return reason

    def _scan(self) -> list[SandboxHandle]:
        records = {
            sandbox_id: record
            for sandbox_id, record in self.state.sandboxes().items()
            if record.get("backend") == self.name
            and (record.get("labels") or {}).get(LABEL_HOST) == self.host
        }
        containers = self.client.containers.list(
            all=True, filters={"label": [f"{LABEL_SANDBOX}=1", f"{LABEL_HOST}={self.host}"]}
        )
        homes = set(self.state.homes().values())
        adopted: list[SandboxHandle] = []
        seen: set[str] = set()
        for container in containers:
            labels = container.labels
            sandbox_id = labels.get(LABEL_SANDBOX_ID, "")
            record = records.get(sandbox_id)
            warm_home = labels.get(LABEL_HOME, "")
            if record is None or record.get("ref") != container.id:
                # Nobody can reach it without its secrets, and nobody will stop it.
                log.warning("removing orphaned sandbox container %s (no record)", container.name)
                with contextlib.suppress(NotFound):
                    container.remove(force=True)
                # A home that no session is bound to was a warm desktop's.
                if warm_home and warm_home == home_name(sandbox_id) and warm_home not in homes:
                    self._remove_volume(warm_home)
                continue
            seen.add(sandbox_id)
            handle = SandboxHandle.from_record(record)
            if container.status != "running":
                log.info("sandbox %s has stopped (%s); removing it", sandbox_id, container.status)
                self._remove(container, sandbox_id)
                if handle.session_id is None:
                    self._remove_volume(handle.home)
                continue
            try:
                endpoint = self._endpoint(container)
            except SandboxStartFailed as exc:
                log.warning("sandbox %s cannot be adopted: %s", sandbox_id, exc)
                self._remove(container, sandbox_id)
                continue
            adopted.append(replace(handle, endpoint=endpoint))
        for sandbox_id, record in records.items():
            if sandbox_id not in seen:
                log.info("sandbox %s is gone; forgetting it", sandbox_id)
                self.state.drop_sandbox(sandbox_id)
                if record.get("session_id") is None:
                    self._remove_volume(record["home"])
        return adopted

    async def list_existing(self) -> list[SandboxHandle]:
        await self.open()
        return await asyncio.to_thread(self._scan)
