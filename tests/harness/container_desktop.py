"""The sandbox image run as a container, looking like a native ``Desktop`` to tests.

Its home is a host directory bind-mounted at /home/agent, so tests read the
files the agent wrote; programs on the desktop run through ``docker exec``
as the sandbox's own non-root user.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tests.harness.desktop import Desktop
from tests.harness.docker import Container, build_image, require_engine, run, unique_name

IMAGE = "selfagent/sandbox:test"
SANDBOX_HOME = "/home/agent"
SANDBOX_UID = 1000


@dataclass
class ContainerDesktop(Desktop):
    container: Container | None = None

    def inside(self, path: Path) -> str:
        return (
            f"{SANDBOX_HOME}/{path.relative_to(self.home)}" if path != self.home else SANDBOX_HOME
        )

    def _exec(self, argv: tuple[str, ...], detach: bool = False) -> str:
        assert self.container is not None
        cmd = [
            "docker",
            "exec",
            "--user",
            "agent",
            "-e",
            "DISPLAY=:1",
            "-e",
            f"HOME={SANDBOX_HOME}",
        ]
        if detach:
            cmd.append("-d")
        return run([*cmd, self.container.name, *argv], check=False, timeout=30).stdout

    def run(self, *argv: str) -> str:
        return self._exec(argv)

    def spawn(self, *argv: str) -> None:
        self._exec(argv, detach=True)

    def xdotool(self, *args: str) -> str:
        return self._exec(("xdotool", *args))

    def stop(self) -> None:
        if self.container is not None:
            self.container.remove()
            self.container = None
        # Files the sandbox user created belong to its uid; we are done with them.
        shutil.rmtree(self.home, ignore_errors=True)


def start_container_desktop() -> ContainerDesktop:
    require_engine()
    build_image("sandbox/Dockerfile", IMAGE)
    home = Path(tempfile.mkdtemp(prefix="selfagent-chome-"))
    os.chown(home, SANDBOX_UID, SANDBOX_UID)
    password = "pw-" + secrets.token_hex(3)
    token = secrets.token_urlsafe(24)
    name = unique_name("selfagent-actuator-sandbox")
    run(
        [
            "docker",
            "run",
            "-d",
            "--name",
            name,
            "-e",
            f"VNC_PASSWORD={password}",
            "-e",
            f"SANDBOX_EXEC_TOKEN={token}",
            "-p",
            "127.0.0.1::5901",
            "-p",
            "127.0.0.1::8700",
            "-v",
            f"{home}:{SANDBOX_HOME}",
            "--shm-size",
            "256m",
            IMAGE,
        ],
        timeout=60,
    )
    handle = Container(name)
    try:
        handle.wait_healthy(timeout=120)
        desktop = ContainerDesktop(
            display_num=1,
            vnc_port=handle.host_port(5901),
            password=password,
            home=home,
            exec_port=handle.host_port(8700),
            exec_token=token,
            container=handle,
        )
        desktop.wait_for_window("xfce4-panel", timeout=60)
        time.sleep(1.0)
        return desktop
    except BaseException:
        handle.remove()
        raise
