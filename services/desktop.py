"""Starting the sandbox desktop natively: what `selfagent up` and the test harness share."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

from selfagent.errors import LocalModeError

_RESERVATIONS = Path(os.environ.get("TMPDIR", "/tmp"))


def _reservation(num: int) -> Path:
    return _RESERVATIONS / f".selfagent-display-{num}"


def _holder_alive(path: Path) -> bool:
    try:
        pid = int(path.read_text() or 0)
    except (FileNotFoundError, ValueError):
        return False
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def free_display(first: int = 10) -> int:
    """Reserve an X display number with no X server, no lock file and a free
    VNC port (5900 + n); give it back with :func:`release_display`.

    Checking is not enough when several processes start desktops at once
    (test workers, a provisioner's pool): two could pick the same number
    before either X server takes its lock, and one would then talk to the
    other's desktop. So the pick is claimed atomically with an O_EXCL file
    holding our pid; a claim whose process is gone is stale and reused.
    """
    for num in range(first, 99):
        if Path(f"/tmp/.X11-unix/X{num}").exists() or Path(f"/tmp/.X{num}-lock").exists():
            continue
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", 5900 + num)) == 0:
                continue
        claim = _reservation(num)
        if claim.exists() and not _holder_alive(claim):
            claim.unlink(missing_ok=True)
        try:
            fd = os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            continue
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        return num
    raise LocalModeError(f"no free X display number from :{first} to :98")


def release_display(num: int) -> None:
    """Give back a display number reserved by :func:`free_display` in this process."""
    claim = _reservation(num)
    try:
        if int(claim.read_text() or 0) == os.getpid():
            claim.unlink()
    except (FileNotFoundError, ValueError):
        pass


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
