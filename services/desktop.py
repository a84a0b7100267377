"""Starting the sandbox desktop natively: what `selfagent up` and the test harness share."""

from __future__ import annotations

import fcntl
import os
import socket
import subprocess
import time
from pathlib import Path

from selfagent.errors import LocalModeError

_RESERVATIONS = Path(os.environ.get("TMPDIR", "/tmp"))


def _reservation(num: int) -> Path:
    return _RESERVATIONS / f".selfagent-display-{num}"


# Display number -> the open, locked claim file that holds it.
_held: dict[int, int] = {}


def _claim(num: int) -> bool:
    """Hold display ``num`` with an exclusive lock on its claim file.

    The kernel drops the lock when the holder exits, however it exits, so a
    claim never goes stale. After locking, the path must still name the file
    we locked: a holder that released in between unlinked it.
    """
    path = _reservation(num)
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return False
    try:
        same = os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        same = False
    if not same:
        os.close(fd)
        return False
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())  # for people, not for the lock
    _held[num] = fd
    return True


# Many desktops at once (a provisioner's pool, parallel test workers, desktops
# killed without removing their X lock files) climb well past the first few.
LAST_DISPLAY = 299


def free_display(first: int = 10) -> int:
    """Reserve an X display number with no X server, no lock file and a free
    VNC port (5900 + n); give it back with :func:`release_display`.

    Checking is not enough when several processes start desktops at once
    (test workers, a provisioner's pool): two could pick the same number
    before either X server takes its lock, and one would then talk to the
    other's desktop. So the pick is claimed with an exclusive ``flock`` on a
    claim file, held until released or until this process ends.
    """
    for num in range(first, LAST_DISPLAY + 1):
        if num in _held:
            continue
        if Path(f"/tmp/.X11-unix/X{num}").exists() or Path(f"/tmp/.X{num}-lock").exists():
            continue
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", 5900 + num)) == 0:
                continue
        if _claim(num):
            return num
    raise LocalModeError(f"no free X display number from :{first} to :{LAST_DISPLAY}")


def release_display(num: int) -> None:
    """Give back a display number reserved by :func:`free_display` in this process."""
    fd = _held.pop(num, None)
    if fd is None:
        return
    # Unlink while still locked, so that nobody locks a path we are leaving.
    _reservation(num).unlink(missing_ok=True)
    os.close(fd)


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
