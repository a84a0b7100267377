"""Sandbox desktops as processes of this user: each its own Xvnc + Xfce (sandbox/start.sh).

Each desktop gets its own X display, VNC port, exec port and home directory
(``<data_dir>/homes/<home>``), and runs in its own process session so that
stopping it reaches every program started on it. Like local mode's single
desktop, it inherits only an allow-list of environment variables; it is not
an isolation boundary (same user, same machine).

Every process of a desktop carries ``SELFAGENT_SANDBOX_ID`` and
``SELFAGENT_SANDBOX_HOST`` in its environment (not secrets: an id and a
name). That is how a restarted provisioner tells its own desktops, and their
strays (a daemon that left the session), from anybody else's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from selfagent.bus.natsd import free_port
from selfagent.desktop import free_display, release_display, wait_for_panel
from selfagent.errors import ConfigError, LocalModeError, SandboxStartFailed

# Local mode's allow-listed environment, start script and port wait: the
# same desktop, started the same way.
from selfagent.local import _SANDBOX_ENV, _sandbox_script, _wait_port

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
from .state import StateStore

log = logging.getLogger(__name__)

MARK_ID = "SELFAGENT_SANDBOX_ID"
MARK_HOST = "SELFAGENT_SANDBOX_HOST"
STOP_GRACE = 10.0
START_ATTEMPTS = 3


def _read_marks(pid: int) -> tuple[str | None, str | None]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None, None
    marks: dict[str, str] = {}
    for item in raw.split(b"\0"):
        key, _, value = item.partition(b"=")
        if key in (MARK_ID.encode(), MARK_HOST.encode()):
            marks[key.decode()] = value.decode(errors="replace")
    return marks.get(MARK_ID), marks.get(MARK_HOST)


def marked_processes(host: str) -> dict[str, set[int]]:
    """Sandbox id -> pids of every process of this host's desktops."""
    found: dict[str, set[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        sandbox_id, marked_host = _read_marks(int(entry.name))
        if sandbox_id and marked_host == host:
            found.setdefault(sandbox_id, set()).add(int(entry.name))
    return found


def _port_open(port: int) -> bool:
    """Whether something listens on the TCP port, read from the kernel's tables.

    Not by connecting: Xvnc counts a connection closed before the handshake
    as a failed login, and after a few of those it refuses every client from
    that address for a while (its blacklist). A check every few seconds
    would lock the actuator and the gateway out of every desktop.
    """
    wanted = f":{port:04X}"
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            # local_address is "ADDR:PORT" in hex; state 0A is LISTEN.
            if len(fields) > 3 and fields[1].endswith(wanted) and fields[3] == "0A":
                return True
    return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is dead for our purposes.
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


class _Retry(Exception):
    """This attempt failed for a reason another attempt may not meet."""


class NativeBackend(SandboxBackend):
    name = "native"
    keeps_running = False

    def __init__(
        self,
        state: StateStore,
        *,
        host: str,
        screen: tuple[int, int] = (1280, 720),
        start_timeout: float = 90.0,
        sandbox_dir: Path | None = None,
    ) -> None:
        self.state = state
        self._host = host
        self.screen = screen
        self.start_timeout = start_timeout
        self.script = (sandbox_dir / "start.sh") if sandbox_dir else None
        self.homes_dir = state.root / "homes"
        self.logs_dir = state.root / "logs"
        self._processes: dict[str, subprocess.Popen[bytes]] = {}
        self._ports_in_flight: set[int] = set()

    @property
    def host(self) -> str:
        return self._host

    async def open(self) -> None:
        for folder in (self.homes_dir, self.logs_dir):
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        if self.script is None:
            try:
                self.script = _sandbox_script()
            except LocalModeError as exc:
                raise ConfigError(str(exc)) from exc
        elif not self.script.exists():
            raise ConfigError(f"sandbox start script not found at {self.script}")

    # -- starting ------------------------------------------------------------

    def _home_dir(self, home: str) -> Path:
        if "/" in home or home.startswith("."):
            raise ValueError(f"bad home name {home!r}")
        return self.homes_dir / home

    def _free_exec_port(self) -> int:
        for _ in range(20):
            port = free_port()
            if port not in self._ports_in_flight:
                self._ports_in_flight.add(port)
                return port
        raise SandboxStartFailed("no free port for the exec endpoint")

    def _spawn(
        self, sandbox_id: str, display: int, exec_port: int, home_dir: Path, secrets: Secrets
    ) -> subprocess.Popen[bytes]:
        assert self.script is not None
        # Only what a desktop session needs; see services/local.py.
        env = {key: os.environ[key] for key in _SANDBOX_ENV if key in os.environ}
        env.update(
            {
                "VNC_PASSWORD": secrets.vnc_password,
                "DISPLAY_NUM": str(display),
                "VNC_PORT": str(5900 + display),
                "SCREEN_WIDTH": str(self.screen[0]),
                "SCREEN_HEIGHT": str(self.screen[1]),
                "SANDBOX_HOME": str(home_dir),
                "SANDBOX_EXEC_PORT": str(exec_port),
                "SANDBOX_EXEC_TOKEN": secrets.exec_token,
                MARK_ID: sandbox_id,
                MARK_HOST: self.host,
            }
        )
        with open(self.logs_dir / f"{sandbox_id}.log", "ab") as out:
            return subprocess.Popen(
                [str(self.script)],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @staticmethod
    def _holds_display(process: subprocess.Popen[bytes], display: int, timeout: float) -> bool:
        """Whether this desktop's own Xvnc took the display (not a racing neighbour's)."""
        lock = Path(f"/tmp/.X{display}-lock")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                return False
            with contextlib.suppress(OSError, ValueError):
                holder = int(lock.read_text().strip())
                # Our Xvnc is in the session that start.sh leads.
                return os.getsid(holder) == process.pid
            time.sleep(0.02)
        return False

    def _wait_ready(self, process: subprocess.Popen[bytes], display: int) -> None:
        _wait_port(5900 + display, self.start_timeout, process, "sandbox VNC server")
        # Raises when the panel does not show: a desktop without it is not ready.
        wait_for_panel(f":{display}", self.start_timeout)
        if process.poll() is not None:
            raise LocalModeError(f"sandbox exited with code {process.returncode}")

    async def create(self, sandbox_id: str, session_id: str | None, home: str) -> SandboxHandle:
        home_dir = self._home_dir(home)
        # A home made for this start goes again if the start fails: nobody's data is in it.
        fresh = not home_dir.exists()
        home_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        secrets = Secrets.generate()
        last = ""
        for _attempt in range(START_ATTEMPTS):
            exec_port = self._free_exec_port()
            try:
                return await self._attempt(
                    sandbox_id, session_id, home, home_dir, exec_port, secrets
                )
            except _Retry as exc:
                last = str(exc)
            except BaseException:
                if fresh:
                    shutil.rmtree(home_dir, ignore_errors=True)
                raise
            finally:
                self._ports_in_flight.discard(exec_port)
        if fresh:
            shutil.rmtree(home_dir, ignore_errors=True)
        raise SandboxStartFailed(f"desktop {sandbox_id} did not start: {last}")

    async def _attempt(
        self,
        sandbox_id: str,
        session_id: str | None,
        home: str,
        home_dir: Path,
        exec_port: int,
        secrets: Secrets,
    ) -> SandboxHandle:
        """One start; whatever goes wrong (a hung probe, a cancel), nothing stays running."""
        process: subprocess.Popen[bytes] | None = None
        display: int | None = None
        try:
            # Reserved for this desktop (no other start in any process picks
            # it) until destroy() gives it back.
            display = await asyncio.to_thread(free_display)
            process = self._spawn(sandbox_id, display, exec_port, home_dir, secrets)
            self._processes[sandbox_id] = process
            # An X server that does not reserve numbers (started by hand, by
            # another program) can still take it between the check and our
            # Xvnc's start.
            ours = await asyncio.to_thread(self._holds_display, process, display, 10.0)
            if not ours:
                raise _Retry(f"display :{display} was taken by another X server")
            handle = SandboxHandle(
                sandbox_id=sandbox_id,
                session_id=session_id,
                home=home,
                endpoint=Endpoint("127.0.0.1", 5900 + display, f"http://127.0.0.1:{exec_port}"),
                secrets=secrets,
                labels={
                    LABEL_SANDBOX: "1",
                    LABEL_SANDBOX_ID: sandbox_id,
                    LABEL_SESSION: session_id or "",
                    LABEL_HOST: self.host,
                    LABEL_HOME: home,
                },
                started_at=now(),
                screen=self.screen,
                ref=str(process.pid),
            )
            self.state.save_sandbox(sandbox_id, handle.record(self.name, display=display))
            try:
                await asyncio.to_thread(self._wait_ready, process, display)
            except (LocalModeError, OSError, subprocess.SubprocessError) as exc:
                raise _Retry(f"{type(exc).__name__}: {exc}") from exc
            return handle
        except BaseException:
            if process is not None:
                await asyncio.to_thread(self._stop_process, sandbox_id, process.pid)
            if display is not None:
                release_display(display)
            self.state.drop_sandbox(sandbox_id)
            raise

    async def bind(self, handle: SandboxHandle, session_id: str) -> SandboxHandle:
        bound = handle.bound_to(session_id)
        record = self.state.sandbox(handle.sandbox_id) or {}
        self.state.save_sandbox(
            handle.sandbox_id, bound.record(self.name, display=record.get("display"))
        )
        return bound

    # -- stopping ------------------------------------------------------------

    def _stop_process(self, sandbox_id: str, pid: int) -> None:
        process = self._processes.pop(sandbox_id, None)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        if process is not None:
            try:
                process.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
                process.wait()
        else:
            while _pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        # Strays that left the session (a daemon that called setsid) still
        # carry the desktop's mark.
        self._kill_marked({sandbox_id})

    def _kill_marked(self, sandbox_ids: set[str]) -> None:
        marked = marked_processes(self.host)
        pids = {pid for sid in sandbox_ids for pid in marked.get(sid, ())}
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + 2.0
            while any(_pid_alive(pid) for pid in pids) and time.monotonic() < deadline:
                time.sleep(0.05)
            pids = {pid for pid in pids if _pid_alive(pid)}
            if not pids:
                return

    @staticmethod
    def _display(handle: SandboxHandle) -> int:
        # This backend puts display n's VNC server on 5900 + n, as start.sh does.
        return handle.endpoint.vnc_port - 5900

    async def destroy(self, handle: SandboxHandle, keep_home: bool) -> None:
        await asyncio.to_thread(self._stop_process, handle.sandbox_id, int(handle.ref))
        # Only once its X server is gone may another desktop have the number.
        release_display(self._display(handle))
        self.state.drop_sandbox(handle.sandbox_id)
        with contextlib.suppress(FileNotFoundError):
            (self.logs_dir / f"{handle.sandbox_id}.log").unlink()
        if not keep_home:
            await asyncio.to_thread(shutil.rmtree, self._home_dir(handle.home), True)

    async def delete_home(self, session_id: str) -> bool:
        home = self.state.unbind_home(session_id) or home_name(session_id)
        path = self._home_dir(home)
        if not path.exists():
            return False
        await asyncio.to_thread(shutil.rmtree, path, True)
        return True

    # -- finding and checking ------------------------------------------------

    def _is_running(self, handle: SandboxHandle) -> bool:
        process = self._processes.get(handle.sandbox_id)
        if process is not None:
            if process.poll() is not None:
                return False
        else:
            pid = int(handle.ref)
            if not _pid_alive(pid) or _read_marks(pid) != (handle.sandbox_id, self.host):
                return False
        return _port_open(handle.endpoint.vnc_port)

    async def alive(self, handle: SandboxHandle) -> bool:
        return await asyncio.to_thread(self._is_running, handle)

    async def why_dead(self, handle: SandboxHandle) -> str:
        process = self._processes.get(handle.sandbox_id)
        if process is not None and process.returncode is not None:
            return f"the desktop's start script exited with code {process.returncode}"
        return f"the VNC server no longer answers on port {handle.endpoint.vnc_port}"

    def _scan(self) -> list[SandboxHandle]:
        adopted: list[SandboxHandle] = []
        for sandbox_id, record in self.state.sandboxes().items():
            if record.get("backend") != self.name:
                continue
            if (record.get("labels") or {}).get(LABEL_HOST) != self.host:
                continue
            try:
                handle = SandboxHandle.from_record(record)
            except (KeyError, ValueError, TypeError):
                log.warning("dropping unreadable sandbox record %s", sandbox_id)
                self.state.drop_sandbox(sandbox_id)
                continue
            if self._is_running(handle):
                adopted.append(handle)
                continue
            log.info("sandbox %s is gone; forgetting it", sandbox_id)
            self._stop_process(sandbox_id, int(handle.ref))
            release_display(self._display(handle))
            self.state.drop_sandbox(sandbox_id)
            if handle.session_id is None:
                # A warm desktop's home was never anybody's.
                shutil.rmtree(self._home_dir(handle.home), ignore_errors=True)
        known = {handle.sandbox_id for handle in adopted}
        orphans = set(marked_processes(self.host)) - known
        if orphans:
            log.warning("stopping %d orphaned desktop(s): %s", len(orphans), sorted(orphans))
            self._kill_marked(orphans)
        return adopted

    async def list_existing(self) -> list[SandboxHandle]:
        await self.open()
        return await asyncio.to_thread(self._scan)
