"""Local mode: the whole product as processes on this machine, no containers.

An embedded nats-server, the services, each its own process as in
production, and desktops: with per-session desktops (the default) the
provisioner starts one native desktop (sandbox/start.sh) per session, plus a
warm one; with a fixed desktop, one is started here and every task shares it.
Used by ``selfagent up`` and by the end-to-end tests.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from selfagent.bus.auth import (
    ADMIN,
    AUTOMATION,
    ClientCredentials,
    generate_passwords,
    server_config,
)
from selfagent.bus.natsd import EmbeddedNats, free_port
from selfagent.bus.settings import DesktopsMode
from selfagent.desktop import free_display, release_display, wait_for_panel
from selfagent.errors import LocalModeError

REPO_ROOT = Path(__file__).resolve().parent.parent
# The environment the sandbox desktop inherits; nothing else crosses over.
_SANDBOX_ENV = ("PATH", "LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "TZ", "USER", "LOGNAME", "SHELL")
SERVICES = ("actuator", "grounder", "planner", "gateway")
# Per-session desktops: the provisioner first, so the warm desktop starts
# while the others do.
SESSION_SERVICES = ("provisioner", *SERVICES)
# How long a stopping process may take to drain before it is killed.
STOP_TIMEOUT = 10.0


def _sandbox_script() -> Path:
    configured = os.environ.get("SELFAGENT_SANDBOX_DIR")
    script = Path(configured or REPO_ROOT / "sandbox") / "start.sh"
    if not script.exists():
        raise LocalModeError(
            f"sandbox start script not found at {script}; run from a source checkout "
            "or set SELFAGENT_SANDBOX_DIR"
        )
    return script


def _wait_port(port: int, timeout: float, process: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise LocalModeError(f"{what} exited with code {process.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise LocalModeError(f"{what} did not listen on port {port} within {timeout:.0f}s")


@dataclass
class LocalStack:
    """Everything `selfagent up` runs. ``extra_env`` reaches every service.

    ``auth``: NATS wants a user and password, one identity per service (see
    ``selfagent.bus.auth``); the automation and admin credentials are written
    to ``<run_dir>/credentials/`` (0600). The desktops get none.
    """

    run_dir: Path | None = None
    gateway_port: int | None = None
    token: str | None = None
    screen: tuple[int, int] = (1280, 720)
    desktops: DesktopsMode = "per_session"
    # Keep the generated token in the run directory (mode 0600) and reuse it:
    # a bookmarked URL keeps working across restarts.
    keep_token: bool = False
    extra_env: dict[str, str] = field(default_factory=dict)
    auth: bool = True
    nats: EmbeddedNats | None = None
    nats_passwords: dict[str, str] = field(default_factory=dict, repr=False)
    display_num: int = 0
    vnc_port: int = 0
    exec_port: int = 0
    vnc_password: str = ""
    exec_token: str = ""
    sandbox_home: Path | None = None
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    # Each service's Prometheus endpoint, on loopback (docs/operations.md).
    metrics_ports: dict[str, int] = field(default_factory=dict)

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    def metrics_url(self, service: str) -> str:
        """Where ``service`` serves its Prometheus figures (no token: loopback only)."""
        return f"http://127.0.0.1:{self.metrics_ports[service]}/metrics"

    @property
    def nats_url(self) -> str:
        """The server's address, without credentials."""
        assert self.nats is not None
        return self.nats.url

    @property
    def credentials_dir(self) -> Path:
        assert self.run_dir is not None
        return self.run_dir / "credentials"

    @property
    def automation_credentials(self) -> Path:
        """The automation account's env file (NATS_URL, NATS_USER, NATS_PASSWORD, ...)."""
        return self.credentials_dir / f"{AUTOMATION}.env"

    def credentials(self, identity: str) -> ClientCredentials:
        """How to connect as ``identity`` (without auth: as nobody)."""
        return ClientCredentials(
            url=self.nats_url,
            user=identity if self.auth else "",
            password=self.nats_passwords.get(identity, ""),
        )

    def nats_url_as(self, identity: str = ADMIN) -> str:
        """The NATS URL with ``identity``'s user and password in it (for tests and tools)."""
        if not self.auth:
            return self.nats_url
        assert self.nats is not None
        return f"nats://{identity}:{self.nats_passwords[identity]}@127.0.0.1:{self.nats.port}"

    def _start_nats(self) -> None:
        assert self.run_dir is not None
        (self.run_dir / "nats").mkdir(exist_ok=True)
        config = ""
        if self.auth:
            self.nats_passwords = generate_passwords()
            config = server_config(self.nats_passwords)
        self.nats = EmbeddedNats(store_dir=self.run_dir / "nats", extra_config=config).start()
        if self.auth:
            self.credentials_dir.mkdir(mode=0o700, exist_ok=True)
            self.credentials_dir.chmod(0o700)
            for identity in (AUTOMATION, ADMIN):
                self.credentials(identity).write(self.credentials_dir / f"{identity}.env")

    def start(self) -> LocalStack:
        self.run_dir = self.run_dir or Path(tempfile.mkdtemp(prefix="selfagent-run-"))
        # It holds the token and the desktops' secrets: only this user reads it.
        self.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        (self.run_dir / "logs").mkdir(exist_ok=True)
        self.token = self.token or os.environ.get("SELFAGENT_TOKEN") or self._stored_token()
        self.gateway_port = self.gateway_port or int(os.environ.get("GATEWAY_PORT", "0")) or 8080
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", self.gateway_port)) == 0:
                raise LocalModeError(
                    f"port {self.gateway_port} is already in use (another selfagent?); "
                    "choose another with --port"
                )
        try:
            self._start_nats()
            if self.desktops == "fixed":
                self._start_sandbox()
            for name in self.services:
                self.start_service(name)
            gateway = self.processes["gateway"]
            _wait_port(self.gateway_port, 30, gateway, "gateway")
            self._wait_healthy(30)
        except BaseException:
            self.stop()
            raise
        return self

    def _stored_token(self) -> str:
        if not self.keep_token:
            return secrets.token_urlsafe(24)
        assert self.run_dir is not None
        path = self.run_dir / "token"
        try:
            stored = path.read_text().strip()
        except FileNotFoundError:
            stored = ""
        if stored:
            return stored
        token = secrets.token_urlsafe(24)
        # Created with its mode: the token is never readable by others, not even briefly.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(token + "\n")
        return token

    def _start_sandbox(self) -> None:
        assert self.run_dir is not None
        self.display_num = free_display()
        self.vnc_port = 5900 + self.display_num
        self.exec_port = free_port()
        self.vnc_password = secrets.token_urlsafe(6)[:8]
        self.exec_token = secrets.token_urlsafe(24)
        self.sandbox_home = self.run_dir / "home"
        self.sandbox_home.mkdir(exist_ok=True)
        # Only what a desktop session needs: the agent's shell in the sandbox
        # must not see the LLM key, the gateway token or anything else that
        # `selfagent up` holds. (Local mode is not a container: the sandbox
        # still runs as this user on this machine; see the README.)
        env = {key: os.environ[key] for key in _SANDBOX_ENV if key in os.environ}
        env.update(
            {
                "VNC_PASSWORD": self.vnc_password,
                "DISPLAY_NUM": str(self.display_num),
                "SCREEN_WIDTH": str(self.screen[0]),
                "SCREEN_HEIGHT": str(self.screen[1]),
                "SANDBOX_HOME": str(self.sandbox_home),
                "SANDBOX_EXEC_PORT": str(self.exec_port),
                "SANDBOX_EXEC_TOKEN": self.exec_token,
            }
        )
        process = self._spawn("sandbox", [str(_sandbox_script())], env)
        _wait_port(self.vnc_port, 30, process, "sandbox VNC server")
        wait_for_panel(f":{self.display_num}", 30)

    @property
    def services(self) -> tuple[str, ...]:
        return SESSION_SERVICES if self.desktops == "per_session" else SERVICES

    def service_env(self, name: str, replica: str | None = None) -> dict[str, str]:
        """The environment of service ``name`` (of its further process ``replica``:
        the same but for its own metrics port)."""
        assert self.run_dir is not None
        port = self.metrics_ports.setdefault(replica or name, free_port())
        env = {
            **os.environ,
            "NATS_URL": self.nats_url,
            "SELFAGENT_DESKTOPS": self.desktops,
            "GATEWAY_PORT": str(self.gateway_port),
            # Local mode serves this machine only unless asked otherwise.
            "GATEWAY_HOST": os.environ.get("GATEWAY_HOST", "127.0.0.1"),
            "SELFAGENT_TOKEN": self.token or "",
            "PYTHONUNBUFFERED": "1",
            # Kept across a restart of the service: a scraper's target stays.
            f"{name.upper()}_METRICS_PORT": str(port),
        }
        if self.auth:
            # Its own identity, under its own prefix so that nothing inherited
            # (a shared NATS_USER in .env) can stand in for it.
            prefix = f"{name.upper()}_"
            env[f"{prefix}NATS_USER"] = name
            env[f"{prefix}NATS_PASSWORD"] = self.nats_passwords[name]
        if self.desktops == "fixed":
            env.update(
                {
                    "ACTUATOR_VNC_HOST": "127.0.0.1",
                    "ACTUATOR_VNC_PORT": str(self.vnc_port),
                    "ACTUATOR_VNC_PASSWORD": self.vnc_password,
                    "ACTUATOR_EXEC_URL": f"http://127.0.0.1:{self.exec_port}",
                    "ACTUATOR_EXEC_TOKEN": self.exec_token,
                    "GATEWAY_VNC_HOST": "127.0.0.1",
                    "GATEWAY_VNC_PORT": str(self.vnc_port),
                    "GATEWAY_VNC_PASSWORD": self.vnc_password,
                    "GATEWAY_EXEC_URL": f"http://127.0.0.1:{self.exec_port}",
                    "GATEWAY_EXEC_TOKEN": self.exec_token,
                }
            )
        else:
            env.update(
                {
                    "PROVISIONER_BACKEND": "native",
                    # Sandbox records and the sessions' homes live with the run.
                    "PROVISIONER_DATA_DIR": str(self.run_dir / "provisioner"),
                    "PROVISIONER_SCREEN_WIDTH": str(self.screen[0]),
                    "PROVISIONER_SCREEN_HEIGHT": str(self.screen[1]),
                }
            )
        env.update(self.extra_env)
        return env

    def start_service(
        self, name: str, *, replica: str | None = None, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start service ``name``; ``replica`` names a further process of it (its key in
        ``processes`` and its log), ``env`` overrides its environment."""
        return self._spawn(
            replica or name,
            [sys.executable, "-m", f"selfagent.{name}"],
            {**self.service_env(name, replica), **(env or {})},
        )

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        assert self.run_dir is not None
        with open(self.run_dir / "logs" / f"{name}.log", "ab") as log:
            # Own process group each, so stopping also reaches their children
            # (the sandbox's X server and desktop session). The child keeps
            # its copy of the log descriptor; ours closes here.
            process = subprocess.Popen(
                argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.processes[name] = process
        return process

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.gateway_url}/healthz", timeout=2) as reply:
                    if reply.status == 200:
                        return
            except OSError as exc:
                last = str(exc)
            time.sleep(0.2)
        raise LocalModeError(f"gateway not healthy within {timeout:.0f}s: {last}")

    def log(self, name: str) -> str:
        assert self.run_dir is not None
        path = self.run_dir / "logs" / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop_service(self, name: str) -> None:
        process = self.processes.pop(name, None)
        if process is not None:
            _terminate([process], STOP_TIMEOUT)

    def stop(self, remove: bool = False) -> None:
        """Stop the services, then NATS, then the desktop.

        The services go first and together, while NATS is still up, so each
        drains its connection and exits cleanly; NATS stopping under them
        would leave every service reconnecting while it drains.
        """
        services = [name for name in self.processes if name != "sandbox"]
        _terminate([self.processes.pop(name) for name in services], STOP_TIMEOUT)
        if self.nats is not None:
            self.nats.stop()
        self.stop_service("sandbox")
        if self.display_num:
            release_display(self.display_num)
        if remove and self.run_dir is not None:
            shutil.rmtree(self.run_dir, ignore_errors=True)


def _terminate(processes: list[subprocess.Popen[bytes]], timeout: float) -> None:
    """SIGTERM each process group, wait up to ``timeout`` for all, then SIGKILL what is left."""
    running = [process for process in processes if process.poll() is None]
    for process in running:
        # A group that is already gone is already stopped.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for process in running:
        try:
            process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
