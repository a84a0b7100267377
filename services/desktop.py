"""Starting the sandbox desktop natively: what `selfagent up` and the test harness share."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

from selfagent.errors import LocalModeError


def free_display(first: int = 10) -> int:
    """An X display number with no X server, no lock file and a free VNC port (5900 + n)."""
    for num in range(first, 99):
        if Path(f"/tmp/.X11-unix/X{num}").exists() or Path(f"/tmp/.X{num}-lock").exists():
            continue
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", 5900 + num)) != 0:
                return num
    raise LocalModeError(f"no free X display number from :{first} to :98")


def wait_for_panel(display: str, timeout: float = 30.0) -> None:
    """Wait until Xfce's panel is mapped on ``display``.

    The panel is the last part of the desktop to appear; before it, a
    screenshot or a key combination meets a half-started session.
    """
    env = {**os.environ, "DISPLAY": display}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = subprocess.run(
            ["xdotool", "search", "--onlyvisible", "--name", "xfce4-panel"],
            env=env,
            capture_output=True,
            timeout=10,
        )
        if found.stdout.strip():
            # Mapped is not yet drawn: give the panel a moment to paint.
            time.sleep(1.0)
            return
        time.sleep(0.2)
    raise LocalModeError(f"the desktop's panel did not appear on {display} within {timeout:.0f}s")
