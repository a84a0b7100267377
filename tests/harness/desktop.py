"""Start a real sandbox desktop (sandbox/start.sh: Xvnc + Xfce) for tests."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from selfagent.desktop import free_display, wait_for_panel

ROOT = Path(__file__).resolve().parents[2]
START_SCRIPT = ROOT / "sandbox" / "start.sh"
# Above the numbers `selfagent up` tries first, so a developer's running
# stack and a test desktop do not race for the same display.
FIRST_DISPLAY = 20


@dataclass
class Desktop:
    display_num: int
    vnc_port: int
    password: str
    home: Path
    width: int = 1280
    height: int = 720
    exec_port: int | None = None
    exec_token: str | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def display(self) -> str:
        return f":{self.display_num}"

    def env(self) -> dict[str, str]:
        return {**os.environ, "DISPLAY": self.display, "HOME": str(self.home)}

    def inside(self, path: Path) -> str:
        """The sandbox's name for a path under ``home`` (natively the same path)."""
        return str(path)

    def run(self, *argv: str) -> str:
        """Run a program on the desktop and return its stdout."""
        return subprocess.run(
            list(argv), env=self.env(), capture_output=True, text=True, timeout=30
        ).stdout

    def spawn(self, *argv: str) -> None:
        """Start a GUI program on the desktop and leave it running."""
        subprocess.Popen(
            list(argv),
            env=self.env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def xdotool(self, *args: str) -> str:
        return subprocess.run(
            ["xdotool", *args], env=self.env(), capture_output=True, text=True, timeout=20
        ).stdout

    def wait_for_window(self, name: str, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = self.xdotool("search", "--onlyvisible", "--name", name).split()
            if out:
                return out[0]
            time.sleep(0.2)
        raise TimeoutError(f"no window named {name!r} within {timeout}s")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        shutil.rmtree(self.home, ignore_errors=True)


def start_desktop(
    width: int = 1280,
    height: int = 720,
    exec_port: int | None = None,
    exec_token: str | None = None,
    display_num: int | None = None,
    password: str | None = None,
) -> Desktop:
    """Start sandbox/start.sh; pass display_num and password to restart "the same" server."""
    # The reservation is kept for this process's lifetime (it lapses when the
    # process ends): tests restart "the same" display, and no other test
    # worker may take it in between.
    num = display_num if display_num is not None else free_display(FIRST_DISPLAY)
    home = Path(tempfile.mkdtemp(prefix="selfagent-home-"))
    desktop = Desktop(
        display_num=num,
        vnc_port=5900 + num,
        password=password or "pw-" + os.urandom(4).hex(),
        home=home,
        width=width,
        height=height,
        exec_port=exec_port,
        exec_token=exec_token,
    )
    env = {
        **os.environ,
        "VNC_PASSWORD": desktop.password,
        "DISPLAY_NUM": str(num),
        "SCREEN_WIDTH": str(width),
        "SCREEN_HEIGHT": str(height),
        "SANDBOX_HOME": str(home),
    }
    if exec_port and exec_token:
        env.update(SANDBOX_EXEC_PORT=str(exec_port), SANDBOX_EXEC_TOKEN=exec_token)
    log = open(home.parent / f"selfagent-desktop-{num}.log", "wb")  # noqa: SIM115
    desktop.process = subprocess.Popen(
        [str(START_SCRIPT)], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if desktop.process.poll() is not None:
            raise RuntimeError(f"sandbox exited: {(home.parent / log.name).read_text()[-2000:]}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", desktop.vnc_port)) == 0:
                break
        time.sleep(0.1)
    # Tests want a full desktop.
    wait_for_panel(desktop.display, timeout=30)
    return desktop
